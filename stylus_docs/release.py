"""The StylusDocs release layout: resolving the live build, reading its manifest, publishing a build.

::

    DOCS/
      CURRENT                     one line: the live build id (replaced atomically)
      latest -> builds/<id>       symlink to the same build
      builds/<id>/manifest.json   schema version, inputs, counts, refiner, embedder, file list
      builds/<id>/adapters/part-NNNNN-of-MMMMM.parquet
      builds/<id>/images/part-NNNNN-of-MMMMM.parquet
      builds/<id>/dead_letter/part-NNNNN-of-MMMMM.jsonl

Readers resolve ``CURRENT`` and read exactly the files the manifest lists — never a glob over a
directory that may be being written — so a reader never sees half a build, and a failed build leaves the
previous one live. This module holds only the layout; the writer is the build stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.errors import FatalError

#: Version of the release format (manifest + tables). Bumped on incompatible change.
SCHEMA_VERSION = "stylusdocs.v1"
CURRENT_FILE = "CURRENT"
LATEST_LINK = "latest"
BUILDS_DIR = "builds"
MANIFEST_FILE = "manifest.json"
#: Keys a manifest must have for a reader to trust it.
REQUIRED_MANIFEST_KEYS = ("schema_version", "build_id", "created_at", "embedder", "counts", "files")


def new_build_id(now: float | None = None) -> str:
    """A sortable, unique build id: UTC timestamp plus a short random suffix."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def build_path(docs: str | os.PathLike[str], build_id: str) -> Path:
    """Directory of build ``build_id`` under release root ``docs``."""
    if not build_id or "/" in build_id or build_id.startswith("."):
        raise FatalError(f"invalid build id {build_id!r}")
    return Path(docs) / BUILDS_DIR / build_id


def current_build_id(docs: str | os.PathLike[str]) -> str | None:
    """The live build id named by ``DOCS/CURRENT``, or None when nothing was published yet."""
    try:
        text = (Path(docs) / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def resolve_build(docs: str | os.PathLike[str], build_id: str | None = None) -> Path:
    """Return the build directory to read.

    ``docs`` may be a release root (``CURRENT`` is followed, or ``build_id`` if given) or a build
    directory itself (one holding ``manifest.json``).
    """
    root = Path(docs)
    if not root.exists():
        raise FatalError(f"release not found: {root}")
    if build_id is None and (root / MANIFEST_FILE).is_file():
        return root
    bid = build_id or current_build_id(root)
    if bid is None:
        raise FatalError(f"{root} is not a StylusDocs release (no {CURRENT_FILE} file and no manifest)")
    path = build_path(root, bid)
    if not (path / MANIFEST_FILE).is_file():
        raise FatalError(f"build {bid} of {root} has no {MANIFEST_FILE}")
    return path


def load_manifest(build_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of a build directory."""
    path = Path(build_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FatalError(f"no manifest at {path}") from exc
    except json.JSONDecodeError as exc:
        raise FatalError(f"manifest {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(manifest, dict):
        raise FatalError(f"manifest {path} is not a JSON object")
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise FatalError(f"manifest {path} lacks {', '.join(missing)}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise FatalError(
            f"manifest {path} has schema_version {manifest['schema_version']!r}; "
            f"this toolkit reads {SCHEMA_VERSION!r}"
        )
    return manifest


def table_files(build_dir: str | os.PathLike[str], manifest: dict[str, Any], table: str) -> list[Path]:
    """Absolute paths of the files of ``table`` listed in the manifest, in order."""
    base = Path(build_dir)
    out: list[Path] = []
    for entry in manifest.get("files", []):
        if entry.get("table") != table:
            continue
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise FatalError(f"manifest lists an unsafe path: {entry['path']!r}")
        out.append(base / rel)
    return out


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_files(build_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """Check every listed file's size and SHA-256; return a list of problems (empty when intact)."""
    problems: list[str] = []
    base = Path(build_dir)
    for entry in manifest.get("files", []):
        path = base / entry["path"]
        if not path.is_file():
            problems.append(f"missing: {entry['path']}")
            continue
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            problems.append(f"size mismatch: {entry['path']}")
            continue
        if "sha256" in entry and sha256_file(path) != entry["sha256"]:
            problems.append(f"sha256 mismatch: {entry['path']}")
    return problems


def publish(docs: str | os.PathLike[str], build_id: str) -> None:
    """Make ``build_id`` the live build: replace ``CURRENT`` atomically, then the ``latest`` symlink.

    The build directory must be complete (manifest written last) before this is called.
    """
    root = Path(docs)
    target = build_path(root, build_id)
    load_manifest(target)  # refuse to publish an incomplete build
    atomic_write_text(root / CURRENT_FILE, build_id + "\n")
    link = root / LATEST_LINK
    tmp = root / f".{LATEST_LINK}.{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(Path(BUILDS_DIR) / build_id, tmp, target_is_directory=True)
        os.replace(tmp, link)  # rename(2) over the old link is atomic
    except OSError:
        # File systems without symlinks: CURRENT alone is authoritative.
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def list_builds(docs: str | os.PathLike[str]) -> list[str]:
    """Build ids under ``DOCS/builds`` that have a manifest, oldest first."""
    base = Path(docs) / BUILDS_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST_FILE).is_file())


def prune(docs: str | os.PathLike[str], keep: int) -> list[str]:
    """Delete all but the newest ``keep`` complete builds (never the live one); return removed ids.

    Incomplete build directories (no manifest: a crashed build) older than the live build go too.
    """
    if keep < 1:
        raise FatalError("retention must keep at least one build")
    root = Path(docs)
    live = current_build_id(root)
    complete = list_builds(root)
    doomed = [b for b in complete[:-keep] if b != live]
    base = root / BUILDS_DIR
    if base.is_dir() and live:
        doomed += [p.name for p in base.iterdir() if p.is_dir() and p.name < live and p.name not in complete]
    for bid in doomed:
        shutil.rmtree(base / bid, ignore_errors=True)
    return doomed
