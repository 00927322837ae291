"""The three failure outcomes of the toolkit (README "Failure policy, secrets, security").

Each call site decides which one applies:

* :class:`FatalError` – bad configuration or an unusable environment. The CLI prints its message as
  one line and exits non-zero; nothing partial is published.
* :class:`SkipRecord` – one bad record. It becomes a dead letter with ``stage`` and ``reason``; the run
  goes on and the record is counted.
* :class:`RetryableError` – a transient fault (429, 5xx, connection trouble). Retried with bounded
  exponential backoff and jitter; when the retries are spent it turns into a skip or a fatal error,
  depending on where it happened.
"""

from __future__ import annotations


class StylusDocsError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class FatalError(StylusDocsError):
    """Stop the run: the message is shown to the user as one line and the exit status is non-zero."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SkipRecord(StylusDocsError):
    """Drop one record with a machine-readable ``reason`` (and optional human detail)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryableError(StylusDocsError):
    """A transient failure worth another try; ``reason`` feeds the retry counters."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
