"""Client-side rate limits and bounded retries for a remote model endpoint.

* :class:`RateLimiter` — two token buckets (requests per minute, tokens per minute) shared by every
  thread of a process, plus a *pause*: when the server says "wait" (a 429 with ``Retry-After`` or
  ``x-ratelimit-reset-*``), :meth:`RateLimiter.pause_until` makes every thread wait, not only the one
  that was refused, so the other workers do not keep hitting a limit the server already reported.
* :func:`shared_limiter` — one limiter per ``(base_url, model)`` per process: the limit is the
  endpoint's, so all handler instances (Beam creates one per DoFn instance) draw from the same buckets.
* :func:`server_wait_s` — the wait a response asks for, from its headers.
* :class:`ServerOrJitterWait` — a tenacity wait: the server's wait when it gave one (capped), otherwise
  exponential backoff with full jitter (random in ``[0, min(max, initial * 2**n)]``), which spreads
  retries of many threads instead of synchronising them.

Nothing here knows about OpenAI or Beam; the refine handler wires them together.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import tenacity
from tenacity.wait import wait_base, wait_random_exponential

logger = logging.getLogger(__name__)

#: Longest wait taken from a server header; a misconfigured proxy saying "wait an hour" must not
#: stall a build silently (the request is retried after this and may be refused again).
MAX_SERVER_WAIT_S = 60.0
#: Burst allowed by each bucket, in seconds of its rate. Endpoints enforce per-minute limits over
#: shorter sub-windows (OpenAI documents 60,000 rpm as possibly enforced as 1,000 per second), so a
#: full minute's burst at start-up would be refused; one second's worth is not.
DEFAULT_BURST_S = 1.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class _Bucket:
    """A token bucket that may go into debt: a unit larger than the capacity waits for a full bucket
    and then takes it all, so the long-run rate is right even for one request over the burst."""

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, units: float) -> float:
        """Seconds until ``units`` may be taken (0 when now)."""
        need = min(units, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class RateLimiter:
    """Thread-safe request and token budget for one endpoint.

    Args:
        rpm: requests per minute (``None``: unlimited).
        tpm: tokens per minute, prompt + completion (``None``: unlimited).
        burst_s: burst of each bucket in seconds of its rate (see :data:`DEFAULT_BURST_S`).
    """

    def __init__(self, rpm: float | None, tpm: float | None, *, burst_s: float = DEFAULT_BURST_S) -> None:
        self._cond = threading.Condition()
        self._burst_s = burst_s
        self._paused_until = 0.0
        self.rpm: float | None = None
        self.tpm: float | None = None
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        #: Totals for reports: ``acquired``, ``waited_s`` (summed over threads), ``pauses``.
        self.stats: dict[str, float] = {"acquired": 0, "waited_s": 0.0, "pauses": 0}
        self.configure(rpm, tpm)

    def configure(self, rpm: float | None, tpm: float | None) -> None:
        """Set new limits (buckets start full)."""
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        with self._cond:
            now = time.monotonic()
            self.rpm, self.tpm = rpm, tpm
            self._requests = _Bucket(rpm, self._burst_s, now) if rpm else None
            self._tokens = _Bucket(tpm, self._burst_s, now) if tpm else None
            self._cond.notify_all()

    def acquire(self, estimated_tokens: int = 0) -> float:
        """Block until one request of about ``estimated_tokens`` tokens may be sent.

        Returns:
            The seconds this call waited.
        """
        start = time.monotonic()
        with self._cond:
            while True:
                now = time.monotonic()
                wait = self._paused_until - now
                if wait <= 0:
                    wait = 0.0
                    for bucket, units in ((self._requests, 1.0), (self._tokens, float(estimated_tokens))):
                        if bucket is not None:
                            bucket.refill(now)
                            wait = max(wait, bucket.wait_s(units))
                    if wait <= 0:
                        if self._requests is not None:
                            self._requests.level -= 1.0
                        if self._tokens is not None:
                            self._tokens.level -= estimated_tokens
                        waited = time.monotonic() - start
                        self.stats["acquired"] += 1
                        self.stats["waited_s"] += waited
                        return waited
                # Woken early by pause_until / settle / configure; the loop re-checks everything.
                self._cond.wait(timeout=wait)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real usage of a request is known (refund or charge)."""
        if estimated == actual:
            return
        with self._cond:
            if self._tokens is not None:
                self._tokens.refill(time.monotonic())
                self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated - actual)
                self._cond.notify_all()

    def pause_until(self, deadline: float) -> None:
        """No request starts before ``deadline`` (a :func:`time.monotonic` value), in any thread."""
        with self._cond:
            if deadline > self._paused_until:
                self._paused_until = deadline
                self.stats["pauses"] += 1
                logger.info("endpoint asked to wait: pausing all requests for %.2f s",
                            deadline - time.monotonic())  # fmt: skip
                self._cond.notify_all()

    @property
    def paused_until(self) -> float:
        """The current pause deadline (``time.monotonic`` clock; in the past when not paused)."""
        with self._cond:
            return self._paused_until


