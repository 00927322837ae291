#!/usr/bin/env python3
"""`make build`: the main job on the bundled sample corpus and the embedded defaults.

1. start the replay server (scripts/replay_server.py) on loopback over ``data/sample``;
2. crawl Civitai and Hugging Face through it into ``OUT/raw`` (``stylus-docs crawl``);
3. build a StylusDocs release into ``OUT/docs`` (``stylus-docs build``: extractive refiner, MiniLM embedder);
4. print the manifest summary and run an example query.

Each step is the real CLI in a subprocess, so this is exactly what a user would type. Re-running is
cheap: the sample crawl takes seconds and the build reuses the previous release (``--previous``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "stylus_docs.cli"]


def _load_replay_server():
    spec = importlib.util.spec_from_file_location("replay_server", ROOT / "scripts" / "replay_server.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], env: dict[str, str]) -> None:
    print("+ stylus-docs " + " ".join(args[3:]), flush=True)
    proc = subprocess.run(args, env=env)
    if proc.returncode != 0:
        sys.exit(f"build_sample: step failed with exit status {proc.returncode}: {' '.join(args[3:])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/out", help="output root (default data/out)")
    parser.add_argument("--data", default=str(ROOT / "data" / "sample"), help="sample corpus directory")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first (no resume, no reuse)")
    parser.add_argument("--query", default="a graffiti of a corgi on the wall", help="example query")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    raw, docs = out / "raw", out / "docs"
    # The replay server listens on a new port each run and a crawl only resumes against the same URL,
    # so the (2-second) sample crawl starts afresh; the release is kept for the incremental build.
    if raw.exists():
        shutil.rmtree(raw)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")

    replay = _load_replay_server()
    server, base_url = replay.start_server(data_dir=args.data)
    try:
        _run(CLI + ["crawl", "civitai", "--out", str(raw), "--api-url", base_url], env)
        _run(CLI + ["crawl", "hf", "--out", str(raw), "--api-url", base_url], env)
    finally:
        server.shutdown()

    build = CLI + ["build", "--raw", str(raw), "--out", str(docs)]
    if (docs / "CURRENT").is_file():
        build += ["--previous", str(docs)]
    _run(build, env)

    from stylus_docs import release

    build_dir = release.resolve_build(docs)
    manifest = release.load_manifest(build_dir)
    counts = manifest["counts"]
    print(f"\nStylusDocs release {manifest['build_id']} at {build_dir}")
    print(f"  input {counts['input']}  written {counts['written']}  reused {counts.get('reused', 0)}"
          f"  refined {counts.get('refined', 0)}  embedded {counts.get('embedded', 0)}")
    print(f"  filtered {json.dumps(counts['filtered'], sort_keys=True)}")
    print(f"  dead letters {json.dumps(counts['dead_letter'], sort_keys=True)}")
    print(f"  refiner {manifest.get('refiner')}  embedder {manifest['embedder']}")
    print(f"\nExample query: {args.query!r}")
    _run(CLI + ["query", args.query, "--docs", str(docs), "-k", "8"], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
