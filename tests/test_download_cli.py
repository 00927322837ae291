"""``stylus-docs download`` over a real release and a loopback file server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from stylus_docs.cli import main
from tests.download_server import FileServer
from tests.release_fixture import random_unit_vectors, sample_rows, write_release

ROOT = Path(__file__).resolve().parents[1]


def _release(tmp_path: Path, server: FileServer) -> tuple[Path, bytes]:
    data = st_save({"w": torch.arange(16, dtype=torch.float32)})
    server.files["good"] = data
    server.files["evil"] = b"not the promised bytes"
    rows = sample_rows(embed=False)[:3]
    for row, vec in zip(rows, random_unit_vectors(len(rows)), strict=True):
        row["embedding"] = vec.tolist()
    rows[0].update(
        download_url=f"{server.url}/files/good",
        sha256=hashlib.sha256(data).hexdigest().upper(),
        file_name="good.safetensors",
    )
    rows[1].update(
        download_url=f"{server.url}/files/evil",
        sha256=hashlib.sha256(b"promised").hexdigest(),
        file_name="evil.safetensors",
    )
    rows[2].update(download_url=f"{server.url}/files/x", file_name="x.ckpt")
    docs = tmp_path / "docs"
    write_release(docs, rows, shards=1)
    return docs, data


def test_download_command_reports_each_adapter(tmp_path, capsys):
    with FileServer() as server:
        docs, data = _release(tmp_path, server)
        rows = sample_rows(embed=False)[:3]
        rc = main(["download", "--docs", str(docs), "--cache", str(tmp_path / "cache")])
        out = capsys.readouterr().out
        assert rc == 1
        assert f"ok\t{rows[0]['adapter_id']}" in out
        assert f"failed\t{rows[1]['adapter_id']}\tsha256_mismatch" in out
        assert f"failed\t{rows[2]['adapter_id']}\tpickle_format" in out
        assert "1 of 3 adapters" in out
        cached = list((tmp_path / "cache" / "sha256").rglob("*.safetensors"))
        assert [p.read_bytes() for p in cached] == [data]
        # Selecting the good one only: exit 0, served from the cache (no new request).
        n = len(server.requests)
        assert (
            main(
                [
                    "download",
                    "--docs",
                    str(docs),
                    "--cache",
                    str(tmp_path / "cache"),
                    "--adapter-id",
                    rows[0]["adapter_id"],
                ]
            )
            == 0
        )
        assert len(server.requests) == n


def test_download_command_bad_input_is_one_line(tmp_path):
    with FileServer() as server:
        docs, _ = _release(tmp_path, server)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        exe = ROOT / ".venv" / "bin" / "stylus-docs"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "stylus_docs.cli"]
        proc = subprocess.run(
            [*cmd, "download", "--docs", str(docs), "--adapter-id", "civitai:nope@0"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0 and "not in the release" in proc.stderr
        proc = subprocess.run(
            [*cmd, "download", "--docs", str(tmp_path / "missing")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode != 0 and "no release" in proc.stderr
