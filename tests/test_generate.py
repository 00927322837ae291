"""Generation with the tiny random SD pipeline, tiny LoRA files and a hand-made release (CPU)."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import socket
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylus_docs import cli
from stylus_docs.errors import FatalError
from stylus_docs.generate import (
    AdapterStore,
    GenerateSettings,
    StylusGenerator,
    load_pipeline,
    prompt_slug,
)
from stylus_docs.masks import enumerate_masks, sample_masks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_fixture import sample_rows, write_release  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a graffiti of a corgi with a fire dragon"
CORGI, GRAFFITI, DRAGON = "civitai:103@1003", "civitai:104@1004", "civitai:102@1002"
FAST = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu", "--no-cache"]


def _load_tiny_maker():
    spec = importlib.util.spec_from_file_location(
        "make_tiny_models", ROOT / "scripts" / "make_tiny_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _load_tiny_maker().make_tiny_models(tmp_path_factory.mktemp("tiny"))


def _rows(tiny, url_base: str | None = None) -> list[dict]:
    rows = sample_rows()
    by = {r["adapter_id"]: r for r in rows}
    for aid, path in ((CORGI, tiny.lora_diffusers), (GRAFFITI, tiny.lora_kohya), (DRAGON, tiny.lora_broken)):
        by[aid]["sha256"] = tiny.sha256[path.name]
        by[aid]["file_name"] = path.name
        if url_base:
            by[aid]["download_url"] = f"{url_base}/{path.name}"
    return rows


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory):
    """A release whose corgi/graffiti/dragon adapters are the tiny diffusers/Kohya/broken LoRAs."""
    root = tmp_path_factory.mktemp("gen")
    docs = root / "docs"
    write_release(docs, _rows(tiny))
    adapters = root / "adapters"
    adapters.mkdir()
    for path in (tiny.lora_diffusers, tiny.lora_kohya, tiny.lora_broken):
        shutil.copy(path, adapters / f"{tiny.sha256[path.name]}.safetensors")
    return {"root": root, "docs": docs, "adapters": adapters, "pipeline": tiny.pipeline}


def _seed_with_on_and_off() -> int:
    masks = enumerate_masks([1, 1, 0], "one_hot_loras")
    for seed in range(200):
        drawn = sample_masks(masks, 4, seed)
        if ((True,), (True,), ()) in drawn and ((False,), (False,), ()) in drawn:
            return seed
    raise AssertionError("no seed draws both masks")


@pytest.fixture(scope="module")
def run(world):
    """One CLI run: 4 images, one_hot_loras masks, baseline, the broken adapter in the composition."""
    seed = _seed_with_on_and_off()
    out = world["root"] / "out"
    argv = [
        "generate",
        PROMPT,
        "--docs",
        str(world["docs"]),
        "--pipeline",
        str(world["pipeline"]),
        "--out",
        str(out),
        "--num-images",
        "4",
        "--mask",
        "one_hot_loras",
        "--seed",
        str(seed),
        "--baseline",
        "--adapters-dir",
        str(world["adapters"]),
        *FAST,
    ]
    assert cli.main(argv) == 0
    return {"dir": out / prompt_slug(PROMPT), "seed": seed}


def _img(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _sidecars(d: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((d / kind).glob("*.json"))]


def test_sidecar_contents(run, world):
    d, seed = run["dir"], run["seed"]
    cars = _sidecars(d, "stylus")
    assert [c["seed"] for c in cars] == [seed + i for i in range(4)]
    release_id = (world["docs"] / "CURRENT").read_text().strip()
    for c in cars:
        assert (d / c["image"]).is_file()
        assert c["prompt"] == PROMPT and c["steps"] == 2 and c["cfg"] == 6.0
        assert (c["width"], c["height"]) == (64, 64)
        assert c["scheduler"] == "DPM++ 2M Karras" and c["scheduler_class"] == "DPMSolverMultistepScheduler"
        assert (
            c["base_pipeline"]["kind"] == "sd15" and c["base_pipeline"]["class"] == "StableDiffusionPipeline"
        )
        assert c["release"] == release_id and c["composer"] == "offline"
        assert c["negative_prompt"]
        assert {"generate_s", "set_adapters_s", "fuse_s", "load_adapters_s", "compose_s"} <= set(c["timings"])
        # adapters listed = the mask's active bits; weight = 0.8 × 0.8 / active in topic
        active = {
            aid for aid, on in zip((GRAFFITI, CORGI), (c["mask"][0][0], c["mask"][1][0]), strict=True) if on
        }
        assert {a["adapter_id"] for a in c["adapters"]} == active
        for a in c["adapters"]:
            assert a["weight"] == pytest.approx(0.64) and a["sha256"] and a["topic"] in ("graffiti", "corgi")
    base = _sidecars(d, "baseline")
    assert [b["seed"] for b in base] == [seed + i for i in range(4)]
    assert all(b["baseline"] and b["adapters"] == [] and b["mask"] is None for b in base)


def test_failing_adapter_skipped_with_reason(run):
    done = json.loads((run["dir"] / "_DONE.json").read_text())
    skipped = {s["adapter_id"]: s for s in done["skipped_adapters"]}
    assert set(skipped) == {DRAGON}
    assert skipped[DRAGON]["reason"] == "load_failed" and "size mismatch" in skipped[DRAGON]["detail"]
    assert len(done["images"]) == 8
    composition = json.loads((run["dir"] / "composition.json").read_text())
    assert DRAGON in [a["adapter_id"] for t in composition["topics"] for a in t["adapters"]]


def test_adapters_change_the_image_and_all_off_mask_equals_baseline(run):
    d = run["dir"]
    for c in _sidecars(d, "stylus"):
        with_adapters = _img(d / c["image"])
        baseline = _img(d / c["image"].replace("stylus/", "baseline/"))
        diff = np.abs(with_adapters - baseline).mean()
        if c["adapters"]:
            assert diff > 1.0, c["mask"]
        else:  # an all-off mask renders the baseline of that seed (up to batch-size float noise)
            assert np.abs(with_adapters - baseline).max() <= 1


def test_same_seed_same_image_fused_or_not(world, run, tmp_path):
    """A fresh pipeline renders the run's images again (batch 1 instead of 4), and unfused = fused."""
    from stylus_docs.compose import Composer, ComposeSettings

    composer = Composer(world["docs"], ComposeSettings(base_model="SD 1.5"))
    composition = json.loads((run["dir"] / "composition.json").read_text())
    loaded = load_pipeline(str(world["pipeline"]), device="cpu")
    gen = StylusGenerator(loaded, composer.source.cards, AdapterStore(world["adapters"]), composer.build_id)
    common = dict(num_images=4, mask="one_hot_loras", seed=run["seed"], steps=2, width=64, height=64)
    gen.render(PROMPT, composition, GenerateSettings(**common, baseline=True, batch_size=1), tmp_path / "a")
    gen.render(PROMPT, composition, GenerateSettings(**common, fuse=False), tmp_path / "b")
    for p in sorted((run["dir"] / "stylus").glob("*.png")):
        assert np.abs(_img(tmp_path / "a" / "stylus" / p.name) - _img(p)).max() <= 1, p.name
        assert np.abs(_img(tmp_path / "b" / "stylus" / p.name) - _img(p)).max() <= 2, p.name
    # the baseline after adapters were fused and unfused is still the pristine baseline
    for p in sorted((run["dir"] / "baseline").glob("*.png")):
        assert np.abs(_img(tmp_path / "a" / "baseline" / p.name) - _img(p)).max() <= 1, p.name


