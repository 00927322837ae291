"""What a release report shows, gathered from a release through :mod:`stylus_docs.release` readers.

Everything comes from files the manifest lists (verified as they are read): the counts from the
manifest itself, adapters and images from their Parquet shards, dead letters from their JSONL shard,
removed adapters from ``removed.json``. The previous build (for the diff) is the one before the
reported build in the same release root, or another release given explicitly; adapters are matched by
``adapter_id`` and compared by ``content_hash``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs import release, safe_json
from stylus_docs.errors import FatalError

logger = logging.getLogger(__name__)

#: Adapter columns the report reads (names an older release lacks are left out by ``read_table``).
ADAPTER_COLUMNS = [
    "adapter_id", "title", "version_name", "type", "category", "base_model", "base_model_family",
    "recommended_weight", "downloads", "likes", "nsfw", "render_status", "render_error", "content_hash",
    "card_url", "deleted",
]  # fmt: skip
IMAGE_COLUMNS = ["adapter_id", "image_id", "origin", "url", "path", "prompt", "seed", "with_adapter"]
#: Dead letters / removed adapters listed on the page; the counts are always complete.
MAX_LISTED = 200


@dataclass
class BuildDiff:
    """Adapters added, removed and changed (same id, another ``content_hash``) since ``previous_id``."""

    previous_id: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0


@dataclass
class EvalResults:
    """``stylus-docs eval run`` output found in a directory (any part may be absent)."""

    root: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)  # pareto.png (shown) — pareto.svg, eval.csv linked
    links: list[Path] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything one report page shows.

    Args:
        build_dir: The reported build.
        manifest: Its manifest (validated).
        adapters: Adapter rows (:data:`ADAPTER_COLUMNS`), in table order.
        images: Image rows by adapter id (:data:`IMAGE_COLUMNS`).
        dead_letters: The first :data:`MAX_LISTED` dead letters (the counts are in the manifest).
        dead_letter_total: How many dead letters the shard holds.
        removed: The first :data:`MAX_LISTED` entries of ``removed.json``.
        removed_total: Its ``count``.
        diff: Against the previous build, or None when there is none.
        eval: Eval results, or None.
    """

    build_dir: Path
    manifest: dict[str, Any]
    adapters: list[dict[str, Any]]
    images: dict[str, list[dict[str, Any]]]
    dead_letters: list[dict[str, Any]]
    dead_letter_total: int
    removed: list[dict[str, Any]]
    removed_total: int
    diff: BuildDiff | None
    eval: EvalResults | None

    @property
    def counts(self) -> dict[str, Any]:
        """The manifest's ``counts``."""
        return self.manifest["counts"]

    def column_counts(self, column: str, missing: str = "unknown") -> Counter[str]:
        """Adapters by the value of ``column`` (None → ``missing``)."""
        return Counter(str(a.get(column) or missing) for a in self.adapters)


def _read_rows(build_dir: Path, manifest: dict[str, Any], table: str, columns: list[str]) -> list[dict]:
    if not release.table_files(build_dir, manifest, table):
        return []
    return release.read_table(build_dir, manifest, table, columns).to_pylist()


