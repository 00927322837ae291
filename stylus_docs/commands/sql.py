"""``stylus-docs sql``: read-only SQL over a release's ``adapters`` and ``images`` views (DuckDB)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``sql`` parser."""
    p = subparsers.add_parser(
        "sql",
        help="run SQL over a StylusDocs release with DuckDB",
        description=(
            "Run one read-only SQL statement over the views adapters and images of the live build. "
            "File access is restricted to the release directory."
        ),
    )
    p.add_argument("query", help='SQL, e.g. "SELECT base_model, count(*) FROM adapters GROUP BY 1"')
    p.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.set_defaults(func=run, accepts_extra=False)
    return p


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs sql``."""
    from stylus_docs.query import sandbox
    from stylus_docs.query.output import write_sql
    from stylus_docs.release import load_manifest, resolve_build

    build = resolve_build(args.docs).resolve()
    con = sandbox.connect(build, load_manifest(build))
    try:
        columns, rows = sandbox.run_sql(con, args.query)
    finally:
        con.close()
    write_sql(sys.stdout, columns, rows, args.format)
    return 0
