"""Crawl through the replay server with 10% injected faults of every kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stylus_docs.cli import main
from stylus_docs.crawl.snapshot import iter_chunk_records
from stylus_docs.http import HttpClient, HttpFailure

FAST = ["--backoff", "0.01", "--max-attempts", "8", "--no-progress", "--quiet", "--chunk-size", "60"]


def _crawl(out: Path, url: str, *flags: str) -> dict:
    assert main(["crawl", "civitai", "--out", str(out), "--api-url", url, *FAST, *flags]) == 0
    return json.loads((out / "civitai" / "summary.json").read_text())


def _ids(out: Path, prefix: str) -> list[int]:
    return [r["id"] for r in iter_chunk_records(out / "civitai", prefix)]


def test_faulty_crawl_matches_clean_crawl(replay_server, tmp_path) -> None:
    clean = _crawl(tmp_path / "clean", replay_server())
    faulty = _crawl(tmp_path / "faulty", replay_server(fault_rate=0.1, seed=11, retry_after=0))
    models, versions = _ids(tmp_path / "faulty", "models"), _ids(tmp_path / "faulty", "versions")
    assert len(models) == len(set(models)) == faulty["models"] > 100
    assert len(versions) == len(set(versions)) == faulty["versions"]
    assert sorted(models) == sorted(_ids(tmp_path / "clean", "models"))
    assert sorted(versions) == sorted(_ids(tmp_path / "clean", "versions"))
    assert faulty["images"] == clean["images"] and faulty["complete"]
    # Every kind of injected fault was met, retried and counted by its reason.
    reasons = faulty["retries_by_reason"]
    assert {"http_429", "http_5xx", "html_body"} <= set(reasons), reasons
    assert reasons.keys() & {"truncated_body", "invalid_json"}, reasons
    assert reasons.keys() & {"connection_error", "timeout"}, reasons
    assert faulty["retries"] == sum(reasons.values()) > 0
    assert faulty["requests"] == clean["requests"] + faulty["retries"]
    assert clean["retries"] == 0
    # Nothing failed for good except what also fails without faults (e.g. versions without files).
    assert faulty["failed_records_by_reason"] == clean["failed_records_by_reason"]


def test_page_cap_429_is_not_retried(replay_server) -> None:
    client = HttpClient(replay_server(), backoff=0.01)
    with pytest.raises(HttpFailure) as info:
        client.get_json("/api/v1/models", {"page": 20, "limit": 100})
    assert info.value.reason == "too_many_pages"
    snap = client.stats.snapshot()
    assert snap["requests"] == 1 and snap["retries"] == 0
    assert snap["failures_by_reason"] == {"too_many_pages": 1}


def test_limit_and_partitions(replay_server, tmp_path) -> None:
    url = replay_server()
    summary = _crawl(tmp_path / "lim", url, "--limit", "30", "--max-images-per-version", "0")
    assert summary["models"] == 30 and summary["complete"]
    assert summary["images"] == 0
