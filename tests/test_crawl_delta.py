"""Delta crawls (``--previous``), tombstones, the two Civitai hosts and the saved enums.

Real loopback replay servers (scripts/replay_server.py; ``mutate`` serves the corpus's "next day") and
real in-process Beam crawls. A delta crawl carries over only from a snapshot of the same API host, so
the "next day" server is started on the port the previous snapshot was crawled from.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ROOT, load_replay_module

from stylus_docs.cli import main
from stylus_docs.crawl.engine import CrawlConfig
from stylus_docs.crawl.snapshot import committed_chunks, iter_chunk_file, iter_chunk_records, write_chunk
from stylus_docs.crawl.state import CrawlState, read_failures
from stylus_docs.errors import FatalError
from stylus_docs.sources.civitai import CivitaiQuery

FAST = ["--backoff", "0.01", "--no-progress", "--quiet"]
MUTATE = {"mutate": 0.05, "mutate_seed": 7}
CLI = [sys.executable, "-c", "import sys; from stylus_docs.cli import main; sys.exit(main())"]
SAMPLE = ROOT / "data" / "sample"

Start = Callable[..., tuple[Any, str]]


@pytest.fixture(scope="module")
def replay() -> Any:
    return load_replay_module()


@pytest.fixture
def serve(replay: Any) -> Iterator[Start]:
    """``serve(**options) -> (server, url)``; every server is shut down after the test."""
    started: list[Any] = []

    def start(**options: Any) -> tuple[Any, str]:
        server, url = replay.start_server(**options)
        started.append(server)
        return server, url

    yield start
    for server in started:
        server.shutdown()


@pytest.fixture(scope="module")
def old_snapshot(replay: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Full Civitai and Hugging Face crawls of the sample corpus; ``(OUT, port it was served on)``."""
    out = tmp_path_factory.mktemp("old") / "raw"
    server, url = replay.start_server()
    try:
        for source in ("civitai", "hf"):
            assert main(["crawl", source, "--out", str(out), "--api-url", url, *FAST]) == 0
    finally:
        server.shutdown()
    return out, server.server_address[1]


