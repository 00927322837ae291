"""``eval judge``: the both-orders VLM judge against a real loopback chat-completions server."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylus_docs import cli
from stylus_docs.eval.judge import parse_winner, verdict

PROMPTS = ("a red apple", "a red car")


class _Judge(BaseHTTPRequestHandler):
    """Answers chat completions; ``server.mode``: ``first`` (always the first image), ``redder`` (the
    redder image), with ``server.fail_first`` 5xx answers and ``server.garbage_first`` unparsable ones."""

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append(body)
            n = len(srv.requests)
        if n <= srv.fail_first:
            self._send(500, {"error": {"message": "overloaded"}})
            return
        urls = [c["image_url"]["url"] for c in body["messages"][1]["content"] if c["type"] == "image_url"]
        red = []
        for url in urls:
            img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
            arr = np.asarray(img, dtype=float)
            red.append(arr[..., 0].mean() - arr[..., 2].mean())
        if n <= srv.fail_first + srv.garbage_first:
            text = "I cannot decide."
        elif srv.mode == "first":
            text = '{"winner": "first", "reason": "position bias"}'
        else:
            text = "```json\n" + json.dumps({"winner": "first" if red[0] > red[1] else "second"}) + "\n```"
        self._send(
            200,
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    srv.lock, srv.requests, srv.mode, srv.fail_first, srv.garbage_first = threading.Lock(), [], "redder", 0, 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _sets(root: Path) -> tuple[Path, Path]:
    """Set A: red images; set B: blue ones; same prompts and seeds (2 prompts × 2 seeds)."""
    for name, colour in (("a", (220, 20, 20)), ("b", (20, 20, 220))):
        for p, prompt in enumerate(PROMPTS):
            folder = root / name / f"p{p}"
            folder.mkdir(parents=True)
            for seed in range(2):
                path = folder / f"{seed:03d}-seed{seed}.png"
                Image.new("RGB", (32, 32), tuple(c + 10 * seed for c in colour)).save(path)
                side = {"user_prompt": prompt, "seed": seed, "baseline": name == "b"}
                path.with_suffix(".json").write_text(json.dumps(side))
    return root / "a", root / "b"


def _run(server, a, b, cache, capsys, *more):
    argv = [
        "eval",
        "judge",
        "--a",
        str(a),
        "--b",
        str(b),
        "--model",
        "judge-test",
        "--base-url",
        f"http://127.0.0.1:{server.server_port}/v1",
        "--cache-dir",
        str(cache),
        "--timeout",
        "10",
        "--format",
        "json",
        *more,
    ]
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_consistent_judge_wins_and_is_cached(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    a, b = _sets(tmp_path)
    server.fail_first, server.garbage_first = 1, 1  # one 500 (retried), one unparsable answer (re-asked)
    code, cap = _run(server, a, b, tmp_path / "cache", capsys, "--concurrency", "1")
    assert code == 0, cap.err
    out = json.loads(cap.out)
    assert out["n_pairs"] == 4
    for c in ("quality", "alignment"):
        assert (out["criteria"][c]["win"], out["criteria"][c]["tie"], out["criteria"][c]["lose"]) == (4, 0, 0)
    # 4 pairs × 2 criteria × 2 orders, + the retried 500, + the re-asked garbage answer
    assert len(server.requests) == 16 + 2
    body = server.requests[-1]
    assert body["model"] == "judge-test" and "a red" in body["messages"][1]["content"][-1]["text"]
    assert "sk-test-secret" not in cap.err
    # Both orders were really asked: a pair's A image is first in one request, second in the other.
    assert {p["quality"]["ab"] for p in out["pairs"]} == {"first"}
    assert {p["quality"]["ba"] for p in out["pairs"]} == {"second"}
    # Again: every answer comes from the cache.
    before = len(server.requests)
    code, cap = _run(server, a, b, tmp_path / "cache", capsys)
    assert code == 0 and len(server.requests) == before
    assert json.loads(cap.out)["cached"] == 16


def test_disagreeing_orders_are_a_tie(server, tmp_path, capsys):
    a, b = _sets(tmp_path)
    server.mode = "first"  # prefers whatever is shown first: the two orders disagree on every pair
    code, cap = _run(server, a, b, tmp_path / "cache", capsys, "--criteria", "quality")
    assert code == 0, cap.err
    q = json.loads(cap.out)["criteria"]["quality"]
    assert (q["win"], q["tie"], q["lose"], q["win_rate"]) == (0, 4, 0, 0.0)
    assert q["win_rate_excluding_ties"] is None


def test_verdict_and_answer_parsing():
    assert verdict("first", "second") == "win"
    assert verdict("second", "first") == "lose"
    assert verdict("first", "first") == "tie" and verdict("second", "second") == "tie"
    assert verdict("tie", "second") == "tie" and verdict(None, "first") == "failed"
    assert parse_winner('Sure! {"winner": "second", "reason": "sharper"}') == "second"
    assert parse_winner('```json\n{"winner": "TIE"}\n```') == "tie"
    assert parse_winner("winner: A") == "first"
    assert parse_winner("B") == "second"
    assert parse_winner("no idea") is None and parse_winner(None) is None


def test_refused_request_is_one_line(server, tmp_path, capsys):
    a, b = _sets(tmp_path)
    code, cap = _run(server, a, b, tmp_path / "cache", capsys, "--retries", "0", "--criteria", "quality")
    assert code == 0  # sanity: the server works
    server.fail_first = 10**6  # every request now fails with 500
    code, cap = _run(
        server, a, b, tmp_path / "other-cache", capsys, "--retries", "1", "--criteria", "quality"
    )
    assert code == 2
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "unavailable after 2 tries" in err[0]
