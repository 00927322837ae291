"""The composer's rules, enforced in code whatever the composer (LLM or offline) proposed.

The reference code states its caps in the prompt and enforces almost none of them (its cached COCO
answers hold topics with 26 adapters). Here every proposal goes through :func:`enforce`:

* a topic must come from the prompt's words (a hallucinated topic is dropped with its adapters);
* an index must name a retrieved candidate (unknown indices are dropped);
* each adapter is used at most once;
* NSFW adapters are dropped unless allowed;
* character / celebrity adapters only when the prompt names that character or person (or when
  ``include_characters`` is set) — never for generic people ("a man", "a girl");
* at most ``per_topic`` adapters per topic;
* at most ``max_style`` style adapters overall.

Proposals are taken in the composer's order, so the composer's first choices win the capped slots.
Every drop is recorded with a machine-readable ``reason``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from stylus_docs.compose.types import Candidate, ComposeSettings, RawTopic

#: Categories that count as character / celebrity adapters.
CHARACTER_CATEGORIES = frozenset({"character", "celebrity", "characters", "celebrities", "person"})
STYLE_CATEGORIES = frozenset({"style", "styles", "art style"})

#: Words that carry no topic (articles, prepositions, auxiliaries…).
STOPWORDS = frozenset(
    """a an the of on in at to for with without and or but from by into onto over under near beside
    behind above below between through across against along around up down out off is are was were be
    been being it its this that these those there here some any very while as his her their our your
    my one two three has have had do does did not no so than then who which what when where how""".split()
)
#: Generic people words: a character adapter is never justified by these alone.
GENERIC_PEOPLE = frozenset(
    """man men woman women girl girls boy boys person people guy guys lady ladies child children kid kids
    1girl 1boy 2girls 2boys human humans face portrait figure someone adult teen teenager baby""".split()
)
#: Title words that do not name anyone.
_TITLE_NOISE = frozenset(
    """lora locon lycoris loha style character celebrity model concept costume outfit cosplay fanart art
    realistic anime sd sdxl xl v1 v2 v3 v4 v5 version edition pony illustrious the of and for by""".split()
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased word tokens of ``text``."""
    return [w.lower() for w in _WORD.findall(text or "")]


def stem(word: str) -> str:
    """A light plural/possessive stem so "corgis" matches "corgi" (no NLP dependency)."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def content_stems(text: str) -> list[str]:
    """Stems of the non-stopword words of ``text``, in order."""
    return [stem(w) for w in words(text) if w not in STOPWORDS]


def topic_in_prompt(topic: str, prompt: str) -> bool:
    """True when every content word of ``topic`` occurs in ``prompt`` (after stemming)."""
    topic_stems = content_stems(topic)
    if not topic_stems:
        return False
    prompt_stems = {stem(w) for w in words(prompt)}
    return all(s in prompt_stems for s in topic_stems)


def is_character(candidate: Candidate) -> bool:
    """Whether a candidate is a character or celebrity adapter (by category, else by tags)."""
    category = (candidate.category or "").strip().lower()
    if category:
        return category in CHARACTER_CATEGORIES
    return any(t.strip().lower() in CHARACTER_CATEGORIES for t in candidate.tags)


def is_style(candidate: Candidate) -> bool:
    """Whether a candidate is a style adapter (by category, else by tags)."""
    category = (candidate.category or "").strip().lower()
    if category:
        return category in STYLE_CATEGORIES
    return any(t.strip().lower() in STYLE_CATEGORIES for t in candidate.tags)


def name_tokens(candidate: Candidate) -> set[str]:
    """Stems that name a character adapter's subject: title words and trigger words minus noise."""
    tokens: set[str] = set()
    for text in [candidate.title, *candidate.trigger_words]:
        for w in words(text):
            if len(w) < 3 or w.isdigit() or w in STOPWORDS or w in _TITLE_NOISE or w in GENERIC_PEOPLE:
                continue
            tokens.add(stem(w))
    return tokens


