"""Crash-safe answer journal of the VLM refiner: every answer is on disk soon after it arrives.

One append-only JSONL file per writer (``answers-<build_id>-<pid>-<uuid8>.jsonl``): writers never share
a file, so no locking across processes is needed and a file is only ever appended to. Lines are
written, flushed and ``fsync``-ed per small batch (``flush_every`` entries, or ``flush_interval_s``
after the oldest pending one, and on :meth:`AnswerJournal.flush` / :meth:`AnswerJournal.close`). A
``kill -9`` can therefore lose only the pending batch and tear at most the last line, which
:func:`read_answers` skips.

:func:`read_answers` reads every ``*.jsonl`` of the directory — these journals and the end-of-build
cache files written before them alike — so a rerun of a killed build asks again only for what was not
yet on disk. Only the whitelisted :data:`JOURNAL_FIELDS` are written: never a header, URL or key.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from stylus_docs import safe_json
from stylus_docs.schemas import validation_errors

logger = logging.getLogger(__name__)

#: What an entry may hold (anything else is refused: the journal must never receive a secret by
#: accident, e.g. a request object or a header map).
JOURNAL_FIELDS = frozenset({
    "content_hash", "model", "description", "category", "recommended_weight",
    "prompt_tokens", "completion_tokens", "refiner",
})  # fmt: skip
_ANSWER_FIELDS = ("description", "category", "recommended_weight")


class AnswerJournal:
    """Append-only answer file of one writer (a process or a handler instance).

    Args:
        directory: where the file goes (created when the first entry is written).
        build_id: the build that writes it (part of the file name).
        flush_every: write + flush + fsync once this many entries are pending.
        flush_interval_s: ... or once the oldest pending entry is this old (a background thread).
    """

    def __init__(self, directory: Path, build_id: str, *, flush_every: int = 8,
                 flush_interval_s: float = 1.0) -> None:  # fmt: skip
        if flush_every < 1 or flush_interval_s <= 0:
            raise ValueError("flush_every must be >= 1 and flush_interval_s > 0")
        self.directory = Path(directory)
        safe_build = "".join(c if c.isalnum() or c in "-_." else "_" for c in build_id) or "build"
        self.path = self.directory / f"answers-{safe_build}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.written = 0
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._oldest = 0.0
        self._file: IO[bytes] | None = None
        self._closed = False
        self._wake = threading.Event()
        self._timer: threading.Thread | None = None

    def append(self, entry: Mapping[str, Any]) -> None:
        """Queue one entry; it is durable after the next flush (at most ``flush_every`` entries or
        ``flush_interval_s`` later)."""
        unknown = set(entry) - JOURNAL_FIELDS
        if unknown:
            raise ValueError(f"journal entries may not carry {sorted(unknown)}")
        if not entry.get("content_hash") or not entry.get("model"):
            raise ValueError("journal entries need content_hash and model")
        line = (json.dumps(dict(entry), sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
        with self._lock:
            if self._closed:
                raise ValueError(f"journal {self.path.name} is closed")
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(line)
            if len(self._pending) >= self.flush_every:
                self._flush_locked()
            elif self._timer is None:
                self._timer = threading.Thread(target=self._flush_loop, name="answer-journal", daemon=True)
                self._timer.start()

    def flush(self) -> None:
        """Make every entry appended so far durable (write, flush, fsync)."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Flush and close; later appends raise."""
        with self._lock:
            self._flush_locked()
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
        self._wake.set()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Held open across appends (one open per writer, not per batch); closed in close().
            self._file = open(self.path, "ab")
        # One write per batch: a kill tears at most the last line of the batch in flight.
        self._file.write(b"".join(self._pending))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += len(self._pending)
        self._pending.clear()

    def _flush_loop(self) -> None:
        # Bounds how long a lone answer waits for company when answers arrive slowly.
        while not self._closed:
            with self._lock:
                due = self._oldest + self.flush_interval_s - time.monotonic() if self._pending else None
                if due is not None and due <= 0:
                    self._flush_locked()
                    due = None
            self._wake.wait(self.flush_interval_s if due is None else due)
            self._wake.clear()


def _valid_answer(entry: Any, model: str) -> bool:
    if not isinstance(entry, dict) or entry.get("model") != model:
        return False
    if not isinstance(entry.get("content_hash"), str) or not entry["content_hash"]:
        return False
    answer = {k: entry.get(k) for k in _ANSWER_FIELDS}
    if isinstance(answer["recommended_weight"], bool):
        return False
    return not validation_errors("refinement.v1.json", answer)


def iter_answer_file(path: str | Path, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(content_hash, entry)`` of every valid answer of ``model`` in one JSONL file.

    Read as bytes: a line torn by a kill may end inside a multi-byte UTF-8 character, which a text-mode
    read would raise on for the whole file. Lines that do not parse or do not hold a valid
    ``refinement.v1`` answer are skipped (and counted in the log), never fatal.
    """
    skipped = 0
    for raw in Path(path).read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            entry = safe_json.loads(raw)
        except safe_json.UnsafeJSON:
            skipped += 1
            continue
        if isinstance(entry, dict) and entry.get("model") != model:
            continue  # another model's answer: not an error
        if not _valid_answer(entry, model):
            skipped += 1
            continue
        yield entry["content_hash"], entry
    if skipped:
        logger.warning("refine cache %s: skipped %d unreadable or invalid lines", path, skipped)


def read_answers(directory: Path, model: str) -> dict[str, dict[str, Any]]:
    """Every stored answer of ``model`` in ``directory``, keyed by content hash.

    Reads all ``*.jsonl`` files (journals and end-of-build cache files) with :func:`iter_answer_file`,
    oldest first (by modification time, then name) so that a newer answer for the same content
    replaces an older one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    files = sorted(directory.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    answers: dict[str, dict[str, Any]] = {}
    for path in files:
        answers.update(iter_answer_file(path, model))
    return answers
