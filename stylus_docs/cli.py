"""The ``stylus-docs`` command line: a thin dispatcher over the library.

Each subcommand lives in ``stylus_docs/commands/<name>.py`` and exposes

* ``register(subparsers) -> argparse.ArgumentParser`` – adds its parser (and sets ``func``), and
* a handler ``func(args, extra) -> int`` stored with ``parser.set_defaults(func=...)``.

Subcommand modules are imported lazily by name, so ``stylus-docs query`` never imports torch or Beam.
Domain errors map to exit codes here: :class:`~stylus_docs.errors.FatalError` prints one line on
stderr and exits with its code; nothing else is caught, so real bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from stylus_docs.errors import FatalError
from stylus_docs.secrets import redact

#: Subcommand name → module under ``stylus_docs.commands``; one-line help shown by ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "crawl": ("crawl", "crawl Civitai or Hugging Face adapter cards into raw snapshots"),
    "build": ("build", "build a StylusDocs release from raw snapshots"),
    "rebuild": ("rebuild", "scheduled job: delta crawl, incremental build, publish, prune"),
    "query": ("query", "hybrid search over a StylusDocs release"),
    "sql": ("sql", "run SQL over a StylusDocs release with DuckDB"),
    "inspect": ("inspect", "classify adapter files (LoRA, LoCon, LoHa, LoKr, DoRA, embedding) by header"),
    "download": ("download", "download adapter weights into the hash-verified cache"),
    "compose": ("compose", "pick adapters for a prompt (the Stylus composer)"),
    "generate": ("generate", "generate images with composed adapters (diffusers)"),
    "link": ("link", "link a folder of your own .safetensors files to a release by hash"),
    "eval": ("eval", "evaluate: CLIP score, FID/KID, dFID, retrieval recall, VLM judge, baselines"),
    "report": ("report", "write the HTML report of a release"),
}


def _wanted_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    # Same rule as stylus_docs.beam_options.split_beam_args, without importing Beam for every command.
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; with ``only`` set, import just that subcommand's module."""
    parser = argparse.ArgumentParser(prog="stylus-docs", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        importlib.import_module(f"stylus_docs.commands.{module}").register(sub)
    return parser


class _DropBeamImportNoise(logging.Filter):
    """Beam warns on import that the optional GCP client libraries are absent; that is expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def _configure_logging() -> None:
    # Configured before the subcommand modules are imported, so import-time warnings go through the filter.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamImportNoise())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    parser = build_parser(only=_wanted_command(argv))
    # Only what follows ``--`` is extra (Beam pipeline options); an unknown flag before it is an error.
    own, extra = _split_extra(argv)
    args = parser.parse_args(own)
    logging.getLogger().setLevel(logging.WARNING - 10 * min(args.verbose, 2))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra) or 0)
    except FatalError as exc:
        print(f"stylus-docs {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"stylus-docs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
