"""Masking schemes and adapter weights of Stylus (the paper, Luo et al., NeurIPS 2024: the composer's masks).

A composition has topics, each with 0–N adapters. A *mask* switches adapters on or off per topic; it is
a tuple with one tuple of booleans per topic. Three strategies, as in the reference code
(``stylus/utils/masking.py``):

* ``all`` – one mask, every adapter on (the reference default).
* ``one_hot_loras`` – for every topic every on/off subset of its adapters (empty subset included),
  crossed over topics: topic sizes {1, 3, 2} give 2·8·4 = 64 masks. This is what Stylus' evaluations use.
* ``one_hot_concepts`` – each non-empty topic is wholly on or wholly off (2^c masks).

The weight of an active adapter is ``recommended_weight × base_weight / active adapters in its topic``
(``base_weight`` 0.8 in the paper), so a lone adapter with the default weight 0.8 gets 0.64 and stacking
adapters in one topic does not saturate the image.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from stylus_docs.errors import FatalError

STRATEGIES: tuple[str, ...] = ("all", "one_hot_loras", "one_hot_concepts")
#: Multiplier of the recommended weight in the paper's formula.
DEFAULT_BASE_WEIGHT = 0.8
#: Recommended weight assumed when an adapter has none (the refiner's default).
DEFAULT_RECOMMENDED_WEIGHT = 0.8
#: Refuse to enumerate more masks than this (a composition with ~20 adapters in one topic would blow up).
MAX_MASKS = 1 << 16

Mask = tuple[tuple[bool, ...], ...]


def enumerate_masks(topic_sizes: Sequence[int], strategy: str = "all") -> list[Mask]:
    """Every mask of ``strategy`` for topics with ``topic_sizes`` adapters, in a fixed order.

    Args:
        topic_sizes: number of adapters of each topic (0 allowed: such a topic has the empty mask).
        strategy: one of :data:`STRATEGIES`.

    Returns:
        The masks; each has one boolean tuple per topic. The order is deterministic (all-off first for
        the subset strategies, like ``itertools.product([False, True], ...)`` in the reference).
    """
    if strategy not in STRATEGIES:
        raise FatalError(f"unknown mask strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    sizes = [int(n) for n in topic_sizes]
    if any(n < 0 for n in sizes):
        raise FatalError("topic sizes must be non-negative")
    if strategy == "all":
        return [tuple(tuple(True for _ in range(n)) for n in sizes)]
    if strategy == "one_hot_loras":
        total = 1
        for n in sizes:
            total *= 2**n
        if total > MAX_MASKS:
            raise FatalError(f"one_hot_loras would give {total} masks (limit {MAX_MASKS}); lower --per-topic")
        per_topic = [list(itertools.product((False, True), repeat=n)) for n in sizes]
    else:  # one_hot_concepts
        per_topic = [
            [tuple(False for _ in range(n)), tuple(True for _ in range(n))] if n else [()] for n in sizes
        ]
    return [tuple(combo) for combo in itertools.product(*per_topic)]


def sample_masks(masks: Sequence[Mask], count: int, seed: int) -> list[Mask]:
    """Draw ``count`` masks with replacement, reproducibly from ``seed`` (one mask per image).

    The reference draws ``random.choices`` without a seed; here the same seed always gives the same
    masks, so an image can be regenerated from its sidecar.
    """
    if not masks:
        raise FatalError("no masks to sample from")
    if count < 0:
        raise FatalError("count must be non-negative")
    rng = random.Random(int(seed))
    return [masks[rng.randrange(len(masks))] for _ in range(count)]


def topic_sizes(topics: Sequence[Mapping[str, Any]]) -> list[int]:
    """Adapter counts of the topics of a composition (``{"topic", "adapters": [...]}`` dicts)."""
    return [len(t.get("adapters") or []) for t in topics]


def adapter_weights(
    topics: Sequence[Mapping[str, Any]],
    mask: Mask,
    base_weight: float = DEFAULT_BASE_WEIGHT,
) -> dict[str, float]:
    """Weights of the adapters a mask switches on.

    Args:
        topics: the composition's topics; each adapter needs ``adapter_id`` and may give
            ``recommended_weight`` (None or missing → :data:`DEFAULT_RECOMMENDED_WEIGHT`).
        mask: one boolean tuple per topic, as from :func:`enumerate_masks`.
        base_weight: the 0.8 of the paper's formula.

    Returns:
        ``{adapter_id: recommended × base_weight / active_in_topic}`` for active adapters only, in
        composition order.
    """
    if len(mask) != len(topics):
        raise FatalError(f"mask has {len(mask)} topics but the composition has {len(topics)}")
    out: dict[str, float] = {}
    for topic, bits in zip(topics, mask, strict=True):
        adapters = list(topic.get("adapters") or [])
        if len(bits) != len(adapters):
            raise FatalError(
                f"mask for topic {topic.get('topic')!r} has {len(bits)} bits for {len(adapters)} adapters"
            )
        active = [a for a, on in zip(adapters, bits, strict=True) if on]
        for adapter in active:
            rec = adapter.get("recommended_weight")
            rec = DEFAULT_RECOMMENDED_WEIGHT if rec is None else float(rec)
            out[str(adapter["adapter_id"])] = rec * float(base_weight) / len(active)
    return out


def mask_to_json(mask: Mask) -> list[list[bool]]:
    """A mask as nested JSON lists (for sidecars)."""
    return [list(bits) for bits in mask]
