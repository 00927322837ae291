"""``stylus-docs link``: match a folder of your own ``.safetensors`` files to a release by hash.

::

    stylus-docs link --docs DOCS DIR [--index FILE] [--rehash] [--format table|json]

Writes ``DIR/.stylus-link.json`` (see :mod:`stylus_docs.library`); ``compose --local DIR`` then picks
only among the linked adapters and ``generate`` loads those files instead of downloading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``link`` parser."""
    parser = subparsers.add_parser(
        "link",
        help="link a folder of your own .safetensors files to a release by hash",
        description="Hash the .safetensors files under DIR (streamed SHA-256, cached by path, size and "
        "mtime), match them to the release's adapters by SHA-256 or AutoV2 (its first 10 hex digits) and "
        "write the index DIR/.stylus-link.json. Unmatched files are listed.",
    )
    parser.add_argument("dir", type=Path, help="folder of .safetensors files (searched recursively)")
    parser.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    parser.add_argument("--index", type=Path, help="write the index here instead of DIR/.stylus-link.json")
    parser.add_argument("--rehash", action="store_true", help="hash every file again (ignore the cache)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=run, accepts_extra=False)
    return parser


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs link``: 0 whether or not every file matched (the report says)."""
    from stylus_docs.library import link

    report = link(args.docs, args.dir, index=args.index, rehash=args.rehash)
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return 0
    for f in report.matched:
        print(f"linked\t{f.path}\t{f.adapter_id}\t{f.matched_by}")
    for f in report.unmatched:
        print(f"unmatched\t{f.path}\tsha256 {f.sha256}")
    summary = report.to_dict()
    by = summary["matched_by"]
    print(
        f"{len(report.files)} files in {report.dir}: {len(report.matched)} linked to build {report.build_id} "
        f"({by['sha256']} by SHA-256, {by['autov2']} by AutoV2), {len(report.unmatched)} unmatched; "
        f"{report.hashed} hashed, {report.cached} from the cache; index {report.index}"
    )
    return 0