def test_batch_mode_is_resumable(world, tmp_path, capsys):
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text(
        "id,caption\n1,a corgi on a wall\n2,a graffiti of a dragon\n3,\n4,a corgi in watercolor\n"
    )
    out = tmp_path / "out"
    base = [
        "generate",
        "--prompts",
        str(csv_path),
        "--column",
        "caption",
        "--docs",
        str(world["docs"]),
        "--pipeline",
        str(world["pipeline"]),
        "--out",
        str(out),
        "--num-images",
        "1",
        "--adapters-dir",
        str(world["adapters"]),
        "--no-download",
        *FAST,
    ]
    assert cli.main([*base, "--limit", "2"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["rendered"], first["skipped_done"]) == (2, 0)
    marker = out / prompt_slug("a corgi on a wall") / "_DONE.json"
    stamp = marker.stat().st_mtime_ns
    assert cli.main(base) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["prompts"], second["rendered"], second["skipped_done"]) == (3, 1, 2)
    assert marker.stat().st_mtime_ns == stamp
    # other settings → not "done" any more
    assert cli.main([*base, "--limit", "1", "--debias", "realistic, best quality", "--inject-triggers"]) == 0
    third = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert third["rendered"] == 1
    car = json.loads(next((out / prompt_slug("a corgi on a wall") / "stylus").glob("*.json")).read_text())
    triggers = {CORGI: "corgidog", GRAFFITI: "grffti"}
    expected = ", ".join(["a corgi on a wall", *(triggers[a["adapter_id"]] for a in car["adapters"])])
    assert CORGI in [a["adapter_id"] for a in car["adapters"]]
    assert car["prompt"] == expected + ", realistic, best quality"
    assert car["user_prompt"] == "a corgi on a wall"


def test_adapters_downloaded_on_demand_and_verified(tiny, tmp_path):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tiny.lora_diffusers.parent))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        docs = tmp_path / "docs"
        write_release(docs, _rows(tiny, f"http://127.0.0.1:{server.server_address[1]}"))
        cache = tmp_path / "cache"
        argv = [
            "generate",
            "a corgi",
            "--docs",
            str(docs),
            "--pipeline",
            str(tiny.pipeline),
            "--out",
            str(tmp_path / "out"),
            "--num-images",
            "1",
            "--adapters-dir",
            str(cache),
            *FAST,
        ]
        assert cli.main(argv) == 0
    finally:
        server.shutdown()
        server.server_close()
    sha = tiny.sha256[tiny.lora_diffusers.name]
    assert (cache / "sha256" / sha[:2] / f"{sha}.safetensors").is_file()
    car = json.loads(next((tmp_path / "out").rglob("stylus/*.json")).read_text())
    assert [a["adapter_id"] for a in car["adapters"]] == [CORGI]


