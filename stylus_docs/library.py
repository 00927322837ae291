"""The user's own adapter library: a folder of ``.safetensors`` files linked to a release by hash.

``stylus-docs link --docs DOCS DIR`` hashes every ``.safetensors`` file under DIR (streamed SHA-256),
matches each to release entries and writes the index ``DIR/.stylus-link.json`` (``--index FILE`` puts it
elsewhere, e.g. for a read-only folder)::

    {"format": "stylus-link.v1", "dir": "/abs/DIR", "docs": "DOCS", "build_id": "...", "linked_at": "...",
     "files": [{"path": "sub/name.safetensors", "size": 151110, "mtime_ns": 1700000000000000000,
                "sha256": "<64 hex>", "adapter_id": "civitai:1@2", "adapter_ids": ["civitai:1@2"],
                "matched_by": "sha256" | "autov2" | null}]}

Matching: by the full SHA-256 first; else by AutoV2, Civitai's short hash (the first 10 hex digits of
the SHA-256, compared case-insensitively) — the release's ``sha256`` column may hold either form. A file
that matches nothing keeps ``adapter_id: null`` and is reported as unmatched. Paths are relative to DIR,
so a moved folder stays linked.

The index is also the hash cache: a file whose (path, size, mtime) is unchanged since the last link is
not read again, so re-linking a large folder (or linking it against a new build) costs a directory walk.

:func:`local_weights` is what ``compose --local`` and ``generate`` use: ``{adapter_id: path}`` of the
linked files that are still there unchanged (a file edited since it was linked is left out until the
next ``link``: its recorded hash no longer says what it holds).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.errors import FatalError
from stylus_docs.release import load_manifest, read_table, resolve_build, sha256_file

log = logging.getLogger(__name__)

INDEX_NAME = ".stylus-link.json"
INDEX_FORMAT = "stylus-link.v1"
#: Length of an AutoV2 hash (Civitai's short form of the SHA-256).
AUTOV2_LEN = 10
MATCHED_BY = ("sha256", "autov2")


@dataclass(slots=True)
class LinkedFile:
    """One ``.safetensors`` file of the library.

    Args:
        path: path relative to the library folder (POSIX separators).
        size: size in bytes when hashed.
        mtime_ns: modification time when hashed.
        sha256: lowercase hex SHA-256 of the file.
        adapter_id: the release entry it matched (the first, by id, when several share the file).
        adapter_ids: every release entry it matched.
        matched_by: ``sha256``, ``autov2`` or None (unmatched).
    """

    path: str
    size: int
    mtime_ns: int
    sha256: str
    adapter_id: str | None = None
    adapter_ids: list[str] = field(default_factory=list)
    matched_by: str | None = None


@dataclass(slots=True)
class LinkReport:
    """What one ``link`` run did.

    Args:
        dir: the library folder.
        index: where the index was written.
        build_id: the release build matched against.
        files: every file, sorted by path.
        hashed: files read and hashed this run.
        cached: files whose hash came from the previous index.
    """

    dir: Path
    index: Path
    build_id: str
    files: list[LinkedFile]
    hashed: int = 0
    cached: int = 0

    @property
    def matched(self) -> list[LinkedFile]:
        """Files linked to a release entry."""
        return [f for f in self.files if f.adapter_id]

    @property
    def unmatched(self) -> list[LinkedFile]:
        """Files no release entry has."""
        return [f for f in self.files if not f.adapter_id]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the CLI's ``--format json``)."""
        by = {m: sum(f.matched_by == m for f in self.files) for m in MATCHED_BY}
        return {
            "dir": str(self.dir),
            "index": str(self.index),
            "build_id": self.build_id,
            "files": len(self.files),
            "hashed": self.hashed,
            "cached": self.cached,
            "matched": len(self.matched),
            "matched_by": by,
            "unmatched": [f.path for f in self.unmatched],
            "links": [
                {"path": f.path, "sha256": f.sha256, "adapter_id": f.adapter_id, "matched_by": f.matched_by}
                for f in self.files
            ],
        }


def index_path(library: str | os.PathLike[str], index: str | os.PathLike[str] | None = None) -> Path:
    """Where the index of ``library`` lives: ``index`` when given, else ``library/.stylus-link.json``."""
    return Path(index) if index is not None else Path(library) / INDEX_NAME


def scan(library: str | os.PathLike[str]) -> list[Path]:
    """Every ``.safetensors`` file under ``library`` (any case of the suffix), sorted.

    Hidden folders are skipped and folder symlinks are not followed (a link back up would loop).
    """
    root = Path(library)
    if not root.is_dir():
        raise FatalError(f"library folder not found: {root}")
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(".safetensors") and not name.startswith("."):
                path = Path(dirpath) / name
                if path.is_file():
                    out.append(path)
    return sorted(out)


def read_index(
    library: str | os.PathLike[str], index: str | os.PathLike[str] | None = None
) -> dict[str, Any] | None:
    """The index of ``library`` as written by :func:`link`, or None when there is none.

    Raises:
        FatalError: the file exists but is not a link index.
    """
    path = index_path(library, index)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FatalError(f"{path} is not a readable link index: {str(exc).splitlines()[0]}") from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != INDEX_FORMAT
        or not isinstance(data.get("files"), list)
    ):
        raise FatalError(f"{path} is not a {INDEX_FORMAT} link index")
    return data


