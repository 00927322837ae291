#!/usr/bin/env python3
"""Scale-out benchmark: the build in-process vs a portable 2-worker pool vs multi-processing, and peak RSS
per SDK worker for synthetic catalogues of growing size.

1. **Runners** (the developer half of the 2023 corpus, ``../shared/data/civitai-2023/lora_normal.dev
   .jsonl.gz``, about 5,600 adapters): one build each in-process, through a job service + 2-process
   worker pool (``scripts/portable_sample.py``'s :class:`PortableServices`) and in multi-processing mode;
   wall time, peak RSS per worker (``VmHWM`` of each SDK worker process; in-process the one process,
   from ``resource.getrusage(RUSAGE_CHILDREN)``), and each release compared with the in-process one.
2. **Memory** (``--sizes``, default 20,000 and 80,000 adapters): synthetic snapshots made of the developer
   half's items (or the bundled sample's when ``../shared/data`` is absent) with fresh model and version
   ids, built through the portable 2-worker pool; peak RSS per worker at each size and their ratio (target
   < 1.5×).

Refiner extractive; embedder: the OpenAI-compatible backend against the loopback fake of
``tests/fakes/openai_server.py`` (deterministic 64-dimensional vectors), so the figures measure the
pipeline, not a model. ``--write-md`` replaces the ``scale-out`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests", ROOT / "scripts"):  # scripts run as files
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from fakes.openai_server import start_fake_openai, stop  # noqa: E402
from portable_sample import (  # noqa: E402
    CLI,
    MULTI_PROCESS_FLAGS,
    PortableServices,
    RssSampler,
    compare_releases,
    venv_env,
)

from stylus_docs.crawl.snapshot import write_chunk  # noqa: E402

DEV_HALF = ROOT.parent / "shared" / "data" / "civitai-2023" / "lora_normal.dev.jsonl.gz"
SAMPLE = ROOT / "data" / "sample" / "civitai" / "models.jsonl"
EMBED_DIM = 64
SECTION = "scale"
HEADING = "## scale-out (`scripts/bench_scale.py`)"


def _template_items() -> list[dict[str, Any]]:
    path = DEV_HALF if DEV_HALF.is_file() else SAMPLE
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def synthetic_items(adapters: int) -> Iterator[dict[str, Any]]:
    """Models cloned from the templates with fresh ids until ``adapters`` versions are listed."""
    templates = [t for t in _template_items() if t.get("modelVersions")]
    made, n = 0, 0
    while made < adapters:
        item = copy.deepcopy(templates[n % len(templates)])
        n += 1
        mid = 10_000_000 + n
        item["id"], item["name"] = mid, f"{item.get('name', 'model')} #{n}"
        versions = item["modelVersions"][: max(1, adapters - made)]
        for j, version in enumerate(versions):
            vid = 50_000_000 + n * 16 + j
            version["id"], version["modelId"] = vid, mid
        item["modelVersions"] = versions
        made += len(versions)
        yield item


def write_snapshot(raw: Path, items: Iterator[dict[str, Any]], per_chunk: int = 1000) -> int:
    """Lay ``items`` out as committed ``civitai/models-*`` chunks; return how many."""
    root = raw / "civitai"
    batch: list[dict[str, Any]] = []
    total = 0
    for item in items:
        batch.append(item)
        if len(batch) >= per_chunk:
            write_chunk(root, "models", batch)
            total, batch = total + len(batch), []
    if batch:
        write_chunk(root, "models", batch)
        total += len(batch)
    return total


def build(raw: Path, docs: Path, beam_args: Sequence[str], env: dict[str, str],
          sample_roots: Sequence[int] = ()) -> dict[str, Any]:  # fmt: skip
    """One ``stylus-docs build`` in a subprocess: wall seconds and peak RSS per worker (MiB)."""
    cmd = CLI + ["build", "--raw", str(raw), "--out", str(docs), "--no-progress", "--embedder", "openai",
                 "--embedder-model", f"fake-embed-{EMBED_DIM}", "--shards", "1"]  # fmt: skip
    if beam_args:
        cmd += ["--", *beam_args]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with RssSampler([*sample_roots, proc.pid]) as sampler:
        out, _ = proc.communicate()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: build failed ({proc.returncode}):\n{out.decode()[-3000:]}")
    peaks = sorted(sampler.peaks.values(), reverse=True)
    if not peaks:  # in-process: the driver is the worker
        peaks = [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]
    manifest = json.loads((docs / "latest" / "manifest.json").read_text())
    counts = manifest["counts"]
    return {"wall_s": round(wall, 1), "peak_rss_mib": [round(p, 1) for p in peaks],
            "written": counts["written"], "input": counts["input"],
            "filtered": sum(counts.get("filtered", {}).values()),
            "dead": sum(counts.get("dead_letter", {}).values())}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/stylus-bench-scale", help="scratch directory")
    parser.add_argument("--sizes", type=int, nargs="*", default=[20000, 80000], help="synthetic adapters")
    parser.add_argument("--skip-runners", action="store_true", help="only the memory part")
    parser.add_argument(
        "--stock-job-service",
        action="store_true",
        help="Beam's local_job_service_main instead of stylus_docs.job_service",
    )
    parser.add_argument("--write-md", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    server, base_url = start_fake_openai(embed_dim=EMBED_DIM)
    env = venv_env({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench-key",
                    "STYLUS_EMBEDDER_DIM": str(EMBED_DIM)})  # fmt: skip
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs",
        "runners": {},
        "memory": {},
        "job_service": "stock" if args.stock_job_service else "stylus_docs",
    }
    try:
        worker_env = {k: env[k] for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "STYLUS_EMBEDDER_DIM")}
        with PortableServices(out / "logs", 2, worker_env, stock=args.stock_job_service) as services:
            if not args.skip_runners:
                raw = out / "dev" / "raw"
                items = _template_items()
                report["runners_input"] = write_snapshot(raw, iter(items))
                runs = {"in-process": [], "portable (2-worker pool)": services.beam_args(),
                        "multi-processing (2 workers)": MULTI_PROCESS_FLAGS}  # fmt: skip
                for i, (name, flags) in enumerate(runs.items()):
                    roots = [services.pool.pid] if "portable" in name else []
                    docs = out / "dev" / f"docs{i}"
                    result = build(raw, docs, flags, env, roots)
                    if i:
                        result["differences"] = compare_releases(out / "dev" / "docs0", docs)
                    report["runners"][name] = result
                    print(name, result, flush=True)
                    (out / "report.json").write_text(json.dumps(report, indent=1))
            for size in args.sizes:
                raw = out / f"syn{size}" / "raw"
                write_snapshot(raw, synthetic_items(size))
                result = build(raw, out / f"syn{size}" / "docs", services.beam_args(), env,
                               [services.pool.pid])  # fmt: skip
                report["memory"][str(size)] = result
                print(size, result, flush=True)
                (out / "report.json").write_text(json.dumps(report, indent=1))
    finally:
        stop(server)
    sizes = [str(s) for s in args.sizes]
    if len(sizes) >= 2:
        lo, hi = report["memory"][sizes[0]], report["memory"][sizes[-1]]
        report["memory_ratio"] = round(max(hi["peak_rss_mib"]) / max(lo["peak_rss_mib"]), 2)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if args.write_md:
        from benchmarks_md import replace_section

        replace_section(SECTION, markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of a report."""
    lines = [
        HEADING,
        "",
        f"{report['date']}, {report['machine']}. Extractive refiner; embeddings from the "
        "loopback OpenAI-compatible fake (64 dimensions), so the figures are the pipeline's own.",
        "",
    ]
    if report["runners"]:
        lines += [
            f"Developer half of the 2023 corpus ({report.get('runners_input')} models), one build each:",
            "",
            "| runner | wall | peak RSS per worker | release vs in-process |",
            "| --- | --- | --- | --- |",
        ]
        for name, r in report["runners"].items():
            same = "reference" if "differences" not in r else (
                "identical" if not r["differences"] else f"{len(r['differences'])} differences")  # fmt: skip
            rss = ", ".join(f"{p:.0f}" for p in r["peak_rss_mib"]) + " MiB"
            lines.append(f"| {name} | {r['wall_s']} s | {rss} | {same} ({r['written']} written) |")
        lines.append("")
    if report["memory"]:
        service = ("Beam's stock `local_job_service_main`" if report.get("job_service") == "stock"
                   else "`stylus_docs.job_service` (bundle inputs streamed)")  # fmt: skip
        lines += [f"Peak RSS per SDK worker, synthetic catalogues through the portable 2-worker pool, job "
                  f"service {service}:", "",
                  "| adapters | wall | peak RSS per worker | input = written + filtered + dead letters |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for size, r in report["memory"].items():
            rss = ", ".join(f"{p:.0f}" for p in r["peak_rss_mib"]) + " MiB"
            counts = "—"
            if "filtered" in r:
                total = r["written"] + r["filtered"] + r["dead"]
                counts = (f"{r['input']:,} = {r['written']:,} + {r['filtered']:,} + {r['dead']:,}"
                          if total == r["input"] else f"**{r['input']:,} ≠ {total:,}**")  # fmt: skip
            lines.append(f"| {int(size):,} | {r['wall_s']} s | {rss} | {counts} |")
        if "memory_ratio" in report:
            lines += [
                "",
                f"Largest worker peak, largest vs smallest catalogue: {report['memory_ratio']}× "
                "(target < 1.5×).",
            ]
    return "\n".join([*lines, "", NOTES]) + "\n"


#: What the runs found (kept in the section so that a rerun does not lose it).
NOTES = (
    "How the memory target was met. With Beam's stock local job service the worker's peak grew 2.0× for "
    "4× the catalogue (2026-12-02: 1,728 → 3,452 MiB, 20,000 → 80,000 adapters), though everything the "
    "toolkit holds is bounded (shards of ≤ 2,000 adapters / 10,000 images, counts by CombinePerKey, the "
    "reuse join a CoGroupByKey, no per-process registry). The growth is the job service's: its "
    "`FnApiRunner` sends a bundle's whole input to the SDK worker as one Fn API `Elements.Data` message "
    "(a grouped PCollection even as one blob per partition), and the worker holds it for the whole "
    "bundle — its count of Python objects stayed flat (≈ 300–380 k) while its RSS jumped 775 → 1,375 MiB "
    "within one stage. `stylus_docs.job_service` re-slices each input into ≤ 10 MB element-aligned "
    "messages sent from a thread beside the runner (a blocking bounded send deadlocks: the runner sends "
    "all input before it starts the bundle). Its first version lost 267 of 80,000 adapters (2026-12-03; "
    "reverted): the runner's data streams also flush on a one-second timer, and that flush reads the "
    "buffer and then clears it under a lock `write` does not take, so a write in between vanished. Each "
    "chunk is now written under that lock and flushed whole (`tests/test_job_service.py` drives the "
    "runner's own time-based stream with a 1 ms flusher); the count column above is the build's own "
    "invariant, checked by every build."
)


if __name__ == "__main__":
    sys.exit(main())
