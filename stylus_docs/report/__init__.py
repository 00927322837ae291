"""``stylus-docs report``: one static HTML page per release — counts, plots, adapters, diff, eval.

:func:`write_report` writes ``OUT.html`` and a folder ``OUT_files/`` beside it with everything the page
loads (plots as PNG, thumbnails as JPEG, copied eval files); the page itself references nothing else,
so the pair can be copied, archived or served by any static server, and opens with no network.

Data: :mod:`stylus_docs.report.data`; plots: :mod:`stylus_docs.report.plots` (matplotlib, Agg);
thumbnails: :mod:`stylus_docs.report.images`; HTML: :mod:`stylus_docs.report.page`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.errors import FatalError
from stylus_docs.report.data import ReportData, gather
from stylus_docs.report.images import Thumb, ThumbWriter, fetch_all, local_image
from stylus_docs.report.page import render_page
from stylus_docs.report.plots import bar_chart, long_tail

__all__ = ["ReportOptions", "ReportResult", "gather", "write_report"]

logger = logging.getLogger(__name__)

#: Written into the files folder, so a re-run only ever deletes a folder a report wrote.
MARKER = ".stylus-docs-report"


@dataclass(frozen=True)
class ReportOptions:
    """Settings of :func:`write_report`.

    Args:
        examples_per_adapter: example images shown per adapter (thumbnails when a local file or a
            fetched copy exists, else links).
        rendered_per_adapter: rendered images shown per adapter (with/without pairs come in order).
        fetch_examples: fetch example images by URL (only from ``image_hosts``) to thumbnail them.
        image_hosts: hosts example images may be fetched from (``host``, ``host:port``, ``*.domain``).
    """

    examples_per_adapter: int = 3
    rendered_per_adapter: int = 4
    fetch_examples: bool = False
    image_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.examples_per_adapter < 0 or self.rendered_per_adapter < 0:
            raise FatalError("images per adapter must be >= 0")


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    html: Path
    files_dir: Path
    adapters: int
    thumbnails: int
    images_skipped: int


def _prepare_files_dir(files_dir: Path) -> None:
    if files_dir.exists():
        if not (files_dir / MARKER).is_file():
            raise FatalError(f"{files_dir} exists and was not written by stylus-docs report; remove it or "
                             "choose another --out")  # fmt: skip
        shutil.rmtree(files_dir)
    files_dir.mkdir(parents=True)
    (files_dir / MARKER).write_text("written by stylus-docs report; deleted by the next run\n")


def _select_images(data: ReportData, options: ReportOptions) -> dict[str, list[dict[str, Any]]]:
    chosen: dict[str, list[dict[str, Any]]] = {}
    for aid, rows in data.images.items():
        examples = [r for r in rows if r.get("origin") == "example"][: options.examples_per_adapter]
        rendered = [r for r in rows if r.get("origin") == "rendered" and r.get("path")]
        rendered.sort(key=lambda r: (r.get("seed") or 0, bool(r.get("with_adapter"))))
        chosen[aid] = examples + rendered[: options.rendered_per_adapter]
    return chosen


def _thumbnails(
    data: ReportData, options: ReportOptions, writer: ThumbWriter
) -> dict[str, list[tuple[dict[str, Any], Thumb | None]]]:
    chosen = _select_images(data, options)
    fetched: dict[str, bytes | None] = {}
    if options.fetch_examples:
        from stylus_docs.sources import DEFAULT_IMAGE_HOSTS

        urls = sorted({r["url"] for rows in chosen.values() for r in rows
                       if r.get("origin") == "example" and not r.get("path") and r.get("url")})  # fmt: skip
        fetched = fetch_all(urls, (*DEFAULT_IMAGE_HOSTS, *options.image_hosts))
    out: dict[str, list[tuple[dict[str, Any], Thumb | None]]] = {}
    for aid, rows in chosen.items():
        items = []
        for row in rows:
            if row.get("path"):
                thumb = writer.add(local_image(data.build_dir, row["path"]))
            elif row.get("url") in fetched:
                thumb = writer.add(fetched[row["url"]])
            else:
                thumb = None
            items.append((row, thumb))
        out[aid] = items
    return out


def _write_icon(files_dir: Path, prefix: str) -> str:
    from PIL import Image

    Image.new("RGB", (16, 16), (76, 114, 176)).save(files_dir / "icon.png", format="PNG")
    return f"{prefix}/icon.png"


def _copy_eval(data: ReportData, files_dir: Path, prefix: str) -> tuple[list[str], list[tuple[str, str]]]:
    if data.eval is None:
        return [], []
    target = files_dir / "eval"
    target.mkdir()
    plots, links = [], []
    for path in data.eval.plots:
        shutil.copyfile(path, target / path.name)
        plots.append(f"{prefix}/eval/{path.name}")
    for path in data.eval.links:
        shutil.copyfile(path, target / path.name)
        links.append((f"{prefix}/eval/{path.name}", path.name))
    return plots, links


def write_report(
    docs: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    build_id: str | None = None,
    previous: str | os.PathLike[str] | None = None,
    eval_dir: str | os.PathLike[str] | None = None,
    options: ReportOptions | None = None,
) -> ReportResult:
    """Write the report of release ``docs`` to ``out`` (an ``.html`` path) and ``<out stem>_files/``.

    The HTML is written last and atomically, so a page on disk always has its files.

    Raises:
        FatalError: the release cannot be read, ``out`` is a directory, or the files folder beside it
            belongs to something else.
    """
    options = options or ReportOptions()
    html = Path(out)
    if html.is_dir():
        raise FatalError(f"--out {html} is a directory; give the path of the .html file to write")
    data = gather(docs, build_id=build_id, previous=previous, eval_dir=eval_dir)
    html.parent.mkdir(parents=True, exist_ok=True)
    files_dir = html.with_name(html.stem + "_files")
    prefix = files_dir.name
    _prepare_files_dir(files_dir)

    statuses: Counter[str] = data.column_counts("render_status", "not_rendered")
    plots = [
        (bar_chart(data.column_counts("category"), "Adapters by category", "adapters",
                   files_dir / "categories.png"), "Adapters by category"),
        (bar_chart(data.column_counts("base_model"), "Adapters by base model", "adapters",
                   files_dir / "base_models.png"), "Adapters by base model"),
        (long_tail([int(a["downloads"]) for a in data.adapters if a.get("downloads") is not None],
                   files_dir / "downloads.png"), "Downloads long tail (log–log)"),
        (bar_chart(statuses, "Adapters by render status", "adapters", files_dir / "render_status.png"),
         "Adapters by render status"),
    ]  # fmt: skip
    writer = ThumbWriter(files_dir, prefix)
    thumbs = _thumbnails(data, options, writer)
    eval_plots, eval_links = _copy_eval(data, files_dir, prefix)
    page = render_page(
        data,
        plots=[(f"{prefix}/{path.name}", caption) for path, caption in plots],
        thumbs=thumbs,
        eval_plots=eval_plots,
        eval_links=eval_links,
        icon=_write_icon(files_dir, prefix),
    )
    atomic_write_text(html, page)
    logger.info("report: %d adapters, %d thumbnails, %d images skipped", len(data.adapters),
                writer.written, writer.skipped)  # fmt: skip
    return ReportResult(html=html, files_dir=files_dir, adapters=len(data.adapters),
                        thumbnails=writer.written, images_skipped=writer.skipped)  # fmt: skip
