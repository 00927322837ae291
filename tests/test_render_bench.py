"""The prepared GPU benchmark script runs end to end on the CPU with --tiny (no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_render_bench_tiny_runs_every_mode(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "gpu_render_bench", ROOT / "scripts" / "gpu_render_bench.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_render_bench", module)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    rc = module.main(["--tiny", "--adapters", "2", "--prompts", "1", "--batch", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"fused", "unfused", "no_share", "hotswap", "merge"}
    for name, mode in report["modes"].items():
        assert "error" not in mode, (name, mode.get("error"))
    for name in ("fused", "unfused", "no_share"):
        assert report["modes"][name]["statuses"] == ["ok", "ok"]
        assert report["modes"][name]["adapters_per_hour"] > 0
    assert report["modes"]["hotswap"]["hotswap_load_s_median"] > 0
    assert report["modes"]["merge"]["merge_s_median"] > 0
