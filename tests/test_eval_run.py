"""``eval run``: Stylus and the paper's baselines on the tiny SD pipeline, scored with tiny random CLIP and
Inception models (CPU); checks the table, the CSV, the Pareto plot and the shared seeds."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from stylus_docs import cli
from stylus_docs.generate import prompt_slug

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_models import make_clip, make_inception, write_images  # noqa: E402
from release_fixture import sample_rows, write_release  # noqa: E402
from tiny_models import get_tiny_models  # noqa: E402

CORGI, GRAFFITI, DRAGON = "civitai:103@1003", "civitai:104@1004", "civitai:102@1002"
PROMPT = "a graffiti of a corgi"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    tiny = get_tiny_models(root / "tiny")
    rows = sample_rows()
    by = {r["adapter_id"]: r for r in rows}
    adapters = root / "adapters"
    adapters.mkdir()
    for aid, path in ((CORGI, tiny.lora_diffusers), (GRAFFITI, tiny.lora_kohya), (DRAGON, tiny.lora_broken)):
        by[aid]["sha256"] = tiny.sha256[path.name]
        by[aid]["file_name"] = path.name
        shutil.copy(path, adapters / f"{tiny.sha256[path.name]}.safetensors")
    write_release(root / "docs", rows)
    cfg, weights, _name = make_clip(root / "clip")
    prompts = root / "prompts.csv"
    prompts.write_text(f"caption\n{PROMPT}\n")
    write_images(root / "real", 3, seed=5)
    return {
        "root": root,
        "docs": root / "docs",
        "pipeline": tiny.pipeline,
        "adapters": adapters,
        "clip_cfg": cfg,
        "clip_weights": weights,
        "inception": make_inception(root / "inception.safetensors"),
        "prompts": prompts,
        "real": root / "real",
    }


def _argv(world, out, *more):
    return [
        "eval",
        "run",
        "--prompts",
        str(world["prompts"]),
        "--docs",
        str(world["docs"]),
        "--pipeline",
        str(world["pipeline"]),
        "--real",
        str(world["real"]),
        "--out",
        str(out),
        "--methods",
        "stylus,retriever,random,base",
        "--cfg",
        "3,6",
        "--num-images",
        "2",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--device",
        "cpu",
        "--no-cache",
        "--adapters-dir",
        str(world["adapters"]),
        "--no-download",
        "--clip-config",
        str(world["clip_cfg"]),
        "--clip-weights",
        str(world["clip_weights"]),
        "--inception-weights",
        str(world["inception"]),
        "--inception-size",
        "96",
        "--features-cache",
        str(world["root"] / "features"),
        "--kid-subsets",
        "3",
        "--format",
        "json",
        *more,
    ]


@pytest.fixture(scope="module")
def run(world):
    out = world["root"] / "out"
    assert cli.main(_argv(world, out)) == 0
    return out


def test_table_csv_and_pareto_plot(run):
    doc = json.loads((run / "eval.json").read_text())
    assert doc["format"] == "stylus-eval-run.v1"
    assert doc["pareto"] == {"png": "pareto.png", "svg": "pareto.svg"}
    table = doc["table"]
    assert [(r["method"], r["cfg"]) for r in table] == [
        (m, c) for m in ("stylus", "retriever", "random", "base") for c in (3.0, 6.0)
    ]
    for r in table:
        assert r["n_images"] == 2 and r["n_prompts"] == 1
        assert 0 <= r["clip"] <= 100 and r["fid"] > 0
    with (run / "eval.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 * 5 == len(doc["rows"])  # one row per (method, cfg, metric)
    assert {r["metric"] for r in rows} == {"clip", "fid", "kid", "kid_std", "n_images"}
    stylus3 = {r["metric"]: float(r["value"]) for r in rows if (r["method"], r["cfg"]) == ("stylus", "3")}
    assert stylus3["fid"] == pytest.approx(table[0]["fid"]) and stylus3["clip"] == pytest.approx(
        table[0]["clip"]
    )
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (run / "pareto.svg").read_text()
    assert "<svg" in svg and "FID" in svg and "retriever" in svg


def test_methods_use_their_adapters_and_the_same_seeds(run):
    slug = prompt_slug(PROMPT)
    comps = {
        m: json.loads((run / "images" / m / "cfg3" / slug / "composition.json").read_text())
        for m in ("stylus", "retriever", "random", "base")
    }
    assert comps["base"]["topics"] == []
    assert len(comps["retriever"]["topics"]) == 3
    assert all(len(t["adapters"]) == 1 for t in comps["retriever"]["topics"])
    assert len({a["adapter_id"] for t in comps["random"]["topics"] for a in t["adapters"]}) == 3
    assert {a["adapter_id"] for t in comps["stylus"]["topics"] for a in t["adapters"]} & {CORGI, GRAFFITI}
    # Same composition for every cfg; the random draw is seeded (same at cfg 6).
    again = json.loads((run / "images" / "random" / "cfg6" / slug / "composition.json").read_text())
    assert again["topics"] == comps["random"]["topics"]
    seeds = {
        m: sorted(
            json.loads(p.read_text())["seed"]
            for p in (run / "images" / m / "cfg3" / slug / "stylus").glob("*.json")
        )
        for m in comps
    }
    assert set(map(tuple, seeds.values())) == {(0, 1)}
    cfgs = {json.loads(p.read_text())["cfg"] for p in (run / "images" / "base").rglob("stylus/*.json")}
    assert cfgs == {3.0, 6.0}


def test_rerun_renders_nothing_and_gives_the_same_table(world, run, capsys):
    before = json.loads((run / "eval.json").read_text())["table"]
    capsys.readouterr()
    assert cli.main(_argv(world, run)) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(g["rendered"] == 0 for g in out["generated"].values())
    assert [(r["method"], r["cfg"]) for r in out["table"]] == [(r["method"], r["cfg"]) for r in before]
    for new, old in zip(out["table"], before, strict=True):
        assert (new["clip"], new["fid"], new["kid"]) == pytest.approx((old["clip"], old["fid"], old["kid"]))


def test_missing_weights_fail_before_generating(world, tmp_path, capsys):
    argv = _argv(world, tmp_path / "out")
    i = argv.index("--inception-weights")
    argv[i + 1] = str(tmp_path / "missing.safetensors")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights" in err
    assert not (tmp_path / "out" / "images").exists()
    bad = _argv(world, tmp_path / "out2")
    bad[bad.index("--methods") + 1] = "stylus,reranker"
    assert cli.main(bad) == 2
    assert "reranker" in capsys.readouterr().err
