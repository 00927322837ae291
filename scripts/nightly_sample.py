#!/usr/bin/env python3
"""`make nightly`: three scheduled `stylus-docs rebuild` runs on the bundled sample, as cron would run them.

* day 1 — the sample as it is: a full crawl (nothing to compare with), a full build, published (exit 0);
* day 2 — the replay server's ``--mutate`` "next day" (new models and versions, changed descriptions and
  images, deleted models): a delta crawl against day 1's snapshot, an incremental build against the live
  release, tombstones for the deleted models, published (exit 0);
* day 2 again — nothing changed since the last complete snapshot: nothing built (exit 3).

The replay server listens on one fixed loopback port for all three, as a real API keeps its URL. Each run's
``WORK/last-run.json`` is summarised; the script fails if an exit code is not the expected one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
from _scriptlib import free_port, replay_server  # noqa: E402 - scripts/ is on sys.path

CLI = [sys.executable, "-m", "stylus_docs.cli"]


def run_day(label: str, replay: Any, port: int, work: Path, docs: Path, data: str,
            **server: Any) -> dict[str, Any]:  # fmt: skip
    """Serve one day of the corpus on ``port`` and run one rebuild against it; returns last-run.json."""
    srv, url = replay.start_server(data_dir=data, port=port, **server)
    try:
        argv = CLI + ["rebuild", "--work", str(work), "--docs", str(docs), "--sources", "civitai", "hf",
                      "--api-url", url, "--hf-api-url", url]  # fmt: skip
        print(f"+ [{label}] stylus-docs " + " ".join(argv[3:]), flush=True)
        code = subprocess.run(argv, env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")).returncode
    finally:
        srv.shutdown()
        srv.server_close()
    record = json.loads((work / "last-run.json").read_text())
    if record["exit_code"] != code:
        sys.exit(f"nightly_sample: exit {code} but last-run.json says {record['exit_code']}")
    return record


def describe(label: str, record: dict[str, Any]) -> str:
    crawl = record.get("crawl", {})
    parts = [f"{label:<13} exit {record['exit_code']} ({record['exit_reason']}), {record['wall_s']:.1f} s"]
    for source, c in crawl.items():
        parts.append(f"  {source}: {c.get('requests', 0)} requests, delta {json.dumps(c.get('delta', {}))}")
    build = record.get("build")
    if build:
        counts = build["counts"]
        parts.append(f"  build {build['build_id']}: written {counts['written']}, "
                     f"reused {counts.get('reused', 0)}, refined {counts.get('refined', 0)}, "
                     f"removed {counts.get('removed', 0)}")  # fmt: skip
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/out/nightly", help="output root (default data/out/nightly)")
    parser.add_argument("--data", default=str(ROOT / "data" / "sample"), help="sample corpus directory")
    parser.add_argument("--mutate", type=float, default=0.05, help="fraction changed on day 2 (default 0.05)")
    parser.add_argument("--seed", type=int, default=1, help="mutation seed")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    if out.exists():  # three days from scratch each time: the point is to see a first, a delta and a no-op
        shutil.rmtree(out)
    work, docs = out / "work", out / "docs"
    replay = replay_server()
    port = free_port()
    days = [
        ("day 1", {}, 0),
        ("day 2", {"mutate": args.mutate, "mutate_seed": args.seed, "truth_path": out / "truth.json"}, 0),
        ("day 2 again", {"mutate": args.mutate, "mutate_seed": args.seed}, 3),
    ]
    lines, bad = [], []
    for label, server, expected in days:
        record = run_day(label, replay, port, work, docs, args.data, **server)
        lines.append(describe(label, record))
        if record["exit_code"] != expected:
            bad.append(f"{label}: exit {record['exit_code']}, expected {expected}: {record.get('error', '')}")
    print("\nNightly rebuilds of the sample (WORK=" + str(work) + ")")
    print("\n".join(lines))
    if bad:
        sys.exit("nightly_sample: " + "; ".join(bad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
