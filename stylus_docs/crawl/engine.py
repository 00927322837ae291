"""Resumable crawl logic, free of Beam: list a partition, fetch version details, write chunks.

The Beam pipeline (``pipelines/crawl.py``) calls these classes from its DoFns; they can equally be
driven by a plain loop. Durability rules (see :mod:`stylus_docs.crawl.state`): a chunk is published
before the cursor that follows it is saved; version details are skipped on resume when their id is
already in a committed ``versions`` chunk. A delta crawl (``--previous``, :mod:`stylus_docs.crawl.delta`)
carries unchanged detail records over instead of fetching them (:class:`VersionCarrier`, and
:class:`HfCrawler` for cards).

Every listing item and detail record written carries ``"_host"``: the API base URL it came from (on
Civitai, green or red, docs/API-NOTES.md §1.12, is part of a record's provenance).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs import safe_json
from stylus_docs.atomic import atomic_write_bytes, atomic_write_text
from stylus_docs.crawl import delta, digests
from stylus_docs.crawl.snapshot import (
    MEMBER_LINES,
    UnsafeRecord,
    committed_chunks,
    encode_record,
    gzip_lines,
    iter_chunk_members,
    write_chunk,
    write_chunk_bytes,
)
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
#: The saved ``/api/v1/enums`` body, in ``OUT/civitai/``.
ENUMS_FILE = "enums.json"


@dataclass(frozen=True)
class CrawlConfig:
    """Everything one crawl needs; picklable, so Beam DoFns carry it to workers.

    Args:
        source: ``"civitai"`` or ``"hf"``.
        out: output directory (snapshots, ``state.json``, ``failures.jsonl``, ``summary.json``).
        api_url: base URL without ``/api/v1`` (e.g. ``https://civitai.com`` or a replay server).
        civitai: Civitai listing filters (source ``civitai``).
        hf: Hub listing filters (source ``hf``).
        host: Civitai host kind, ``green`` (civitai.com, SFW only) or ``red`` (civitai.red, everything);
            picks the token variable (each host only its own) and must be ``red`` for ``--nsfw``.
        previous: a complete earlier snapshot (OUT dir) to carry unchanged details over from and to
            compare the listing with (tombstones); None for a full crawl.
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
    host: str = "green"
    previous: str | None = None
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
        if self.host not in civitai.HOSTS:
            raise FatalError(f"unknown --host {self.host!r}; expected one of: {', '.join(civitai.HOSTS)}")
        if self.source == "civitai" and self.civitai.nsfw and self.host != "red":
            raise FatalError("--nsfw needs --host red: civitai.com (green) serves SFW content only and "
                             "filters NSFW models out without saying so; civitai.red carries them")

    @property
    def token_env(self) -> str:
        """Environment variable holding this crawl's token (per Civitai host; no fallback between them)."""
        return civitai.HOST_TOKEN_ENVS[self.host] if self.source == "civitai" else huggingface.TOKEN_ENV

    @property
    def host_url(self) -> str:
        """The API base URL as recorded in ``_host``, tombstones and the fingerprint (no credentials)."""
        return safe_url(self.api_url.rstrip("/"))

    def fingerprint(self) -> dict[str, Any]:
        """What defines the snapshot's content; a resume must match it exactly."""
        query = asdict(self.civitai) if self.source == "civitai" else asdict(self.hf)
        out = {"source": self.source, "api_url": self.host_url,
               "query": json_ready(query), "limit": self.limit,
               "max_images_per_version": self.max_images_per_version if self.source == "civitai" else None}
        if self.source == "civitai":
            out["host"] = self.host
        if self.previous is not None:
            out["previous"] = str(Path(self.previous).resolve())
        return out

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

    def crawl_partition(self, partition: dict[str, str | None]) -> Iterator[tuple[int, int, str]]:
        """Page one partition from its saved cursor to the end, committing chunks as it goes.

        Yields:
            ``(model_id, version_id, fingerprint)`` for every version of every model newly committed
            (:func:`stylus_docs.crawl.delta.version_fingerprint`).
        """
        key = civitai.partition_key(partition)
        saved = self.state.partition(key)
        if saved.get("done"):
            return
        params = self.cfg.civitai.params(partition)
        cursor: str | None = saved.get("cursor")
        buffer: list[dict[str, Any]] = []
        seen_cursors: set[str] = set()
        # Duplicates within this partition (cursors repeat items) are skipped here; a model another
        # partition lists too is committed by both (each listing trims its versions to its base models)
        # and merged by the pipeline's keyed aggregation (stylus_docs.crawl.dedupe), on any runner. The
        # process-wide registry only enforces --limit.
        listed_here: set[int] = set()
        bar = _bar(self.cfg, f"models {key}", "model")
        # Without --limit every page up to the last one is fetched anyway, so the next page is asked for
        # as soon as its cursor is known: its round trip overlaps the work on this one.
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="listing") if self.cfg.limit is None \
            else None
        pending: Future | None = None
        try:
            while True:
                if self.seen.full:
                    yield from self._commit(key, buffer, None, limited=True)
                    return
                try:
                    page = pending.result() if pending is not None else self.source.fetch_page(params, cursor)
                except SkipRecord as exc:  # HttpFailure (spent retries, 4xx) or a malformed page
                    yield from self._commit(key, buffer, cursor, done=False)
                    self.listing_failed(key, exc, cursor)
                    return
                pending = None
                nxt = page.next
                if nxt is not None and nxt in seen_cursors:
                    self.fail("listing", key, "cursor_loop", f"cursor {nxt[:60]!r} repeated")
                    nxt = None
                if nxt is not None:
                    seen_cursors.add(nxt)
                    if ahead is not None:
                        pending = ahead.submit(self.source.fetch_page, params, nxt)
                # One pass over the whole page vouches for its items; the per-item check runs only on a
                # page that may hold a hostile item (safe_json.all_clean).
                clean = safe_json.all_clean(page.items)
                for item in page.items:
                    try:
                        mid = civitai.model_id(item, checked=clean)
                    except SkipRecord as exc:
                        self.fail("model", _listed_id(item, "id"), exc.reason, exc.detail)
                        continue
                    if mid in listed_here:
                        continue
                    listed_here.add(mid)
                    if self.cfg.limit is None or self.seen.claim(mid):
                        buffer.append(item)
                        if bar is not None:
                            bar.update(1)
                if nxt is None or len(buffer) >= self.cfg.models_per_chunk:
                    yield from self._commit(key, buffer, nxt, done=nxt is None)
                    buffer = []
                if nxt is None:
                    return
                cursor = nxt
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True)  # an unused look-ahead (the crawl stopped early) is one request
            if bar is not None:
                bar.close()

    def _commit(self, key: str, items: list[dict[str, Any]], cursor: str | None, done: bool = True,
                limited: bool = False) -> Iterator[tuple[int, int, str]]:
        host = self.cfg.host_url
        for item in items:
            item["_host"] = host
        listed = [digests.listed_model(item) for item in items]
        if items:
            digests.remember_models(write_chunk(self.out / "civitai", "models", items), listed)
        fields: dict[str, Any] = {"cursor": cursor, "done": done, "add_models": len(items)}
        if done:
            fields["failed"] = None
        if limited:
            fields["limited"] = True
        self.state.update_partition(key, **fields)
        for item, entry in zip(items, listed, strict=True):
            if entry.unusable_versions:
                for problem in civitai.version_ids(item)[1]:
                    self.fail("version", None, "invalid_item", problem)
            for vid, fingerprint in entry.versions.items():
                yield item["id"], vid, fingerprint

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
        record["_host"] = self.cfg.host_url
        return record

    def save_enums(self, previous: str | None = None) -> str:
        """Fetch ``/api/v1/enums`` once per crawl into ``OUT/civitai/enums.json`` (atomically).

        A failed fetch is a recorded failure (stage ``enums``), not a fatal one: the file of an earlier
        run of this crawl is kept, else the previous snapshot's is copied.

        Returns:
            ``fetched``, ``kept`` (fetched by an earlier run), ``carried_over`` (from ``previous``) or
            ``failed`` (no enums in this snapshot).
        """
        root = self.out / "civitai"
        path = root / ENUMS_FILE
        saved = self.state.section("enums").get("outcome")
        if saved == "fetched" and path.is_file():
            return "kept"
        try:
            body = self.source.fetch_enums()
        except SkipRecord as exc:  # HttpFailure too
            self.fail("enums", None, exc.reason, exc.detail)
            old = Path(previous) / "civitai" / ENUMS_FILE if previous else None
            if path.is_file():
                outcome = saved if saved in ("carried_over", "fetched") else "kept"
            elif old is not None and old.is_file():
                atomic_write_bytes(path, old.read_bytes())
                outcome = "carried_over"
            else:
                outcome = "failed"
        else:
            atomic_write_text(path, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
            outcome = "fetched"
        self.state.update_section("enums", outcome=outcome)
        return outcome


class VersionCarrier:
    """Copies unchanged version records of a previous snapshot into this one's ``versions`` chunks.

    Each record is carried as it was fetched then, its line copied byte for byte (its ``_host`` is this
    crawl's: :meth:`~stylus_docs.crawl.delta.PreviousSnapshot.carry_problem` made sure the host is the
    same; a line without ``_host`` gets it), so the new snapshot reads exactly like a full crawl. Carried
    ids go to the ledger before their chunk.

    Args:
        cfg: the crawl configuration.
        done: version ids already in this crawl's committed chunks (not carried twice).
    """

    def __init__(self, cfg: CrawlConfig, done: set[int] | frozenset[int] = frozenset()) -> None:
        self.cfg = cfg
        self.done = set(done)
        self.root = Path(cfg.out) / "civitai"
        self.ledger = delta.CarryLedger(self.root)
        self._suffix = delta.host_suffix(cfg.host_url)

    def carry(self, path: str, unchanged: Mapping[int, Any]) -> Iterator[int]:
        """Carry the records of one old ``versions`` chunk whose ids are in ``unchanged``.

        A gzip member of the old chunk all of whose lines are carried as they are is copied without
        being decompressed and compressed again (:func:`~stylus_docs.crawl.snapshot.iter_chunk_members`);
        the other carried lines are compressed into new members.

        Yields:
            the ids carried, once their chunk is published.
        """
        out = _CarriedChunk()
        # The old chunk's counts (its index, or decoded once) travel with the lines copied byte for byte.
        old = digests.versions(path)
        i = -1
        for member, member_lines in iter_chunk_members(path):
            taken: list[tuple[int, bytes, digests.VersionEntry | None]] = []
            verbatim = member is not None
            for line in member_lines:
                i += 1
                vid, found = delta.carry_line(line, self._suffix)
                if vid is None or vid in self.done or vid not in unchanged:
                    verbatim = False
                    continue
                if isinstance(found, dict):
                    verbatim = False
                    found["_host"] = self.cfg.host_url
                    entry = digests.version_entry(found)
                    try:
                        found = encode_record(found)
                    except UnsafeRecord:
                        continue  # not carried: NotCarried sends it to be fetched
                elif i < len(old) and old[i] is not None and old[i].id == vid:
                    entry = old[i]
                else:
                    entry = digests.version_entry(json.loads(found))
                self.done.add(vid)
                taken.append((vid, found, entry))
            # A member left small by earlier nights' changes is compressed again with its neighbours, so
            # members stay at MEMBER_LINES / 2 lines or more (at most 4 % larger files than one member).
            if (verbatim and len(taken) >= MEMBER_LINES // 2
                    and out.count + len(taken) <= self.cfg.versions_per_chunk):
                out.add_member(member, taken)
            else:
                for one in taken:
                    out.add_member(None, [one])
                    if out.count >= self.cfg.versions_per_chunk:
                        yield from self._commit(out)
                        out = _CarriedChunk()
            if out.count >= self.cfg.versions_per_chunk:
                yield from self._commit(out)
                out = _CarriedChunk()
        yield from self._commit(out)

    def _commit(self, out: _CarriedChunk) -> list[int]:
        if not out.count:
            return []
        self.ledger.record(out.ids)
        digests.remember_versions(write_chunk_bytes(self.root, "versions", out.data()), out.entries)
        return out.ids


class _CarriedChunk:
    """The next ``versions`` chunk of a :class:`VersionCarrier`: old gzip members and lines to compress."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.pending: list[bytes] = []
        self.ids: list[int] = []
        self.entries: list[digests.VersionEntry | None] = []
        self.count = 0

    def add_member(self, member: bytes | None, taken: list[tuple[int, bytes, Any]]) -> None:
        """Add lines ``taken`` (``(id, line, entry)``), with ``member`` their old gzip member when they are
        exactly its lines (copied as it is), else None (compressed later)."""
        if member is not None:
            self._flush()
            self.pieces.append(member)
        else:
            self.pending.extend(line for _, line, _ in taken)
        self.ids.extend(vid for vid, _, _ in taken)
        self.entries.extend(entry for _, _, entry in taken)
        self.count += len(taken)

    def _flush(self) -> None:
        if self.pending:
            self.pieces.append(gzip_lines(self.pending))
            self.pending = []

    def data(self) -> bytes:
        """The chunk's bytes."""
        self._flush()
        return b"".join(self.pieces)


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
            path = write_chunk(self.crawler.out / "civitai", "versions", chunk)
            digests.remember_versions(path, map(digests.version_entry, chunk))
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
    return {entry.id for path in committed_chunks(Path(out) / "civitai", "versions")
            for entry in digests.versions(path) if entry is not None}


def pending_versions(out: str | Path, done: set[int] | None = None) -> list[tuple[int, int, str]]:
    """``(model_id, version_id, fingerprint)`` of committed models whose version record is not committed.

    Args:
        out: the crawl's OUT.
        done: the committed version ids when already known (read from the chunks otherwise).
    """
    done = committed_version_ids(out) if done is None else done
    todo: dict[int, tuple[int, str]] = {}
    for path in committed_chunks(Path(out) / "civitai", "models"):
        for entry in digests.models(path):
            for vid, fingerprint in entry.versions.items():
                if vid not in done:
                    todo.setdefault(vid, (entry.id, fingerprint))
    return [(mid, vid, fp) for vid, (mid, fp) in sorted(todo.items())]


class HfCrawler(_Crawler):
    """Lists Hub repos (``Link`` paging) and fetches each README card, resumably.

    Args:
        cfg: the crawl configuration (source ``hf``).
        client: an existing client to share (default: a new one from ``cfg``).
    """

    directory = "hf"
    PARTITION = "hf"

    def __init__(self, cfg: CrawlConfig, client: HttpClient | None = None,
                 carry_from: delta.PreviousSnapshot | None = None) -> None:
        super().__init__(cfg, client)
        self.source = HuggingFaceSource(self.client)
        self.seen = seen_ids(self.out, "hf", "models", cfg.run_id,
                             lambda r: (r.get("item") or {}).get("id"), cfg.limit)
        self.carry_from = carry_from
        self.ledger = delta.CarryLedger(self.out / "hf")
        self._carried: list[str] = []

    def crawl(self) -> int:
        """Page from the saved next URL, fetch cards concurrently, commit; return records written.

        With ``carry_from``, a repo whose ``sha`` and ``lastModified`` are unchanged keeps its old card
        (the listing item is always the new one).
        """
        key = self.PARTITION
        saved = self.state.partition(key)
        if saved.get("done"):
            return 0
        old_cards = delta.HfCardIndex(self.carry_from) if self.carry_from is not None else None
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
                clean = safe_json.all_clean(page.items)
                for item in page.items:
                    try:
                        rid = huggingface.repo_id(item, checked=clean)
                    except SkipRecord as exc:
                        self.fail("model", _listed_id(item, "id", "modelId"), exc.reason, exc.detail)
                        continue
                    if self.seen.claim(rid):
                        fresh.append(item)
                kept = ({i: old_cards.card_for(item) for i, item in enumerate(fresh)}
                        if old_cards is not None else {})
                wanted = [item for i, item in enumerate(fresh) if kept.get(i) is None]
                fetched = iter(pool.map(self.source.fetch_card, wanted))
                for i, item in enumerate(fresh):
                    if kept.get(i) is not None:
                        card, error = kept[i], None
                        self._carried.append(item["id"])
                    else:
                        card, error = next(fetched)
                    if error:
                        self.fail("card", item["id"], error)
                    buffer.append({"item": item, "card": card, "card_error": error,
                                   "_host": self.cfg.host_url})
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
        if self._carried:
            self.ledger.record(self._carried)
            self._carried = []
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
