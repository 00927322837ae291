"""A wheel built from the repository carries everything a build needs (schemas, prompts, pipelines).

Builds the wheel with pip (no network: ``--no-build-isolation``), installs it with ``--no-deps`` into a
directory of its own and runs ``stylus-docs build`` on the bundled sample from a directory outside the
checkout, with that install first on ``sys.path`` — so the package, its schemas and its prompts all come
from the wheel, not from the repository.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from build_fixtures import sample_snapshot

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_install_builds_the_sample(tmp_path: Path) -> None:
    if not (SAMPLE / "civitai" / "models.jsonl").exists():
        pytest.skip("bundled sample missing")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True
    )
    (wheel,) = glob.glob(str(wheels / "*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), wheel], check=True)
    assert (site / "stylus_docs" / "_schemas" / "adapters.v1.json").is_file()
    assert not (site / "stylus_docs" / "_schemas").is_symlink()

    raw = sample_snapshot(tmp_path / "raw", SAMPLE)
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    env.pop("STYLUS_DOCS_SCHEMA_DIR", None)
    probe = "import stylus_docs.schemas as s, pipelines; print(s.schema_dir()); print(pipelines.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    assert all(w.startswith(str(site)) for w in where), where
    docs = tmp_path / "docs"
    cmd = [sys.executable, "-m", "stylus_docs.cli", "build", "--raw", str(raw), "--out", str(docs)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "adapters written" in proc.stdout
    assert (docs / "CURRENT").is_file()
