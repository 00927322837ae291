"""Value types of the composer: candidates, settings, raw answers, the composition result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stylus_docs.errors import FatalError

COMPOSERS: tuple[str, ...] = ("offline", "llm")
FALLBACKS: tuple[str | None, ...] = (None, "offline")


@dataclass(slots=True)
class Candidate:
    """One retrieved adapter as the composer sees it.

    Args:
        index: position in the catalogue shown to the composer (0-based, retrieval order).
        adapter_id: release id (``civitai:<model>@<version>`` / ``hf:<repo>@<rev>``).
        title: card title.
        category: refined category (``style``, ``character``, ``celebrity``, ``concept``, …).
        recommended_weight: refiner weight (None → 0.8 at generation time).
        tags: card tags.
        trigger_words: trained words.
        description: refined description (or the cleaned card text when unrefined).
        base_model: e.g. ``SD 1.5``.
        family: the catalogue base-model family (``SD 1.x``, ``SDXL``, ``Pony``, … — the adapters
            table's ``base_model_family``, else :func:`stylus_docs.normalize.base_models.family` of
            ``base_model``, else ``base_model`` itself); None when the card names no base model.
        nsfw: the card's NSFW flag.
        score: retrieval score (hybrid).
        components: retrieval score components (dense, lexical, …) as the query module gives them.
    """

    index: int
    adapter_id: str
    title: str = ""
    category: str = ""
    recommended_weight: float | None = None
    tags: list[str] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)
    description: str = ""
    base_model: str = ""
    family: str | None = None
    nsfw: bool = False
    score: float = 0.0
    components: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class ComposeSettings:
    """Everything that changes a composition (and therefore its cache key).

    Args:
        composer: ``offline`` (deterministic, no model) or ``llm`` (OpenAI-compatible endpoint).
        model: chat model name for ``llm`` (``--model``).
        top_k: candidates retrieved (the paper's 150).
        per_topic: cap on adapters per topic (paper code: 3).
        max_style: cap on style adapters over the whole composition (paper: two).
        include_characters: allow character/celebrity adapters even when the prompt names no one.
        include_nsfw: keep NSFW adapters among the candidates.
        base_model: the user's base model (``--base-model``); the composition uses only adapters of
            its family (:func:`stylus_docs.compose.families.resolve_family`).
        pipeline_base_model: the generation pipeline's base model (``generate`` passes it); used when
            ``base_model`` is not set. Without either, the family with the best candidates is chosen.
        local: a library folder linked with ``stylus-docs link``: only its adapters are candidates.
        refine: send the paper's second "refine" turn to the LLM.
        fallback: ``offline`` to fall back to the offline composer when the LLM fails for good.
        answer_retries: extra tries after an invalid (unparsable / schema-violating) answer.
        http_retries: retries of one request on 429 / 5xx / timeouts / connection errors.
        timeout_s: per-request timeout.
        max_description_chars: description length per catalogue entry (the reference truncates at 1000).
        offline_threshold: minimum (topic, adapter) score for the offline composer to assign an
            adapter; a topic whose best candidate scores below it gets none (tuned on the developer
            half, BENCHMARKS.md ``compose-rules``).
        topic_keep_ratio: the offline composer keeps a topic's further adapters only when they score at
            least this share of its best one.
    """

    composer: str = "offline"
    model: str | None = None
    top_k: int = 150
    per_topic: int = 3
    max_style: int = 2
    include_characters: bool = False
    include_nsfw: bool = False
    base_model: str | None = None
    pipeline_base_model: str | None = None
    local: str | None = None
    refine: bool = False
    fallback: str | None = None
    answer_retries: int = 2
    http_retries: int = 4
    timeout_s: float = 60.0
    max_description_chars: int = 1000
    offline_threshold: float = 0.5
    topic_keep_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.composer not in COMPOSERS:
            raise FatalError(f"unknown composer {self.composer!r}; choose one of {', '.join(COMPOSERS)}")
        if self.fallback not in FALLBACKS:
            raise FatalError(f"unknown fallback {self.fallback!r}; only 'offline' is supported")
        if not 1 <= self.top_k <= 10_000:
            raise FatalError("--top-k must be between 1 and 10000")
        if not 0 <= self.per_topic <= 20:
            raise FatalError("--per-topic must be between 0 and 20")
        if self.max_style < 0:
            raise FatalError("max_style must be non-negative")
        if self.answer_retries < 0 or self.http_retries < 0:
            raise FatalError("retry counts must be non-negative")
        if self.timeout_s <= 0:
            raise FatalError("timeout must be positive")
        if not 0.0 <= self.topic_keep_ratio <= 1.0:
            raise FatalError("topic_keep_ratio must be between 0 and 1")

    def cache_fields(self) -> dict[str, Any]:
        """The settings that determine the result (retry/timeouts excluded: they do not change it)."""
        out = asdict(self)
        for key in ("answer_retries", "http_retries", "timeout_s", "fallback"):
            out.pop(key)
        return out

    def as_dict(self) -> dict[str, Any]:
        """All settings as plain JSON values."""
        return asdict(self)


@dataclass(slots=True)
class RawAssignment:
    """One adapter the composer proposed for a topic, before the rules are enforced."""

    index: Any
    reason: str = ""
    score: float | None = None


@dataclass(slots=True)
class RawTopic:
    """One topic the composer proposed, before the rules are enforced."""

    topic: str
    adapters: list[RawAssignment] = field(default_factory=list)
