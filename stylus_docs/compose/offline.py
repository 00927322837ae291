"""The offline composer: deterministic, no model, the embedded default.

1. **Topics** (the paper's: short, orthogonal, from the prompt's words). The prompt is cut at punctuation
   and function words, counts, spatial words and framing words ("a photo of", "next to", "two"), and an
   action word ("eating", "swimming") becomes a topic of its own: "A small dog eating a treat next to a
   couple of knitted hats" → "small dog", "eating", "treat", "knitted hats".
2. **Scores.** Every retrieved candidate against every topic:

   ``score = 0.5 × coverage + 0.3 × precision + 0.2 × phrase retrieval + 0.1 × category fit``

   * coverage: IDF-weighted share of the topic's words found among the candidate's title, made-up
     trigger words ("corgidog") and, counting 0.6, its tags and ordinary trigger words (creators list
     poses and outfits there). IDF is computed over the candidate set, so words common to many
     candidates ("style", "detailed") weigh little;
   * precision: IDF-weighted share of the title's words that are in the topic — an adapter must not be
     much narrower than its topic ("Dog Girl" for "dog" loses to "Dog");
   * phrase retrieval: ``1 − rank/K`` when the hybrid retriever, queried with the topic alone, ranks the
     candidate in its top K (0 otherwise);
   * category fit: a style adapter for a topic with a style word ("watercolor", "graffiti", "style"…).
3. **Merging.** Two neighbouring topics become one ("polar bear" + "swimming" → "polar bear swimming")
   when one adapter's name spans both and it scores on the merged topic at least as well as the best
   adapter of either part.
4. **Assignment.** Greedily, best score first, each candidate (and each model: one version of it) to at
   most one topic, pairs scoring at least ``offline_threshold`` (0.5: a topic fully covered by an
   adapter's name passes; partial coverage must be made up by precision and retrieval) — so a topic
   whose best candidate is weak gets none — and at least ``topic_keep_ratio`` × the topic's best.
   The rules (:mod:`stylus_docs.compose.rules`) then apply the caps and the naming rule for
   characters.

Same release + same prompt + same settings → the same composition, byte for byte.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stylus_docs.compose.rules import STOPWORDS, english_words, model_key, stem, words
from stylus_docs.compose.types import Candidate, ComposeSettings, RawAssignment, RawTopic

VERSION = "offline_v2"
# Tuned with offline_threshold on the developer half (BENCHMARKS.md compose-rules): 0.6/0.15/0.25 gave
# F1 0.228 against Stylus' choices at 2.80 adapters per caption, 0.5/0.3/0.2 F1 0.259 at 1.91.
W_LEXICAL, W_PRECISION, W_RETRIEVAL, W_CATEGORY = 0.5, 0.3, 0.2, 0.1
TAG_WEIGHT = 0.6
PROPOSAL_SLACK = 3
#: Longest merged topic, in words (stopwords between the two parts included).
MAX_MERGED_WORDS = 6
#: Words that ask for a rendering style.
STYLE_CUES = frozenset(
    """style styled art artwork painting painted drawing drawn sketch illustration graffiti watercolor
    watercolour oil anime manga cartoon comic pixel ukiyo impressionist impressionism cubist cubism
    cyberpunk steampunk vaporwave photo photograph photography realistic render lineart ink pastel
    pencil charcoal 3d low poly minimalist surreal baroque retro vintage""".split()
)
#: Words ending in -ing that are nouns or noun modifiers, not actions.
ING_NOUNS = frozenset(
    """building buildings clothing painting paintings ceiling evening morning wedding ring rings king
    kings wing wings thing things string strings spring swing swings sibling icing pudding railing
    railings lightning stuffing frosting topping toppings dressing sling parking dining living bedding
    awning landing darling duckling seedling dumpling dumplings earring earrings viking vikings ping
    sing sting bling everything something nothing anything ping pudding drawing drawings sterling
    herring wring""".split()
)
#: Words that never make a topic of the title for :func:`_title_stems` (format and version noise).
_TITLE_NOISE = frozenset(
    """lora locon lycoris loha lokr dora lyco sd sdxl xl sd15 pony illustrious noobai flux version ver
    style styles concept model pack mix edition by for the of and with""".split()
)
_VERSION = re.compile(r"^(?:v|ver)?\d+(?:[._]\d+)*[a-z]?$")
_SPLIT = re.compile(r"[,.;:!?()\[\]{}|/\\\n\"]+")

#: ``search(texts, k) -> [[(adapter_id, score, components), ...] per text]`` best first (one batch).
SearchFn = Callable[[list[str], int], list[list[tuple[str, float, object]]]]
#: Whether a candidate may be assigned at all (the naming rule for characters, NSFW): used to decide
#: merges and a topic's best score; ineligible candidates are still proposed, and the rules drop them
#: with a reason.
EligibleFn = Callable[[Candidate], bool]


@dataclass(frozen=True, slots=True)
class Phrase:
    """A topic candidate: a span of the prompt's words.

    Args:
        text: the words of the span (lowercase, single spaces).
        start: index of its first word among the prompt's words.
        end: index after its last word.
        chunk: which punctuation-delimited chunk of the prompt it is in.
    """

    text: str
    start: int
    end: int
    chunk: int


def _is_action(word: str) -> bool:
    return len(word) >= 5 and word.endswith("ing") and word not in ING_NOUNS


def prompt_words(prompt: str) -> list[tuple[str, int]]:
    """``(word, chunk number)`` for every word of ``prompt`` (chunks are cut at punctuation)."""
    out: list[tuple[str, int]] = []
    for chunk_no, chunk in enumerate(_SPLIT.split(prompt or "")):
        out.extend((w, chunk_no) for w in words(chunk))
    return out


def segment_spans(prompt: str) -> list[Phrase]:
    """Content phrases of ``prompt`` as spans, in order (repeated phrases kept; see :func:`segment`)."""
    toks = prompt_words(prompt)
    phrases: list[Phrase] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            phrases.append(Phrase(" ".join(toks[i][0] for i in run), run[0], run[-1] + 1, toks[run[0]][1]))
            run.clear()

    for i, (w, chunk) in enumerate(toks):
        if run and toks[run[-1]][1] != chunk:
            flush()
        if w in STOPWORDS:
            flush()
        elif _is_action(w):
            flush()
            run.append(i)
            flush()
        else:
            run.append(i)
    flush()
    return phrases


def segment(prompt: str) -> list[str]:
    """Content phrases of ``prompt``, in order, de-duplicated."""
    return list(dict.fromkeys(p.text for p in segment_spans(prompt)))


def merge_candidates(prompt: str, phrases: Sequence[Phrase] | None = None) -> list[Phrase]:
    """Spans joining two neighbouring phrases of one chunk (stopwords between them included), at most
    :data:`MAX_MERGED_WORDS` words: the topics a single adapter could span."""
    toks = prompt_words(prompt)
    spans = list(phrases) if phrases is not None else segment_spans(prompt)
    out: list[Phrase] = []
    for a, b in zip(spans, spans[1:], strict=False):
        if a.chunk != b.chunk or b.end - a.start > MAX_MERGED_WORDS or a.text == b.text:
            continue
        out.append(Phrase(" ".join(w for w, _ in toks[a.start : b.end]), a.start, b.end, a.chunk))
    return out


def search_texts(prompt: str) -> list[str]:
    """The texts the offline composer retrieves for besides the prompt: its phrases, then the merges."""
    spans = segment_spans(prompt)
    return list(dict.fromkeys([p.text for p in spans] + [m.text for m in merge_candidates(prompt, spans)]))


def _card_stems(c: Candidate) -> tuple[set[str], set[str], list[str]]:
    english = english_words()
    strong = {stem(w) for w in words(c.title) if w not in STOPWORDS}
    # A made-up trigger word ("corgidog") in the prompt asks for that adapter; an ordinary one
    # ("running", "red bow": creators list poses and outfits there) says no more than a tag.
    trigger = [w for text in c.trigger_words for w in words(text) if w not in STOPWORDS]
    strong |= {stem(w) for w in trigger if w not in english}
    tags = {stem(w) for t in c.tags for w in words(t) if w not in STOPWORDS}
    tags |= {stem(w) for w in trigger if w in english}
    title = [
        stem(w)
        for w in words(c.title)
        if w not in STOPWORDS and w not in _TITLE_NOISE and not _VERSION.match(w) and len(w) > 1
    ]
    return strong, tags - strong, list(dict.fromkeys(title))


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
    for strong, tags, _title in cards.values():
        for s in strong | tags:
            df[s] = df.get(s, 0) + 1
    n = max(len(candidates), 1)

    def idf(s: str) -> float:
        return math.log(1.0 + n / (1.0 + df.get(s, 0)))

    pairs: list[tuple[float, int, int, str]] = []
    if phrase_hits is None:
        phrase_hits = search(list(phrases), k) if search is not None and phrases else [[] for _ in phrases]
    for p_no, phrase in enumerate(phrases):
        stems = [stem(w) for w in words(phrase) if w not in STOPWORDS]
        stem_set = set(stems)
        total = sum(idf(s) for s in stems) or 1.0
        ranks: dict[str, int] = {}
        for rank, (aid, _score, _comp) in enumerate(phrase_hits[p_no]):
            ranks.setdefault(aid, rank)
        style_phrase = any(w in STYLE_CUES for w in words(phrase))
        for c in candidates:
            strong, tags, title = cards[c.index]
            matched = [s for s in stems if s in strong]
            tag_matched = [s for s in stems if s not in strong and s in tags]
            if not matched and not tag_matched:
                continue
            lexical = (sum(idf(s) for s in matched) + TAG_WEIGHT * sum(idf(s) for s in tag_matched)) / total
            title_total = sum(idf(s) for s in title)
            precision = sum(idf(s) for s in title if s in stem_set) / title_total if title_total else 0.0
            rank = ranks.get(c.adapter_id)
            retrieval = 1.0 - rank / k if rank is not None else 0.0
            category = 1.0 if style_phrase and (c.category or "").lower() == "style" else 0.0
            score = (
                W_LEXICAL * lexical
                + W_PRECISION * precision
                + W_RETRIEVAL * retrieval
                + W_CATEGORY * category
            )
            where = "title/trigger" if matched else "tags"
            why = f"matches {', '.join(matched + tag_matched)!s} in {where}"
            if rank is not None:
                why += f"; hybrid rank {rank + 1} for {phrase!r}"
            pairs.append((round(score, 6), p_no, c.index, why))
    return pairs


def _spans_both(c: Candidate, a: str, b: str) -> bool:
    strong, _tags, _title = _card_stems(c)
    return any(stem(w) in strong for w in words(a) if w not in STOPWORDS) and any(
        stem(w) in strong for w in words(b) if w not in STOPWORDS
    )


def compose_offline(
    prompt: str,
    candidates: Sequence[Candidate],
    settings: ComposeSettings,
    search: SearchFn | None = None,
    phrase_hits: list[list[tuple[str, float, object]]] | None = None,
    eligible: EligibleFn | None = None,
) -> list[RawTopic]:
    """Deterministic proposal: phrases as topics (merged where one adapter spans two), best-matching
    candidates assigned above the threshold.

    Args:
        prompt: the user's prompt.
        candidates: the retrieved catalogue.
        settings: ``per_topic``, ``offline_threshold`` and ``topic_keep_ratio`` are used here; the rest
            by the rules.
        search: the hybrid retriever for phrase queries (None: lexical coverage and category only).
        phrase_hits: hits of :func:`search_texts`, in its order, already retrieved (saves a search call).
        eligible: which candidates may be assigned (default: all); see :data:`EligibleFn`.

    Returns:
        One :class:`RawTopic` per topic (possibly with no adapters), adapters best first, each with its
        score.
    """
    eligible = eligible or (lambda _c: True)
    spans = segment_spans(prompt)
    singles = list(dict.fromkeys(p.text for p in spans))
    merges = merge_candidates(prompt, spans)
    texts = list(dict.fromkeys(singles + [m.text for m in merges]))
    k = max(settings.top_k, 1)
    if phrase_hits is None:
        phrase_hits = search(texts, k) if search is not None and texts else [[] for _ in texts]
    by_cand = {c.index: c for c in candidates}
    pairs = score_pairs(texts, candidates, None, k, phrase_hits)
    per_text: dict[int, list[tuple[float, int, int, str]]] = {}
    for pair in pairs:
        per_text.setdefault(pair[1], []).append(pair)
    text_no = {t: i for i, t in enumerate(texts)}

    def best(t: str, spanning: tuple[str, str] | None = None) -> float:
        scores = [
            s
            for s, _p, idx, _w in per_text.get(text_no[t], [])
            if eligible(by_cand[idx]) and (spanning is None or _spans_both(by_cand[idx], *spanning))
        ]
        return max(scores, default=0.0)

    # Merge neighbours that one adapter spans, best merge first, never overlapping.
    chosen: list[Phrase] = []
    taken: set[int] = set()
    scored_merges = []
    for m in merges:
        left = next(p for p in spans if p.start == m.start)
        right = next(p for p in spans if p.end == m.end)
        value = best(m.text, (left.text, right.text))
        if value >= settings.offline_threshold and value >= max(best(left.text), best(right.text)):
            scored_merges.append((-value, m.start, m, left, right))
    for _neg, _start, m, left, right in sorted(scored_merges, key=lambda x: (x[0], x[1])):
        if spans.index(left) in taken or spans.index(right) in taken:
            continue
        taken.update({spans.index(left), spans.index(right)})
        chosen.append(m)
    topics_spans = sorted(chosen + [p for i, p in enumerate(spans) if i not in taken], key=lambda p: p.start)
    topic_texts = list(dict.fromkeys(p.text for p in topics_spans))

    topics = [RawTopic(topic=t) for t in topic_texts]
    topic_of_text = {t: i for i, t in enumerate(topic_texts)}
    floor = {t: settings.topic_keep_ratio * best(t) for t in topic_texts}
    ranked = [(s, topic_of_text[texts[p]], idx, why) for s, p, idx, why in pairs if texts[p] in topic_of_text]
    # Best score first; ties broken by topic order, then retrieval order: fully deterministic.
    ranked.sort(key=lambda p: (-p[0], p[1], p[2]))
    used: set[int] = set()
    used_models: set[str] = set()
    for score, t_no, idx, why in ranked:
        if score < settings.offline_threshold:
            break
        topic = topics[t_no]
        if score < floor[topic.topic] and eligible(by_cand[idx]):
            continue
        # Propose a few more than the cap: the rules drop (and explain) the excess, so an adapter the
        # rules reject (a character nobody asked for) does not cost its topic a slot. One version of a
        # model at most: two versions of one LoRA are the same adapter twice.
        model = model_key(by_cand[idx].adapter_id)
        if idx in used or model in used_models or len(topic.adapters) >= settings.per_topic + PROPOSAL_SLACK:
            continue
        used.add(idx)
        used_models.add(model)
        topic.adapters.append(RawAssignment(index=idx, reason=f"{why} (score {score:.2f})", score=score))
    return topics
