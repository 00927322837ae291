"""The build's stages as composite PTransforms, one per stage, and the one helper that routes their output.

Order (DESIGN.md "Stages")::

    Normalize → FilterCards → Reuse → [Download → Render] → Refine → Embed → Write

Stage logic is plain Python in :mod:`stylus_docs.build.rules` and the library modules; here each stage is
a generator that yields its main output and *markers*: :class:`Dead` (a dead letter), :class:`Filtered`
(a drop by rule), :class:`Event` (a count for the manifest) or :class:`Tagged` (another named output).
:class:`Routed` turns the markers into tagged outputs and is the only place a Beam counter is bumped,
so nothing is counted twice. Every composite returns a dict: its main output(s) plus ``dead``,
``filtered`` and ``events`` PCollections, which the pipeline flattens once for the manifest counts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils import shared

from stylus_docs import progress, writer
from stylus_docs.build import rules
from stylus_docs.build.config import BuildConfig
from stylus_docs.embedding import EmbedderInfo, embed_cards, load_embedder
from stylus_docs.errors import RetryableError, SkipRecord
from stylus_docs.filters import FilterConfig, apply_filters, filter_images, unknown_base_model
from stylus_docs.normalize import civitai, deletions, huggingface
from stylus_docs.normalize.raw import (
    CIVITAI_MODEL,
    CIVITAI_VERSION,
    HF_MODEL,
    TOMBSTONE,
    RawFile,
    RawRecord,
    read_records,
)
from stylus_docs.records import AdapterCard, DeadLetter
from stylus_docs.refine.extractive import refine_extractive
from stylus_docs.secrets import redact

logger = logging.getLogger(__name__)
NS = "stylus_docs.build"
DEAD = "dead"
FILTERED = "filtered"
EVENTS = "events"
SIDE = (DEAD, FILTERED, EVENTS)
#: Beam counter name prefix of the microseconds each routed step spent (read back into the manifest).
TIMING_PREFIX = "step_us/"


def stage_seconds(result: Any) -> dict[str, float]:
    """Seconds spent in each routed step of a finished pipeline (from its Beam counters; {} if none)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NS))["counters"]
    except (AttributeError, NotImplementedError, KeyError):  # runners without metrics support
        return {}
    out: dict[str, float] = {}
    for c in counters:
        name = c.key.metric.name
        if name.startswith(TIMING_PREFIX):
            value = c.committed if c.committed is not None else c.attempted
            key = name[len(TIMING_PREFIX) :]
            out[key] = round(out.get(key, 0.0) + (value or 0) / 1e6, 3)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------- routing
@dataclass(slots=True)
class Dead:
    """A dead letter: one record that failed, with the stage and a machine-readable reason."""

    stage: str
    reason: str
    record_id: str | None
    detail: str | None = None
    source: str | None = None

    def letter(self) -> dict[str, Any]:
        return DeadLetter(self.stage, self.reason, self.record_id, redact(self.detail or "")[:500] or None,
                          self.source).to_dict()  # fmt: skip


@dataclass(slots=True)
class Filtered:
    """A record dropped by a filter rule (counted under ``counts.filtered.<reason>``)."""

    reason: str


@dataclass(slots=True)
class Event:
    """``n`` occurrences of a manifest count (``input``, ``refined``, ``images_filtered/<reason>`` …)."""

    name: str
    n: int = 1


@dataclass(slots=True)
class Tagged:
    """An element for a named side output of a stage (e.g. ``refine`` from :class:`Reuse`)."""

    tag: str
    value: Any


class Routed(beam.DoFn):
    """Run a stage's generator on each element and route what it yields (the only counting point).

    Args:
        step: a callable ``element -> Iterable`` or an object with ``__call__`` and optional
            ``setup()``/``teardown()`` (models, sessions: set up once per worker).
    """

    def __init__(self, step: Callable[[Any], Iterable[Any]], label: str = "") -> None:
        self.step = step
        self.label = label
        self._timer: Any = None

    def setup(self) -> None:
        self._timer = Metrics.counter(NS, f"{TIMING_PREFIX}{self.label}")
        if hasattr(self.step, "setup"):
            self.step.setup()

    def teardown(self) -> None:
        if hasattr(self.step, "teardown"):
            self.step.teardown()

    def process(self, element: Any) -> Iterator[Any]:
        # Run the step to completion before yielding: in a fused Beam stage a yield runs the downstream
        # transforms inline, and their time would be charged to this stage.
        started = time.perf_counter()
        outputs = list(self.step(element))
        self._timer.inc(int((time.perf_counter() - started) * 1e6))
        for out in outputs:
            if isinstance(out, Dead):
                Metrics.counter(NS, f"dead_letter_{out.reason}").inc()
                yield TaggedOutput(DEAD, out.letter())
            elif isinstance(out, Filtered):
                Metrics.counter(NS, f"filtered_{out.reason}").inc()
                yield TaggedOutput(FILTERED, out.reason)
            elif isinstance(out, Event):
                Metrics.counter(NS, out.name.replace("/", "_")).inc(out.n)
                yield TaggedOutput(EVENTS, (out.name, out.n))
            elif isinstance(out, Tagged):
                yield TaggedOutput(out.tag, out.value)
            else:
                yield out


