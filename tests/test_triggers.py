"""The trigger-word feature of the learned ranker (stylus_docs/query/triggers.py)."""

from __future__ import annotations

import pytest

from stylus_docs.query.triggers import MAX_TRIGGER_TOKENS, TriggerIndex


def test_a_trigger_matches_whole_in_any_order_and_spelling() -> None:
    index = TriggerIndex([["zhongli_(genshin_impact)"], ["Genshin"], ["red dress"], None, []])
    s = index.scores("masterpiece, Genshin Impact, ZHONGLI, 1boy")
    assert s[0] > 0 and s[1] > 0  # reordered and re-cased; "genshin" alone is a trigger of row 1
    assert s[2] == 0 and s[3] == 0 and s[4] == 0
    assert index.scores("masterpiece, zhongli, 1boy")[0] == 0  # two of its three tokens: no match
    assert index.scores("a woman in a red dress")[2] > 0
    assert not index.scores("").any()


def test_a_common_trigger_counts_less_than_a_rare_one() -> None:
    rows = [["1girl"] for _ in range(50)] + [["1girl", "aqua_(konosuba)"]]
    index = TriggerIndex(rows)
    common = index.scores("1girl, smile")
    both = index.scores("1girl, aqua (konosuba), smile")
    assert 0 < common[0] < both[50] <= 1.0
    assert both[50] == pytest.approx(1.0)  # a trigger of one row out of n has the largest IDF
    assert both[0] == pytest.approx(common[0])  # the strongest match counts, not the sum


def test_network_tags_and_sentences_are_not_triggers() -> None:
    long = " ".join(f"w{i}" for i in range(MAX_TRIGGER_TOKENS + 1))
    index = TriggerIndex([["styleabc"], [long]])
    assert index.scores("castle <lora:styleabc:0.8>")[0] == 0  # a tag naming the file is not a prompt word
    assert index.scores("castle, styleabc")[0] > 0
    assert index.scores(long)[1] == 0
