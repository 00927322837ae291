"""Hostile payloads cost one record each, never the run (issue 10): API items and bodies nested
200,000 deep, lone surrogate escapes and NaN in listings and version bodies, a safetensors header of
100,000 ``[``, and a corrupt ``state.json`` (one line, no traceback).

The fake Civitai and Hub APIs are hand-written loopback servers in the style of
``test_crawl_malformed.py``: the hostile bodies are raw bytes no JSON encoder would produce.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from stylus_docs import safe_json
from stylus_docs.cli import main
from stylus_docs.crawl.snapshot import UnsafeRecord, encode_record, iter_chunk_records, write_chunk
from stylus_docs.crawl.state import CrawlState, read_failures
from stylus_docs.download import AdapterCache, DownloadConfig
from stylus_docs.errors import FatalError, SkipRecord
from stylus_docs.http import HttpClient, HttpFailure, cut_deep_containers
from stylus_docs.safetensors_check import parse_header, validate_safetensors
from tests.download_server import FileServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--backoff", "0.001", "--max-attempts", "3", "--no-progress", "--quiet"]
DEEP = 200_000


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def _model(mid: int, versions: list[int], extra: str = "") -> str:
    """One listing item as raw JSON text (``extra``: more raw members)."""
    vs = ",".join(f'{{"id":{v},"name":"v{v}"}}' for v in versions)
    return f'{{"id":{mid},"name":"model {mid}","type":"LORA","modelVersions":[{vs}]{extra}}}'


CIVITAI_PAGE = (
    '{"items":['
    + ",".join([
        _model(1, [10]),
        _model(2, [20], ',"deep":' + deep_array()),  # nested 200,000 deep
        _model(3, [30], ',"description":"bad \\ud800 surrogate"'),  # a lone surrogate escape
        _model(4, [40], ',"stats":{"rating":NaN}'),  # not JSON, but json.loads takes it
        _model(5, [50, 51, 52]),
    ])
    + '],"metadata":{}}'
).encode()

VERSIONS = {
    10: b'{"id":10,"modelId":1,"name":"v10","files":[]}',
    50: b'{"id":50,"modelId":5,"trainedWords":' + deep_array(100_000).encode() + b"}",
    51: b'{"id":51,"modelId":5,"name":"v51","files":[]}',
    52: b'{"id":52,"modelId":5,"stats":{"rating":Infinity}}',
}


class _QuietServer(ThreadingHTTPServer):
    """Clients here hang up on purpose (a deadline, a cap): that is not a server error worth printing."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Api:
    """A loopback server answering ``routes[path]`` (raw JSON bytes); every path asked is logged."""

    def __init__(self, routes: Callable[[str], bytes | None]) -> None:
        self.hits: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = urlsplit(self.path).path
                api.hits.append(path)
                body = routes(path)
                status = 200 if body is not None else 404
                body = body if body is not None else b'{"error":"not found"}'
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if path.endswith(".md") else "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api() -> Iterator[Callable[[Callable[[str], bytes | None]], Api]]:
    started: list[Api] = []

    def start(routes: Callable[[str], bytes | None]) -> Api:
        started.append(Api(routes))
        return started[-1]

    yield start
    for server in started:
        server.close()


def civitai_routes(path: str) -> bytes | None:
    if path == "/api/v1/models":
        return CIVITAI_PAGE
    if path.startswith("/api/v1/model-versions/"):
        return VERSIONS.get(int(path.rsplit("/", 1)[1]))
    if path == "/api/v1/images":
        return b'{"items":[],"metadata":{}}'
    return None


def _raw_lines(directory: Path, prefix: str) -> list[bytes]:
    lines = []
    for chunk in sorted(directory.glob(f"{prefix}-*.jsonl.gz")):
        lines += gzip.decompress(chunk.read_bytes()).splitlines()
    return lines


# -- 4. hostile API pages in a crawl ---------------------------------------------------------------

