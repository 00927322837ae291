"""The offline composer: deterministic, no model, the embedded default.

1. Segment the prompt into content phrases: maximal runs of non-stopwords between punctuation and
   function words ("a graffiti of a corgi on the wall" → "graffiti", "corgi", "wall").
2. Score every retrieved candidate against every phrase:

   ``score = 0.7 × lexical coverage + 0.3 × phrase retrieval + 0.1 × category fit``

   * lexical coverage: IDF-weighted share of the phrase's words found among the candidate's title,
     trigger words and tags (tags count 0.6). IDF is computed over the candidate set, so words common
     to many candidates ("style", "detailed") weigh little.
   * phrase retrieval: ``1 − rank/K`` when the hybrid retriever, queried with the phrase alone, ranks the
     candidate in its top K (0 otherwise).
   * category fit: a style adapter for a phrase with a style word ("watercolor", "graffiti", "style"…).
3. Assign greedily, best score first, every (phrase, candidate) pair above the threshold (0.5 by default:
   at least most of the phrase must match the card's name, tags or trigger words), each candidate to at most
   one phrase; the rules (:mod:`stylus_docs.compose.rules`) then apply the caps.

Same release + same prompt + same settings → the same composition, byte for byte.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from stylus_docs.compose.rules import STOPWORDS, stem, words
from stylus_docs.compose.types import Candidate, ComposeSettings, RawAssignment, RawTopic

VERSION = "offline_v1"
W_LEXICAL, W_RETRIEVAL, W_CATEGORY = 0.7, 0.3, 0.1
TAG_WEIGHT = 0.6
PROPOSAL_SLACK = 3
#: Words that ask for a rendering style.
STYLE_CUES = frozenset(
    """style styled art artwork painting painted drawing drawn sketch illustration graffiti watercolor
    watercolour oil anime manga cartoon comic pixel ukiyo impressionist impressionism cubist cubism
    cyberpunk steampunk vaporwave photo photograph photography realistic render lineart ink pastel
    pencil charcoal 3d low poly minimalist surreal baroque retro vintage""".split()
)
_SPLIT = re.compile(r"[,.;:!?()\[\]{}|/\\\n\"]+")

#: ``search(texts, k) -> [[(adapter_id, score, components), ...] per text]`` best first (one batch).
SearchFn = Callable[[list[str], int], list[list[tuple[str, float, object]]]]


def segment(prompt: str) -> list[str]:
    """Content phrases of ``prompt``, in order, de-duplicated."""
    phrases: list[str] = []
    for chunk in _SPLIT.split(prompt or ""):
        run: list[str] = []
        for w in words(chunk):
            if w in STOPWORDS:
                if run:
                    phrases.append(" ".join(run))
                run = []
            else:
                run.append(w)
        if run:
            phrases.append(" ".join(run))
    seen: set[str] = set()
    out: list[str] = []
    for p in phrases:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _card_stems(c: Candidate) -> tuple[set[str], set[str]]:
    strong = {stem(w) for text in [c.title, *c.trigger_words] for w in words(text) if w not in STOPWORDS}
    tags = {stem(w) for t in c.tags for w in words(t) if w not in STOPWORDS}
    return strong, tags - strong


def score_pairs(
    phrases: Sequence[str],
    candidates: Sequence[Candidate],
    search: SearchFn | None,
    k: int,
    phrase_hits: list[list[tuple[str, float, object]]] | None = None,
) -> list[tuple[float, int, int, str]]:
    """Every (phrase, candidate) pair with a lexical match: ``(score, phrase_no, cand_index, why)``."""
    cards = {c.index: _card_stems(c) for c in candidates}
    df: dict[str, int] = {}
    for strong, tags in cards.values():
        for s in strong | tags:
            df[s] = df.get(s, 0) + 1
    n = max(len(candidates), 1)

    def idf(s: str) -> float:
        return math.log(1.0 + n / (1.0 + df.get(s, 0)))

    pairs: list[tuple[float, int, int, str]] = []
    if phrase_hits is None:
        phrase_hits = search(list(phrases), k) if search is not None and phrases else [[] for _ in phrases]
    for p_no, phrase in enumerate(phrases):
        stems = [stem(w) for w in words(phrase)]
        total = sum(idf(s) for s in stems) or 1.0
        ranks: dict[str, int] = {}
        for rank, (aid, _score, _comp) in enumerate(phrase_hits[p_no]):
            ranks.setdefault(aid, rank)
        style_phrase = any(w in STYLE_CUES for w in words(phrase))
        for c in candidates:
            strong, tags = cards[c.index]
            matched = [s for s in stems if s in strong]
            tag_matched = [s for s in stems if s not in strong and s in tags]
            if not matched and not tag_matched:
                continue
            lexical = (sum(idf(s) for s in matched) + TAG_WEIGHT * sum(idf(s) for s in tag_matched)) / total
            rank = ranks.get(c.adapter_id)
            retrieval = 1.0 - rank / k if rank is not None else 0.0
            category = 1.0 if style_phrase and (c.category or "").lower() == "style" else 0.0
            score = W_LEXICAL * lexical + W_RETRIEVAL * retrieval + W_CATEGORY * category
            where = "title/trigger" if matched else "tags"
            why = f"matches {', '.join(matched + tag_matched)!s} in {where}"
            if rank is not None:
                why += f"; hybrid rank {rank + 1} for {phrase!r}"
            pairs.append((round(score, 6), p_no, c.index, why))
    return pairs


def compose_offline(
    prompt: str,
    candidates: Sequence[Candidate],
    settings: ComposeSettings,
    search: SearchFn | None = None,
    phrase_hits: list[list[tuple[str, float, object]]] | None = None,
) -> list[RawTopic]:
    """Deterministic proposal: phrases as topics, best-matching candidates assigned above the threshold.

    Args:
        prompt: the user's prompt.
        candidates: the retrieved catalogue.
        settings: ``per_topic`` and ``offline_threshold`` are used here; the rest by the rules.
        search: the hybrid retriever for phrase queries (None: lexical coverage and category only).
        phrase_hits: hits of :func:`segment`'s phrases, already retrieved (saves a search call).

    Returns:
        One :class:`RawTopic` per phrase (possibly with no adapters), adapters best first.
    """
    phrases = segment(prompt)
    pairs = score_pairs(phrases, candidates, search, max(settings.top_k, 1), phrase_hits)
    # Best score first; ties broken by phrase order, then retrieval order: fully deterministic.
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    topics = [RawTopic(topic=p) for p in phrases]
    used: set[int] = set()
    for score, p_no, idx, why in pairs:
        if score < settings.offline_threshold:
            break
        # Propose a few more than the cap: the rules drop (and explain) the excess, so an adapter the
        # rules reject (a character nobody asked for) does not cost its topic a slot.
        if idx in used or len(topics[p_no].adapters) >= settings.per_topic + PROPOSAL_SLACK:
            continue
        used.add(idx)
        topics[p_no].adapters.append(RawAssignment(index=idx, reason=f"{why} (score {score:.2f})"))
    return topics
