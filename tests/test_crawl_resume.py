"""A real ``kill -9`` of a crawl subprocess mid-way, then the same command again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stylus_docs.crawl.snapshot import committed_chunks, iter_chunk_records

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from stylus_docs.cli import main; sys.exit(main())"]


def _cmd(out: Path, url: str) -> list[str]:
    return [*CLI, "crawl", "civitai", "--out", str(out), "--api-url", url, "--chunk-size", "10",
            "--concurrency", "4", "--backoff", "0.01", "--no-progress", "--quiet"]


def _ids(out: Path, prefix: str) -> list[int]:
    return [r["id"] for r in iter_chunk_records(out / "civitai", prefix)]


def test_kill_9_then_resume_gives_the_same_snapshot(replay_server, tmp_path) -> None:
    url = replay_server(latency_ms=40, fault_rate=0.05, seed=3, retry_after=0)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(out, url), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # Wait until the crawl is well into the version fan-out, then kill it without warning.
    while len(committed_chunks(out / "civitai", "versions")) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "crawl made no progress"
        time.sleep(0.02)
    assert proc.poll() is None, f"crawl finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _ids(out, "versions")
    assert partial and not (out / "civitai" / "summary.json").exists()

    done = subprocess.run(_cmd(out, url), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = tmp_path / "reference"
    ref = subprocess.run(_cmd(reference, url), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]

    models, versions = _ids(out, "models"), _ids(out, "versions")
    assert len(models) == len(set(models)) and len(versions) == len(set(versions))
    assert sorted(models) == sorted(_ids(reference, "models"))
    assert sorted(versions) == sorted(_ids(reference, "versions"))
    assert set(partial) <= set(versions)
    assert not list((out / "civitai").glob(".*.part"))  # no temp files left (.state.lock is the lock file)


def test_resumed_version_refs_pass_the_fetchers_type_check(tmp_path) -> None:
    """A resumed run feeds ``(model_id, version_id, fingerprint)`` refs to the fetcher; Beam type-checks them
    against its ``process`` annotation when the pipeline is built (it is not run here)."""
    import apache_beam as beam

    from pipelines.crawl import FetchCivitaiVersions
    from stylus_docs.crawl.engine import CrawlConfig

    cfg = CrawlConfig(source="civitai", out=str(tmp_path), api_url="http://127.0.0.1:9")
    pipeline = beam.Pipeline(runner="DirectRunner")
    refs = pipeline | beam.Create([(1, 10, "fingerprint"), (2, 20, "fingerprint")])
    _ = refs | beam.Reshuffle() | beam.ParDo(FetchCivitaiVersions(cfg, frozenset()))
