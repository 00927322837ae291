"""Beam pipeline options shared by the pipelines in ``pipelines/``.

Beam's default local runner (since 2.68) first tries to download a Prism binary from the internet with
no timeout, which hangs or fails on an offline machine, and ``PrismRunner`` fails outright here. So the
toolkit names the in-process FnApiRunner explicitly unless the user passes ``--runner``.
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

#: Full class path of the in-process runner used when no ``--runner`` is given.
DEFAULT_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"

_ALIASES = {
    "direct": DEFAULT_RUNNER,
    "local": DEFAULT_RUNNER,
    "fnapirunner": DEFAULT_RUNNER,
    "inprocess": DEFAULT_RUNNER,
}


def split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a command line at the first ``--``: the toolkit's own flags, then Beam pipeline options.

    Only what follows ``--`` goes to Beam. The toolkit's parsers then use ``parse_args`` (not
    ``parse_known_args``), so a mistyped flag such as ``--max-dead-leter-fraction`` is an error instead
    of being handed to Beam and silently ignored.
    """
    args = list(argv)
    if "--" not in args:
        return args, []
    cut = args.index("--")
    return args[:cut], args[cut + 1 :]


def resolve_runner(name: str | None) -> str:
    """Map a user's runner name to what Beam expects; ``None``/"direct" → the in-process runner."""
    if not name:
        return DEFAULT_RUNNER
    return _ALIASES.get(name.strip().lower(), name)


def make_pipeline_options(beam_args: Sequence[str] = (), runner: str | None = None) -> PipelineOptions:
    """Build :class:`PipelineOptions` from leftover CLI flags, defaulting to the in-process runner."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={resolve_runner(runner)}")
    else:
        fixed: list[str] = []
        it = iter(args)
        for a in it:
            if a == "--runner":
                fixed.append(f"--runner={resolve_runner(next(it, None))}")
            elif a.startswith("--runner="):
                fixed.append(f"--runner={resolve_runner(a.split('=', 1)[1])}")
            else:
                fixed.append(a)
        args = fixed
    return PipelineOptions(args)
