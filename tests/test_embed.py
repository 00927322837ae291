"""Embedders: MiniLM (offline, CPU), OpenAI-compatible (loopback fake), clip (clear failure offline)."""

from __future__ import annotations

import numpy as np
import pytest
from fakes.openai_server import fake_vector, start_fake_openai, stop

from stylus_docs.embedding import (
    card_text,
    embed_cards,
    embedder_info,
    l2_normalize,
    load_embedder,
    name_text,
)
from stylus_docs.errors import FatalError


def test_template_has_title_description_tags_and_triggers() -> None:
    text = card_text("Ink", "Ink drawings.", ["style", "license:mit"], ["inkdraw"])
    assert text.startswith(
        "Convert Stable Diffusion finetuned adapter description into an embedding for search:"
    )
    assert "Title: Ink;" in text and "Description: Ink drawings.;" in text
    assert "Tags: style;" in text and "Trigger words: inkdraw;" in text and "license" not in text


def test_minilm_batched_normalized_and_stable() -> None:
    emb = load_embedder("minilm", batch_size=4)
    texts = [
        f"adapter number {i} paints {w}" for i, w in enumerate(["cats", "dogs", "cars", "ink", "sea"] * 3)
    ]
    vecs = emb.embed(texts)
    assert vecs.dtype == np.float32 and vecs.shape == (15, 384) == (len(texts), emb.info.dim)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb.embed(texts[3:5]), vecs[3:5], atol=1e-5)  # batching does not change vectors
    q = emb.embed(["a cat"])[0]
    assert float(q @ emb.embed(["a photo of a cat"])[0]) > float(q @ emb.embed(["a red sports car"])[0])
    assert emb.info.id == "minilm:all-MiniLM-L6-v2@v3"


def test_card_vectors_sum_the_full_and_the_short_view() -> None:
    emb = load_embedder("minilm", batch_size=8)
    cards = [
        {"title": "Corgi Dog", "refined_description": "A fluffy corgi with short legs.", "tags": ["animal"],
         "trigger_words": ["corgi"]},
        {"title": "Ink Wash", "refined_description": "Chinese ink painting.", "tags": ["style", "region:us"],
         "trigger_words": []},
    ]  # fmt: skip
    vecs = embed_cards(emb, cards)
    full = emb.embed(
        [card_text(c["title"], c["refined_description"], c["tags"], c["trigger_words"]) for c in cards]
    )
    short = emb.embed([name_text(c["title"], c["tags"], c["trigger_words"]) for c in cards])
    assert name_text("Ink Wash", ["style", "region:us"], []) == "Ink Wash. style. ."
    np.testing.assert_allclose(vecs, l2_normalize(full + short), atol=1e-5)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs, l2_normalize(full), atol=1e-3)  # the short view really contributes
    q = emb.embed(["a corgi on the wall"])[0]
    assert float(vecs[0] @ q) > float(vecs[1] @ q)


def test_example_prompts_are_the_third_view() -> None:
    """unit(unit(template + name) + 0.5 · examples); cards without example prompts keep two views."""
    from stylus_docs.embedding import EXAMPLES_WEIGHT, examples_text

    emb = load_embedder("minilm", batch_size=8)
    prompts = ["masterpiece, 1girl, hanfu, ink wash <lora:hanfu_v2:0.8>", "", "a scholar in hanfu, ink wash"]
    card = {"title": "Hanfu", "refined_description": "Traditional Chinese dress.", "tags": ["clothing"],
            "trigger_words": ["hnfu"], "example_prompts": prompts}  # fmt: skip
    bare = dict(card, example_prompts=[])
    assert examples_text(prompts) == "masterpiece, 1girl, hanfu, ink wash \na scholar in hanfu, ink wash"
    assert examples_text([]) == ""
    with_ex, without = embed_cards(emb, [card, bare])
    two = l2_normalize(
        emb.embed([card_text("Hanfu", "Traditional Chinese dress.", ["clothing"], ["hnfu"])])
        + emb.embed([name_text("Hanfu", ["clothing"], ["hnfu"])])
    )[0]
    np.testing.assert_allclose(without, two, atol=1e-5)
    ex = emb.embed([examples_text(prompts)])[0]
    np.testing.assert_allclose(with_ex, l2_normalize(two + EXAMPLES_WEIGHT * ex)[0], atol=1e-5)
    # The examples pull the vector towards what people type with the adapter.
    q = emb.embed(["a scholar in ink wash style"])[0]
    assert float(with_ex @ q) > float(without @ q)


def test_openai_embedder_against_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    server, base_url = start_fake_openai(embed_dim=3072)
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        emb = load_embedder("openai", batch_size=2)
        vecs = emb.embed(["a", "b", "c"])
        assert vecs.shape == (3, 3072)
        assert np.allclose(vecs[2], fake_vector("c", 3072), atol=1e-6)
        bodies = server.requests_to("/embeddings")
        assert [b["input"] for b in bodies] == [["a", "b"], ["c"]]
        assert bodies[0]["model"] == "text-embedding-3-large"
    finally:
        stop(server)


def test_clip_without_local_weights_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STYLUS_CLIP_WEIGHTS", raising=False)
    with pytest.raises(FatalError, match="local open_clip weights"):
        load_embedder("clip")
    assert embedder_info("clip").dim == 512


def test_unknown_and_normalize() -> None:
    with pytest.raises(FatalError):
        load_embedder("word2vec")
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]]) and out.dtype == np.float32
