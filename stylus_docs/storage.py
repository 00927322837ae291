"""URL-aware storage: local paths unchanged, ``s3://`` and ``gs://`` through one pyarrow.fs code path.

A release or crawl output on object storage is addressed as ``s3://bucket/prefix`` (or ``gs://…``).
:func:`filesystem` turns such a URL into a ``pyarrow.fs`` file system plus the path inside it; S3 takes
its endpoint from ``AWS_ENDPOINT_URL`` (an S3-compatible server such as MinIO or moto) and its
credentials from the standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``
/ ``AWS_DEFAULT_REGION`` variables; ``gs://`` uses ``pyarrow.fs.FileSystem.from_uri`` and the Google
application-default credentials. No secret is ever put into a message.

Publication on a store without rename (see :mod:`stylus_docs.release`): a build is uploaded under its
own prefix ``builds/<build_id>/``, its ``manifest.json`` after its shards, and the ``CURRENT`` object
last. A PUT of one object is atomic on S3 and GCS, so a reader resolving ``CURRENT`` always finds a
complete build and then reads only the files that build's manifest lists (:func:`mirror_release`).

Readers do not query the store in place: the files a manifest lists are copied into a local,
immutable per-build mirror (each verified against the manifest's size and SHA-256) and the existing
local readers — DuckDB's sandboxed views, pyarrow — run over that. The SQL sandbox therefore never holds
object-store credentials or network access, and a build is fetched once per machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from stylus_docs.errors import FatalError

#: URL schemes served by object storage; anything else is a local path.
SCHEMES = ("s3", "gs", "gcs")
#: Largest single object read into memory (a manifest or ``CURRENT``); shards are streamed.
MAX_SMALL_OBJECT = 64 << 20
#: Seconds to connect and per request; an unreachable endpoint fails in about this long, not minutes.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def is_url(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` names object storage (``s3://``, ``gs://``) rather than a local path."""
    return path is not None and urlparse(str(path)).scheme in SCHEMES


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended, ``/``-separated."""
    out = str(url).rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def _s3(parsed: Any) -> Any:
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,
        # Two tries: a wrong endpoint is reported promptly instead of after minutes of backoff.
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        ep = urlparse(endpoint)
        if not ep.scheme or not ep.netloc:
            raise FatalError(f"AWS_ENDPOINT_URL must be a URL like http://host:port, got {endpoint!r}")
        kwargs["endpoint_override"] = ep.netloc + ep.path.rstrip("/")
        kwargs["scheme"] = ep.scheme
        # S3-compatible servers on a host:port serve buckets as path components, not subdomains.
        kwargs["force_virtual_addressing"] = False
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def filesystem(url: str) -> tuple[Any, str]:
    """The ``pyarrow.fs`` file system for ``url`` and the path inside it (``bucket/prefix``).

    Raises:
        FatalError: a malformed URL or a file system pyarrow cannot create.
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    parsed = urlparse(str(url))
    if not parsed.netloc:
        raise FatalError(f"{url}: an object-store URL needs a bucket (s3://BUCKET/prefix)")
    path = (parsed.netloc + parsed.path).rstrip("/")
    try:
        if parsed.scheme == "s3":
            return _s3(parsed), path
        fs, inner = pafs.FileSystem.from_uri(str(url))
        return fs, inner.rstrip("/")
    except (OSError, pa.ArrowException) as exc:
        raise store_error(url, exc) from exc


