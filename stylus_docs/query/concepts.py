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
punctuation. Measured on the developer half (``scripts/eval_retrieval.py --grid``, tuning part): Stylus
recall@10 0.680 → 0.708 at weight 0.25 with recall@150 unchanged (0.925 → 0.926); 0.5 and 1 lift recall@10
more but cost recall@150, and a reciprocal-rank fusion of per-concept rankings did not carry over from the
tuning part to the validation part. Tag-list prompts (creators' own, :func:`learned.gate`) are left alone:
their segments already are concepts, and the learned parts handle them.
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
_BREAK = re.compile(r"[^\w\s'-]+")  # punctuation ends a concept
_WORD = re.compile(r"[^\W_][\w'-]*")


def concepts(text: str, max_concepts: int = MAX_CONCEPTS) -> list[str]:
    """The concept phrases of ``text``, in order, without repeats (at most ``max_concepts``).

    >>> concepts("A small dog eating a treat next to a couple of knitted hats.")
    ['small dog', 'treat', 'knitted hats']
    """
    out: list[str] = []
    for piece in _BREAK.split(text.lower()):
        run: list[str] = []
        for word in _WORD.findall(piece):
            # -ing verbs ("eating", "holding") join two concepts rather than name one; numbers count.
            if word in _STOP or word.isdigit() or (word.endswith("ing") and len(word) > 5):
                if run:
                    out.append(" ".join(run))
                run = []
            else:
                run.append(word)
        if run:
            out.append(" ".join(run))
    unique = list(dict.fromkeys(c for c in out if len(c) > 1))
    return unique[:max_concepts]
