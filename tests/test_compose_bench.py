"""scripts/gpu_compose_bench.py runs end to end on the CPU (--tiny) and reports every stage it times."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_compose_bench_tiny(tmp_path: Path) -> None:
    path = ROOT / "scripts" / "gpu_compose_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_compose_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_compose_bench", module)
    spec.loader.exec_module(module)
    argv = ["--tiny", "--reps", "1", "--fillers", "20", "--batches", "1", "--out", str(tmp_path)]
    assert module.main(argv) == 0
    report = json.loads((tmp_path / "gpu_compose_bench.json").read_text())
    # The offline composer put the three topic adapters in their topics (no fixed fallback).
    assert sorted(a for topic in report["composition"] for a in topic) == [
        "civitai:9001@9001", "civitai:9002@9002", "civitai:9003@9003"
    ]  # fmt: skip
    b1 = report["batch1"]
    for key in ("base_before_load_s", "base_after_unload_s", "stylus_generate_fused_s", "fuse_s", "unfuse_s"):
        assert b1[key] > 0, key
    assert b1["overhead_s"] >= report["compose_offline_p50_s"]  # compose is part of the overhead
    md = (tmp_path / "gpu_compose_bench.md").read_text()
    assert md.startswith("<!-- bench:compose-tiny -->") and "Target (issue 6)" not in md
