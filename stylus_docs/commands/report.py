"""``stylus-docs report``: write the static HTML report of a release.

::

    stylus-docs report --docs DOCS --out report.html [--build BUILD_ID] [--previous DOCS] [--eval DIR]
                       [--examples-per-adapter N] [--rendered-per-adapter N]
                       [--fetch-examples] [--image-hosts HOST ...]

Writes ``report.html`` and ``report_files/`` beside it (plots, thumbnails, copied eval files); prints
the HTML's path. The page needs no network. Exit status 2 with one line on stderr when the release, a
build or a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` parser."""
    parser = subparsers.add_parser(
        "report", help="write the HTML report of a release", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--docs", required=True, help="release root (CURRENT is followed) or a build directory"
    )
    parser.add_argument(
        "--out", required=True, help="HTML file to write; its files go to <name>_files/ beside it"
    )
    parser.add_argument(
        "--build", default=None, metavar="BUILD_ID", help="report this build, not the live one"
    )
    parser.add_argument(
        "--previous", default=None, metavar="DOCS",
        help="release (or build directory) to diff against; default: the build before it in --docs",
    )  # fmt: skip
    parser.add_argument(
        "--eval", default=None, metavar="DIR",
        help="`stylus-docs eval run` output (eval.json, eval.csv, pareto.png/svg) to show",
    )  # fmt: skip
    parser.add_argument("--examples-per-adapter", type=int, default=3, metavar="N", help="default 3")
    parser.add_argument("--rendered-per-adapter", type=int, default=4, metavar="N", help="default 4")
    parser.add_argument(
        "--fetch-examples", action="store_true",
        help="download example images (from the image hosts only, size and time capped) to thumbnail "
        "them; without it examples without a local file are links",
    )  # fmt: skip
    parser.add_argument(
        "--image-hosts", nargs="*", default=[], metavar="HOST",
        help="more hosts example images may be fetched from (host, host:port, *.domain)",
    )  # fmt: skip
    parser.set_defaults(func=run, accepts_extra=False)
    return parser


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs report``."""
    from stylus_docs.report import ReportOptions, write_report

    options = ReportOptions(
        examples_per_adapter=args.examples_per_adapter,
        rendered_per_adapter=args.rendered_per_adapter,
        fetch_examples=args.fetch_examples,
        image_hosts=tuple(args.image_hosts),
    )
    result = write_report(
        args.docs, args.out, build_id=args.build, previous=args.previous, eval_dir=args.eval, options=options
    )
    print(
        f"stylus-docs report: {result.adapters} adapters, {result.thumbnails} thumbnails "
        f"({result.images_skipped} images skipped) -> {result.files_dir}",
        file=sys.stderr,
    )
    print(result.html.resolve())
    return 0
