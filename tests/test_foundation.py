"""Secrets redaction, atomic writes, runner selection and the CLI's error contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stylus_docs import atomic, cli
from stylus_docs.beam_options import DEFAULT_RUNNER, make_pipeline_options
from stylus_docs.secrets import redact, strip_token_params


def test_strip_token_params_keeps_other_params() -> None:
    url = "https://civitai.com/api/download/models/1?type=Model&token=sekret123&format=SafeTensor"
    assert strip_token_params(url) == "https://civitai.com/api/download/models/1?type=Model&format=SafeTensor"
    assert strip_token_params("https://x/y") == "https://x/y"


def test_redact_env_secret_bearer_and_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVITAI_API_TOKEN", "tok-ABCDEF-999")
    text = "GET https://h/a?token=zzz failed; Authorization: Bearer abc.def; echoed tok-ABCDEF-999"
    out = redact(text)
    assert "tok-ABCDEF-999" not in out and "zzz" not in out and "abc.def" not in out
    assert out.count("***") == 3


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "w") as handle:
        handle.write("new but unfinished")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_default_runner_is_in_process() -> None:
    opts = make_pipeline_options([]).get_all_options()
    assert opts["runner"] == DEFAULT_RUNNER
    assert make_pipeline_options(["--runner", "direct"]).get_all_options()["runner"] == DEFAULT_RUNNER
    assert make_pipeline_options(["--runner=DataflowRunner"]).get_all_options()["runner"] == "DataflowRunner"


def test_cli_without_command_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2


def test_cli_fatal_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stylus_docs.cli", "sql", "SELECT 1", "--docs", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stylus-docs sql: error:"), proc.stderr


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "shard.bin"
    atomic.atomic_write_bytes(target, b"x")
    assert target.stat().st_mode & 0o777 == atomic.shared_file_mode()
    assert atomic.shared_file_mode() & 0o044, "published files must be readable by others (normal umask)"
