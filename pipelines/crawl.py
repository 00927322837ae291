"""Beam pipeline of the crawl stage: Civitai or Hugging Face adapter cards into raw snapshots.

Graph (Civitai)::

    Create(partitions) ─ Reshuffle ─ ListModels (DoFn: pages one partition sequentially, commits
                                      models-*.jsonl.gz chunks + its cursor in state.json, yields
                                      (model_id, version_id, fingerprint) of what it committed)
                                   ├─ FetchListed (fused behind the listing: details are fetched while
                                   │               the partition is still paged; writes versions-* chunks)
                                   └─ DedupeModels (once listing is done: GroupByKey(model id) over every
                                                    committed chunk; the copies two partitions listed are
                                                    merged into one, see stylus_docs.crawl.dedupe)
    Create(pending)    ─ Reshuffle ─ FetchPending (versions of models committed by a killed run)
         FetchListed + FetchPending ─ DedupeVersions (GroupByKey(version id): one record each)
    Create(["enums"])  ─ FetchEnums (DoFn: /api/v1/enums → enums.json, once per crawl)

No stage shares memory with another or with the driver: de-duplication is the keyed aggregation, so the
snapshot holds each model and version once on any runner (in-process, multi-processing, portable).

A delta crawl (``--previous RAW_OLD``, carry-over allowed) joins the listing with the old one (a
CoGroupByKey by version id, so its fetches wait for the listing)::

    (listed, pending) ─┐                        (DedupeModels as above)
    Create(old models chunks) ─ OldFingerprints ─ CoGroupByKey(version id) ─ Classify
        ├─ changed or new ─────────────────────────────────────────────┐
        └─ unchanged ─ AsDict ─▶ Create(old versions chunks) ─ CarryVersions (copies old records into
                     │           new versions-*.jsonl.gz chunks, yields the ids carried)
                     └─ NotCarried (AsList of carried: an old record missing or unusable) ─┤
                                                         Flatten ─ Reshuffle ─ FetchVersions

Hugging Face is one partition (filters are AND-ed): ListHf pages it and fetches README cards on a
thread pool (a delta crawl keeps the old card of a repo whose sha and lastModified are unchanged).
Every durable step is in :mod:`stylus_docs.crawl` (plain Python); the DoFns only call it, which is
what makes a killed run resumable under any runner: state lives in ``OUT``, not in Beam. Request
counters travel as Beam metrics (namespace ``crawl``) into the summary. After the pipeline the driver
compares the snapshot with ``--previous`` and writes tombstones (:mod:`stylus_docs.crawl.tombstones`).

Run: ``python -m pipelines.crawl civitai --out OUT [app flags] [-- beam flags]``; only flags after
``--`` go to Beam (``--runner``, ``--direct_num_workers``…); an unknown flag before it is an error.
Default runner: the in-process FnApiRunner.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from stylus_docs import storage
from stylus_docs.beam_options import make_pipeline_options, split_beam_args
from stylus_docs.crawl import dedupe, delta, digests
from stylus_docs.crawl.engine import (
    CivitaiCrawler,
    CrawlConfig,
    HfCrawler,
    VersionCarrier,
    VersionFetcher,
    committed_version_ids,
    pending_versions,
)
from stylus_docs.crawl.state import CrawlState
from stylus_docs.crawl.summary import build_summary, format_summary, snapshot_totals, write_summary
from stylus_docs.crawl.tombstones import finish_crawl
from stylus_docs.errors import FatalError
from stylus_docs.http import HttpStats
from stylus_docs.secrets import redact
from stylus_docs.sources import civitai, huggingface
from stylus_docs.sources.civitai import CivitaiQuery
from stylus_docs.sources.huggingface import HfQuery

logger = logging.getLogger(__name__)

NAMESPACE = "crawl"
_FATAL_FILE = ".fatal.json"


# -- flags ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``civitai`` / ``hf`` sub-parsers with every crawl flag to ``parser`` (shared with the CLI)."""
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    c = sub.add_parser("civitai", help="crawl Civitai /api/v1/models (+ version details and images)")
    _common(c, f"{civitai.URL_ENV}; with --host red {civitai.HOST_URL_ENVS['red']}")
    c.add_argument("--host", choices=civitai.HOSTS, default="green",
                   help="green: civitai.com, SFW only (default); red: civitai.red, everything (needed by "
                        f"--nsfw). Tokens: {civitai.HOST_TOKEN_ENVS['green']} for green, "
                        f"{civitai.HOST_TOKEN_ENVS['red']} for red, each sent only to its own host")
    c.add_argument("--types", nargs="+", default=[], metavar="T", help="model types, e.g. LORA LoCon DoRA")
    c.add_argument("--base-models", nargs="+", default=[], metavar="B",
                   help="base models; each (type, base model) pair is its own listing partition")
    c.add_argument("--sort", choices=civitai.SORTS, default=None, help="listing order (server default)")
    c.add_argument("--period", choices=civitai.PERIODS, default=None, help="time window filter")
    c.add_argument("--nsfw", action="store_true",
                   help="include NSFW models and images (default: PG only); needs --host red")
    c.add_argument("--query", default=None, help="full-text search")
    c.add_argument("--username", default=None, help="only this creator's models")
    c.add_argument("--tag", default=None, help="only models with this tag")
    c.add_argument("--max-images-per-version", type=int, default=10, metavar="N",
                   help="/api/v1/images items (with meta) per version (default 10; 0 = none)")
    h = sub.add_parser("hf", help="crawl Hugging Face /api/models (+ README cards)")
    _common(h, huggingface.URL_ENV)
    h.add_argument("--filter", nargs="+", default=None, metavar="F",
                   help="tag filters, all required (default: lora)")
    h.add_argument("--search", default=None, help="substring of the repo id")
    h.add_argument("--author", default=None, help="user or organisation")
    h.add_argument("--sort", default=None, choices=("downloads", "likes", "createdAt", "lastModified",
                                                     "trendingScore"))
    h.add_argument("--page-size", type=int, default=100, metavar="N",
                   help="items per listing page; the rest follow the Link header (default 100)")


