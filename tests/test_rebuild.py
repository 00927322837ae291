"""``stylus-docs rebuild``: the scheduled job end to end on the replay server (real crawl, real build).

Day 1 is the bundled sample; day 2 the replay server's ``--mutate`` "next day" (new and changed models,
deleted ones). Exit codes, ``last-run.json``, the work lock and snapshot pruning are checked through
the real CLI entry point.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, load_replay_module

from stylus_docs import release
from stylus_docs.cli import main
from stylus_docs.rebuild import snapshot_dirs

pytestmark = pytest.mark.timeout(600)


def _rebuild(work: Path, docs: Path, api_url: str, *more: str) -> int:
    return main(["rebuild", "--work", str(work), "--docs", str(docs), "--api-url", api_url,
                 "--keep-snapshots", "2", *more])  # fmt: skip


def _last(work: Path) -> dict:
    return json.loads((work / "last-run.json").read_text())


@contextlib.contextmanager
def serve(port: int, **options: object) -> Iterator[str]:
    """One day of the catalogue on a fixed port (a real API keeps its URL from one night to the next)."""
    server, url = load_replay_module().start_server(port=port, **options)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rebuild_publishes_then_nothing_changed_then_delta(tmp_path: Path, capsys) -> None:
    work, docs, port = tmp_path / "work", tmp_path / "docs", _free_port()
    with serve(port) as day1:
        assert _rebuild(work, docs, day1) == 0
        first = _last(work)
        assert first["exit_reason"] == "published" and first["crawl"]["civitai"]["complete"]
        first_id = release.current_build_id(docs)
        assert first_id == first["build"]["build_id"]
        assert first["build"]["counts"]["written"] > 0

        # The same catalogue again: no version fetched in detail, nothing built, exit 3.
        assert _rebuild(work, docs, day1) == 3
        again = _last(work)
        assert again["exit_reason"] == "nothing_changed" and again["changes"] == 0
        assert release.current_build_id(docs) == first_id
        assert again["crawl"]["civitai"]["requests"] < first["crawl"]["civitai"]["requests"]

    build = release.resolve_build(docs)
    before = {r["adapter_id"] for r in release.read_table(build, release.load_manifest(build), "adapters",
                                                          ["adapter_id"]).to_pylist()}  # fmt: skip

    # The next day: new, changed and deleted models.
    truth_path = tmp_path / "truth.json"
    with serve(port, mutate=0.05, mutate_seed=3, truth_path=truth_path) as day2:
        assert _rebuild(work, docs, day2) == 0
    third = _last(work)
    truth = json.loads(truth_path.read_text())
    assert third["changes"] > 0
    counts = third["build"]["counts"]
    assert third["build"]["previous"] == first_id  # incremental against the live release
    assert counts["reused"] > 0
    build = release.resolve_build(docs)
    ids = {r["adapter_id"] for r in release.read_table(build, release.load_manifest(build), "adapters",
                                                       ["adapter_id"]).to_pylist()}  # fmt: skip
    def of_deleted(adapter_ids: set[str]) -> set[str]:
        return {i for i in adapter_ids if any(i.startswith(f"civitai:{m}@") for m in truth["deleted_models"])}

    assert of_deleted(before) and not of_deleted(ids)
    # Removed = the live release's adapters of deleted models (some deleted models were filtered out anyway).
    assert counts["removed"] == len(of_deleted(before))
    assert third["crawl"]["civitai"]["removed"] == len(truth["deleted_models"])
    # Pruned to the newest two complete snapshots.
    assert len(snapshot_dirs(work)) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["exit_code"] == 0


def test_incomplete_crawl_exits_1_then_resumes(tmp_path: Path) -> None:
    work, docs, port = tmp_path / "work", tmp_path / "docs", _free_port()
    with serve(port, fault_rate=1.0, faults=("5xx",)) as broken:
        assert _rebuild(work, docs, broken, "--crawl-flags", "--max-attempts 1 --backoff 0") == 1
    last = _last(work)
    assert last["exit_reason"] == "incomplete" and "run again" in last["error"]
    assert release.current_build_id(docs) is None
    (snap,) = snapshot_dirs(work)
    with serve(port) as healthy:  # the same URL: the crawl resumes its own state
        assert _rebuild(work, docs, healthy) == 0
    assert _last(work)["resumed"] is True and _last(work)["snapshot"] == str(snap)
    assert release.current_build_id(docs) is not None


_HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.write("pid 4242, started earlier\\n"); handle.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_concurrent_rebuild_refused_and_dead_lock_taken_over(tmp_path: Path, replay_server,
                                                            capsys) -> None:  # fmt: skip
    work, docs = tmp_path / "work", tmp_path / "docs"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(work / ".rebuild.lock")],
                              stdout=subprocess.PIPE, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        url = replay_server()
        assert _rebuild(work, docs, url) == 4
        err = capsys.readouterr().err
        assert "another rebuild is running" in err and "pid 4242" in err
        assert len(err.strip().splitlines()) == 1
        assert not (work / "last-run.json").exists()  # the running one owns it
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        time.sleep(0.1)
        assert _rebuild(work, docs, url) == 0  # the dead process's lock is gone with it
    finally:
        if holder.poll() is None:
            holder.kill()


def test_bad_flags_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    code = main(["rebuild", "--work", str(tmp_path / "w"), "--docs", str(tmp_path / "d"),
                 "--api-url", "http://127.0.0.1:9", "--build-flags", "--bogus-flag 3"])  # fmt: skip
    assert code == 2
    assert _last(tmp_path / "w")["exit_reason"] == "fatal"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stylus-docs rebuild: fatal:")
