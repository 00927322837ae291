"""HttpClient against a real loopback HTTP server scripted per path."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stylus_docs.errors import FatalError
from stylus_docs.http import HttpClient, HttpFailure, RateLimiter, parse_hf_ratelimit, parse_retry_after

TOKEN = "tok-HTTPTEST-9f8e7d6c5b4a"


class Script:
    """Per-path queue of scripted responses; the last one repeats. Records headers seen."""

    def __init__(self) -> None:
        self.plans: dict[str, list[tuple]] = {}
        self.auth_seen: list[str | None] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def next(self, path: str) -> tuple:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            plan = self.plans.get(path, [("json", 200, {"ok": True})])
            return plan.pop(0) if len(plan) > 1 else plan[0]


def _handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            script.auth_seen.append(self.headers.get("Authorization"))
            path = self.path.split("?", 1)[0]
            kind, status, body, *rest = script.next(path)
            headers = rest[0] if rest else {}
            if kind == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "sleep":
                time.sleep(body)
                kind, body = "json", {"slow": True}
            if kind == "json":
                data, ctype = json.dumps(body).encode(), "application/json"
            elif kind == "html":
                data, ctype = b"<!DOCTYPE html><html><body>Just a moment...</body></html>", "text/html"
            else:  # raw bytes with a JSON content type
                data, ctype = body, "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in headers.items():
                self.send_header(k, v)
            if kind == "truncated":
                self.send_header("Content-Length", str(len(data) + 100))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", script
    srv.shutdown()
    srv.server_close()


def _client(base: str, **kw) -> HttpClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", (2.0, 2.0))
    return HttpClient(base, **kw)


def test_every_transient_fault_is_retried_and_counted(server) -> None:
    base, script = server
    script.plans["/a"] = [
        ("json", 503, {"error": "busy"}),
        ("json", 429, {"error": "slow down"}, {"Retry-After": "0"}),
        ("html", 200, None),
        ("raw", 200, b'{"items": [1, 2'),
        ("truncated", 200, b'{"items": [1, 2, 3]}'),
        ("drop", 0, None),
        ("json", 200, {"items": [1, 2, 3]}),
    ]
    client = _client(base, max_attempts=10)
    data, resp = client.get_json("/a", {"limit": 3})
    assert data == {"items": [1, 2, 3]}
    assert resp.status_code == 200
    snap = client.stats.snapshot()
    assert snap["requests"] == 7
    assert snap["retries_by_reason"] == {
        "http_5xx": 1, "http_429": 1, "html_body": 1, "invalid_json": 1,
        "truncated_body": 1, "connection_error": 1,
    }
    assert snap["failures"] == 0


def test_read_timeout_is_retried(server) -> None:
    base, script = server
    script.plans["/slow"] = [("sleep", 200, 1.0), ("json", 200, {"fast": True})]
    client = _client(base, timeout=(1.0, 0.3))
    data, _ = client.get_json("/slow")
    assert data == {"fast": True}
    assert client.stats.snapshot()["retries_by_reason"] == {"timeout": 1}


def test_too_many_pages_and_other_4xx_are_not_retried(server) -> None:
    base, script = server
    cap_body = {"error": "You've requested too many pages, please use cursors instead"}
    script.plans["/cap"] = [("json", 429, cap_body)]
    script.plans["/gone"] = [("json", 404, {"error": "No model with id 1"})]
    client = _client(base)
    with pytest.raises(HttpFailure) as info:
        client.get_json("/cap", {"page": 20})
    assert info.value.reason == "too_many_pages" and info.value.status == 429
    with pytest.raises(HttpFailure) as info:
        client.get_json("/gone")
    assert info.value.reason == "http_404" and not info.value.exhausted
    assert script.hits == {"/cap": 1, "/gone": 1}
    snap = client.stats.snapshot()
    assert snap["retries"] == 0
    assert snap["failures_by_reason"] == {"too_many_pages": 1, "http_404": 1}


def test_exhausted_retries_raise_with_last_reason(server) -> None:
    base, script = server
    script.plans["/down"] = [("json", 502, {"error": "bad gateway"})]
    client = _client(base, max_attempts=3)
    with pytest.raises(HttpFailure) as info:
        client.get_json("/down")
    assert info.value.reason == "http_5xx" and info.value.exhausted
    assert script.hits["/down"] == 3
    assert client.stats.snapshot()["retries_by_reason"] == {"http_5xx": 2}


def test_token_goes_only_to_its_own_host_and_never_into_errors(server, monkeypatch, caplog) -> None:
    base, script = server
    other = base.replace("127.0.0.1", "localhost")  # same server, different host name
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    client = _client(base, token_env="CIVITAI_API_TOKEN", max_attempts=2)
    client.get_json("/a")
    client.get_json(f"{other}/a")
    assert script.auth_seen == [f"Bearer {TOKEN}", None]
    script.plans["/fail"] = [("json", 503, {"error": "x"})]
    with pytest.raises(HttpFailure) as info:
        client.get_json(f"/fail?token={TOKEN}")
    assert TOKEN not in str(info.value) and TOKEN not in info.value.url
    assert TOKEN not in caplog.text


def test_401_with_token_is_fatal_without_token_recorded(server, monkeypatch) -> None:
    base, script = server
    script.plans["/private"] = [("json", 401, {"error": "Unauthorized"})]
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    with pytest.raises(FatalError) as info:
        _client(base, token_env="CIVITAI_API_TOKEN").get_json("/private")
    assert TOKEN not in str(info.value)
    monkeypatch.delenv("CIVITAI_API_TOKEN")
    with pytest.raises(HttpFailure) as failure:
        _client(base, token_env="CIVITAI_API_TOKEN").get_json("/private")
    assert failure.value.reason == "unauthorized"


def test_get_text_and_stream(server) -> None:
    base, script = server
    script.plans["/readme"] = [("html", 200, None), ("raw", 200, b"---\nbase_model: x\n---\n# Card")]
    client = _client(base)
    text, _ = client.get_text("/readme")
    assert text.startswith("---\nbase_model: x")
    assert client.stats.snapshot()["retries_by_reason"] == {"html_body": 1}
    script.plans["/blob"] = [("json", 500, {}), ("raw", 200, b"0123456789")]
    with client.stream("/blob") as resp:
        assert b"".join(resp.iter_content(4)) == b"0123456789"


def test_concurrent_requests_are_in_flight_together(server) -> None:
    base, script = server
    script.plans["/lag"] = [("sleep", 200, 0.3)]
    client = _client(base, pool_size=16)
    threads = [threading.Thread(target=client.get_json, args=("/lag",)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = client.stats.snapshot()
    assert snap["requests"] == 10 and snap["max_in_flight"] >= 8


def test_header_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(future) <= 31
    assert parse_hf_ratelimit('"api";r=0;t=17') == 17.0
    assert parse_hf_ratelimit('"api";r=5;t=17') is None


def test_retry_after_is_capped_and_used(server) -> None:
    base, script = server
    script.plans["/ra"] = [("json", 429, {}, {"Retry-After": "3600"}), ("json", 200, {"ok": 1})]
    client = _client(base, max_retry_after=0.05)
    assert client.get_json("/ra")[0] == {"ok": 1}
    script.plans["/hf"] = [("json", 429, {}, {"RateLimit": '"api";r=0;t=3600'}), ("json", 200, {"ok": 2})]
    assert client.get_json("/hf")[0] == {"ok": 2}
    assert client.stats.snapshot()["retries_by_reason"] == {"http_429": 2}


def test_rate_limiter_spaces_starts_per_host() -> None:
    limiter = RateLimiter(rps=20)
    start = time.monotonic()
    for _ in range(5):
        limiter.acquire("a")
    limiter.acquire("b")  # another host is not held back by a's queue
    assert time.monotonic() - start >= 4 / 20 * 0.9
    assert RateLimiter(None).interval == 0.0
