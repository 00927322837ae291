"""The concept boost of sentence-shaped queries (stylus_docs/query/concepts.py) on a real Parquet release."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stylus_docs.embedding import NumpyMiniLM
from stylus_docs.errors import FatalError
from stylus_docs.query import SearchConfig, open_release
from stylus_docs.query.concepts import CONCEPT_WEIGHT, MAX_CONCEPTS, concept_spans, concepts

CAPTION = "A short-legged dog sitting next to a brick wall covered in spray paint."


@pytest.fixture(scope="module")
def encoder() -> NumpyMiniLM:
    return NumpyMiniLM()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A white tour bus on a street in a city.", ["white tour bus", "street", "city"]),
        (
            "A small dog eating a treat next to a couple of knitted hats.",
            ["small dog", "treat", "knitted hats"],
        ),
        ("A plate of meat, potatoes and 2 eggs", ["plate", "meat", "potatoes", "eggs"]),
        ("Two men. Two men!", ["men"]),  # repeats once
        ("the of and", []),
        ("", []),
    ],
)
def test_concepts_are_the_content_word_runs(text: str, expected: list[str]) -> None:
    assert concepts(text) == expected


def test_concepts_are_capped() -> None:
    text = " and ".join(f"thing{i}" for i in range(20))
    assert concepts(text) == [f"thing{i}" for i in range(MAX_CONCEPTS)]
    assert concepts(text, max_concepts=2) == ["thing0", "thing1"]


def test_a_caption_ranks_by_cosine_plus_its_best_concept(docs: Path, encoder: NumpyMiniLM) -> None:
    release = open_release(docs)
    hits = release.search(CAPTION, k=len(release), include_nsfw=True)
    spans = concept_spans(CAPTION)
    assert len(spans) >= 3
    q = encoder.encode([CAPTION])[0]
    _, c = encoder.embed_spans(CAPTION, [(a, b) for _, a, b in spans])  # pooled from the caption's pass
    dense = release.embeddings @ q
    best = (release.embeddings @ c.T).max(axis=1)
    for h in hits:
        assert h.dense == pytest.approx(float(dense[h.row]), abs=1e-5)  # still the plain cosine
        assert h.concept == pytest.approx(float(best[h.row]), abs=1e-5)
    # The dense ranking orders by cosine + weight x best concept cosine, not by the cosine alone.
    boosted = dense + CONCEPT_WEIGHT * best
    by_rank = sorted((h for h in hits if h.dense_rank), key=lambda h: h.dense_rank)
    assert [h.row for h in by_rank] == list(np.argsort(-boosted, kind="stable")[: len(by_rank)])
    plain = open_release(docs, config=replace(release.config, concept_weight=0.0))
    for h in plain.search(CAPTION, k=len(release), include_nsfw=True):
        assert h.concept == 0.0
        assert h.dense_rank == int((dense > dense[h.row]).sum()) + 1


def test_tag_lists_get_no_concepts(docs: Path, encoder: NumpyMiniLM) -> None:
    """Creators' tag lists are left to the learned parts: no boost, the dense score is the cosine."""
    release = open_release(docs)
    text = "masterpiece, best quality, corgidog, sitting on grass, sunny"
    ((d, _),) = release.score_vectors([text])
    assert np.allclose(d, release.embeddings @ encoder.encode([text])[0], atol=1e-5)
    assert all(h.concept == 0.0 for h in release.search(text, k=5, include_nsfw=True))


def test_score_vectors_turns_the_boost_on_and_off(docs: Path, encoder: NumpyMiniLM) -> None:
    release = open_release(docs)
    ((boosted, lex_b),) = release.score_vectors([CAPTION])
    ((plain, lex_p),) = release.score_vectors([CAPTION], concepts=False)
    q = encoder.encode([CAPTION])[0]
    assert np.allclose(plain, release.embeddings @ q, atol=1e-5)
    _, c = encoder.embed_spans(CAPTION, [(a, b) for _, a, b in concept_spans(CAPTION)])
    best = (release.embeddings @ c.T).max(axis=1)
    assert np.allclose(boosted - plain, CONCEPT_WEIGHT * best, atol=1e-5)
    assert not np.allclose(boosted, plain)
    assert np.array_equal(lex_b, lex_p)  # the BM25 side is untouched


def test_a_negative_weight_is_refused() -> None:
    with pytest.raises(FatalError, match="concept_weight"):
        SearchConfig(concept_weight=-0.1)


def test_concept_spans_point_into_the_text() -> None:
    text = "Two Young MEN wearing glasses, holding a white frisbee."
    spans = concept_spans(text)
    assert [p for p, _, _ in spans] == ["young men", "glasses", "white frisbee"]
    assert [text[a:b] for _, a, b in spans] == ["Young MEN", "glasses", "white frisbee"]


def test_span_vectors_come_from_the_same_pass(encoder: NumpyMiniLM) -> None:
    """embed_spans: the text's vector is embed()'s; a span vector is unit length and differs from the
    phrase embedded alone (it is read in context); a span with no word piece is zero."""
    whole, vecs = encoder.embed_spans(CAPTION, [(2, 7), (0, 0)])
    assert np.allclose(whole, encoder.encode([CAPTION])[0], atol=1e-6)
    assert np.linalg.norm(vecs[0]) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(vecs[0], encoder.encode([CAPTION[2:7]])[0], atol=1e-3)
    assert np.all(vecs[1] == 0.0)


def test_other_embedders_embed_the_concepts_alone(docs: Path, encoder: NumpyMiniLM) -> None:
    """An embedder without embed_spans (OpenAI, CLIP) gets each phrase embedded on its own."""

    class Plain:
        info = encoder.info

        def embed(self, texts):
            return encoder.embed(texts)

    release = open_release(docs, embedder=Plain())
    hits = release.search(CAPTION, k=3, include_nsfw=True)
    phrases = concepts(CAPTION)
    best = (release.embeddings @ encoder.encode(phrases).T).max(axis=1)
    for h in hits:
        assert h.concept == pytest.approx(float(best[h.row]), abs=1e-5)