def _common(p: argparse.ArgumentParser, url_env: str) -> None:
    p.add_argument("--out", required=True,
                   help="output directory or s3://bucket/prefix (resumes when it holds a crawl)")
    p.add_argument("--api-url", default=None, help=f"base URL without /api/v1 (env {url_env})")
    p.add_argument("--previous", default=None, metavar="RAW_OLD",
                   help="delta crawl: a complete earlier snapshot of the same source; details of unchanged "
                        "records are carried over from it, and what its listing had and this one lacks "
                        "is written as tombstones (complete listings only)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N models (default: all)")
    p.add_argument("--concurrency", type=int, default=16, help="detail requests in flight per worker")
    p.add_argument("--rps", type=float, default=None, help="requests per second per host (default: no cap)")
    p.add_argument("--max-attempts", type=int, default=6, help="attempts per request (default 6)")
    p.add_argument("--backoff", type=float, default=1.0, help="base of the exponential backoff, s")
    p.add_argument("--max-retry-after", type=float, default=60.0, help="cap on Retry-After waits, s")
    p.add_argument("--timeout", type=float, nargs=2, default=(10.0, 60.0), metavar=("CONNECT", "READ"))
    p.add_argument("--chunk-size", type=int, default=1000, help="records per snapshot chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")


def config_from_args(args: argparse.Namespace) -> CrawlConfig:
    """Turn parsed flags into a validated :class:`CrawlConfig`."""
    if args.source == "civitai":
        default_url, env = civitai.HOST_URLS[args.host], civitai.HOST_URL_ENVS[args.host]
        source_kw: dict[str, Any] = {"civitai": CivitaiQuery(
            types=tuple(args.types), base_models=tuple(args.base_models), sort=args.sort, period=args.period,
            nsfw=args.nsfw, query=args.query, username=args.username, tag=args.tag),
            "max_images_per_version": args.max_images_per_version, "host": args.host}
    else:
        default_url, env = huggingface.DEFAULT_URL, huggingface.URL_ENV
        source_kw = {"hf": HfQuery(filters=tuple(args.filter or ("lora",)), search=args.search,
                                   author=args.author, sort=args.sort, page_size=args.page_size)}
        if args.page_size < 1:
            raise FatalError("--page-size must be >= 1")
    api_url = args.api_url or os.environ.get(env) or default_url
    if args.chunk_size < 1:
        raise FatalError("--chunk-size must be >= 1")
    return CrawlConfig(source=args.source, out=str(args.out), api_url=api_url, limit=args.limit,
                       previous=str(args.previous) if args.previous is not None else None,
                       concurrency=args.concurrency, rps=args.rps, max_attempts=args.max_attempts,
                       backoff=args.backoff, max_retry_after=args.max_retry_after,
                       timeout=(float(args.timeout[0]), float(args.timeout[1])),
                       models_per_chunk=args.chunk_size, versions_per_chunk=max(1, args.chunk_size // 2),
                       run_id=uuid.uuid4().hex, progress=not args.no_progress, **source_kw)


# -- DoFns ---------------------------------------------------------------------------------------


class _MetricsMixin:
    """Pushes the deltas of an :class:`HttpStats` and of record failures into Beam metrics."""

    def _init_metrics(self) -> None:
        self._sent: dict[str, int] = {}

    def _report(self, stats: HttpStats, record_failures: dict[str, int]) -> None:
        snap = stats.snapshot()
        current = {"requests": snap["requests"]}
        current.update({f"retry.{k}": v for k, v in snap["retries_by_reason"].items()})
        current.update({f"http_failure.{k}": v for k, v in snap["failures_by_reason"].items()})
        current.update({f"record_failure.{k}": v for k, v in dict(record_failures).items()})
        for name, value in current.items():
            delta = value - self._sent.get(name, 0)
            if delta:
                Metrics.counter(NAMESPACE, name).inc(delta)
                self._sent[name] = value
        Metrics.distribution(NAMESPACE, "max_in_flight").update(snap["max_in_flight"])


def _fatal_guard(cfg: CrawlConfig, exc: FatalError) -> None:
    """Leave the fatal message where the launcher finds it (runners wrap DoFn exceptions)."""
    path = Path(cfg.out) / cfg.source / _FATAL_FILE
    path.write_text(json.dumps({"message": redact(str(exc))}), encoding="utf-8")


class ListCivitaiPartition(beam.DoFn, _MetricsMixin):
    """Pages one Civitai listing partition; yields ``(model_id, version_id, fingerprint)`` of committed
    models."""

    def __init__(self, cfg: CrawlConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.crawler = CivitaiCrawler(self.cfg)
        self._init_metrics()

    def process(self, partition: dict[str, str | None]):
        try:
            yield from self.crawler.crawl_partition(partition)
        except FatalError as exc:
            _fatal_guard(self.cfg, exc)
            raise
        finally:
            self._report(self.crawler.client.stats, self.crawler.record_failures)

    def teardown(self) -> None:
        self.crawler.client.close()


class FetchCivitaiVersions(beam.DoFn, _MetricsMixin):
    """Fetches version details on a bounded thread pool per bundle and writes ``versions-*`` chunks."""

    def __init__(self, cfg: CrawlConfig, done: frozenset[int]) -> None:
        self.cfg = cfg
        self.done = done

    def setup(self) -> None:
        self.crawler = CivitaiCrawler(self.cfg)
        self._init_metrics()

    def start_bundle(self) -> None:
        self.fetcher = VersionFetcher(self.crawler, self.done)

    def process(self, ref: tuple[Any, ...]):
        # (model_id, version_id), or a listing's / a resumed run's (model_id, version_id, fingerprint).
        # Beam type-checks the annotation against its input: tuple[int, ...] refused the resumed
        # (int, int, str) refs, so a crawl killed with versions pending could not be resumed.
        model_id, version_id = ref[0], ref[1]
        self.fetcher.submit(model_id, version_id)
        self.fetcher.drain()
        return []

    def finish_bundle(self) -> None:
        try:
            self.fetcher.close()
        except FatalError as exc:
            _fatal_guard(self.cfg, exc)
            raise
        finally:
            self._report(self.crawler.client.stats, self.crawler.record_failures)

    def teardown(self) -> None:
        self.crawler.client.close()


class FetchEnums(beam.DoFn, _MetricsMixin):
    """Saves ``/api/v1/enums`` as ``OUT/civitai/enums.json`` (a failure is recorded, not fatal)."""

    def __init__(self, cfg: CrawlConfig, previous: str | None) -> None:
        self.cfg = cfg
        self.previous = previous

    def setup(self) -> None:
        self.crawler = CivitaiCrawler(self.cfg)
        self._init_metrics()

    def process(self, _: str):
        try:
            yield self.crawler.save_enums(self.previous)
        except FatalError as exc:
            _fatal_guard(self.cfg, exc)
            raise
        finally:
            self._report(self.crawler.client.stats, self.crawler.record_failures)

    def teardown(self) -> None:
        self.crawler.client.close()


class ClassifyVersions(beam.DoFn):
    """Splits the listed versions of a delta crawl: unchanged ones (tagged ``unchanged``,
    ``(version_id, model_id)``) may be carried over; new or changed ones go out as ``(model_id, version_id)``
    to be fetched. Versions already committed by an earlier run of this crawl are dropped."""

    UNCHANGED = "unchanged"

    def __init__(self, done: frozenset[int]) -> None:
        self.done = done

    def process(self, kv: tuple[int, dict[str, list[Any]]]):
        version_id, groups = kv
        listed = list(groups["new"])
        if not listed or version_id in self.done:
            return
        model_id, fingerprint = min(listed)
        if fingerprint in set(groups["old"]):
            yield beam.pvalue.TaggedOutput(self.UNCHANGED, (version_id, model_id))
        else:
            yield model_id, version_id


class CarryVersions(beam.DoFn):
    """Copies the unchanged records of one old ``versions`` chunk into new chunks; yields their ids."""

    def __init__(self, cfg: CrawlConfig, done: frozenset[int]) -> None:
        self.cfg = cfg
        self.done = done

    def setup(self) -> None:
        self.carrier = VersionCarrier(self.cfg, self.done)

    def process(self, path: str, unchanged: dict[int, int]):
        carried = list(self.carrier.carry(path, unchanged))
        Metrics.counter(NAMESPACE, "carried_over").inc(len(carried))
        yield from carried


class NotCarried(beam.DoFn):
    """Unchanged versions that no old record could stand in for (missing, or its images call had failed):
    they are fetched like changed ones."""

    def start_bundle(self) -> None:
        self._carried: set[int] | None = None

    def process(self, ref: tuple[int, int], carried: list[int]):
        if self._carried is None:
            self._carried = set(carried)
        version_id, model_id = ref
        if version_id not in self._carried:
            yield model_id, version_id


class ListHf(beam.DoFn, _MetricsMixin):
    """Pages the Hub listing and fetches each repo's README card (or carries the old one over)."""

    def __init__(self, cfg: CrawlConfig, carry_from: delta.PreviousSnapshot | None = None) -> None:
        self.cfg = cfg
        self.carry_from = carry_from

    def setup(self) -> None:
        self.crawler = HfCrawler(self.cfg, carry_from=self.carry_from)
        self._init_metrics()

    def process(self, _: str):
        try:
            yield self.crawler.crawl()
        except FatalError as exc:
            _fatal_guard(self.cfg, exc)
            raise
        finally:
            self._report(self.crawler.client.stats, self.crawler.record_failures)

    def teardown(self) -> None:
        self.crawler.client.close()


class DedupeChunks(beam.PTransform):
    """Once ``after`` is complete: every record id of the committed ``prefix`` chunks in ``directory``
    grouped by id (a keyed aggregation), one copy kept (with ``merge``: the merge of the listings'
    copies), the others dropped from their chunks.

    This is what keeps a model listed by two partitions stored once on any runner: workers share no
    registry, each partition commits what it lists, and the GroupByKey sees every copy (those of an
    earlier, killed run included). See :mod:`stylus_docs.crawl.dedupe`.
    """

    def __init__(self, directory: str, prefix: str, merge: bool = False) -> None:
        super().__init__()
        self.directory, self.prefix, self.merge = directory, prefix, merge

    def expand(self, after: beam.PCollection) -> beam.PCollection:
        done = after | "Done" >> beam.combiners.Count.Globally()
        return (
            after.pipeline
            | "Once" >> beam.Create([None])
            | "ListChunks" >> beam.FlatMap(_list_chunks, self.directory, self.prefix,
                                           beam.pvalue.AsSingleton(done))
            | "SpreadChunks" >> beam.Reshuffle()
            | "Ids" >> beam.FlatMap(dedupe.record_places)
            | "ById" >> beam.GroupByKey()
            | "ExtraCopies" >> beam.FlatMap(dedupe.extra_copies, self.merge)
            | "ByChunk" >> beam.GroupByKey()
            | "Rewrite" >> beam.Map(dedupe.drop_lines)
            | "Count" >> beam.Map(_count_dropped, self.prefix)
        )  # fmt: skip


def _list_chunks(_: Any, directory: str, prefix: str, signal: int) -> list[str]:
    return dedupe.chunk_paths(directory, prefix, signal)


def _count_dropped(n: int, prefix: str) -> int:
    Metrics.counter(NAMESPACE, f"deduplicated.{prefix}").inc(n)
    return n


# -- driver --------------------------------------------------------------------------------------


def build_pipeline(pipeline: beam.Pipeline, cfg: CrawlConfig,
                   previous: delta.PreviousSnapshot | None = None) -> None:
    """Add the crawl graph for ``cfg`` to ``pipeline``.

    Args:
        pipeline: the pipeline to extend.
        cfg: the crawl configuration.
        previous: the ``--previous`` snapshot (already checked to be complete); details are carried
            over from it only when :meth:`~stylus_docs.crawl.delta.PreviousSnapshot.carry_problem`
            finds nothing against it.
    """
    carry_from = previous if previous is not None and previous.carry_problem(cfg.fingerprint()) is None \
        else None
    if cfg.source == "hf":
        _ = (pipeline | "Partition" >> beam.Create([HfCrawler.PARTITION])
             | "ListHf" >> beam.ParDo(ListHf(cfg, carry_from)))
        return
    _ = (pipeline | "EnumsOnce" >> beam.Create(["enums"])
         | "FetchEnums" >> beam.ParDo(FetchEnums(cfg, previous.path if previous else None)))
    partitions = cfg.civitai.partitions()
    done = frozenset(committed_version_ids(cfg.out))
    pending = pending_versions(cfg.out, set(done))
    listed = (pipeline | "Partitions" >> beam.Create(partitions)
              | "SpreadPartitions" >> beam.Reshuffle()
              | "ListModels" >> beam.ParDo(ListCivitaiPartition(cfg)))
    resumed = pipeline | "PendingVersions" >> beam.Create(pending)
    if carry_from is None:
        # Streaming: each listed version goes straight to the fetcher fused behind the listing, so
        # details are fetched while the partition is still being paged (no GroupByKey barrier). What
        # two partitions both list is made unique afterwards by DedupeModels / DedupeVersions.
        fetched_listed = listed | "FetchListed" >> beam.ParDo(FetchCivitaiVersions(cfg, done))
        fetched_resumed = (resumed | "SpreadPending" >> beam.Reshuffle()
                           | "FetchPending" >> beam.ParDo(FetchCivitaiVersions(cfg, done)))
        root = str(Path(cfg.out) / "civitai")
        _ = listed | "DedupeModels" >> DedupeChunks(root, "models", merge=True)
        _ = (fetched_listed, fetched_resumed) | "Fetched" >> beam.Flatten() | (
            "DedupeVersions" >> DedupeChunks(root, "versions"))
        return
    refs = ((listed, resumed) | "AllVersions" >> beam.Flatten()
            | "ByVersion" >> beam.Map(lambda ref: (ref[1], (ref[0], ref[2]))))
    if carry_from is not None:
        old = (pipeline | "OldModelChunks" >> beam.Create(delta.model_chunks(carry_from))
               | "SpreadOldModels" >> beam.Reshuffle()
               | "OldFingerprints" >> beam.FlatMap(digests.listing_fingerprints))
        classified = ({"new": refs, "old": old} | "JoinOld" >> beam.CoGroupByKey()
                      | "Classify" >> beam.ParDo(ClassifyVersions(done)).with_outputs(
                          ClassifyVersions.UNCHANGED, main="changed"))
        unchanged = classified[ClassifyVersions.UNCHANGED]
        carried = (pipeline | "OldVersionChunks" >> beam.Create(delta.version_chunks(carry_from))
                   | "SpreadOldVersions" >> beam.Reshuffle()
                   | "CarryVersions" >> beam.ParDo(CarryVersions(cfg, done), beam.pvalue.AsDict(unchanged)))
        missed = unchanged | "NotCarried" >> beam.ParDo(NotCarried(), beam.pvalue.AsList(carried))
        to_fetch = (classified["changed"], missed) | "ToFetch" >> beam.Flatten()
    _ = (to_fetch | "SpreadVersions" >> beam.Reshuffle()
         | "FetchVersions" >> beam.ParDo(FetchCivitaiVersions(cfg, done)))
    root = str(Path(cfg.out) / "civitai")
    _ = listed | "DedupeModels" >> DedupeChunks(root, "models", merge=True)


def _counters(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": 0, "retries_by_reason": {}, "failures_by_reason": {},
                           "record_failures": {}, "max_in_flight": 0}
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        name, value = counter.key.metric.name, counter.committed or counter.attempted or 0
        if name == "requests":
            out["requests"] += value
        for prefix, key in (("retry.", "retries_by_reason"), ("http_failure.", "failures_by_reason"),
                            ("record_failure.", "record_failures")):
            if name.startswith(prefix):
                out[key][name[len(prefix):]] = out[key].get(name[len(prefix):], 0) + value
    for dist in query["distributions"]:
        value = dist.committed or dist.attempted
        if dist.key.metric.name == "max_in_flight" and value is not None and value.max is not None:
            out["max_in_flight"] = max(out["max_in_flight"], value.max)
    for key in ("retries_by_reason", "failures_by_reason", "record_failures"):
        out[key] = dict(sorted(out[key].items()))
    return out


def _run_pipeline(cfg: CrawlConfig, beam_args: Sequence[str], previous: delta.PreviousSnapshot | None,
                  fatal_path: Path) -> Any:
    pipeline = beam.Pipeline(options=make_pipeline_options(beam_args))
    build_pipeline(pipeline, cfg, previous)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:  # boundary: runners wrap DoFn errors; recover our own fatal message
        if fatal_path.exists():
            message = json.loads(fatal_path.read_text(encoding="utf-8"))["message"]
            fatal_path.unlink(missing_ok=True)
            raise FatalError(message) from None
        logger.exception("crawl pipeline failed")
        raise FatalError(f"crawl pipeline failed: {redact(str(exc).splitlines()[0] if str(exc) else '')}"
                         ) from exc
    return result


def run_config(cfg: CrawlConfig, beam_args: Sequence[str] = (), quiet: bool = False) -> dict[str, Any]:
    """Run the crawl pipeline for ``cfg``; write and return the summary.

    ``--out`` and ``--previous`` may be object-store URLs (``s3://``, ``gs://``): see :func:`_run_staged`.

    Raises:
        FatalError: bad configuration, a crawl with other parameters in OUT, a 401 with a token,
            an unreachable API host, or an object store that refuses us.
    """
    if storage.is_url(cfg.out) or storage.is_url(cfg.previous):
        return _run_staged(cfg, beam_args, quiet)
    return _run_local(cfg, beam_args, quiet)


def _run_staged(cfg: CrawlConfig, beam_args: Sequence[str], quiet: bool) -> dict[str, Any]:
    """A crawl whose OUT or RAW_OLD is on object storage, through a persistent local staging copy.

    The store's copy of OUT is synced down first (a crawl killed on another machine resumes from its
    committed chunks and state), the crawl runs on the staging copy, and then what changed is uploaded,
    ``state.json`` and the summary last, so the store never holds a state naming chunks it lacks.
    """
    local = cfg
    if storage.is_url(cfg.previous):
        previous_dir = storage.staging_dir(str(cfg.previous), "previous")
        storage.sync_down(str(cfg.previous), previous_dir)
        local = dataclasses.replace(local, previous=str(previous_dir))
    if not storage.is_url(cfg.out):
        return _run_local(local, beam_args, quiet)
    out_dir = storage.staging_dir(cfg.out, "out")
    storage.check_reachable(cfg.out)
    storage.sync_down(cfg.out, out_dir)
    started = time.time()
    summary = _run_local(dataclasses.replace(local, out=str(out_dir)), beam_args, quiet)
    storage.sync_up(out_dir, cfg.out, since=started,
                    last=(f"{cfg.source}/state.json", f"{cfg.source}/summary.json"))
    return summary


def _run_local(cfg: CrawlConfig, beam_args: Sequence[str], quiet: bool) -> dict[str, Any]:
    started = time.monotonic()
    previous = (delta.PreviousSnapshot.open(cfg.previous, cfg.source, cfg.out)
                if cfg.previous is not None else None)
    CrawlState(Path(cfg.out) / cfg.source).begin(cfg.fingerprint())
    fatal_path = Path(cfg.out) / cfg.source / _FATAL_FILE
    fatal_path.unlink(missing_ok=True)
    # Temp chunks left by a killed run (readers already ignore them); one crawl per OUT at a time.
    for pattern in (f"{cfg.source}/.*.part", f"{cfg.source}/{digests.INDEX_DIR}/.*.part"):
        for stale in Path(cfg.out).glob(pattern):
            stale.unlink(missing_ok=True)
    try:
        result = _run_pipeline(cfg, beam_args, previous, fatal_path)
        record_ids: set[Any] = set()
        totals = snapshot_totals(cfg.out, cfg.source, record_ids)
        changes = finish_crawl(cfg, previous, record_ids)
    finally:
        digests.forget()  # what the pipeline and the end of the crawl read once (crawl.digests)
    summary = build_summary(cfg.out, cfg.source, _counters(result), time.monotonic() - started,
                            totals=totals, delta=changes)
    write_summary(cfg.out, summary)
    if not quiet:
        print(format_summary(summary), file=sys.stdout, flush=True)
    return summary


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: app flags (see :func:`add_arguments`), then Beam flags after ``--``."""
    parser = argparse.ArgumentParser(prog="pipelines.crawl", description=__doc__.splitlines()[0])
    add_arguments(parser)
    own, beam_args = split_beam_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    cfg = config_from_args(args)
    return run_config(cfg, beam_args, quiet=args.quiet)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.WARNING)
    try:
        run()
    except FatalError as err:
        print(f"crawl: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