def test_hostile_civitai_items_and_version_bodies_are_one_failed_record_each(api, tmp_path) -> None:
    server = api(civitai_routes)
    out = tmp_path / "raw"
    rc = main(["crawl", "civitai", "--out", str(out), "--api-url", server.url, *FAST])
    assert rc == 0  # the crawl is complete: failed records are reported, not fatal
    assert sorted(r["id"] for r in iter_chunk_records(out / "civitai", "models")) == [1, 5]
    assert sorted(r["id"] for r in iter_chunk_records(out / "civitai", "versions")) == [10, 51]
    failures = sorted((f["stage"], f["id"], f["reason"]) for f in read_failures(out))
    assert failures == [
        ("enums", None, "http_404"),  # this fake API has no /api/v1/enums: recorded, not fatal
        ("model", 2, "too_deep"),
        ("model", 3, "invalid_unicode"),
        ("model", 4, "non_finite_number"),
        ("version", 50, "too_deep"),
        ("version", 52, "non_finite_number"),
    ]
    # A hostile body is what the server sends every time: asked once, not retried.
    assert server.hits.count("/api/v1/model-versions/50") == 1
    assert server.hits.count("/api/v1/model-versions/52") == 1
    assert server.hits.count("/api/v1/models") == 1
    # Every stored line reads back through the build's strict parser.
    for prefix in ("models", "versions"):
        for line in _raw_lines(out / "civitai", prefix):
            safe_json.loads(line)
    summary = json.loads((out / "civitai" / "summary.json").read_text())
    assert summary["complete"] and summary["failed_records"] == 6


def test_hostile_hub_listing_items_are_one_failed_record_each(api, tmp_path) -> None:
    sha = "b" * 40
    listing = (
        f'[{{"id":"ok/one","sha":"{sha}"}},'
        f'{{"id":"deep/two","sha":"{sha}","cardData":{deep_array()}}},'
        f'{{"id":"nan/three","sha":"{sha}","downloads":NaN}},'
        f'{{"id":"uni/four","sha":"{sha}","pipeline_tag":"\\udfff"}},'
        f'{{"id":"ok/five","sha":"{sha}"}}]'
    ).encode()
    server = api(lambda path: listing if path == "/api/models"
                 else b"---\nlicense: mit\n---\ncard" if path.endswith("/README.md") else None)
    out = tmp_path / "raw"
    assert main(["crawl", "hf", "--out", str(out), "--api-url", server.url, *FAST]) == 0
    assert sorted(r["item"]["id"] for r in iter_chunk_records(out / "hf", "models")) == ["ok/five", "ok/one"]
    failures = sorted((f["stage"], f["id"], f["reason"]) for f in read_failures(out))
    assert failures == [("model", "deep/two", "too_deep"), ("model", "nan/three", "non_finite_number"),
                        ("model", "uni/four", "invalid_unicode")]
    assert server.hits.count("/api/models") == 1
    for line in _raw_lines(out / "hf", "models"):
        safe_json.loads(line)


def test_lenient_listing_parse_keeps_the_page_and_strict_parse_refuses_the_body(api) -> None:
    server = api(civitai_routes)
    client = HttpClient(server.url, max_attempts=3, backoff=0.0)
    body, _ = client.get_json("/api/v1/models", strict=False)
    assert [item["id"] for item in body["items"]] == [1, 2, 3, 4, 5]
    assert [safe_json.find_problem(i) and safe_json.find_problem(i)[0] for i in body["items"]] == [
        None, "too_deep", "invalid_unicode", "non_finite_number", None]
    with pytest.raises(HttpFailure) as info:
        client.get_json("/api/v1/model-versions/50")
    assert info.value.reason == "too_deep" and not info.value.exhausted
    assert server.hits.count("/api/v1/model-versions/50") == 1


def test_cut_deep_containers_only_touches_what_is_too_deep() -> None:
    shallow = b'{"a":[1,{"b":"x]}[{\\"y"}],"c":{}}'
    assert cut_deep_containers(shallow) == shallow  # brackets inside strings are not structure
    cut = cut_deep_containers(b'{"a":' + deep_array(5000).encode() + b',"b":{"c":' + b'{"d":' * 3000
                              + b"1" + b"}" * 3001 + b"}")
    doc = json.loads(cut)
    assert safe_json.find_problem(doc)[0] == "too_deep"
    assert cut_deep_containers(b"[[[") is None and cut_deep_containers(b"]") is None


def test_snapshot_writer_refuses_what_would_not_read_back(tmp_path) -> None:
    for record, reason in (({"name": "\ud800"}, "invalid_unicode"), ({"\udc00": 1}, "invalid_unicode"),
                           ({"w": float("nan")}, "non_finite_number"), ([float("inf")], "non_finite_number")):
        with pytest.raises(UnsafeRecord) as info:
            encode_record(record)
        assert info.value.reason == reason
    with pytest.raises(UnsafeRecord):
        write_chunk(tmp_path, "models", [{"id": 1}, {"id": 2, "name": "\ud800"}])
    assert list(tmp_path.iterdir()) == []  # no chunk, no temporary file
    assert encode_record({"id": 1, "name": "ünïcode ✓"}) == '{"id":1,"name":"ünïcode ✓"}\n'.encode()


# -- 5. safetensors headers --------------------------------------------------------------------------