def test_composition_file_and_missing_adapter(world, tmp_path, capsys):
    comp = {
        "prompt": "a corgi",
        "release": {"build_id": "x", "docs": "y"},
        "composer": {"name": "llm"},
        "topics": [
            {
                "topic": "corgi",
                "adapters": [
                    {
                        "adapter_id": CORGI,
                        "title": "Welsh Corgi",
                        "category": "animal",
                        "recommended_weight": 1.0,
                        "reason": "r",
                    },
                    {
                        "adapter_id": "civitai:999@999",
                        "title": "gone",
                        "category": "style",
                        "recommended_weight": None,
                        "reason": "r",
                    },
                ],
            }
        ],
        "dropped": [],
        "timings": {},
    }
    path = tmp_path / "comp.json"
    path.write_text(json.dumps(comp))
    argv = [
        "generate",
        "a corgi",
        "--composition",
        str(path),
        "--docs",
        str(world["docs"]),
        "--pipeline",
        str(world["pipeline"]),
        "--out",
        str(tmp_path / "out"),
        "--num-images",
        "1",
        "--adapters-dir",
        str(world["adapters"]),
        "--no-download",
        *FAST,
    ]
    assert cli.main(argv) == 0
    car = json.loads(next((tmp_path / "out").rglob("stylus/*.json")).read_text())
    assert car["adapters"][0]["weight"] == pytest.approx(0.8)  # 1.0 × 0.8 / 1 active
    assert car["skipped_adapters"][0]["reason"] == "not_in_release"


def test_bad_inputs_fail_with_one_line(world, tmp_path, capsys):
    bad = tmp_path / "notapipeline"
    bad.mkdir()
    rc = cli.main(
        [
            "generate",
            "a corgi",
            "--docs",
            str(world["docs"]),
            "--pipeline",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "model_index.json" in err[0]
    rc = cli.main(
        [
            "generate",
            "--docs",
            str(world["docs"]),
            "--pipeline",
            str(world["pipeline"]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc != 0
    with pytest.raises(FatalError):
        GenerateSettings(width=60)


def test_fused_batches_leave_the_base_weights_bit_exact(world, run, tmp_path):
    """After fused renders the UNet and text encoder weights equal the pristine ones exactly: no drift
    from subtracting deltas (the generator restores resident copies instead of pipe.unfuse_lora())."""
    import torch

    from stylus_docs.compose import Composer, ComposeSettings

    composer = Composer(world["docs"], ComposeSettings(base_model="SD 1.5"))
    composition = json.loads((run["dir"] / "composition.json").read_text())
    loaded = load_pipeline(str(world["pipeline"]), device="cpu")
    before = {
        f"{c}.{k}": v.clone()
        for c in ("unet", "text_encoder")
        for k, v in getattr(loaded.pipe, c).state_dict().items()
    }
    gen = StylusGenerator(loaded, composer.source.cards, AdapterStore(world["adapters"]), composer.build_id)
    settings = GenerateSettings(
        num_images=4, mask="one_hot_loras", seed=run["seed"], steps=1, width=64, height=64
    )
    for i in range(3):  # several fuse/restore cycles
        gen.render(PROMPT, composition, settings, tmp_path / str(i))
    assert len(gen._pristine) > 0 and not loaded.pipe.num_fused_loras
    loaded.pipe.unload_lora_weights()  # back to plain modules, so the state-dict keys compare
    for c in ("unet", "text_encoder"):
        for k, v in getattr(loaded.pipe, c).state_dict().items():
            assert torch.equal(v, before[f"{c}.{k}"]), f"{c}.{k}"


def test_generate_local_uses_linked_files_without_downloading(tiny, tmp_path, capsys):
    """`link` a folder holding the tiny LoRA, then `generate --local DIR`: the file is used where it lies.

    The release's download URL points at a port nobody listens on and the adapters cache stays empty, so
    a download attempt would fail the adapter (and leave a cache entry if it somehow succeeded).
    """
    lib = tmp_path / "my-loras"
    lib.mkdir()
    shutil.copy(tiny.lora_diffusers, lib / "corgi-style.safetensors")
    docs = tmp_path / "docs"
    with socket.socket() as s:  # a free port, closed again: connections to it are refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    write_release(docs, _rows(tiny, dead))
    assert cli.main(["link", "--docs", str(docs), str(lib)]) == 0
    cache = tmp_path / "cache"
    capsys.readouterr()
    argv = ["generate", "a corgi", "--docs", str(docs), "--pipeline", str(tiny.pipeline),
            "--out", str(tmp_path / "out"), "--num-images", "1", "--adapters-dir", str(cache),
            "--local", str(lib), *FAST]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["local_adapters_used"] >= 1
    car = json.loads(next((tmp_path / "out").rglob("stylus/*.json")).read_text())
    assert [a["adapter_id"] for a in car["adapters"]] == [CORGI]  # only the linked adapter is composed
    assert not list(cache.rglob("*.safetensors")), "nothing may be downloaded or copied into the cache"