def prompt_names(candidate: Candidate, prompt: str) -> bool:
    """True when the prompt names the character/person of ``candidate`` (a title or trigger word)."""
    prompt_stems = {stem(w) for w in words(prompt)}
    return bool(name_tokens(candidate) & prompt_stems)


def _drop(
    reason: str, detail: str, topic: str | None, index: Any = None, adapter_id: str | None = None
) -> dict:
    return {"reason": reason, "topic": topic, "index": index, "adapter_id": adapter_id, "detail": detail}


def _as_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def enforce(
    prompt: str,
    proposal: Sequence[RawTopic],
    candidates: Sequence[Candidate],
    settings: ComposeSettings,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply every rule to a composer's proposal.

    Args:
        prompt: the user's prompt.
        proposal: topics with candidate indices and reasons, in the composer's order of preference.
        candidates: the retrieved catalogue (indexed by :attr:`Candidate.index`).
        settings: caps and switches.

    Returns:
        ``(topics, dropped)``: topics as output dicts (``{"topic", "adapters": [{"adapter_id", "title",
        "category", "recommended_weight", "reason"}]}``) and one dict per dropped topic or adapter with
        ``reason``, ``topic``, ``index``, ``adapter_id`` and ``detail``.
    """
    by_index = {c.index: c for c in candidates}
    topics: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    dropped: list[dict[str, Any]] = []
    used: dict[str, str] = {}
    styles = 0
    for raw in proposal:
        name = " ".join((raw.topic or "").split())
        if not topic_in_prompt(name, prompt):
            dropped.append(
                _drop("topic_not_in_prompt", f"topic {name!r} is not made of the prompt's words", name)
            )
            for item in raw.adapters:
                cand = by_index.get(_as_index(item.index))
                dropped.append(
                    _drop(
                        "topic_not_in_prompt",
                        "its topic was dropped",
                        name,
                        item.index,
                        cand and cand.adapter_id,
                    )
                )
            continue
        key = " ".join(content_stems(name))
        out = by_name.get(key)
        if out is None:  # the same topic twice is merged, not dropped
            out = {"topic": name, "adapters": []}
            by_name[key] = out
            topics.append(out)
        for item in raw.adapters:
            idx = _as_index(item.index)
            cand = by_index.get(idx) if idx is not None else None
            if cand is None:
                dropped.append(
                    _drop("unknown_index", f"index {item.index!r} is not in the catalogue", name, item.index)
                )
                continue
            aid = cand.adapter_id
            if aid in used:
                dropped.append(
                    _drop("duplicate_adapter", f"already used for topic {used[aid]!r}", name, idx, aid)
                )
                continue
            if cand.nsfw and not settings.include_nsfw:
                dropped.append(_drop("nsfw", "NSFW adapters are excluded", name, idx, aid))
                continue
            if is_character(cand) and not settings.include_characters and not prompt_names(cand, prompt):
                dropped.append(
                    _drop(
                        "character_not_requested",
                        f"{cand.category or 'character'} adapter; the prompt names no such person",
                        name,
                        idx,
                        aid,
                    )
                )
                continue
            if len(out["adapters"]) >= settings.per_topic:
                dropped.append(
                    _drop(
                        "over_topic_cap", f"topic already has {settings.per_topic} adapters", name, idx, aid
                    )
                )
                continue
            if is_style(cand) and styles >= settings.max_style:
                dropped.append(
                    _drop("style_cap", f"at most {settings.max_style} style adapters overall", name, idx, aid)
                )
                continue
            styles += is_style(cand)
            used[aid] = name
            out["adapters"].append(
                {
                    "adapter_id": aid,
                    "title": cand.title,
                    "category": cand.category,
                    "recommended_weight": cand.recommended_weight,
                    "reason": " ".join((item.reason or "").split())[:300],
                }
            )
    return topics, dropped
