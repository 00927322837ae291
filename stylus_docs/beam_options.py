"""Beam pipeline options shared by the pipelines in ``pipelines/``.

Beam's default local runner (since 2.68) first tries to download a Prism binary from the internet with
no timeout, which hangs or fails on an offline machine, and ``PrismRunner`` fails outright here. So the
toolkit names the in-process FnApiRunner explicitly unless the user passes ``--runner``.
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from stylus_docs.errors import FatalError

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
    endpoint = _flag_value(args, "--job_endpoint")
    if endpoint and endpoint != "embed" and _flag_value(args, "--job_server_timeout") is None:
        # Beam gives the job's state and message streams the same deadline as a single request to the
        # job service (--job_server_timeout, 300 s), so any portable job running longer fails with
        # DEADLINE_EXCEEDED. The deadline is lifted for the streams; an endpoint that does not answer
        # is refused here, in one line, instead of after that long.
        check_job_endpoint(endpoint)
        args.append(f"--job_server_timeout={JOB_STREAM_TIMEOUT_S}")
    return PipelineOptions(args)


#: Deadline put on a portable job's state stream (Beam applies the job-service request timeout to it).
JOB_STREAM_TIMEOUT_S = 7 * 24 * 3600
#: Seconds a job service gets to answer before the run is refused.
JOB_ENDPOINT_CONNECT_S = 30.0


def _flag_value(args: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1] if i + 1 < len(args) else ""
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def check_job_endpoint(endpoint: str, timeout_s: float = JOB_ENDPOINT_CONNECT_S) -> None:
    """Raise :class:`FatalError` when no job service answers at ``endpoint`` within ``timeout_s``."""
    import grpc

    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise FatalError(f"no Beam job service answers at --job_endpoint={endpoint} "
                         f"(waited {timeout_s:.0f} s)") from None  # fmt: skip
    finally:
        channel.close()
