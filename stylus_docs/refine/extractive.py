"""The default refiner: extractive, no model.

It does not look at images and invents nothing. The description is the card's own first sentences
(boilerplate such as support links and usage instructions removed), or, when the card says nothing,
a sentence assembled from its type, title, base model, tags and trigger words. Weight and category
follow :mod:`stylus_docs.refine.rules`. Named ``extractive`` with version ``v1`` in every row and in the
manifest, so nobody mistakes it for a VLM's description.
"""

from __future__ import annotations

import re

from stylus_docs.normalize.lora import mentions_tags
from stylus_docs.records import AdapterCard, Refinement
from stylus_docs.refine.rules import category, recommended_weight

EXTRACTIVE_NAME = "extractive"
#: Bump when the rules change: cached refinements of another version are not reused.
EXTRACTIVE_VERSION = "v1"
MAX_CHARS = 400

_BOILERPLATE = re.compile(
    r"(https?://|www\.|ko-?fi|patreon|discord|buy me a coffee|support me|follow me|twitter|"
    r"\bweight\b|\bstrength\b|trigger ?word|recommended|negative prompt|sampler|cfg|steps|"
    r"please|thank|update|changelog|version|v\d|license|credit)",
    re.I,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _summary_sentences(text: str) -> str:
    picked: list[str] = []
    size = 0
    for para in text.split("\n"):
        for sentence in _SENTENCE.split(para.strip()):
            sentence = sentence.strip(" -*•\t")
            if len(sentence) < 12 or _BOILERPLATE.search(sentence) or mentions_tags(sentence):
                continue
            if size + len(sentence) > MAX_CHARS and picked:
                return " ".join(picked)
            picked.append(sentence if sentence[-1] in ".!?" else sentence + ".")
            size += len(sentence) + 1
            if len(picked) >= 3:
                return " ".join(picked)
    return " ".join(picked)


def _fallback(card: AdapterCard) -> str:
    kind = {"lora": "LoRA", "locon": "LyCORIS (LoCon)", "dora": "DoRA"}.get(card.type.lower(), card.type)
    parts = [f'{kind} adapter "{card.title}"']
    if card.base_model:
        parts.append(f"for {card.base_model}")
    text = " ".join(parts) + "."
    tags = [t for t in card.tags if not t.startswith(("license:", "base_model:", "region:", "template:"))]
    if tags:
        text += f" Tags: {', '.join(tags[:8])}."
    if card.trigger_words:
        text += f" Trigger words: {', '.join(card.trigger_words[:5])}."
    return text


#: What a failed render check tells a reader, by ``render_status`` (the render stage ran before refine).
_RENDER_NOTES = {
    "load_failed": "Its weights did not load into the render pipeline",
    "incompatible_base": "It targets another base model family than the render pipeline",
    "download_failed": "Its weights could not be downloaded",
    "nan_output": "Rendering with it produced invalid (NaN) pixels",
    "render_failed": "Rendering with it failed",
    "unsupported_format": "Its file format (e.g. LoHa, LoKr) cannot be loaded by diffusers",
}


def refine_extractive(card: AdapterCard) -> Refinement:
    """Refine one card without a model (it reads the card, and the render verdict when there is one)."""
    summary = _summary_sentences(card.description)
    description = f"{card.title}: {summary}" if summary else _fallback(card)
    note = _RENDER_NOTES.get(card.render_status or "")
    if note:
        # Said first and kept within MAX_CHARS: an adapter that does not load is worth knowing about.
        description = f"{note}. {description}"
    if len(description) > MAX_CHARS:
        description = description[: MAX_CHARS - 1].rsplit(" ", 1)[0] + "…"
    return Refinement(
        description=description,
        category=category(card),
        recommended_weight=recommended_weight(card),
        refiner=f"{EXTRACTIVE_NAME}@{EXTRACTIVE_VERSION}",
    )
