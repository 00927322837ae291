"""One scheduled command: delta crawl → incremental build → publish → prune (``stylus-docs rebuild``).

::

    WORK/
      .rebuild.lock                 flock of the running rebuild (pid and start time inside, informational)
      last-run.json                 what the last run did (machine-readable; every exit path writes it)
      snapshots/<stamp>/            one dated raw snapshot per run: civitai/, hf/ (the crawl's layout)
      snapshots/<stamp>/COMPLETE    written once every crawl of that snapshot finished complete

A run resumes the newest snapshot when it is not ``COMPLETE`` (the crawl resumes from its own
``state.json``), else starts a new one. Each source is delta-crawled against the newest complete
snapshot (``crawl --previous``), so only new and changed versions are fetched and deletions become
tombstones; the build reads the new snapshot with ``--previous`` = the live release, so only new and
changed adapters are refined and embedded. When the crawl found nothing new, changed or removed, nothing
is built (exit 3).

Exit codes (for cron, Airflow, systemd timers):

==== ==========================================================================================
0    a new release was published
1    incomplete: a crawl could not finish (the API failed after retries); run again, it resumes
2    configuration or fatal error (bad flags, bad credentials, a build refused to publish)
3    nothing changed since the last complete snapshot: nothing was built or published
4    another rebuild of the same ``--work`` is running (its lock is held)
==== ==========================================================================================

A lock left by a process that died is not a problem: ``flock`` locks die with their process, so the
next run takes it over.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from stylus_docs import release
from stylus_docs.atomic import atomic_write_text
from stylus_docs.errors import FatalError
from stylus_docs.secrets import redact

logger = logging.getLogger(__name__)

LOCK_FILE = ".rebuild.lock"
LAST_RUN = "last-run.json"
SNAPSHOTS = "snapshots"
COMPLETE = "COMPLETE"

EXIT_PUBLISHED, EXIT_INCOMPLETE, EXIT_FATAL, EXIT_UNCHANGED, EXIT_LOCKED = 0, 1, 2, 3, 4
EXIT_REASONS = {EXIT_PUBLISHED: "published", EXIT_INCOMPLETE: "incomplete", EXIT_FATAL: "fatal",
                EXIT_UNCHANGED: "nothing_changed", EXIT_LOCKED: "locked"}  # fmt: skip

#: Delta-crawl summary keys that mean "the catalogue changed".
CHANGE_KEYS = ("new", "changed", "removed")


@dataclass(slots=True)
class RebuildConfig:
    """What one ``rebuild`` run does.

    Attributes:
        work: the working directory (snapshots, lock, ``last-run.json``).
        docs: the release root to publish into (``--previous`` is its live build).
        sources: ``civitai`` and/or ``hf``.
        crawl_args: per source, crawl flags after ``crawl <source>`` (without ``--out``/``--previous``).
        build_args: build flags (without ``--raw``/``--out``/``--previous``).
        keep_snapshots: complete snapshots kept (the newest; the one just written included).
        beam_args: Beam pipeline options for both crawl and build.
    """

    work: Path
    docs: Path
    sources: tuple[str, ...] = ("civitai",)
    crawl_args: dict[str, list[str]] = field(default_factory=dict)
    build_args: list[str] = field(default_factory=list)
    keep_snapshots: int = 3
    beam_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sources or any(s not in ("civitai", "hf") for s in self.sources):
            raise FatalError("--sources takes civitai and/or hf")
        if self.keep_snapshots < 1:
            raise FatalError("--keep-snapshots must be at least 1")


class RebuildLocked(FatalError):
    """Another rebuild holds the lock of this working directory."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_LOCKED)


@contextlib.contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """Hold ``WORK/.rebuild.lock`` (non-blocking); :class:`RebuildLocked` when another run holds it."""
    path = work / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()[:200] or "unknown process"
            raise RebuildLocked(f"another rebuild is running in {work} ({holder}); it holds {path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock


def snapshot_dirs(work: Path) -> list[Path]:
    """Snapshot directories, oldest first (their names are UTC stamps)."""
    root = work / SNAPSHOTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_complete(snapshot: Path) -> bool:
    return (snapshot / COMPLETE).is_file()


def last_complete(work: Path) -> Path | None:
    """The newest complete snapshot, or None."""
    done = [p for p in snapshot_dirs(work) if is_complete(p)]
    return done[-1] if done else None


def current_snapshot(work: Path, now: float | None = None) -> tuple[Path, bool]:
    """``(snapshot, resumed)``: the newest unfinished snapshot to resume, else a new dated one."""
    dirs = snapshot_dirs(work)
    if dirs and not is_complete(dirs[-1]):
        return dirs[-1], True
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    path = work / SNAPSHOTS / stamp
    n = 1
    while path.exists():  # two runs within one second
        path = work / SNAPSHOTS / f"{stamp}-{n}"
        n += 1
    return path, False


def prune_snapshots(work: Path, keep: int) -> list[str]:
    """Delete complete snapshots beyond the newest ``keep``; never an unfinished one. Returns names."""
    done = [p for p in snapshot_dirs(work) if is_complete(p)]
    removed = []
    for old in done[:-keep] if keep < len(done) else []:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old.name)
    return removed