def store_error(url: str, exc: BaseException) -> FatalError:
    """One clear line for a failed object-store call: the URL and the store's reason, never a secret."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    squashed = low.replace("_", "").replace(" ", "")  # ACCESS_DENIED, Access Denied, AccessDenied
    if any(k in squashed for k in ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch",
                                   "forbidden", "expiredtoken")):  # fmt: skip
        hint = "credentials refused (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    elif any(k in low for k in ("curl", "connect", "resolve", "timed out", "timeout", "unreachable")):
        hint = "endpoint unreachable (check AWS_ENDPOINT_URL and the network)"
    elif "nosuchbucket" in low or "bucket does not exist" in low:
        hint = "no such bucket"
    else:
        hint = "object-store error"
    return FatalError(f"{url}: {hint}: {text[:300]}")


def read_bytes(url: str, *, missing_ok: bool = False, limit: int = MAX_SMALL_OBJECT) -> bytes | None:
    """The whole object at ``url`` (at most ``limit`` bytes); None when absent and ``missing_ok``."""
    import pyarrow as pa

    fs, path = filesystem(url)
    try:
        with fs.open_input_stream(path) as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise FatalError(f"{url}: no such object") from None
    except (OSError, pa.ArrowException) as exc:
        raise store_error(url, exc) from exc
    if len(data) > limit:
        raise FatalError(f"{url}: larger than {limit} bytes; refusing to read it into memory")
    return bytes(data)


def write_bytes(url: str, data: bytes) -> None:
    """PUT ``data`` as the object at ``url`` (one atomic object write on S3/GCS)."""
    import pyarrow as pa

    fs, path = filesystem(url)
    try:
        with fs.open_output_stream(path) as out:
            out.write(data)
    except (OSError, pa.ArrowException) as exc:
        raise store_error(url, exc) from exc


def upload_file(local: str | os.PathLike[str], url: str) -> None:
    """Stream the local file ``local`` to the object at ``url``."""
    import pyarrow as pa

    fs, path = filesystem(url)
    try:
        with open(local, "rb") as src, fs.open_output_stream(path) as out:
            while block := src.read(_CHUNK):
                out.write(block)
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename:
            raise
        raise store_error(url, exc) from exc


def download_file(url: str, local: str | os.PathLike[str]) -> None:
    """Stream the object at ``url`` into ``local``, atomically (temporary sibling, then rename)."""
    import pyarrow as pa

    from stylus_docs.atomic import atomic_open

    fs, path = filesystem(url)
    try:
        with fs.open_input_stream(path) as stream, atomic_open(local, "wb") as out:
            while block := stream.read(_CHUNK):
                out.write(block)
    except FileNotFoundError:
        raise FatalError(f"{url}: no such object") from None
    except (OSError, pa.ArrowException) as exc:
        raise store_error(url, exc) from exc


def list_files(url: str) -> list[str]:
    """Paths (relative to ``url``, ``/``-separated) of every object under the prefix ``url``, sorted."""
    return sorted(_sizes(url))


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


# ------------------------------------------------------------------------------------ releases
def cache_root() -> Path:
    """``$STYLUS_DOCS_CACHE/releases`` or ``$XDG_CACHE_HOME/stylus-docs/releases`` (``~/.cache``)."""
    base = os.environ.get("STYLUS_DOCS_CACHE")
    if base:
        return Path(base) / "releases"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stylus-docs" / "releases"


def _mirror_dir(url: str) -> Path:
    return cache_root() / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def mirror_release(url: str, build_id: str | None = None) -> Path:
    """A local release root mirroring the live build of the release at ``url``; return it.

    Resolves ``CURRENT`` (or ``build_id``; or treats ``url`` as a build prefix when a ``manifest.json``
    lies right there), reads that build's manifest, and fetches exactly the files it lists — never a
    listing of a prefix that may be being written. Each file is checked against the manifest's size and
    SHA-256 (:func:`stylus_docs.release.verify_entry`); a build is immutable, so its mirror is reused.

    Raises:
        FatalError: no release at ``url``, an unusable manifest, a corrupt file, or a store error.
    """
    from stylus_docs import release, safe_json

    url = url.rstrip("/")
    direct = read_bytes(join(url, release.MANIFEST_FILE), missing_ok=True) if build_id is None else None
    if direct is not None:
        try:
            bid = str(safe_json.loads(direct).get("build_id", ""))
        except (safe_json.UnsafeJSON, AttributeError) as exc:
            raise FatalError(f"manifest {join(url, release.MANIFEST_FILE)} is not valid JSON") from exc
        build_url, manifest_bytes = url, direct
    else:
        if build_id is None:
            current = read_bytes(join(url, release.CURRENT_FILE), missing_ok=True)
            if current is None:
                raise FatalError(f"{url} is not a StylusDocs release (no {release.CURRENT_FILE} object)")
            build_id = current.decode("utf-8", "replace").strip()
        bid = build_id
        build_url = join(url, release.BUILDS_DIR, bid)
        manifest_bytes = read_bytes(join(build_url, release.MANIFEST_FILE), missing_ok=True)
        if manifest_bytes is None:
            raise FatalError(f"build {bid} of {url} has no {release.MANIFEST_FILE}")
    root = _mirror_dir(url)
    local = release.build_path(root, bid)  # also rejects unsafe build ids
    tmp = Path(tempfile.mkdtemp(prefix=".manifest-", dir=_ensure(root)))
    try:
        (tmp / release.MANIFEST_FILE).write_bytes(manifest_bytes)
        manifest = release.load_manifest(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for entry in manifest["files"]:
        target = release._entry_path(local, entry)
        if not (target.is_file() and target.stat().st_size == entry["bytes"]):
            download_file(join(build_url, entry["path"]), target)
        release.verify_entry(local, entry)
    # The manifest lands last, so an interrupted mirror is never mistaken for a complete one.
    from stylus_docs.atomic import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(local / release.MANIFEST_FILE, manifest_bytes)
    atomic_write_text(root / release.CURRENT_FILE, bid + "\n")
    return root


def _ensure(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"cannot create the release mirror {path}: {exc.strerror}") from exc
    return path


def publish_build(local_docs: str | os.PathLike[str], build_id: str, url: str) -> None:
    """Upload local build ``build_id`` under ``url/builds/<id>/`` (manifest last), then ``CURRENT``.

    Builds never overwrite one another (unique ids), and ``CURRENT`` is one object replaced in a single
    PUT, so readers see the old build or the new one, never a mix.
    """
    from stylus_docs import release

    local = release.build_path(local_docs, build_id)
    release.load_manifest(local)  # refuse to publish an incomplete build
    sync_up(local, join(url, release.BUILDS_DIR, build_id), last=(release.MANIFEST_FILE,))
    write_bytes(join(url, release.CURRENT_FILE), (build_id + "\n").encode())


def check_reachable(url: str) -> None:
    """Fail fast, in one line, when the store behind ``url`` refuses us or cannot be reached."""
    import pyarrow as pa

    fs, path = filesystem(url)

    try:
        fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        raise store_error(url, exc) from exc


# ------------------------------------------------------------------------------ staged pipelines
def staging_dir(url: str, kind: str) -> Path:
    """A persistent local directory standing in for ``url`` while a crawl or build runs (``kind``:
    ``out``, ``raw`` or ``previous``). Keyed by the URL, so a killed run resumes from the same place."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]
    return _ensure(cache_root().parent / "staging" / kind / digest)


