"""``stylus-docs crawl civitai|hf``: crawl adapter cards into raw snapshots (runs pipelines/crawl.py).

With ``--previous RAW_OLD`` (a complete earlier snapshot) the crawl is a delta: the listing is fetched
again, details of unchanged records are carried over from RAW_OLD, and what RAW_OLD listed and a complete
new listing lacks is written as tombstones. ``--host green|red`` picks the Civitai host.

Exit status: 0 when the crawl is complete; 2 with one line on a fatal error (bad flags, ``--nsfw``
without ``--host red``, a ``--previous`` that is not a complete snapshot, a crawl with other parameters
in OUT, unreachable host after retries, 401 with a token); 1 when some partition could not be finished
(run the same command again to resume).
"""

from __future__ import annotations

import argparse

from stylus_docs.errors import FatalError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``crawl`` parser."""
    from pipelines.crawl import add_arguments

    parser = subparsers.add_parser("crawl", help="crawl Civitai or Hugging Face cards into raw snapshots",
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(func=handle, accepts_extra=True)
    return parser


def handle(args: argparse.Namespace, extra: list[str]) -> int:
    """Run the crawl pipeline; ``extra`` are Beam pipeline options."""
    from pipelines.crawl import config_from_args, run_config

    summary = run_config(config_from_args(args), extra, quiet=args.quiet)
    if not summary["complete"]:
        parts = ", ".join(f"{k} ({v})" for k, v in summary["incomplete_partitions"].items())
        raise FatalError(f"crawl incomplete: {parts}; run the same command again to resume", exit_code=1)
    return 0
