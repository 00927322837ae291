"""``stylus-docs query``: hybrid search over a release (one query, or a JSONL batch)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError

BATCH_SIZE = 256


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``query`` parser."""
    p = subparsers.add_parser(
        "query",
        help="hybrid search over a StylusDocs release",
        description="Dense (embedding) + BM25 search over a release, fused, with structured filters.",
    )
    p.add_argument("text", nargs="?", help="the prompt to search for (omit with --queries)")
    p.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10; Stylus uses 150)")
    p.add_argument(
        "--base-model", action="append", default=[], metavar="B", help="keep this base model (repeat)"
    )
    p.add_argument("--category", action="append", default=[], metavar="C", help="keep this category (repeat)")
    p.add_argument("--type", action="append", default=[], metavar="T", help="keep this adapter type (repeat)")
    p.add_argument("--min-downloads", type=int, default=None, metavar="N", help="at least N downloads")
    p.add_argument("--include-nsfw", action="store_true", help="include NSFW adapters (excluded by default)")
    p.add_argument("--where", metavar="EXPR", help="extra SQL condition over the adapters columns")
    p.add_argument("--queries", metavar="FILE.jsonl", help='batch mode: one {"query": ...} per line')
    p.add_argument("--fusion", choices=("rrf", "dense", "bm25"), default="rrf", help="ranking (default rrf)")
    p.add_argument(
        "--every-version",
        action="store_true",
        help="keep every version of a model in the results (default: one per model past rank 10)",
    )
    p.add_argument("--format", choices=("table", "json", "jsonl"), default="table", help="output format")
    p.set_defaults(func=run, accepts_extra=False)
    return p


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "base_model": args.base_model or None,
        "category": args.category or None,
        "type": args.type or None,
        "min_downloads": args.min_downloads,
        "include_nsfw": args.include_nsfw,
        "where": args.where,
    }


def _read_queries(path: str) -> list[dict[str, Any]]:
    try:
        handle = sys.stdin if path == "-" else Path(path).open(encoding="utf-8")
    except OSError as exc:
        raise FatalError(f"cannot read {path}: {exc.strerror}") from exc
    items: list[dict[str, Any]] = []
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FatalError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("query"), str):
                raise FatalError(f'{path}:{lineno}: expected an object with a string "query"')
            items.append(obj)
    return items


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs query``."""
    from stylus_docs.query import SearchConfig, open_release
    from stylus_docs.query.output import hit_record, write_hits

    if (args.text is None) == (args.queries is None):
        raise FatalError("give either a query TEXT or --queries FILE.jsonl")
    if args.queries is not None and args.format != "jsonl":
        raise FatalError("--queries writes JSON lines: use --format jsonl")
    if args.queries is None and args.format == "jsonl":
        raise FatalError("--format jsonl is for batch mode (--queries FILE.jsonl)")
    config = SearchConfig(fusion=args.fusion)
    if args.every_version:
        config = dataclasses.replace(config, one_version_after=None)
    release = open_release(args.docs, config=config)
    filters = _filters(args)
    out = sys.stdout
    if args.queries is None:
        write_hits(out, release.search(args.text, k=args.k, **filters), args.format)
        return 0
    items = _read_queries(args.queries)
    for start in range(0, len(items), BATCH_SIZE):
        chunk = items[start : start + BATCH_SIZE]
        results = release.search_batch([it["query"] for it in chunk], k=args.k, **filters)
        for item, hits in zip(chunk, results, strict=True):
            record = {"query": item["query"]}
            record.update({key: value for key, value in item.items() if key not in ("query", "results")})
            record["results"] = [
                {"adapter_id": h.adapter_id, "score": h.score, "dense": rec["dense"], "bm25": rec["bm25"]}
                for h, rec in ((h, hit_record(h, i + 1)) for i, h in enumerate(hits))
            ]
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0
