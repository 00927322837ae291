"""Beam pipeline: raw snapshots → a StylusDocs release (normalize, filter, refine, embed, write).

Stages (labelled PTransforms; every one has a dead-letter or filtered side output and Beam counters)::

    ListInputs → ReadRaw → Normalize → MergeVersions → Filter → ReusePrevious
        → Refine (extractive | openai via RunInference) → Embed (batched, model loaded once)
        → [Render, optional, GPU] → ToRows → WriteAdapters / WriteImages / WriteDeadLetters / Stats

Everything is written into ``DOCS/builds/<id>/``; when the pipeline has finished, the driver writes the
manifest (counts, files, SHA-256) and publishes with :func:`stylus_docs.release.publish`. A failure
anywhere leaves the previous release live and publishes nothing.

Run ``python -m pipelines.build --help``; Beam pipeline options go after ``--`` (an unknown flag
before it is an error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils import shared

from stylus_docs import release, writer
from stylus_docs.beam_options import make_pipeline_options, split_beam_args
from stylus_docs.embed import EmbedderInfo, embed_cards, embedder_info, load_embedder
from stylus_docs.errors import FatalError, RetryableError, SkipRecord
from stylus_docs.filters import DEFAULT_TYPES, FilterConfig, apply_filters, filter_images, load_blacklist
from stylus_docs.normalize import civitai, huggingface
from stylus_docs.normalize.raw import (
    CIVITAI_MODEL,
    CIVITAI_VERSION,
    HF_MODEL,
    RawFile,
    discover,
    read_records,
)
from stylus_docs.records import AdapterCard, DeadLetter, Refinement
from stylus_docs.refine.extractive import EXTRACTIVE_NAME, EXTRACTIVE_VERSION, refine_extractive
from stylus_docs.secrets import redact

logger = logging.getLogger(__name__)
NS = "stylus_docs.build"
DEAD = "dead"
FILTERED = "filtered"
EVENTS = "events"


# --------------------------------------------------------------------------------------------- config
@dataclass(slots=True)
class BuildConfig:
    """Everything a build needs besides Beam options.

    Args:
        raw: ``--raw`` paths (crawl OUT dirs, snapshot dirs, or single JSONL files).
        out: release root ``DOCS``.
        previous: release (or build dir) to reuse refinements and embeddings from.
        refiner: ``extractive`` or ``openai``.
        refiner_model: chat model for ``openai``.
        embedder: ``minilm``, ``openai`` or ``clip``; ``embedder_model`` picks the model.
        shards: Parquet shards per table.
        keep: builds kept by retention (the live one always stays).
        embed_batch: texts per embedding batch inside the pipeline.
        render: run the optional GPU render stage (``stylus_docs.render``).
        max_dead_letter_fraction: a build with more dead letters than this fraction of its input records
            is not published (a bad key or a dead endpoint must not replace a good release).
    """

    raw: list[str]
    out: str
    previous: str | None = None
    refiner: str = "extractive"
    refiner_model: str | None = None
    embedder: str = "minilm"
    embedder_model: str | None = None
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: int = 1
    keep: int = 3
    embed_batch: int = 512
    vlm_max_images: int = 4
    vlm_retries: int = 4
    render: bool = False
    render_pipeline: str | None = None
    render_device: str | None = None
    render_prompts: int = 2
    render_cache: str | None = None
    build_id: str | None = None
    progress: bool | None = None
    max_dead_letter_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.refiner not in ("extractive", "openai"):
            raise FatalError(f"unknown refiner {self.refiner!r}; choose extractive or openai")
        if self.shards < 1 or self.shards > 4096:
            raise FatalError("--shards must be between 1 and 4096")
        if self.keep < 1:
            raise FatalError("--keep must be at least 1")
        if self.embed_batch < 1:
            raise FatalError("--embed-batch must be at least 1")
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise FatalError("--max-dead-letter-fraction must be between 0 and 1")
        if self.refiner == "openai" and not self.refiner_model:
            self.refiner_model = os.environ.get("OPENAI_REFINER_MODEL") or "gpt-4o-mini"
        if self.render and not self.render_pipeline:
            raise FatalError("--render needs --render-pipeline PATH (a local diffusers pipeline)")

    @property
    def refiner_id(self) -> str:
        """The ``refiner`` column value: ``<name>@<version>``."""
        if self.refiner == "extractive":
            return f"{EXTRACTIVE_NAME}@{EXTRACTIVE_VERSION}"
        from stylus_docs.refine.openai_vlm import OPENAI_REFINER_NAME, OPENAI_REFINER_VERSION

        return f"{OPENAI_REFINER_NAME}@{OPENAI_REFINER_VERSION}"

    def refiner_manifest(self) -> dict[str, Any]:
        """Manifest ``refiner`` object."""
        name, version = self.refiner_id.split("@", 1)
        return {
            "name": name,
            "version": version,
            "model": self.refiner_model if self.refiner == "openai" else None,
        }


def _dead(stage: str, reason: str, record_id: str | None, detail: str | None = None,
          source: str | None = None) -> TaggedOutput:  # fmt: skip
    Metrics.counter(NS, f"dead_letter_{reason}").inc()
    letter = DeadLetter(stage, reason, record_id, redact(detail or "")[:500] or None, source)
    return TaggedOutput(DEAD, letter.to_dict())


def _event(name: str, n: int = 1) -> TaggedOutput:
    return TaggedOutput(EVENTS, (name, n))


# --------------------------------------------------------------------------------------------- stages
class NormalizeFn(beam.DoFn):
    """Raw record → (adapter_id, ("card"|"detail", AdapterCard)); bad records → dead letters."""

    def process(self, rec: Any) -> Iterator[Any]:
        if rec.error:
            reason = rec.error.split(":", 1)[0]
            yield _event("input")
            yield _dead("read", reason, rec.origin, rec.error, os.path.basename(rec.source))
            return
        source = os.path.basename(rec.source)
        try:
            if rec.kind == CIVITAI_MODEL:
                entries = civitai.normalize_model_entries(rec.payload)
                cards = [e for e in entries if isinstance(e, AdapterCard)]
                for skip in (e for e in entries if isinstance(e, SkipRecord)):
                    yield _event("input")
                    yield _dead("normalize", skip.reason, rec.origin, skip.detail, source)
                tag = "card"
            elif rec.kind == CIVITAI_VERSION:
                cards = [civitai.normalize_version(rec.payload)]
                tag = "detail"
            elif rec.kind == HF_MODEL:
                cards = [huggingface.normalize_hf(rec.payload)]
                tag = "card"
            else:
                raise SkipRecord("unknown_record", rec.kind)
        except SkipRecord as exc:
            yield _event("input")
            yield _dead("normalize", exc.reason, rec.origin, exc.detail, source)
            return
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            # Documented boundary: an item shape no era rule foresaw is one bad record, not a crash.
            logger.debug("normalize failed for %s", rec.origin, exc_info=True)
            yield _event("input")
            yield _dead("normalize", "malformed_record", rec.origin, f"{type(exc).__name__}: {exc}", source)
            return
        Metrics.counter(NS, f"normalized_{tag}").inc(len(cards))
        for card in cards:
            yield card.adapter_id, (tag, card)


class MergeVersionsFn(beam.DoFn):
    """Group of one adapter id → one card: version details folded in, duplicates counted as filtered."""

    def process(self, group: tuple[str, Iterable[tuple[str, AdapterCard]]]) -> Iterator[Any]:
        adapter_id, values = group
        cards = [c for tag, c in values if tag == "card"]
        details = [c for tag, c in values if tag == "detail"]
        if cards:
            base, dupes = cards[0], cards[1:]
        else:
            base, dupes = details[0], []
            details = details[1:]
        yield _event("input", 1 + len(dupes))
        for _ in dupes:
            Metrics.counter(NS, "filtered_duplicate").inc()
            yield TaggedOutput(FILTERED, "duplicate")
        try:
            for detail in details:
                base = civitai.merge_detail(base, detail)
            base.compute_content_hash()
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:
            # Documented boundary: the merged card is one bad record (e.g. text that cannot be encoded).
            yield _dead("merge", "malformed_record", adapter_id, f"{type(exc).__name__}: {exc}")
            return
        yield base


class FilterFn(beam.DoFn):
    """Drop cards by rule (one reason each); drop NSFW example images from kept cards."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    def process(self, card: AdapterCard) -> Iterator[Any]:
        for reason, n in filter_images(card, self.config).items():
            yield _event(f"images_filtered/{reason}", n)
        reason = apply_filters(card, self.config)
        if reason is not None:
            Metrics.counter(NS, f"filtered_{reason}").inc()
            yield TaggedOutput(FILTERED, reason)
            return
        yield card