def route(pcoll: beam.PCollection, label: str, step: Callable[[Any], Iterable[Any]],
          *tags: str) -> beam.pvalue.DoOutputsTuple:  # fmt: skip
    """``pcoll | label >> ParDo(Routed(step))`` with outputs ``main``, the side outputs and ``tags``."""
    return pcoll | label >> beam.ParDo(Routed(step, label)).with_outputs(*SIDE, *tags, main="main")


def stage_outputs(pipeline: beam.Pipeline, label: str, parts: list[Any], **main: Any) -> dict[str, Any]:
    """A composite's result: its main outputs plus the flattened side outputs of its routed steps."""
    out = dict(main)
    for tag in SIDE:
        pcolls = [p[tag] for p in parts]
        out[tag] = pcolls | f"{label}/{tag.capitalize()}" >> beam.Flatten() if pcolls else (
            pipeline | f"{label}/No{tag.capitalize()}" >> beam.Create([]))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- normalize
def _tombstone_cards(payload: Any, origin: str) -> tuple[list[AdapterCard | SkipRecord], str]:
    """A tombstone line's last known record → its cards (tagged as tombstone records)."""
    # Validated by the driver already (a ValueError here would be a malformed_record).
    stone = deletions.parse_tombstone(payload, origin)
    record = payload.get("record")
    if record is None:
        return [], rules.TOMB_CARD
    if stone.source == "hf":
        entries: list[AdapterCard | SkipRecord] = [huggingface.normalize_hf(record)]
        tag = rules.TOMB_CARD
    elif stone.kind == "model":
        entries, tag = list(civitai.normalize_model_entries(record)), rules.TOMB_CARD
    else:
        entries, tag = [civitai.normalize_version(record)], rules.TOMB_DETAIL
    out: list[AdapterCard | SkipRecord] = []
    for entry in entries:
        if isinstance(entry, AdapterCard):
            if not stone.covers(entry.adapter_id):
                entry = SkipRecord("tombstone_mismatch", f"the record of tombstone {origin} is "
                                   f"{entry.adapter_id}, not what the tombstone deletes")  # fmt: skip
            else:
                entry.source_host = entry.source_host or stone.host
        out.append(entry)
    return out, tag


def normalize_record(rec: RawRecord) -> Iterator[Any]:
    """Raw record → ``(adapter_id, (tag, AdapterCard))`` (tags in :mod:`rules`); a bad one → a dead letter.

    A tombstone line (``--keep-deleted``) stands for its last known record; one without a record is not
    an input record and yields nothing.
    """
    source = os.path.basename(rec.source)
    if rec.error:
        yield Event("input")
        yield Dead("read", rec.error.split(":", 1)[0], rec.origin, rec.error, source)
        return
    try:
        if rec.kind in (CIVITAI_MODEL, TOMBSTONE):
            if rec.kind == CIVITAI_MODEL:
                entries, tag = list(civitai.normalize_model_entries(rec.payload)), rules.CARD
            else:
                entries, tag = _tombstone_cards(rec.payload, rec.origin)
            cards = [e for e in entries if isinstance(e, AdapterCard)]
            for skip in (e for e in entries if isinstance(e, SkipRecord)):
                yield Event("input")
                yield Dead("normalize", skip.reason, rec.origin, skip.detail, source)
        elif rec.kind == CIVITAI_VERSION:
            cards, tag = [civitai.normalize_version(rec.payload)], rules.DETAIL
        elif rec.kind == HF_MODEL:
            cards, tag = [huggingface.normalize_hf(rec.payload)], rules.CARD
        else:
            raise SkipRecord("unknown_record", rec.kind)
    except SkipRecord as exc:
        yield Event("input")
        yield Dead("normalize", exc.reason, rec.origin, exc.detail, source)
        return
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # Documented boundary: an item shape no era rule foresaw is one bad record, not a crash.
        logger.debug("normalize failed for %s", rec.origin, exc_info=True)
        yield Event("input")
        yield Dead("normalize", "malformed_record", rec.origin, f"{type(exc).__name__}: {exc}", source)
        return
    for card in cards:
        yield card.adapter_id, (tag, card)


