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
import fcntl
import hashlib
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
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
#: Held by a running build (``flock``), so two builds never write into one release root at once.
LOCK_FILE = ".build.lock"
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
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise FatalError(f"cannot read {Path(docs) / CURRENT_FILE}: {exc}") from exc
    return text or None


def resolve_build(docs: str | os.PathLike[str], build_id: str | None = None) -> Path:
    """Return the build directory to read.

    ``docs`` may be a release root (``CURRENT`` is followed, or ``build_id`` if given) or a build
    directory itself (one holding ``manifest.json``), locally or on object storage (``s3://``,
    ``gs://``): there the build is resolved through its ``CURRENT`` object and the files its manifest
    lists are mirrored into a local, verified per-build cache (:func:`stylus_docs.storage.mirror_release`),
    so every reader below works unchanged.
    """
    from stylus_docs import storage

    if storage.is_url(docs):
        docs, build_id = storage.mirror_release(str(docs), build_id), None
    root = Path(docs)
    if not root.exists():
        raise FatalError(f"release not found: {root}")
    if not root.is_dir():
        raise FatalError(f"{root} is a file, not a StylusDocs release directory")
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
    """Read and validate ``manifest.json`` of a build directory against ``schemas/manifest.v1.json``.

    Raises:
        FatalError: one line naming the manifest and its first problem (missing, not JSON, not a
            StylusDocs manifest, another schema version, a schema violation).
    """
    from stylus_docs import safe_json
    from stylus_docs.schemas import validation_errors

    path = Path(build_dir) / MANIFEST_FILE
    try:
        manifest = safe_json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise FatalError(f"no manifest at {path}") from exc
    except OSError as exc:
        raise FatalError(f"cannot read manifest {path}: {exc.strerror}") from exc
    except safe_json.UnsafeJSON as exc:
        raise FatalError(f"manifest {path} is not valid JSON ({exc})") from exc
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
    errors = validation_errors("manifest.v1.json", manifest)
    if errors:
        raise FatalError(f"manifest {path} is invalid: {errors[0]}")
    return manifest


def table_files(
    build_dir: str | os.PathLike[str], manifest: dict[str, Any], table: str, *, verify: bool = True
) -> list[Path]:
    """Absolute paths of the files of ``table`` listed in the manifest, in order, each verified.

    Every reader of a release (query, sql, compose, download, generate, ``--previous``) gets its files
    here, so every one of them checks what it reads: size and SHA-256 against the manifest
    (:func:`verify_entry`, once per file and process). Parquet readers additionally verify page
    checksums (:data:`PARQUET_READ_OPTIONS`).

    Args:
        verify: check each file (default). Off only for the writer's own freshly written files.

    Raises:
        FatalError: an unsafe path, or a file that is missing or differs from the manifest.
    """
    base = Path(build_dir)
    out: list[Path] = []
    for entry in manifest.get("files", []):
        if entry.get("table") != table:
            continue
        out.append(verify_entry(base, entry) if verify else _entry_path(base, entry))
    return out


#: Keyword arguments for ``pyarrow.parquet`` readers of release shards: page CRCs are checked on read.
PARQUET_READ_OPTIONS: dict[str, Any] = {"page_checksum_verification": True}

# (real path, inode, size, mtime) of every file this process verified; a file replaced or rewritten
# since has another key and is hashed again.
_verified: set[tuple[str, int, int, int]] = set()
_verified_lock = threading.Lock()


def _entry_path(base: Path, entry: dict[str, Any]) -> Path:
    rel = Path(entry["path"])
    if rel.is_absolute() or ".." in rel.parts:
        raise FatalError(f"manifest lists an unsafe path: {entry['path']!r}")
    return base / rel


def verify_entry(build_dir: str | os.PathLike[str], entry: dict[str, Any]) -> Path:
    """Check one manifest-listed file (inside the build, same size and SHA-256); return its path.

    Hashing 75,000 adapters' shards (~300 MB) costs a fraction of a second, once per process: the
    result is cached by (real path, inode, size, mtime), so a file changed later is checked again.

    Raises:
        FatalError: naming the file, when it is outside the build (a symlink), missing or corrupt.
    """
    base = Path(build_dir)
    path = _entry_path(base, entry)
    rel = entry["path"]
    where = f"release file {rel} of build {base.name}"
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(base)):
        raise FatalError(f"{where} is a link to {real}, outside the build; refusing to read it")
    try:
        st = real.stat()
    except OSError as exc:
        raise FatalError(f"{where} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise FatalError(f"{where} is not a regular file")
    key = (str(real), st.st_ino, st.st_size, st.st_mtime_ns)
    with _verified_lock:
        if key in _verified:
            return path
    if st.st_size != entry["bytes"]:
        raise FatalError(
            f"{where} is corrupt: {st.st_size} bytes, the manifest says {entry['bytes']}; "
            "rebuild the release or restore the file"
        )
    if sha256_file(real) != entry["sha256"]:
        raise FatalError(
            f"{where} is corrupt: its SHA-256 differs from the manifest; "
            "rebuild the release or restore the file"
        )
    with _verified_lock:
        _verified.add(key)
    return path


def read_table(
    build_dir: str | os.PathLike[str],
    manifest: dict[str, Any],
    table: str,
    columns: list[str] | None = None,
    *,
    files: list[Path] | None = None,
) -> Any:
    """Read ``table`` of a build as one Arrow table: verified files, page checksums checked.

    Args:
        columns: columns to read; names the shards do not have are left out (older releases lack some).
        files: the table's files when the caller already has them from :func:`table_files`.

    Raises:
        FatalError: naming the file, when a file differs from the manifest or cannot be decoded.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = files if files is not None else table_files(build_dir, manifest, table)
    if not paths:
        raise FatalError(f"release {build_dir} lists no {table} files")
    try:
        if columns is not None:
            names = set(pq.read_schema(paths[0]).names)
            columns = [c for c in columns if c in names]
        return pq.read_table(paths, columns=columns, **PARQUET_READ_OPTIONS)
    except (OSError, pa.ArrowException) as exc:
        raise FatalError(f"release {table} shard unreadable: {str(exc).strip().splitlines()[0]}") from exc


def verify_release(build_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the manifest of ``build_dir`` and verify every file it lists; return the manifest."""
    manifest = load_manifest(build_dir)
    for entry in manifest["files"]:
        verify_entry(build_dir, entry)
    return manifest


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


@contextlib.contextmanager
def build_lock(docs: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``DOCS/.build.lock`` for the length of one build; a second concurrent build is refused.

    Without it, the second build's retention pass prunes the first one's in-progress directory (it has no
    manifest yet, so it looks like a crashed build). ``flock`` is released by the kernel when the holder
    dies, so a build killed with SIGKILL never leaves a stale lock behind.
    """
    path = Path(docs) / LOCK_FILE
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held open for the whole build
    except OSError as exc:
        raise FatalError(f"cannot write into release root {docs}: {exc.strerror}") from exc
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FatalError(
                f"another build is writing into {docs} (its lock {path} is held); "
                "wait for it to finish or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
