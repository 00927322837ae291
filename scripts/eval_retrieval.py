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


def hold_out(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Remove one example image per version with ≥ 2 prompts (in place); return the creator queries."""
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
                queries.append({"query": query, "target": f"civitai:{item['id']}@{ver['id']}"})
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


def evaluate(release, creator, stylus, cfg: SearchConfig, vectors_c, vectors_s) -> dict[str, float]:
    """Recall figures for one fusion config from precomputed score vectors."""
    model_of = [aid.split(":", 1)[1].split("@", 1)[0] for aid in release.ids]
    row_of = release.row_of
    res: dict[str, float] = {}
    k = max(KS)
    hits = {kk: 0 for kk in KS}
    codes = release.model_codes
    for q, (d, lx) in zip(creator, vectors_c, strict=True):
        order, *_ = fuse(d, lx, None, k, cfg, codes)
        target = row_of.get(q["target"])
        rank = order.index(target) + 1 if target in order else 0
        for kk in KS:
            hits[kk] += 0 < rank <= kk
    for kk in KS:
        res[f"creator@{kk}"] = hits[kk] / max(len(creator), 1)
    sums = {kk: 0.0 for kk in (10, 150)}
    for q, (d, lx) in zip(stylus, vectors_s, strict=True):
        order, *_ = fuse(d, lx, None, k, cfg, codes)
        ranks = ranks_for(order, q["models"], lambda r: model_of[r])
        for kk in sums:
            sums[kk] += sum(0 < r <= kk for r in ranks) / len(ranks)
    for kk in sums:
        res[f"stylus@{kk}"] = sums[kk] / max(len(stylus), 1)
    return res


def write_section(table: str) -> None:
    from benchmarks_md import replace_section

    replace_section("retrieval", table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builder", choices=("auto", "pipeline", "minimal"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    ap.add_argument("--grid", action="store_true", help="also report the fusion tuning grid")
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
    shutil.rmtree(docs, ignore_errors=True)
    t0 = time.perf_counter()
    (build_pipeline if builder == "pipeline" else build_minimal)(items, docs)
    log.info("built the held-out release with the %s builder in %.1fs", builder, time.perf_counter() - t0)
    release = open_release(docs)
    in_release = set(release.row_of)
    n_creator_all = len(creator)
    creator = [q for q in creator if q["target"] in in_release]
    model_ids = {aid.split(":", 1)[1].split("@", 1)[0] for aid in release.ids}
    stylus = stylus_queries(model_ids)
    log.info(
        "%d adapters; %d creator queries (%d targets dropped by the build); %d Stylus captions",
        len(release),
        len(creator),
        n_creator_all - len(creator),
        len(stylus),
    )
    t0 = time.perf_counter()
    vectors_c = release.score_vectors([q["query"] for q in creator])
    vectors_s = release.score_vectors([q["query"] for q in stylus])
    log.info("scored all queries in %.1fs", time.perf_counter() - t0)

    default = SearchConfig()
    configs = {
        "dense only": SearchConfig(fusion="dense"),
        "BM25 only": SearchConfig(fusion="bm25"),
        "hybrid (default)": default,
        "dense only, every version": SearchConfig(fusion="dense", one_version_after=None),
        "BM25 only, every version": SearchConfig(fusion="bm25", one_version_after=None),
        "hybrid, every version": replace(default, one_version_after=None),
        "hybrid, fixed weights": replace(default, adaptive=False),
    }
    rows = {
        name: evaluate(release, creator, stylus, cfg, vectors_c, vectors_s) for name, cfg in configs.items()
    }
    # The default's numbers straight from the public API, as a check on the vectorised evaluation.
    sample_idx = list(range(0, len(creator), max(1, len(creator) // 300)))
    sample = [creator[i] for i in sample_idx]
    api_hits = release.search_batch([q["query"] for q in sample], k=10, include_nsfw=True)
    api_r10 = sum(q["target"] in {h.adapter_id for h in hs} for q, hs in zip(sample, api_hits, strict=True))
    vec_r10 = evaluate(release, sample, [], default, [vectors_c[i] for i in sample_idx], [])["creator@10"]
    grid: dict[str, dict[str, float]] = {}
    if args.grid:
        for bm25_k in (3.0, 10.0):
            for conf in (1.5, 3.0, 5.0):
                cfg = replace(default, bm25_rrf_k=bm25_k, dense_confidence=conf)
                grid[f"bm25_rrf_k={bm25_k:g} dense_confidence={conf:g}"] = evaluate(
                    release, creator, stylus, cfg, vectors_c, vectors_s
                )
    lines = [
        f"## retrieval (`scripts/eval_retrieval.py`, {time.strftime('%Y-%m-%d')})",
        "",
        f"Developer half `civitai-2023/lora_normal.dev.jsonl.gz`: {len(release)} adapter versions in a release "  # noqa: E501
        f"built by the **{builder}** builder from the data minus {n_creator_all} held-out example images (seed "  # noqa: E501
        f"{args.seed}); {len(creator)} creator-prompt queries; {len(stylus)} COCO/Parti captions whose Stylus "  # noqa: E501
        "choices are in the release (recall = mean over captions of the share of chosen model ids retrieved). "  # noqa: E501
        f"Embedder: {release.embedder_info.get('model')} (card vectors: template + name + example "
        f"prompts, template {release.embedder_info.get('version')}). Default fusion: RRF, k dense "
        f"{default.rrf_k:g} / BM25 {default.bm25_rrf_k:g}, weights adapted per query "
        f"(dense_confidence {default.dense_confidence:g}), depth {default.depth}, one version per model "
        f"after rank {default.one_version_after}.",
        "",
        "| ranking | creator R@1 | creator R@10 | creator R@150 | Stylus R@10 | Stylus R@150 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['creator@1']:.3f} | {r['creator@10']:.3f} | {r['creator@150']:.3f} | "
            f"{r['stylus@10']:.3f} | {r['stylus@150']:.3f} |"
        )
    lines += [
        "",
        f"Check on {len(sample)} creator queries: `Release.search_batch` R@10 = {api_r10 / len(sample):.3f}, "
        f"the vectorised evaluation = {vec_r10:.3f}.",
        "",
        "Targets: creator R@10 ≥ 0.90, Stylus R@150 ≥ 0.90 (one default configuration).",
    ]
    if grid:
        lines += [
            "",
            "Fusion tuning grid (this half only):",
            "",
            "| config | creator R@1 | creator R@10 | creator R@150 | Stylus R@10 | Stylus R@150 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in grid.items():
            lines.append(
                f"| {name} | {r['creator@1']:.3f} | {r['creator@10']:.3f} | {r['creator@150']:.3f} | "
                f"{r['stylus@10']:.3f} | {r['stylus@150']:.3f} |"
            )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
