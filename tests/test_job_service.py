"""The toolkit's job service streams a bundle's input to the worker in bounded, element-aligned messages.

Beam's stock ``FnApiRunner`` sends a bundle's whole input as one Fn API message, so the SDK worker holds the
stage's entire input (see :mod:`stylus_docs.job_service`). These tests drive the replacement send through
Beam's real in-memory data channel and real coders; ``tests/test_portable.py`` runs whole crawls and builds
through the job service and checks the releases equal the in-process ones.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from apache_beam.coders import BytesCoder, WindowedValueCoder
from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import data_plane
from apache_beam.transforms.window import GlobalWindows

from stylus_docs import job_service

CODER = WindowedValueCoder(BytesCoder()).get_impl()


def _encode(values: list[bytes]) -> bytes:
    out = create_OutputStream()
    for value in values:
        CODER.encode_to_stream(GlobalWindows.windowed_value(value), out, True)
    return out.get()


def _send(byte_streams: list[bytes]) -> list[bytes]:
    """Send through the streamed ``_send_input_to_worker``; the messages the worker side receives."""
    runner_side = data_plane.InMemoryDataChannel()
    manager = SimpleNamespace(
        _worker_handler=SimpleNamespace(data_conn=runner_side),
        bundle_context_manager=SimpleNamespace(get_input_coder_impl=lambda _tid: CODER),
    )
    job_service._send_input_streamed(manager, "bundle-1", "read-1", byte_streams)
    for thread, errors in manager._stylus_senders:  # the send runs beside the runner; wait for it
        thread.join(60)
        assert not errors
    return [e.data for e in runner_side.inverse().input_elements("bundle-1", None) if e.data]


def _decode(message: bytes) -> list[bytes]:
    return [wv.value for wv in CODER.decode_all(message)]


def test_a_large_grouped_blob_arrives_as_bounded_whole_element_messages() -> None:
    values = [bytes([i % 251]) * 20_000 for i in range(2_000)]  # 40 MB: one blob, as a grouped partition
    messages = _send([_encode(values)])
    assert len(messages) >= 4
    assert max(len(m) for m in messages) <= job_service._SLICE_ABOVE + 25_000  # one element over at most
    # Every message decodes on its own (the worker decodes each separately) and nothing is lost/reordered.
    assert [v for m in messages for v in _decode(m)] == values


def test_small_chunks_pass_unchanged_and_in_order() -> None:
    chunks = [_encode([b"a", b"b"]), _encode([b"c"]), _encode([])]
    messages = _send(chunks)
    assert [v for m in messages for v in _decode(m)] == [b"a", b"b", b"c"]
    assert b"".join(messages) == b"".join(chunks)


def test_nothing_is_lost_beside_the_runners_periodic_flusher() -> None:
    """The runner's streams also flush on a timer thread (every second there; every millisecond here).

    Its flush reads then clears the buffer without excluding writes, so a write in between vanished (the
    first version of this module lost 267 of 80,000 adapters that way) or half an element went out.
    """
    messages: list[bytes] = []

    def keep(data: bytes) -> None:
        if data:
            messages.append(data)

    stream = data_plane.TimeBasedBufferingClosableOutputStream(keep, keep, time_flush_threshold_ms=1)
    manager = SimpleNamespace(
        _worker_handler=SimpleNamespace(data_conn=SimpleNamespace(output_stream=lambda *_a: stream)),
        bundle_context_manager=SimpleNamespace(get_input_coder_impl=lambda _tid: CODER),
    )
    big = [bytes([i % 251]) * 5_000 for i in range(6_000)]  # 30 MB blob, re-sliced
    small = [[b"%d-%d" % (i, j) for j in range(50)] for i in range(3_000)]  # many small chunks
    job_service._send_input_streamed(manager, "b", "r", [_encode(big)] + [_encode(c) for c in small])
    for thread, errors in manager._stylus_senders:
        thread.join(120)
        assert not errors
    # Every message holds whole elements, and all of them arrive, in order.
    assert [v for m in messages for v in _decode(m)] == big + [v for c in small for v in c]


def test_stock_runner_would_send_one_message() -> None:
    """The defect the module works around, so the workaround is dropped once Beam fixes it upstream."""
    runner_side = data_plane.InMemoryDataChannel()
    manager = SimpleNamespace(_worker_handler=SimpleNamespace(data_conn=runner_side))
    blob = _encode([b"x" * 20_000] * 1_000)  # 20 MB
    original = job_service.ORIGINAL_SEND
    original(manager, "bundle-1", "read-1", [blob[: len(blob) // 2], blob[len(blob) // 2:]])
    messages = [e.data for e in runner_side.inverse().input_elements("bundle-1", None) if e.data]
    assert len(messages) == 1 and len(messages[0]) == len(blob)


def test_install_replaces_the_runner_send() -> None:
    script = ("from stylus_docs import job_service as j; from apache_beam.runners.portability.fn_api_runner "
              "import fn_runner as f; j.install(); assert f.BundleManager._send_input_to_worker is "
              "j._send_input_streamed; assert f.BundleManager.process_bundle is "
              "j._process_bundle_joined")  # fmt: skip
    subprocess.run([sys.executable, "-c", script], check=True)
    assert fn_runner.BundleManager.process_bundle is job_service.ORIGINAL_PROCESS
    # This process is untouched: installing is a per-process choice of the job service.
    assert fn_runner.BundleManager._send_input_to_worker is job_service.ORIGINAL_SEND


def test_a_failed_send_is_raised_by_the_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in the sending thread fails the bundle (never a bundle silently short of input)."""

    class BrokenStream:
        def write(self, _data: bytes) -> None:
            raise OSError("data channel closed")

    manager = SimpleNamespace(_worker_handler=SimpleNamespace(
        data_conn=SimpleNamespace(output_stream=lambda *_a: BrokenStream())))  # fmt: skip
    job_service._send_input_streamed(manager, "bundle-1", "read-1", [b"x"])
    # Stand-in for the runner's own bundle work (it would be waiting on the worker here).
    monkeypatch.setattr(job_service, "ORIGINAL_PROCESS", lambda _self: "response")
    with pytest.raises(RuntimeError, match="data channel closed"):
        job_service._process_bundle_joined(manager)
    assert manager._stylus_senders == []


def test_bad_flag_exits_nonzero() -> None:
    proc = subprocess.run([sys.executable, "-m", "stylus_docs.job_service", "--no-such-flag"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr
