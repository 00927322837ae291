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

For load tests (``start_fake_openai(latency_s=..., rate_limit_fraction=..., ...)``):

* ``latency_s`` — added before every 200 chat answer (a VLM's think time);
* ``rate_limit_fraction`` — that share of chat requests gets an immediate 429 with
  ``Retry-After: <retry_after>``, decided by a seeded hash of (seed, title, n-th ask of that title), so a
  run is reproducible whatever the thread interleaving (the script is not consumed by these);
* chat answers carry ``usage`` (prompt ≈ text characters / 4 + 85 per image, completion ≈ answer / 4);
* ``hold_after=k`` — after k 200 chat answers, every later answer is held (the request blocks) until
  :meth:`FakeOpenAIServer.release`, and then refused with 503: a client killed while its requests are
  held has received exactly k answers, none in transit (requests after the release are answered);
* ``server.max_in_flight`` — most requests being served at once; ``server.events`` — one
  :class:`ChatEvent` per chat request (monotonic arrival/finish times, status); ``server.asked`` /
  ``server.answered`` — per-adapter counts of chat requests and of 200 answers, keyed by the title on
  the ``Title: …`` first line of the user message (:func:`title_of`).

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
import random
import sys
import threading
import time
from collections import Counter
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


@dataclass(frozen=True)
class ChatEvent:
    """One chat request as the server saw it (``time.monotonic`` clock)."""

    title: str
    arrived: float
    finished: float
    status: int


def title_of(body: dict[str, Any]) -> str:
    """The adapter title of a chat request: its user message's ``Title: …`` first line, prefix removed."""
    messages = body.get("messages") or []
    user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    content = user.get("content") if user else None
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = texts[0] if texts else ""
    first = str(content or "").split("\n", 1)[0]
    return first.removeprefix("Title: ").strip()


def _usage(body: dict[str, Any], content: str) -> dict[str, int]:
    chars = images = 0
    for message in body.get("messages") or []:
        parts = message.get("content")
        parts = [{"type": "text", "text": parts}] if isinstance(parts, str) else parts or []
        for part in parts:
            if part.get("type") == "image_url":
                images += 1
            else:
                chars += len(str(part.get("text", "")))
    prompt, completion = chars // 4 + 85 * images, max(1, len(content) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class FakeOpenAIServer(ThreadingHTTPServer):
    """The server object: ``log``, ``script``, ``embed_dim``, load-test knobs and records (see the module
    docstring); thread-safe answer selection."""

    daemon_threads = True
    # The default backlog of 5 drops connections of a burst of concurrent clients (the SYN is then
    # retransmitted a second later, which would show up as fake latency).
    request_queue_size = 256

    def __init__(self, script: list[Answer] | Callable[[str, dict[str, Any]], Answer] | None,
                 embed_dim: int, *, latency_s: float = 0.0, rate_limit_fraction: float = 0.0,
                 rate_limit_seed: int = 0, retry_after: float = 1.0,
                 hold_after: int | None = None) -> None:  # fmt: skip
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.embed_dim = embed_dim
        self.latency_s = latency_s
        self.rate_limit_fraction = rate_limit_fraction
        self.rate_limit_seed = rate_limit_seed
        self.retry_after = retry_after
        self.hold_after = hold_after
        self._granted = 0
        self._released = threading.Event()
        self.log: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.events: list[ChatEvent] = []
        self.asked: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._index = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (a process killed by a test) is expected, not a server fault.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return
        super().handle_error(request, client_address)

    def record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> int:
        """Log one request; return its per-title ask number (1 = first) for chat requests, else 0."""
        with self._lock:
            self.log.append((path, body, headers))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if not path.endswith("/chat/completions"):
                return 0
            title = title_of(body)
            self.asked[title] += 1
            return self.asked[title]

    def finish(self, path: str, body: dict[str, Any], arrived: float, status: int) -> None:
        """Record the end of one request."""
        with self._lock:
            self.in_flight -= 1
            if path.endswith("/chat/completions"):
                title = title_of(body)
                self.events.append(ChatEvent(title, arrived, time.monotonic(), status))
                if status == 200:
                    self.answered[title] += 1

    def may_answer(self) -> bool:
        """Under ``hold_after``: take one of the k answer slots, or block until released (False)."""
        with self._lock:
            if self.hold_after is None:
                return True
            if self._granted < self.hold_after:
                self._granted += 1
                return True
        self._released.wait()
        return False

    def release(self) -> None:
        """Unblock held requests (they get 503); later requests are answered normally."""
        with self._lock:
            self.hold_after = None
        self._released.set()

    def injected_429(self, title: str, nth: int) -> bool:
        """Whether the ``nth`` ask of ``title`` gets a rate-limit refusal (seeded, order-independent)."""
        if self.rate_limit_fraction <= 0:
            return False
        return random.Random(f"{self.rate_limit_seed}:{title}:{nth}").random() < self.rate_limit_fraction

    def next_answer(self, path: str, body: dict[str, Any]) -> Answer | None:
        with self._lock:
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
        with self._lock:
            return [body for path, body, _ in self.log if path.endswith(path_suffix)]


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        return

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        return status

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "bad json"}})
            return
        nth = self.server.record(self.path, body, {k.lower(): v for k, v in self.headers.items()})
        status = 500
        try:
            status = self._serve(body, nth)
        finally:
            self.server.finish(self.path, body, arrived, status)

    def _serve(self, body: dict[str, Any], nth: int) -> int:
        server = self.server
        if nth and server.injected_429(title_of(body), nth):
            wait = server.retry_after
            header = {"Retry-After": str(int(wait)) if wait == int(wait) else str(wait)}
            refusal = {"message": "Rate limit reached (fake)", "type": "requests", "code": "rate_limit"}
            return self._send(429, {"error": refusal}, header)
        answer = server.next_answer(self.path, body)
        if answer is not None and answer.delay_s:
            time.sleep(answer.delay_s)
        if answer is not None and answer.reject_response_format and "response_format" in body:
            return self._send(
                400, {"error": {"message": "response_format is not supported", "type": "invalid_request"}}
            )
        if answer is not None and answer.status != 200:
            return self._send(answer.status, answer.body or {"error": {"message": "error"}}, answer.headers)
        if self.path.endswith("/embeddings"):
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
            dim = self.server.embed_dim
            data = [{"object": "embedding", "index": i, "embedding": fake_vector(str(t), dim)}
                    for i, t in enumerate(inputs)]  # fmt: skip
            return self._send(200, {"object": "list", "data": data, "model": body.get("model"),
                                    "usage": {"prompt_tokens": 1, "total_tokens": 1}})  # fmt: skip
        if self.path.endswith("/chat/completions"):
            content = (
                answer.content
                if answer is not None and answer.content is not None
                else json.dumps(DEFAULT_REFINEMENT)
            )
            if server.latency_s:
                time.sleep(server.latency_s)
            if not server.may_answer():
                return self._send(503, {"error": {"message": "held, then released (fake)"}})
            return self._send(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": _usage(body, content),
            })  # fmt: skip
        return self._send(404, {"error": {"message": f"no route {self.path}"}})


def start_fake_openai(script: list[Answer] | Callable[[str, dict[str, Any]], Answer] | None = None,
                      embed_dim: int = 8, *, latency_s: float = 0.0, rate_limit_fraction: float = 0.0,
                      rate_limit_seed: int = 0, retry_after: float = 1.0, hold_after: int | None = None,
                      ) -> tuple[FakeOpenAIServer, str]:  # fmt: skip
    """Start the fake in a daemon thread; return ``(server, base_url)``; ``base_url`` ends in ``/v1``.

    The keyword arguments are the load-test knobs of :class:`FakeOpenAIServer` (module docstring).
    """
    server = FakeOpenAIServer(script, embed_dim, latency_s=latency_s, rate_limit_fraction=rate_limit_fraction,
                              rate_limit_seed=rate_limit_seed, retry_after=retry_after,
                              hold_after=hold_after)  # fmt: skip
    threading.Thread(target=server.serve_forever, name="fake-openai", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def stop(server: FakeOpenAIServer) -> None:
    """Shut the fake down (held requests are released first)."""
    server.release()
    server.shutdown()
    server.server_close()
