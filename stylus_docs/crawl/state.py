"""Durable crawl state (``state.json``), the failure log and the in-process seen-id registry.

``state.json`` holds the crawl's fingerprint (what was asked for), and per listing partition its
resume cursor, whether it is done, and counts. Every update is read-modify-write under an exclusive
``flock`` on ``OUT/.state.lock`` and published atomically, so partitions crawled by different threads
or processes on one machine never lose each other's progress, and a ``kill -9`` leaves the last
committed version.

A ``state.json`` that cannot be used (not JSON, cut short, hand-edited into the wrong shape) stops the
crawl with one :class:`~stylus_docs.errors.FatalError` line naming the file and the way out: delete it
and run again. That is safe because resume never depends on it for correctness — the crawl then lists
from the first page again, and the items already in committed chunks are recognised and not stored twice.

Ordering that makes resume exact: a partition first publishes a chunk of new items, then advances its
cursor past the pages those items came from. A kill between the two re-fetches those pages on resume;
their items are already in committed chunks, and :class:`SeenIds` (seeded from the committed chunks)
drops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stylus_docs import safe_json
from stylus_docs.atomic import atomic_write_text
from stylus_docs.crawl.snapshot import iter_chunk_records
from stylus_docs.errors import FatalError
from stylus_docs.secrets import redact

STATE_VERSION = 1

# Partition fields and the types a state.json written by this module gives them.
_PARTITION_FIELDS: dict[str, tuple[type, ...]] = {
    "cursor": (str, type(None)),
    "done": (bool,),
    "failed": (str, type(None)),
    "limited": (bool,),
    "updated_at": (str,),
}


def state_problem(state: Any) -> str | None:
    """Why ``state`` (parsed ``state.json``) is not a crawl state this module wrote, or None.

    Unknown keys are allowed (a newer toolkit may add some); known keys must have their types.
    """
    if not isinstance(state, dict):
        return f"the top level is a JSON {type(state).__name__}, not an object"
    version = state.get("version", STATE_VERSION)
    if isinstance(version, bool) or version != STATE_VERSION:
        return f"version {str(version)[:20]!r}, this toolkit reads version {STATE_VERSION}"
    if not isinstance(state.get("fingerprint"), dict | type(None)):
        return "fingerprint is not an object"
    runs = state.get("runs", 0)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        return "runs is not a non-negative integer"
    for key in ("created_at", "updated_at"):
        if not isinstance(state.get(key, ""), str):
            return f"{key} is not a string"
    partitions = state.get("partitions", {})
    if not isinstance(partitions, dict):
        return "partitions is not an object"
    for name, part in partitions.items():
        label = f"partition {name[:60]!r}"
        if not isinstance(part, dict):
            return f"{label} is not an object"
        for field, types in _PARTITION_FIELDS.items():
            if field in part and not isinstance(part[field], types):
                return f"{label}: {field} has type {type(part[field]).__name__}"
        for field, value in part.items():
            if field not in _PARTITION_FIELDS and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                return f"{label}: count {field[:40]!r} is not a non-negative integer"
    return None


class CrawlState:
    """``OUT/<source>/state.json`` with process- and thread-safe updates.

    Args:
        out: the state directory of one source's crawl (``OUT/civitai`` or ``OUT/hf``).
    """

    _thread_lock = threading.Lock()

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.path = self.out / "state.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.out.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.out / ".state.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> dict[str, Any]:
        """The current state (an empty skeleton when there is none yet).

        Raises:
            FatalError: the file cannot be read, is not strict JSON, or does not have the shape this
                module writes (one line, naming the file and how to recover).
        """
        if not self.path.exists():
            return {"version": STATE_VERSION, "fingerprint": None, "partitions": {}}
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise self._corrupt(f"cannot be read: {exc.strerror or type(exc).__name__}") from None
        try:
            state = safe_json.loads(data)
        except safe_json.UnsafeJSON as exc:
            raise self._corrupt(f"not valid JSON: {exc.reason}: {exc.detail}") from None
        problem = state_problem(state)
        if problem is not None:
            raise self._corrupt(problem)
        state.setdefault("partitions", {})
        return state

    def _corrupt(self, why: str) -> FatalError:
        # One line whatever the parser said: the CLI prints the message as is.
        why = " ".join(why.split())[:200]
        return FatalError(f"{self.path}: unusable crawl state ({why}); delete it and run the same command "
                          "again to re-list from the start (committed chunks are kept, nothing is stored "
                          "twice), or use another --out")

    def begin(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """Record ``fingerprint`` for a new crawl, or check it matches the crawl being resumed.

        Raises:
            FatalError: OUT holds a crawl made with different parameters.
        """
        with self._locked():
            state = self.load()
            if state.get("fingerprint") is None:
                state["fingerprint"] = fingerprint
                state["created_at"] = _now()
            elif state["fingerprint"] != fingerprint:
                raise FatalError(f"{self.out} holds a crawl with different parameters "
                                 f"({_diff(state['fingerprint'], fingerprint)}); use another --out")
            state["runs"] = int(state.get("runs", 0)) + 1
            state["updated_at"] = _now()
            atomic_write_text(self.path, json.dumps(state, indent=1, sort_keys=True))
            return state

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section of the state other than the partitions (``{}`` when absent)."""
        value = self.load().get(name)
        return dict(value) if isinstance(value, dict) else {}

    def update_section(self, name: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the top-level section ``name`` (e.g. ``delta``) and save."""
        with self._locked():
            state = self.load()
            section = state.get(name) if isinstance(state.get(name), dict) else {}
            section.update(fields)
            state[name] = section
            state["updated_at"] = _now()
            atomic_write_text(self.path, json.dumps(state, indent=1, sort_keys=True))
            return dict(section)

    def partition(self, key: str) -> dict[str, Any]:
        """The saved state of partition ``key`` (``{}`` when it never committed anything)."""
        return dict(self.load().get("partitions", {}).get(key, {}))

    def update_partition(self, key: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into partition ``key`` (numbers under ``add_*`` names are added) and save."""
        with self._locked():
            state = self.load()
            part = state.setdefault("partitions", {}).setdefault(key, {})
            for name, value in fields.items():
                if name.startswith("add_"):
                    part[name[4:]] = int(part.get(name[4:], 0)) + int(value)
                else:
                    part[name] = value
            part["updated_at"] = _now()
            state["updated_at"] = _now()
            atomic_write_text(self.path, json.dumps(state, indent=1, sort_keys=True))
            return dict(part)


class FailureLog:
    """Append-only ``OUT/failures.jsonl``: one JSON line per record that could not be fetched.

    Lines are written with ``O_APPEND`` in one ``write`` call each, so concurrent writers do not
    interleave; a ``kill -9`` can at worst leave a last partial line, which readers skip.
    """

    _lock = threading.Lock()

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.path = Path(out) / "failures.jsonl"

    def record(self, source: str, stage: str, ident: Any, reason: str, detail: str = "") -> None:
        """Append one failure (``detail`` is redacted and truncated)."""
        line = json.dumps({"source": source, "stage": stage, "id": ident, "reason": reason,
                           "detail": redact(str(detail))[:500], "at": _now()}, ensure_ascii=False,
                          default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # errors="replace": a lone surrogate in a detail taken from hostile data must not turn
                # "record this failure" into a crash.
                os.write(fd, (line + "\n").encode("utf-8", errors="replace"))
            finally:
                os.close(fd)


def read_failures(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete line of the failure logs of a crawl output (``OUT/<source>/failures.jsonl``).

    ``out`` may be the crawl's OUT (every source is read) or one source's state directory.
    """
    root = Path(out)
    single = root / "failures.jsonl"
    paths = [single] if single.exists() else sorted(root.glob("*/failures.jsonl"))
    rows = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


class SeenIds:
    """Thread-safe set of record ids already committed or claimed, with an optional total cap."""

    def __init__(self, initial: set[Any], limit: int | None = None) -> None:
        self._ids = set(initial)
        self._lock = threading.Lock()
        self.limit = limit

    def claim(self, ident: Any) -> bool:
        """Mark ``ident`` as taken; False when it already was (a duplicate) or the cap is reached."""
        with self._lock:
            if ident in self._ids or self.full_locked():
                return False
            self._ids.add(ident)
            return True

    def full_locked(self) -> bool:
        return self.limit is not None and len(self._ids) >= self.limit

    @property
    def full(self) -> bool:
        """True when the cap is reached."""
        with self._lock:
            return self.full_locked()

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


_REGISTRY: dict[tuple[str, str, str], SeenIds] = {}
_REGISTRY_LOCK = threading.Lock()


def seen_ids(out: str | os.PathLike[str], directory: str, prefix: str, run_id: str,
             id_of: Callable[[Any], Any], limit: int | None = None) -> SeenIds:
    """The process-wide :class:`SeenIds` of one run, seeded once from the committed chunks.

    One set per (out, prefix, run) is shared by every partition crawled in this process, so a model
    listed by two partitions (e.g. two base models) is stored once. Across processes the seed from
    committed chunks covers everything a previous (killed) run published.
    """
    key = (str(Path(out).resolve()), f"{directory}/{prefix}", run_id)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            initial = {id_of(r) for r in iter_chunk_records(Path(out) / directory, prefix)}
            _REGISTRY[key] = SeenIds(initial, limit)
        return _REGISTRY[key]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in: " + ", ".join(keys) if keys else "differs"
