#!/usr/bin/env python3
"""Crawl benchmark: the 5,031 models of ../shared/data/civitai-2023 through the replay server.

Runs the real crawl pipeline (``stylus-docs crawl civitai``) twice against a replay server with
50 ms latency per request: without faults and with 10% faults (Retry-After 0), and writes models/s,
requests/s, the fault overhead ratio and the most requests in flight to BENCHMARKS.md (section
``crawl``). Both 2023 files are concatenated into a temp file because the server takes one file.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _scriptlib import replay_server  # noqa: E402 - scripts/ is on sys.path

SHARED = ROOT.parent / "shared" / "data" / "civitai-2023"
sys.path.insert(0, str(ROOT))

from pipelines.crawl import (  # noqa: E402
    add_arguments,  # noqa: E402
    config_from_args,
    run_config,
)


def crawl_once(models_file: Path, out: Path, fault_rate: float, concurrency: int) -> dict:
    server, url = replay_server().start_server(civitai_models=models_file, era=2023, latency_ms=50,
                                                fault_rate=fault_rate, seed=1, retry_after=0)
    try:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(["civitai", "--out", str(out), "--api-url", url, "--host", "red", "--nsfw",
                                  "--quiet", "--no-progress", "--concurrency", str(concurrency),
                                  "--backoff", "0.05"])  # fmt: skip
        return run_config(config_from_args(args), quiet=True)
    finally:
        server.shutdown()
        server.server_close()


def write_section(text: str) -> None:
    from benchmarks_md import replace_section

    replace_section("crawl", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    files = [SHARED / "lora_normal.dev.jsonl.gz", SHARED / "lora_nsfw.dev.jsonl.gz"]
    if not all(f.exists() for f in files):
        print(f"bench_crawl: {SHARED} is absent; skipped", file=sys.stderr)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-crawl-"))
    try:
        models_file = work / "models.jsonl.gz"
        with gzip.open(models_file, "wb") as dst:
            for f in files:
                with gzip.open(f, "rb") as src:
                    shutil.copyfileobj(src, dst)
        clean = crawl_once(models_file, work / "clean", 0.0, args.concurrency)
        faulty = crawl_once(models_file, work / "faulty", 0.1, args.concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = faulty["elapsed_s"] / clean["elapsed_s"]
    rows = [("0%", clean), ("10%", faulty)]
    lines = [
        "## crawl (scripts/bench_crawl.py)",
        "",
        f"civitai-2023 (both files, {clean['models']} models) through the replay server, 50 ms latency per "
        f"request, in-process Beam runner, concurrency {args.concurrency}, images per version 10, "
        "Retry-After 0 on injected 429s. One run each, same machine, same process.",
        "",
        "| faults | models | versions | requests | retries | elapsed s | models/s | requests/s "
        "| max in flight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in rows:
        lines.append(f"| {label} | {s['models']} | {s['versions']} | {s['requests']} | {s['retries']} | "
                     f"{s['elapsed_s']} | {s['models_per_s']} | {s['requests_per_s']} | "
                     f"{s['max_in_flight']} |")
    lines += ["", f"Fault overhead (10% / 0% elapsed): **{ratio:.2f}×** (target ≤ 1.5×). "
              f"Retries by reason at 10%: {faulty['retries_by_reason']}."]
    text = "\n".join(lines)
    write_section(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