_REGISTRY: dict[tuple[str, str], RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_limiter(key: tuple[str, str], rpm: float | None, tpm: float | None) -> RateLimiter:
    """The process-wide limiter of endpoint ``key`` = ``(base_url, model)``.

    Limits given later replace earlier ones for the same key (one build uses one set of flags; a
    benchmark that changes them between runs gets the new ones).
    """
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(key)
        if limiter is None:
            limiter = _REGISTRY[key] = RateLimiter(rpm, tpm)
        elif (limiter.rpm, limiter.tpm) != (rpm, tpm):
            limiter.configure(rpm, tpm)
        return limiter


def parse_duration_s(value: str) -> float | None:
    """``"1s"``, ``"6m0s"``, ``"250ms"``, ``"1h2m3.5s"`` or a bare number of seconds → seconds."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _retry_after_s(value: str, now: datetime | None) -> float | None:
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - (now or datetime.now(UTC))).total_seconds()


def server_wait_s(headers: Mapping[str, str] | None, now: datetime | None = None) -> float | None:
    """Seconds a response asks the client to wait, or ``None`` when it says nothing usable.

    Order: ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date), then OpenAI's
    ``x-ratelimit-reset-requests`` / ``-tokens`` — the one whose ``x-ratelimit-remaining-*`` is 0, or
    the longer of the two when the response does not say which limit was hit (waiting a little too
    long costs less than a second refusal). Never negative; not capped here.
    """
    if not headers:
        return None
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in h:
        wait = _retry_after_s(h["retry-after"], now)
        if wait is not None:
            return max(0.0, wait)
    resets: list[float] = []
    exhausted: list[float] = []
    for kind in ("requests", "tokens"):
        raw = h.get(f"x-ratelimit-reset-{kind}")
        wait = parse_duration_s(raw) if raw else None
        if wait is None:
            continue
        resets.append(wait)
        if h.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            exhausted.append(wait)
    chosen = exhausted or resets
    return max(0.0, max(chosen)) if chosen else None


class ServerOrJitterWait(wait_base):
    """Tenacity wait: the server's wait (capped at ``cap_s``) or full-jitter exponential backoff.

    Args:
        server_wait: the wait an exception carries (``None`` or 0: none given).
        initial_s: backoff scale (the n-th retry waits up to ``initial_s * 2**n``).
        max_s: longest backoff without a server wait.
        cap_s: longest server wait honoured.
    """

    def __init__(self, server_wait: Callable[[BaseException], float | None], initial_s: float = 0.5,
                 max_s: float = 30.0, cap_s: float = MAX_SERVER_WAIT_S) -> None:  # fmt: skip
        self.server_wait = server_wait
        self.cap_s = cap_s
        self._jitter = wait_random_exponential(multiplier=initial_s, max=max_s)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        wait = self.server_wait(exc) if exc is not None else None
        if wait is not None and wait > 0:
            return min(wait, self.cap_s)
        return float(self._jitter(retry_state))


def retryable(exc: BaseException) -> bool:
    """Whether an openai client error is worth another try (429, 5xx, connection)."""
    import openai

    return isinstance(exc, openai.RateLimitError | openai.InternalServerError | openai.APIConnectionError)


def server_wait(exc: BaseException) -> float | None:
    """The wait the endpoint asked for in an error response (``Retry-After``, ``x-ratelimit-reset-*``)."""
    import openai

    if isinstance(exc, openai.APIStatusError) and exc.response is not None:
        return server_wait_s(exc.response.headers)
    return None
