"""The VLM refiner at catalogue scale: concurrency, rate limits, Retry-After, the crash-safe journal.

Real loopback server (``fakes.openai_server``), real threads, real subprocesses killed with SIGKILL;
time bounds are generous (shared 2-core machines) and checked on the server's own timestamps.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes.openai_server import Answer, error, start_fake_openai, stop, text, title_of, valid

from stylus_docs.refine.journal import AnswerJournal, read_answers
from stylus_docs.refine.limits import RateLimiter, parse_duration_s, server_wait_s
from stylus_docs.refine.openai_vlm import (
    UNAUTHORIZED,
    OpenAIRefineHandler,
    RefineOutcome,
    RefineRequest,
    VLMConfig,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-SCALEKEY987"
GOOD = {"description": "Draws in ink.", "category": "style", "recommended_weight": 0.6}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _req(i: int) -> RefineRequest:
    content_hash = hashlib.sha256(f"adapter-{i}".encode()).hexdigest()
    user = {"role": "user", "content": [{"type": "text", "text": f"Title: Adapter {i}\nType: LORA"}]}
    return RefineRequest(f"civitai:{i}@{i}", content_hash, [{"role": "system", "content": "Refine."}, user])


def _run(base_url: str, n: int, **config: object) -> tuple[list[RefineOutcome], float]:
    handler = OpenAIRefineHandler(VLMConfig(model="fake-vlm", base_url=base_url, **config), "Refine.")
    client = handler.create_client()
    start = time.monotonic()
    try:
        results = handler.request([_req(i) for i in range(n)], client)
    finally:
        handler.close()
    return [r.inference for r in results], time.monotonic() - start


def test_server_wait_headers() -> None:
    assert server_wait_s({"Retry-After": "1"}) == 1.0
    assert server_wait_s({"retry-after-ms": "250"}) == 0.25
    assert server_wait_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    from datetime import UTC, datetime

    now = datetime(2015, 10, 21, 7, 27, 58, tzinfo=UTC)
    assert server_wait_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now) == 2.0
    assert parse_duration_s("6m0s") == 360.0 and parse_duration_s("250ms") == 0.25
    assert parse_duration_s("1h2m3.5s") == 3723.5 and parse_duration_s("soon") is None
    both = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert server_wait_s(both) == 360.0  # which limit was hit is unknown: the longer wait
    assert server_wait_s({**both, "x-ratelimit-remaining-requests": "0"}) == 1.0
    assert server_wait_s({"content-type": "application/json"}) is None


def test_concurrency_really_overlaps() -> None:
    server, base_url = start_fake_openai(latency_s=0.3)
    try:
        outcomes, elapsed = _run(base_url, 32, concurrency=8)
    finally:
        stop(server)
    assert all(o.refinement is not None and o.requests == 1 for o in outcomes)
    assert server.max_in_flight >= 8
    assert elapsed < 32 * 0.3 / 2  # serial would take 9.6 s; 8 in flight ~1.5 s


def test_retry_after_pauses_every_thread() -> None:
    refused: list[str] = []

    def script(path: str, body: dict) -> Answer:
        if not refused:  # the very first request: 429 with Retry-After: 1
            refused.append(title_of(body))
            return error(429, retry_after=1)
        return valid(GOOD)

    server, base_url = start_fake_openai(script=script)
    try:
        outcomes, _ = _run(base_url, 12, concurrency=6)
    finally:
        stop(server)
    assert all(o.refinement is not None for o in outcomes)
    assert sorted(o.requests for o in outcomes) == [1] * 11 + [2]
    (refusal,) = [e for e in server.events if e.status == 429]
    later = [e for e in server.events if e.arrived > refusal.arrived]
    assert len(later) == 12  # the retry of Adapter 0 and the 11 others, held back by the pause
    assert min(e.arrived for e in later) >= refusal.finished + 0.9


def test_rpm_limit_is_respected() -> None:
    server, base_url = start_fake_openai()
    try:
        outcomes, _ = _run(base_url, 12, concurrency=8, rpm=240)  # 4/s, a burst of 4
    finally:
        stop(server)
    assert all(o.refinement is not None for o in outcomes)
    arrivals = sorted(e.arrived for e in server.events)
    # 4 at once, then one every 0.25 s: the last of 12 arrives ~2 s after the first.
    assert 1.7 <= arrivals[-1] - arrivals[0] <= 8.0
    assert max(sum(1 for t in arrivals if a <= t < a + 1.0) for a in arrivals) <= 4 + 4 + 1


def test_token_budget_settles_on_real_usage() -> None:
    limiter = RateLimiter(None, 6000)  # 100 tokens/s, a burst of 100
    assert limiter.acquire(100) < 0.05
    limiter.settle(100, 10)  # the answer used 10: 90 come back
    assert limiter.acquire(80) < 0.05
    start = time.monotonic()
    limiter.acquire(60)  # ~10 left: waits ~0.5 s for the rest
    assert 0.3 <= time.monotonic() - start <= 3.0


def test_bad_key_stops_after_one_request() -> None:
    server, base_url = start_fake_openai(script=[error(401, message="Incorrect API key provided")])
    try:
        outcomes, _ = _run(base_url, 16, concurrency=8)
    finally:
        stop(server)
    assert len(server.requests_to("/chat/completions")) == 1
    assert {o.reason for o in outcomes} == {UNAUTHORIZED}
    assert sorted(o.requests for o in outcomes) == [0] * 15 + [1]
    assert all(KEY not in (o.detail or "") for o in outcomes)


def test_retries_exhausted_is_an_outcome_and_spares_the_batch() -> None:
    def decide(path: str, body: dict) -> Answer:
        return error(500) if title_of(body) == "Adapter 3" else valid(GOOD)

    server, base_url = start_fake_openai(script=decide)
    try:
        outcomes, _ = _run(base_url, 8, concurrency=4, num_retries=2)
    finally:
        stop(server)
    assert outcomes[3].reason == "retries_exhausted" and outcomes[3].requests == 3
    assert all(o.refinement is not None for i, o in enumerate(outcomes) if i != 3)
    assert server.asked["Adapter 3"] == 3
    assert all(server.asked[f"Adapter {i}"] == 1 for i in range(8) if i != 3)  # nobody asked twice


def test_usage_summed_and_journal_has_no_secret(tmp_path: Path) -> None:
    def decide(path: str, body: dict) -> Answer:
        first_bad = title_of(body) == "Adapter 1" and server.asked["Adapter 1"] == 1
        return text("no JSON here, sorry") if first_bad else valid(GOOD)

    server, base_url = start_fake_openai(script=decide)
    journal = tmp_path / "cache" / "refine" / "openai-v1"
    try:
        outcomes, _ = _run(base_url, 5, concurrency=4, journal_dir=str(journal), build_id="20990101T000000Z")
    finally:
        stop(server)
    assert all(o.refinement is not None for o in outcomes)
    one = outcomes[0]
    assert one.requests == 1 and one.prompt_tokens > 0 and one.completion_tokens > 0
    # Adapter 1 was re-asked after an invalid answer: both answers' usage counts.
    assert outcomes[1].requests == 2
    assert outcomes[1].prompt_tokens == 2 * one.prompt_tokens
    assert outcomes[1].completion_tokens == one.completion_tokens + len("no JSON here, sorry") // 4
    (path,) = journal.glob("answers-20990101T000000Z-*.jsonl")
    answers = read_answers(journal, "fake-vlm")
    assert set(answers) == {_req(i).content_hash for i in range(5)}
    entry = answers[_req(1).content_hash]
    assert entry["refiner"] == "openai@v2" and entry["prompt_tokens"] == outcomes[1].prompt_tokens
    assert read_answers(journal, "another-model") == {}
    for p in tmp_path.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert b"SCALEKEY987" not in data and b"Bearer" not in data and b"authorization" not in data


_CHILD = """
import sys, time
from pathlib import Path
from stylus_docs.refine.journal import AnswerJournal
journal = AnswerJournal(Path(sys.argv[1]), "b1", flush_every=4, flush_interval_s=3600)
for i in range(10):
    journal.append({"content_hash": f"h{i}", "model": "m", "description": f"d{i}", "category": "style",
                    "recommended_weight": 0.5})