class _MergeStep:
    """One adapter id's records → one card (:func:`rules.merge_versions`); duplicates and deleted
    adapters (covered by a tombstone) are filtered."""

    def __init__(self, coverage: deletions.Coverage | None = None, keep_deleted: bool = False) -> None:
        self.coverage = coverage or deletions.Coverage()
        self.keep_deleted = keep_deleted

    def __call__(self, group: tuple[str, Iterable[tuple[str, AdapterCard]]]) -> Iterator[Any]:
        adapter_id, values = group
        merged = rules.merge_versions(
            values, covered=self.coverage.covers(adapter_id), keep_deleted=self.keep_deleted
        )
        yield Event("input", merged.records)
        for _ in range(merged.duplicates):
            yield Filtered("duplicate")
        for _ in range(merged.deleted):
            yield Filtered("deleted")
        if merged.error is not None:
            yield Dead("merge", "malformed_record", adapter_id, merged.error)
        elif merged.card is not None:
            yield merged.card


class Normalize(beam.PTransform):
    """Raw snapshot files → one :class:`AdapterCard` per adapter version (every schema era).

    Args:
        files: the data files (and, with ``keep_deleted``, the tombstone files as :data:`TOMBSTONE`).
        coverage: adapter ids the snapshot's tombstones mark deleted (dropped as ``deleted``, or with
            ``keep_deleted`` written from their last known record with ``deleted = true``).
    """

    def __init__(self, files: list[RawFile], coverage: deletions.Coverage | None = None,
                 keep_deleted: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.files = files
        self.coverage, self.keep_deleted = coverage, keep_deleted

    def expand(self, root: beam.pvalue.PBegin) -> dict[str, Any]:
        records = root | "ListInputs" >> beam.Create(self.files) | "ReadRaw" >> beam.FlatMap(read_records)
        norm = route(records, "Normalize", normalize_record)
        merged = route(norm.main | "Group" >> beam.GroupByKey(), "MergeVersions",
                       _MergeStep(self.coverage, self.keep_deleted))  # fmt: skip
        return stage_outputs(root.pipeline, "Normalize", [norm, merged], cards=merged.main)


# --------------------------------------------------------------------------------------------- filter
class _FilterStep:
    def __init__(self, config: FilterConfig, known_base_models: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.known = known_base_models

    def __call__(self, card: AdapterCard) -> Iterator[Any]:
        unknown = unknown_base_model(card, self.known)
        if unknown is not None:
            yield Event(f"unknown_base_models/{unknown}")
        for reason, n in filter_images(card, self.config).items():
            yield Event(f"images_filtered/{reason}", n)
        reason = apply_filters(card, self.config)
        if reason is not None:
            yield Filtered(reason)
        else:
            yield card


class FilterCards(beam.PTransform):
    """Drop cards by rule (one reason each) and NSFW example images from the cards kept.

    Every card entering the stage whose base model is in neither ``known_base_models`` (the snapshot's
    live enums) nor a known family is counted under ``unknown_base_models/<name>`` (and kept as is).
    """

    def __init__(self, config: FilterConfig, known_base_models: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.config = config
        self.known = frozenset(known_base_models)

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        kept = route(cards, "Filter", _FilterStep(self.config, self.known))
        return stage_outputs(cards.pipeline, "FilterCards", [kept], cards=kept.main)


# --------------------------------------------------------------------------------------------- reuse
class _ReuseStep:
    def __init__(self, refiner_id: str, embedder_id: str, render: bool) -> None:
        self.refiner_id, self.embedder_id, self.render = refiner_id, embedder_id, render

    def __call__(self, group: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, joined = group
        prev = joined["prev"][0] if joined["prev"] else None
        for card in joined["cur"]:
            decision = rules.reuse_decision(
                card, prev, self.refiner_id, self.embedder_id, needs_render=self.render
            )
            if decision == rules.DONE:
                yield Event("reused")
                yield card
            else:
                yield Tagged(decision, card)


class Reuse(beam.PTransform):
    """Join with the previous release: ``done`` (all reused), ``embed`` (refinement reused), ``refine``."""

    def __init__(
        self, previous_build: str | None, refiner_id: str, embedder_id: str, render: bool = False
    ) -> None:
        super().__init__()
        self.previous_build, self.refiner_id, self.embedder_id = previous_build, refiner_id, embedder_id
        self.render = render

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        p = cards.pipeline
        if self.previous_build:
            prev = (
                p
                | "ListPrevious" >> beam.Create([self.previous_build])
                | "ReadPrevious" >> beam.FlatMap(writer.read_previous)
                | "KeyPrevious" >> beam.Map(lambda r: (r["adapter_id"], r))
            )
        else:
            prev = p | "NoPrevious" >> beam.Create([])
        joined = {"cur": cards | "KeyById" >> beam.Map(lambda c: (c.adapter_id, c)), "prev": prev} | (
            "Join" >> beam.CoGroupByKey()
        )
        out = route(
            joined,
            "Decide",
            _ReuseStep(self.refiner_id, self.embedder_id, self.render),
            rules.REFINE,
            rules.EMBED,
        )
        return stage_outputs(
            p, "Reuse", [out], done=out.main, refine=out[rules.REFINE], embed=out[rules.EMBED]
        )


# --------------------------------------------------------------------------------------------- refine
def _extractive_step(card: AdapterCard) -> Iterator[Any]:
    card.apply_refinement(refine_extractive(card))
    yield Event("refined")
    yield card


class ExtractiveRefine(beam.PTransform):
    """Refine with the extractive rules (no model)."""

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        out = route(cards, "Extract", _extractive_step)
        return stage_outputs(cards.pipeline, "ExtractiveRefine", [out], cards=out.main)


class _BuildRequestStep:
    """Card → ``card`` output (keyed, for the join with answers) and ``req`` output (chat request)."""

    def __init__(self, vlm: Any, render_root: str | None = None) -> None:
        self.vlm = vlm
        self.render_root = render_root

    def setup(self) -> None:
        from stylus_docs.http import bounded_session
        from stylus_docs.refine.openai_vlm import load_prompt

        # A session that shuts a socket at the fetch's deadline, even while headers trickle in.
        self.session = bounded_session()
        self.prompt = load_prompt()

    def __call__(self, card: AdapterCard) -> Iterator[Any]:
        from stylus_docs.refine.openai_vlm import build_request

        yield Tagged("card", (card.adapter_id, card))
        yield Tagged("req", build_request(card, self.vlm, self.prompt, self.session, self.render_root))

    def teardown(self) -> None:
        self.session.close()


def _failed_keys(item: Any) -> Iterator[tuple[str, str]]:
    # RunInference's failed_inferences carry (batch, exception) in one of a few shapes across versions.
    batch, exc = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
    batch = batch if isinstance(batch, list | tuple) else [batch]
    detail = redact(str(exc[1] if isinstance(exc, tuple) and len(exc) > 1 else exc))[:300]
    for req in batch:
        example = getattr(req, "example", req)
        if hasattr(example, "adapter_id"):
            yield example.adapter_id, detail


class _ApplyCacheStep:
    def __init__(self, refiner_id: str) -> None:
        self.refiner_id = refiner_id

    def __call__(self, group: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, joined = group
        entry = joined["cache"][-1] if joined["cache"] else None
        for card in joined["cur"]:
            if entry is not None:
                card.apply_refinement(rules.cached_refinement(entry, self.refiner_id))
                yield Event("refine_cache_hit")
                yield card
            else:
                yield Tagged("miss", card)


def _apply_result(group: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    adapter_id, joined = group
    outcome = joined["result"][0] if joined["result"] else None
    if outcome is not None:  # what the endpoint was asked for this adapter, failed answers included
        yield Event("refine_usage/requests", outcome.requests)
        yield Event("refine_usage/prompt_tokens", outcome.prompt_tokens)
        yield Event("refine_usage/completion_tokens", outcome.completion_tokens)
    for card in joined["card"]:
        if joined["failed"]:
            yield Dead("refine", "retries_exhausted", adapter_id, joined["failed"][0])
            continue
        if outcome is None or outcome.refinement is None:
            reason = outcome.reason if outcome is not None else "no_answer"
            yield Dead("refine", reason or "no_answer", adapter_id, outcome.detail if outcome else None)
            continue
        card.apply_refinement(outcome.refinement)
        yield Event("refined")
        yield card


def _deferred_step(card: AdapterCard) -> Iterator[Any]:
    """Over the ``--refine-max-requests`` budget: the extractive refinement, asked for next build."""
    card.apply_refinement(refine_extractive(card))
    yield Event("refine_deferred")
    yield Event("refined")
    yield card


class OpenAIRefine(beam.PTransform):
    """Refine through RunInference + :class:`OpenAIRefineHandler`, with a crash-safe answer cache.

    Answers live as JSONL under ``DOCS/cache/refine/<refiner>-<version>/``: the handler appends each
    answer to its own journal file the moment it arrives (:class:`~stylus_docs.refine.journal.AnswerJournal`),
    so a build killed mid-refine keeps every answer it paid for; the next build reads every file in the
    directory and joins by content hash, so only adapters without an answer are asked. Requests run
    ``--refine-concurrency`` at a time per worker under a shared requests/tokens-per-minute limit. With
    ``--refine-max-requests N`` only the first N adapters (by content hash) without an answer are sent;
    the rest get the extractive refinement (``refiner = extractive@v1``) and are asked next time.
    Token usage and request counts go to the manifest (``counts.refine_usage``).
    """

    def __init__(self, config: BuildConfig, build_dir: Path, show_progress: bool = False) -> None:
        super().__init__()
        self.config = config
        self.build_dir = build_dir
        self.show_progress = show_progress

    def cache_dir(self) -> Path:
        return Path(self.config.out) / "cache" / "refine" / self.config.refiner_id.replace("@", "-")

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        from apache_beam.ml.inference.base import RunInference

        from stylus_docs.refine.journal import iter_answer_file
        from stylus_docs.refine.openai_vlm import OpenAIRefineHandler, VLMConfig

        cfg = self.config
        cache_dir = self.cache_dir()
        vlm = VLMConfig(
            model=cfg.refiner_model or "gpt-4o-mini", max_images=cfg.vlm_max_images,
            num_retries=cfg.vlm_retries,
            concurrency=cfg.refine_concurrency, rpm=cfg.refine_rpm, tpm=cfg.refine_tpm,
            journal_dir=str(cache_dir), build_id=self.build_dir.name,
            image_api_hosts=cfg.image_api_hosts(),
        )  # fmt: skip
        p = cards.pipeline
        files = sorted(str(f) for f in cache_dir.glob("*.jsonl")) if cache_dir.is_dir() else []
        cached = (
            p | "ListCache" >> beam.Create(files) | "ReadCache" >> beam.FlatMap(iter_answer_file, vlm.model)
        )
        joined = {"cur": cards | "KeyByHash" >> beam.Map(lambda c: (c.content_hash, c)), "cache": cached} | (
            "JoinCache" >> beam.CoGroupByKey()
        )
        hits = route(joined, "ApplyCache", _ApplyCacheStep(cfg.refiner_id), "miss")
        parts: list[Any] = [hits]
        to_ask = hits["miss"]
        deferred: list[beam.PCollection] = []
        if cfg.refine_max_requests is not None:
            to_ask, over = self._budget(to_ask, cfg.refine_max_requests)
            later = route(over, "Deferred", _deferred_step)
            parts.append(later)
            deferred.append(later.main)
        # The bar counts requests sent (cache hits and deferred adapters cost nothing); the handler ticks it.
        to_ask = to_ask | "ExpectRefine" >> ExpectProgress("refine", self.show_progress)
        reqs = route(to_ask, "BuildRequests", _BuildRequestStep(vlm, str(self.build_dir)), "card", "req")
        main, dlq = (
            reqs["req"] | "RunInference" >> RunInference(OpenAIRefineHandler(vlm)).with_exception_handling()
        )
        answers = {
            "card": reqs["card"],
            "result": main | "ResultKey" >> beam.Map(lambda r: (r.example.adapter_id, r.inference)),
            "failed": dlq.failed_inferences | "FailedKey" >> beam.FlatMap(_failed_keys),
        } | "JoinResults" >> beam.CoGroupByKey()
        applied = route(answers, "ApplyResults", _apply_result)
        parts += [reqs, applied]
        refined = (hits.main, applied.main, *deferred) | "MergeRefined" >> beam.Flatten()
        return stage_outputs(p, "OpenAIRefine", parts, cards=refined)

    @staticmethod
    def _budget(misses: beam.PCollection, limit: int) -> tuple[beam.PCollection, beam.PCollection]:
        """Split by the ``limit`` smallest content hashes: a deterministic choice, exact on any runner."""
        if limit <= 0:
            return misses | "AskNone" >> beam.Filter(lambda _c: False), misses
        chosen = (
            misses
            | "Hashes" >> beam.Map(lambda c: c.content_hash)
            | "Smallest" >> beam.combiners.Top.Smallest(limit)
            | "AsSet" >> beam.Map(set)
        )
        split = misses | "Budget" >> beam.Partition(
            lambda c, _n, keep: 0 if c.content_hash in keep else 1, 2, keep=beam.pvalue.AsSingleton(chosen)
        )
        return split[0], split[1]


# --------------------------------------------------------------------------------------------- embed
class _EmbedStep:
    """Embed a batch of cards; the model is loaded once per worker (shared across DoFn instances)."""

    def __init__(self, name: str, model: str | None, info: EmbedderInfo) -> None:
        self.name, self.model, self.info = name, model, info
        self._shared = shared.Shared()
        self.embedder: Any = None

    def setup(self) -> None:
        self.embedder = None

    def _load(self) -> Any:
        # Lazily, so an incremental build with nothing to embed never loads the model.
        if self.embedder is None:
            self.embedder = self._shared.acquire(lambda: load_embedder(self.name, self.model, batch_size=128),
                                                 tag=f"{self.name}:{self.model}")  # fmt: skip
        return self.embedder

    def __call__(self, batch: list[AdapterCard]) -> Iterator[Any]:
        try:
            vectors = embed_cards(self._load(), batch)
        except RetryableError as exc:
            for card in batch:
                yield Dead("embed", exc.reason, card.adapter_id, exc.detail)
            return
        yield Event("embedded", len(batch))
        for card, vec in zip(batch, vectors, strict=True):
            card.embedding = vec
            card.embedder = self.info.id
            yield card


class Embed(beam.PTransform):
    """Embed cards in batches of ``batch`` texts (model loaded once per worker)."""

    def __init__(self, name: str, model: str | None, info: EmbedderInfo, batch: int) -> None:
        super().__init__()
        self.name, self.model, self.info, self.batch = name, model, info, batch

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        batches = cards | "Batch" >> beam.BatchElements(min_batch_size=self.batch, max_batch_size=self.batch)
        out = route(batches, "Embed", _EmbedStep(self.name, self.model, self.info))
        return stage_outputs(cards.pipeline, "EmbedStage", [out], cards=out.main)


# --------------------------------------------------------------------------------------------- write
def _announce(element: Any, label: str, total: int, enabled: bool) -> Any:
    progress.expect(label, total, enabled=enabled)
    return element


class ExpectProgress(beam.PTransform):
    """Pass-through that opens the ``label`` bar of :mod:`stylus_docs.progress` with its input's size.

    The count is a side input, so the elements pass once it is known; whoever finishes the work then
    calls :func:`stylus_docs.progress.tick`. With ``enabled`` false this is a plain pass-through.
    """

    def __init__(self, label: str, enabled: bool) -> None:
        super().__init__()
        # Not ``self.label``: that is the PTransform's own name.
        self.bar, self.enabled = label, enabled

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        if not self.enabled:
            return pcoll
        total = pcoll | "Count" >> beam.combiners.Count.Globally()
        return pcoll | "Announce" >> beam.Map(_announce, self.bar, beam.pvalue.AsSingleton(total), True)


def _tick(element: Any, label: str) -> Any:
    progress.tick(label)
    return element


class Progress(beam.DoFn):
    """Pass-through that ticks a tqdm bar on a terminal (in-process runner only)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def setup(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=self.label, unit="adapter", file=sys.stderr, leave=False)

    def process(self, element: Any) -> Iterator[Any]:
        self.bar.update(1)
        yield element

    def teardown(self) -> None:
        self.bar.close()


class _ToRowsStep:
    """Card → adapters row (main) and its image rows; a row that does not fit the schema → dead letter.

    Checked here, per record, because the shard writer converts a whole shard at once: one NaN weight or
    out-of-range count would otherwise fail the write of every adapter in the shard.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, card: AdapterCard) -> Iterator[Any]:
        row = card.to_row()
        images = [img.to_row() for img in card.images]
        problem = writer.row_problem("adapters", row, self.dim) or next(
            (f"image {img['image_id']}: {p}" for img in images if (p := writer.row_problem("images", img))),
            None,
        )
        if problem is not None:
            yield Dead("write", "schema_violation", card.adapter_id, problem)
            return
        for image in images:
            yield Tagged("images", image)
        if card.deleted:
            yield Event("kept_deleted")
            yield Tagged("kept_deleted", (card.adapter_id, True))
        yield row


#: Most rows one shard is planned to hold, per table: the shard writer holds one shard's rows, so this
#: (not the catalogue) bounds a worker's memory. More rows than ``--shards`` × this → more shards.
MAX_SHARD_ROWS = {"adapters": 2000, "images": 10000}


def shard_count(rows: int, minimum: int, table: str) -> int:
    """Shards of a table of ``rows`` rows: ``minimum`` (``--shards``), more when a shard would exceed
    :data:`MAX_SHARD_ROWS`. Decided from the count inside the pipeline, so it is the same on any runner."""
    cap = MAX_SHARD_ROWS.get(table, 10000)
    return max(minimum, -(-rows // cap))


def _shard_keys(_: Any, n: int) -> list[tuple[int, None]]:
    return [(i, None) for i in range(n)]


def _shard_key(row: dict[str, Any], n: int) -> tuple[int, dict[str, Any]]:
    return writer.shard_of(row["adapter_id"], n), row


class WriteShards(beam.PTransform):
    """Rows → ``<table>/part-NNNNN-of-MMMMM.parquet`` in the build dir (every shard, even empty).

    The shard count comes from the table's row count (:func:`shard_count`, a side input), so no worker
    holds more than about :data:`MAX_SHARD_ROWS` rows whatever the catalogue size.
    """

    def __init__(self, table: str, build_dir: str, shards: int, dim: int | None) -> None:
        super().__init__()
        self.table, self.build_dir, self.shards, self.dim = table, build_dir, shards, dim

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        count = rows | "CountRows" >> beam.combiners.Count.Globally()
        n = count | "Shards" >> beam.Map(shard_count, self.shards, self.table)
        n_side = beam.pvalue.AsSingleton(n)
        empty = (rows.pipeline | "Once" >> beam.Create([None])
                 | "EmptyShards" >> beam.FlatMap(_shard_keys, n_side))  # fmt: skip
        keyed = rows | "ShardKey" >> beam.Map(_shard_key, n_side)
        return (
            (keyed, empty)
            | "Union" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.Map(self._write, n_side)
        )

    def _write(self, group: tuple[int, Iterable[Any]], count: int) -> dict[str, Any]:
        index, rows = group
        data = [r for r in rows if r is not None]
        entry = writer.write_parquet_shard(self.build_dir, self.table, index, count, data, self.dim)
        Metrics.counter(NS, f"rows_written_{self.table}").inc(len(data))
        return entry


def _write_json(group: tuple[int, Iterable[Any]], path: str) -> None:
    from stylus_docs.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(list(group[1]), sort_keys=True))


class _WithEmpty(beam.PTransform):
    """Make sure key 0 has a group even when the input is empty (so the dead-letter file always exists)."""

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        empty = keyed.pipeline | "Seed" >> beam.Create([(0, None)])
        return (keyed, empty) | "Union" >> beam.Flatten() | "Group" >> beam.GroupByKey()


def _not_written(group: tuple[str, dict[str, list[Any]]]) -> Iterator[dict[str, Any]]:
    adapter_id, joined = group
    if joined["candidate"] and not joined["written"]:
        yield {"adapter_id": adapter_id, **joined["candidate"][0]}


class Write(beam.PTransform):
    """Complete cards → adapters and images shards; all dead letters → their file; the removed adapters
    → ``removed.json``; ``.files.json``.

    Input: ``{"cards": complete cards, "dead": every earlier stage's dead letters}``. Output: the stage
    dict, whose ``dead`` holds the write stage's own dead letters (rows that break the schema).

    Args:
        removed: removal candidates, adapter id → ``{reason, last_seen, host}``
            (:func:`stylus_docs.normalize.deletions.removal_candidates`); those not written (all of them
            unless ``--keep-deleted`` kept their last known card) are listed in ``removed.json``.
    """

    def __init__(self, build_dir: Path, shards: int, dim: int,
                 removed: dict[str, dict[str, Any]] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.build_dir, self.shards, self.dim = str(build_dir), shards, dim
        self.removed = sorted((removed or {}).items())

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, Any]:
        cards, earlier_dead = inputs["cards"], inputs["dead"]
        p = cards.pipeline
        rows = route(cards, "ToRows", _ToRowsStep(self.dim), "images", "kept_deleted")
        adapter_files = rows.main | "WriteAdapters" >> WriteShards(
            "adapters", self.build_dir, self.shards, self.dim
        )
        image_files = rows["images"] | "WriteImages" >> WriteShards(
            "images", self.build_dir, self.shards, None
        )
        dead = (earlier_dead, rows[DEAD]) | "AllDead" >> beam.Flatten()
        dead_file = (
            dead
            | "DeadKey" >> beam.Map(lambda d: (0, d))
            | "DeadEmpty" >> _WithEmpty()
            | "WriteDeadLetters"
            >> beam.Map(lambda g: writer.write_dead_letters(self.build_dir, [d for d in g[1] if d]))
        )
        candidates = p | "RemovalCandidates" >> beam.Create(self.removed)
        removed_file = (
            {"candidate": candidates, "written": rows["kept_deleted"]}
            | "JoinWritten" >> beam.CoGroupByKey()
            | "NotWritten" >> beam.FlatMap(_not_written)
            | "RemovedKey" >> beam.Map(lambda e: (0, e))
            | "RemovedEmpty" >> _WithEmpty()
            | "WriteRemoved"
            >> beam.Map(lambda g: writer.write_removed(self.build_dir, [e for e in g[1] if e]))
        )
        _ = (
            (adapter_files, image_files, dead_file, removed_file)
            | "Files" >> beam.Flatten()
            | "FilesKey" >> beam.Map(lambda e: (0, e))
            | "FilesGroup" >> beam.GroupByKey()
            | "FilesWrite" >> beam.Map(_write_json, os.path.join(self.build_dir, ".files.json"))
        )
        return stage_outputs(p, "Write", [rows])


class WriteStats(beam.PTransform):
    """Every stage's events, filtered reasons and dead letters → ``.stats.json`` totals (counted once)."""

    def __init__(self, build_dir: Path) -> None:
        super().__init__()
        self.path = str(build_dir / ".stats.json")

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        filtered = inputs[FILTERED] | "FilteredEvent" >> beam.Map(lambda reason: (f"filtered/{reason}", 1))
        dead = inputs[DEAD] | "DeadEvent" >> beam.Map(lambda d: (f"dead_letter/{d['reason']}", 1))
        return (
            (inputs[EVENTS], filtered, dead)
            | "Events" >> beam.Flatten()
            | "CountEvents" >> beam.CombinePerKey(sum)
            | "StatsKey" >> beam.Map(lambda kv: (0, kv))
            | "StatsGroup" >> beam.GroupByKey()
            | "StatsWrite" >> beam.Map(_write_json, self.path)
        )


# --------------------------------------------------------------------------------------------- render
def render_input(card: AdapterCard) -> dict[str, Any]:
    """What the render worker reads of a card (before refine: the weight comes from the card's rules)."""
    from stylus_docs.refine.rules import recommended_weight

    out = card.card_dict()
    out.pop("images", None)
    out.update(example_prompts=card.example_prompts, recommended_weight=recommended_weight(card),
               weights_path=card.weights_path)  # fmt: skip
    return out


def _set_weights_columns(card: AdapterCard, path: str) -> None:
    """The weights file's format facts (header only, see :mod:`stylus_docs.formats`) as card columns."""
    from stylus_docs import formats

    fmt = formats.inspect_file(path)
    card.weights_format, card.weights_convention = fmt.format, fmt.convention
    card.weights_rank, card.weights_base_family = fmt.rank, fmt.base_family
    card.weights_loadable = fmt.loadable
    card.weights_reason = redact(fmt.reason)[:500] if fmt.reason else None


class _DownloadStep:
    """Fetch each card's weights into the content-addressed cache (SHA-256 verified, safetensors only).

    A card whose weights cannot be had is not a dead letter: it is written with ``render_status =
    download_failed`` and the reason, and refined from its card alone.
    """

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir

    def setup(self) -> None:
        from stylus_docs.download import AdapterCache

        self.cache = AdapterCache(self.cache_dir)

    def __call__(self, card: AdapterCard) -> Iterator[Any]:
        try:
            card.weights_path = str(self.cache.fetch(card.card_dict()))
            yield Event("downloaded/ok")
            _set_weights_columns(card, card.weights_path)
            yield Event(f"weights_format/{card.weights_format}")
        except SkipRecord as exc:
            card.render_status = "download_failed"
            card.render_error = redact(f"{exc.reason}: {exc.detail}")[:500]
            yield Event("downloaded/failed")
            yield Event("rendered/download_failed")
        yield card


class Download(beam.PTransform):
    """Adapter weights into the cache; the verified path is handed to :class:`Render` on the card."""

    def __init__(self, cache_dir: str) -> None:
        super().__init__()
        self.cache_dir = cache_dir

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        out = route(cards, "Fetch", _DownloadStep(self.cache_dir))
        return stage_outputs(cards.pipeline, "Download", [out], cards=out.main)


def _apply_render(group: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """Render result → the card's render columns and its rendered images (``origin = rendered``)."""
    from stylus_docs.records import ExampleImage

    _, joined = group
    result = joined["result"][0] if joined["result"] else None
    for card in joined["card"]:
        if result is None:  # RunInference lost it (a worker-level failure): say so, keep the card
            card.render_status, card.render_error = "render_failed", "no render result"
        else:
            fields = result["card"]
            card.render_status = fields.get("render_status")
            card.render_error = fields.get("render_error")
            card.render_load_s = fields.get("render_load_s")
            card.render_s = fields.get("render_s")
            for row in result["images"]:
                weights = row.get("lora_weights") or {}
                weights = json.loads(weights) if isinstance(weights, str) else dict(weights)
                card.images.append(ExampleImage(**{**row, "lora_weights": weights}))
        yield Event(f"rendered/{card.render_status}")
        yield card


class Render(beam.PTransform):
    """Render each downloaded adapter with and without its weights at fixed seeds (diffusers).

    Runs *before* refine so the VLM sees what the adapter really draws: the rendered images join the
    card's ``images`` (``origin = rendered``, ``with_adapter`` true/false) and the render columns are
    set. Cards whose download failed pass through untouched. The worker (``stylus_docs.render``) loads
    the base pipeline once per process and records whether the LoRA loads at all and why not.
    """

    def __init__(self, config: BuildConfig, build_dir: Path, show_progress: bool = False) -> None:
        super().__init__()
        self.config, self.build_dir, self.show_progress = config, build_dir, show_progress

    def expand(self, cards: beam.PCollection) -> dict[str, Any]:
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        from stylus_docs.render import DiffusersRenderModelHandler, RenderConfig

        cfg = self.config
        render_config = RenderConfig(
            pipeline=str(cfg.render_pipeline), out_dir=str(self.build_dir),
            cache_dir=cfg.render_cache or str(Path(cfg.out) / "cache" / "weights"),
            device=cfg.render_device or "cpu", prompts_per_adapter=cfg.render_prompts,
            steps=cfg.render_steps, width=cfg.render_size, height=cfg.render_size,
        )  # fmt: skip
        split = cards | "HasWeights" >> beam.Partition(lambda c, _n: 0 if c.weights_path else 1, 2)
        ready, skipped = split[0], split[1]
        results = (
            ready
            | "ExpectRender" >> ExpectProgress("render", self.show_progress)
            | "RenderInput" >> beam.Map(lambda c: (c.adapter_id, render_input(c)))
            | "RenderAdapters" >> RunInference(KeyedModelHandler(DiffusersRenderModelHandler(render_config)))
            | "RenderTick" >> beam.Map(_tick, "render")
        )
        joined = {"card": ready | "KeyCard" >> beam.Map(lambda c: (c.adapter_id, c)), "result": results} | (
            "JoinRender" >> beam.CoGroupByKey()
        )
        applied = route(joined, "ApplyRender", _apply_render)
        done = (applied.main, skipped) | "Rendered" >> beam.Flatten()
        return stage_outputs(cards.pipeline, "RenderStage", [applied], cards=done)
