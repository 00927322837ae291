"""``stylus-docs inspect``: what adapter files are, from their safetensors headers alone.

::

    stylus-docs inspect PATH... [--format json|table]

Per file: format (lora, locon, loha, lokr, dora, textual_inversion, checkpoint, unknown), key convention,
rank, targeted components and block kinds, guessed base family, and whether diffusers can load it (with
the reason when not). Only the header is read; pickle formats (``.ckpt``, ``.pt``, ``.bin``) are refused
unopened. Exit status 0 when every path was inspected (loadable or not); 2 when some path is missing,
not a file or unreadable — it is still reported (``format: unknown``, ``loadable: false``), with one
line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``inspect`` parser."""
    parser = subparsers.add_parser(
        "inspect",
        help="classify adapter files (LoRA, LoCon, LoHa, LoKr, DoRA, embedding) by header",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="weights files (.safetensors)")
    parser.add_argument("--format", choices=("json", "table"), default="json", help="default: json")
    parser.set_defaults(func=run, accepts_extra=False)
    return parser


def _targets_text(targets: dict[str, int], blocks: list[str]) -> str:
    parts = ", ".join(f"{k}={v}" for k, v in targets.items())
    return f"{parts} [{'/'.join(blocks)}]" if blocks else parts


def format_table(rows: list[dict[str, Any]]) -> str:
    """Human-readable rendering: one line per file, then its reason when it is not loadable."""
    header = f"{'format':<18} {'convention':<10} {'rank':>4} {'base':<7} {'load':<4}  path"
    lines = [header]
    for row in rows:
        rank = "-" if row["rank"] is None else str(row["rank"])
        load = "yes" if row["loadable"] else "no"
        lines.append(
            f"{row['format']:<18} {row['convention']:<10} {rank:>4} {row['base_family']:<7} {load:<4}  "
            f"{row['path']}"
        )
        targets = _targets_text(row["targets"], row["blocks"])
        if targets:
            lines.append(f"{'':<18} targets: {targets}")
        if row.get("token"):
            lines.append(f"{'':<18} token: {row['token']} ({row['vectors']} vectors)")
        if row["reason"]:
            lines.append(f"{'':<18} reason: {row['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs inspect``."""
    from stylus_docs.formats import inspect_file

    results = [inspect_file(path) for path in args.paths]
    for fmt in results:
        if not fmt.inspected:
            print(f"stylus-docs inspect: error: {fmt.path}: {fmt.reason}", file=sys.stderr)
    rows = [fmt.to_dict() for fmt in results]
    if args.format == "json":
        text = json.dumps(rows, ensure_ascii=False, indent=2)
    else:
        text = format_table(rows)
    sys.stdout.write(text + "\n")
    return 0 if all(fmt.inspected for fmt in results) else 2