print("appended", flush=True)
time.sleep(60)
"""


def test_journal_survives_kill_9(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _CHILD, str(journal_dir)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"appended"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    (path,) = journal_dir.glob("answers-b1-*.jsonl")
    # Killed mid-write: a torn last line (no newline), cut inside the UTF-8 bytes of "à".
    with open(path, "ab") as handle:
        handle.write('{"content_hash": "h99", "model": "m", "description": "Dessine à'.encode()[:-1])
    # An end-of-build cache file of the old format, and lines that must be skipped.
    old = {"content_hash": "h0", "model": "m", "description": "newer", "category": "pose",
           "recommended_weight": 1.0}  # fmt: skip
    out_of_range = {**old, "content_hash": "hx", "recommended_weight": 9}
    bad = [out_of_range, {**old, "content_hash": "hy", "model": "n"}]
    lines = [json.dumps(e).encode() for e in (old, *bad)] + [b'{"content_hash": "hz", NaN}', b"\x00\xff junk"]
    later = journal_dir / "20990101T000000Z.jsonl"
    later.write_bytes(b"\n".join(lines) + b"\n")
    os.utime(later, (time.time() + 5, time.time() + 5))  # written after the journal
    answers = read_answers(journal_dir, "m")
    # Every flushed entry (two batches of 4) is there; the 2 pending at the kill and the torn one are not.
    assert set(answers) == {f"h{i}" for i in range(8)}
    assert answers["h0"]["description"] == "newer"  # the later file wins
    assert answers["h5"] == {"content_hash": "h5", "model": "m", "description": "d5", "category": "style",
                             "recommended_weight": 0.5}  # fmt: skip
    journal = AnswerJournal(journal_dir, "b2")
    with pytest.raises(ValueError, match="may not carry"):
        journal.append({**old, "api_key": KEY})


_HANDLER_CHILD = """
import json, sys
from stylus_docs.refine.openai_vlm import OpenAIRefineHandler, VLMConfig, RefineRequest
args = json.loads(sys.argv[1])
handler = OpenAIRefineHandler(VLMConfig(model="fake-vlm", base_url=args["base_url"], concurrency=4,
                                        journal_dir=args["journal"], build_id="b1"), "Refine.")
