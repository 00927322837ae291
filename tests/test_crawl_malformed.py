"""Malformed API input ends as recorded failures, never as a crash."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from stylus_docs.cli import main
from stylus_docs.crawl.snapshot import iter_chunk_records
from stylus_docs.crawl.state import read_failures

PAGE1 = {
    "items": [
        {"name": "no id at all"},
        {"id": "abc", "modelVersions": []},
        5,
        {"id": 10, "name": "good", "modelVersions": [{"id": 100}, {"id": "x"}]},
        {"id": 11, "modelVersions": "oops"},
        {"id": 12, "name": "good too", "modelVersions": [{"id": 120}]},
    ],
    "metadata": {"nextCursor": "c2"},
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlsplit(self.path)
        qs = parse_qs(url.query)
        if url.path == "/api/v1/models":
            if "cursor" not in qs:
                return self._send(200, json.dumps(PAGE1).encode())
            return self._send(200, json.dumps([{"id": 13}]).encode())  # wrong type: a list, not {items}
        if url.path == "/api/v1/model-versions/100":
            return self._send(200, b"this is not json")
        if url.path == "/api/v1/model-versions/120":
            return self._send(200, json.dumps({"id": 120, "modelId": 12}).encode())
        if url.path == "/api/v1/images":
            return self._send(200, json.dumps({"items": "nope"}).encode())
        return self._send(404, b'{"error": "not found"}')


@pytest.fixture
def bad_server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_malformed_items_pages_and_bodies_are_recorded(bad_server, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["crawl", "civitai", "--out", str(out), "--api-url", bad_server, "--backoff", "0.001",
               "--max-attempts", "2", "--no-progress"])
    assert rc == 1  # one partition could not be finished: reported, resumable
    assert "crawl incomplete" in capsys.readouterr().err
    models = [r["id"] for r in iter_chunk_records(out / "civitai", "models")]
    assert sorted(models) == [10, 12]
    versions = list(iter_chunk_records(out / "civitai", "versions"))
    assert [v["id"] for v in versions] == [120] and versions[0]["_images"] == []
    got = sorted((f["stage"], f["reason"]) for f in read_failures(out))
    assert got == sorted([
        ("model", "invalid_item"), ("model", "invalid_item"), ("model", "invalid_item"),
        ("model", "invalid_item"),
        ("version", "invalid_item"),  # version entry {"id": "x"}
        ("version", "invalid_json"),  # version 100: retries spent
        ("images", "invalid_page"),   # version 120's images body has the wrong shape
        ("listing", "invalid_page"),  # page 2 is a list
        ("enums", "http_404"),        # no /api/v1/enums here: recorded, not fatal
    ])
    summary = json.loads((out / "civitai" / "summary.json").read_text())
    assert summary["failed_records"] == 9 and not summary["complete"]
    assert summary["enums"] == "failed" and not (out / "civitai" / "enums.json").exists()
    assert summary["retries_by_reason"] == {"invalid_json": 1}
    state = json.loads((out / "civitai" / "state.json").read_text())
    assert state["partitions"]["type=*|base=*"]["cursor"] == "c2"  # resumes at the broken page
