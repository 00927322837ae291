"""Masks and the weight formula (STYLUS-NOTES.md §1.7)."""

from __future__ import annotations

import pytest

from stylus_docs.errors import FatalError
from stylus_docs.masks import adapter_weights, enumerate_masks, sample_masks, topic_sizes


def _topics(sizes, weights=None):
    out = []
    n = 0
    for t, size in enumerate(sizes):
        adapters = []
        for _ in range(size):
            w = None if weights is None else weights[n]
            adapters.append({"adapter_id": f"a{n}", "recommended_weight": w})
            n += 1
        out.append({"topic": f"t{t}", "adapters": adapters})
    return out


def test_one_hot_loras_crosses_every_subset():
    masks = enumerate_masks([1, 3, 2], "one_hot_loras")
    assert len(masks) == 64
    assert len(set(masks)) == 64
    assert masks[0] == ((False,), (False, False, False), (False, False))
    assert ((True,), (True, True, True), (True, True)) in masks


def test_all_and_one_hot_concepts():
    assert enumerate_masks([1, 3, 2], "all") == [((True,), (True, True, True), (True, True))]
    concepts = enumerate_masks([1, 3, 0, 2], "one_hot_concepts")
    assert len(concepts) == 8  # the empty topic does not double the count
    for m in concepts:
        for bits in m:
            assert len(set(bits)) <= 1  # a topic is wholly on or wholly off
    assert enumerate_masks([], "one_hot_loras") == [()]


def test_unknown_strategy_and_blowup_refused():
    with pytest.raises(FatalError):
        enumerate_masks([1], "random")
    with pytest.raises(FatalError):
        enumerate_masks([20], "one_hot_loras")


def test_weight_formula_divides_by_active_in_topic():
    topics = _topics([1, 3, 2], weights=[0.8, 1.0, 0.5, None, 0.6, 0.9])
    weights = adapter_weights(topics, ((True,), (True, False, True), (True, True)))
    assert weights == pytest.approx({"a0": 0.64, "a1": 0.4, "a3": 0.32, "a4": 0.24, "a5": 0.36})
    assert "a2" not in weights
    # configurable base weight
    assert adapter_weights(topics, ((True,), (False,) * 3, (False, False)), base_weight=1.0) == {"a0": 0.8}
    with pytest.raises(FatalError):
        adapter_weights(topics, ((True,),))


def test_sampling_is_seeded():
    masks = enumerate_masks(topic_sizes(_topics([2, 2])), "one_hot_loras")
    a = sample_masks(masks, 20, seed=7)
    assert a == sample_masks(masks, 20, seed=7)
    assert a != sample_masks(masks, 20, seed=8)
    assert all(m in masks for m in a)
