"""HTTP client for remote APIs: per-host auth, timeouts, rate limits and a bounded retry policy.

Every call the toolkit makes to Civitai, the Hugging Face Hub or a download host goes through
:class:`HttpClient`. It wraps one :class:`requests.Session` and adds:

* **Per-host auth.** The token read from ``token_env`` is sent as ``Authorization: Bearer …`` only to
  the host of ``base_url`` (plus ``auth_hosts``); never to a CDN, a redirect target or any other host.
  Credential query params (``token=`` …) are removed from every request URL: auth is header-only.
* **Explicit timeouts** ``(connect, read)`` on every request, and a **total deadline** per attempt
  (``deadline``, default 120 s) enforced while the body streams in: the time left is checked after every
  chunk and each socket read may wait no longer than the time left, so a server trickling one byte at a
  time cannot hold a worker beyond the deadline; a watchdog (:class:`DeadlineAdapter`) does the same for
  a status line and headers trickled in. A spent deadline is the transient reason
  ``deadline_exceeded``, retried like ``timeout`` (the existing policy for slow answers): one call is
  then bounded by about ``max_attempts × deadline`` plus the backoff waits.
* **Size caps** on bodies read into memory: JSON pages ``max_json_bytes`` (32 MiB), text documents
  ``max_text_bytes`` (2 MiB, a README). ``Content-Length`` is checked before anything is read and the
  bytes are counted while streaming (a missing or lying length), so an oversized body is refused after
  at most ``cap + one chunk`` bytes in memory. Reason ``body_too_large``, not retried (the same URL
  serves the same body).
* **Strict JSON** through :func:`stylus_docs.safe_json.loads`: nesting deeper than 64, ``NaN`` /
  ``Infinity`` / overflowing numbers and lone surrogate escapes are refused with the reasons
  ``too_deep``, ``non_finite_number``, ``invalid_unicode`` (not retried; :class:`RecursionError` never
  escapes). ``get_json(..., strict=False)`` lets a listing through whose items the caller checks one by
  one with :func:`stylus_docs.safe_json.find_problem`, so one hostile item costs one record, not a page;
  an item nested beyond the parser's recursion limit is first cut down by :func:`cut_deep_containers`
  (still too deep for ``find_problem``), so even a 200,000-deep item leaves the rest of its page.
* **A per-host rate limiter** (requests per second, thread-safe, shared by every thread using the client).
* **A tenacity retry policy.** Bounded exponential backoff with full jitter on 429, 5xx, timeouts,
  connection errors, truncated bodies, invalid JSON and HTML served instead of JSON (even with status
  200). ``Retry-After`` (seconds or an HTTP date) and the Hub's ``RateLimit: …;r=0;t=N`` header set the
  wait instead, capped at ``max_retry_after``. Not retried: Civitai's deterministic "too many pages"
  429 and every other 4xx (raised as :class:`HttpFailure`, a :class:`~stylus_docs.errors.SkipRecord`).
  A 401 while a token was sent is a :class:`~stylus_docs.errors.FatalError` (bad or expired token).
* **Counters** in :class:`HttpStats`: requests, retries by reason, failures by reason, requests in flight.

Reasons (stable strings, used in counters, failure records and summaries): ``http_429``, ``http_5xx``,
``timeout``, ``connection_error``, ``truncated_body``, ``invalid_json``, ``html_body``, ``too_many_pages``,
``http_<status>`` for other 4xx, ``unauthorized``, ``deadline_exceeded``, ``body_too_large``, ``too_deep``,
``non_finite_number``, ``invalid_unicode``; :func:`fetch_bounded` adds ``host_not_allowed``,
``too_many_redirects``, ``bad_url`` and ``bad_redirect``.

Example (the downloader)::

    client = HttpClient("https://civitai.com", token_env="CIVITAI_API_TOKEN", rps=5)
    data, resp = client.get_json("/api/v1/model-versions/1255556")
    with client.stream(data["downloadUrl"]) as resp:          # redirects followed; token not forwarded
        for chunk in resp.iter_content(1 << 20):
            ...
    print(client.stats.snapshot())

URLs in exceptions and log lines are passed through :func:`stylus_docs.secrets.redact` and
:func:`stylus_docs.secrets.strip_token_params`.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from stylus_docs import safe_json
from stylus_docs.errors import FatalError, RetryableError, SkipRecord
from stylus_docs.secrets import get_secret, redact, strip_token_params

logger = logging.getLogger(__name__)

#: Body text of Civitai's deterministic paging-cap 429 (``page * limit > 1000`` on /api/v1/models);
#: retrying it never helps.
TOO_MANY_PAGES_MARKER = "too many pages"

_HF_RATELIMIT_T = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+(?:\.\d+)?)")
_HF_RATELIMIT_R = re.compile(r"(?:^|;)\s*r\s*=\s*(\d+)")

#: Params to requests' ``params=``: a mapping or a list of pairs (use pairs to repeat a key).
Params = Mapping[str, Any] | list[tuple[str, Any]] | None

_TOKEN_PARAM_NAMES = {"token", "api_key", "apikey", "access_token", "key"}

#: Default total time of one attempt of an API request (connect, headers and the whole body), seconds.
DEFAULT_DEADLINE_S = 120.0
#: Largest JSON page read into memory (a real 100-item Civitai page is 1–3 MB).
MAX_JSON_BYTES = 32 * 1024 * 1024
#: Largest text document read into memory (a Hub README; real ones are a few KB).
MAX_TEXT_BYTES = 2 * 1024 * 1024
#: Bytes asked for per socket read while streaming a bounded body.
BODY_CHUNK_BYTES = 64 * 1024
#: Statuses whose ``Location`` :func:`fetch_bounded` may follow.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Nesting the lenient (listing) parse keeps: a container deeper than this is replaced by an empty one
#: of the same kind before parsing, which is still deeper than :data:`stylus_docs.safe_json.MAX_DEPTH`
#: (so the item holding it is refused by ``find_problem``) and keeps :func:`json.loads` far below the
#: interpreter's recursion limit. Real items never come near it (their deepest value sits at depth 9).
LENIENT_MAX_DEPTH = 2 * safe_json.MAX_DEPTH
# Strings (skipped whole, escapes included) and the brackets outside them.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# A socket timeout this close to the deadline is the clipped "time left" timeout firing, i.e. the
# deadline, not a stalled read within a healthy budget.
_DEADLINE_SLACK_S = 0.05


def safe_url(url: str) -> str:
    """Return ``url`` fit for logs, files and errors: credential params stripped, secrets redacted."""
    return redact(strip_token_params(url))


class HttpFailure(SkipRecord):
    """A request that failed for good: not retryable, or its retries were spent.

    Attributes:
        reason: stable reason string (see module docstring).
        url: the request URL, already made safe with :func:`safe_url`.
        status: HTTP status, or None for transport errors.
        exhausted: True when the failure is a transient reason whose retries ran out.
    """

    def __init__(self, reason: str, url: str, status: int | None = None, detail: str = "",
                 exhausted: bool = False) -> None:
        self.url = safe_url(url)
        self.status = status
        self.exhausted = exhausted
        text = f"{self.url}" + (f" (HTTP {status})" if status else "") + (f": {detail}" if detail else "")
        if exhausted:
            text += " [retries exhausted]"
        super().__init__(reason, redact(text))


class _Transient(RetryableError):
    """A retryable outcome of one attempt; carries what is needed to raise :class:`HttpFailure` later."""

    def __init__(self, reason: str, url: str, status: int | None = None, detail: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(reason, redact(detail), retry_after)
        self.url = url
        self.status = status


# The deadline of the attempt the current thread is making (read by _HeaderDeadline).
_ATTEMPT = threading.local()


def _shutdown_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HeaderDeadline:
    """Mixin for urllib3 connections: waiting for the status line and headers stops at the deadline.

    Socket timeouts bound one read, not the headers: a server sending one header byte per second never
    trips them. While ``getresponse`` runs, a timer shuts the socket down when the attempt's deadline
    (thread-local, set by :func:`_attempt_deadline`) passes; the read then fails at once and the caller,
    seeing the deadline spent, reports ``deadline_exceeded``.
    """

    def getresponse(self) -> Any:
        deadline = getattr(_ATTEMPT, "deadline", None)
        sock = getattr(self, "sock", None)
        if deadline is None or sock is None:
            return super().getresponse()  # type: ignore[misc]
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _shutdown_socket, (sock,))
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            timer.cancel()


class _HTTPConnection(_HeaderDeadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_HeaderDeadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """:class:`~requests.adapters.HTTPAdapter` whose connections honour :func:`_attempt_deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


@contextlib.contextmanager
def _attempt_deadline(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` the limit of header waits of this thread's requests (DeadlineAdapter)."""
    previous = getattr(_ATTEMPT, "deadline", None)
    _ATTEMPT.deadline = deadline
    try:
        yield
    finally:
        _ATTEMPT.deadline = previous