def _read_dead_letters(build_dir: Path, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    listed: list[dict[str, Any]] = []
    total = 0
    for path in release.table_files(build_dir, manifest, "dead_letter"):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                total += 1
                if len(listed) < MAX_LISTED:
                    try:
                        listed.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise FatalError(f"dead letter shard {path.name} is not JSONL: {exc}") from exc
    return listed, total


def _read_removed(build_dir: Path, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    files = release.table_files(build_dir, manifest, "removed")
    if not files:
        return [], int(manifest["counts"].get("removed", 0))
    try:
        body = safe_json.loads(files[0].read_bytes())
    except safe_json.UnsafeJSON as exc:
        raise FatalError(f"{files[0]} is not valid JSON ({exc})") from exc
    if not isinstance(body, dict) or not isinstance(body.get("adapters", []), list):
        raise FatalError(f"{files[0]} is not a removed-adapters list")
    items = body.get("adapters", [])
    return list(items[:MAX_LISTED]), int(body.get("count", len(items)))


def previous_build_dir(docs: Path, build_dir: Path, previous: str | os.PathLike[str] | None) -> Path | None:
    """The build to diff against: ``previous`` (a release root or build dir) when given, else the
    newest complete build older than ``build_dir`` in the same release root (None when there is none)."""
    if previous is not None:
        return release.resolve_build(previous)
    root = build_dir.parent.parent if build_dir.parent.name == release.BUILDS_DIR else docs
    older = [b for b in release.list_builds(root) if b < build_dir.name]
    return release.build_path(root, older[-1]) if older else None


def diff_builds(previous_dir: Path, adapters: list[dict[str, Any]]) -> BuildDiff:
    """Compare ``adapters`` (the reported build's rows) with the adapters of ``previous_dir``."""
    manifest = release.load_manifest(previous_dir)
    old_rows = _read_rows(previous_dir, manifest, "adapters", ["adapter_id", "content_hash"])
    old = {r["adapter_id"]: r.get("content_hash") for r in old_rows}
    new = {a["adapter_id"]: a.get("content_hash") for a in adapters}
    diff = BuildDiff(previous_id=str(manifest["build_id"]))
    diff.added = sorted(set(new) - set(old))
    diff.removed = sorted(set(old) - set(new))
    both = set(new) & set(old)
    diff.changed = sorted(a for a in both if new[a] != old[a])
    diff.unchanged = len(both) - len(diff.changed)
    return diff


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN is no number to show


def read_eval(root: str | os.PathLike[str]) -> EvalResults:
    """Read ``eval.json`` (a list of ``{method, cfg, metric, value}`` rows) and find the plots.

    Read defensively: rows that are not objects or lack a metric/value are skipped with a log line,
    since the eval command's output may grow fields.

    Raises:
        FatalError: ``root`` is not a directory, or ``eval.json`` is not JSON.
    """
    base = Path(root)
    if not base.is_dir():
        raise FatalError(f"--eval {base}: not a directory")
    out = EvalResults(root=base)
    path = base / "eval.json"
    if path.is_file():
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FatalError(f"--eval {path}: not valid JSON ({exc})") from exc
        if isinstance(body, dict):  # tolerate {"rows": [...]}
            body = body.get("rows", [])
        for row in body if isinstance(body, list) else []:
            if not isinstance(row, dict) or "metric" not in row or _num(row.get("value")) is None:
                logger.info("eval.json: skipping row %r", row)
                continue
            out.rows.append({
                "method": str(row.get("method", "")), "cfg": row.get("cfg"),
                "metric": str(row["metric"]), "value": _num(row["value"]),
            })  # fmt: skip
    out.plots = [p for p in (base / "pareto.png",) if p.is_file()]
    out.links = [p for p in (base / "pareto.svg", base / "eval.csv", path) if p.is_file()]
    return out


def gather(
    docs: str | os.PathLike[str],
    *,
    build_id: str | None = None,
    previous: str | os.PathLike[str] | None = None,
    eval_dir: str | os.PathLike[str] | None = None,
) -> ReportData:
    """Read everything the report of ``docs`` (its live build, or ``build_id``) shows.

    Raises:
        FatalError: the release, a build or a file is missing, corrupt or unreadable.
    """
    build_dir = release.resolve_build(docs, build_id)
    manifest = release.load_manifest(build_dir)
    adapters = _read_rows(build_dir, manifest, "adapters", ADAPTER_COLUMNS)
    adapters.sort(key=lambda a: (-(a.get("downloads") or 0), a["adapter_id"]))
    images: dict[str, list[dict[str, Any]]] = {}
    for row in _read_rows(build_dir, manifest, "images", IMAGE_COLUMNS):
        images.setdefault(row["adapter_id"], []).append(row)
    dead, dead_total = _read_dead_letters(build_dir, manifest)
    removed, removed_total = _read_removed(build_dir, manifest)
    prev_dir = previous_build_dir(Path(docs), build_dir, previous)
    diff = diff_builds(prev_dir, adapters) if prev_dir is not None else None
    return ReportData(
        build_dir=build_dir, manifest=manifest, adapters=adapters, images=images, dead_letters=dead,
        dead_letter_total=dead_total, removed=removed, removed_total=removed_total, diff=diff,
        eval=read_eval(eval_dir) if eval_dir is not None else None,
    )  # fmt: skip