client = handler.create_client()
reqs = [RefineRequest(*r) for r in args["reqs"]]
for start in range(0, len(reqs), 16):
    handler.request(reqs[start:start + 16], client)
"""


@pytest.mark.timeout(120)
def test_killed_refine_resumes_without_reasking(tmp_path: Path) -> None:
    # The server answers 12 requests, then holds every later one: the kill lands with no answer in
    # transit, so "each adapter answered at most once in total" can be asserted exactly.
    server, base_url = start_fake_openai(latency_s=0.05, hold_after=12)
    journal = tmp_path / "journal"
    reqs = [_req(i) for i in range(40)]
    payload = {"base_url": base_url, "journal": str(journal),
               "reqs": [[r.adapter_id, r.content_hash, r.messages] for r in reqs]}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _HANDLER_CHILD, json.dumps(payload)], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(read_answers(journal, "fake-vlm")) < 12 and time.monotonic() < deadline:
            assert child.poll() is None
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        server.release()  # the held requests of the dead child get 503s, never answers
        kept = read_answers(journal, "fake-vlm")
        first_asked = Counter(server.asked)
        missing = [r for r in reqs if r.content_hash not in kept]
        config = VLMConfig(model="fake-vlm", base_url=base_url, concurrency=4, journal_dir=str(journal),
                           build_id="b2")  # fmt: skip
        handler = OpenAIRefineHandler(config, "Refine.")
        outcomes = handler.request(missing, handler.create_client())
        handler.close()
    finally:
        if child.poll() is None:
            child.kill()
        stop(server)
    assert len(kept) == 12 and len(missing) == 28
    assert all(r.inference.refinement is not None for r in outcomes)
    kept_titles = {f"Adapter {i}" for i, r in enumerate(reqs) if r.content_hash in kept}
    assert not kept_titles & set(Counter(server.asked) - first_asked)  # nothing on disk is asked again
    assert server.answered == Counter({f"Adapter {i}": 1 for i in range(40)})  # each answered once in all
    assert set(read_answers(journal, "fake-vlm")) == {r.content_hash for r in reqs}
