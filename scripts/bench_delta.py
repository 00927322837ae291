#!/usr/bin/env python3
"""Nightly-rebuild benchmark: a full day, then a 1 %-changed day through ``stylus-docs rebuild``.

On the replay server (``scripts/replay_server.py``, 50 ms latency per request) with the developer half
of the 2023 corpus (``../shared/data/civitai-2023/lora_normal.dev.jsonl.gz``, 3,994 models), in one
process and one run:

* day 1: ``rebuild`` into an empty working directory — (1) a full crawl and (2) a full build (default
  refiner and embedder: extractive, MiniLM on the CPU), published;
* day 2, ``--repeat`` times from a fresh copy of day 1's working directory and release: the server is
  started again **on the same port** (carry-over needs the same API URL) with ``--mutate 0.01`` (new
  models, new versions, changed descriptions and images, deleted models) and ``rebuild`` runs — (3) a
  delta crawl against day 1's snapshot, (4) an incremental build with ``--previous`` = day 1's
  release, (5) the whole command (lock, both, publish, prune, ``last-run.json``).

Crawl figures are the crawl's own summary (requests, ``elapsed_s``), build figures the manifest's
``wall_s``, rebuild figures the command's ``wall_s``; day-2 figures are medians over the repeats.
Ratios compare day 2 with day 1 of the same run. Targets (issue 12): delta crawl requests ≤ 5 % and
time ≤ 10 % of the full crawl's; the 1 %-changed rebuild ≤ 10 % of a full crawl + build.

Writes the ``delta`` section of BENCHMARKS.md (``--no-write``: print only). Skips, exit 0, when
``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
from _scriptlib import free_port, replay_server  # noqa: E402 - scripts/ is on sys.path

SHARED = ROOT.parent / "shared" / "data" / "civitai-2023"
DEFAULT_MODELS = SHARED / "lora_normal.dev.jsonl.gz"
sys.path.insert(0, str(ROOT))


def rebuild_day(replay: Any, work: Path, docs: Path, port: int, crawl_flags: list[str],
                **server: Any) -> dict[str, Any]:  # fmt: skip
    """Serve one day on ``port`` and run one ``rebuild`` against it; returns its last-run record."""
    from stylus_docs.rebuild import RebuildConfig, run_rebuild

    srv, url = replay.start_server(port=port, **server)
    # The server's corpus lives in this process: frozen, the crawl's garbage collections do not walk it
    # (a real API's objects are not in the crawler's heap; measured: ~1 s of a 9 s delta crawl).
    gc.collect()
    gc.freeze()
    try:
        config = RebuildConfig(work=work, docs=docs, sources=("civitai",),
                               crawl_args={"civitai": ["--api-url", url, *crawl_flags]})  # fmt: skip
        record = run_rebuild(config)
    finally:
        srv.shutdown()
        srv.server_close()
        gc.unfreeze()
    if record.get("exit_code") != 0:
        raise SystemExit(f"bench_delta: rebuild ended with exit {record.get('exit_code')} "
                         f"({record.get('exit_reason')}): {record.get('error', '')}")  # fmt: skip
    return record


def figures(record: dict[str, Any]) -> dict[str, Any]:
    """The measured figures of one rebuild record."""
    crawl = record["crawl"]["civitai"]
    build = record["build"]
    return {
        "models": crawl["models"],
        "requests": crawl["requests"],
        "crawl_s": crawl["elapsed_s"],
        "build_s": build["wall_s"],
        "rebuild_s": record["wall_s"],
        "versions": crawl["versions"],
        "fetched": crawl.get("fetched"),
        "carried_over": crawl.get("carried_over"),
        "new": crawl.get("new"),
        "changed": crawl.get("changed"),
        "removed": crawl.get("removed"),
        "counts": build["counts"],
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %"


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "**not met**"


def render(models_file: Path, mutate: float, full: dict[str, Any], days: list[dict[str, Any]],
           load: tuple[float, float]) -> str:  # fmt: skip
    """The BENCHMARKS.md section."""
    med = {k: _median(days, k) for k in ("requests", "crawl_s", "build_s", "rebuild_s")}
    full_cb = full["crawl_s"] + full["build_s"]
    r_requests = med["requests"] / full["requests"]
    r_crawl = med["crawl_s"] / full["crawl_s"]
    r_sum = (med["crawl_s"] + med["build_s"]) / full_cb
    r_rebuild = med["rebuild_s"] / full["rebuild_s"]
    d = days[0]
    c = d["counts"]
    keys = ("fetched", "carried_over", "new", "changed", "removed", "counts")
    same = (
        "the same in every repeat" if all(all(r[k] == d[k] for k in keys) for r in days) else "first repeat"
    )
    repeats = "; ".join(f"{r['crawl_s']:.1f} + {r['build_s']:.1f} → {r['rebuild_s']:.1f} s" for r in days)
    lines = [
        "## delta (nightly rebuild, `scripts/bench_delta.py`)",
        "",
        f"`{models_file.name}` ({full['models']} models listed) through the replay server, 50 ms latency "
        "per request, in the benchmark's own process (its threads share the CPU with the crawl; its "
        "corpus is `gc.freeze()`d so that the crawl's garbage collections do not walk it); "
        "`stylus-docs rebuild` in-process (`run_rebuild`), Civitai only, default crawl flags (concurrency "
        "16, 10 images per version), default refiner and embedder (extractive, MiniLM on the CPU), "
        "in-process Beam runner. "
        f"Day 1: an empty working directory (a full crawl and a full build). Day 2: `--mutate {mutate} "
        "--mutate-seed 1` served on the same port (a delta crawl against day 1's snapshot, an incremental "
        f"build against day 1's release), {len(days)} times from fresh copies of day 1; medians. "
        f"{platform.machine()} with {os.cpu_count()} cores shared with other jobs, load average "
        f"{load[0]:.2f} at the start and {load[1]:.2f} at the end.",
        "",
        "| | requests | crawl s | build s | crawl + build s | rebuild s |",
        "|---|---|---|---|---|---|",
        f"| day 1: full | {full['requests']} | {full['crawl_s']:.1f} | {full['build_s']:.1f} | "
        f"{full_cb:.1f} | {full['rebuild_s']:.1f} |",
        f"| day 2: 1 % changed (median) | {med['requests']:.0f} | {med['crawl_s']:.1f} | "
        f"{med['build_s']:.1f} | {med['crawl_s'] + med['build_s']:.1f} | {med['rebuild_s']:.1f} |",
        f"| day 2 / day 1 | {_pct(med['requests'], full['requests'])} | "
        f"{_pct(med['crawl_s'], full['crawl_s'])} | {_pct(med['build_s'], full['build_s'])} | "
        f"{_pct(med['crawl_s'] + med['build_s'], full_cb)} | {_pct(med['rebuild_s'], full['rebuild_s'])} |",
        "",
        f"Targets: delta crawl requests ≤ 5 % of the full crawl's — {_verdict(r_requests, 0.05)} "
        f"({100 * r_requests:.1f} %); delta crawl time ≤ 10 % — {_verdict(r_crawl, 0.10)} "
        f"({100 * r_crawl:.1f} %); the 1 %-changed day's crawl + build ≤ 10 % of a full crawl + build — "
        f"{_verdict(r_sum, 0.10)} ({100 * r_sum:.1f} %; the whole `rebuild` command: "
        f"{100 * r_rebuild:.1f} % of day 1's).",
        "",
        f"Day 2 ({same}): versions fetched {d['fetched']}, carried over {d['carried_over']} "
        f"(of {d['versions']}), new {d['new']}, changed {d['changed']}, removed {d['removed']}; build "
        f"written {c.get('written')}, reused {c.get('reused')}, refined {c.get('refined')}, embedded "
        f"{c.get('embedded')}, removed {c.get('removed')}. Repeats (crawl + build → rebuild): {repeats}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="/models items (.jsonl.gz)")
    parser.add_argument("--mutate", type=float, default=0.01, help="fraction of models changed on day 2")
    parser.add_argument("--repeat", type=int, default=3, help="day-2 runs (medians are reported)")
    parser.add_argument(
        "--no-write", action="store_true", help="print the section, do not update BENCHMARKS.md"
    )
    args = parser.parse_args()
    if not args.models.exists():
        print(f"bench_delta: {args.models} not found (../shared/data absent); skipped", file=sys.stderr)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    replay = replay_server()
    server = {"civitai_models": args.models, "era": 2023, "latency_ms": 50}
    crawl_flags: list[str] = []
    load_start = os.getloadavg()[0]
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    try:
        work, docs = tmp / "day1" / "work", tmp / "day1" / "docs"
        day1 = rebuild_day(replay, work, docs, port, crawl_flags, **server)
        full = figures(day1)
        print(f"day 1: {json.dumps({k: v for k, v in full.items() if k != 'counts'})}", flush=True)
        days = []
        for i in range(args.repeat):
            run_work, run_docs = tmp / f"day2-{i}" / "work", tmp / f"day2-{i}" / "docs"
            shutil.copytree(work, run_work)
            shutil.copytree(docs, run_docs)
            record = rebuild_day(replay, run_work, run_docs, port, crawl_flags, mutate=args.mutate,
                                 mutate_seed=1, truth_path=tmp / "truth.json", **server)  # fmt: skip
            days.append(figures(record))
            print(
                f"day 2 #{i + 1}: {json.dumps({k: v for k, v in days[-1].items() if k != 'counts'})}",
                flush=True,
            )
            shutil.rmtree(tmp / f"day2-{i}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = render(args.models, args.mutate, full, days, (load_start, os.getloadavg()[0]))
    print(body)
    if not args.no_write:
        from benchmarks_md import replace_section

        replace_section("delta", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