class ReuseFn(beam.DoFn):
    """Join of a current card with the previous release's row of the same adapter id.

    Main output: cards complete without work (refinement and embedding reused). Side outputs
    ``refine`` (new or changed content, or another refiner) and ``embed`` (refinement reused, embedder
    changed).
    """

    def __init__(self, refiner_id: str, embedder_id: str) -> None:
        self.refiner_id = refiner_id
        self.embedder_id = embedder_id

    def process(self, group: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, joined = group
        prev = joined["prev"][0] if joined["prev"] else None
        for card in joined["cur"]:
            if (
                prev is not None
                and prev["content_hash"] == card.content_hash
                and prev["refiner"] == self.refiner_id
            ):
                card.apply_refinement(Refinement(prev["refined_description"], prev["category"],
                                                 prev["recommended_weight"], prev["refiner"]))  # fmt: skip
                if prev["embedder"] == self.embedder_id and prev["embedding"] is not None:
                    card.embedding = prev["embedding"]
                    card.embedder = self.embedder_id
                    Metrics.counter(NS, "reused").inc()
                    yield _event("reused")
                    yield card
                else:
                    yield TaggedOutput("embed", card)
            else:
                yield TaggedOutput("refine", card)


def _extractive(card: AdapterCard) -> Iterator[Any]:
    card.apply_refinement(refine_extractive(card))
    Metrics.counter(NS, "refined").inc()
    yield _event("refined")
    yield card


class ExtractiveRefine(beam.PTransform):
    """Refine with the extractive rules (no model)."""

    def expand(self, cards: beam.PCollection) -> Any:
        return cards | "Extract" >> beam.FlatMap(_extractive).with_outputs(EVENTS, DEAD, main="cards")


class OpenAIRefine(beam.PTransform):
    """Refine through RunInference + :class:`OpenAIRefineHandler`, with a content-hash cache.

    The cache is JSONL under ``DOCS/cache/refine/<refiner>/`` keyed by (content hash, model); it is read
    into the pipeline and joined by content hash, and this build's new answers are written to a new
    cache file in the same directory.
    """

    def __init__(self, config: BuildConfig, build_id: str) -> None:
        super().__init__()
        self.config = config
        self.build_id = build_id

    def _cache_dir(self) -> Path:
        return Path(self.config.out) / "cache" / "refine" / self.config.refiner_id.replace("@", "-")

    def expand(self, cards: beam.PCollection) -> Any:
        from apache_beam.ml.inference.base import RunInference

        from stylus_docs.refine.openai_vlm import OpenAIRefineHandler, VLMConfig

        cfg = self.config
        vlm = VLMConfig(
            model=cfg.refiner_model or "gpt-4o-mini",
            max_images=cfg.vlm_max_images,
            num_retries=cfg.vlm_retries,
        )
        cache_dir = self._cache_dir()
        model = vlm.model
        pipeline = cards.pipeline
        cached = (
            pipeline
            | "ListCache"
            >> beam.Create(sorted(str(p) for p in cache_dir.glob("*.jsonl")) if cache_dir.is_dir() else [])
            | "ReadCache" >> beam.FlatMap(_read_cache, model)
        )
        joined = (
            {"cur": cards | "KeyByHash" >> beam.Map(lambda c: (c.content_hash, c)), "cache": cached}
            | "JoinCache" >> beam.CoGroupByKey()
            | "ApplyCache"
            >> beam.FlatMap(_apply_cache, cfg.refiner_id).with_outputs("miss", EVENTS, main="hit")
        )
        requests_ = joined.miss | "BuildRequests" >> beam.ParDo(_BuildRequestFn(vlm)).with_outputs(
            "card", "req"
        )
        main, dlq = (
            requests_.req | "RunInference" >> RunInference(OpenAIRefineHandler(vlm)).with_exception_handling()
        )
        by_id = (
            {
                "card": requests_.card,
                "result": main | "ResultKey" >> beam.Map(lambda r: (r.example.adapter_id, r.inference)),
                "failed": dlq.failed_inferences | "FailedKey" >> beam.FlatMap(_failed_keys),
            }
            | "JoinResults" >> beam.CoGroupByKey()
            | "ApplyResults"
            >> beam.FlatMap(_apply_result).with_outputs("new_cache", EVENTS, DEAD, main="cards")
        )
        _ = (
            by_id.new_cache
            | "CacheKey" >> beam.Map(lambda e: (0, e))
            | "GroupCache" >> beam.GroupByKey()
            | "WriteCache" >> beam.Map(_write_cache, str(cache_dir), self.build_id, model)
        )
        cards_out = (joined.hit, by_id.cards) | "MergeRefined" >> beam.Flatten()
        events = (joined[EVENTS], by_id[EVENTS]) | "RefineEvents" >> beam.Flatten()
        return {"cards": cards_out, EVENTS: events, DEAD: by_id[DEAD]}


def _read_cache(path: str, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("model") == model and entry.get("content_hash"):
                yield entry["content_hash"], entry


def _apply_cache(group: tuple[str, dict[str, list[Any]]], refiner_id: str) -> Iterator[Any]:
    _, joined = group
    entry = joined["cache"][-1] if joined["cache"] else None
    for card in joined["cur"]:
        if entry is not None:
            card.apply_refinement(Refinement(entry["description"], entry["category"],
                                             entry["recommended_weight"], refiner_id))  # fmt: skip
            Metrics.counter(NS, "refine_cache_hit").inc()
            yield card
        else:
            yield TaggedOutput("miss", card)


class _BuildRequestFn(beam.DoFn):
    """Card → ``card`` output (keyed, for the join with answers) and ``req`` output (chat request)."""

    def __init__(self, vlm: Any) -> None:
        self.vlm = vlm

    def setup(self) -> None:
        import requests

        from stylus_docs.refine.openai_vlm import load_prompt

        self.session = requests.Session()
        self.prompt = load_prompt()

    def process(self, card: AdapterCard) -> Iterator[Any]:
        from stylus_docs.refine.openai_vlm import build_request

        yield TaggedOutput("card", (card.adapter_id, card))
        yield TaggedOutput("req", build_request(card, self.vlm, self.prompt, self.session))

    def teardown(self) -> None:
        self.session.close()


def _failed_keys(item: Any) -> Iterator[tuple[str, str]]:
    batch, exc = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
    batch = batch if isinstance(batch, list | tuple) else [batch]
    detail = redact(str(exc[1] if isinstance(exc, tuple) and len(exc) > 1 else exc))[:300]
    for req in batch:
        example = getattr(req, "example", req)
        if hasattr(example, "adapter_id"):
            yield example.adapter_id, detail


def _apply_result(group: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    adapter_id, joined = group
    for card in joined["card"]:
        if joined["failed"]:
            yield _dead("refine", "retries_exhausted", adapter_id, joined["failed"][0])
            continue
        outcome = joined["result"][0] if joined["result"] else None
        if outcome is None or outcome.refinement is None:
            reason = outcome.reason if outcome is not None else "no_answer"
            yield _dead("refine", reason or "no_answer", adapter_id, outcome.detail if outcome else None)
            continue
        card.apply_refinement(outcome.refinement)
        Metrics.counter(NS, "refined").inc()
        yield _event("refined")
        yield TaggedOutput("new_cache", {
            "content_hash": card.content_hash, "description": card.refined_description,
            "category": card.category, "recommended_weight": card.recommended_weight,
        })  # fmt: skip
        yield card


def _write_cache(
    group: tuple[int, Iterable[dict[str, Any]]], cache_dir: str, build_id: str, model: str
) -> int:
    from stylus_docs.atomic import atomic_write_text

    entries = sorted(group[1], key=lambda e: e["content_hash"])
    text = "".join(json.dumps({**e, "model": model}, sort_keys=True) + "\n" for e in entries)
    atomic_write_text(Path(cache_dir) / f"{build_id}.jsonl", text)
    return len(entries)


class EmbedBatchFn(beam.DoFn):
    """Embed a batch of cards; the model is loaded once per worker (shared across DoFn instances)."""

    def __init__(self, name: str, model: str | None, info: EmbedderInfo, batch: int) -> None:
        self.name = name
        self.model = model
        self.info = info
        self.batch = batch
        self._shared = shared.Shared()

    def setup(self) -> None:
        self.embedder = None

    def _load(self) -> Any:
        # Lazily, so an incremental build with nothing to embed never loads the model.
        if self.embedder is None:
            self.embedder = self._shared.acquire(lambda: load_embedder(self.name, self.model, batch_size=128),
                                                 tag=f"{self.name}:{self.model}")  # fmt: skip
        return self.embedder

    def process(self, batch: list[AdapterCard]) -> Iterator[Any]:
        try:
            vectors = embed_cards(self._load(), batch)
        except RetryableError as exc:
            for card in batch:
                yield _dead("embed", exc.reason, card.adapter_id, exc.detail)
            return
        Metrics.counter(NS, "embedded").inc(len(batch))
        yield _event("embedded", len(batch))
        for card, vec in zip(batch, vectors, strict=True):
            card.embedding = vec
            card.embedder = self.info.id
            yield card


class _ProgressFn(beam.DoFn):
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


def _to_rows(card: AdapterCard, dim: int) -> Iterator[Any]:
    """Card → adapters row (main) and its image rows; a row that does not fit the schema → dead letter.

    Checked here, per record, because the shard writer converts a whole shard at once: one NaN weight or
    out-of-range count would otherwise fail the write of every adapter in the shard.
    """
    row = card.to_row()
    images = [img.to_row() for img in card.images]
    problem = writer.row_problem("adapters", row, dim) or next(
        (f"image {img['image_id']}: {p}" for img in images if (p := writer.row_problem("images", img))), None
    )
    if problem is not None:
        yield _dead("write", "schema_violation", card.adapter_id, problem)
        return
    yield TaggedOutput("images", images)
    yield row


class WriteShards(beam.PTransform):
    """Rows → ``<table>/part-NNNNN-of-MMMMM.parquet`` in the build dir (every shard, even empty)."""

    def __init__(self, table: str, build_dir: str, shards: int, dim: int | None) -> None:
        super().__init__()
        self.table, self.build_dir, self.shards, self.dim = table, build_dir, shards, dim

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        n = self.shards
        empty = rows.pipeline | "EmptyShards" >> beam.Create([(i, None) for i in range(n)])
        keyed = rows | "ShardKey" >> beam.Map(lambda r: (writer.shard_of(r["adapter_id"], n), r))
        return (
            (keyed, empty)
            | "Union" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.Map(self._write)
        )

    def _write(self, group: tuple[int, Iterable[Any]]) -> dict[str, Any]:
        index, rows = group
        data = [r for r in rows if r is not None]
        entry = writer.write_parquet_shard(self.build_dir, self.table, index, self.shards, data, self.dim)
        Metrics.counter(NS, f"rows_written_{self.table}").inc(len(data))
        return entry


def _write_json(group: tuple[int, Iterable[Any]], path: str) -> None:
    from stylus_docs.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(list(group[1]), sort_keys=True))


# --------------------------------------------------------------------------------------------- pipeline
def build_pipeline(p: beam.Pipeline, config: BuildConfig, files: list[RawFile], build_dir: Path,
                   info: EmbedderInfo, progress: bool) -> None:  # fmt: skip
    """Add every stage of the build to ``p`` (outputs go to ``build_dir``)."""
    read = p | "ListInputs" >> beam.Create(files) | "ReadRaw" >> beam.FlatMap(read_records)
    norm = read | "Normalize" >> beam.ParDo(NormalizeFn()).with_outputs(DEAD, EVENTS, main="cards")
    merged = (
        norm.cards
        | "MergeVersions/Group" >> beam.GroupByKey()
        | "MergeVersions" >> beam.ParDo(MergeVersionsFn()).with_outputs(FILTERED, EVENTS, DEAD, main="cards")
    )
    kept = merged.cards | "Filter" >> beam.ParDo(FilterFn(config.filters)).with_outputs(
        FILTERED, EVENTS, main="cards"
    )

    if config.previous:
        prev_dir = str(release.resolve_build(config.previous))
        prev = (
            p
            | "ListPrevious" >> beam.Create([prev_dir])
            | "ReadPrevious" >> beam.FlatMap(writer.read_previous)
            | "KeyPrevious" >> beam.Map(lambda r: (r["adapter_id"], r))
        )
    else:
        prev = p | "NoPrevious" >> beam.Create([])
    reuse = (
        {"cur": kept.cards | "KeyById" >> beam.Map(lambda c: (c.adapter_id, c)), "prev": prev}
        | "ReusePrevious/Join" >> beam.CoGroupByKey()
        | "ReusePrevious"
        >> beam.ParDo(ReuseFn(config.refiner_id, info.id)).with_outputs(
            "refine", "embed", EVENTS, main="done"
        )
    )

    if config.refiner == "extractive":
        refined = reuse.refine | "Refine" >> ExtractiveRefine()
    else:
        refined = reuse.refine | "Refine" >> OpenAIRefine(config, build_dir.name)
    to_embed = (refined["cards"], reuse.embed) | "ToEmbed" >> beam.Flatten()
    embedded = (
        to_embed
        | "Embed/Batch"
        >> beam.BatchElements(min_batch_size=config.embed_batch, max_batch_size=config.embed_batch)
        | "Embed"
        >> beam.ParDo(
            EmbedBatchFn(config.embedder, config.embedder_model, info, config.embed_batch)
        ).with_outputs(DEAD, EVENTS, main="cards")
    )
    final = (reuse.done, embedded.cards) | "Complete" >> beam.Flatten()
    if progress:
        final = final | "Progress" >> beam.ParDo(_ProgressFn("adapters"))
    rows = final | "ToRows" >> beam.FlatMap(_to_rows, info.dim).with_outputs("images", DEAD, main="adapters")
    adapter_rows, image_rows = rows.adapters, rows.images | "FlattenImages" >> beam.FlatMap(lambda x: x)
    dead_render: list[Any] = []
    if config.render:
        adapter_rows, rendered, render_dead = _render(adapter_rows, config, build_dir)
        image_rows = (image_rows, rendered) | "WithRendered" >> beam.Flatten()
        dead_render = [render_dead]

    adapter_files = adapter_rows | "WriteAdapters" >> WriteShards(
        "adapters", str(build_dir), config.shards, info.dim
    )
    image_files = image_rows | "WriteImages" >> WriteShards("images", str(build_dir), config.shards, None)
    dead = [norm[DEAD], merged[DEAD], refined[DEAD], embedded[DEAD], rows[DEAD], *dead_render] | (
        "DeadLetters" >> beam.Flatten()
    )
    dead_file = (
        dead
        | "DeadKey" >> beam.Map(lambda d: (0, d))
        | "DeadEmpty" >> _WithEmpty()
        | "WriteDeadLetters"
        >> beam.Map(lambda g: writer.write_dead_letters(str(build_dir), [d for d in g[1] if d]))
    )
    _ = (
        (adapter_files, image_files, dead_file)
        | "Files" >> beam.Flatten()
        | "FilesKey" >> beam.Map(lambda e: (0, e))
        | "FilesGroup" >> beam.GroupByKey()
        | "FilesWrite" >> beam.Map(_write_json, str(build_dir / ".files.json"))
    )
    filtered_events = (
        (merged[FILTERED], kept[FILTERED])
        | "FilteredAll" >> beam.Flatten()
        | "FilteredEvent" >> beam.Map(lambda reason: (f"filtered/{reason}", 1))
    )
    dead_events = dead | "DeadEvent" >> beam.Map(lambda d: (f"dead_letter/{d['reason']}", 1))
    _ = (
        (
            norm[EVENTS],
            merged[EVENTS],
            kept[EVENTS],
            reuse[EVENTS],
            refined[EVENTS],
            embedded[EVENTS],
            filtered_events,
            dead_events,
        )
        | "Events" >> beam.Flatten()
        | "CountEvents" >> beam.CombinePerKey(sum)
        | "StatsKey" >> beam.Map(lambda kv: (0, kv))
        | "StatsGroup" >> beam.GroupByKey()
        | "StatsWrite" >> beam.Map(_write_json, str(build_dir / ".stats.json"))
    )


class _WithEmpty(beam.PTransform):
    """Make sure key 0 has a group even when the input is empty (so the dead-letter file always exists)."""

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        empty = keyed.pipeline | "Seed" >> beam.Create([(0, None)])
        return (keyed, empty) | "Union" >> beam.Flatten() | "Group" >> beam.GroupByKey()


def _render(adapter_rows: beam.PCollection, config: BuildConfig, build_dir: Path) -> tuple[Any, Any, Any]:
    """Optional GPU render stage (issue 5), imported lazily.

    Contract: ``stylus_docs.render.RenderAdapters(config)`` takes adapter-row dicts and returns
    ``(rows with render_status, rendered image rows)`` (a tuple or an object with ``cards``/``images``).
    """
    try:
        from stylus_docs import render as render_mod
    except ImportError as exc:
        raise FatalError(
            f"--render needs the render stage (stylus_docs.render), which is not available: {exc}"
        ) from exc
    transform_cls = getattr(render_mod, "RenderAdapters", None)
    config_cls = getattr(render_mod, "RenderConfig", None)
    if transform_cls is None:
        raise FatalError("stylus_docs.render has no RenderAdapters transform")
    kwargs = {"pipeline": config.render_pipeline, "device": config.render_device,
              "prompts_per_adapter": config.render_prompts, "out_dir": str(build_dir),
              "cache_dir": config.render_cache or str(Path(config.out) / "cache" / "weights")}  # fmt: skip
    if config_cls is not None:
        import dataclasses
        import inspect

        names = ({f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls)
                 else set(inspect.signature(config_cls).parameters))  # fmt: skip
        render_config = config_cls(**{k: v for k, v in kwargs.items() if k in names and v is not None})
    else:
        render_config = kwargs
    result = adapter_rows | "Render" >> transform_cls(render_config)
    if isinstance(result, tuple) and len(result) >= 2:
        rows, images = result[0], result[1]
    elif isinstance(result, dict):
        rows, images = result["cards"], result["images"]
    else:
        rows, images = result.cards, result.images
    dead = getattr(result, DEAD, None) if not isinstance(result, tuple | dict) else None
    if dead is None:
        dead = adapter_rows.pipeline | "NoRenderDead" >> beam.Create([])
    return rows, images, dead


# --------------------------------------------------------------------------------------------- driver
def _read_json_or(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def _counts(stats: dict[str, int], files: list[dict[str, Any]]) -> dict[str, Any]:
    def group(prefix: str) -> dict[str, int]:
        return {k.split("/", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith(prefix + "/") and v}

    written = sum(f["rows"] for f in files if f["table"] == "adapters")
    return {
        "input": stats.get("input", 0),
        "written": written,
        "filtered": group("filtered"),
        "dead_letter": group("dead_letter"),
        "reused": stats.get("reused", 0),
        "refined": stats.get("refined", 0),
        "embedded": stats.get("embedded", 0),
        "images": sum(f["rows"] for f in files if f["table"] == "images"),
        "images_filtered": group("images_filtered"),
    }


#: Dead-letter reasons that mean the configuration is wrong, not the record: one is enough to refuse.
FATAL_REASONS = {"unauthorized": "the refiner endpoint refused the credentials (check OPENAI_API_KEY)"}


def check_publishable(counts: dict[str, Any], max_dead_fraction: float) -> None:
    """Refuse to publish a build that is empty or mostly failures.

    A bad key or a dead endpoint turns every record into a dead letter; publishing that would replace a
    good live release with an empty one (and ``query`` on it has nothing to search).

    Raises:
        FatalError: no input, a fatal dead-letter reason, dead letters above ``max_dead_fraction`` of the
            input, or no adapter written.
    """
    dead = counts["dead_letter"]
    for reason, message in FATAL_REASONS.items():
        if dead.get(reason):
            raise FatalError(f"{message}: {dead[reason]} records failed with {reason!r}; nothing published")
    if counts["input"] == 0:
        raise FatalError("the --raw input holds no records; nothing published")
    n_dead = sum(dead.values())
    if n_dead > max_dead_fraction * counts["input"]:
        top = ", ".join(f"{r} {n}" for r, n in sorted(dead.items(), key=lambda kv: -kv[1])[:3])
        raise FatalError(
            f"{n_dead} of {counts['input']} records are dead letters ({top}), more than "
            f"--max-dead-letter-fraction {max_dead_fraction:g}; nothing published"
        )
    if counts["written"] == 0:
        raise FatalError(
            f"no adapter was written ({counts['input']} input records, filtered "
            f"{json.dumps(counts['filtered'], sort_keys=True)}); nothing published"
        )


def run_build(
    config: BuildConfig, beam_args: Sequence[str] = (), runner: str | None = None
) -> dict[str, Any]:
    """Run a whole build and publish it; return the manifest.

    Raises:
        FatalError: bad inputs or configuration, or a failed stage. Nothing is published then; the
            unfinished build directory is removed and the previous release stays live.
    """
    files = discover(config.raw)
    info = embedder_info(config.embedder, config.embedder_model)
    if config.previous:
        # Fail fast, in one line, on a bad or corrupted --previous: the reused shards are verified
        # against its manifest (size + SHA-256) before the pipeline starts, not deep inside a worker.
        prev = release.resolve_build(config.previous)
        release.table_files(prev, release.load_manifest(prev), "adapters")
    docs = Path(config.out)
    try:
        docs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"cannot create release root {docs}: {exc.strerror}") from exc
    with release.build_lock(docs):
        return _run_locked(config, files, info, docs, beam_args, runner)


def _run_locked(config: BuildConfig, files: list[RawFile], info: EmbedderInfo, docs: Path,
                beam_args: Sequence[str], runner: str | None) -> dict[str, Any]:  # fmt: skip
    build_id = config.build_id or release.new_build_id()
    build_dir = release.build_path(docs, build_id)
    if build_dir.exists():
        raise FatalError(f"build {build_id} already exists in {docs}")
    try:
        build_dir.mkdir(parents=True)
    except OSError as exc:
        raise FatalError(f"cannot write into release root {docs}: {exc.strerror}") from exc
    progress = config.progress if config.progress is not None else sys.stderr.isatty()
    options = make_pipeline_options(beam_args, runner)
    started = time.time()
    ok = False
    try:
        inputs = [{"path": f.path, "sha256": release.sha256_file(f.path)} for f in files]
        with beam.Pipeline(options=options) as p:
            build_pipeline(p, config, files, build_dir, info, progress)
        # Beam writes these only when some event/file exists: an input with no records leaves neither,
        # and check_publishable then refuses it ("the --raw input holds no records").
        stats = dict(_read_json_or(build_dir / ".stats.json", {}))
        file_list = list(_read_json_or(build_dir / ".files.json", []))
        file_list.sort(key=lambda f: (["adapters", "images", "dead_letter"].index(f["table"]), f["path"]))
        counts = _counts(stats, file_list)
        check_publishable(counts, config.max_dead_letter_fraction)
        manifest = {
            "schema_version": release.SCHEMA_VERSION,
            "build_id": build_id,
            "created_at": writer.utc_now(),
            "inputs": inputs,
            "previous": writer.previous_build_id(config.previous) if config.previous else None,
            "refiner": config.refiner_manifest(),
            "embedder": info.to_manifest(),
            "filters": config.filters.describe(),
            "counts": counts,
            "files": file_list,
            "wall_s": round(time.time() - started, 3),
        }
        for tmp in (".stats.json", ".files.json"):
            (build_dir / tmp).unlink(missing_ok=True)
        writer.finalize_build(docs, build_id, manifest, config.keep)
        ok = True
        return manifest
    except FatalError:
        raise
    except OSError as exc:
        raise FatalError(
            f"build failed writing {getattr(exc, 'filename', '') or 'output'}: {exc.strerror or exc}"
        ) from exc
    except Exception as exc:
        # Documented boundary: Beam wraps stage failures in its own exceptions; report one line and
        # keep the traceback in the log.
        logger.error("build failed", exc_info=True)
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise FatalError("build failed: " + redact(last)) from exc
    finally:
        if not ok and release.current_build_id(docs) != build_id:
            shutil.rmtree(build_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the build's application flags to ``parser`` (shared by the CLI and ``run``)."""
    parser.add_argument(
        "--raw",
        action="append",
        required=True,
        metavar="DIR",
        help="crawl OUT dir, snapshot dir or .jsonl(.gz) file of raw items (repeatable)",
    )
    parser.add_argument("--out", required=True, metavar="DOCS", help="release root to write into")
    parser.add_argument(
        "--previous",
        metavar="DOCS_OLD",
        help="reuse refinements/embeddings of unchanged adapters from this release",
    )
    parser.add_argument("--refiner", choices=("extractive", "openai"), default="extractive")
    parser.add_argument("--refiner-model", metavar="NAME", help="chat model of the openai refiner")
    parser.add_argument("--vlm-max-images", type=int, default=4, help="example images sent to the VLM")
    parser.add_argument("--vlm-retries", type=int, default=4, help="retries of a VLM request on 429/5xx")
    parser.add_argument("--embedder", choices=("minilm", "openai", "clip"), default="minilm")
    parser.add_argument("--embedder-model", metavar="NAME", help="openai model, or clip ARCH[:weights path]")
    parser.add_argument("--embed-batch", type=int, default=512, help="texts per embedding batch")
    parser.add_argument(
        "--base-models", nargs="+", default=[], metavar="B", help="keep only these base models"
    )
    parser.add_argument(
        "--types",
        nargs="+",
        default=list(DEFAULT_TYPES),
        metavar="T",
        help="adapter types to keep (default: LORA LoCon DoRA)",
    )
    parser.add_argument("--include-nsfw", action="store_true", help="keep NSFW adapters and images")
    parser.add_argument(
        "--max-nsfw-level",
        type=int,
        default=2,
        choices=(1, 2, 4, 8, 16),
        help="highest NSFW level bit kept without --include-nsfw (default 2 = PG13)",
    )
    parser.add_argument("--min-images", type=int, default=1, help="drop adapters with fewer example images")
    parser.add_argument("--keep-sliders", action="store_true", help="do not drop concept sliders")
    parser.add_argument("--blacklist", metavar="FILE", help="file of adapter/model ids to drop, one per line")
    parser.add_argument("--shards", type=int, default=1, help="Parquet shards per table")
    parser.add_argument("--keep", type=int, default=3, help="builds to keep (older ones are pruned)")
    parser.add_argument("--runner", metavar="NAME", help="Beam runner (default: the in-process runner)")
    parser.add_argument("--render", action="store_true", help="run the GPU render stage (stylus_docs.render)")
    parser.add_argument("--render-pipeline", metavar="PATH", help="local diffusers pipeline for --render")
    parser.add_argument("--render-device", metavar="DEV", help="torch device for --render (default: auto)")
    parser.add_argument(
        "--render-prompts", type=int, default=2, metavar="M", help="prompts rendered per adapter"
    )
    parser.add_argument(
        "--render-cache",
        metavar="DIR",
        help="adapter weights cache for --render (default DOCS/cache/weights)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    parser.add_argument(
        "--max-dead-letter-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="refuse to publish when more than this fraction of the input records are dead letters "
        "(default 0.5)",
    )


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """A :class:`BuildConfig` from parsed flags."""
    filters = FilterConfig(
        types=tuple(args.types),
        base_models=tuple(args.base_models or ()),
        include_nsfw=args.include_nsfw,
        max_nsfw_level=args.max_nsfw_level,
        min_images=args.min_images,
        blacklist=load_blacklist(args.blacklist) if args.blacklist else frozenset(),
        drop_sliders=not args.keep_sliders,
    )
    return BuildConfig(
        raw=list(args.raw), out=args.out, previous=args.previous, refiner=args.refiner,
        refiner_model=args.refiner_model, embedder=args.embedder, embedder_model=args.embedder_model,
        filters=filters, shards=args.shards, keep=args.keep, embed_batch=args.embed_batch,
        vlm_max_images=args.vlm_max_images, vlm_retries=args.vlm_retries, render=args.render,
        render_pipeline=args.render_pipeline,
        render_device=args.render_device, render_prompts=args.render_prompts,
        render_cache=args.render_cache, progress=False if args.no_progress else None,
        max_dead_letter_fraction=args.max_dead_letter_fraction,
    )  # fmt: skip


def summary(manifest: dict[str, Any]) -> str:
    """A short human summary of a manifest."""
    c = manifest["counts"]
    lines = [
        f"build {manifest['build_id']}: {c['written']} adapters written from {c['input']} input records "
        f"({c['images']} images)",
        f"  filtered: {json.dumps(c['filtered'], sort_keys=True)}",
        f"  dead letters: {json.dumps(c['dead_letter'], sort_keys=True)}",
        f"  reused {c['reused']}, refined {c['refined']}, embedded {c['embedded']}; "
        f"refiner {manifest['refiner']['name']}@{manifest['refiner']['version']}, "
        f"embedder {manifest['embedder']['name']}:{manifest['embedder']['model']} "
        f"(dim {manifest['embedder']['dim']})",
    ]
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse app flags, pass the rest to Beam, run the build; return the manifest."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.splitlines()[0])
    add_arguments(parser)
    own, beam_args = split_beam_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    return run_build(config_from_args(args), beam_args, args.runner)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    try:
        print(summary(run()))
    except FatalError as exc:
        print(f"build: error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
