"""Adapter weight downloads into a content-addressed, SHA-256-verified cache (README "The GPU worker").

Layout under the cache root::

    sha256/<ab>/<sha256>.safetensors   verified weights, named by their own SHA-256
    sha256/<ab>/<sha256>.json          sidecar: sanitized file name, token-free URL, size, time
    partial/<sha256>.part              an unfinished download (resumed with HTTP Range)
    partial/<sha256>.lock              flock held while one process downloads that hash

A download streams into ``partial/<sha>.part``; when complete its SHA-256 is compared with the card's and
its safetensors header validated (:mod:`stylus_docs.safetensors_check`); only then is it renamed into
``sha256/``. A mismatch deletes the part file and raises — a file in ``sha256/`` is always the bytes its
name says. An interrupted transfer keeps the part file and resumes with ``Range: bytes=N-`` (a server that
answers 200 instead of 206 restarts it).

HTTP goes through :class:`stylus_docs.http.HttpClient` (the crawler's retry policy: bounded exponential
backoff with jitter on 429/5xx/connection errors, ``Retry-After`` honoured). Tokens: ``CIVITAI_API_TOKEN``
goes only to Civitai hosts and ``HF_TOKEN`` only to Hugging Face hosts, as an ``Authorization`` header,
and never follows a redirect to another host (signed storage URLs need none). Tokens are never stored or
logged; stored URLs pass through :func:`~stylus_docs.secrets.strip_token_params`.

Errors of the Civitai download endpoint (``/api/download/models/{versionId}``) become
:class:`~stylus_docs.errors.SkipRecord`
with a stable reason: ``login_required`` (401), ``early_access`` / ``forbidden`` (403), ``not_found``
(404), ``archived`` (410), ``volume_limit`` (429 after retries), ``server_error`` / ``connection_error``
(retries spent), ``sha256_mismatch``, ``too_large``, ``pickle_format``, ``not_safetensors``,
``bad_safetensors_header``, ``no_sha256``, ``bad_url``, ``download_interrupted``, ``html_body``,
``deadline_exceeded``.

Every file has a **total deadline** (``DownloadConfig.deadline_s``, or by default
``max(min_deadline_s, size / min_bytes_per_s)`` = at least 300 s, plus one second per MiB of the file),
covering every resume attempt: a server trickling the body cannot hold a worker for ever. The time left is
checked after every chunk and no socket read waits longer than it. A spent deadline is the record failure
``deadline_exceeded`` (not retried); the part file is kept, so a later run resumes where this one
stopped. A header refused by :mod:`stylus_docs.safetensors_check` (too deep, non-finite, lone surrogate,
inconsistent) is ``bad_safetensors_header`` and its part file is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from stylus_docs.atomic import atomic_write_text
from stylus_docs.errors import FatalError, SkipRecord
from stylus_docs.http import FetchError, HttpClient, HttpFailure, iter_body, safe_url
from stylus_docs.safetensors_check import UnsafeWeightsError, refuse_unsafe_format, validate_safetensors

logger = logging.getLogger(__name__)

#: Host (``host`` or ``host:port``) → environment variable of the token that host may receive.
DEFAULT_AUTH_HOSTS: tuple[tuple[str, str], ...] = (
    ("civitai.com", "CIVITAI_API_TOKEN"),
    ("api.civitai.com", "CIVITAI_API_TOKEN"),
    ("civitai.green", "CIVITAI_API_TOKEN"),
    ("huggingface.co", "HF_TOKEN"),
    ("hf.co", "HF_TOKEN"),
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_CD_FILENAME_STAR = re.compile(r"filename\*\s*=\s*(?:[\w-]+)?'[^']*'([^;]+)", re.IGNORECASE)
_CD_FILENAME = re.compile(r'filename\s*=\s*"?([^";]+)"?', re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class DownloadConfig:
    """Settings of :class:`AdapterCache`.

    Args:
        max_bytes: Largest file accepted (checked against the card, ``Content-Length`` and while streaming).
        auth_hosts: ``(host[:port], ENV_VAR)`` pairs: which host may receive which token.
        max_attempts: Attempts per HTTP request for status/connection failures (the crawler's policy).
        resume_attempts: Attempts to finish one file when the body is cut off (each resumes with Range).
        backoff: Base of the exponential backoff in seconds (full jitter).
        backoff_max: Cap of one backoff wait in seconds.
        timeout: ``(connect, read)`` timeout in seconds (reads are also clipped to the deadline).
        chunk_bytes: Streaming chunk size.
        require_sha256: Refuse cards without a SHA-256 (nothing to verify against).
        deadline_s: Total seconds for one file, resumes included (None: scaled with the size, below).
        min_deadline_s: Smallest scaled deadline.
        min_bytes_per_s: Slowest transfer rate the scaled deadline allows for: a file of ``n`` bytes
            gets ``max(min_deadline_s, n / min_bytes_per_s)`` seconds (size from the card, else the
            response's length, else ``max_bytes``).
    """

    max_bytes: int = 2 * 1024**3
    auth_hosts: tuple[tuple[str, str], ...] = DEFAULT_AUTH_HOSTS
    max_attempts: int = 5
    resume_attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 30.0
    timeout: tuple[float, float] = (10.0, 60.0)
    chunk_bytes: int = 1 << 20
    require_sha256: bool = True
    deadline_s: float | None = None
    min_deadline_s: float = 300.0
    min_bytes_per_s: float = float(1 << 20)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise FatalError("download max_bytes must be positive")
        if self.max_attempts < 1 or self.resume_attempts < 1:
            raise FatalError("download attempts must be >= 1")
        if (self.deadline_s is not None and self.deadline_s <= 0) or self.min_deadline_s <= 0 \
                or self.min_bytes_per_s <= 0:
            raise FatalError("download deadlines and the minimum rate must be positive")

    def budget_s(self, size: int | None) -> float:
        """Total seconds allowed for a file of ``size`` bytes (None: unknown, ``max_bytes`` assumed)."""
        if self.deadline_s is not None:
            return self.deadline_s
        return max(self.min_deadline_s, (size if size is not None else self.max_bytes) / self.min_bytes_per_s)


@dataclass
class _Transfer:
    """The clock of one file's download, shared by its resume attempts."""

    started: float
    size_hint: int | None = None

    def deadline(self, config: DownloadConfig, size: int | None = None) -> float:
        """``time.monotonic()`` value by which the file must be complete."""
        return self.started + config.budget_s(self.size_hint if self.size_hint is not None else size)


class _Interrupted(Exception):
    """The body stopped before the end; the part file is kept and the next attempt resumes it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sanitize_filename(name: str | None, default: str = "adapter.safetensors") -> str:
    """Make an API-supplied file name safe to use as a single path component.

    Drops any directory part (``/`` or ``\\``), URL-decodes it first (``..%2F``), replaces characters
    outside ``[A-Za-z0-9._-]`` with ``_``, strips leading dots (no hidden files, no ``..``) and bounds
    the length to 200 characters, keeping the suffix.

    Args:
        name: The file name from an API, header or card.
        default: Returned when nothing usable is left.

    Returns:
        A non-empty name with no path separators.
    """
    text = unquote(name or "").replace("\x00", "")
    text = re.split(r"[/\\]", text)[-1]
    text = _SAFE_NAME.sub("_", text).lstrip(".-_")
    if not text:
        return default
    if len(text) > 200:
        stem, dot, suffix = text.rpartition(".")
        text = (stem[: 200 - len(suffix) - 1] + dot + suffix) if dot and len(suffix) <= 20 else text[:200]
    return text


def sanitize_path_component(text: str, max_len: int = 120) -> str:
    """Turn an identifier such as ``civitai:123@456`` into one safe path component (``civitai_123_456``).

    Long ids are cut and suffixed with a short hash of the full id, so the result stays unique.

    Args:
        text: Any identifier.
        max_len: Longest result.

    Returns:
        A non-empty string of ``[A-Za-z0-9._-]`` not starting with a dot.
    """
    out = _SAFE_NAME.sub("_", text or "").strip("._-") or "unnamed"
    if len(out) > max_len:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
        out = out[: max_len - 11] + "-" + digest
    return out


def normalize_sha256(value: Any) -> str | None:
    """Lowercase hex SHA-256 from a card value (Civitai gives uppercase), or None when not one."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if _SHA256.match(text) else None


def filename_from_content_disposition(header: str | None) -> str | None:
    """The (unsanitized) file name in a ``Content-Disposition`` header, or None."""
    if not header:
        return None
    m = _CD_FILENAME_STAR.search(header)
    if m:
        return unquote(m.group(1).strip().strip('"'))
    m = _CD_FILENAME.search(header)
    return m.group(1).strip() if m else None


class AdapterCache:
    """Content-addressed cache of adapter weights, filled by verified downloads.

    Picklable (HTTP clients are built lazily, per process), so a Beam DoFn may hold one.

    Args:
        root: Cache directory (created on first use).
        config: Download settings.

    Example::

        cache = AdapterCache("~/.cache/stylus-docs/adapters")
        path = cache.fetch({"adapter_id": "civitai:1@2", "download_url": "...", "sha256": "AB12…",
                            "file_name": "x.safetensors"})
    """

    def __init__(self, root: str | os.PathLike[str], config: DownloadConfig | None = None) -> None:
        self.root = Path(root).expanduser()
        self.config = config or DownloadConfig()
        self._clients: dict[str | None, HttpClient] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state["root"]
        self.config = state["config"]
        self._clients = {}

    # -- lookups -------------------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        """Where the file with this SHA-256 lives (whether or not it is there yet)."""
        sha = normalize_sha256(sha256)
        if sha is None:
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha[:2] / f"{sha}.safetensors"

    def lookup(self, sha256: str) -> Path | None:
        """The cached file for ``sha256``, or None when it is not cached."""
        path = self.path_for(sha256)
        return path if path.is_file() else None

    def add_file(
        self, source: str | os.PathLike[str], sha256: str | None = None, file_name: str | None = None
    ) -> Path:
        """Copy a local ``.safetensors`` file into the cache (verified like a download).

        Args:
            source: The local file.
            sha256: Expected digest; computed from the file when None.
            file_name: Name recorded in the sidecar (defaults to the source's name).

        Returns:
            The cached path.

        Raises:
            SkipRecord: wrong suffix, digest mismatch or bad header.
        """
        src = Path(source)
        refuse_unsafe_format(file_name or src.name)
        digest = _sha256_file(src)
        want = normalize_sha256(sha256) if sha256 else digest
        if want != digest:
            raise SkipRecord("sha256_mismatch", f"expected {want}, file has {digest}")
        validate_safetensors(src)
        final = self.path_for(digest)
        if final.is_file():
            return final
        part = self._part_path(digest)
        part.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as fin, part.open("wb") as fout:
            for block in iter(lambda: fin.read(1 << 20), b""):
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        self._publish(part, final, digest, sanitize_filename(file_name or src.name), "", part.stat().st_size)
        return final

    # -- download ------------------------------------------------------------------------------

    def fetch(self, card: Mapping[str, Any]) -> Path:
        """Return the verified local file of a card's adapter, downloading it when not cached.

        Args:
            card: An AdapterCard dict with ``download_url``, ``sha256``, ``file_name`` and optionally
                ``file_size_kb`` and ``adapter_id``.

        Returns:
            Path of the verified ``.safetensors`` file in the cache.

        Raises:
            SkipRecord: the adapter cannot be had; ``reason`` is one of the module's stable reasons.
        """
        file_name = str(card.get("file_name") or "")
        if file_name:
            refuse_unsafe_format(file_name)
        sha = normalize_sha256(card.get("sha256"))
        if sha is None:
            if self.config.require_sha256:
                raise SkipRecord("no_sha256", "the card has no SHA-256 to verify the download against")
            raise SkipRecord("no_sha256", "downloads without a SHA-256 are not supported")
        cached = self.lookup(sha)
        if cached is not None:
            return cached
        url = str(card.get("download_url") or "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SkipRecord("bad_url", f"not an http(s) download URL: {safe_url(url)!r}")
        size_kb = card.get("file_size_kb")
        if isinstance(size_kb, int | float) and size_kb * 1024 > self.config.max_bytes:
            raise SkipRecord(
                "too_large", f"card says {size_kb:.0f} KB, limit is {self.config.max_bytes} bytes"
            )
        size_hint = int(size_kb * 1024) if isinstance(size_kb, int | float) and size_kb > 0 else None
        with self._lock(sha):
            cached = self.lookup(sha)  # another process may have finished it while we waited
            if cached is not None:
                return cached
            return self._download(url, sha, file_name, size_hint)

    def _download(self, url: str, sha: str, file_name: str, size_hint: int | None = None) -> Path:
        part = self._part_path(sha)
        # The clock starts here, after the lock: waiting for another process's download is not slowness.
        transfer = _Transfer(time.monotonic(), size_hint)
        retrying = Retrying(
            stop=stop_after_attempt(self.config.resume_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Interrupted),
            reraise=True,
        )
        try:
            served_name = retrying(self._attempt, url, part, transfer)
        except _Interrupted as exc:
            raise SkipRecord(
                "download_interrupted",
                f"{safe_url(url)}: {exc.reason} after {self.config.resume_attempts} attempts "
                f"({part.stat().st_size if part.exists() else 0} bytes kept for resume)",
            ) from None
        name = sanitize_filename(served_name or file_name or f"{sha}.safetensors")
        try:
            refuse_unsafe_format(name)
            digest = _sha256_file(part)
            if digest != sha:
                raise SkipRecord(
                    "sha256_mismatch",
                    f"{safe_url(url)}: expected SHA-256 {sha}, downloaded bytes have {digest}",
                )
            validate_safetensors(part)
        except SkipRecord:
            part.unlink(missing_ok=True)
            raise
        final = self.path_for(sha)
        self._publish(part, final, sha, name, safe_url(url), final_size := part.stat().st_size)
        logger.info("cached %s (%d bytes) from %s", final.name, final_size, safe_url(url))
        return final

    def _attempt(self, url: str, part: Path, transfer: _Transfer) -> str | None:
        """One GET: resume ``part`` from its current size; returns the served file name if any."""
        until = transfer.deadline(self.config)
        if time.monotonic() >= until:
            raise SkipRecord("deadline_exceeded", f"{safe_url(url)}: the file's time budget is spent "
                                                  f"({part.stat().st_size if part.exists() else 0} bytes "
                                                  "kept for resume)")
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        client = self._client_for(url)
        try:
            # ``until``: waiting for the answer (and its retries) counts against the file's budget too.
            with client.stream(url, headers=headers, until=until) as resp:
                return self._write_body(resp, url, part, offset, transfer)
        except HttpFailure as exc:
            if exc.status == 416 and offset:
                # Our part is longer than the file (it changed upstream): start over.
                part.unlink(missing_ok=True)
                raise _Interrupted("range_not_satisfiable", safe_url(url)) from None
            raise _map_http_failure(exc) from None
        except FatalError as exc:
            # HttpClient treats "401 with a token" as a bad token. The download endpoint also answers 401
            # when the creator disabled downloads, so it is this record's problem, not the run's.
            raise SkipRecord("login_required", str(exc)) from None

    def _write_body(self, resp: requests.Response, url: str, part: Path, offset: int,
                    transfer: _Transfer | None = None) -> str | None:
        ctype = resp.headers.get("Content-Type", "").lower()
        if "text/html" in ctype:
            raise _Interrupted("html_body", f"{safe_url(url)} served an HTML page instead of the file")
        served = filename_from_content_disposition(resp.headers.get("Content-Disposition"))
        if served:
            refuse_unsafe_format(sanitize_filename(served))
        total: int | None = None
        if resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                logger.info("server sent an unexpected range for %s; restarting", safe_url(url))
                part.unlink(missing_ok=True)
                raise _Interrupted("bad_content_range", resp.headers.get("Content-Range", ""))
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:
            offset = 0  # 200: the server ignored Range (or there was none), so the body is the whole file
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if total is not None and total > self.config.max_bytes:
            part.unlink(missing_ok=True)
            raise SkipRecord(
                "too_large", f"{safe_url(url)} is {total} bytes, limit is {self.config.max_bytes}"
            )
        part.parent.mkdir(parents=True, exist_ok=True)
        transfer = transfer or _Transfer(time.monotonic())
        deadline = transfer.deadline(self.config, total)
        written = offset
        with part.open(mode) as fh:
            try:
                # The size cap is checked here (against the whole file, resumed bytes included), not by
                # iter_body, so that it keeps its download reason ``too_large``.
                for chunk in iter_body(resp, deadline=deadline, read_timeout=self.config.timeout[1],
                                       chunk_bytes=self.config.chunk_bytes):
                    written += len(chunk)
                    if written > self.config.max_bytes:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise SkipRecord(
                            "too_large", f"{safe_url(url)} exceeded {self.config.max_bytes} bytes"
                        )
                    fh.write(chunk)
            except FetchError as exc:
                if exc.reason == "deadline_exceeded":
                    # Not retried: the budget is for the whole file. The bytes so far are good; keep them.
                    budget = deadline - transfer.started
                    raise SkipRecord(
                        "deadline_exceeded",
                        f"{safe_url(url)}: not complete within {budget:.0f} s "
                        f"({written} bytes kept for resume)",
                    ) from None
                raise _Interrupted("truncated_body", f"{exc.reason} after {written} bytes") from None
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.ConnectionError,
                urllib3.exceptions.HTTPError,
                OSError,
            ) as exc:
                raise _Interrupted("truncated_body", f"{type(exc).__name__} after {written} bytes") from None
            finally:
                if not fh.closed:
                    fh.flush()
                    os.fsync(fh.fileno())
        if total is not None and written < total:
            raise _Interrupted("truncated_body", f"{written} of {total} bytes")
        return served

    # -- helpers -------------------------------------------------------------------------------

    def _publish(self, part: Path, final: Path, sha: str, name: str, url: str, size: int) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        sidecar = {
            "sha256": sha,
            "file_name": name,
            "url": url,
            "bytes": size,
            "fetched_at": int(time.time()),
        }
        atomic_write_text(final.with_suffix(".json"), json.dumps(sidecar, sort_keys=True))

    def _part_path(self, sha: str) -> Path:
        return self.root / "partial" / f"{sha}.part"

    @contextlib.contextmanager
    def _lock(self, sha: str) -> Iterator[None]:
        path = self.root / "partial" / f"{sha}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _client_for(self, url: str) -> HttpClient:
        host = urlsplit(url).netloc.lower()
        env = next((e for h, e in self.config.auth_hosts if h.lower() == host), None)
        client = self._clients.get(env)
        if client is None:
            hosts = tuple(h.lower() for h, e in self.config.auth_hosts if e == env) if env else ()
            base = f"{urlsplit(url).scheme}://{hosts[0] if hosts else host}"
            client = HttpClient(
                base,
                token_env=env,
                auth_hosts=hosts,
                max_attempts=self.config.max_attempts,
                backoff=self.config.backoff,
                backoff_max=self.config.backoff_max,
                timeout=self.config.timeout,
                pool_size=4,
            )
            self._clients[env] = client
        return client

    def _wait(self, state: RetryCallState) -> float:
        ceiling = min(self.config.backoff_max, self.config.backoff * (2 ** (state.attempt_number - 1)))
        return random.uniform(0, ceiling)

    def close(self) -> None:
        """Close the HTTP clients (they are rebuilt on the next fetch)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _map_http_failure(exc: HttpFailure) -> SkipRecord:
    """Clear reasons for the download endpoint's answers (``/api/download/models/{versionId}``)."""
    status = exc.status
    detail = exc.detail
    if status == 401 or exc.reason == "unauthorized":
        return SkipRecord(
            "login_required",
            f"{detail} — the creator requires a logged-in account: set CIVITAI_API_TOKEN "
            "(or HF_TOKEN for gated Hugging Face repos)",
        )
    if status == 403:
        if "early access" in detail.lower():
            return SkipRecord("early_access", f"{detail} — the version is in early access")
        return SkipRecord("forbidden", detail)
    if status == 404:
        return SkipRecord("not_found", detail)
    if status == 410:
        return SkipRecord("archived", f"{detail} — the file was archived and can no longer be downloaded")
    if status == 429:
        return SkipRecord("volume_limit", f"{detail} — the host limits the download volume; try later")
    if exc.reason == "http_5xx":
        return SkipRecord("server_error", detail)
    if exc.reason in ("timeout", "connection_error", "truncated_body"):
        return SkipRecord("connection_error", detail)
    return SkipRecord(exc.reason, detail)


@dataclass
class DownloadReport:
    """What :func:`fetch_all` did.

    Args:
        fetched: ``(adapter_id, path)`` of every adapter now in the cache.
        failed: ``(adapter_id, reason, detail)`` of every adapter that could not be had.
    """

    fetched: list[tuple[str, Path]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        """Failure counts by reason."""
        out: dict[str, int] = {}
        for _, reason, _ in self.failed:
            out[reason] = out.get(reason, 0) + 1
        return dict(sorted(out.items()))


def release_cards(
    docs: str | os.PathLike[str], adapter_ids: list[str] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Download-relevant columns of the adapters of the live build of release ``docs``.

    Args:
        docs: Release root (or a build directory).
        adapter_ids: Only these adapters (every one must exist).
        limit: At most this many adapters (in table order).

    Returns:
        Card dicts with ``adapter_id``, ``download_url``, ``sha256``, ``file_name``, ``file_size_kb``.

    Raises:
        FatalError: no release, or an id that is not in it.
    """
    from stylus_docs.release import load_manifest, read_table, resolve_build

    build = resolve_build(docs)
    manifest = load_manifest(build)
    columns = ["adapter_id", "download_url", "sha256", "file_name", "file_size_kb"]
    wanted = set(adapter_ids or [])
    rows = read_table(build, manifest, "adapters", columns).to_pylist()
    cards = [row for row in rows if not wanted or row["adapter_id"] in wanted]
    if wanted:
        missing = sorted(wanted - {c["adapter_id"] for c in cards})
        if missing:
            raise FatalError(f"adapter id(s) not in the release: {', '.join(missing[:5])}")
    return cards[:limit] if limit is not None else cards


def fetch_all(cache: AdapterCache, cards: list[Mapping[str, Any]]) -> DownloadReport:
    """Fetch every card's weights into ``cache``; failures are collected with their reason.

    Args:
        cache: The cache to fill.
        cards: Card dicts (see :meth:`AdapterCache.fetch`).

    Returns:
        The report (nothing is raised for a bad adapter).
    """
    report = DownloadReport()
    for card in cards:
        adapter_id = str(card.get("adapter_id") or "")
        try:
            report.fetched.append((adapter_id, cache.fetch(card)))
        except SkipRecord as exc:
            logger.info("download %s failed: %s", adapter_id, exc.reason)
            report.failed.append((adapter_id, exc.reason, exc.detail))
    return report


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "AdapterCache",
    "DownloadConfig",
    "DownloadReport",
    "fetch_all",
    "release_cards",
    "UnsafeWeightsError",
    "filename_from_content_disposition",
    "normalize_sha256",
    "sanitize_filename",
    "sanitize_path_component",
]
