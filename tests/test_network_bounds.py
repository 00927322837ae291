"""Bounded network fetches against real loopback servers: total deadlines, body size caps, the image
host allow-list (issue 10: a trickling server must not hold a worker, a huge body must not fill memory,
an image URL from a card must not make the toolkit talk to any host).

Every server here is a ``ThreadingHTTPServer`` on 127.0.0.1 that logs each request, so a test can say
"asked once" or "never contacted". Trickling handlers stop on their own after a few seconds, so with
a protection removed a test fails on its assertion instead of hanging.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stylus_docs.crawl.snapshot import iter_chunk_records
from stylus_docs.crawl.state import read_failures
from stylus_docs.download import AdapterCache, DownloadConfig
from stylus_docs.errors import SkipRecord
from stylus_docs.http import (
    DEFAULT_DEADLINE_S,
    MAX_JSON_BYTES,
    MAX_TEXT_BYTES,
    FetchError,
    HttpClient,
    HttpFailure,
    bounded_session,
    fetch_bounded,
    host_allowed,
)
from stylus_docs.sources import DEFAULT_IMAGE_HOSTS
from tests.download_server import FileServer

pytestmark = pytest.mark.timeout(60)

Route = Callable[[BaseHTTPRequestHandler], None]
TRICKLE_GAP_S = 0.25  # one byte per gap
TRICKLE_FOR_S = 6.0  # a trickling handler gives up after this long (the tests' deadlines are ~1 s)


class _QuietServer(ThreadingHTTPServer):
    """Clients here hang up on purpose (a deadline, a cap): that is not a server error worth printing."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Loopback:
    """A loopback server whose paths are answered by ``routes`` (path without query -> handler fn)."""

    def __init__(self, routes: dict[str, Route], protocol: str = "HTTP/1.1") -> None:
        self.routes = routes
        self.hits: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol

            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                server.hits.append(path)
                route = server.routes.get(path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the bounded reads are for

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def loopback() -> Iterator[Callable[..., Loopback]]:
    servers: list[Loopback] = []

    def start(routes: dict[str, Route], **kw: Any) -> Loopback:
        servers.append(Loopback(routes, **kw))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


# -- route builders ------------------------------------------------------------------------------

def send(body: bytes, ctype: str = "application/json", status: int = 200,
         headers: dict[str, str] | None = None) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)
    return route


