"""HTTP client for remote APIs: per-host auth, timeouts, rate limits and a bounded retry policy.

Every call the toolkit makes to Civitai, the Hugging Face Hub or a download host goes through
:class:`HttpClient`. It wraps one :class:`requests.Session` and adds:

* **Per-host auth.** The token read from ``token_env`` is sent as ``Authorization: Bearer …`` only to
  the host of ``base_url`` (plus ``auth_hosts``); never to a CDN, a redirect target or any other host.
  Credential query params (``token=`` …) are removed from every request URL: auth is header-only.
* **Explicit timeouts** ``(connect, read)`` on every request.
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
``http_<status>`` for other 4xx, ``unauthorized``.

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
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from stylus_docs.errors import FatalError, RetryableError, SkipRecord
from stylus_docs.secrets import get_secret, redact, strip_token_params

logger = logging.getLogger(__name__)

#: Body text of Civitai's deterministic paging-cap 429 (API-NOTES §1.2); retrying it never helps.
TOO_MANY_PAGES_MARKER = "too many pages"

_HF_RATELIMIT_T = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+(?:\.\d+)?)")
_HF_RATELIMIT_R = re.compile(r"(?:^|;)\s*r\s*=\s*(\d+)")

#: Params to requests' ``params=``: a mapping or a list of pairs (use pairs to repeat a key).
Params = Mapping[str, Any] | list[tuple[str, Any]] | None

_TOKEN_PARAM_NAMES = {"token", "api_key", "apikey", "access_token", "key"}


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
        timeout: ``(connect, read)`` timeout in seconds, applied to every request.
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
        pool_size: int = 32,
        user_agent: str = "stylus-docs/0.1 (+https://github.com/stylus-diffusion)",
        stats: HttpStats | None = None,
    ) -> None:
        if max_attempts < 1:
            raise FatalError("max_attempts must be >= 1")
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
        self.stats = stats if stats is not None else HttpStats()
        self.limiter = RateLimiter(rps)
        self.session = requests.Session()
        # urllib3 retries are off: tenacity owns the policy, so every retry is counted once, by reason.
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
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
                 headers: Mapping[str, str] | None = None) -> tuple[Any, requests.Response]:
        """GET a JSON document with the retry policy.

        Args:
            path_or_url: path relative to ``base_url`` or an absolute URL.
            params: query parameters (a list of pairs repeats a key: ``[("types", "LORA"), ...]``).
            headers: extra request headers.

        Returns:
            ``(data, response)``: the decoded JSON and the final response (its body already read).

        Raises:
            HttpFailure: a non-retryable status or exhausted retries (``reason`` says which).
            FatalError: 401 while a token was sent.
        """
        return self._call(path_or_url, params, headers, self._decode_json)

    def get_text(self, path_or_url: str, params: Params = None,
                 headers: Mapping[str, str] | None = None) -> tuple[str, requests.Response]:
        """GET a text document (e.g. a README) with the retry policy; HTML error pages are retried.

        Same errors as :meth:`get_json`.
        """
        return self._call(path_or_url, params, headers, self._decode_text)

    @contextlib.contextmanager
    def stream(self, path_or_url: str, params: Params = None,
               headers: Mapping[str, str] | None = None) -> Iterator[requests.Response]:
        """GET with ``stream=True`` for downloads; yields the response with its body unread.

        Redirects are followed; the token is attached only when the first URL's host is an auth host,
        and requests drops ``Authorization`` when a redirect changes host. Retries cover getting the
        response (status, connection); a failure while reading the body is the caller's to retry.
        The response is closed on exit. Same errors as :meth:`get_json`.
        """
        resp, _ = self._call(path_or_url, params, headers, None)
        try:
            yield resp
        finally:
            resp.close()

    def close(self) -> None:
        """Close the underlying session and its connections."""
        self.session.close()

    # -- internals -----------------------------------------------------------------------------

    def _call(self, path_or_url: str, params: Params, headers: Mapping[str, str] | None,
              decode: Any) -> tuple[Any, requests.Response]:
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
            return retrying(self._attempt, url, params, headers, decode)
        except _Transient as exc:
            self.stats.add_failure(exc.reason)
            logger.warning("giving up on %s after %d attempts: %s", safe_url(url), self.max_attempts,
                           exc.reason)
            raise HttpFailure(exc.reason, url, exc.status, exc.detail, exhausted=True) from None
        except HttpFailure as exc:
            self.stats.add_failure(exc.reason)
            raise

    def _attempt(self, url: str, params: Params, headers: Mapping[str, str] | None,
                 decode: Any) -> tuple[Any, requests.Response]:
        host = urlsplit(url).netloc.lower()
        req_headers = dict(headers or {})
        sent_token = bool(self._token) and host in self.auth_hosts
        if sent_token:
            req_headers["Authorization"] = f"Bearer {self._token}"
        self.limiter.acquire(host)
        self.stats.start_request()
        try:
            try:
                resp = self.session.get(url, params=params, headers=req_headers, timeout=self.timeout,
                                        stream=decode is None)
            except requests.Timeout as exc:
                raise _Transient("timeout", url, detail=type(exc).__name__) from None
            except (requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                raise _Transient("truncated_body", url, detail=type(exc).__name__) from None
            except requests.ConnectionError as exc:
                raise _Transient("connection_error", url, detail=type(exc).__name__) from None
            self._check_status(resp, url, sent_token)
            if decode is None:
                return resp, resp
            try:
                body = resp.content
            except (requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                raise _Transient("truncated_body", url, resp.status_code, type(exc).__name__) from None
            except requests.ConnectionError as exc:
                raise _Transient("connection_error", url, resp.status_code, type(exc).__name__) from None
            return decode(resp, body, url), resp
        finally:
            self.stats.end_request()

    def _check_status(self, resp: requests.Response, url: str, sent_token: bool) -> None:
        status = resp.status_code
        if status < 400:
            return
        if status == 429 or status >= 500:
            body = _read_small(resp)
            if status == 429 and TOO_MANY_PAGES_MARKER in body.lower():
                raise HttpFailure("too_many_pages", url, status, body[:200])
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            if wait is None:
                wait = parse_hf_ratelimit(resp.headers.get("RateLimit"))
            raise _Transient("http_429" if status == 429 else "http_5xx", url, status, body[:200], wait)
        body = _read_small(resp)
        if status == 401 and sent_token:
            raise FatalError(f"HTTP 401 from {safe_url(url)} with the token from {self.token_env}: "
                             "the token is invalid or expired")
        reason = "unauthorized" if status == 401 else f"http_{status}"
        raise HttpFailure(reason, url, status, body[:200])

    @staticmethod
    def _decode_json(resp: requests.Response, body: bytes, url: str) -> Any:
        ctype = resp.headers.get("Content-Type", "").lower()
        head = body[:512].lstrip().lower()
        if "html" in ctype or head.startswith((b"<!doctype", b"<html", b"<")):
            raise _Transient("html_body", url, resp.status_code, "HTML page instead of JSON")
        if not body.strip():
            raise _Transient("invalid_json", url, resp.status_code, "empty body")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Transient("invalid_json", url, resp.status_code, str(exc)[:120]) from None

    @staticmethod
    def _decode_text(resp: requests.Response, body: bytes, url: str) -> str:
        ctype = resp.headers.get("Content-Type", "").lower()
        if "html" in ctype:
            raise _Transient("html_body", url, resp.status_code, "HTML page instead of text")
        return body.decode(resp.encoding or "utf-8", errors="replace")

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


def _read_small(resp: requests.Response, limit: int = 4096) -> str:
    """Read at most ``limit`` bytes of an error body as text (errors while reading are ignored)."""
    try:
        if resp.raw is not None and not resp._content_consumed:  # streamed response
            data = resp.raw.read(limit, decode_content=True) or b""
        else:
            data = resp.content[:limit]
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError):
        return ""
    return data.decode("utf-8", errors="replace")
