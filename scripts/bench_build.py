"""Benchmark of the build stage on the SFW half of the 2023 Civitai corpus (CPU, default refiner/embedder).

Measures, in one run:

* full build wall time (``run_build`` in-process: read, normalize, filter, refine, embed, write, publish)
  and adapters/s;
* pure embedding time of the same texts (the written rows' embedding texts → vectors with the same
  embedder, model already loaded, no Beam) and the pipeline overhead ratio full / pure − 1;
* an incremental rebuild with 1% of the models' descriptions changed (``--previous``) and its ratio to
  the full build.

Writes the ``build`` section of BENCHMARKS.md. Usage: ``python scripts/bench_build.py [--input FILE]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "civitai-2023" / "lora_normal.dev.jsonl.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument(
        "--changed", type=float, default=0.01, help="fraction of models changed for the rebuild"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    src = Path(args.input)
    if not src.exists():
        print(
            f"bench_build: input {src} not found (../shared/data absent); nothing measured", file=sys.stderr
        )
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import pyarrow.parquet as pq
    from benchmarks_md import replace_section

    from pipelines.build import BuildConfig, run_build
    from stylus_docs import release
    from stylus_docs.embedding import embed_cards, load_embedder

    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))
    docs = tmp / "docs"
    t0 = time.perf_counter()
    full = run_build(BuildConfig(raw=[str(src)], out=str(docs), progress=False))
    full_s = time.perf_counter() - t0
    written = full["counts"]["written"]

    build = release.resolve_build(docs)
    manifest = release.load_manifest(build)
    rows = []
    columns = ["title", "refined_description", "tags", "trigger_words", "example_prompts", "embedding"]
    for path in release.table_files(build, manifest, "adapters"):
        rows.extend(pq.read_table(path, columns=columns).to_pylist())
    embedder = load_embedder("minilm")
    embed_cards(embedder, rows[:8])  # warm-up
    t0 = time.perf_counter()
    vecs = embed_cards(embedder, rows)  # exactly the vectors the build computes, without Beam
    pure_s = time.perf_counter() - t0
    assert vecs.shape == (len(rows), 384) and np.isfinite(vecs).all()
    # Same texts, same views: the baseline must reproduce the build's own vectors (else it measures less).
    built = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    assert np.abs(vecs - built).max() < 1e-4, "pure embedding does not reproduce the build's vectors"

    items = [json.loads(line) for line in gzip.open(src, "rt", encoding="utf-8")]
    rng = random.Random(0)
    changed = rng.sample(range(len(items)), max(1, int(len(items) * args.changed)))
    for i in changed:
        items[i]["description"] = (items[i].get("description") or "") + "<p>Edited for the benchmark.</p>"
    edited = tmp / "edited.jsonl.gz"
    with gzip.open(edited, "wt", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    t0 = time.perf_counter()
    inc = run_build(
        BuildConfig(raw=[str(edited)], out=str(tmp / "docs2"), previous=str(docs), progress=False)
    )
    inc_s = time.perf_counter() - t0
    c = inc["counts"]

    overhead = full_s / pure_s - 1
    body = f"""## build

Input: `{src.name}` ({len(items)} models, {full["counts"]["input"]} adapter versions in, {written} written);
default refiner (extractive@v1) and embedder (MiniLM, CPU), in-process Beam runner, one run on
{platform.machine()} with {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end of the run
(absolute times are noisy on these machines; the ratios compare runs made back to back).

| measure | value |
| --- | --- |
| full build wall time | {full_s:.1f} s |
| adapters/s (written / full wall) | {written / full_s:.1f} |
| pure embedding of the same {len(rows)} adapters (no Beam, model loaded) | {pure_s:.1f} s |
| pipeline overhead (full / pure − 1) | {overhead * 100:.0f} % (target ≤ 25 %) |
| incremental rebuild, {len(changed)} models ({args.changed:.0%}) changed | {inc_s:.1f} s |
| incremental / full | {inc_s / full_s * 100:.1f} % (target ≤ 10 %) |
| incremental counts | reused {c["reused"]}, refined {c["refined"]}, embedded {c["embedded"]} |

Filtered (full build): `{json.dumps(full["counts"]["filtered"], sort_keys=True)}`;
dead letters: `{json.dumps(full["counts"]["dead_letter"], sort_keys=True)}`.
"""
    print(body)
    if not args.no_write:
        replace_section("build", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