def release_hashes(docs: str | os.PathLike[str]) -> tuple[str, dict[str, list[str]], dict[str, list[str]]]:
    """``(build_id, full SHA-256 → adapter ids, AutoV2 → adapter ids)`` of a release's adapters."""
    build_dir = resolve_build(docs)
    manifest = load_manifest(build_dir)
    table = read_table(build_dir, manifest, "adapters", ["adapter_id", "sha256"])
    full: dict[str, list[str]] = {}
    short: dict[str, list[str]] = {}
    if "sha256" in table.column_names:
        for aid, sha in zip(
            table.column("adapter_id").to_pylist(), table.column("sha256").to_pylist(), strict=True
        ):
            value = (sha or "").strip().lower()
            if not _is_hex(value) or len(value) not in (64, AUTOV2_LEN):
                continue
            if len(value) == 64:
                full.setdefault(value, []).append(aid)
            short.setdefault(value[:AUTOV2_LEN], []).append(aid)
    for ids in (*full.values(), *short.values()):
        ids.sort()
    return str(manifest["build_id"]), full, short


def _is_hex(value: str) -> bool:
    return bool(value) and all(c in "0123456789abcdef" for c in value)


def link(
    docs: str | os.PathLike[str],
    library: str | os.PathLike[str],
    index: str | os.PathLike[str] | None = None,
    rehash: bool = False,
) -> LinkReport:
    """Hash the library's files (reusing unchanged hashes), match them to ``docs``, write the index.

    Args:
        docs: release root or build directory.
        library: the folder of ``.safetensors`` files.
        index: where to write the index (default ``library/.stylus-link.json``).
        rehash: hash every file again, ignoring the cached hashes.

    Returns:
        The :class:`LinkReport`.
    """
    root = Path(library).resolve()
    files = scan(root)
    target = index_path(root, index)
    previous = {} if rehash else _cached_hashes(root, index)
    build_id, full, short = release_hashes(docs)
    out: list[LinkedFile] = []
    hashed = cached = 0
    for path in files:
        stat = path.stat()
        rel = path.relative_to(root).as_posix()
        sha = previous.get((rel, stat.st_size, stat.st_mtime_ns))
        if sha is None:
            sha = sha256_file(path)
            hashed += 1
        else:
            cached += 1
        entry = LinkedFile(path=rel, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha)
        ids = full.get(sha)
        if ids:
            entry.matched_by = "sha256"
        else:
            ids = short.get(sha[:AUTOV2_LEN])
            entry.matched_by = "autov2" if ids else None
        if ids:
            entry.adapter_ids = list(ids)
            entry.adapter_id = ids[0]
        out.append(entry)
    payload = {
        "format": INDEX_FORMAT,
        "dir": str(root),
        "docs": str(docs),
        "build_id": build_id,
        "linked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [asdict(f) for f in out],
    }
    try:
        atomic_write_text(target, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    except OSError as exc:
        raise FatalError(f"cannot write the link index {target}: {exc.strerror}; use --index FILE") from exc
    log.info(
        "linked %s: %d files, %d matched, %d hashed",
        root,
        len(out),
        sum(bool(f.adapter_id) for f in out),
        hashed,
    )
    return LinkReport(dir=root, index=target, build_id=build_id, files=out, hashed=hashed, cached=cached)


def _cached_hashes(root: Path, index: str | os.PathLike[str] | None) -> dict[tuple[str, int, int], str]:
    try:
        data = read_index(root, index)
    except FatalError as exc:
        log.warning("ignoring the old link index: %s", exc)
        return {}
    out: dict[tuple[str, int, int], str] = {}
    for item in (data or {}).get("files", []):
        try:
            key = (str(item["path"]), int(item["size"]), int(item["mtime_ns"]))
            sha = str(item["sha256"]).lower()
        except (KeyError, TypeError, ValueError):
            continue
        if len(sha) == 64 and _is_hex(sha):
            out[key] = sha
    return out


def local_weights(
    library: str | os.PathLike[str], index: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """``{adapter_id: absolute path}`` of the library's linked files, as :func:`link` recorded them.

    Only files still present with the size and modification time they had when hashed are returned;
    when several files hold the same adapter the first path (sorted) wins.

    Raises:
        FatalError: the library has no index (run ``stylus-docs link`` first) or it is unreadable.
    """
    root = Path(library).resolve()
    data = read_index(root, index)
    if data is None:
        raise FatalError(
            f"{index_path(root, index)} not found: run `stylus-docs link --docs DOCS {library}` first"
        )
    out: dict[str, Path] = {}
    stale = 0
    for item in sorted(data["files"], key=lambda d: str(d.get("path", ""))):
        ids = item.get("adapter_ids") or ([item["adapter_id"]] if item.get("adapter_id") else [])
        if not ids or not isinstance(item.get("path"), str):
            continue
        path = root / item["path"]
        try:
            stat = path.stat()
        except OSError:
            stale += 1
            continue
        if stat.st_size != item.get("size") or stat.st_mtime_ns != item.get("mtime_ns"):
            stale += 1
            continue
        for aid in ids:
            out.setdefault(str(aid), path)
    if stale:
        log.warning("%d linked file(s) in %s changed or vanished since `link`; run it again", stale, root)
    return out
