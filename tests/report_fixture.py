"""Two builds of one release for the report tests: a previous one and a live one with everything a
report shows — filtered and dead-lettered records, removed adapters, render statuses with rendered PNGs
(written where the render stage writes them, ``rendered/<adapter>/…``), example images served by a
loopback HTTP server, and a changed, an added and a removed adapter between the builds.

Everything is written through the build's writer (``stylus_docs.writer``), as :mod:`release_fixture`
does, so the release is in the exact format a build writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from release_fixture import EMBEDDER_INFO, sample_rows

from stylus_docs import release, writer
from stylus_docs.render.prompts import image_relpath

#: Render outcome of each adapter of the live build (the rest: not_rendered).
RENDER = {
    "civitai:101@1001": "ok",
    "civitai:102@1002": "ok",
    "civitai:103@1003": "load_failed",
    "civitai:104@1004": "unsupported_format",
}
DEAD = [
    {"stage": "normalize", "reason": "bad_json", "record_id": "raw/civitai/models-0.jsonl.gz:7",
     "detail": "Expecting value", "source": "raw/civitai/models-0.jsonl.gz"},
    {"stage": "refine", "reason": "vlm_bad_answer", "record_id": "civitai:201@2001", "detail": "no JSON",
     "source": None},
    {"stage": "refine", "reason": "vlm_bad_answer", "record_id": "civitai:202@2002", "detail": "no JSON",
     "source": None},
]  # fmt: skip
FILTERED = {"nsfw": 2, "no_safetensors": 1}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")


@dataclass
class ReportRelease:
    """The release and what its manifest should say."""

    docs: Path
    previous_dir: Path
    build_dir: Path
    image_server: str  # http://127.0.0.1:PORT serving the example images
    added: list[str]
    removed: list[str]
    changed: list[str]
    server: ThreadingHTTPServer

    def close(self) -> None:
        """Stop the image server."""
        self.server.shutdown()
        self.server.server_close()


def serve_directory(root: Path) -> tuple[ThreadingHTTPServer, str]:
    """A static file server on loopback (port chosen by the OS) over ``root``; returns it and its URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _write_build(docs: Path, rows: list[dict[str, Any]], bid: str, *, image_base: str, live: bool) -> Path:
    build = release.build_path(docs, bid)
    build.mkdir(parents=True)
    files = [
        writer.write_parquet_shard(build, "adapters", i, 2, rows[i::2], EMBEDDER_INFO["dim"])
        for i in range(2)
    ]
    images: list[dict[str, Any]] = []
    for n, r in enumerate(rows):
        for j, prompt in enumerate(r["example_prompts"]):
            images.append({
                "adapter_id": r["adapter_id"], "image_id": f"ex{j}-{r['version_id']}", "origin": "example",
                "url": f"{image_base}/{r['version_id']}-{j}.png", "path": None, "prompt": prompt,
                "seed": 100 + j, "width": 64, "height": 48,
            })  # fmt: skip
        if live and RENDER.get(r["adapter_id"]) == "ok":
            for with_adapter in (False, True):
                rel = image_relpath(r["adapter_id"], with_adapter, 0, 7)
                _png(build / rel, (40 * n % 255, 200 if with_adapter else 60, 90))
                images.append({
                    "adapter_id": r["adapter_id"], "image_id": f"r-{with_adapter}-{r['version_id']}",
                    "origin": "rendered", "url": None, "path": rel, "prompt": r["example_prompts"][0],
                    "seed": 7, "with_adapter": with_adapter, "width": 64, "height": 48,
                })  # fmt: skip
    files.append(writer.write_parquet_shard(build, "images", 0, 1, images))
    dead = DEAD if live else []
    files.append(writer.write_dead_letters(build, dead))
    filtered = FILTERED if live else {}
    counts: dict[str, Any] = {
        "input": len(rows) + sum(filtered.values()) + len(dead), "written": len(rows), "filtered": filtered,
        "dead_letter": dict(Counter(d["reason"] for d in dead)), "reused": 6 if live else 0,
        "refined": len(rows), "embedded": len(rows), "images": len(images),
    }  # fmt: skip
    if live:
        counts["rendered"] = dict(Counter(r["render_status"] for r in rows))
        removed = [{"adapter_id": "civitai:150@1500", "reason": "tombstone", "last_seen": "2026-11-30",
                    "host": "https://civitai.com"}]  # fmt: skip
        files.append(writer.write_removed(build, removed))
        counts["removed"] = len(removed)
    manifest = {
        "schema_version": release.SCHEMA_VERSION, "build_id": bid,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [{"path": "fixture", "sha256": "0" * 64}],
        "refiner": {"name": "extractive", "version": "v1", "model": "none"}, "embedder": dict(EMBEDDER_INFO),
        "counts": counts, "files": files,
    }  # fmt: skip
    writer.finalize_build(docs, bid, manifest, keep=10)
    return build


def write_report_release(root: Path) -> ReportRelease:
    """Write ``root/docs`` with two builds (the second live) and example PNGs under ``root/cdn``."""
    base = sample_rows()
    for r in base:
        r["content_hash"] = _hash(r["adapter_id"])
    previous = copy.deepcopy(base[:-1])  # the last adapter is new in the live build
    previous.append(dict(copy.deepcopy(base[0]), adapter_id="civitai:150@1500", version_id="1500",
                         model_id="150", title="Retired Adapter", content_hash=_hash("old")))  # fmt: skip
    live = copy.deepcopy(base)
    live[1]["content_hash"] = _hash("changed description")  # Fire Dragon changed
    for r in live:
        r["render_status"] = RENDER.get(r["adapter_id"], "not_rendered")
        if r["render_status"] not in ("ok", "not_rendered"):
            r["render_error"] = f"{r['render_status']}: test adapter"
    cdn = root / "cdn"
    for n, r in enumerate(live):
        for j in range(len(r["example_prompts"])):
            _png(cdn / f"{r['version_id']}-{j}.png", (200, 30 * n % 255, 20 * j))
    server, url = serve_directory(cdn)
    docs = root / "docs"
    prev_dir = _write_build(docs, previous, "20261201T000000Z-aaaaaa", image_base=url, live=False)
    build_dir = _write_build(docs, live, "20261202T000000Z-bbbbbb", image_base=url, live=True)
    return ReportRelease(
        docs=docs, previous_dir=prev_dir, build_dir=build_dir, image_server=url,
        added=[base[-1]["adapter_id"]], removed=["civitai:150@1500"], changed=[base[1]["adapter_id"]],
        server=server,
    )  # fmt: skip


def manifest_counts(build_dir: Path) -> dict[str, int]:
    """The manifest's counts flattened to the page's ``data-count`` keys (``filtered.nsfw``, …)."""
    counts = json.loads((build_dir / "manifest.json").read_text())["counts"]
    flat: dict[str, int] = {}
    for key, value in counts.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": int(v) for k, v in value.items()})
        else:
            flat[key] = int(value)
    return flat
