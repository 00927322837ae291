"""``stylus-docs build``: raw snapshots → a published StylusDocs release.

Flags after ``--`` (and only those) are Beam pipeline options; an unknown flag before ``--`` is an
error. E.g.
``stylus-docs build --raw crawl/ --out docs/ -- --direct_num_workers=2``.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``build`` subcommand."""
    from pipelines.build import add_arguments

    parser = subparsers.add_parser(
        "build",
        help="build a StylusDocs release from raw snapshots",
        description="Normalize, filter, refine, embed and write raw snapshots as a StylusDocs release; "
        "publish it atomically. Extra Beam options go after '--'.",
    )
    add_arguments(parser)
    parser.set_defaults(func=handle, accepts_extra=True)
    return parser


def handle(args: argparse.Namespace, extra: list[str]) -> int:
    """Run the build and print the manifest summary."""
    from pipelines.build import config_from_args, run_build, summary

    manifest = run_build(config_from_args(args), extra, args.runner)
    print(summary(manifest))
    return 0
