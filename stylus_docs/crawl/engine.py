"""Resumable crawl logic, free of Beam: list a partition, fetch version details, write chunks.

The Beam pipeline (``pipelines/crawl.py``) calls these classes from its DoFns; they can equally be
driven by a plain loop. Durability rules (see :mod:`stylus_docs.crawl.state`): a chunk is published
before the cursor that follows it is saved; version details are skipped on resume when their id is
already in a committed ``versions`` chunk.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs import safe_json
from stylus_docs.crawl.snapshot import iter_chunk_records, write_chunk
from stylus_docs.crawl.state import CrawlState, FailureLog, SeenIds, seen_ids
from stylus_docs.errors import FatalError, SkipRecord
from stylus_docs.http import (
    DEFAULT_DEADLINE_S,
    MAX_JSON_BYTES,
    MAX_TEXT_BYTES,
    HttpClient,
    HttpFailure,
    safe_url,
)
from stylus_docs.sources import civitai, huggingface
from stylus_docs.sources.civitai import CivitaiQuery, CivitaiSource
from stylus_docs.sources.huggingface import HfQuery, HuggingFaceSource

logger = logging.getLogger(__name__)

#: Listing failures that mean the API host cannot be used at all (→ the CLI exits non-zero).
UNREACHABLE_REASONS = frozenset({"connection_error", "timeout"})


@dataclass(frozen=True)
class CrawlConfig:
    """Everything one crawl needs; picklable, so Beam DoFns carry it to workers.

    Args:
        source: ``"civitai"`` or ``"hf"``.
        out: output directory (snapshots, ``state.json``, ``failures.jsonl``, ``summary.json``).
        api_url: base URL without ``/api/v1`` (e.g. ``https://civitai.com`` or a replay server).
        civitai: Civitai listing filters (source ``civitai``).
        hf: Hub listing filters (source ``hf``).
        limit: stop after this many models in total (None: complete crawl).
        max_images_per_version: ``/api/v1/images`` items fetched per version (0: none).
        concurrency: detail fetches in flight per worker.
        rps: request starts per second per host (None: unlimited).
        max_attempts: attempts per request.
        backoff: base of the exponential backoff (s).
        max_retry_after: cap on honoured Retry-After waits (s).
        timeout: (connect, read) timeout (s).
        deadline: total time of one request attempt, body included (s); a server that trickles its
            answer fails it with ``deadline_exceeded`` (retried like a timeout).
        max_page_bytes: cap on one JSON page or version body (``body_too_large``, not retried).
        max_card_bytes: cap on one Hub README (the card then records ``card_error: body_too_large``).
        models_per_chunk: listing items per ``models-*.jsonl.gz`` chunk.
        versions_per_chunk: version records per ``versions-*.jsonl.gz`` chunk.
        run_id: identifies one run (scopes the in-process duplicate registry).
        progress: show tqdm bars (only honoured when stderr is a TTY).
    """

    source: str
    out: str
    api_url: str
    civitai: CivitaiQuery = field(default_factory=CivitaiQuery)
    hf: HfQuery = field(default_factory=HfQuery)
    limit: int | None = None
    max_images_per_version: int = 10
    concurrency: int = 16
    rps: float | None = None
    max_attempts: int = 6
    backoff: float = 1.0
    max_retry_after: float = 60.0
    timeout: tuple[float, float] = (10.0, 60.0)
    deadline: float = DEFAULT_DEADLINE_S
    max_page_bytes: int = MAX_JSON_BYTES
    max_card_bytes: int = MAX_TEXT_BYTES
    models_per_chunk: int = 1000
    versions_per_chunk: int = 500
    run_id: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.source not in ("civitai", "hf"):
            raise FatalError(f"unknown source {self.source!r} (expected civitai or hf)")
        if self.limit is not None and self.limit < 1:
            raise FatalError("--limit must be >= 1")
        if self.concurrency < 1 or self.max_attempts < 1:
            raise FatalError("--concurrency and --max-attempts must be >= 1")
        if self.max_images_per_version < 0:
            raise FatalError("--max-images-per-version must be >= 0")
        if self.deadline <= 0 or self.max_page_bytes <= 0 or self.max_card_bytes <= 0:
            raise FatalError("the request deadline and the body size caps must be positive")

    @property
    def token_env(self) -> str:
        """Environment variable holding this source's token."""
        return civitai.TOKEN_ENV if self.source == "civitai" else huggingface.TOKEN_ENV

    def fingerprint(self) -> dict[str, Any]:
        """What defines the snapshot's content; a resume must match it exactly."""
        query = asdict(self.civitai) if self.source == "civitai" else asdict(self.hf)
        return {"source": self.source, "api_url": safe_url(self.api_url.rstrip("/")),
                "query": json_ready(query), "limit": self.limit,
                "max_images_per_version": self.max_images_per_version if self.source == "civitai" else None}

    def make_client(self) -> HttpClient:
        """A fresh :class:`HttpClient` for this crawl (one per worker)."""
        return HttpClient(self.api_url, token_env=self.token_env, rps=self.rps,
                          max_attempts=self.max_attempts,
                          backoff=self.backoff, max_retry_after=self.max_retry_after, timeout=self.timeout,
                          deadline=self.deadline, max_json_bytes=self.max_page_bytes,
                          max_text_bytes=self.max_card_bytes, pool_size=max(8, self.concurrency + 2))


def json_ready(value: Any) -> Any:
    """Tuples → lists, recursively (so a fingerprint compares equal after a JSON round trip)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _listed_id(item: Any, *keys: str) -> int | str | None:
    """The id of a refused listing item for its failure record, when it has a plain one (else None)."""
    if not isinstance(item, dict):
        return None
    for key in keys:
        value = item.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and len(value) <= 200 and safe_json.find_problem(value) is None:
            return value
    return None


def _bar(cfg: CrawlConfig, desc: str, unit: str) -> Any:
    if not (cfg.progress and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, unit=unit, leave=False, dynamic_ncols=True)


class _Crawler:
    """Shared plumbing: client, state, failure log, duplicate registry."""

    directory = ""

    def __init__(self, cfg: CrawlConfig, client: HttpClient | None = None) -> None:
        self.cfg = cfg
        self.client = client or cfg.make_client()
        self.out = Path(cfg.out)
        # State lives per source (OUT/civitai/state.json, OUT/hf/state.json) so one OUT holds both crawls.
        self.state = CrawlState(self.out / cfg.source)
        self.failures = FailureLog(self.out / cfg.source)
        self.record_failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def fail(self, stage: str, ident: Any, reason: str, detail: str = "") -> None:
        """Log a record that could not be fetched and count it."""
        self.failures.record(self.cfg.source, stage, ident, reason, detail)
        with self._lock:
            key = f"{stage}:{reason}"
            self.record_failures[key] = self.record_failures.get(key, 0) + 1
        logger.info("%s %s %s failed: %s %s", self.cfg.source, stage, ident, reason, detail[:200])

    def listing_failed(self, key: str, exc: SkipRecord, cursor: str | None) -> None:
        """Record a partition that stopped mid-way; it resumes from ``cursor`` on the next run."""
        self.fail("listing", key, exc.reason, exc.detail)
        self.state.update_partition(key, done=False, failed=exc.reason)
        if isinstance(exc, HttpFailure) and exc.reason in UNREACHABLE_REASONS:
            raise FatalError(f"cannot reach the API after {self.cfg.max_attempts} attempts "
                             f"({exc.reason}): {exc.url}")


class CivitaiCrawler(_Crawler):
    """Lists Civitai partitions and fetches version details, resumably.

    Args:
        cfg: the crawl configuration (source ``civitai``).
        client: an existing client to share (default: a new one from ``cfg``).
    """

    directory = "civitai"

    def __init__(self, cfg: CrawlConfig, client: HttpClient | None = None) -> None:
        super().__init__(cfg, client)
        self.source = CivitaiSource(self.client, cfg.max_images_per_version, cfg.civitai.nsfw)
        self.seen: SeenIds = seen_ids(self.out, "civitai", "models", cfg.run_id, lambda r: r.get("id"),
                                      cfg.limit)

    def crawl_partition(self, partition: dict[str, str | None]) -> Iterator[tuple[int, int]]:
        """Page one partition from its saved cursor to the end, committing chunks as it goes.

        Yields:
            ``(model_id, version_id)`` for every version of every model newly committed.
        """
        key = civitai.partition_key(partition)
        saved = self.state.partition(key)
        if saved.get("done"):
            return
        params = self.cfg.civitai.params(partition)
        cursor: str | None = saved.get("cursor")
        buffer: list[dict[str, Any]] = []
        seen_cursors: set[str] = set()
        bar = _bar(self.cfg, f"models {key}", "model")
        try:
            while True:
                if self.seen.full:
                    yield from self._commit(key, buffer, None, limited=True)
                    return
                try:
                    page = self.source.fetch_page(params, cursor)
                except SkipRecord as exc:  # HttpFailure (spent retries, 4xx) or a malformed page
                    yield from self._commit(key, buffer, cursor, done=False)
                    self.listing_failed(key, exc, cursor)
                    return
                for item in page.items:
                    try:
                        mid = civitai.model_id(item)
                    except SkipRecord as exc:
                        self.fail("model", _listed_id(item, "id"), exc.reason, exc.detail)
                        continue
                    if self.seen.claim(mid):
                        buffer.append(item)
                        if bar is not None:
                            bar.update(1)
                nxt = page.next
                if nxt is not None and nxt in seen_cursors:
                    self.fail("listing", key, "cursor_loop", f"cursor {nxt[:60]!r} repeated")
                    nxt = None
                if nxt is not None:
                    seen_cursors.add(nxt)
                if nxt is None or len(buffer) >= self.cfg.models_per_chunk:
                    yield from self._commit(key, buffer, nxt, done=nxt is None)
                    buffer = []
                if nxt is None:
                    return
                cursor = nxt
        finally:
            if bar is not None:
                bar.close()

    def _commit(self, key: str, items: list[dict[str, Any]], cursor: str | None, done: bool = True,
                limited: bool = False) -> Iterator[tuple[int, int]]:
        if items:
            write_chunk(self.out / "civitai", "models", items)
        fields: dict[str, Any] = {"cursor": cursor, "done": done, "add_models": len(items)}
        if done:
            fields["failed"] = None
        if limited:
            fields["limited"] = True
        self.state.update_partition(key, **fields)
        for item in items:
            vids, problems = civitai.version_ids(item)
            for problem in problems:
                self.fail("version", None, "invalid_item", problem)
            for vid in vids:
                yield item["id"], vid

    def fetch_version(self, model_id: int, version_id: int) -> dict[str, Any] | None:
        """One version record (with ``_images``), or None after recording why it failed."""
        try:
            record = self.source.fetch_version(version_id)
        except SkipRecord as exc:
            self.fail("version", version_id, exc.reason, exc.detail)
            return None
        # Bodies are parsed strictly already; this keeps the snapshot writer's invariant (every line
        # reads back through safe_json) whatever the source code does.
        problem = safe_json.find_problem(record)
        if problem is not None:
            self.fail("version", version_id, *problem)
            return None
        if "_images_error" in record:
            self.fail("images", version_id, record["_images_error"])
        return record


class VersionFetcher:
    """Fetches version details on a bounded thread pool and publishes them in chunks.

    Call :meth:`submit` for each ``(model_id, version_id)``, :meth:`drain` now and then to write
    finished results, and :meth:`close` at the end (waits, writes the rest).

    Args:
        crawler: supplies the client, failure log and output directory.
        done: version ids already in committed chunks (skipped).
    """

    def __init__(self, crawler: CivitaiCrawler, done: set[int] | frozenset[int] = frozenset()) -> None:
        self.crawler = crawler
        self.done = set(done)
        self.pool = ThreadPoolExecutor(max_workers=crawler.cfg.concurrency, thread_name_prefix="versions")
        self.pending: list[Future] = []
        self.ready: list[dict[str, Any]] = []
        self.written = 0
        self.bar = _bar(crawler.cfg, "versions", "version")

    def submit(self, model_id: int, version_id: int) -> None:
        """Queue one version fetch (duplicates and already-committed ids are ignored)."""
        if version_id in self.done:
            return
        self.done.add(version_id)
        self.pending.append(self.pool.submit(self.crawler.fetch_version, model_id, version_id))

    def drain(self, wait: bool = False) -> int:
        """Collect finished fetches, write full chunks (all when ``wait``); return records written."""
        still: list[Future] = []
        for fut in self.pending:
            if wait or fut.done():
                record = fut.result()
                if record is not None:
                    self.ready.append(record)
                if self.bar is not None:
                    self.bar.update(1)
            else:
                still.append(fut)
        self.pending = still
        size = self.crawler.cfg.versions_per_chunk
        written = 0
        while len(self.ready) >= size or (wait and self.ready):
            chunk, self.ready = self.ready[:size], self.ready[size:]
            write_chunk(self.crawler.out / "civitai", "versions", chunk)
            written += len(chunk)
        self.written += written
        return written

    def close(self) -> int:
        """Wait for every fetch, write the remaining records, stop the pool; return records written."""
        written = self.drain(wait=True)
        self.pool.shutdown(wait=True)
        if self.bar is not None:
            self.bar.close()
        return written


def committed_version_ids(out: str | Path) -> set[int]:
    """Ids of version records in committed ``civitai/versions-*`` chunks."""
    return {r.get("id") for r in iter_chunk_records(Path(out) / "civitai", "versions") if isinstance(r, dict)}


def pending_versions(out: str | Path) -> list[tuple[int, int]]:
    """``(model_id, version_id)`` of committed models whose version record is not committed yet."""
    done = committed_version_ids(out)
    todo: dict[int, int] = {}
    for item in iter_chunk_records(Path(out) / "civitai", "models"):
        vids, _ = civitai.version_ids(item)
        for vid in vids:
            if vid not in done:
                todo.setdefault(vid, item["id"])
    return [(mid, vid) for vid, mid in sorted(todo.items())]


class HfCrawler(_Crawler):
    """Lists Hub repos (``Link`` paging) and fetches each README card, resumably.

    Args:
        cfg: the crawl configuration (source ``hf``).
        client: an existing client to share (default: a new one from ``cfg``).
    """

    directory = "hf"
    PARTITION = "hf"

    def __init__(self, cfg: CrawlConfig, client: HttpClient | None = None) -> None:
        super().__init__(cfg, client)
        self.source = HuggingFaceSource(self.client)
        self.seen = seen_ids(self.out, "hf", "models", cfg.run_id,
                             lambda r: (r.get("item") or {}).get("id"), cfg.limit)

    def crawl(self) -> int:
        """Page from the saved next URL, fetch cards concurrently, commit; return records written."""
        key = self.PARTITION
        saved = self.state.partition(key)
        if saved.get("done"):
            return 0
        params = self.cfg.hf.params()
        next_url: str | None = saved.get("cursor")
        buffer: list[dict[str, Any]] = []
        written = 0
        seen_urls: set[str] = set()
        bar = _bar(self.cfg, "hf models", "repo")
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="cards") as pool:
            while True:
                if self.seen.full:
                    written += self._commit(key, buffer, None, limited=True)
                    break
                try:
                    page = self.source.fetch_page(params, next_url)
                except SkipRecord as exc:
                    written += self._commit(key, buffer, next_url, done=False)
                    self.listing_failed(key, exc, next_url)
                    break
                fresh = []
                for item in page.items:
                    try:
                        rid = huggingface.repo_id(item)
                    except SkipRecord as exc:
                        self.fail("model", _listed_id(item, "id", "modelId"), exc.reason, exc.detail)
                        continue
                    if self.seen.claim(rid):
                        fresh.append(item)
                for item, (card, error) in zip(fresh, pool.map(self.source.fetch_card, fresh), strict=True):
                    if error:
                        self.fail("card", item["id"], error)
                    buffer.append({"item": item, "card": card, "card_error": error})
                if bar is not None:
                    bar.update(len(fresh))
                nxt = page.next
                if nxt is not None and nxt in seen_urls:
                    self.fail("listing", key, "cursor_loop", "next link repeated")
                    nxt = None
                if nxt is not None:
                    seen_urls.add(nxt)
                if nxt is None or len(buffer) >= self.cfg.models_per_chunk:
                    written += self._commit(key, buffer, nxt, done=nxt is None)
                    buffer = []
                if nxt is None:
                    break
                next_url = nxt
        if bar is not None:
            bar.close()
        return written

    def _commit(self, key: str, records: list[dict[str, Any]], cursor: str | None, done: bool = True,
                limited: bool = False) -> int:
        if records:
            write_chunk(self.out / "hf", "models", records)
        fields: dict[str, Any] = {"cursor": safe_url(cursor) if cursor else None, "done": done,
                                  "add_models": len(records)}
        if done:
            fields["failed"] = None
        if limited:
            fields["limited"] = True
        self.state.update_partition(key, **fields)
        return len(records)
