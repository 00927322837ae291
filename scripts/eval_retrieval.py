#!/usr/bin/env python
"""Retrieval quality of stylus_docs.query on the developer half of the real Civitai data (issue 4).

Two measures, one default configuration:

1. **Creator-prompt recall@1/10/150.** For every adapter version of
   ``../shared/data/civitai-2023/lora_normal.dev.jsonl.gz`` with at least two example prompts, one example
   image (seeded choice) is removed from the build input entirely; its prompt without ``<lora:…>`` tags is the
   query and that version is the target.
2. **Stylus agreement recall@10/150.** ``prompts/coco_rank.csv`` and ``parti_prompts.csv`` list, per caption,
   the Civitai model ids Stylus chose. For captions whose chosen ids are in the release, the mean over
   captions of the fraction of those ids found in the top K (any version of the model counts).

The release is built from the data minus the held-out images: through ``stylus-docs build`` when the build
stage exists (``--builder pipeline``), else through a minimal in-script builder (``--builder minimal``:
title, tags, trigger words, HTML-stripped description, example prompts, MiniLM over the build's views).
Reports dense only, BM25 only and hybrid, plus the fusion grid it was tuned on, into BENCHMARKS.md
section ``retrieval``.

Usage: ``python scripts/eval_retrieval.py [--builder auto|pipeline|minimal] [--seed 0] [--no-write]``
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import hashlib
import json
import logging
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stylus_docs.normalize.lora import strip_tags  # noqa: E402
from stylus_docs.query import SearchConfig, open_release  # noqa: E402
from stylus_docs.query.core import fuse  # noqa: E402

log = logging.getLogger("eval_retrieval")
SHARED = ROOT.parent / "shared" / "data"
RAW = SHARED / "civitai-2023" / "lora_normal.dev.jsonl.gz"
PROMPT_FILES = (SHARED / "prompts" / "coco_rank.csv", SHARED / "prompts" / "parti_prompts.csv")
WORK = ROOT / "data" / "out" / "eval-retrieval"
KS = (1, 10, 150)


def read_items(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def image_prompt(img: dict[str, Any]) -> str | None:
    meta = img.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("prompt"), str) and meta["prompt"].strip():
        return meta["prompt"]
    return None


def clean_query(prompt: str) -> str:
    return re.sub(r"\s+", " ", strip_tags(prompt)).strip(" ,")


def split_part(model_id: str) -> str:
    """The model's part of the developer half: ``sha256(model id) mod 10 < 7`` → ``tuning``, else
    ``validation``. Fixed (no seed to vary): every setting is chosen on the tuning part only."""
    return "tuning" if int(hashlib.sha256(str(model_id).encode()).hexdigest(), 16) % 10 < 7 else "validation"


def lora_resources(meta: Any) -> tuple[list[str], list[str]]:
    """Names and hashes of the LoRA-like networks an image's metadata says it used.

    The 2023 corpus predates ``meta.civitaiResources``; its images carry the same fact as A1111's
    ``resources`` (``{"name": file stem, "type": "lora", "weight"}``) and ``hashes`` (``lora:<name>``).
    """
    if not isinstance(meta, dict):
        return [], []
    names, hashes = [], []
    for r in meta.get("resources") or []:
        if isinstance(r, dict) and r.get("type") in ("lora", "lycoris", "locon") and r.get("name"):
            names.append(str(r["name"]).lower())
            if r.get("hash"):
                hashes.append(str(r["hash"]).lower())
    for r in meta.get("civitaiResources") or []:
        if isinstance(r, dict) and r.get("modelVersionId") is not None:
            hashes.append(f"version:{r['modelVersionId']}")
    h = meta.get("hashes")
    if isinstance(h, dict):
        hashes += [str(v).lower() for k, v in h.items() if str(k).startswith("lora:")]
    return names, hashes


def resource_index(items: list[dict[str, Any]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(file stem → adapter ids, file hash or ``version:<id>`` → adapter ids) over the raw items."""
    stems: dict[str, set[str]] = {}
    hashes: dict[str, set[str]] = {}
    for item in items:
        for ver in item.get("modelVersions") or []:
            aid = f"civitai:{item['id']}@{ver['id']}"
            hashes.setdefault(f"version:{ver['id']}", set()).add(aid)
            for f in ver.get("files") or []:
                stem = str(f.get("name") or "").rsplit(".", 1)[0].lower()
                if stem:
                    stems.setdefault(stem, set()).add(aid)
                for value in (f.get("hashes") or {}).values():
                    hashes.setdefault(str(value).lower(), set()).add(aid)
    return stems, hashes


