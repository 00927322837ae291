"""Learned fusion (issue 16): fitted by the build on the catalogue's own example prompts, shipped in the
release (listed, hashed), loaded by the query module, optional, reused by incremental rebuilds.

Real in-process Beam builds over a generated 2023-era snapshot, the real MiniLM query encoder, the real
evaluation split and hold-out of ``scripts/eval_retrieval.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import model_2023, snapshot

from pipelines.build import BuildConfig, run_build
from stylus_docs import release
from stylus_docs.cli import main as cli_main
from stylus_docs.embedding import EmbedderInfo, canonical_model_name
from stylus_docs.errors import FatalError
from stylus_docs.query import SearchConfig, open_release
from stylus_docs.query import learned as lf
from stylus_docs.query.core import fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import eval_retrieval as ev  # noqa: E402

THEMES = [
    "dragon", "castle", "forest", "robot", "samurai", "mermaid", "desert", "neon", "winter", "pirate",
    "garden", "wizard", "knight", "ocean", "galaxy", "cyberpunk", "anime", "watercolor", "steampunk",
    "temple", "volcano", "lantern", "tiger", "owl", "ruins", "cathedral", "jungle", "glacier", "bamboo",
    "meadow",
]  # fmt: skip
FILLER = ["masterpiece", "best quality", "detailed", "1girl", "portrait", "cinematic lighting", "8k", "soft"]
N_MODELS = 70
N_PROMPTS = 10  # > MAX_EXAMPLE_PROMPTS: the last prompts are never in the card vector


def _catalogue(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for m in range(1, N_MODELS + 1):
        themes = rng.sample(THEMES, 3)
        trigger = f"trg{m:03d}x"
        name = f"{themes[0].title()} {themes[1]} style {m}"
        item = model_2023(m, m * 10, name, tags=themes[:2] + ["style"], file_name=f"file{m:03d}.safetensors")
        ver = item["modelVersions"][0]
        ver["trainedWords"] = [trigger]
        item["stats"]["downloadCount"] = rng.randrange(10, 100_000)
        template = copy.deepcopy(ver["images"][0])
        ver["images"] = []
        for i in range(N_PROMPTS):
            words = rng.sample(themes, 2) + rng.sample(FILLER, 3)
            if rng.random() < 0.5:
                words.insert(0, trigger)
            img = copy.deepcopy(template)
            img["id"] = m * 1000 + i
            img["url"] = f"https://image.civitai.com/x/{m:08d}-bbbb-cccc-dddd-{i:012d}/width=450/{i}.jpeg"
            img["meta"] = {**img["meta"], "prompt": ", ".join(words) + f", take {i} <lora:file{m:03d}:0.7>"}
            ver["images"].append(img)
        items.append(item)
    return items


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A release built from the catalogue minus the evaluation's held-out images (seed 0)."""
    tmp = tmp_path_factory.mktemp("learned")
    items = _catalogue()
    held = ev.hold_out(items, 0)
    raw = snapshot(tmp / "raw", items)
    docs = tmp / "docs"
    manifest = run_build(BuildConfig(raw=[str(raw)], out=str(docs), progress=False))
    return {"tmp": tmp, "items": items, "held": held, "docs": docs, "manifest": manifest, "raw": raw}


def _learned_entry(manifest: dict) -> dict:
    entries = [e for e in manifest["files"] if e["table"] == "learned"]
    assert len(entries) == 1
    return entries[0]


def test_split_is_by_model_and_deterministic() -> None:
    ids = [str(i) for i in range(1, 2001)]
    parts = [ev.split_part(i) for i in ids]
    assert parts == [ev.split_part(i) for i in ids]  # no state, no seed
    share = parts.count("tuning") / len(parts)
    assert 0.65 < share < 0.75
    # The documented rule, literally: sha256(model id) mod 10 < 7 is the tuning part.
    for i in ids[:50]:
        expect = "tuning" if int(hashlib.sha256(i.encode()).hexdigest(), 16) % 10 < 7 else "validation"
        assert ev.split_part(i) == expect
    # Queries go by the model of their target: every version of a model falls in one part.
    queries = [{"target": f"civitai:{m}@{v}"} for m in (5, 6, 7, 8) for v in (1, 2, 3)]
    by_model: dict[str, set[str]] = {}
    for q in queries:
        model = ev._model(q["target"])
        by_model.setdefault(model, set()).add(ev.split_part(model))
    assert all(len(p) == 1 for p in by_model.values())


