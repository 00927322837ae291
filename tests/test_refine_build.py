"""The OpenAI refine stage through the whole build: request budget, kill -9 and resume, progress bars.

A real loopback OpenAI-compatible server (``fakes.openai_server``) counts the requests and answers per
adapter; the build runs through Beam (in-process) or as the real CLI in a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from build_fixtures import model_2023, snapshot
from fakes.openai_server import start_fake_openai, stop

from pipelines.build import BuildConfig, run_build
from stylus_docs import release
from stylus_docs.refine.journal import read_answers

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-BUILDKEY4242"
REFINER = "openai@v2"


@pytest.fixture()
def vlm(monkeypatch: pytest.MonkeyPatch):
    """A started fake server factory; every server is stopped at the end."""
    servers = []

    def start(**kw: object):
        server, base_url = start_fake_openai(**kw)
        servers.append(server)
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        return server, base_url

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("STYLUS_EMBEDDER_DIM", "8")
    yield start
    for server in servers:
        stop(server)


def _raw(tmp_path: Path, n: int) -> Path:
    models = [model_2023(i, i * 10, f"Adapter {i}", prompt_weight=None) for i in range(1, n + 1)]
    return snapshot(tmp_path / "raw", models)


def _config(raw: Path, docs: Path, **kw: object) -> BuildConfig:
    return BuildConfig(
        raw=[str(raw)], out=str(docs), refiner="openai", refiner_model="fake-vlm",
        embedder="openai", embedder_model="fake-embed", refine_concurrency=4, **kw,
    )  # fmt: skip


def _rows(docs: Path) -> dict[str, dict]:
    build = release.resolve_build(docs)
    manifest = release.load_manifest(build)
    rows = pq.read_table(release.table_files(build, manifest, "adapters")[0]).to_pylist()
    return {r["title"]: r for r in rows}


def test_max_requests_defers_the_rest_and_asks_them_next_time(tmp_path: Path, vlm) -> None:
    server, _ = vlm()
    raw, docs = _raw(tmp_path, 6), tmp_path / "docs"
    first = run_build(_config(raw, docs, refine_max_requests=2, progress=False))
    rows = _rows(docs)
    asked_first = set(server.asked)
    assert len(asked_first) == 2 and sum(server.asked.values()) == 2
    assert first["counts"]["written"] == 6 and first["counts"]["dead_letter"] == {}
    assert first["counts"]["refine_usage"]["requests"] == 2
    by_refiner = Counter(r["refiner"] for r in rows.values())
    assert by_refiner == {REFINER: 2, "extractive@v1": 4}
    assert {t for t, r in rows.items() if r["refiner"] == REFINER} == asked_first
    # Deferred rows still carry a usable (extractive) description.
    assert all(r["refined_description"] for r in rows.values())

    second = run_build(_config(raw, docs, progress=False))
    assert Counter(r["refiner"] for r in _rows(docs).values()) == {REFINER: 6}
    assert server.answered == Counter({f"Adapter {i}": 1 for i in range(1, 7)})  # nobody asked twice
    assert second["counts"]["refine_usage"]["requests"] == 4


def test_max_requests_zero_asks_nothing(tmp_path: Path, vlm) -> None:
    server, _ = vlm()
    manifest = run_build(_config(_raw(tmp_path, 3), tmp_path / "docs", refine_max_requests=0, progress=False))
    assert server.requests_to("/chat/completions") == []
    assert manifest["counts"]["written"] == 3
    assert {r["refiner"] for r in _rows(tmp_path / "docs").values()} == {"extractive@v1"}


def test_progress_bars_for_refine(tmp_path: Path, vlm, capfd: pytest.CaptureFixture[str]) -> None:
    vlm()
    run_build(_config(_raw(tmp_path, 5), tmp_path / "docs", progress=True))
    err = capfd.readouterr().err
    assert "refine: 100%" in err and "5/5" in err
    from stylus_docs import progress

    assert not progress.is_open("refine")  # closed at the end of the build


@pytest.mark.timeout(300)
def test_kill_9_mid_refine_then_rerun_asks_each_adapter_once(tmp_path: Path, vlm) -> None:
    # 8 answers, then every request is held: the kill lands with no answer in transit.
    server, base_url = vlm(latency_s=0.05, hold_after=8)
    raw, docs = _raw(tmp_path, 20), tmp_path / "docs"
    argv = [sys.executable, "-m", "stylus_docs.cli", "build", "--raw", str(raw), "--out", str(docs),
            "--refiner", "openai", "--refiner-model", "fake-vlm", "--embedder", "openai",
            "--embedder-model", "fake-embed", "--refine-concurrency", "4", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": base_url}
    journal = docs / "cache" / "refine" / REFINER.replace("@", "-")
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while len(read_answers(journal, "fake-vlm")) < 8:
            assert child.poll() is None, child.stderr.read().decode()[-2000:] if child.stderr else ""
            assert time.monotonic() < deadline, "the build never journaled 8 answers"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    server.release()  # the dead build's held requests get 503s, never answers
    kept = read_answers(journal, "fake-vlm")
    assert len(kept) == 8
    assert release.current_build_id(docs) is None  # nothing was published by the killed build
    answered_before = Counter(server.answered)

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = _rows(docs)
    assert len(rows) == 20 and {r["refiner"] for r in rows.values()} == {REFINER}
    # Each adapter got exactly one answer over both runs; none of the 8 kept was answered again.
    assert server.answered == Counter({f"Adapter {i}": 1 for i in range(1, 21)})
    assert not set(answered_before) & set(server.answered - answered_before)
    manifest = release.load_manifest(release.resolve_build(docs))
    assert manifest["counts"]["refine_usage"]["requests"] == 12
    for path in docs.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()