def resolve_resources(q: dict[str, Any], stems, hashes, in_release: set[str]) -> set[str]:
    """Model ids (in the release) of the adapters a held-out image used; an ambiguous file stem is
    ignored."""
    found: set[str] = set()
    for h in q.get("hashes") or []:
        found |= hashes.get(h, set())
    for name in q.get("names") or []:
        if len(stems.get(name, ())) == 1:
            found |= stems[name]
    return {aid.split(":", 1)[1].split("@", 1)[0] for aid in found if aid in in_release}


def hold_out(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Remove one example image per version with ≥ 2 prompts (in place); return the creator queries
    (with the held image's LoRA resources, for the third measure)."""
    rng = random.Random(seed)
    queries = []
    for item in sorted(items, key=lambda d: d["id"]):
        for ver in item.get("modelVersions") or []:
            images = ver.get("images") or []
            with_prompt = [i for i, img in enumerate(images) if image_prompt(img)]
            if len(with_prompt) < 2:
                continue
            pick = with_prompt[rng.randrange(len(with_prompt))]
            held = images.pop(pick)
            query = clean_query(image_prompt(held) or "")
            if query:
                names, hashes = lora_resources(held.get("meta"))
                queries.append(
                    {
                        "query": query,
                        "target": f"civitai:{item['id']}@{ver['id']}",
                        "prompt": image_prompt(held),
                        "names": names,
                        "hashes": hashes,
                    }
                )
    return queries


# -- minimal builder (used until/unless the build stage is available) ---------------------------------
def _html_text(html: str | None) -> str:
    if not html:
        return ""
    from bs4 import BeautifulSoup

    return re.sub(r"\s+", " ", BeautifulSoup(html, "html.parser").get_text(" ")).strip()


class _CachedMiniLM:
    """NumpyMiniLM with an on-disk cache of text vectors, saved per chunk: an interrupted run keeps what it
    embedded."""

    def __init__(self, cache_file: Path) -> None:
        from stylus_docs.embedding import embedder_info

        self.cache_file = cache_file
        self.cache: dict[str, np.ndarray] = {}
        if cache_file.exists():
            with np.load(cache_file) as z:
                self.cache = dict(zip(z["keys"].tolist(), z["vecs"], strict=True))
        self._encoder: Any = None  # the NumpyMiniLM, loaded when a text is not cached
        self.info = embedder_info("minilm")

    @property
    def tokenizer(self) -> Any:
        """The encoder's tokenizer (the learned ranker uses it to find prompts a card vector never saw)."""
        from stylus_docs.embedding import NumpyMiniLM

        self._encoder = self._encoder or NumpyMiniLM()
        return self._encoder.tokenizer

    def embed_spans(self, text: str, spans) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's :meth:`NumpyMiniLM.embed_spans` (not cached: one pass per caption)."""
        from stylus_docs.embedding import NumpyMiniLM

        self._encoder = self._encoder or NumpyMiniLM()
        return self._encoder.embed_spans(text, spans)

    def embed(self, texts: list[str]) -> np.ndarray:
        from stylus_docs.embedding import NumpyMiniLM

        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        todo = sorted({k for k in keys if k not in self.cache})
        if todo:
            self._encoder = self._encoder or NumpyMiniLM()
            by_key = dict(zip(keys, texts, strict=True))
            t0 = time.perf_counter()
            for start in range(0, len(todo), 512):
                chunk = todo[start : start + 512]
                vecs = self._encoder.encode([by_key[k] for k in chunk], batch_size=32)
                self.cache.update(zip(chunk, vecs, strict=True))
                np.savez(
                    self.cache_file, keys=np.array(list(self.cache)), vecs=np.stack(list(self.cache.values()))
                )
                log.info(
                    "embedded %d/%d texts (%.0fs)", start + len(chunk), len(todo), time.perf_counter() - t0
                )
        return np.stack([self.cache[k] for k in keys])


def build_minimal(items: list[dict[str, Any]], docs: Path) -> None:
    """Write a release with the contract's columns from raw /models items (no filtering, extractive text)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from release_fixture import write_release  # the contract writer used by the tests

    from stylus_docs.embedding import embed_cards

    rows: list[dict[str, Any]] = []
    for item in items:
        tags = [t if isinstance(t, str) else str(t.get("name", "")) for t in item.get("tags") or []]
        desc = _html_text(item.get("description"))
        for ver in item.get("modelVersions") or []:
            prompts = [p for p in (image_prompt(i) for i in ver.get("images") or []) if p]
            stats = item.get("stats") or {}
            rows.append(
                {
                    "adapter_id": f"civitai:{item['id']}@{ver['id']}",
                    "source": "civitai",
                    "model_id": str(item["id"]),
                    "version_id": str(ver["id"]),
                    "title": item.get("name") or "",
                    "version_name": ver.get("name") or "",
                    "type": item.get("type") or "LORA",
                    "base_model": ver.get("baseModel") or "",
                    "tags": tags,
                    "trigger_words": [w for w in ver.get("trainedWords") or [] if isinstance(w, str)],
                    "description": desc,
                    "example_prompts": prompts,
                    "refined_description": desc,
                    "category": tags[0] if tags else "concept",
                    "recommended_weight": 0.8,
                    "nsfw": bool(item.get("nsfw")),
                    "nsfw_level": 1,
                    "creator": "",
                    "downloads": int(stats.get("downloadCount") or 0),
                    "likes": 0,
                    "rating": None,
                    "license_commercial": [],
                    "allow_no_credit": True,
                    "allow_derivatives": True,
                    "file_name": "",
                    "file_size_kb": 0.0,
                    "sha256": "",
                    "download_url": "",
                    "published_at": None,
                    "card_url": f"https://civitai.com/models/{item['id']}",
                    "content_hash": "",
                    "refiner": "none",
                    "embedder": "sentence-transformers/all-MiniLM-L6-v2",
                    "embedding": None,
                    "render_status": "not_rendered",
                }
            )
    vectors = embed_cards(_CachedMiniLM(WORK / "embedding-cache.npz"), rows)  # the build's three views
    for row, vec in zip(rows, vectors, strict=True):
        row["embedding"] = vec.tolist()
    write_release(docs, rows, shards=2)


def build_pipeline(items: list[dict[str, Any]], docs: Path) -> None:
    raw = WORK / "raw-heldout.jsonl.gz"
    with gzip.open(raw, "wt", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    exe = Path(sys.executable).parent / "stylus-docs"
    subprocess.run([str(exe), "build", "--raw", str(raw), "--out", str(docs)], check=True)


# -- measures -------------------------------------------------------------------------------------
def stylus_queries(model_ids_in_release: set[str]) -> list[dict[str, Any]]:
    out = []
    for path in PROMPT_FILES:
        with path.open(encoding="utf-8", newline="") as handle:
            for rec in csv.DictReader(handle):
                try:
                    ranked = ast.literal_eval(rec["ranked_adapters"] or "{}")
                except (ValueError, SyntaxError):
                    continue
                chosen = {str(i) for ids in ranked.values() for i in ids}
                present = chosen & model_ids_in_release
                if present and rec["caption"].strip():
                    out.append({"query": rec["caption"].strip(), "models": present, "set": path.stem})
    return out


def ranks_for(order: list[int], targets: set[int] | set[str], key) -> list[int]:
    """1-based rank of the first occurrence of each target (0 = not in the list)."""
    seen: dict[Any, int] = {}
    for i, r in enumerate(order):
        seen.setdefault(key(r), i + 1)
    return [seen.get(t, 0) for t in targets]


PARTS = ("tuning", "validation")
MEASURES = (
    "creator@1", "creator@10", "creator@150", "stylus@10", "stylus@150", "resources@10", "resources@150",
)  # fmt: skip


def _model(aid: str) -> str:
    return aid.split(":", 1)[1].split("@", 1)[0]


def evaluate(release, creator, stylus, cfg: SearchConfig, vectors_c, vectors_s, learned=None) -> dict:
    """Recall figures per part (``tuning`` / ``validation``) for one fusion config from precomputed plain
    score vectors. ``learned``: the model to use (default: the release's own with ``cfg.learned``); its
    gate and query map are applied per query as :class:`stylus_docs.query.Release` does (each query's
    plain vector is ``q["vec"]``)."""
    model_of = [_model(aid) for aid in release.ids]
    row_of = release.row_of
    codes = release.model_codes
    if learned is None and cfg.learned and cfg.fusion == "rrf":
        learned = release.learned
    prior = release.prior if learned is not None else None
    k = max(KS)
    acc = {p: {m: [] for m in MEASURES} for p in PARTS}

    def shares(order: list[int], models: set[str], name: str) -> None:
        ranks = dict(zip(models, ranks_for(order, models, lambda r: model_of[r]), strict=True))
        for part in PARTS:
            mine = [ranks[m] for m in models if split_part(m) == part]
            if mine:
                for kk in (10, 150):
                    acc[part][f"{name}@{kk}"].append(sum(0 < r <= kk for r in mine) / len(mine))

    def scored(q: dict[str, Any], d: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None]:
        gate, trig = release.learned_inputs(q["query"], learned)
        if gate and learned.query_map is not None and learned.map_strength:
            d = release.embeddings @ learned.map_queries([q["query"]], q["vec"][None, :])[0]
        return d, gate, trig

    for q, (d, lx) in zip(creator, vectors_c, strict=True):
        d, gate, trig = scored(q, d)
        order, *_ = fuse(d, lx, None, k, cfg, codes, learned, prior, gate, trig)
        target = row_of.get(q["target"])
        rank = order.index(target) + 1 if target in order else 0
        for kk in KS:
            acc[split_part(_model(q["target"]))][f"creator@{kk}"].append(float(0 < rank <= kk))
        if q.get("models"):
            shares(order, q["models"], "resources")
    for q, (d, lx) in zip(stylus, vectors_s, strict=True):
        d, gate, trig = scored(q, d)
        order, *_ = fuse(d, lx, None, k, cfg, codes, learned, prior, gate, trig)
        shares(order, q["models"], "stylus")
    out = {p: {m: float(np.mean(v)) if v else float("nan") for m, v in acc[p].items()} for p in PARTS}
    for p in PARTS:
        out[p]["n"] = {m: len(v) for m, v in acc[p].items()}
    return out


def write_section(table: str) -> None:
    from benchmarks_md import replace_section

    replace_section("retrieval", table)


HEADER = (
    "| ranking | creator R@1 | creator R@10 | creator R@150 | Stylus R@10 | Stylus R@150 "
    "| resources R@10 | resources R@150 |"
)


def table_rows(rows: dict[str, dict], part: str) -> list[str]:
    out = [HEADER, "| --- " * 8 + "|"]
    for name, r in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{r[part][m]:.3f}" for m in MEASURES) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    from stylus_docs.query import learned as learned_fusion

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builder", choices=("auto", "pipeline", "minimal"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    ap.add_argument("--grid", action="store_true", help="also report the tuning grid (tuning part only)")
    ap.add_argument("--reuse", action="store_true", help="evaluate the release already built (no rebuild)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not RAW.exists():
        print(f"eval-retrieval: {RAW} not found (the shared data is not on this machine); skipped")
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    items = list(read_items(RAW))
    creator = hold_out(items, args.seed)
    builder = args.builder
    if builder == "auto":
        builder = "pipeline" if (ROOT / "pipelines" / "build.py").exists() else "minimal"
    docs = WORK / f"docs-{builder}"
    if not (args.reuse and docs.exists()):
        shutil.rmtree(docs, ignore_errors=True)
        t0 = time.perf_counter()
        (build_pipeline if builder == "pipeline" else build_minimal)(items, docs)
        log.info("built the held-out release with the %s builder in %.1fs", builder, time.perf_counter() - t0)
    # Same encoder as the manifest's (checked), with an on-disk cache so reruns do not re-embed the queries.
    release = open_release(docs, embedder=_CachedMiniLM(WORK / "query-cache.npz"))
    in_release = set(release.row_of)
    # The build never saw the held-out images, so their prompts cannot reach the learned ranker, unless
    # the creator posted the same prompt again on another (kept) image of the version: that copy is the
    # catalogue's own data. Every other held-out prompt must be absent from the training pairs.
    trained_on = set(release.learned.meta.get("pair_digests") or []) if release.learned else set()
    kept = {
        (f"civitai:{item['id']}@{ver['id']}", image_prompt(img))
        for item in items
        for ver in item.get("modelVersions") or []
        for img in ver.get("images") or []
    }
    hidden_only = [q for q in creator if (q["target"], q["prompt"]) not in kept]
    leaked = {
        learned_fusion.pair_digest({"adapter_id": q["target"], "example_prompts": [q["prompt"]]}, 0)
        for q in hidden_only
    } & trained_on
    assert not leaked, f"{len(leaked)} hidden prompts reached the learned ranker"
    n_creator_all = len(creator)
    creator = [q for q in creator if q["target"] in in_release]
    stems, hashes = resource_index(items)
    for q in creator:
        q["models"] = resolve_resources(q, stems, hashes, in_release)
    model_ids = {_model(aid) for aid in release.ids}
    stylus = stylus_queries(model_ids)
    log.info(
        "%d adapters; %d creator queries (%d targets dropped by the build, %d with LoRA resources); "
        "%d Stylus captions",
        len(release),
        len(creator),
        n_creator_all - len(creator),
        sum(bool(q["models"]) for q in creator),
        len(stylus),
    )
    t0 = time.perf_counter()
    vectors_c = release.score_vectors([q["query"] for q in creator], mapped=False)
    vectors_s = release.score_vectors([q["query"] for q in stylus], mapped=False)
    # The single-retriever baselines score with the plain cosine (no concept boost for captions).
    plain_c = release.score_vectors([q["query"] for q in creator], mapped=False, concepts=False)
    plain_s = release.score_vectors([q["query"] for q in stylus], mapped=False, concepts=False)
    for queries in (creator, stylus):  # the plain query vectors (cached), for the learned query map
        for q, vec in zip(queries, release.embedder.embed([q["query"] for q in queries]), strict=True):
            q["vec"] = np.asarray(vec, dtype=np.float32)
    log.info("scored all queries in %.1fs", time.perf_counter() - t0)

    default = SearchConfig()
    configs = {
        "dense only": SearchConfig(fusion="dense"),
        "BM25 only": SearchConfig(fusion="bm25"),
        "hybrid RRF (no learned file)": replace(default, learned=False),
        "**hybrid, learned (default)**": default,
        "hybrid, learned, every version": replace(default, one_version_after=None),
    }
    rows = {
        name: evaluate(
            release,
            creator,
            stylus,
            cfg,
            *((vectors_c, vectors_s) if cfg.fusion == "rrf" else (plain_c, plain_s)),
        )
        for name, cfg in configs.items()
    }
    # The default's numbers straight from the public API, as a check on the vectorised evaluation.
    sample_idx = list(range(0, len(creator), max(1, len(creator) // 300)))
    sample = [creator[i] for i in sample_idx]
    api_hits = release.search_batch([q["query"] for q in sample], k=10, include_nsfw=True)
    api_r10 = sum(q["target"] in {h.adapter_id for h in hs} for q, hs in zip(sample, api_hits, strict=True))
    vec = evaluate(release, sample, [], default, [vectors_c[i] for i in sample_idx], [])
    vec_r10 = np.mean([x for p in PARTS for x in [vec[p]["creator@10"]] * vec[p]["n"]["creator@10"]])
    # The same for captions (the concept boost runs inside Release.search_batch).
    s_idx = list(range(0, len(stylus), max(1, len(stylus) // 100)))
    s_hits = release.search_batch([stylus[i]["query"] for i in s_idx], k=150, include_nsfw=True)
    api_s150 = np.mean([
        np.mean([m in {_model(h.adapter_id) for h in hs} for m in stylus[i]["models"]])
        for i, hs in zip(s_idx, s_hits, strict=True)
    ])  # fmt: skip
    vec_s150 = np.mean([
        np.mean([0 < r <= 150 for r in ranks_for(
            fuse(*vectors_s[i], None, 150, default, release.model_codes, release.learned, release.prior,
                 *release.learned_inputs(stylus[i]["query"], release.learned))[0],
            stylus[i]["models"], lambda r: _model(str(release.ids[r])))])
        for i in s_idx
    ])  # fmt: skip
    grid: dict[str, dict] = {}
    if args.grid:
        grid = tuning_grid(release, creator, stylus, vectors_c, vectors_s)
    lm = release.learned
    n = rows["dense only"]
    lines = [
        f"## retrieval (`scripts/eval_retrieval.py`, {time.strftime('%Y-%m-%d')})",
        "",
        f"Developer half `civitai-2023/lora_normal.dev.jsonl.gz`: {len(release)} adapter versions in a release "  # noqa: E501
        f"built by the **{builder}** builder from the data minus {n_creator_all} held-out example images (seed "  # noqa: E501
        f"{args.seed}). Split by model id: `sha256(model_id) mod 10 < 7` → tuning part, else validation "
        "part; every setting was chosen on the tuning part. Three measures: creator prompts (the held-out "
        "prompt must find its version), Stylus agreement (COCO/Parti captions; mean share of Stylus' chosen "
        "model ids retrieved), and resources (a held-out image's prompt must find the LoRAs its metadata "
        "says it used — `resources` / `hashes` in this 2023 corpus, `civitaiResources` in newer data; "
        "matched by file name or hash, any version of the model counts). Queries per part (tuning / "
        f"validation): creator {n['tuning']['n']['creator@10']} / {n['validation']['n']['creator@10']}, "
        f"Stylus {n['tuning']['n']['stylus@10']} / {n['validation']['n']['stylus@10']}, resources "
        f"{n['tuning']['n']['resources@10']} / {n['validation']['n']['resources@10']}. Embedder: "
        f"{release.embedder_info.get('model')}.",
        "",
        "Learned ranker (`stylus_docs/query/learned.py`, fitted by the build on the catalogue's own "
        "example prompts, never the held-out ones): "
        + (
            f"{lm.meta.get('used_pairs', lm.meta.get('pairs'))} training pairs, fitted in "
            f"{lm.meta.get('fit_s')} s (build wall time in the manifest: "
            f"{release.manifest.get('wall_s', 0):.0f} s)."
            if lm
            else "none in this release (RRF only)."
        ),
        "",
        "**Validation part** (reported):",
        "",
        *table_rows(rows, "validation"),
        "",
        "Tuning part:",
        "",
        *table_rows(rows, "tuning"),
        "",
        f"Check on {len(sample)} creator queries: `Release.search_batch` R@10 = {api_r10 / len(sample):.3f}, "
        f"the vectorised evaluation = {vec_r10:.3f}; on {len(s_idx)} captions, the share of Stylus' "
        f"models in `search_batch`'s top 150 = {api_s150:.3f}, from the score vectors = {vec_s150:.3f}.",
        "",
        "Targets (validation part, one default configuration): creator R@10 ≥ 0.93 and R@150 ≥ 0.97; "
        "Stylus R@150 ≥ 0.95 with R@10 not below the RRF's; resources R@150 reported; ahead of BM25-only and "
        "dense-only on every measure.",
        "",
        FINDINGS,
    ]
    if grid:
        lines += ["", "Tuning grid (tuning part only):", "", *table_rows(grid, "tuning")]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(table)
    return 0


#: What the grid showed (runs of 2026-12-02, -04 and -06; kept in the section so a rerun does not lose it).
FINDINGS = (
    "Findings. What is learned from the catalogue's prompts helps prompts shaped like them and hurts "
    "captions: applied to every query, the learned ranker lifts creator R@10 on the tuning part to 0.940 "
    "but costs COCO/Parti captions Stylus R@10 0.680 → 0.587 (grid: tag list from 0 segments). Both "
    "learned parts therefore apply only to tag-list prompts (≥ 4 comma-separated segments: 93 % of "
    "creators' prompts, 0.3 % of captions; 3 and 5 measured the same). The first version gated by BM25 "
    "peakedness instead (share ramp 0.4–0.5), which only half the creator prompts pass: creator R@10 "
    "0.906 on the validation part, now 0.928. The linear query map (q' = normalize(q + 0.5·qA), 384×384, "
    "fitted on the same pairs with a softmax over the cards, early-stopped by model) lifts dense-only "
    "creator R@10 0.622 → 0.783 on the tuning part; in the fusion it adds R@10 +0.003 (strength 0 vs 0.5;"
    " at 1 the dense side overfits). Sentence-shaped prompts get the **concept boost** instead "
    "(`stylus_docs/query/concepts.py`): Stylus picks one adapter per concept of a caption, so each card's"
    " dense score adds 0.25 × its best cosine to one of the caption's concepts (content-word runs, their "
    "vectors pooled from the caption's own encoder pass): Stylus R@10 0.680 → 0.708 and R@150 0.926 → "
    "0.932 on the tuning part (grid: concept weight 0); on the validation part R@10 0.534 → 0.574 and "
    "R@150 0.916 → 0.911 (203 captions). Embedding each phrase alone measured 0.707 / 0.926 on the tuning"
    " part (validation 0.569 / 0.916) at an extra encoder pass; weights 0.5 and 1 cost R@150; a "
    "reciprocal-rank fusion of per-concept rankings (tried outside this grid) lifted tuning R@150 to "
    "0.940 but lowered it on the validation part (0.901), so it was not taken. Keeping every version for "
    "queries with BM25 share ≥ 0.35 (`every_version_share`) lifted creator R@150 0.954 → 0.964 on the "
    "validation part with Stylus unchanged; keeping it for every tag list too (`every_version_tag_lists`)"
    " lifted it 0.971 → 0.976 on the tuning part (grid: tag lists collapsed too) and 0.967 → 0.973 on the"
    " validation part, captions untouched. The trigger-word features (`fusion.v3`, "
    "`stylus_docs/query/triggers.py`: the prompt holds one of the row's trigger words whole, and how rare"
    " that trigger is) lifted tuning creator R@1/R@10 0.745/0.938 → 0.756/0.942 (grid: without the "
    "trigger-word features), validation 0.733/0.924 → 0.736/0.928. Two training pairs per version instead"
    " of one (3,128 pairs instead of 1,866, measured apart) gave the same on the tuning part (creator R@1"
    " 0.757, R@10 0.942, R@150 0.976) at twice the fitting time (176 s vs 89 s), so one is kept. The "
    "downloads prior hurts at any weight tried. Not met: creator R@10 ≥ 0.93 (0.928; 0.942 on the tuning "
    "part), Stylus R@150 ≥ 0.95 (0.911: no knob tried moves it on both parts; the catalogue holds no "
    "caption-style queries to learn from). The default is ahead of BM25-only and dense-only on every "
    "measure on both parts; for captions alone, though, the dense side with the concept boost beats the "
    "hybrid on the tuning part (Stylus R@10 0.729, R@150 0.936: grid: dense only, concept boost on "
    "sentences), while leaning captions further to the dense side (`dense_confidence` 5–10 for sentences,"
    " measured apart) gained R@150 +0.005–0.010 but lost Stylus R@10 on the validation part and cost "
    "creators' sentence-shaped prompts R@10 −0.02. The resources measure's queries are mostly images made"
    " with the target itself (their LoRA list names it), so it tracks the creator measure."
)


def tuning_grid(release, creator, stylus, vectors_c, vectors_s) -> dict[str, dict]:
    """Learned models fitted here with other settings, and RRF variants; judged on the tuning part."""
    from stylus_docs.query import learned as learned_fusion
    from stylus_docs.query.lexical import TEXT_COLUMNS
    from stylus_docs.release import read_table

    cols = list(dict.fromkeys(("adapter_id", "downloads", *TEXT_COLUMNS)))
    rows = read_table(release.build_dir, release.manifest, "adapters", cols, files=release.files).to_pylist()
    out: dict[str, dict] = {}
    default = SearchConfig()
    pairs = learned_fusion.training_pairs(rows, getattr(release.embedder, "tokenizer", None))
    qvecs = learned_fusion.pair_queries(rows, release.embedder, pairs)
    groups = learned_fusion.training_groups(rows, release.embeddings, release.embedder, pairs, qvecs=qvecs)
    base = learned_fusion.learn(rows, release.embeddings, release.embedder, groups=groups, qvecs=qvecs)

    def row(name: str, model, cfg: SearchConfig = default) -> None:
        out[name] = evaluate(release, creator, stylus, cfg, vectors_c, vectors_s, learned=model)

    for seg in (0, 3, 5):
        row(f"learned, tag list from {seg} segments" + (" (every query)" if seg == 0 else ""),
            replace(base, min_segments=seg))  # fmt: skip
    for strength in (0.0, 0.25, 1.0):
        row(f"learned, query map strength {strength:g}", replace(base, map_strength=strength))
    row("dense only, query map on tag lists, concept boost on sentences", base, SearchConfig(fusion="dense"))
    for l2 in (1e-4, 1e-2):
        refit = learned_fusion.learn(
            rows, release.embeddings, release.embedder, l2=l2, map_strength=0.0, groups=groups, qvecs=qvecs
        )
        row(f"learned, l2={l2:g}", replace(refit, query_map=base.query_map, map_strength=base.map_strength))
    row("learned, downloads prior 0.05", replace(base, prior_weight=0.05))
    # Refitted without the trigger-word features (their columns zeroed: standardised to 0, weight 0).
    cols = [learned_fusion.FEATURES.index(f) for f in ("trigger", "trigger_hit")]
    no_trig = [g.copy() for g in groups]
    for g in no_trig:
        g[:, cols] = 0.0
    refit = learned_fusion.learn(
        rows, release.embeddings, release.embedder, map_strength=0.0, groups=no_trig, qvecs=qvecs
    )
    row("learned, without the trigger-word features",
        replace(refit, query_map=base.query_map, map_strength=base.map_strength))  # fmt: skip
    for conf in (1.5, 3.0, 5.0):
        cfg = replace(default, learned=False, dense_confidence=conf)
        out[f"RRF dense_confidence={conf:g}"] = evaluate(release, creator, stylus, cfg, vectors_c, vectors_s)
    for share in (0.3, 0.4, 0.5):
        row(f"learned (default), every version from BM25 share {share:g}", base,
            replace(default, every_version_share=share))  # fmt: skip
    row("learned (default), tag lists collapsed to one version per model too", base,
        replace(default, every_version_tag_lists=False))  # fmt: skip
    for after in (20, 50):
        row(f"learned (default), one version after {after}", base, replace(default, one_version_after=after))
    # The concept boost of sentence-shaped prompts (stylus_docs/query/concepts.py) at other weights.
    opened_with = release.config
    try:
        for weight in (0.0, 0.5, 1.0):
            release.config = replace(default, concept_weight=weight)
            vc = release.score_vectors([q["query"] for q in creator], mapped=False)
            vs = release.score_vectors([q["query"] for q in stylus], mapped=False)
            out[f"learned (default), concept weight {weight:g}"] = evaluate(
                release, creator, stylus, release.config, vc, vs, learned=base
            )
    finally:
        release.config = opened_with
    dense = SearchConfig(fusion="dense")
    out["dense only, concept boost on sentences (no query map)"] = evaluate(
        release, creator, stylus, dense, vectors_c, vectors_s
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