def test_the_build_ships_a_learned_ranker_listed_and_hashed(built: dict) -> None:
    manifest = built["manifest"]
    entry = _learned_entry(manifest)
    build_dir = release.resolve_build(built["docs"])
    assert entry["path"] == lf.LEARNED_PATH
    assert entry["sha256"] == release.sha256_file(build_dir / entry["path"])
    assert "Learn" in manifest["stage_seconds"]
    rel = open_release(built["docs"])
    model = rel.learned
    assert model is not None and model.meta["embedder"] == manifest["embedder"]["model"]
    assert model.meta["used_pairs"] >= 50
    dim = manifest["embedder"]["dim"]
    assert model.query_map is not None and model.query_map.shape == (dim, dim) and model.map_strength > 0
    # With the gate open (a tag-list prompt) the learned score is what ranks: it differs from the RRF
    # score; with the gate closed the score is the RRF's exactly.
    query = next(q["query"] for q in built["held"] if q["query"].startswith("trg"))
    assert model.gate(query) == 1.0
    rrf = open_release(built["docs"], config=SearchConfig(learned=False)).search(query, k=5)
    rel._learned = dataclasses.replace(model, min_segments=0)
    assert [h.score for h in rel.search(query, k=5)] != pytest.approx([h.score for h in rrf])
    rel._learned = dataclasses.replace(model, min_segments=10**6)
    closed = rel.search(query, k=5)
    assert [h.adapter_id for h in closed] == [h.adapter_id for h in rrf]
    assert [h.score for h in closed] == pytest.approx([h.score for h in rrf])


def test_the_gate_opens_only_for_tag_list_prompts(built: dict) -> None:
    assert lf.gate("masterpiece, best quality, 1girl, dragon") == 1.0
    assert lf.gate("masterpiece, best quality, dragon") == 0.0  # three segments: below the default 4
    assert lf.gate("masterpiece, best quality, dragon", min_segments=3) == 1.0
    assert lf.gate("A man riding a wave on top of a surfboard.") == 0.0
    assert lf.gate("a castle, at night,, , ") == 0.0  # empty segments do not count
    # A sentence gets neither the learned correction nor the query map: exactly the RRF's ranking.
    caption = "a red dragon flying over a castle in the winter forest"
    plain = open_release(built["docs"], config=SearchConfig(learned=False)).search(caption, k=10)
    learned = open_release(built["docs"]).search(caption, k=10)

    def key(hits: list) -> list:
        return [(h.adapter_id, h.score, h.dense) for h in hits]

    assert key(learned) == key(plain)
    # A tag list gets the query map (here a known one, whatever this small build learned): its cosines are
    # those of the mapped vector; a sentence's are not.
    rel = open_release(built["docs"])
    dim = rel.embeddings.shape[1]
    shift = np.random.default_rng(0).normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    rel._learned = dataclasses.replace(rel.learned, query_map=shift, map_strength=0.5)
    tags = "trg001x, dragon, castle, masterpiece, detailed"
    q = rel.embedder.embed([tags])[0]
    q2 = q + 0.5 * (q @ shift)
    expect = rel.embeddings @ (q2 / np.linalg.norm(q2))
    for h in rel.search(tags, k=20):
        assert h.dense == pytest.approx(float(expect[rel.row_of[h.adapter_id]]), abs=1e-5)
    assert key(rel.search(caption, k=10)) == key(plain)


def test_hidden_prompts_never_reach_training(built: dict) -> None:
    build_dir = release.resolve_build(built["docs"])
    manifest = release.load_manifest(build_dir)
    rows = release.read_table(build_dir, manifest, "adapters").to_pylist()
    held = {(q["target"], q["prompt"]) for q in built["held"]}
    assert len(held) == N_MODELS
    # What the learner draws from: the release's own example prompts; the held-out ones are not there.
    release_prompts = {(r["adapter_id"], p) for r in rows for p in r["example_prompts"]}
    assert not held & release_prompts
    rel = open_release(built["docs"])
    tokenizer = getattr(rel.embedder, "tokenizer", None)
    drawn = {
        (rows[r]["adapter_id"], rows[r]["example_prompts"][j]) for r, j in lf.training_pairs(rows, tokenizer)
    }
    assert drawn and not drawn & held
    # And the shipped file's record of its training pairs contains none of them either.
    digests = set(rel.learned.meta["pair_digests"])
    assert not {lf.pair_digest({"adapter_id": a, "example_prompts": [p]}, 0) for a, p in held} & digests
    assert {lf.pair_digest({"adapter_id": a, "example_prompts": [p]}, 0) for a, p in drawn} == digests
    # A training prompt is one the card vector never saw (past the examples view's prompts).
    from stylus_docs.embedding.views import MAX_EXAMPLE_PROMPTS

    assert all(j >= MAX_EXAMPLE_PROMPTS for _r, j in lf.training_pairs(rows, None))


