"""A reusable OpenAI-compatible fake server on loopback: ``/v1/chat/completions`` and ``/v1/embeddings``.

A real ``ThreadingHTTPServer`` on 127.0.0.1 (port 0). What each request gets is decided by a *script*:

* a list of :class:`Answer` objects, consumed in order (the last one repeats when the list runs out), or
* a callable ``(path, request_json) -> Answer``.

Answer helpers cover every mode the tests need::

    valid(obj)              200, message content = json.dumps(obj)
    text("...")             200, message content is this raw text (invalid JSON, fenced JSON, prose)
    error(429, retry_after=0)  an HTTP error with an OpenAI-style error body (and Retry-After)
    slow(2.0, then=valid(...)) sleep, then answer ``then``
    refuse_response_format()   400 when the request carries response_format, else a valid answer

Without a script, chat requests get a valid refinement answer and embedding requests get deterministic
unit vectors (a hash of each input text). Every request is logged in ``server.log`` as
``(path, parsed JSON body, headers)``.

Usage::

    server, base_url = start_fake_openai(script=[error(429, retry_after=0), valid({...})])
    try:
        ...  # OPENAI_BASE_URL=base_url
    finally:
        stop(server)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DEFAULT_REFINEMENT = {"description": "Paints the subject in a test style.", "category": "style",
                      "recommended_weight": 0.7}  # fmt: skip


@dataclass
class Answer:
    """One scripted reply.

    Args:
        status: HTTP status.
        content: chat message text (200 chat answers); ``None`` → default refinement JSON.
        body: raw JSON body to send instead of a chat completion (errors).
        headers: extra response headers.
        delay_s: sleep before answering.
        reject_response_format: answer 400 if the request has ``response_format`` (else answer normally).
    """

    status: int = 200
    content: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    reject_response_format: bool = False


def valid(obj: dict[str, Any] | None = None) -> Answer:
    """200 with ``obj`` (default: a valid refinement) as JSON text."""
    return Answer(content=json.dumps(obj if obj is not None else DEFAULT_REFINEMENT))


def text(content: str) -> Answer:
    """200 with raw message text."""
    return Answer(content=content)


def error(status: int, retry_after: float | None = None, message: str = "fake error") -> Answer:
    """An HTTP error with an OpenAI-style body."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Answer(status=status, body={"error": {"message": message, "type": "fake", "code": status}},
                  headers=headers)  # fmt: skip


def slow(seconds: float, then: Answer | None = None) -> Answer:
    """Sleep ``seconds``, then give ``then`` (default: a valid answer)."""
    base = then or valid()
    return Answer(
        base.status, base.content, base.body, dict(base.headers), seconds, base.reject_response_format
    )


def refuse_response_format(then: Answer | None = None) -> Answer:
    """400 when the request asks for ``response_format``; otherwise ``then``."""
    base = then or valid()
    return Answer(base.status, base.content, base.body, dict(base.headers), base.delay_s, True)


def fake_vector(text_in: str, dim: int) -> list[float]:
    """Deterministic unit vector of a text (what the fake embeddings endpoint returns)."""
    seed = int.from_bytes(hashlib.sha256(text_in.encode("utf-8")).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim)
    return (vec / np.linalg.norm(vec)).tolist()


class FakeOpenAIServer(ThreadingHTTPServer):
    """The server object: ``log``, ``script``, ``embed_dim``; thread-safe answer selection."""

    daemon_threads = True

    def __init__(self, script: list[Answer] | Callable[[str, dict[str, Any]], Answer] | None,
                 embed_dim: int) -> None:  # fmt: skip
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.embed_dim = embed_dim
        self.log: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._lock = threading.Lock()
        self._index = 0

    def next_answer(self, path: str, body: dict[str, Any]) -> Answer | None:
        with self._lock:
            self.log.append((path, body, {}))
            if self.script is None:
                return None
            if callable(self.script):
                return self.script(path, body)
            if not self.script:
                return None
            answer = self.script[min(self._index, len(self.script) - 1)]
            self._index += 1
            return answer

    def requests_to(self, path_suffix: str) -> list[dict[str, Any]]:
        """Logged JSON bodies of requests whose path ends with ``path_suffix``."""
        return [body for path, body, _ in self.log if path.endswith(path_suffix)]


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        return

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "bad json"}})
            return
        answer = self.server.next_answer(self.path, body)
        with self.server._lock:
            self.server.log[-1] = (self.path, body, {k.lower(): v for k, v in self.headers.items()})
        if answer is not None and answer.delay_s:
            time.sleep(answer.delay_s)
        if answer is not None and answer.reject_response_format and "response_format" in body:
            self._send(
                400, {"error": {"message": "response_format is not supported", "type": "invalid_request"}}
            )
            return
        if answer is not None and answer.status != 200:
            self._send(answer.status, answer.body or {"error": {"message": "error"}}, answer.headers)
            return
        if self.path.endswith("/embeddings"):
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
            dim = self.server.embed_dim
            data = [{"object": "embedding", "index": i, "embedding": fake_vector(str(t), dim)}
                    for i, t in enumerate(inputs)]  # fmt: skip
            self._send(200, {"object": "list", "data": data, "model": body.get("model"),
                             "usage": {"prompt_tokens": 1, "total_tokens": 1}})  # fmt: skip
            return
        if self.path.endswith("/chat/completions"):
            content = (
                answer.content
                if answer is not None and answer.content is not None
                else json.dumps(DEFAULT_REFINEMENT)
            )
            self._send(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })  # fmt: skip
            return
        self._send(404, {"error": {"message": f"no route {self.path}"}})


def start_fake_openai(script: list[Answer] | Callable[[str, dict[str, Any]], Answer] | None = None,
                      embed_dim: int = 8) -> tuple[FakeOpenAIServer, str]:  # fmt: skip
    """Start the fake in a daemon thread; return ``(server, base_url)``; ``base_url`` ends in ``/v1``."""
    server = FakeOpenAIServer(script, embed_dim)
    threading.Thread(target=server.serve_forever, name="fake-openai", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def stop(server: FakeOpenAIServer) -> None:
    """Shut the fake down."""
    server.shutdown()
    server.server_close()