def _spent(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S


def bounded_session() -> requests.Session:
    """A :class:`requests.Session` for :func:`fetch_bounded` callers that keep one (a Beam DoFn's
    ``setup``): its connections honour the header deadline, and like :class:`HttpClient` it reads no
    ``~/.netrc`` credentials or proxy settings from the environment."""
    session = requests.Session()
    adapter = DeadlineAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False
    return session


class FetchError(SkipRecord):
    """A bounded fetch or body read that stopped early; ``reason`` says why.

    Reasons: ``deadline_exceeded``, ``body_too_large``, ``timeout``, ``truncated_body``,
    ``connection_error`` (reading), and for :func:`fetch_bounded` also ``host_not_allowed``,
    ``too_many_redirects``, ``bad_redirect``, ``bad_url``, ``bad_content_type``, ``http_<status>``.
    """


def clip_timeout(timeout: tuple[float, float], deadline: float | None) -> tuple[float, float]:
    """``(connect, read)`` no larger than the time left before ``deadline`` (a ``time.monotonic()``)."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    return min(timeout[0], left), min(timeout[1], left)


def _timeout_reason(deadline: float | None, other: str = "timeout") -> str:
    """``deadline_exceeded`` when a timeout (or the header watchdog's shutdown) came at the deadline,
    else ``other``."""
    return "deadline_exceeded" if _spent(deadline) else other


def _set_read_timeout(resp: requests.Response, seconds: float) -> None:
    """Best effort: make the next socket read of ``resp`` wait at most ``seconds``.

    requests sets the read timeout once per request; a body read that started with 100 s left must not
    wait 60 s when 1 s is left. urllib3 keeps the connection (and its socket) on the response while the
    body is unread. Where that private path is missing (another urllib3), the per-chunk deadline check
    still holds and a read overruns by at most the request's own read timeout.
    """
    raw = getattr(resp, "raw", None)
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.settimeout(max(seconds, 0.001))


def content_length(resp: requests.Response) -> int | None:
    """The response's ``Content-Length`` as an int, or None when absent or not a number."""
    value = (resp.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def iter_body(
    resp: requests.Response,
    *,
    max_bytes: int | None = None,
    deadline: float | None = None,
    read_timeout: float | None = None,
    chunk_bytes: int = BODY_CHUNK_BYTES,
) -> Iterator[bytes]:
    """Yield the (decoded) body of a ``stream=True`` response in chunks, within a size cap and a deadline.

    ``Content-Length`` above ``max_bytes`` is refused before a byte is read; the bytes are also counted
    as they arrive, so a missing or lying length is caught after at most one extra chunk. Each read
    returns as soon as *some* data is there (``read1``), which is what lets the deadline be checked
    after every chunk even against a server that trickles one byte at a time, and each socket read
    waits at most ``min(read_timeout, time left)``.

    Args:
        resp: a response opened with ``stream=True`` whose body is unread.
        max_bytes: largest body accepted (None: no cap).
        deadline: ``time.monotonic()`` value by which the body must be complete (None: none).
        read_timeout: longest wait of one socket read (None: leave the request's own).
        chunk_bytes: bytes asked for per read.

    Raises:
        FetchError: ``body_too_large``, ``deadline_exceeded``, ``timeout``, ``truncated_body`` or
            ``connection_error``.
    """
    length = content_length(resp)
    if max_bytes is not None and length is not None and length > max_bytes:
        raise FetchError("body_too_large", f"Content-Length {length} exceeds the cap of {max_bytes} bytes")
    raw = resp.raw
    # urllib3 >= 2 has read1 (returns what one read gives); read(amt) would block until amt bytes came.
    read = getattr(raw, "read1", None)
    total = 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FetchError("deadline_exceeded", f"body not complete after {total} bytes")
            _set_read_timeout(resp, left if read_timeout is None else min(read_timeout, left))
        try:
            if read is not None:
                chunk = read(chunk_bytes, decode_content=True)
            else:  # pragma: no cover - urllib3 < 2: small reads keep the deadline checks frequent
                chunk = raw.read(min(chunk_bytes, 1024), decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            raise FetchError(_timeout_reason(deadline), f"read timed out after {total} bytes") from None
        except (urllib3.exceptions.HTTPError, requests.exceptions.ChunkedEncodingError) as exc:
            # IncompleteRead (a lying Content-Length), a reset mid-body, a bad gzip stream.
            raise FetchError("truncated_body", f"{type(exc).__name__} after {total} bytes") from None
        except OSError as exc:
            raise FetchError("connection_error", f"{type(exc).__name__} after {total} bytes") from None
        if not chunk:
            return
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise FetchError("body_too_large", f"body exceeds the cap of {max_bytes} bytes")
        yield chunk
        if deadline is not None and time.monotonic() > deadline:
            raise FetchError("deadline_exceeded", f"body not complete after {total} bytes")


def read_body(resp: requests.Response, **limits: Any) -> bytes:
    """The whole body of a ``stream=True`` response, read with :func:`iter_body` (same arguments)."""
    return b"".join(iter_body(resp, **limits))


def cut_deep_containers(body: bytes, max_depth: int = LENIENT_MAX_DEPTH) -> bytes | None:
    """``body`` with every JSON array/object opened deeper than ``max_depth`` replaced by ``[]`` / ``{}``.

    Iterative (a regex skips strings whole), so a body nested 200,000 deep costs one linear scan. The
    empty container stays at depth ``max_depth + 1``, so whatever held the deep value is still refused
    as ``too_deep`` by :func:`stylus_docs.safe_json.find_problem`; everything else parses unchanged.

    Returns:
        The rewritten bytes, or None when the brackets do not balance (the body is not JSON).
    """
    out: list[bytes] = []
    copied = 0  # body[:copied] is in out (or was cut)
    depth = 0
    cut_at = -1
    cut_kind = b""
    for match in _JSON_TOKENS.finditer(body):
        token = match.group()
        if token[:1] == b'"':
            continue
        if token in (b"[", b"{"):
            depth += 1
            if depth == max_depth + 1 and cut_at < 0:
                cut_at, cut_kind = match.start(), token
            continue
        if depth == max_depth + 1 and cut_at >= 0:
            out += (body[copied:cut_at], b"[]" if cut_kind == b"[" else b"{}")
            copied, cut_at = match.end(), -1
        depth -= 1
        if depth < 0:
            return None
    if depth or cut_at >= 0:
        return None
    out.append(body[copied:])
    return b"".join(out)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_entry_matches(entry: str, hostname: str, port: int) -> bool:
    """Whether one allow-list entry (``host``, ``host:port``, ``[v6]:port`` or ``*.domain``) covers
    ``hostname`` (lowercased, no trailing dot) on the effective ``port``."""
    try:
        parts = urlsplit("//" + entry.strip())
        want_port = parts.port
    except ValueError:
        return False  # a malformed entry matches nothing
    name = (parts.hostname or "").rstrip(".")
    if not name or parts.username is not None or parts.password is not None:
        return False
    if want_port is not None and want_port != port:
        return False
    if name.startswith("*."):
        # "*.cdn.hf.co" matches any name under cdn.hf.co ("us.aws.cdn.hf.co"), not cdn.hf.co itself.
        return hostname.endswith(name[1:])
    return name == hostname


def host_allowed(url: str, hosts: Iterable[str]) -> bool:
    """True when ``url`` is http(s) without credentials and its host is in ``hosts``.

    An entry is ``host`` (any port), ``host:port`` (that port only, the scheme's default port when the
    URL names none; how tests allow one loopback server and not another) or ``*.domain`` (any name
    under ``domain``, at any depth, not ``domain`` itself). Matching is exact otherwise:
    ``image.civitai.com.evil.example`` does not match ``image.civitai.com``. A URL with userinfo
    (``https://image.civitai.com@evil.example/``) is refused whatever its host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
        return False
    hostname = (parts.hostname or "").rstrip(".")
    if not hostname:
        return False
    effective = port if port is not None else _DEFAULT_PORTS[parts.scheme]
    return any(_host_entry_matches(entry, hostname, effective) for entry in hosts)


@dataclass(slots=True)
class Fetched:
    """What :func:`fetch_bounded` got.

    Attributes:
        url: the final URL (after redirects).
        status: its HTTP status.
        content_type: media type without parameters, lowercased.
        body: the whole body (within the cap).
        redirects: the URLs redirected to, in order.
    """

    url: str
    status: int
    content_type: str
    body: bytes
    redirects: list[str] = field(default_factory=list)


def fetch_bounded(
    url: str,
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    deadline_s: float,
    timeout: tuple[float, float] = (10.0, 10.0),
    max_redirects: int = 3,
    content_types: Iterable[str] | None = None,
    session: requests.Session | None = None,
) -> Fetched:
    """GET ``url`` (one attempt) within an allow-list of hosts, a size cap and a total deadline.

    For fetches of URLs that came from data (example images): redirects are not followed by requests
    but here, at most ``max_redirects`` of them, and every hop's host is checked against
    ``allowed_hosts`` *before* it is requested, so neither the first URL nor a redirect can make the
    toolkit talk to another host. The deadline covers every hop and the body.

    Args:
        url: the URL to fetch.
        allowed_hosts: host entries as in :func:`host_allowed`.
        max_bytes: largest body accepted.
        deadline_s: total time for all hops and the body, seconds.
        timeout: ``(connect, read)`` per socket operation (clipped to the time left).
        max_redirects: redirects followed at most.
        content_types: accepted media types of the final answer (None: any); checked before the body
            is read.
        session: session to use (default: a new :func:`bounded_session`, closed afterwards).

    Returns:
        The final response's URL, status (200), media type and body.

    Raises:
        FetchError: ``host_not_allowed``, ``too_many_redirects``, ``bad_redirect``, ``bad_url``,
            ``http_<status>``, ``bad_content_type`` or a body reason of :func:`iter_body`.
    """
    hosts = tuple(allowed_hosts)
    wanted = {t.lower() for t in content_types} if content_types is not None else None
    deadline = time.monotonic() + deadline_s
    own = session is None
    # Our own session bounds header waits too (DeadlineAdapter); a caller's does when it comes from
    # bounded_session() (a plain requests.Session bounds the body and each read, not a header trickle).
    getter = session if session is not None else bounded_session()
    redirects: list[str] = []
    current = url
    try:
        while True:
            if not host_allowed(current, hosts):
                where = "redirect target" if redirects else "URL"
                raise FetchError("host_not_allowed", f"{where} {safe_url(current)} is not on the allow-list")
            if time.monotonic() >= deadline:
                raise FetchError("deadline_exceeded", f"{safe_url(current)}: no answer within {deadline_s} s")
            try:
                with _attempt_deadline(deadline):
                    resp = getter.get(current, timeout=clip_timeout(timeout, deadline), stream=True,
                                      allow_redirects=False)
            except requests.Timeout:
                raise FetchError(_timeout_reason(deadline), safe_url(current)) from None
            except requests.ConnectionError as exc:
                raise FetchError(_timeout_reason(deadline, "connection_error"),
                                 f"{safe_url(current)}: {type(exc).__name__}") from None
            except requests.RequestException as exc:
                raise FetchError("bad_url", f"{safe_url(current)}: {type(exc).__name__}") from None
            with resp:
                if resp.status_code in REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError("bad_redirect", f"{safe_url(current)}: redirect without Location")
                    if len(redirects) >= max_redirects:
                        raise FetchError("too_many_redirects", f"more than {max_redirects} redirects")
                    current = urljoin(current, location)
                    redirects.append(current)
                    continue
                if resp.status_code != 200:
                    raise FetchError(f"http_{resp.status_code}", safe_url(current))
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if wanted is not None and ctype not in wanted:
                    raise FetchError("bad_content_type", f"{safe_url(current)}: {ctype or 'none'}")
                body = read_body(resp, max_bytes=max_bytes, deadline=deadline, read_timeout=timeout[1])
                return Fetched(current, resp.status_code, ctype, body, redirects)
    finally:
        if own:
            getter.close()


@dataclass
class HttpStats:
    """Thread-safe request counters shared by every thread of one :class:`HttpClient`.

    Attributes:
        requests: HTTP attempts sent (retries included).
        retries_by_reason: retries scheduled, by reason.
        failures_by_reason: calls that raised :class:`HttpFailure`, by reason.
        in_flight: attempts currently waiting for a response.
        max_in_flight: the largest ``in_flight`` seen.
    """

    requests: int = 0
    retries_by_reason: Counter = field(default_factory=Counter)
    failures_by_reason: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def start_request(self) -> None:
        """Count one attempt and mark it in flight."""
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end_request(self) -> None:
        """Mark one attempt as answered (or failed)."""
        with self._lock:
            self.in_flight -= 1

    def add_retry(self, reason: str) -> None:
        """Count one retry for ``reason``."""
        with self._lock:
            self.retries_by_reason[reason] += 1

    def add_failure(self, reason: str) -> None:
        """Count one final failure for ``reason``."""
        with self._lock:
            self.failures_by_reason[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-ready copy of the counters."""
        with self._lock:
            return {
                "requests": self.requests,
                "retries_by_reason": dict(sorted(self.retries_by_reason.items())),
                "retries": sum(self.retries_by_reason.values()),
                "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
                "failures": sum(self.failures_by_reason.values()),
                "max_in_flight": self.max_in_flight,
            }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class RateLimiter:
    """Per-host spacing of requests: at most ``rps`` request starts per second per host (thread-safe).

    Args:
        rps: requests per second per host; ``None`` or ``<= 0`` disables the limit.
    """

    def __init__(self, rps: float | None) -> None:
        self.interval = 1.0 / rps if rps and rps > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, host: str) -> None:
        """Block until a request to ``host`` may start."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delta seconds or an HTTP date) into seconds (>= 0), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_hf_ratelimit(value: str | None) -> float | None:
    """Seconds to wait from the Hub's ``RateLimit: "api";r=<remaining>;t=<reset>`` header when r=0."""
    if not value:
        return None
    remaining = _HF_RATELIMIT_R.search(value)
    reset = _HF_RATELIMIT_T.search(value)
    if remaining and reset and int(remaining.group(1)) == 0:
        return float(reset.group(1))
    return None


class HttpClient:
    """A retried, rate-limited, per-host-authenticated HTTP client for JSON APIs and downloads.

    Thread-safe: one client may be shared by a pool of worker threads (the connection pool holds
    ``pool_size`` connections per host). Not picklable on purpose: build one per worker
    (e.g. in a Beam ``DoFn.setup``).

    Args:
        base_url: scheme://host[:port][/prefix] that relative paths are joined to.
        token_env: environment variable holding the API token (read once, here); None for no auth.
        auth_hosts: extra host[:port] names that may receive the token (default: only base_url's).
        rps: request starts per second per host (None: unlimited).
        max_attempts: attempts per call, first one included (>= 1).
        backoff: base of the exponential backoff in seconds (wait ~ U(0, backoff * 2**n)).
        backoff_max: cap of one backoff wait in seconds.
        max_retry_after: cap applied to ``Retry-After`` / ``RateLimit`` waits in seconds.
        timeout: ``(connect, read)`` timeout in seconds, applied to every request (clipped to the time
            left before the deadline).
        deadline: total seconds of one attempt: connecting, headers and the whole body (None: no
            deadline). For :meth:`stream` it covers getting the response; the caller bounds the body
            (:func:`iter_body`).
        max_json_bytes: cap on a JSON body (:meth:`get_json`; None: no cap).
        max_text_bytes: cap on a text body (:meth:`get_text`; None: no cap).
        pool_size: connections kept per host (set it >= the number of threads using the client).
        user_agent: ``User-Agent`` header.
        stats: counters to update (a new :class:`HttpStats` by default).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token_env: str | None = None,
        auth_hosts: tuple[str, ...] = (),
        rps: float | None = None,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        timeout: tuple[float, float] = (10.0, 60.0),
        deadline: float | None = DEFAULT_DEADLINE_S,
        max_json_bytes: int | None = MAX_JSON_BYTES,
        max_text_bytes: int | None = MAX_TEXT_BYTES,
        pool_size: int = 32,
        user_agent: str = "stylus-docs/0.1 (+https://github.com/stylus-diffusion)",
        stats: HttpStats | None = None,
    ) -> None:
        if max_attempts < 1:
            raise FatalError("max_attempts must be >= 1")
        if deadline is not None and deadline <= 0:
            raise FatalError("the request deadline must be positive")
        if any(cap is not None and cap <= 0 for cap in (max_json_bytes, max_text_bytes)):
            raise FatalError("body size caps must be positive")
        if not urlsplit(base_url).scheme or not urlsplit(base_url).netloc:
            raise FatalError(f"invalid API base URL: {safe_url(base_url)!r}")
        self.base_url = base_url.rstrip("/") + "/"
        self.token_env = token_env
        self._token = get_secret(token_env) if token_env else None
        self.auth_hosts = {urlsplit(self.base_url).netloc.lower(), *(h.lower() for h in auth_hosts)}
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.timeout = timeout
        self.deadline = deadline
        self.max_json_bytes = max_json_bytes
        self.max_text_bytes = max_text_bytes
        self.stats = stats if stats is not None else HttpStats()
        self.limiter = RateLimiter(rps)
        self.session = requests.Session()
        # urllib3 retries are off: tenacity owns the policy, so every retry is counted once, by reason.
        adapter = DeadlineAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent
        self.session.trust_env = False  # no ~/.netrc credentials or proxy env leaking into requests

    # -- public API ----------------------------------------------------------------------------

    @property
    def has_token(self) -> bool:
        """True when a token was found in ``token_env``."""
        return self._token is not None

    def url_for(self, path_or_url: str) -> str:
        """Absolute URL for a path relative to ``base_url`` (absolute URLs are returned unchanged)."""
        if urlsplit(path_or_url).scheme:
            return path_or_url
        return urljoin(self.base_url, path_or_url.lstrip("/"))

    def get_json(self, path_or_url: str, params: Params = None,
                 headers: Mapping[str, str] | None = None, *, strict: bool = True,
                 max_bytes: int | None = None) -> tuple[Any, requests.Response]:
        """GET a JSON document with the retry policy, within the deadline and the size cap.

        Args:
            path_or_url: path relative to ``base_url`` or an absolute URL.
            params: query parameters (a list of pairs repeats a key: ``[("types", "LORA"), ...]``).
            headers: extra request headers.
            strict: parse with :func:`stylus_docs.safe_json.loads` (too deep, non-finite numbers and lone
                surrogates refused). False: :func:`json.loads`, with containers nested deeper than
                :data:`LENIENT_MAX_DEPTH` cut to empty ones when it hits the recursion limit (``too_deep``
                only when even that fails); the caller must check what it keeps with
                :func:`stylus_docs.safe_json.find_problem` (listings do it per item).
            max_bytes: cap for this call (default ``max_json_bytes``).

        Returns:
            ``(data, response)``: the decoded JSON and the final response (its body already read).

        Raises:
            HttpFailure: a non-retryable status or body, or exhausted retries (``reason`` says which).
            FatalError: 401 while a token was sent.
        """
        decode = self._decode_json if strict else self._decode_json_lenient
        return self._call(path_or_url, params, headers, decode,
                          self.max_json_bytes if max_bytes is None else max_bytes)

    def get_text(self, path_or_url: str, params: Params = None,
                 headers: Mapping[str, str] | None = None, *,
                 max_bytes: int | None = None) -> tuple[str, requests.Response]:
        """GET a text document (e.g. a README) with the retry policy; HTML error pages are retried.

        ``max_bytes`` defaults to ``max_text_bytes``. Same errors as :meth:`get_json`.
        """
        return self._call(path_or_url, params, headers, self._decode_text,
                          self.max_text_bytes if max_bytes is None else max_bytes)

    @contextlib.contextmanager
    def stream(self, path_or_url: str, params: Params = None,
               headers: Mapping[str, str] | None = None, *,
               until: float | None = None) -> Iterator[requests.Response]:
        """GET with ``stream=True`` for downloads; yields the response with its body unread.

        Redirects are followed; the token is attached only when the first URL's host is an auth host,
        and requests drops ``Authorization`` when a redirect changes host. Retries cover getting the
        response (status, connection) within ``deadline`` per attempt; reading the body, its size cap,
        deadline and retries are the caller's (read it with :func:`iter_body`).
        ``until`` (a ``time.monotonic()`` value, e.g. a download's whole-file deadline) also bounds
        every attempt; once it has passed, the call fails with ``deadline_exceeded`` and is not retried.
        The response is closed on exit. Same errors as :meth:`get_json`.
        """
        resp, _ = self._call(path_or_url, params, headers, None, None, until)
        try:
            yield resp
        finally:
            resp.close()

    def close(self) -> None:
        """Close the underlying session and its connections."""
        self.session.close()

    # -- internals -----------------------------------------------------------------------------

    def _call(self, path_or_url: str, params: Params, headers: Mapping[str, str] | None,
              decode: Any, max_bytes: int | None,
              until: float | None = None) -> tuple[Any, requests.Response]:
        # Credentials travel only in the Authorization header: a token in the URL would reach urllib3's
        # debug log, proxies and server access logs, so credential params are dropped here.
        url = strip_token_params(self.url_for(path_or_url))
        params = _drop_token_params(params)
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, url, params, headers, decode, max_bytes, until)
        except _Transient as exc:
            self.stats.add_failure(exc.reason)
            logger.warning("giving up on %s after %d attempts: %s", safe_url(url), self.max_attempts,
                           exc.reason)
            raise HttpFailure(exc.reason, url, exc.status, exc.detail, exhausted=True) from None
        except HttpFailure as exc:
            self.stats.add_failure(exc.reason)
            raise

    def _attempt(self, url: str, params: Params, headers: Mapping[str, str] | None,
                 decode: Any, max_bytes: int | None,
                 until: float | None = None) -> tuple[Any, requests.Response]:
        if until is None:
            return self._attempt_once(url, params, headers, decode, max_bytes, None)
        if time.monotonic() >= until:
            raise HttpFailure("deadline_exceeded", url, None, "the caller's deadline passed")
        try:
            return self._attempt_once(url, params, headers, decode, max_bytes, until)
        except _Transient as exc:
            if time.monotonic() >= until - _DEADLINE_SLACK_S:
                # The caller's own deadline is spent: another attempt could not finish either.
                raise HttpFailure("deadline_exceeded", url, exc.status,
                                  f"{exc.reason}: {exc.detail}"[:200]) from None
            raise

    def _attempt_once(self, url: str, params: Params, headers: Mapping[str, str] | None,
                      decode: Any, max_bytes: int | None,
                      until: float | None) -> tuple[Any, requests.Response]:
        host = urlsplit(url).netloc.lower()
        req_headers = dict(headers or {})
        sent_token = bool(self._token) and host in self.auth_hosts
        if sent_token:
            req_headers["Authorization"] = f"Bearer {self._token}"
        self.limiter.acquire(host)
        # The deadline starts after the rate limiter: waiting for our own turn is not the server's fault.
        deadline = time.monotonic() + self.deadline if self.deadline else None
        if until is not None:
            deadline = until if deadline is None else min(deadline, until)
        self.stats.start_request()
        try:
            try:
                # Always streamed: the body is read here, chunk by chunk, so the cap and the deadline hold.
                with _attempt_deadline(deadline):
                    resp = self.session.get(url, params=params, headers=req_headers,
                                            timeout=clip_timeout(self.timeout, deadline), stream=True)
            except requests.Timeout as exc:
                raise _Transient(_timeout_reason(deadline), url, detail=type(exc).__name__) from None
            except (requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                raise _Transient("truncated_body", url, detail=type(exc).__name__) from None
            except requests.ConnectionError as exc:
                raise _Transient(_timeout_reason(deadline, "connection_error"), url,
                                 detail=type(exc).__name__) from None
            handed_over = False
            try:
                if deadline is not None and time.monotonic() >= deadline:
                    raise _Transient("deadline_exceeded", url, resp.status_code, "headers came too late")
                self._check_status(resp, url, sent_token, deadline)
                if decode is None:
                    handed_over = True  # stream(): the caller reads and closes it
                    return resp, resp
                try:
                    body = read_body(resp, max_bytes=max_bytes, deadline=deadline,
                                     read_timeout=self.timeout[1])
                except FetchError as exc:
                    if exc.reason == "body_too_large":
                        raise HttpFailure(exc.reason, url, resp.status_code, exc.detail) from None
                    raise _Transient(exc.reason, url, resp.status_code, exc.detail) from None
                # Hand the bytes to requests so resp.content / .text keep working for callers, and mark
                # them consumed so close() returns the connection to the pool instead of dropping it.
                resp._content = body
                resp._content_consumed = True
                return decode(resp, body, url), resp
            finally:
                if not handed_over:
                    resp.close()
        finally:
            self.stats.end_request()

    def _check_status(self, resp: requests.Response, url: str, sent_token: bool,
                      deadline: float | None) -> None:
        status = resp.status_code
        if status < 400:
            return
        if status == 429 or status >= 500:
            body = _read_small(resp, deadline=deadline, read_timeout=self.timeout[1])
            if status == 429 and TOO_MANY_PAGES_MARKER in body.lower():
                raise HttpFailure("too_many_pages", url, status, body[:200])
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            if wait is None:
                wait = parse_hf_ratelimit(resp.headers.get("RateLimit"))
            raise _Transient("http_429" if status == 429 else "http_5xx", url, status, body[:200], wait)
        body = _read_small(resp, deadline=deadline, read_timeout=self.timeout[1])
        if status == 401 and sent_token:
            raise FatalError(f"HTTP 401 from {safe_url(url)} with the token from {self.token_env}: "
                             "the token is invalid or expired")
        reason = "unauthorized" if status == 401 else f"http_{status}"
        raise HttpFailure(reason, url, status, body[:200])

    @staticmethod
    def _check_json_body(resp: requests.Response, body: bytes, url: str) -> None:
        ctype = resp.headers.get("Content-Type", "").lower()
        head = body[:512].lstrip().lower()
        if "html" in ctype or head.startswith((b"<!doctype", b"<html", b"<")):
            raise _Transient("html_body", url, resp.status_code, "HTML page instead of JSON")
        if not body.strip():
            raise _Transient("invalid_json", url, resp.status_code, "empty body")

    @classmethod
    def _decode_json(cls, resp: requests.Response, body: bytes, url: str) -> Any:
        cls._check_json_body(resp, body, url)
        try:
            return safe_json.loads(body)
        except safe_json.UnsafeJSON as exc:
            if exc.reason == "bad_json":
                # Syntax errors stay transient: a body cut short by the network reads as bad JSON too.
                raise _Transient("invalid_json", url, resp.status_code, exc.detail[:120]) from None
            # Deep nesting, NaN and lone surrogates are what the server sends, every time: not retried.
            raise HttpFailure(exc.reason, url, resp.status_code, exc.detail[:120]) from None

    @classmethod
    def _decode_json_lenient(cls, resp: requests.Response, body: bytes, url: str) -> Any:
        cls._check_json_body(resp, body, url)
        try:
            try:
                return json.loads(body)
            except RecursionError:
                # One item nested far too deep must cost that item, not the page: cut what lies below
                # LENIENT_MAX_DEPTH and parse again; the caller's find_problem refuses the item.
                cut = cut_deep_containers(body)
                if cut is None:
                    raise
                return json.loads(cut)
        except RecursionError:
            raise HttpFailure("too_deep", url, resp.status_code,
                              "nesting exceeds the parser's recursion limit") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Transient("invalid_json", url, resp.status_code, str(exc)[:120]) from None

    @staticmethod
    def _decode_text(resp: requests.Response, body: bytes, url: str) -> str:
        ctype = resp.headers.get("Content-Type", "").lower()
        if "html" in ctype:
            raise _Transient("html_body", url, resp.status_code, "HTML page instead of text")
        try:
            text = body.decode(resp.encoding or "utf-8", errors="replace")
            text.encode("utf-8")  # a declared codec (utf-7 …) can still yield lone surrogates
        except (LookupError, UnicodeError):  # an unknown charset name, or such surrogates
            text = body.decode("utf-8", errors="replace")
        return text

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        # Full jitter (AWS architecture blog): spreads retries of many workers hitting the same fault.
        ceiling = min(self.backoff_max, self.backoff * (2 ** (state.attempt_number - 1)))
        return random.uniform(0, ceiling)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, _Transient) else "unknown"
        self.stats.add_retry(reason)
        logger.info("retry %d for %s (%s), sleeping %.2fs", state.attempt_number,
                    safe_url(getattr(exc, "url", "")), reason, state.upcoming_sleep)


def _drop_token_params(params: Params) -> Params:
    """Remove credential keys (``token``, ``api_key``, …) from request params."""
    if params is None:
        return None
    pairs = params.items() if isinstance(params, Mapping) else params
    return [(k, v) for k, v in pairs if k.lower() not in _TOKEN_PARAM_NAMES]


def _read_small(resp: requests.Response, limit: int = 4096, *, deadline: float | None = None,
                read_timeout: float | None = None) -> str:
    """Read about ``limit`` bytes of an error body as text, within the deadline (read errors ignored)."""
    if resp._content_consumed:
        return (resp.content or b"")[:limit].decode("utf-8", errors="replace")
    data = bytearray()
    try:
        for chunk in iter_body(resp, deadline=deadline, read_timeout=read_timeout,
                               chunk_bytes=max(1, limit)):
            data += chunk
            if len(data) >= limit:
                break
    except (FetchError, requests.RequestException, ValueError):
        pass  # the status decides what happens; its body is only a detail
    return bytes(data[:limit]).decode("utf-8", errors="replace")