def test_a_release_without_its_learned_part_still_answers(built: dict, tmp_path: Path, capsys) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(built["docs"], docs, symlinks=True)
    build_dir = release.resolve_build(docs)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    manifest["files"] = [e for e in manifest["files"] if e["table"] != "learned"]
    (build_dir / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(build_dir / "learned")
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "samurai temple", "id": 1}) + "\n")
    capsys.readouterr()
    assert (
        cli_main(["query", "--docs", str(docs), "--queries", str(queries), "-k", "5", "--format", "jsonl"])
        == 0
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert out[0]["id"] == 1 and len(out[0]["results"]) == 5
    rel = open_release(docs)
    assert rel.learned is None
    # It ranks exactly as the full release does with the learned part switched off (today's RRF).
    rrf = open_release(built["docs"], config=SearchConfig(learned=False)).search("samurai temple", k=5)
    assert [r["adapter_id"] for r in out[0]["results"]] == [h.adapter_id for h in rrf]


def test_a_corrupt_learned_file_is_refused(built: dict, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(built["docs"], docs, symlinks=True)
    path = release.resolve_build(docs) / lf.LEARNED_PATH
    data = json.loads(path.read_text())
    data["weights"][0] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(FatalError, match="corrupt"):
        open_release(docs).search("dragon")


def test_learned_weights_survive_an_incremental_rebuild(built: dict) -> None:
    tmp, items = built["tmp"], copy.deepcopy(built["items"])
    first = _learned_entry(built["manifest"])
    old = lf.load(release.resolve_build(built["docs"]) / first["path"])
    # One model of 70 changes its latest prompt (~1.4 % of the pairs): the weights are reused unchanged.
    items[0]["modelVersions"][0]["images"][-1]["meta"]["prompt"] = "a brand new prompt, dragon, neon"
    raw2 = snapshot(tmp / "raw-2", items)
    docs2 = tmp / "docs-2"
    m2 = run_build(BuildConfig(raw=[str(raw2)], out=str(docs2), previous=str(built["docs"]), progress=False))
    new = lf.load(release.resolve_build(docs2) / _learned_entry(m2)["path"])
    assert new.meta["reused_from"] == built["manifest"]["build_id"]
    assert 0 < new.meta["changed"] <= lf.REUSE_CHANGE
    np.testing.assert_array_equal(new.weights, old.weights)
    np.testing.assert_array_equal(new.scale, old.scale)
    np.testing.assert_array_equal(new.query_map, old.query_map)  # the query map is reused too
    # A large change (a third of the catalogue's prompts) refits, warm-started from the previous weights.
    for item in items[: N_MODELS // 3]:
        for img in item["modelVersions"][0]["images"]:
            img["meta"]["prompt"] = img["meta"]["prompt"].replace("take", "shot")
    raw3 = snapshot(tmp / "raw-3", items)
    docs3 = tmp / "docs-3"
    m3 = run_build(BuildConfig(raw=[str(raw3)], out=str(docs3), previous=str(docs2), progress=False))
    refit = lf.load(release.resolve_build(docs3) / _learned_entry(m3)["path"])
    assert "reused_from" not in refit.meta and refit.meta["warm_start"] == m2["build_id"]


class _OtherEncoder:
    def __init__(self) -> None:
        self.info = EmbedderInfo(name="acme", model="acme/other-encoder", version="v3", dim=384)

    def embed(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - never reached
        raise AssertionError("a mismatched encoder must not be used")


def test_the_query_encoder_is_the_one_the_manifest_names(built: dict, tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="embedder mismatch"):
        open_release(built["docs"], embedder=_OtherEncoder())
    rel = open_release(built["docs"])
    assert canonical_model_name(rel.embedder.info.model) == canonical_model_name(
        rel.manifest["embedder"]["model"]
    )
    # A learned file fitted over another encoder's cosines is refused too (re-hashed so only that differs).
    docs = tmp_path / "docs"
    shutil.copytree(built["docs"], docs, symlinks=True)
    build_dir = release.resolve_build(docs)
    path = build_dir / lf.LEARNED_PATH
    data = json.loads(path.read_text())
    data["embedder"] = "acme/other-encoder"
    path.write_text(json.dumps(data))
    manifest = json.loads((build_dir / "manifest.json").read_text())
    for e in manifest["files"]:
        if e["table"] == "learned":
            e["bytes"], e["sha256"] = path.stat().st_size, release.sha256_file(path)
    (build_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FatalError, match="other-encoder"):
        open_release(docs).search("dragon")


def test_the_fit_learns_which_signal_finds_the_target() -> None:
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(200):
        feats = rng.normal(size=(30, len(lf.FEATURES)))
        feats[0, 1] += 3.0  # the target stands out on feature 1 only
        groups.append(feats)
    w, _mean, _scale, loss = lf._fit(groups, 1e-3, None)
    assert int(np.argmax(w)) == 1 and loss < np.log(30)


def test_the_query_map_learns_a_systematic_query_shift() -> None:
    """`learned.train_query_map` must undo a fixed distortion between query and card vectors, judged on
    pairs it was not fitted on."""
    rng = np.random.default_rng(0)
    n, d = 300, 16
    cards = rng.normal(size=(n, d))
    cards /= np.linalg.norm(cards, axis=1, keepdims=True)
    distortion = np.eye(d) + 0.8 * rng.normal(size=(d, d)) / np.sqrt(d)  # queries live in another basis
    targets = rng.integers(0, n, size=1200)
    queries = cards[targets] @ distortion + 0.05 * rng.normal(size=(len(targets), d))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    groups = [f"m{t}" for t in targets]  # the map early-stops on a fifth of the targets, by name
    fit, test = slice(0, 900), slice(900, None)
    a, info = lf.train_query_map(queries[fit], cards, targets[fit], groups[fit])
    assert info["map_val_loss"][1] < info["map_val_loss"][0]

    def top1(q: np.ndarray) -> float:
        return float(np.mean(np.argmax(q @ cards.T, axis=1) == targets[test]))

    mapped = queries[test] + queries[test] @ a
    mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)
    assert top1(mapped) > top1(queries[test]) + 0.08  # 0.88 -> 0.997 here


def test_the_release_feeds_trigger_matches_to_the_ranker(built: dict) -> None:
    rel = open_release(built["docs"])
    assert rel.learned is not None and "trigger" in lf.FEATURES
    hits = rel.triggers.scores("trg005x, castle, masterpiece, detailed")
    model_of = [str(a).split(":")[1].split("@")[0] for a in rel.ids]
    assert {model_of[r] for r in np.flatnonzero(hits)} == {"5"}
    # The ranker's features of those rows carry the match; the others' do not.
    n = len(rel)
    cand = np.arange(n)
    ranks = np.arange(1, n + 1, dtype=np.int32)
    zeros = np.zeros(n, np.float32)
    feats = lf.candidate_features(zeros, zeros, cand, ranks, ranks, (1.0, 1.0), zeros, hits)
    col = lf.FEATURES.index("trigger_hit")
    assert set(np.flatnonzero(feats[:, col])) == set(np.flatnonzero(hits))


def test_a_tag_list_keeps_every_version_past_the_head() -> None:
    """One version per model past rank 10 is for captions; a tag list (gate on) keeps sibling versions."""
    n = 60
    codes = np.repeat(np.arange(n // 3), 3)  # 20 models of 3 versions each
    dense = np.linspace(1.0, 0.5, n).astype(np.float32)  # siblings adjacent in the ranking
    lex = np.zeros(n, np.float32)
    flat = lf.LearnedFusion(np.zeros(len(lf.FEATURES)), np.zeros(len(lf.FEATURES)), np.ones(len(lf.FEATURES)))
    prior = np.zeros(n, np.float32)
    cfg = SearchConfig(every_version_share=None)
    tags, *_ = fuse(dense, lex, None, 30, cfg, codes, flat, prior, 1.0)
    sentence, *_ = fuse(dense, lex, None, 30, cfg, codes, flat, prior, 0.0)
    assert tags == list(range(30))
    assert sentence[:10] == list(range(10)) and len(set(codes[sentence[10:]])) == len(sentence[10:])
    off, *_ = fuse(dense, lex, None, 30, dataclasses.replace(cfg, every_version_tag_lists=False), codes,
                   flat, prior, 1.0)  # fmt: skip
    assert off == sentence


def test_a_release_from_before_the_trigger_features_keeps_its_ranker(built: dict) -> None:
    """A ``fusion.v2`` file (11 features, the first of today's) is read and scores with those alone."""
    path = release.resolve_build(built["docs"]) / lf.LEARNED_PATH
    data = json.loads(path.read_text(encoding="utf-8"))
    old = {**data, "version": "fusion.v2", "features": list(lf.FEATURES[:11])}
    for key in ("weights", "mean", "scale"):
        old[key] = data[key][:11]
    model = lf.LearnedFusion.from_json(old)
    assert model is not None and model.version == "fusion.v2"
    feats = np.random.default_rng(0).normal(size=(40, len(lf.FEATURES)))
    z = (feats[:, :11] - np.asarray(old["mean"])) / np.asarray(old["scale"])
    np.testing.assert_allclose(model.score(feats, 1.0), lf.rrf_offset(feats) + z @ np.asarray(old["weights"]))
    assert model.to_json()["version"] == "fusion.v2" and len(model.to_json()["features"]) == 11
    # Unknown versions and feature lists that do not match their version are not guessed at.
    assert lf.LearnedFusion.from_json({**old, "version": "fusion.v9"}) is None
    assert lf.LearnedFusion.from_json({**old, "features": list(lf.FEATURES[1:12])}) is None
    assert lf.LearnedFusion.from_json({**data, "weights": data["weights"][:11]}) is None
