"""The one grammar of A1111 extra-network tags in prompts: ``<lora:name:w>`` and its kin.

A tag is ``<KIND:NAME[:WEIGHT[:MORE]]>`` with KIND one of ``lora``, ``lyco``, ``locon`` or ``hypernet``
(any case, spaces allowed around the parts). NAME holds no ``:``, ``<`` or ``>``; WEIGHT is the first
number after the name (the text-encoder weight of ``<lora:x:0.7:0.5>``); what follows it (a second
weight, ``lbw=…``) is part of the tag but not read. Anything else that merely looks like a tag — an
unclosed ``<lora:x:0.7,``, an empty ``<lora:>`` — is left alone: real prompts have unclosed tags
followed by ordinary words, which a looser ``<lora:[^>]*>`` would swallow up to the next ``>``.

Every reader of prompts uses this module: normalization (the weights of the adapters an image used),
the embedding views and the BM25 documents (tags removed), render prompts (tags mean nothing to
diffusers) and the extractive refiner (a sentence holding a tag is usage instructions).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

#: The kinds of network a tag can name (lowercase).
TAG_KINDS: tuple[str, ...] = ("lora", "lyco", "locon", "hypernet")
#: Kinds that load as LoRA-style adapters (hypernetworks are another mechanism).
LORA_KINDS: tuple[str, ...] = ("lora", "lyco", "locon")

TAG = re.compile(
    r"<\s*(?P<kind>" + "|".join(TAG_KINDS) + r")\s*:"
    r"\s*(?P<name>[^:<>]*[^:<>\s])\s*"
    r"(?::\s*(?P<weight>[-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*)?"
    r"(?::[^<>]*)?>",
    re.IGNORECASE,
)
#: The opening of a tag (``<lora``, ``< lyco``…), complete or not: for filters over text cut into
#: sentences, where a tag is often split in two (``… includes <lyco:.`` + `` name:0.8>``).
TAG_OPENING = re.compile(r"<\s*(?:" + "|".join(TAG_KINDS) + r")\b", re.IGNORECASE)


class NetworkTag(NamedTuple):
    """One extra-network tag of a prompt.

    Args:
        name: the network's name as written (surrounding spaces removed).
        weight: its first weight; None when the tag gives none, or none that is a finite number.
        kind: ``lora``, ``lyco``, ``locon`` or ``hypernet`` (lowercase).
    """

    name: str
    weight: float | None
    kind: str


def find_tags(text: str | None) -> list[NetworkTag]:
    """The network tags of ``text``, in order (a name that appears twice is listed twice)."""
    if not text or "<" not in text:
        return []
    out: list[NetworkTag] = []
    for match in TAG.finditer(text):
        raw = match.group("weight")
        weight = float(raw) if raw is not None else None
        if weight is not None and not math.isfinite(weight):  # 400 digits overflow to inf
            weight = None
        out.append(NetworkTag(match.group("name").strip(), weight, match.group("kind").lower()))
    return out


def strip_tags(text: str, replacement: str = " ") -> str:
    """``text`` with every network tag replaced by ``replacement``.

    The default is a space because a tag separates the words around it (``cat<lora:x:1>dog``); nothing
    else of the text changes, so callers tidy commas and spaces as their output needs.
    """
    if "<" not in text:
        return text
    return TAG.sub(replacement, text)


def mentions_tags(text: str) -> bool:
    """True when ``text`` holds the opening of a network tag, even one cut off (see :data:`TAG_OPENING`)."""
    return "<" in text and TAG_OPENING.search(text) is not None


def parse_lora_tags(prompt: str | None) -> dict[str, float]:
    """Map each LoRA (``lora``/``lyco``/``locon`` tag) named in ``prompt`` to its weight.

    A tag without a usable weight counts 1.0 (A1111's default); a name that appears twice keeps its last
    weight. Hypernetwork tags are not LoRAs and are left out.
    """
    out: dict[str, float] = {}
    for tag in find_tags(prompt):
        if tag.kind in LORA_KINDS:
            out[tag.name] = 1.0 if tag.weight is None else tag.weight
    return out
