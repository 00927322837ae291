"""The concepts of a natural-language prompt, for the dense side's concept boost.

Stylus' composer splits a prompt into concepts ("a small dog eating a treat next to knitted hats" →
*small dog*, *treat*, *knitted hats*) and picks an adapter per concept (``ranked_adapters`` in the
paper's COCO/Parti files maps each concept to its adapters). One cosine between the whole caption and a
card averages those concepts away: a dog adapter matches "small dog" far better than it matches the
sentence. So a sentence-shaped query also scores every card against each of its concepts, and the best
concept cosine is added to the caption's cosine at :data:`CONCEPT_WEIGHT`:

    dense'(card) = cos(query, card) + CONCEPT_WEIGHT · max_c cos(concept_c, card)

Concepts are found without a language model (none is available at query time, and the query budget is
milliseconds): the maximal runs of content words between function words, -ing verbs, numbers and
punctuation. A concept's vector is pooled from the caption's own encoder pass (the mean of the last layer's
states of its word pieces, ``NumpyMiniLM.embed_spans``), so the boost costs no extra encoder work; an
embedder without that (OpenAI, CLIP) embeds each phrase alone. Measured on the developer half
(``scripts/eval_retrieval.py --grid``, tuning part): Stylus recall@10 0.680 → 0.708 and recall@150
0.925 → 0.932 at weight 0.25 (phrases embedded alone: 0.707 / 0.926); weights 0.5 and 1 lift recall@10
more but cost recall@150, and a reciprocal-rank fusion of per-concept rankings did not carry over from
the tuning part to the validation part. Tag-list prompts (creators' own, :func:`learned.gate`) are left
alone: their segments already are concepts, and the learned parts handle them.
"""

from __future__ import annotations

import re

#: Weight of the best concept cosine added to the query's cosine (0.25: tuning part, see above).
CONCEPT_WEIGHT = 0.25
#: At most this many concepts per query (each costs one short embedding).
MAX_CONCEPTS = 6

# Function words that end a concept: articles, determiners, numerals, prepositions, conjunctions,
# pronouns, auxiliaries, and the position words of COCO captions ("in front of", "on top of").
_STOP = frozenset(
    """
    a an the this that these those some any each every all both no not two three four five six seven eight
    nine ten several many few lots lot couple group bunch pair of on in at to into onto over under above
    below behind beside besides near next by for from with without within through across along around
    inside outside beneath between up down off out against toward towards upon about after before during
    and or but nor while as than then so very too just also is are was were be been being am has have had
    do does did can could will would may might it its they them their there here he she his her him we us
    our you your i me my who whom whose which what where when how one other another others together front
    top side back middle far close
    """.split()
)
# A word (kept or a stop word) or a run of punctuation (which ends a concept).
_TOKEN = re.compile(r"(?P<word>[^\W_][\w'-]*)|(?P<punct>[^\w\s'-]+)")


def concept_spans(text: str, max_concepts: int = MAX_CONCEPTS) -> list[tuple[str, int, int]]:
    """The concepts of ``text`` as ``(phrase, start, end)``: the lower-cased phrase and its character span
    in ``text``; in order, the first occurrence of each phrase, at most ``max_concepts``."""
    out: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    run: list[re.Match[str]] = []

    def close() -> None:
        if run:
            phrase = " ".join(m.group().lower() for m in run)
            if len(phrase) > 1 and phrase not in seen:
                seen.add(phrase)
                out.append((phrase, run[0].start(), run[-1].end()))
            run.clear()

    for m in _TOKEN.finditer(text):
        word = m.group("word")
        low = word.lower() if word else ""
        # -ing verbs ("eating", "holding") join two concepts rather than name one; numbers count.
        if not word or low in _STOP or low.isdigit() or (low.endswith("ing") and len(low) > 5):
            close()
        else:
            run.append(m)
    close()
    return out[:max_concepts]


def concepts(text: str, max_concepts: int = MAX_CONCEPTS) -> list[str]:
    """The concept phrases of ``text``, in order, without repeats (at most ``max_concepts``).

    >>> concepts("A small dog eating a treat next to a couple of knitted hats.")
    ['small dog', 'treat', 'knitted hats']
    """
    return [phrase for phrase, _, _ in concept_spans(text, max_concepts)]
