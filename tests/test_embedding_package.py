"""stylus_docs.embedding gives the texts and vectors of the modules it replaced, and imports no query code.

``fixtures/embedding_v3_reference.json`` was written by ``stylus_docs/embed.py`` and
``stylus_docs/query/encoder.py`` just before they moved here (v3 views, NumpyMiniLM vectors).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stylus_docs.embedding import (
    AdapterViews,
    Embedder,
    NumpyMiniLM,
    embed_cards,
    embed_views,
    embedder_info,
    load_query_embedder,
)
from stylus_docs.errors import FatalError
from stylus_docs.records import AdapterCard, ExampleImage

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "embedding_v3_reference.json").read_text())


def _matrix(blob: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(blob), dtype="<f4").reshape(-1, REFERENCE["dim"])


@pytest.fixture(scope="module")
def encoder() -> NumpyMiniLM:
    return NumpyMiniLM()


def test_views_are_the_old_texts() -> None:
    for card, want in zip(REFERENCE["cards"], REFERENCE["views"], strict=True):
        assert AdapterViews.of_row(card) == AdapterViews(**want)
    assert embedder_info("minilm").to_manifest() == REFERENCE["manifest"]


def test_card_and_query_vectors_are_the_old_ones(encoder: NumpyMiniLM) -> None:
    # Same texts through the same encoder: the vectors agree to float32 rounding (bit for bit on the machine
    # that wrote the fixture; another CPU's BLAS may round the last bit differently).
    np.testing.assert_allclose(embed_cards(encoder, REFERENCE["cards"]), _matrix(REFERENCE["card_vectors"]),
                               rtol=0, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(encoder.embed(REFERENCE["queries"]), _matrix(REFERENCE["query_vectors"]),
                               rtol=0, atol=1e-6)  # fmt: skip


def test_build_cards_and_table_rows_embed_alike(encoder: NumpyMiniLM) -> None:
    row = REFERENCE["cards"][0]
    card = AdapterCard(
        adapter_id="c:1@1", source="civitai", model_id="1", version_id="1", title=row["title"], type="LORA",
        tags=row["tags"], trigger_words=row["trigger_words"], refined_description=row["refined_description"],
        images=[ExampleImage(adapter_id="c:1@1", image_id=str(i), prompt=p)
                for i, p in enumerate(row["example_prompts"])],
    )  # fmt: skip
    assert AdapterViews.of_card(card) == AdapterViews.of_row(row)
    np.testing.assert_array_equal(embed_cards(encoder, [card]), embed_cards(encoder, [row]))
    assert embed_views(encoder, []).shape == (0, 0)


def test_numpy_minilm_is_an_embedder(encoder: NumpyMiniLM) -> None:
    emb: Embedder = encoder
    assert emb.info == embedder_info("minilm")
    vecs = emb.embed(["a", "b c"])
    assert vecs.dtype == np.float32 and vecs.shape == (2, emb.info.dim)
    assert isinstance(load_query_embedder(REFERENCE["manifest"]), NumpyMiniLM)
    with pytest.raises(FatalError, match="cannot load the release's embedder"):
        load_query_embedder({"name": "word2vec", "model": "w2v", "dim": 300})


def test_importing_embedding_loads_no_query_code_and_no_heavy_stack() -> None:
    code = (
        "import sys, stylus_docs.embedding; "
        "bad = [m for m in sys.modules if m.startswith('stylus_docs.query') or m.split('.')[0] in "
        "('torch', 'transformers', 'sentence_transformers', 'openai', 'open_clip')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
