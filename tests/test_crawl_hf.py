"""Hugging Face crawl through the replay server: Link-header paging, cards, faults, both sources in one
OUT."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from conftest import ROOT

from stylus_docs.cli import main
from stylus_docs.crawl.snapshot import iter_chunk_records

FAST = ["--backoff", "0.01", "--max-attempts", "8", "--no-progress", "--quiet"]


def _sample_repo_ids() -> set[str]:
    lines = (ROOT / "data" / "sample" / "hf" / "models.jsonl").read_text().splitlines()
    return {json.loads(line)["id"] for line in lines if line.strip()}


def test_hf_crawl_pages_through_link_headers_with_faults(replay_server, tmp_path: Path) -> None:
    url = replay_server(fault_rate=0.1, seed=5, retry_after=0)
    out = tmp_path / "raw"
    assert main(["crawl", "hf", "--out", str(out), "--api-url", url, "--page-size", "4", *FAST]) == 0
    records = list(iter_chunk_records(out / "hf", "models"))
    ids = [r["item"]["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate repos in the snapshot"
    expected = {i for i in _sample_repo_ids()}
    assert set(ids) == expected and len(expected) > 8  # > 2 pages of 4: Link paging really happened
    with_card = [r for r in records if r["card"]]
    assert len(with_card) == len(records), [r["item"]["id"] for r in records if not r["card"]]
    assert all(r["card"].lstrip().startswith("---") for r in with_card)  # front matter kept raw
    summary = json.loads((out / "hf" / "summary.json").read_text())
    assert summary["complete"] and summary["models"] == len(ids)
    assert summary["retries"] == sum(summary["retries_by_reason"].values())


def test_civitai_and_hf_share_one_out_and_resume_is_a_noop(replay_server, tmp_path: Path) -> None:
    url = replay_server()
    out = tmp_path / "raw"
    for _ in range(2):  # the second run resumes two finished crawls and must add nothing
        assert main(["crawl", "civitai", "--out", str(out), "--api-url", url, "--limit", "20", *FAST]) == 0
        assert main(["crawl", "hf", "--out", str(out), "--api-url", url, "--limit", "10", *FAST]) == 0
    models = [r["id"] for r in iter_chunk_records(out / "civitai", "models")]
    repos = [r["item"]["id"] for r in iter_chunk_records(out / "hf", "models")]
    assert len(models) == len(set(models)) == 20
    assert len(repos) == len(set(repos)) == 10
    for source in ("civitai", "hf"):
        state = json.loads((out / source / "state.json").read_text())
        assert state["fingerprint"]["source"] == source and state["runs"] == 2
    # Snapshots are gzip JSONL and nothing temporary is left behind.
    for chunk in sorted(out.glob("*/models-*.jsonl.gz")):
        with gzip.open(chunk, "rt") as handle:
            assert all(json.loads(line) for line in handle)
    assert not list(out.glob("*/.*.part"))
