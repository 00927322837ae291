"""Ranking, filters, embedder checks and the BM25 index cache of stylus_docs.query (real Parquet, DuckDB)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from stylus_docs.embedding import EmbedderInfo, NumpyMiniLM
from stylus_docs.errors import FatalError
from stylus_docs.query import SearchConfig, open_release
from tests.release_fixture import EMBEDDER_INFO, SAMPLE, sample_rows, write_release


@pytest.fixture(scope="module")
def release(docs: Path):
    rel = open_release(docs)
    yield rel
    rel.close()


def ids(hits) -> list[str]:
    return [h.adapter_id for h in hits]


@pytest.mark.parametrize("entry", SAMPLE, ids=[s[0] for s in SAMPLE])
def test_trigger_word_query_finds_its_adapter(release, entry) -> None:
    aid, trigger = entry[0], entry[6][0]
    hits = release.search(f"{trigger}, highly detailed, best quality", k=5, include_nsfw=True)
    assert hits[0].adapter_id == aid
    assert hits[0].bm25_rank == 1 and hits[0].bm25 > 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a small puppy with short legs", "civitai:103@1003"),
        ("an old automobile with shiny chrome", "hf:acme/retro-cars@abc123"),
        ("a man floating in orbit around our planet", "civitai:109@1009"),
        ("a giant reptile with wings burning a fortress", "civitai:102@1002"),
    ],
)
def test_natural_language_query_finds_semantic_match(docs, release, query, expected) -> None:
    assert release.search(query, k=3)[0].adapter_id == expected
    dense_only = open_release(docs, config=SearchConfig(fusion="dense"))
    top = dense_only.search(query, k=3)[0]
    assert top.adapter_id == expected and top.dense_rank == 1


def test_score_components_are_consistent(release) -> None:
    hits = release.search("a dragon breathing fire on a castle", k=10)
    q = NumpyMiniLM().encode(["a dragon breathing fire on a castle"])[0]
    for h in hits:
        assert h.dense == pytest.approx(float(release.embeddings[h.row] @ q), abs=1e-5)
        assert release.ids[h.row] == h.adapter_id
        cfg = release.config
        expected = sum(
            w / (kk + r)
            for w, kk, r in (
                (h.dense_weight, cfg.rrf_k, h.dense_rank),
                (h.bm25_weight, cfg.bm25_rrf_k, h.bm25_rank),
            )
            if r is not None
        )
        assert h.dense_weight + h.bm25_weight == pytest.approx(2.0, abs=1e-5)  # adaptive: shares of 2
        assert h.score == pytest.approx(expected, abs=1e-7)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(set(ids(hits))) == len(hits)
    assert {"title", "base_model", "recommended_weight"} <= set(hits[0].fields)


def test_embedding_matrix_is_the_parquet_column(release) -> None:
    table = pq.read_table(release.files, columns=["adapter_id", "embedding"])
    expected = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert release.embeddings.shape == (len(SAMPLE), 384) and release.embeddings.dtype == np.float32
    np.testing.assert_array_equal(release.embeddings, expected)
    assert list(release.ids) == table.column("adapter_id").to_pylist()


def test_nsfw_excluded_by_default(release) -> None:
    assert "civitai:107@1007" not in ids(release.search("bdrlng lace lingerie", k=20))
    assert ids(release.search("bdrlng lace lingerie", k=1, include_nsfw=True)) == ["civitai:107@1007"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"base_model": "SDXL 1.0"}, {"civitai:105@1005"}),
        ({"base_model": ["SDXL 1.0", "Pony"]}, {"civitai:105@1005"}),
        ({"type": "LoCon"}, {"civitai:106@1006"}),
        ({"category": ["style"]}, {"civitai:104@1004", "civitai:106@1006"}),
        ({"category": "clothing", "include_nsfw": True}, {"civitai:101@1001", "civitai:107@1007"}),
        ({"min_downloads": 9000}, {"civitai:102@1002", "civitai:105@1005"}),
        ({"where": "downloads < 100"}, {"hf:acme/retro-cars@abc123", "civitai:109@1009"}),
        ({"where": "source = 'hf'", "min_downloads": 10}, {"hf:acme/retro-cars@abc123"}),
    ],
)
def test_filters_keep_exactly_the_matching_adapters(release, filters, expected) -> None:
    assert set(ids(release.search("anything at all", k=50, **filters))) == expected


def test_filters_apply_to_batch_and_lexical_side(release) -> None:
    # The query matches the dragon lexically, but the filter must win over both rankings.
    out = release.search_batch(["drgnfire dragon", "cybrcty neon"], k=50, base_model="SDXL 1.0")
    assert [ids(h) for h in out] == [["civitai:105@1005"], ["civitai:105@1005"]]


@pytest.mark.parametrize(
    "evil",
    [
        "SD 1.5' OR '1'='1",
        "SD 1.5') OR true --",
        "x'); DROP VIEW adapters; --",
        'SD 1.5" OR 1=1 --',
    ],
)
def test_sql_injection_in_filter_values_has_no_effect(release, evil) -> None:
    for key in ("base_model", "category", "type"):
        assert release.search("dragon", k=50, **{key: evil}) == []
    assert release.sql("SELECT count(*) FROM adapters")[1] == [(len(SAMPLE),)]
    assert len(release.search("dragon", k=50)) == len(SAMPLE) - 1  # still works, NSFW excluded


def test_where_cannot_read_outside_the_release(release, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n", encoding="utf-8")
    for expr in (
        "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0",
        f"(SELECT count(*) FROM read_csv('{secret}')) > 0",
        "true); COPY (SELECT 1) TO '/tmp/x.csv'; SELECT (1",
    ):
        with pytest.raises(FatalError):
            release.search("dragon", k=5, where=expr)


def test_unknown_filter_and_bad_k_are_refused(release) -> None:
    with pytest.raises(FatalError, match="unknown filter"):
        release.search("dragon", basemodel="SD 1.5")
    with pytest.raises(FatalError, match="k must be"):
        release.search("dragon", k=0)


def test_batch_equals_single_queries(release) -> None:
    queries = ["grffti mural", "a small puppy", "ink wash hanfu", "zzzz unknownword"]
    batch = release.search_batch(queries, k=5)
    for q, hits in zip(queries, batch, strict=True):
        single = release.search(q, k=5)
        assert ids(single) == ids(hits)
        assert [h.score for h in single] == pytest.approx([h.score for h in hits])


class _OtherEmbedder:
    def __init__(self, model: str = "acme/other-embedder", dim: int = 384) -> None:
        self.info = EmbedderInfo(name="acme", model=model, version="v3", dim=dim)

    def embed(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - never reached
        raise AssertionError("a mismatched embedder must not be used")


def test_embedder_mismatch_is_refused(docs: Path, tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="embedder mismatch"):
        open_release(docs, embedder=_OtherEmbedder())
    # A release embedded by another model: the default query embedder is refused at first search.
    other = tmp_path / "docs"
    info = dict(EMBEDDER_INFO, name="acme-embedder", model="acme/other-embedder")
    write_release(other, sample_rows(), embedder_info=info)
    rel = open_release(other)
    with pytest.raises(FatalError, match="other-embedder"):
        rel.search("dragon")
    # Same model, other dimension: refused at open.
    with pytest.raises(FatalError, match="embedder mismatch"):
        open_release(docs, embedder=_OtherEmbedder(EMBEDDER_INFO["model"], 768))


def test_bad_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="not found"):
        open_release(tmp_path / "nope")
    build = write_release(tmp_path / "docs")
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["schema_version"] = "stylusdocs.v0"
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FatalError, match="schema_version"):
        open_release(tmp_path / "docs")


def test_bm25_index_is_stored_by_release_content_and_rebuilt_on_change(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    rows = sample_rows()
    b1 = write_release(docs, rows, build_id="20260101T000000Z-aaaaaa")
    rel = open_release(docs)
    assert rel.search("grffti", k=1)[0].adapter_id == "civitai:104@1004"
    stored = rel.lexical.location
    assert stored is not None and stored.parent == b1 / "index"
    # Reopening loads the stored index (same location) and ranks the same.
    again = open_release(docs)
    assert again.search("grffti", k=1)[0].adapter_id == "civitai:104@1004"
    assert again.lexical.location == stored
    # A new build whose text changed: a new key, and the new text is searchable.
    changed = [dict(r) for r in rows]
    changed[0]["trigger_words"] = ["newtrigger"]
    b2 = write_release(docs, changed, build_id="20260102T000000Z-bbbbbb")
    rel2 = open_release(docs)
    assert rel2.build_dir == b2.resolve()
    assert rel2.search("newtrigger", k=1)[0].adapter_id == changed[0]["adapter_id"]
    assert rel2.lexical.location.name != stored.name


def test_unwritable_build_dir_falls_back_to_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    build = write_release(tmp_path / "docs")
    (build / "index").write_text("not a directory")  # the index folder cannot be created
    rel = open_release(tmp_path / "docs")
    assert rel.search("corgidog", k=1)[0].adapter_id == "civitai:103@1003"
    assert rel.lexical.location is not None and (tmp_path / "cache") in rel.lexical.location.parents


def test_past_the_head_a_model_appears_once(tmp_path: Path) -> None:
    """Sibling versions crowd the head only: past `one_version_after`, each model's best version alone."""
    base = sample_rows()
    dragon = next(r for r in base if r["adapter_id"] == "civitai:102@1002")
    rows = list(base)
    for v in range(2, 16):  # fourteen more versions of the dragon model, same card, distinct vectors
        rows.append(dict(dragon, adapter_id=f"civitai:102@{1002 + 1000 * v}", version_id=str(1002 + 1000 * v),
                         content_hash=f"h{v}", version_name=f"v{v}"))  # fmt: skip
    docs = tmp_path / "docs"
    write_release(docs, rows)
    query = "a giant reptile with wings burning a fortress"
    collapsed = open_release(docs, config=SearchConfig(one_version_after=3, every_version_share=None)).search(
        query, k=len(rows), include_nsfw=True
    )
    dragon_hits = [h.adapter_id for h in collapsed if h.adapter_id.startswith("civitai:102@")]
    # Three in the head (all versions rank first: same card), none of the other twelve afterwards.
    assert [h.adapter_id.startswith("civitai:102@") for h in collapsed[:3]] == [True, True, True]
    assert len(dragon_hits) == 3
    assert len(collapsed) == len(base) + 2  # every other adapter is still there
    everything = open_release(docs, config=SearchConfig(one_version_after=None)).search(
        query, k=len(rows), include_nsfw=True
    )
    assert len(everything) == len(rows)
    assert sum(h.adapter_id.startswith("civitai:102@") for h in everything) == 15
    with pytest.raises(FatalError):
        SearchConfig(one_version_after=-1)


