"""Weight and category rules shared by the refiners (the paper's refiner).

Weight: a ``<lora:NAME:w>`` weight in the example prompts overrides the card; else the weight the card
states, or the middle of the range it states; else 0.8 (the paper's default).
Category: the paper's topics, from the Civitai category tags first, then keywords in tags and title.
"""

from __future__ import annotations

import re
import statistics

from stylus_docs.normalize.lora import parse_lora_tags
from stylus_docs.records import CATEGORIES, DEFAULT_WEIGHT, AdapterCard

_NUM = r"([0-9]*\.[0-9]+|[0-9]+(?:\.[0-9]+)?)"
_STATED = re.compile(
    r"(?:weight|strength|lora scale|scale|multiplier)s?\b[^0-9\n<]{0,40}?" + _NUM
    + r"(?:\s*(?:-|~|–|to|and|/)\s*" + _NUM + r")?",
    re.I,
)  # fmt: skip
MIN_WEIGHT, MAX_WEIGHT = 0.05, 2.0

#: Category tags as Civitai uses them (the paper's category plot counts these), in priority order.
_TAG_CATEGORIES: tuple[tuple[str, str], ...] = (
    # Specific subjects first: "style" is a generic tag that co-occurs with most of them.
    ("celebrity", "celebrity"),
    ("character", "character"),
    ("clothing", "clothing"),
    ("poses", "pose"),
    ("pose", "pose"),
    ("action", "action"),
    ("background", "background"),
    ("buildings", "building"),
    ("building", "building"),
    ("vehicle", "vehicle"),
    ("animal", "animal"),
    ("objects", "object"),
    ("assets", "object"),
    ("style", "style"),
    ("concept", "concept"),
)
#: Keyword → category, tried over tags then title when no category tag matched.
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"\b(real person|actress|actor|singer|idol|celebrit|influencer|youtuber)", "celebrity"),
    (r"\b(character|waifu|oc|anime girl|girl|boy|man|woman|hero|villain|princess|knight)\b", "character"),
    (
        r"\b(style|art ?style|painting|illustration|aesthetic|artist|anime style|sketch|watercolor|render)",
        "style",
    ),
    (
        r"\b(cloth|outfit|dress|costume|uniform|armor|armour|shirt|skirt|lingerie|bikini|hat|shoes|kimono)",
        "clothing",
    ),
    (r"\b(pose|posing|sitting|standing|kneeling)", "pose"),
    (r"\b(action|fight|running|jumping|dancing|holding)", "action"),
    (r"\b(background|scenery|landscape|environment|interior|room|city|forest|sky)", "background"),
    (r"\b(building|architecture|house|castle|temple|tower)", "building"),
    (r"\b(car|vehicle|motorcycle|bike|ship|aircraft|plane|train|mecha|tank)\b", "vehicle"),
    (r"\b(animal|cat|dog|horse|bird|dragon|fox|wolf|creature|pokemon)\b", "animal"),
    (r"\b(object|item|weapon|sword|gun|food|furniture|prop|icon)s?\b", "object"),
)
_COMPILED = tuple((re.compile(p, re.I), c) for p, c in _KEYWORDS)
assert all(c in CATEGORIES for _, c in _TAG_CATEGORIES + _KEYWORDS)


def stated_weight(text: str) -> float | None:
    """The weight a card's text recommends (middle of a stated range, or a ``<lora:…:w>`` it shows)."""
    tags = [w for w in parse_lora_tags(text).values() if MIN_WEIGHT <= w <= MAX_WEIGHT]
    if tags:
        return round(float(statistics.median(tags)), 3)
    for match in _STATED.finditer(text or ""):
        try:
            low = float(match.group(1))
            high = float(match.group(2)) if match.group(2) else low
        except ValueError:
            continue
        if MIN_WEIGHT <= low <= MAX_WEIGHT and MIN_WEIGHT <= high <= MAX_WEIGHT:
            return round((low + high) / 2, 3)
    return None


def _stem(name: str | None) -> str:
    if not name:
        return ""
    return name.rsplit(".", 1)[0].lower()


def example_weight(card: AdapterCard) -> float | None:
    """Median ``<lora:NAME:w>`` weight of this adapter in its example prompts, or None.

    The LoRA is this adapter when its name matches the weights file's stem; when the examples name a
    single LoRA only, that one is taken to be this adapter.
    """
    stem = _stem(card.file_name)
    matched: list[float] = []
    names: set[str] = set()
    all_weights: list[float] = []
    for img in card.images:
        for name, weight in img.lora_weights.items():
            names.add(name.lower())
            all_weights.append(weight)
            if stem and name.lower() == stem:
                matched.append(weight)
    if not matched and len(names) == 1:
        matched = all_weights
    matched = [w for w in matched if MIN_WEIGHT <= w <= MAX_WEIGHT]
    if not matched:
        return None
    return round(float(statistics.median(matched)), 3)


def recommended_weight(card: AdapterCard) -> float:
    """Examples override the card; the card overrides the default 0.8."""
    for value in (example_weight(card), stated_weight(card.description)):
        if value is not None:
            return value
    return DEFAULT_WEIGHT


def category(card: AdapterCard) -> str:
    """One of the paper's topics for ``card`` (``concept`` when nothing says otherwise)."""
    # Hub machine tags ("base_model:adapter:black-forest-labs/…", "license:…") say nothing about the
    # subject and would match keywords ("forest" → background), so only plain tags count.
    tags = [t.lower().strip() for t in card.tags if ":" not in t]
    tagset = set(tags)
    for tag, cat in _TAG_CATEGORIES:
        if tag in tagset:
            return cat
    for haystack in (" ; ".join(tags), card.title):
        for pattern, cat in _COMPILED:
            if pattern.search(haystack):
                return cat
    return "concept"