def _sizes(url: str) -> dict[str, int]:
    """``relative path → size`` of every object under the prefix ``url``."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    fs, base = filesystem(url)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise store_error(url, exc) from exc
    return {i.path[len(base) :].lstrip("/"): int(i.size) for i in infos if i.type == pafs.FileType.File}


def sync_down(url: str, local: str | os.PathLike[str]) -> int:
    """Make ``local`` hold every object under ``url`` (those missing or of another size are fetched).

    Returns:
        The number of objects fetched.
    """
    fetched = 0
    for rel, size in sorted(_sizes(url).items()):
        parts = Path(rel).parts
        if ".." in parts or Path(rel).is_absolute() or not rel:
            raise FatalError(f"{url}: unsafe object name {rel!r}")
        target = Path(local) / rel
        if target.is_file() and target.stat().st_size == size:
            continue
        download_file(join(url, rel), target)
        fetched += 1
    return fetched


def sync_up(local: str | os.PathLike[str], url: str, *, last: tuple[str, ...] = (),
            since: float | None = None) -> int:  # fmt: skip
    """Upload the files under ``local`` that ``url`` lacks, holds with another size, or that changed
    locally at or after ``since`` (a run's start); the relative paths in ``last`` are uploaded last
    (always), hidden temporaries never.

    Returns:
        The number of objects written.
    """
    root = Path(local)
    remote = _sizes(url)
    rels = [p.relative_to(root).as_posix() for p in _walk(root)]
    rels = [r for r in rels if not Path(r).name.startswith(".")]
    def stale(rel: str) -> bool:
        stat = (root / rel).stat()
        return remote.get(rel) != stat.st_size or (since is not None and stat.st_mtime >= since)

    todo = [r for r in rels if r not in last and stale(r)]
    todo += [r for r in last if r in rels]
    for rel in todo:
        upload_file(root / rel, join(url, rel))
    return len(todo)


# ------------------------------------------------------------------------------ DuckDB in place
def httpfs_extension_dir() -> str:
    """The ``extension_directory`` holding DuckDB's httpfs extension (the ``duckdb-ext-httpfs`` package:
    extensions cannot be downloaded at run time)."""
    import importlib.util

    spec = importlib.util.find_spec("duckdb_ext")
    for base in list(spec.submodule_search_locations or []) if spec else []:
        if list(Path(base, "extensions").glob("*/*/httpfs.duckdb_extension")):
            return str(Path(base, "extensions"))
    raise FatalError("DuckDB's httpfs extension is not installed (pip install duckdb-ext-httpfs)")


def duckdb_connect() -> Any:
    """A DuckDB connection that reads ``s3://`` in place through httpfs, with the endpoint and
    credentials of the standard AWS variables (a session secret: never written to disk or a log).

    For people who query the published Parquet shards with plain DuckDB; the toolkit's own readers
    mirror a build and verify every file first (:func:`mirror_release`).
    """
    import duckdb

    con = duckdb.connect(config={"extension_directory": httpfs_extension_dir(),
                                 "autoinstall_known_extensions": False})  # fmt: skip
    con.execute("LOAD httpfs")
    options: dict[str, str] = {"TYPE": "s3"}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options.update(KEY_ID=key, SECRET=secret)
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["REGION"] = region
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        ep = urlparse(endpoint)
        options.update(ENDPOINT=ep.netloc + ep.path.rstrip("/"), URL_STYLE="path",
                       USE_SSL="true" if ep.scheme == "https" else "false")
    # Values are bound as literals of a CREATE SECRET; single quotes doubled, nothing echoed.
    body = ", ".join(f"{k} '{v.replace(chr(39), chr(39) * 2)}'" if k != "TYPE" else f"TYPE {v}"
                     for k, v in options.items())  # fmt: skip
    con.execute(f"CREATE OR REPLACE SECRET stylus_s3 ({body})")
    return con