def _deep_safetensors(depth: int = 100_000) -> bytes:
    header = b'{"w":' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(header)) + header + b"\0" * 16


def test_download_of_a_deeply_nested_safetensors_header_is_one_failed_record(tmp_path) -> None:
    data = _deep_safetensors()
    sha = hashlib.sha256(data).hexdigest()
    cache = AdapterCache(tmp_path / "cache", DownloadConfig(backoff=0.0, backoff_max=0.0))
    with FileServer() as files:
        files.files["deep.safetensors"] = data
        with pytest.raises(SkipRecord) as info:
            cache.fetch({"adapter_id": "civitai:9@9", "download_url": f"{files.url}/files/deep.safetensors",
                         "sha256": sha, "file_name": "deep.safetensors"})
    assert info.value.reason == "bad_safetensors_header"
    assert "too_deep" in info.value.detail
    assert cache.lookup(sha) is None
    assert list((tmp_path / "cache").rglob("*.part")) == []  # the refused file is not kept for resume
    assert list((tmp_path / "cache").rglob("*.safetensors")) == []


def test_validate_safetensors_refuses_hostile_headers_without_recursion_error(tmp_path) -> None:
    path = tmp_path / "deep.safetensors"
    path.write_bytes(_deep_safetensors())
    with pytest.raises(SkipRecord) as info:
        validate_safetensors(path)
    assert info.value.reason == "bad_safetensors_header" and "too_deep" in str(info.value)
    for raw, why in (
        (b'{"__metadata__":{"a":"\\ud800"}}', "invalid_unicode"),
        (b'{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', "non_finite_number"),
        (b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e999}}', "non_finite_number"),
    ):
        with pytest.raises(SkipRecord) as info:
            parse_header(raw, data_bytes=4)
        assert info.value.reason == "bad_safetensors_header" and why in str(info.value), raw
    ok = parse_header(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', data_bytes=4)
    assert ok is not None


# -- 6. a corrupt state.json ---------------------------------------------------------------------------

CORRUPT_STATES = {
    "garbage": b"\x00\xff\xfe garbage \x80",
    "truncated": b'{"version": 1, "fingerprint": null, "partitions": {"type=*|base=*": {"cur',
    "a_list": b"[1, 2, 3]",
    "partitions_string": b'{"version": 1, "fingerprint": null, "partitions": "x"}',
    "partition_not_object": b'{"version": 1, "partitions": {"p": 5}}',
    "cursor_wrong_type": b'{"version": 1, "partitions": {"p": {"cursor": {"a": 1}}}}',
    "nan": b'{"version": 1, "runs": NaN, "partitions": {}}',
    "deep": b'{"version": 1, "x": ' + deep_array(100_000).encode() + b"}",
    "future_version": b'{"version": 99, "partitions": {}}',
}


@pytest.mark.parametrize("name", sorted(CORRUPT_STATES))
def test_corrupt_state_json_is_one_fatal_line(name, tmp_path, capsys) -> None:
    out = tmp_path / "raw"
    state = out / "civitai" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(CORRUPT_STATES[name])
    with pytest.raises(FatalError) as info:
        CrawlState(out / "civitai").load()
    assert str(state) in str(info.value) and "\n" not in str(info.value)
    # Through the CLI: exit status 2, one line on stderr, and no request made (port 9 is closed).
    rc = main(["crawl", "civitai", "--out", str(out), "--api-url", "http://127.0.0.1:9", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and str(state) in err[0] and "unusable crawl state" in err[0], err
    assert state.read_bytes() == CORRUPT_STATES[name]  # left for the user to inspect


def test_corrupt_state_json_through_the_console_script_prints_no_traceback(tmp_path) -> None:
    out = tmp_path / "raw"
    state = out / "civitai" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(CORRUPT_STATES["truncated"])
    env = {k: v for k, v in os.environ.items() if k not in ("CIVITAI_API_TOKEN", "HF_TOKEN")}
    proc = subprocess.run(
        [sys.executable, "-m", "stylus_docs.cli", "crawl", "civitai", "--out", str(out),
         "--api-url", "http://127.0.0.1:9", "--no-progress", "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(state) in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "raw",
    [b'{"a":"\xed\xa0\x80"}', '["\\ud800"]'.encode("utf-16-le")],
    ids=["utf8-encoded-surrogate", "utf16-lone-surrogate"],
)
def test_safe_json_refuses_surrogates_in_bytes(raw: bytes) -> None:
    from stylus_docs import safe_json

    with pytest.raises(safe_json.UnsafeJSON):
        safe_json.loads(raw)