def trickle(ctype: str, head: bytes = b"", promised: int = 100_000, tail: bytes = b"",
            extra_headers: dict[str, str] | None = None) -> Route:
    """Headers and ``head`` at once, then one byte every TRICKLE_GAP_S: the bytes of ``tail``, then
    spaces (``Content-Length: promised``)."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(promised))
        for key, value in (extra_headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(head)
        h.wfile.flush()
        ends = time.monotonic() + TRICKLE_FOR_S
        sent = 0
        while time.monotonic() < ends and len(head) + sent < promised:
            h.wfile.write(tail[sent:sent + 1] or b" ")
            h.wfile.flush()
            sent += 1
            time.sleep(TRICKLE_GAP_S)
        h.close_connection = True  # gives up: the client sees a cut body (if it waited this long)
    return route


def trickle_headers() -> Route:
    """The status line at once, then one header byte every TRICKLE_GAP_S (socket timeouts never fire)."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: ")
        ends = time.monotonic() + TRICKLE_FOR_S
        while time.monotonic() < ends:
            h.wfile.write(b"a")
            h.wfile.flush()
            time.sleep(TRICKLE_GAP_S)
        h.wfile.write(b"\r\nContent-Length: 2\r\n\r\n[]")
    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def chunked(piece: bytes, pieces: int, ctype: str = "application/json") -> Route:
    """``Transfer-Encoding: chunked`` without a length: ``pieces`` chunks of ``piece``."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for _ in range(pieces):
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
    return route


def close_delimited(body: bytes, ctype: str = "application/json") -> Route:
    """An HTTP/1.0-style answer: no length, the body ends when the server closes the connection."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.end_headers()
        h.wfile.write(body)
    return route


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def safetensors_bytes(n: int = 256) -> bytes:
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * (n // 256) + bytes(n % 256)


def _client(url: str, **kw: Any) -> HttpClient:
    kw.setdefault("max_attempts", 1)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("backoff_max", 0.0)
    kw.setdefault("timeout", (2.0, 2.0))  # each read of a trickle returns long before this fires
    return HttpClient(url, **kw)


# -- defaults -------------------------------------------------------------------------------------

def test_default_deadlines_and_caps_are_the_documented_ones() -> None:
    from stylus_docs.refine.openai_vlm import VLMConfig

    client = HttpClient("http://127.0.0.1:9")
    assert client.deadline == DEFAULT_DEADLINE_S == 120.0
    assert client.max_json_bytes == MAX_JSON_BYTES == 32 * 1024 * 1024
    assert client.max_text_bytes == MAX_TEXT_BYTES == 2 * 1024 * 1024
    cfg = DownloadConfig()
    assert cfg.budget_s(10 * 1024 * 1024) == 300.0  # small files: at least 300 s
    assert cfg.budget_s(1024 * 1024 * 1024) == 1024.0  # 1 GiB at 1 MiB/s
    assert DownloadConfig(deadline_s=7).budget_s(10**12) == 7
    vlm = VLMConfig()
    assert vlm.image_deadline_s == 30.0
    assert vlm.allowed_image_hosts == DEFAULT_IMAGE_HOSTS


# -- 1. total deadlines against a trickling server ------------------------------------------------

def test_get_json_from_a_trickling_server_stops_at_the_deadline(loopback) -> None:
    srv = loopback({"/slow": trickle("application/json", b"[")})
    client = _client(srv.url, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(HttpFailure) as info:
        client.get_json("/slow")
    elapsed = time.monotonic() - started
    assert info.value.reason == "deadline_exceeded"
    assert elapsed < 3.0, elapsed  # bounded by the deadline, not by the server (it trickles for 6 s)
    assert srv.hits == ["/slow"]
    assert client.stats.snapshot()["failures_by_reason"] == {"deadline_exceeded": 1}


def test_deadline_covers_every_attempt_not_the_whole_call(loopback) -> None:
    """Each attempt has its own deadline; the retry policy then bounds the call (attempts x deadline)."""
    srv = loopback({"/slow": trickle("application/json", b"[")})
    client = _client(srv.url, deadline=0.6, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(HttpFailure) as info:
        client.get_json("/slow")
    assert info.value.reason == "deadline_exceeded" and info.value.exhausted
    assert time.monotonic() - started < 3.0
    assert srv.hits == ["/slow", "/slow"]
    assert client.stats.snapshot()["retries_by_reason"] == {"deadline_exceeded": 1}


def test_headers_trickled_one_byte_at_a_time_stop_at_the_deadline(loopback) -> None:
    srv = loopback({"/slow": trickle_headers()})
    client = _client(srv.url, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(HttpFailure) as info:
        client.get_json("/slow")
    assert info.value.reason == "deadline_exceeded"
    assert time.monotonic() - started < 3.0
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{srv.url}/slow", allowed_hosts=[srv.netloc], max_bytes=1 << 20, deadline_s=1.0,
                      timeout=(2.0, 2.0))
    assert info.value.reason == "deadline_exceeded"
    assert time.monotonic() - started < 3.0
    with bounded_session() as session:  # what a caller that keeps a session (the refiner) should use
        started = time.monotonic()
        with pytest.raises(FetchError) as info:
            fetch_bounded(f"{srv.url}/slow", allowed_hosts=[srv.netloc], max_bytes=1 << 20, deadline_s=1.0,
                          timeout=(2.0, 2.0), session=session)
        assert info.value.reason == "deadline_exceeded"
        assert time.monotonic() - started < 3.0
    # The client still works afterwards (the watchdog broke only that connection).
    srv.routes["/ok"] = send(b"[1]")
    assert client.get_json("/ok")[0] == [1]


def test_fetch_bounded_image_from_a_trickling_server_stops_at_the_deadline(loopback) -> None:
    srv = loopback({"/img.png": trickle("image/png", png_bytes()[:8])})
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{srv.url}/img.png", allowed_hosts=[srv.netloc], max_bytes=1 << 20,
                      deadline_s=1.0, timeout=(2.0, 2.0))
    assert info.value.reason == "deadline_exceeded"
    assert time.monotonic() - started < 3.0
    assert srv.hits == ["/img.png"]


def test_download_from_a_trickling_server_stops_at_the_deadline_and_resumes_later(loopback, tmp_path) -> None:
    data = safetensors_bytes(4096)
    sha = hashlib.sha256(data).hexdigest()
    head = data[:1000]
    srv = loopback({"/files/a.safetensors": trickle("application/octet-stream", head, promised=len(data),
                                                    tail=data[1000:])})
    cfg = DownloadConfig(deadline_s=1.0, max_attempts=1, resume_attempts=3, backoff=0.0, backoff_max=0.0,
                         timeout=(2.0, 2.0))
    cache = AdapterCache(tmp_path / "cache", cfg)
    card = {"adapter_id": "civitai:1@2", "download_url": f"{srv.url}/files/a.safetensors", "sha256": sha,
            "file_name": "a.safetensors", "file_size_kb": len(data) / 1024}
    started = time.monotonic()
    with pytest.raises(SkipRecord) as info:
        cache.fetch(card)
    assert info.value.reason == "deadline_exceeded"
    assert time.monotonic() - started < 3.0
    assert srv.hits == ["/files/a.safetensors"]  # not retried: the budget was for the whole file
    part = tmp_path / "cache" / "partial" / f"{sha}.part"
    kept = part.stat().st_size
    assert 1000 < kept < len(data)  # what arrived is kept for resume ...
    assert part.read_bytes() == data[:kept]
    assert cache.lookup(sha) is None
    # ... and a later run resumes from there.
    with FileServer() as honest:
        honest.files["a.safetensors"] = data
        card["download_url"] = f"{honest.url}/files/a.safetensors"
        path = AdapterCache(tmp_path / "cache", DownloadConfig(backoff=0.0)).fetch(card)
        assert honest.requests[0]["headers"].get("Range") == f"bytes={kept}-"
    assert path.read_bytes() == data and not part.exists()


def test_download_deadline_also_bounds_waiting_for_the_answer(loopback, tmp_path) -> None:
    """A host that answers 5xx slowly is retried only while the file's budget lasts."""
    def slow_error(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.4)
        send(b'{"error": "busy"}', status=503)(h)

    data = safetensors_bytes()
    sha = hashlib.sha256(data).hexdigest()
    srv = loopback({"/files/b.safetensors": slow_error})
    cfg = DownloadConfig(deadline_s=1.0, max_attempts=50, resume_attempts=1, backoff=0.0, backoff_max=0.0,
                         timeout=(2.0, 2.0))
    started = time.monotonic()
    with pytest.raises(SkipRecord) as info:
        AdapterCache(tmp_path / "cache", cfg).fetch(
            {"download_url": f"{srv.url}/files/b.safetensors", "sha256": sha, "file_name": "b.safetensors"})
    assert info.value.reason == "deadline_exceeded"
    assert time.monotonic() - started < 3.0
    assert 2 <= len(srv.hits) <= 4  # ~1 s / 0.4 s, not the 50 attempts the client would make


# -- 2. body size caps -----------------------------------------------------------------------------

def test_json_body_with_a_content_length_over_the_cap_is_refused_unread_and_not_retried(loopback) -> None:
    body = json.dumps([0] * 5000).encode()
    srv = loopback({"/big": send(body)})
    client = _client(srv.url, max_attempts=3, max_json_bytes=4096)
    with pytest.raises(HttpFailure) as info:
        client.get_json("/big")
    assert info.value.reason == "body_too_large" and not info.value.exhausted
    assert "Content-Length" in info.value.detail
    assert srv.hits == ["/big"]  # the same URL serves the same body: asked once
    assert client.get_json("/big", max_bytes=len(body))[0] == [0] * 5000  # a per-call cap allows it


@pytest.mark.parametrize("shape", ["chunked", "close_delimited"])
def test_json_body_without_a_length_is_counted_while_it_streams(loopback, shape) -> None:
    piece = b"[" + b"0," * 8000 + b"0]"  # 16 KB of valid JSON per chunk
    if shape == "chunked":
        # 64 MB promised in chunks: refused after the cap, long before the end.
        srv = loopback({"/big": chunked(b" " * 16384, 4096)})
    else:
        srv = loopback({"/big": close_delimited(piece * 40)}, protocol="HTTP/1.0")
    client = _client(srv.url, max_attempts=3, max_json_bytes=64 * 1024)
    started = time.monotonic()
    with pytest.raises(HttpFailure) as info:
        client.get_json("/big")
    assert info.value.reason == "body_too_large"
    assert "cap of 65536" in info.value.detail
    assert srv.hits == ["/big"]
    assert time.monotonic() - started < 2.0


def test_get_text_over_the_text_cap_is_refused(loopback) -> None:
    srv = loopback({"/README.md": send(b"# card\n" + b"x" * 300_000, "text/plain; charset=utf-8")})
    client = _client(srv.url, max_attempts=2, max_text_bytes=100_000)
    with pytest.raises(HttpFailure) as info:
        client.get_text("/README.md")
    assert info.value.reason == "body_too_large"
    assert srv.hits == ["/README.md"]
    text, _ = _client(srv.url).get_text("/README.md")  # the default 2 MiB cap lets it through
    assert text.startswith("# card") and len(text) == 300_007


def test_hf_crawl_records_an_oversized_readme_as_a_card_error_and_keeps_the_model(loopback, tmp_path) -> None:
    from stylus_docs.cli import main

    sha = "a" * 40
    listing = json.dumps([{"id": "big/card", "sha": sha, "tags": ["lora"]},
                          {"id": "small/card", "sha": sha, "tags": ["lora"]}]).encode()
    huge = b"---\nlicense: mit\n---\n" + b"y" * (MAX_TEXT_BYTES + 1)  # just over the default 2 MiB cap
    srv = loopback({
        "/api/models": send(listing),
        f"/big/card/resolve/{sha}/README.md": send(huge, "text/plain; charset=utf-8"),
        f"/small/card/resolve/{sha}/README.md": send(b"---\nlicense: mit\n---\nhello", "text/plain"),
    })
    out = tmp_path / "raw"
    rc = main(["crawl", "hf", "--out", str(out), "--api-url", srv.url, "--backoff", "0.001",
               "--max-attempts", "3", "--no-progress", "--quiet"])
    assert rc == 0
    records = {r["item"]["id"]: r for r in iter_chunk_records(out / "hf", "models")}
    assert set(records) == {"big/card", "small/card"}  # the model is written without its card
    assert records["big/card"]["card"] is None and records["big/card"]["card_error"] == "body_too_large"
    assert records["small/card"]["card"].endswith("hello") and records["small/card"]["card_error"] is None
    failures = [(f["stage"], f["id"], f["reason"]) for f in read_failures(out)]
    assert failures == [("card", "big/card", "body_too_large")]
    assert srv.hits.count(f"/big/card/resolve/{sha}/README.md") == 1  # not retried


# -- 3. the image host allow-list -------------------------------------------------------------------

@pytest.mark.parametrize(("url", "hosts", "allowed"), [
    ("https://image.civitai.com/x/y.jpeg", DEFAULT_IMAGE_HOSTS, True),
    ("https://IMAGE.civitai.com./x.jpeg", DEFAULT_IMAGE_HOSTS, True),  # case and a trailing dot
    ("https://image.civitai.com.evil.example/x.jpeg", DEFAULT_IMAGE_HOSTS, False),
    ("https://evil-image.civitai.com/x.jpeg", DEFAULT_IMAGE_HOSTS, False),
    ("https://civitai.com/x.jpeg", DEFAULT_IMAGE_HOSTS, False),
    ("https://huggingface.co/a/b/resolve/main/x.png", DEFAULT_IMAGE_HOSTS, True),
    ("https://us.aws.cdn.hf.co/repos/x", DEFAULT_IMAGE_HOSTS, True),
    ("https://cdn.hf.co/repos/x", DEFAULT_IMAGE_HOSTS, False),  # "*.cdn.hf.co" is below it only
    ("https://evilcdn.hf.co/x", DEFAULT_IMAGE_HOSTS, False),
    ("https://user:pw@image.civitai.com/x.jpeg", DEFAULT_IMAGE_HOSTS, False),  # userinfo refused
    ("https://image.civitai.com@evil.example/x.jpeg", DEFAULT_IMAGE_HOSTS, False),
    ("https://image.civitai.com:8443/x.jpeg", DEFAULT_IMAGE_HOSTS, True),  # a bare host: any port
    ("ftp://image.civitai.com/x.jpeg", DEFAULT_IMAGE_HOSTS, False),
    ("file:///etc/passwd", DEFAULT_IMAGE_HOSTS, False),
    ("http://169.254.169.254/latest/meta-data", DEFAULT_IMAGE_HOSTS, False),
    ("https://image.civitai.com:99999/x", DEFAULT_IMAGE_HOSTS, False),  # not a port
    ("http://127.0.0.1:8080/x.png", ["127.0.0.1:8080"], True),
    ("http://127.0.0.1:8081/x.png", ["127.0.0.1:8080"], False),  # host:port is that port only
    ("http://127.0.0.1/x.png", ["127.0.0.1:8080"], False),
    ("https://example.org/x.png", ["example.org:443"], True),  # the scheme's default port
    ("http://[::1]:8080/x.png", ["[::1]:8080"], True),
    ("http://127.0.0.1:8080/x.png", [], False),
])
def test_host_allowed(url, hosts, allowed) -> None:
    assert host_allowed(url, hosts) is allowed


def test_a_host_off_the_list_is_never_contacted(loopback) -> None:
    other = loopback({"/img.png": send(png_bytes(), "image/png")})
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{other.url}/img.png", allowed_hosts=DEFAULT_IMAGE_HOSTS, max_bytes=1 << 20,
                      deadline_s=2.0)
    assert info.value.reason == "host_not_allowed"
    assert other.hits == []


def test_a_redirect_to_a_host_off_the_list_is_not_followed(loopback) -> None:
    other = loopback({"/img.png": send(png_bytes(), "image/png")})
    allowed = loopback({"/img.png": redirect(f"{other.url}/img.png"),
                        "/here.png": redirect("/img2.png", 307),
                        "/img2.png": send(png_bytes(), "image/png")})
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{allowed.url}/img.png", allowed_hosts=[allowed.netloc], max_bytes=1 << 20,
                      deadline_s=2.0)
    assert info.value.reason == "host_not_allowed" and "redirect target" in info.value.detail
    assert allowed.hits == ["/img.png"] and other.hits == []
    # A redirect on the allowed host is followed (the allow-list, not redirects, is what is refused).
    got = fetch_bounded(f"{allowed.url}/here.png", allowed_hosts=[allowed.netloc], max_bytes=1 << 20,
                        deadline_s=2.0, content_types={"image/png"})
    assert got.body == png_bytes() and got.redirects == [f"{allowed.url}/img2.png"]


