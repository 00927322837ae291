"""``stylus-docs rebuild``: the scheduled job — delta crawl, incremental build, publish, prune.

Exit status: 0 published; 1 a crawl is incomplete (run again: it resumes); 2 configuration or fatal
error; 3 nothing changed (nothing published); 4 another rebuild of the same ``--work`` is running.
``WORK/last-run.json`` says what was fetched, changed, removed, requests, retries and wall time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``rebuild`` parser."""
    p = subparsers.add_parser("rebuild", help="scheduled rebuild: delta crawl, build, publish",
                              description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--work", required=True, type=Path, metavar="DIR",
                   help="working directory: dated snapshots, the lock, last-run.json")  # fmt: skip
    p.add_argument("--docs", required=True, type=Path, metavar="DOCS", help="release root to publish into")
    p.add_argument("--sources", nargs="+", default=["civitai"], choices=("civitai", "hf"),
                   help="what to crawl (default civitai)")  # fmt: skip
    p.add_argument("--keep-snapshots", type=int, default=3, metavar="N", help="snapshots kept (default 3)")
    c = p.add_argument_group("crawl (Civitai)")
    c.add_argument("--host", choices=("green", "red"), default=None, help="civitai.com (green) or .red")
    c.add_argument("--api-url", default=None, help="Civitai API base URL (a mirror, the replay server)")
    c.add_argument("--types", nargs="+", default=None, metavar="T", help="model types, e.g. LORA LoCon DoRA")
    c.add_argument("--base-models", nargs="+", default=None, metavar="B", help="base models to crawl")
    c.add_argument("--nsfw", action="store_true", help="include NSFW models (needs --host red)")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N models (partial)")
    c.add_argument("--rps", type=float, default=None, help="requests per second per host")
    c.add_argument("--concurrency", type=int, default=None, metavar="N", help="version fetches in flight")
    c.add_argument("--crawl-flags", default="", metavar="'FLAGS'", help="more `crawl civitai` flags, quoted")
    h = p.add_argument_group("crawl (Hugging Face)")
    h.add_argument("--hf-api-url", default=None, help="Hub API base URL")
    h.add_argument("--hf-flags", default="", metavar="'FLAGS'", help="more `crawl hf` flags, quoted")
    b = p.add_argument_group("build")
    b.add_argument("--refiner", choices=("extractive", "openai"), default=None)
    b.add_argument("--refiner-model", default=None, metavar="NAME")
    b.add_argument("--embedder", choices=("minilm", "openai", "clip"), default=None)
    b.add_argument("--keep-deleted", action="store_true", help="keep deleted adapters, flagged deleted=true")
    b.add_argument("--keep-builds", type=int, default=None, metavar="N", help="builds kept in DOCS")
    b.add_argument("--build-flags", default="", metavar="'FLAGS'", help="more `build` flags, quoted")
    p.set_defaults(func=handle, accepts_extra=True)
    return p


def _opt(argv: list[str], flag: str, value: object) -> None:
    if value is None or value is False:
        return
    if value is True:
        argv.append(flag)
    elif isinstance(value, list):
        argv += [flag, *map(str, value)]
    else:
        argv += [flag, str(value)]


def crawl_args(args: argparse.Namespace) -> dict[str, list[str]]:
    """Per-source crawl flags from the parsed ``rebuild`` flags."""
    civ: list[str] = []
    for flag, value in (("--host", args.host), ("--api-url", args.api_url), ("--types", args.types),
                        ("--base-models", args.base_models), ("--nsfw", args.nsfw), ("--limit", args.limit),
                        ("--rps", args.rps), ("--concurrency", args.concurrency)):  # fmt: skip
        _opt(civ, flag, value)
    hf: list[str] = []
    for flag, value in (("--api-url", args.hf_api_url), ("--rps", args.rps), ("--limit", args.limit)):
        _opt(hf, flag, value)
    return {"civitai": civ + shlex.split(args.crawl_flags), "hf": hf + shlex.split(args.hf_flags)}


def build_args(args: argparse.Namespace) -> list[str]:
    """Build flags from the parsed ``rebuild`` flags."""
    out: list[str] = []
    for flag, value in (("--refiner", args.refiner), ("--refiner-model", args.refiner_model),
                        ("--embedder", args.embedder), ("--keep-deleted", args.keep_deleted),
                        ("--keep", args.keep_builds)):  # fmt: skip
        _opt(out, flag, value)
    return out + shlex.split(args.build_flags)


def handle(args: argparse.Namespace, extra: list[str]) -> int:
    """Run one rebuild; print a one-line outcome and return its exit code."""
    from stylus_docs.rebuild import RebuildConfig, run_rebuild

    config = RebuildConfig(work=args.work, docs=args.docs, sources=tuple(args.sources),
                           crawl_args=crawl_args(args), build_args=build_args(args),
                           keep_snapshots=args.keep_snapshots, beam_args=list(extra))  # fmt: skip
    record = run_rebuild(config)
    code = int(record["exit_code"])
    line = {
        "exit_code": code, "exit_reason": record["exit_reason"], "changes": record.get("changes"),
        "build_id": (record.get("build") or {}).get("build_id"), "wall_s": record.get("wall_s"),
    }  # fmt: skip
    if code in (0, 3):
        print(json.dumps(line))
    else:
        print(f"stylus-docs rebuild: {record['exit_reason']}: {record.get('error', '')}".rstrip(": "),
              file=sys.stderr)  # fmt: skip
    return code