def _crawl(source: str, out: Path, url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    rc = main(["crawl", source, "--out", str(out), "--api-url", url, *FAST, *extra])
    path = out / source / "summary.json"
    return rc, json.loads(path.read_text()) if path.exists() else {}


def _canon(out: Path, source: str, prefix: str, host: bool = False) -> set[str]:
    """Records of a snapshot as canonical JSON (``_host`` dropped unless ``host``)."""
    rows = set()
    for record in iter_chunk_records(out / source, prefix):
        if not host:
            record = {k: v for k, v in record.items() if k != "_host"}
        rows.add(json.dumps(record, sort_keys=True, ensure_ascii=False))
    return rows


def _stats(url: str) -> dict[str, Any]:
    return requests.get(f"{url}/__stats", params={"detail": "1"}, timeout=10).json()


def _listed(out: Path) -> tuple[set[int], dict[int, int]]:
    """Model ids and ``{version id: model id}`` of a Civitai snapshot's listing."""
    models, versions = set(), {}
    for item in iter_chunk_records(out / "civitai", "models"):
        models.add(item["id"])
        versions.update({v["id"]: item["id"] for v in item["modelVersions"]})
    return models, versions


def _stones(out: Path, source: str) -> list[dict[str, Any]]:
    return list(iter_chunk_records(out / source, "tombstones"))


def test_delta_equals_full_crawl_and_requests_only_what_changed(old_snapshot, serve, tmp_path) -> None:
    old, port = old_snapshot
    server, url = serve(port=port, **MUTATE)
    truth = server.truth
    new = tmp_path / "new"
    for source in ("civitai", "hf"):
        rc, _ = _crawl(source, new, url, "--previous", str(old))
        assert rc == 0
    asked = _stats(url)
    _, ref_url = serve(**MUTATE)  # the same "next day" on another port: a full crawl of it
    ref = tmp_path / "ref"
    for source in ("civitai", "hf"):
        assert _crawl(source, ref, ref_url)[0] == 0

    # 1. The delta snapshot holds exactly what a full crawl of the mutated corpus holds.
    for source, prefix in (("civitai", "models"), ("civitai", "versions"), ("hf", "models")):
        got, want = _canon(new, source, prefix), _canon(ref, source, prefix)
        assert got == want and got, (source, prefix, len(got ^ want))
        assert {r["_host"] for r in iter_chunk_records(new / source, prefix)} == {url}

    # 2. Details were fetched only for new versions, versions whose listing entry changed, and versions
    # the previous snapshot had no record of (a fetch that failed then); every other one was carried.
    old_models, old_versions = _listed(old)
    new_models, new_versions = _listed(new)
    old_records = {r["id"] for r in iter_chunk_records(old / "civitai", "versions")}
    changed = ({v["version_id"] for v in truth["new_versions"] + truth["new_model_versions"]}
               | {c["version_id"] for c in truth["changed_images"]})
    expected = (changed & set(new_versions)) | (set(new_versions) - old_records)
    assert expected and set(asked["ids"]["model_version"]) == {str(v) for v in expected}
    assert set(asked["ids"]["images"]) == {str(v) for v in expected}
    assert asked["endpoints"]["enums"] == 1
    hf_old = {r["item"]["id"]: r["item"]["sha"] for r in iter_chunk_records(old / "hf", "models")}
    hf_new = {r["item"]["id"]: r["item"]["sha"] for r in iter_chunk_records(new / "hf", "models")}
    assert set(asked["ids"]["hf_file"]) == {r for r in hf_new if hf_old.get(r) != hf_new[r]}
    assert set(truth["hf_changed"] + truth["hf_new"]) == set(asked["ids"]["hf_file"])

    # 3. Counts and tombstones: the models the old listing had and this complete one lacks.
    summary = json.loads((new / "civitai" / "summary.json").read_text())
    assert summary["complete"] and summary["delta"]["carry_over"] == "on"
    failed = sum(n for k, n in summary["failed_records_by_reason"].items() if k.startswith("version:"))
    assert summary["fetched"] == len(expected) - failed
    assert summary["carried_over"] + summary["fetched"] == summary["versions"]
    assert summary["new"] == len(set(new_versions) - set(old_versions)) > 0
    assert summary["changed"] > 0
    gone = old_models - new_models
    assert gone and gone <= set(truth["deleted_models"])
    stones = _stones(new, "civitai")
    assert summary["removed"] == len(stones) == len(gone)
    assert {s["id"] for s in stones} == gone
    old_items = {item["id"]: item for item in iter_chunk_records(old / "civitai", "models")}
    old_state = CrawlState(old / "civitai").load()
    for stone in stones:
        assert stone["kind"] == "model" and stone["reason"] == "absent_from_listing"
        assert stone["source"] == "civitai" and stone["model_id"] is None and stone["host"] == url
        assert stone["record"] == old_items[stone["id"]]
        assert stone["last_seen"] == max(p["updated_at"] for p in old_state["partitions"].values())
    hf_stones = _stones(new, "hf")
    assert {s["id"] for s in hf_stones} == set(truth["hf_deleted"]) == set(hf_old) - set(hf_new)
    assert all(s["record"]["item"]["id"] == s["id"] for s in hf_stones)
    hf_summary = json.loads((new / "hf" / "summary.json").read_text())
    assert hf_summary["fetched"] == len(asked["ids"]["hf_file"])
    assert hf_summary["carried_over"] == len(hf_new) - hf_summary["fetched"]
    assert hf_summary["removed"] == len(hf_stones)

    # 4. The enums were fetched once and saved as served; the full crawl has no tombstones.
    saved = json.loads((new / "civitai" / "enums.json").read_text())
    assert saved == requests.get(f"{url}/api/v1/enums", timeout=10).json() and "BaseModel" in saved
    assert summary["enums"] == "fetched"
    assert not _stones(ref, "civitai") and not _stones(ref, "hf")
    full = json.loads((ref / "civitai" / "summary.json").read_text())
    assert full["carried_over"] == 0 and full["fetched"] == full["versions"] and full["removed"] == 0
    assert full["delta"]["tombstones"] == {"written": False, "reason": "no --previous"}


def test_incomplete_listings_write_no_tombstones(old_snapshot, serve, tmp_path) -> None:
    old, port = old_snapshot
    bad_enums = tmp_path / "enums.json"
    bad_enums.write_text('["not", "an object"]')
    # --limit: a complete crawl (exit 0) whose listing is not the catalogue. The enums answer is unusable:
    # a recorded failure, and the previous snapshot's enums are carried over.
    server, url = serve(port=port, enums=bad_enums, **MUTATE)
    limited = tmp_path / "limited"
    rc, summary = _crawl("civitai", limited, url, "--previous", str(old), "--limit", "40")
    assert rc == 0 and summary["models"] == 40
    assert not committed_chunks(limited / "civitai", "tombstones") and summary["removed"] == 0
    assert summary["delta"]["tombstones"] == {"written": False, "reason": "listing stopped at --limit"}
    assert summary["enums"] == "carried_over"
    assert (limited / "civitai" / "enums.json").read_bytes() == (old / "civitai" / "enums.json").read_bytes()
    failures = {(f["stage"], f["reason"]) for f in read_failures(limited / "civitai")}
    assert ("enums", "invalid_enums") in failures
    server.shutdown()

    # A listing that fails (every answer a 5xx, one attempt): exit 1, no tombstones.
    server, url = serve(port=port, fault_rate=1.0, faults="5xx", **MUTATE)
    out = tmp_path / "interrupted"
    rc, summary = _crawl("civitai", out, url, "--previous", str(old), "--max-attempts", "1")
    assert rc == 1 and not summary["complete"]
    assert summary["delta"]["tombstones"]["written"] is False
    assert summary["delta"]["tombstones"]["reason"].startswith("listing incomplete")
    assert not committed_chunks(out / "civitai", "tombstones")
    server.shutdown()

    # The same command once the host answers again: it resumes, completes, and the tombstones appear.
    server, url = serve(port=port, **MUTATE)
    rc, summary = _crawl("civitai", out, url, "--previous", str(old), "--max-attempts", "1")
    assert rc == 0 and summary["complete"] and summary["runs"] == 2
    old_models, _ = _listed(old)
    new_models, _ = _listed(out)
    assert {s["id"] for s in _stones(out, "civitai")} == old_models - new_models != set()
    assert summary["removed"] == len(old_models - new_models) and summary["enums"] == "fetched"


def test_kill_9_during_a_delta_crawl_then_rerun(old_snapshot, serve, tmp_path) -> None:
    old, port = old_snapshot
    server, url = serve(port=port, latency_ms=20, mutate=0.05, mutate_seed=3)
    cmd = [*CLI, "crawl", "civitai", "--out", str(tmp_path / "killed"), "--api-url", url, "--previous",
           str(old), "--chunk-size", "10", "--concurrency", "4", "--backoff", "0.01", "--no-progress",
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # Kill it in the detail fan-out: after the carried chunks, with some fetches done and more to come.
    while server.faults.snapshot()["endpoints"].get("model_version", 0) < 4 and proc.poll() is None:
        assert time.monotonic() < deadline, "delta crawl made no progress"
        time.sleep(0.01)
    assert proc.poll() is None, f"crawl finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = tmp_path / "killed"
    assert committed_chunks(killed / "civitai", "versions")
    assert not (killed / "civitai" / "summary.json").exists()

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    whole = tmp_path / "whole"
    rc, want = _crawl("civitai", whole, url, "--previous", str(old), "--chunk-size", "10")
    assert rc == 0
    got = json.loads((killed / "civitai" / "summary.json").read_text())
    for prefix in ("models", "versions", "tombstones"):
        assert _canon(killed, "civitai", prefix, host=True) == _canon(whole, "civitai", prefix, host=True)
    versions = [r["id"] for r in iter_chunk_records(killed / "civitai", "versions")]
    assert len(versions) == len(set(versions))
    for key in ("versions", "fetched", "carried_over", "new", "changed", "removed"):
        assert got[key] == want[key], key
    assert got["runs"] == 2 and got["removed"] > 0
    assert not list((killed / "civitai").glob(".*.part"))


def _corpus(root: Path, drop_models: set[int] = frozenset(), drop_versions: set[int] = frozenset()) -> Path:
    """A copy of the sample's Civitai corpus without some models and versions."""
    (root / "civitai").mkdir(parents=True)
    lines = []
    for line in (SAMPLE / "civitai" / "models.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item["id"] in drop_models:
            continue
        item["modelVersions"] = [v for v in item["modelVersions"] if v["id"] not in drop_versions]
        lines.append(json.dumps(item))
    (root / "civitai" / "models.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(SAMPLE / "civitai" / "images.jsonl", root / "civitai" / "images.jsonl")
    return root


def test_removed_versions_and_tombstones_carried_forward(serve, tmp_path) -> None:
    items = [json.loads(x) for x in (SAMPLE / "civitai" / "models.jsonl").read_text().splitlines()]
    multi = next(i for i in items if len(i["modelVersions"]) > 1 and not i.get("nsfw"))
    single = next(i for i in items if len(i["modelVersions"]) == 1 and not i.get("nsfw") and i is not multi)
    dropped = multi["modelVersions"][-1]["id"]
    server, url = serve(data=_corpus(tmp_path / "day0"))
    port = server.server_address[1]
    day0, day1, day2 = tmp_path / "raw0", tmp_path / "raw1", tmp_path / "raw2"
    flags = ["--max-images-per-version", "2"]
    assert _crawl("civitai", day0, url, *flags)[0] == 0
    server.shutdown()
    day1_data = _corpus(tmp_path / "day1", {single["id"]}, {dropped})
    server, url = serve(data=day1_data, port=port)
    rc, summary = _crawl("civitai", day1, url, *flags, "--previous", str(day0))
    assert rc == 0 and summary["removed"] == 2
    stones = {(s["kind"], s["id"]): s for s in _stones(day1, "civitai")}
    assert set(stones) == {("model", single["id"]), ("version", dropped)}
    version = stones[("version", dropped)]
    assert version["reason"] == "version_removed" and version["model_id"] == multi["id"]
    old_record = next(r for r in iter_chunk_records(day0 / "civitai", "versions") if r["id"] == dropped)
    assert version["record"] == old_record
    assert stones[("model", single["id"])]["record"]["id"] == single["id"]
    assert summary["fetched"] == 0 and summary["carried_over"] == summary["versions"]
    # A run killed inside the tombstone phase (a chunk of it published, the phase not marked done) is
    # redone from scratch by the same command.
    before = _canon(day1, "civitai", "tombstones")
    write_chunk(day1 / "civitai", "tombstones", [dict(version, id=999_999_999)])
    CrawlState(day1 / "civitai").update_section("delta", tombstones={})
    rc, again = _crawl("civitai", day1, url, *flags, "--previous", str(day0))
    assert rc == 0 and again["removed"] == 2 and _canon(day1, "civitai", "tombstones") == before
    server.shutdown()

    # The next day nothing changes: nothing is fetched, nothing new is removed, and the tombstones of day 1
    # are carried forward as they were (first last_seen kept). Day 1's version records are rewritten
    # as a snapshot made before records carried "_host": carried over, they get it.
    for chunk in committed_chunks(day1 / "civitai", "versions"):
        records = [{k: v for k, v in r.items() if k != "_host"}
                   for r in iter_chunk_file(chunk)]
        chunk.unlink()
        write_chunk(day1 / "civitai", "versions", records)
    server, url = serve(data=day1_data, port=port)
    rc, summary = _crawl("civitai", day2, url, *flags, "--previous", str(day1))
    assert rc == 0
    assert _canon(day2, "civitai", "versions") == _canon(day1, "civitai", "versions")
    assert {r["_host"] for r in iter_chunk_records(day2 / "civitai", "versions")} == {url}
    assert (summary["fetched"], summary["new"], summary["changed"], summary["removed"]) == (0, 0, 0, 0)
    assert [summary["delta"][k] for k in ("new", "changed", "removed")] == [0, 0, 0]
    assert summary["tombstones"] == summary["delta"]["tombstones"] and summary["tombstones"]["written"]
    assert summary["delta"]["tombstones"]["carried_forward"] == 2
    assert _canon(day2, "civitai", "tombstones") == _canon(day1, "civitai", "tombstones")
    # Only the versions the previous snapshot has no record of (their fetch fails every time) are asked.
    _, listed = _listed(day2)
    no_record = set(listed) - {r["id"] for r in iter_chunk_records(day1 / "civitai", "versions")}
    assert set(_stats(url)["ids"].get("model_version", {})) == {str(v) for v in no_record}


def test_hosts_route_and_scope_tokens(serve, tmp_path, monkeypatch) -> None:
    green_token, red_token = "green-token-1f2e3d", "red-token-9a8b7c"
    green_srv, green = serve(host_kind="green", require_token=green_token)
    red_srv, red = serve(host_kind="red", require_token=red_token)
    monkeypatch.setenv("CIVITAI_API_URL", green)
    monkeypatch.setenv("CIVITAI_RED_API_URL", red)
    monkeypatch.setenv("CIVITAI_API_TOKEN", green_token)
    monkeypatch.setenv("CIVITAI_RED_API_TOKEN", red_token)
    small = ["--no-progress", "--quiet", "--backoff", "0.01", "--max-images-per-version", "1"]
    # Each server accepts only its own token (a wrong one is a fatal 401): both crawls succeed.
    assert main(["crawl", "civitai", "--out", str(tmp_path / "g"), *small]) == 0
    assert main(["crawl", "civitai", "--host", "red", "--nsfw", "--out", str(tmp_path / "r"), *small]) == 0
    for srv in (green_srv, red_srv):
        snap = srv.faults.snapshot()
        assert snap["requests"] > 0 and snap["token_requests"] == snap["requests"]
    green_ids = {r["id"] for r in iter_chunk_records(tmp_path / "g" / "civitai", "models")}
    red_ids = {r["id"] for r in iter_chunk_records(tmp_path / "r" / "civitai", "models")}
    assert green_ids < red_ids  # green filters NSFW models out without saying so
    for name, url in (("g", green), ("r", red)):
        for prefix in ("models", "versions"):
            assert {r["_host"] for r in iter_chunk_records(tmp_path / name / "civitai", prefix)} == {url}
    assert CrawlState(tmp_path / "r" / "civitai").load()["fingerprint"]["host"] == "red"

    # No fallback: without its own token a red crawl sends none, even with the green one set.
    monkeypatch.delenv("CIVITAI_RED_API_TOKEN")
    open_srv, open_red = serve(host_kind="red")
    assert main(["crawl", "civitai", "--host", "red", "--api-url", open_red, "--limit", "5",
                 "--out", str(tmp_path / "r2"), *small]) == 0
    assert open_srv.faults.snapshot()["token_requests"] == 0

    # A delta against a snapshot of the other host: nothing carried, and no tombstones (a model missing
    # from green is not deleted from red).
    rc, summary = _crawl("civitai", tmp_path / "g2", green, "--previous", str(tmp_path / "r"),
                         "--max-images-per-version", "1")
    assert rc == 0 and summary["carried_over"] == 0
    assert summary["delta"]["carry_over"].startswith("off: other API host")
    assert "another host" in summary["delta"]["tombstones"]["reason"]
    assert not committed_chunks(tmp_path / "g2" / "civitai", "tombstones")


def test_nsfw_on_green_and_unusable_previous_are_refused(old_snapshot, tmp_path, capsys) -> None:
    old, _ = old_snapshot
    for extra in ([], ["--host", "green"]):
        rc = main(["crawl", "civitai", "--out", str(tmp_path / "x"), "--nsfw", *extra, "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--nsfw needs --host red" in err[0]
    with pytest.raises(FatalError, match="--nsfw needs --host red"):
        CrawlConfig(source="civitai", out=str(tmp_path), api_url="http://x", civitai=CivitaiQuery(nsfw=True))
    assert not (tmp_path / "x").exists()

    unfinished = tmp_path / "unfinished"
    state = CrawlState(unfinished / "civitai")
    state.begin({"source": "civitai", "api_url": "http://127.0.0.1:9"})
    state.update_partition("type=*|base=*", done=False, cursor="c2")
    cases = [(unfinished, "is not a complete snapshot"), (tmp_path / "nothing", "no civitai crawl there"),
             (tmp_path / "x", "is the --out directory")]
    for previous, message in cases:
        rc = main(["crawl", "civitai", "--out", str(tmp_path / "x"), "--previous", str(previous),
                   "--api-url", "http://127.0.0.1:9", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], err
    # A Hub delta needs a Hub snapshot; the Civitai one is not it.
    rc = main(["crawl", "hf", "--out", str(tmp_path / "h"), "--previous", str(unfinished),
               "--api-url", "http://127.0.0.1:9", "--no-progress"])
    assert rc == 2 and "no hf crawl there" in capsys.readouterr().err
