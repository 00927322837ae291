"""Beam's pure-Python job service, with bundle inputs streamed to the SDK workers in bounded chunks.

``python -m stylus_docs.job_service --port 8099`` is
``python -m apache_beam.runners.portability.local_job_service_main --port 8099`` (same flags) with one
difference. Beam's local job service runs each job with its ``FnApiRunner``, which sends a bundle's whole
input to the worker as *one* Fn API ``Elements.Data`` message (``BundleManager._send_input_to_worker``
writes every buffered chunk and flushes only on close; a grouped PCollection is even one blob per
partition). The worker then holds that message — the entire input of the stage, for the bundle's whole
life — so an SDK worker's memory grows with the catalogue however bounded the pipeline's own state is.
Cluster runners (Dataflow, Flink, Spark) stream a bundle's input with flow control instead. Here each
input is re-sliced at element boundaries and flushed every ``size_flush_threshold`` (10 MB), so the worker
sees the bounded stream a cluster runner gives it (its receive queue holds five such messages) and the
job service, not the worker, keeps the buffered PCollection, as a cluster's shuffle would.

Results are unchanged: the same encoded elements, in the same order, reach the same transform.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.runners.portability import local_job_service_main
from apache_beam.runners.portability.fn_api_runner import fn_runner

# Beam's own send, kept for comparison (tests) and so that :func:`install` stays idempotent.
ORIGINAL_SEND = fn_runner.BundleManager._send_input_to_worker
ORIGINAL_PROCESS = fn_runner.BundleManager.process_bundle
_LOG = logging.getLogger(__name__)

# Inputs no larger than this go as they are (a worker's own flushed outputs are at most about this size).
_SLICE_ABOVE = 10 << 20


def _send_chunk(data_out: Any, chunk: bytes) -> None:
    """Send ``chunk`` (whole encoded elements) as its own message.

    The runner's streams flush on a timer too (``TimeBasedBufferingClosableOutputStream``, every second),
    and its ``flush`` reads the buffer and then clears it under a lock that ``write`` does not take: a
    write landing between the two is silently dropped, and a flush between two writes of one element
    sends half an element. So a chunk is written in one call under that lock, then flushed.
    """
    lock = getattr(data_out, "_flush_lock", None)
    if lock is None:
        data_out.write(chunk)
    else:
        with lock:
            data_out.write(chunk)
    data_out.flush()


def _stream(data_out: Any, coder: Callable[[], Any], byte_streams: Iterable[bytes] | None) -> None:
    """Send ``byte_streams`` to ``data_out`` as messages of at most about 10 MB, each of whole elements."""
    coder_impl = None
    for byte_stream in byte_streams or []:
        if len(byte_stream) <= _SLICE_ABOVE:
            _send_chunk(data_out, byte_stream)
            continue
        # A large blob: re-slice it at element boundaries (the worker decodes each message on its own).
        # Elements are re-encoded into a private buffer that no other thread touches.
        coder_impl = coder_impl or coder()
        stream = create_InputStream(byte_stream)
        out = create_OutputStream()
        while stream.size() > 0:
            coder_impl.encode_to_stream(coder_impl.decode_from_stream(stream, True), out, True)
            if out.size() >= _SLICE_ABOVE:
                _send_chunk(data_out, out.get())
                out = create_OutputStream()
        if out.size():
            _send_chunk(data_out, out.get())
    data_out.close()


def _send_input_streamed(self: Any, process_bundle_id: str, read_transform_id: str,
                         byte_streams: Iterable[bytes] | None) -> None:  # fmt: skip
    """``BundleManager._send_input_to_worker``, streamed from a thread of its own.

    The runner sends every input *before* it even asks the worker to start the bundle, and reads the
    outputs only after: with bounded messages the send would block on the data plane's flow control and
    never finish (a deadlock), so it runs beside the runner's request and output reading, as a cluster
    runner streams; :func:`_process_bundle_joined` waits for it and raises what it raised.
    """
    assert self._worker_handler is not None
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)
    coder = lambda: self.bundle_context_manager.get_input_coder_impl(read_transform_id)  # noqa: E731
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _stream(data_out, coder, byte_streams)
        except BaseException as exc:  # reported by _process_bundle_joined
            _LOG.error("streaming the input of %s failed: %s", read_transform_id, exc)
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"send-{read_transform_id}", daemon=True)
    thread.start()
    self.__dict__.setdefault("_stylus_senders", []).append((thread, errors))


def _process_bundle_joined(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``BundleManager.process_bundle``, then wait for its input senders and raise their first error."""
    try:
        return ORIGINAL_PROCESS(self, *args, **kwargs)
    finally:
        senders, self._stylus_senders = self.__dict__.get("_stylus_senders", []), []
        for thread, errors in senders:
            thread.join()
            if errors:
                raise RuntimeError(f"streaming a bundle's input to the worker failed: {errors[0]}")


def install() -> None:
    """Make every ``FnApiRunner`` bundle in this process stream its input (idempotent)."""
    fn_runner.BundleManager._send_input_to_worker = _send_input_streamed
    fn_runner.BundleManager.process_bundle = _process_bundle_joined


def main(argv: list[str] | None = None) -> None:
    install()
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit(0))
    logging.basicConfig()
    logging.getLogger().setLevel(logging.INFO)
    # Its own flags (``--port``, ``--staging_dir`` ...); not ``--background``, which starts the stock one.
    local_job_service_main.run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