def test_a_lexically_peaked_query_keeps_every_version(tmp_path: Path) -> None:
    """`every_version_share`: a query at or above that BM25 share is not collapsed; below it, it is."""
    base = sample_rows()
    dragon = next(r for r in base if r["adapter_id"] == "civitai:102@1002")
    rows = list(base) + [
        dict(dragon, adapter_id=f"civitai:102@{1002 + 1000 * v}", version_id=str(1002 + 1000 * v),
             content_hash=f"h{v}", version_name=f"v{v}")
        for v in range(2, 16)
    ]  # fmt: skip
    docs = tmp_path / "docs"
    write_release(docs, rows)
    query = "a dragon breathing fire on a castle"
    plain = open_release(docs, config=SearchConfig(one_version_after=3)).search(
        query, k=len(rows), include_nsfw=True
    )
    share = plain[0].bm25_weight / 2.0  # this query's BM25 confidence share (bm25_weight 1 by default)
    assert 0.0 < share < 1.0

    def dragons(every_version_share: float) -> int:
        cfg = SearchConfig(one_version_after=3, every_version_share=every_version_share)
        hits = open_release(docs, config=cfg).search(query, k=len(rows), include_nsfw=True)
        return sum(h.adapter_id.startswith("civitai:102@") for h in hits)

    assert dragons(share - 1e-6) == 15  # peaked enough: every version stays
    assert dragons(min(1.0, share + 1e-6)) == 3  # not peaked enough: collapsed past the head
    with pytest.raises(FatalError):
        SearchConfig(every_version_share=1.5)
