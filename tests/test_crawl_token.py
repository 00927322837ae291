"""The API token never reaches a file or a log line, and a rejected token is a one-line fatal error."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

from stylus_docs.cli import main

TOKEN = "sekrit-TOKEN-4f1d2c3b-do-not-leak"


def _all_text(root: Path) -> str:
    parts = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            parts.append(data.decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_token_never_written_or_logged(replay_server, tmp_path, monkeypatch, caplog, capsys) -> None:
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    url = replay_server(require_token=TOKEN, fault_rate=0.1, seed=5, retry_after=0)
    flags = ["--api-url", url, "--backoff", "0.01", "--no-progress"]
    assert main(["-vv", "crawl", "civitai", "--out", str(tmp_path / "c"), *flags]) == 0
    assert main(["-vv", "crawl", "hf", "--out", str(tmp_path / "h"), *flags]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "c" / "civitai").is_dir() and (tmp_path / "h" / "hf").is_dir()
    written = _all_text(tmp_path)
    assert '"id"' in written  # the files were read (not just empty)
    for text in (written, caplog.text, captured.out, captured.err):
        assert TOKEN not in text


def test_wrong_token_is_fatal_in_one_line(replay_server, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CIVITAI_API_TOKEN", "wrong-" + TOKEN[::-1])
    url = replay_server(require_token=TOKEN)
    rc = main(["crawl", "civitai", "--out", str(tmp_path / "c"), "--api-url", url, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert err[-1].startswith("stylus-docs crawl: error: HTTP 401") and TOKEN[::-1] not in err[-1]