def test_too_many_redirects_are_refused(loopback) -> None:
    srv = loopback({f"/r{i}": redirect(f"/r{i + 1}") for i in range(10)})
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{srv.url}/r0", allowed_hosts=[srv.netloc], max_bytes=1 << 20, deadline_s=2.0,
                      max_redirects=3)
    assert info.value.reason == "too_many_redirects"
    assert srv.hits == ["/r0", "/r1", "/r2", "/r3"]  # three redirects followed, the fourth refused


def test_image_size_cap_and_content_type(loopback) -> None:
    srv = loopback({"/big.png": send(b"\x89PNG" + b"0" * 50_000, "image/png"),
                    "/page.png": send(b"<html>login</html>", "text/html")})
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{srv.url}/big.png", allowed_hosts=[srv.netloc], max_bytes=10_000, deadline_s=2.0)
    assert info.value.reason == "body_too_large"
    with pytest.raises(FetchError) as info:
        fetch_bounded(f"{srv.url}/page.png", allowed_hosts=[srv.netloc], max_bytes=10_000, deadline_s=2.0,
                      content_types={"image/png"})
    assert info.value.reason == "bad_content_type"


def test_vlm_image_fetch_obeys_the_allow_list(loopback) -> None:
    from stylus_docs.refine.openai_vlm import VLMConfig, fetch_image, fetch_image_data_url

    img = loopback({"/img.png": send(png_bytes(), "image/png")})
    hop = loopback({"/hop.png": redirect(f"{img.url}/img.png")})
    default = VLMConfig(model="fake-vlm")  # Civitai's CDN and the Hub only
    assert fetch_image(f"{img.url}/img.png", default) == (None, "host_not_allowed")
    assert fetch_image_data_url(f"{img.url}/img.png", default) is None
    assert img.hits == []
    # The configured API host is allowed; a redirect from there to another host is not.
    via_api = VLMConfig(model="fake-vlm", image_api_hosts=(hop.netloc,))
    assert fetch_image(f"{hop.url}/hop.png", via_api) == (None, "host_not_allowed")
    assert hop.hits == ["/hop.png"] and img.hits == []
    allowed = VLMConfig(model="fake-vlm", allowed_image_hosts=(img.netloc,))
    data_url, reason = fetch_image(f"{img.url}/img.png", allowed)
    assert reason is None and data_url.startswith("data:image/png;base64,")
    assert img.hits == ["/img.png"]


def test_vlm_image_fetch_from_a_trickling_host_stops_at_its_deadline(loopback) -> None:
    from stylus_docs.refine.openai_vlm import VLMConfig, fetch_image

    srv = loopback({"/img.png": trickle("image/png", png_bytes()[:8])})
    cfg = VLMConfig(model="fake-vlm", image_api_hosts=(srv.netloc,), image_deadline_s=1.0,
                    image_timeout_s=2.0)
    started = time.monotonic()
    assert fetch_image(f"{srv.url}/img.png", cfg) == (None, "deadline_exceeded")
    assert time.monotonic() - started < 3.0
