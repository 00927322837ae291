#!/usr/bin/env python3
"""Offline composer latency on the sample release, and the tiny CPU generate stage split.

1. Offline compose (retrieve top-150 + propose + enforce, no cache) over N prompts — COCO captions from
   ``../shared/data/prompts/coco_rank.csv`` when present (read at run time, never copied), else a built-in
   list — on ``data/out/docs`` (``make build``) or, when that is missing, the hand-made test release.
   Reports cold (first prompt of the process) and warm p50 / p95.
2. ``scripts/gpu_compose_bench.py --tiny``: the same stages as the GPU check, on CPU with the tiny pipeline.

Replaces the ``compose`` section of BENCHMARKS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
FALLBACK_PROMPTS = [
    "a graffiti of a corgi on the wall",
    "a fire dragon flying over a castle at night",
    "a woman in a red hanfu dress, ink wash painting",
    "a vintage car parked in a neon cyberpunk city",
    "an astronaut riding a horse on the moon, watercolor",
]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def prompts(n: int) -> tuple[list[str], str]:
    path = SHARED / "prompts" / "coco_rank.csv"
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [r.get("caption", "").strip() for r in csv.DictReader(handle)]
        return [r for r in rows if r][:n], f"first {n} COCO captions of coco_rank.csv"
    return (FALLBACK_PROMPTS * (n // len(FALLBACK_PROMPTS) + 1))[:n], "built-in prompts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=ROOT / "data" / "out" / "docs")
    parser.add_argument("-n", type=int, default=100, help="prompts")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny generate split")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from stylus_docs.compose import Composer, ComposeSettings

    docs = args.docs
    where = f"`{docs.relative_to(ROOT) if docs.is_relative_to(ROOT) else docs}` (sample release)"
    if not (docs / "CURRENT").is_file():
        spec = importlib.util.spec_from_file_location(
            "release_fixture", ROOT / "tests" / "release_fixture.py"
        )
        fx = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fx)
        docs = Path(tempfile.mkdtemp()) / "docs"
        fx.write_release(docs)
        where = "the hand-made test release (10 adapters; `make build` output was missing)"
    texts, source = prompts(args.n)
    composer = Composer(docs, ComposeSettings())
    t = time.perf_counter()
    composer.compose(texts[0])
    cold = time.perf_counter() - t
    total, retrieve = [], []
    picked = 0
    for text in texts:
        r = composer.compose(text)
        total.append(r["timings"]["total_s"])
        retrieve.append(r["timings"]["retrieve_s"])
        picked += sum(len(tp["adapters"]) for tp in r["topics"])
    q = statistics.quantiles(total, n=20)
    figures = {
        "release": where,
        "adapters": len(composer.source.cards.rows),
        "prompts": f"{len(texts)} ({source})",
        "cold_s": round(cold, 3),
        "p50_ms": round(statistics.median(total) * 1000, 2),
        "p95_ms": round(q[18] * 1000, 2),
        "retrieve_p50_ms": round(statistics.median(retrieve) * 1000, 2),
        "adapters_per_prompt": round(picked / len(texts), 2),
    }
    print(json.dumps(figures, indent=1))
    lines = [
        "<!-- bench:compose -->",
        "### Composer (offline) and the tiny generate split",
        "",
        f"`scripts/bench_compose.py`, 2-core CPU shared with other jobs. Offline compose (top-150 hybrid "
        f"retrieval + phrase scoring + rules, no cache) on {where}, {figures['adapters']} adapters, "
        f"{figures['prompts']} prompts:",
        "",
        "| cold (first prompt) | warm p50 | warm p95 | of which retrieve p50 | adapters chosen / prompt |",
        "|---|---|---|---|---|",
        f"| {figures['cold_s']} s | {figures['p50_ms']} ms | {figures['p95_ms']} ms | "
        f"{figures['retrieve_p50_ms']} ms | {figures['adapters_per_prompt']} |",
        "",
    ]
    if not args.no_tiny:
        gb = _script("gpu_compose_bench")
        tiny = gb.run_bench(tiny=True, reps=2, fillers=300, batches=[1, 4])
        body = gb.to_markdown(tiny, "compose-tiny").splitlines()[1:-1]
        lines += [
            "Tiny CPU generate split (`gpu_compose_bench.py --tiny`; a functional check, not a speed "
            "claim: toy model, contended CPU):",
            "",
            *body[2:],
            "",
        ]
    lines.append("<!-- /bench:compose -->")
    md = "\n".join(lines)
    print(md)
    if not args.no_write:
        gb = _script("gpu_compose_bench")
        gb.replace_section(ROOT / "BENCHMARKS.md", "compose", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