class _FlagParser(argparse.ArgumentParser):
    """argparse that raises one :class:`FatalError` line instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise FatalError(f"{self.prog}: {message}")


def crawl_config(source: str, snapshot: Path, previous: Path | None, args: Sequence[str]) -> Any:
    """The validated :class:`~stylus_docs.crawl.engine.CrawlConfig` of one source's (delta) crawl."""
    from pipelines.crawl import add_arguments, config_from_args

    parser = _FlagParser(prog=f"rebuild: crawl {source} flags")
    add_arguments(parser)
    argv = [source, "--out", str(snapshot), *(["--previous", str(previous)] if previous else []),
            "--no-progress", *args]  # fmt: skip
    return config_from_args(parser.parse_args(argv))


def build_config(snapshot: Path, docs: Path, args: Sequence[str]) -> Any:
    """The validated :class:`~stylus_docs.build.config.BuildConfig` of the build against the live release."""
    from pipelines.build import add_arguments, config_from_args

    parser = _FlagParser(prog="rebuild: build flags")
    add_arguments(parser)
    live = release.current_build_id(docs) if docs.exists() else None
    argv = ["--raw", str(snapshot), "--out", str(docs), *(["--previous", str(docs)] if live else []),
            "--no-progress", *args]  # fmt: skip
    return config_from_args(parser.parse_args(argv))


def _changes(summary: dict[str, Any]) -> int:
    delta = summary.get("delta") or summary
    return sum(int(delta.get(k) or 0) for k in CHANGE_KEYS)


def run_rebuild(config: RebuildConfig) -> dict[str, Any]:
    """One scheduled run; returns the ``last-run.json`` record (``exit_code`` says how it ended).

    Never raises for an expected outcome: a fatal error, an incomplete crawl or a held lock are exit
    codes in the record, which is written to ``WORK/last-run.json`` on every path but the lock one
    (the running rebuild owns that file).
    """
    work = config.work
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"cannot create --work {work}: {exc.strerror}") from None
    started = time.time()
    record: dict[str, Any] = {"work": str(work), "docs": str(config.docs), "sources": list(config.sources),
                              "started_at": _iso(started)}  # fmt: skip
    try:
        with work_lock(work):
            try:
                code = _run_locked(config, record)
            except FatalError as exc:
                code = exc.exit_code if exc.exit_code in EXIT_REASONS else EXIT_FATAL
                record["error"] = redact(str(exc))
            record.update(exit_code=code, exit_reason=EXIT_REASONS[code], finished_at=_iso(time.time()),
                          wall_s=round(time.time() - started, 3))  # fmt: skip
            atomic_write_text(work / LAST_RUN, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except RebuildLocked as exc:
        record.update(exit_code=EXIT_LOCKED, exit_reason=EXIT_REASONS[EXIT_LOCKED], error=str(exc))
    return record


def _run_locked(config: RebuildConfig, record: dict[str, Any]) -> int:
    previous = last_complete(config.work)
    snapshot, resumed = current_snapshot(config.work)
    snapshot.mkdir(parents=True, exist_ok=True)
    record.update(snapshot=str(snapshot), resumed=resumed,
                  previous_snapshot=str(previous) if previous else None)  # fmt: skip
    # Every flag is checked before anything is fetched: a typo must not cost a crawl.
    crawl_configs = {
        s: crawl_config(s, snapshot, previous, config.crawl_args.get(s, [])) for s in config.sources
    }
    build_config(snapshot, config.docs, config.build_args)
    from pipelines.build import run_build
    from pipelines.crawl import run_config

    crawls: dict[str, Any] = {}
    record["crawl"] = crawls
    for source in config.sources:
        summary = run_config(crawl_configs[source], config.beam_args, quiet=True)
        crawls[source] = _crawl_record(summary)
        if not summary.get("complete"):
            parts = ", ".join(f"{k} ({v})" for k, v in (summary.get("incomplete_partitions") or {}).items())
            record["error"] = f"crawl {source} incomplete: {parts or 'unfinished'}; run again to resume"
            return EXIT_INCOMPLETE
    atomic_write_text(snapshot / COMPLETE, _iso(time.time()) + "\n")
    live = release.current_build_id(config.docs) if config.docs.exists() else None
    changed = sum(_changes(crawls[s]) for s in config.sources)
    record["changes"] = changed
    if previous is not None and live is not None and changed == 0:
        record["pruned_snapshots"] = prune_snapshots(config.work, config.keep_snapshots)
        return EXIT_UNCHANGED
    manifest = run_build(build_config(snapshot, config.docs, config.build_args), config.beam_args)
    record["build"] = {"build_id": manifest["build_id"], "previous": manifest.get("previous"),
                       "counts": manifest["counts"], "wall_s": manifest.get("wall_s")}  # fmt: skip
    record["pruned_snapshots"] = prune_snapshots(config.work, config.keep_snapshots)
    return EXIT_PUBLISHED


def _crawl_record(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("complete", "requests", "retries", "elapsed_s", "models", "versions", "failed_records",
            "incomplete_partitions", "tombstones", "delta", *CHANGE_KEYS, "fetched",
            "carried_over")  # fmt: skip
    return {k: summary[k] for k in keys if k in summary}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
