"""Releases and crawl snapshots on object storage: an S3-compatible server on loopback (moto's server
mode, started here), the real pyarrow S3 file system, DuckDB's httpfs extension and the real CLI.

What is checked: the sample crawled to and built from ``s3://``, then queried, SQL-ed, composed and
downloaded from ``s3://``; DuckDB reading the published shards in place; a reader looping during a
publish never sees half a build; refused credentials and an unreachable endpoint are one line, exit 2.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stylus_docs import release, storage
from stylus_docs.errors import FatalError
from tests.release_fixture import write_release

pytest.importorskip("moto.server")

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-never-printed-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: Any) -> str:
    """A fresh bucket on the loopback store, the standard AWS variables pointing at it; its URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("STYLUS_DOCS_CACHE", str(tmp_path / "cache"))
    bucket = "b" + request.node.name.replace("_", "-")[:50].lower().strip("-")
    import pyarrow.fs as pafs

    admin = pafs.S3FileSystem(endpoint_override=s3_server.split("//", 1)[1], scheme="http",
                              access_key="testing", secret_key=SECRET, region="us-east-1",
                              allow_bucket_creation=True)  # fmt: skip
    admin.create_dir(bucket)
    return f"s3://{bucket}"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stylus_docs.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)  # fmt: skip


def test_crawl_build_and_read_a_release_on_s3(s3: str, replay_server: Any) -> None:
    base_url = replay_server(data_dir=ROOT / "data" / "sample")
    raw, docs = f"{s3}/raw", f"{s3}/docs"
    for source in ("civitai", "hf"):
        done = _cli("crawl", source, "--out", raw, "--api-url", base_url, "--quiet", "--no-progress")
        assert done.returncode == 0, done.stderr
    objects = storage.list_files(raw)
    assert "civitai/state.json" in objects and "hf/summary.json" in objects
    assert any(o.startswith("civitai/models-") for o in objects)

    built = _cli("build", "--raw", raw, "--out", docs, "--no-progress")
    assert built.returncode == 0, built.stderr
    build_id = storage.read_bytes(f"{docs}/CURRENT").decode().strip()
    manifest = json.loads(storage.read_bytes(f"{docs}/builds/{build_id}/manifest.json"))
    published = set(storage.list_files(f"{docs}/builds/{build_id}"))
    assert {e["path"] for e in manifest["files"]} | {"manifest.json"} <= published
    assert manifest["counts"]["written"] > 100

    found = _cli("query", "a graffiti of a corgi on the wall", "--docs", docs, "-k", "5", "--format", "json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 5 and all(h["adapter_id"] for h in hits)

    counted = _cli("sql", "SELECT count(*) AS n FROM adapters", "--docs", docs, "--format", "json")
    assert counted.returncode == 0, counted.stderr
    assert str(manifest["counts"]["written"]) in counted.stdout

    composed = _cli("compose", "a watercolor painting of a fox", "--docs", docs, "--format", "json")
    assert composed.returncode == 0, composed.stderr
    assert json.loads(composed.stdout)["prompt"]

    fetched = _cli("download", "--docs", docs, "--limit", "0")
    assert fetched.returncode == 0, fetched.stderr
    assert "0 of 0 adapters" in fetched.stdout

    # The release read back through the mirror is the one published: same files, same hashes.
    local = release.resolve_build(docs)
    assert release.load_manifest(local)["files"] == manifest["files"]
    assert release.verify_files(local, manifest) == []


def test_duckdb_httpfs_reads_the_published_shards_in_place(s3: str, tmp_path: Path) -> None:
    local = write_release(tmp_path / "docs")
    manifest = release.load_manifest(local)
    storage.publish_build(tmp_path / "docs", manifest["build_id"], f"{s3}/docs")
    con = storage.duckdb_connect()
    shards = f"{s3}/docs/builds/{manifest['build_id']}/adapters/*.parquet"
    (n,) = con.execute(f"SELECT count(*) FROM read_parquet('{shards}')").fetchone()
    rows = sum(e["rows"] for e in manifest["files"] if e["table"] == "adapters")
    assert n == rows > 0
    con.close()


def _second_build(docs: Path, first: str, second: str) -> None:
    """A copy of build ``first`` under the id ``second`` (its manifest says so)."""
    src, dst = release.build_path(docs, first), release.build_path(docs, second)
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["build_id"] = second
    (dst / "manifest.json").write_text(json.dumps(manifest))


def test_a_reader_never_sees_half_a_build_during_a_publish(s3: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    first = release.load_manifest(write_release(docs))["build_id"]
    second = "20991231T000000Z-abcdef"
    _second_build(docs, first, second)
    url = f"{s3}/docs"
    storage.publish_build(docs, first, url)

    seen: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def read(i: int) -> str:
        cache = tmp_path / f"reader-{i}"  # a fresh mirror each time: every file fetched again
        os.environ["STYLUS_DOCS_CACHE"] = str(cache)
        try:
            build = release.resolve_build(url)
            manifest = release.load_manifest(build)
            assert release.verify_files(build, manifest) == []
            return str(manifest["build_id"])
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def reader() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                seen.append(read(i))
            except (FatalError, AssertionError) as exc:
                errors.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(8):  # publish the second build again and again while the reader loops
            storage.publish_build(docs, second, url)
            storage.write_bytes(f"{url}/CURRENT", (first + "\n").encode())
        storage.publish_build(docs, second, url)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert errors == []
    assert len(seen) >= 4 and set(seen) <= {first, second}
    assert read(0) == second


class _Refusing(http.server.BaseHTTPRequestHandler):
    """An S3 stand-in that refuses every key, as S3 does a wrong access key."""

    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
            b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>")

    def _refuse(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _refuse

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_store() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", [
    ["query", "a corgi", "--docs", "s3://bucket/docs"],
    ["sql", "SELECT 1", "--docs", "s3://bucket/docs"],
    ["build", "--raw", "s3://bucket/raw", "--out", "s3://bucket/docs", "--no-progress"],
])  # fmt: skip
def test_refused_credentials_are_one_line_exit_2(command: list[str], refusing_store: str,
                                                  tmp_path: Path) -> None:  # fmt: skip
    env = {"AWS_ENDPOINT_URL": refusing_store, "AWS_ACCESS_KEY_ID": "AKIAWRONG",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "STYLUS_DOCS_CACHE": str(tmp_path / "cache")}  # fmt: skip
    done = _cli(*command, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "credentials refused" in lines[0] and "s3://bucket" in lines[0]
    assert SECRET not in done.stderr + done.stdout


def test_an_unreachable_endpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "STYLUS_DOCS_CACHE": str(tmp_path / "cache")}  # fmt: skip
    done = _cli("query", "a corgi", "--docs", "s3://bucket/docs", env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "endpoint unreachable" in lines[0], done.stderr
    assert SECRET not in done.stderr


def test_a_malformed_endpoint_or_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "localhost-without-scheme")
    with pytest.raises(FatalError, match="AWS_ENDPOINT_URL must be a URL"):
        storage.filesystem("s3://bucket/x")
    with pytest.raises(FatalError, match="needs a bucket"):
        storage.filesystem("s3:///x")
