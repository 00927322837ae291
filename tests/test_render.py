"""Render stage on the tiny random pipeline (CPU): verdicts, images with/without adapters, Beam wiring.

Adapter files are served by a loopback HTTP server, so every render goes through the real download
cache. Images are 64×64, 2 steps, 2 probe prompts per adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylus_docs.download import DownloadConfig
from stylus_docs.errors import FatalError
from stylus_docs.render import RenderConfig
from stylus_docs.render.prompts import (
    adapter_weight,
    base_model_family,
    clean_prompt,
    image_relpath,
    probe_prompts,
)
from tests.download_server import FileServer
from tests.tiny_models import tiny_models  # noqa: F401 - session fixture

PROMPTS = ["a cat sitting on a chair, sks style <lora:thing:0.7>", "a red car in the rain, sks style"]


@pytest.fixture(scope="module")
def lora_server(tiny_models):  # noqa: F811
    with FileServer() as server:
        for path in (tiny_models.lora_diffusers, tiny_models.lora_kohya, tiny_models.lora_broken):
            server.files[path.name] = path.read_bytes()
        yield server


def _card(tiny_models, server, kind: str, **extra) -> dict:  # noqa: F811
    name = f"tiny-{kind}.safetensors"
    card = {
        "adapter_id": f"civitai:{kind}@1",
        "title": f"Tiny {kind}",
        "example_prompts": PROMPTS,
        "trigger_words": ["sks style"],
        "recommended_weight": 0.9,
        "download_url": f"{server.url}/files/{name}",
        "sha256": tiny_models.sha256[name].upper(),
        "file_name": name,
        "base_model": "SD 1.5",
    }
    card.update(extra)
    return card


def _config(tiny_models, root: Path, **kw) -> RenderConfig:  # noqa: F811
    base = dict(
        pipeline=str(tiny_models.pipeline),
        out_dir=str(root / "build"),
        cache_dir=str(root / "cache"),
        width=64,
        height=64,
        steps=2,
        prompts_per_adapter=2,
        batch_size=2,
        download=DownloadConfig(backoff=0.0, backoff_max=0.0, max_attempts=1, resume_attempts=1),
    )
    base.update(kw)
    return RenderConfig(**base)


@pytest.fixture(scope="module")
def renderer(tiny_models, tmp_path_factory):  # noqa: F811
    from stylus_docs.render import AdapterRenderer

    return AdapterRenderer(_config(tiny_models, tmp_path_factory.mktemp("render")))


def _pixels(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel).convert("RGB")).astype(np.float64)


def _state(pipe) -> dict:
    return {
        f"{c}.{k}": v.detach().clone()
        for c in ("unet", "text_encoder")
        for k, v in getattr(pipe, c).state_dict().items()
    }


# -- pure helpers ------------------------------------------------------------------------------------


def test_probe_prompts_keep_triggers_strip_network_tags_and_fall_back():
    card = {
        "example_prompts": [PROMPTS[0], PROMPTS[0], "  ", PROMPTS[1]],
        "trigger_words": ["sks style"],
        "title": "Tiny",
    }
    assert probe_prompts(card, 2) == ["a cat sitting on a chair, sks style", PROMPTS[1]]
    padded = probe_prompts({"example_prompts": ["one"], "trigger_words": ["zzz"], "title": "Cool Style"}, 3)
    assert (
        padded[0] == "one" and len(padded) == 3 and all("zzz" in p and "Cool Style" in p for p in padded[1:])
    )
    assert probe_prompts({}, 2) == ["a picture", "a picture, a portrait, detailed"]
    assert len(set(probe_prompts({"title": "x"}, 9))) == 9
    assert clean_prompt("<LoRA:a:1>, , x ,<lyco:b:0.5>") == "x"


def test_weights_families_and_paths():
    assert adapter_weight({"recommended_weight": 0.6}, 0.8, 4.0) == pytest.approx(0.6)
    assert adapter_weight({"recommended_weight": None}, 0.8, 4.0) == pytest.approx(0.8)
    assert adapter_weight({"recommended_weight": float("nan")}, 0.8, 4.0) == pytest.approx(0.8)
    assert adapter_weight({"recommended_weight": 80}, 0.8, 4.0) == pytest.approx(4.0)
    assert base_model_family("SD 1.5") == "sd1"
    assert base_model_family("runwayml/stable-diffusion-v1-5") == "sd1"
    assert base_model_family("Pony") == "sdxl" and base_model_family("SDXL 1.0") == "sdxl"
    assert base_model_family("Flux.1 D") == "flux"
    assert base_model_family("") is None and base_model_family("Something New") is None
    assert image_relpath("hf:o/n@main", True, 1, 7) == "rendered/hf_o_n_main/with-1-seed7.png"


def test_config_validation():
    with pytest.raises(FatalError, match="multiples of 8"):
        RenderConfig(pipeline="p", out_dir="o", cache_dir="c", width=30)
    with pytest.raises(FatalError, match="device"):
        RenderConfig(pipeline="p", out_dir="o", cache_dir="c", device="tpu")
    assert RenderConfig(pipeline="p", out_dir="o", cache_dir="c", device="cuda").torch_dtype_name == "float16"
    assert RenderConfig(pipeline="p", out_dir="o", cache_dir="c").torch_dtype_name == "float32"


# -- the worker ----------------------------------------------------------------------------------------


def test_diffusers_and_kohya_adapters_change_the_image_at_the_same_seed(renderer, tiny_models, lora_server):  # noqa: F811
    out = Path(renderer.config.out_dir)
    hits_before = renderer.stats["baseline_hits"]
    results = {
        kind: renderer.render_card(_card(tiny_models, lora_server, kind)) for kind in ("diffusers", "kohya")
    }
    for kind, res in results.items():
        assert res.status == "ok", (kind, res.error)
        assert res.error is None and res.load_s > 0 and res.render_s > 0
        assert len(res.images) == 4
        by = {(r["with_adapter"], r["seed"]): r for r in res.images}
        for i, seed in enumerate((1234, 1235)):
            with_row, without_row = by[(True, seed)], by[(False, seed)]
            assert (
                with_row["prompt"]
                == without_row["prompt"]
                == probe_prompts({"example_prompts": PROMPTS}, 2)[i]
            )
            assert "sks style" in with_row["prompt"]
            assert not Path(with_row["path"]).is_absolute()
            diff = np.abs(_pixels(out, with_row["path"]) - _pixels(out, without_row["path"])).mean()
            assert diff > 1.0, (kind, seed, diff)
            assert with_row["weight"] == pytest.approx(0.9) and without_row["weight"] is None
            assert json.loads(with_row["lora_weights"]) == {f"civitai:{kind}@1": pytest.approx(0.9)}
            assert with_row["origin"] == "rendered" and with_row["steps"] == 2 and with_row["width"] == 64
            assert with_row["scheduler"] == "DPMSolverMultistepScheduler"
    # Both adapters use the same probe prompts: the second reused the first's no-adapter renders.
    assert renderer.stats["baseline_hits"] - hits_before == 2
    d_rows = {r["path"]: r for r in results["diffusers"].images}
    k_rows = {r["path"]: r for r in results["kohya"].images}
    d_without = sorted(p for p, r in d_rows.items() if not r["with_adapter"])
    k_without = sorted(p for p, r in k_rows.items() if not r["with_adapter"])
    assert [(out / p).read_bytes() for p in d_without] == [(out / p).read_bytes() for p in k_without]
    d_with = sorted(p for p, r in d_rows.items() if r["with_adapter"])
    k_with = sorted(p for p, r in k_rows.items() if r["with_adapter"])
    assert [(out / p).read_bytes() for p in d_with] != [(out / p).read_bytes() for p in k_with]


def test_broken_adapter_is_load_failed_and_the_pipeline_stays_clean(renderer, tiny_models, lora_server):  # noqa: F811
    before = _state(renderer.pipe)
    ok_first = renderer.render_card(_card(tiny_models, lora_server, "kohya", adapter_id="civitai:k2@1"))
    res = renderer.render_card(_card(tiny_models, lora_server, "broken"))
    assert res.status == "load_failed"
    assert "size mismatch" in res.error
    assert res.images == []
    assert not (Path(renderer.config.out_dir) / "rendered" / "civitai_broken_1").exists()
    ok_after = renderer.render_card(_card(tiny_models, lora_server, "kohya", adapter_id="civitai:k3@1"))
    assert ok_first.status == ok_after.status == "ok"
    out = Path(renderer.config.out_dir)
    first = sorted((out / r["path"]).read_bytes() for r in ok_first.images)
    after = sorted((out / r["path"]).read_bytes() for r in ok_after.images)
    assert first == after  # same adapter, same seeds → same bytes, before and after the failure
    # Fused, unfused and unloaded three times: the base weights are bit-for-bit what they were.
    after_state = _state(renderer.pipe)
    assert before.keys() == after_state.keys()
    assert all(np.array_equal(before[k].numpy(), after_state[k].numpy()) for k in before)
    assert not renderer.pipe.get_list_adapters() or not any(renderer.pipe.get_list_adapters().values())


def test_fused_and_unfused_renders_agree(renderer, tiny_models, lora_server, tmp_path):  # noqa: F811
    from stylus_docs.render import AdapterRenderer

    unfused = AdapterRenderer(_config(tiny_models, tmp_path, fuse=False), pipe=renderer.pipe)
    card = _card(tiny_models, lora_server, "diffusers", adapter_id="civitai:fuse@1")
    a = renderer.render_card(card)
    b = unfused.render_card(card)
    assert a.status == b.status == "ok"
    for ra, rb in zip(a.images, b.images, strict=True):
        assert ra["path"] == rb["path"]
        pa = _pixels(Path(renderer.config.out_dir), ra["path"])
        pb = _pixels(tmp_path / "build", rb["path"])
        assert np.abs(pa - pb).max() <= 2.0


def test_incompatible_base_and_download_failures(renderer, tiny_models, lora_server):  # noqa: F811
    before = len(lora_server.requests)
    res = renderer.render_card(
        _card(tiny_models, lora_server, "kohya", adapter_id="civitai:xl@1", base_model="SDXL 1.0")
    )
    assert res.status == "incompatible_base" and "sdxl" in res.error
    assert len(lora_server.requests) == before  # nothing downloaded
    res = renderer.render_card(
        _card(tiny_models, lora_server, "kohya", adapter_id="civitai:bad@1", sha256="0" * 64)
    )
    assert res.status == "download_failed" and res.error.startswith("sha256_mismatch")
    res = renderer.render_card(
        _card(tiny_models, lora_server, "kohya", adapter_id="civitai:pkl@1", file_name="model.ckpt")
    )
    assert res.status == "download_failed" and res.error.startswith("pickle_format")


def test_exploding_adapter_is_nan_output(renderer, tiny_models, lora_server, tmp_path):  # noqa: F811
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_models.lora_kohya))
    for key in tensors:
        if key.endswith("lora_up.weight"):
            tensors[key] = tensors[key] * torch.tensor(1e38)
    path = tmp_path / "tiny-exploding.safetensors"
    save_file(tensors, str(path))
    lora_server.files[path.name] = path.read_bytes()
    card = _card(
        tiny_models,
        lora_server,
        "kohya",
        adapter_id="civitai:nan@1",
        file_name=path.name,
        download_url=f"{lora_server.url}/files/{path.name}",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    res = renderer.render_card(card)
    assert res.status == "nan_output", res.error
    assert res.images == []


# -- Beam ------------------------------------------------------------------------------------------------


def test_render_adapters_beam_pipeline(tiny_models, lora_server, tmp_path):  # noqa: F811
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from stylus_docs.beam_options import make_pipeline_options
    from stylus_docs.render import RenderAdapters

    config = _config(tiny_models, tmp_path)
    cards = [_card(tiny_models, lora_server, k) for k in ("diffusers", "kohya", "broken")]
    with beam.Pipeline(options=make_pipeline_options([])) as p:
        out = p | beam.Create(cards) | RenderAdapters(config)
        statuses = out.cards | "Status" >> beam.Map(
            lambda c: (c["adapter_id"], c["render_status"], c["render_error"] is None)
        )
        assert_that(
            statuses,
            equal_to(
                [
                    ("civitai:diffusers@1", "ok", True),
                    ("civitai:kohya@1", "ok", True),
                    ("civitai:broken@1", "load_failed", False),
                ]
            ),
            label="cards",
        )
        kinds = out.images | "Kind" >> beam.Map(lambda r: (r["adapter_id"], r["with_adapter"], r["origin"]))
        expected = [
            (f"civitai:{k}@1", w, "rendered")
            for k in ("diffusers", "kohya")
            for w in (True, False)
            for _ in range(2)
        ]
        assert_that(kinds, equal_to(expected), label="images")
    files = sorted(p.relative_to(tmp_path / "build").as_posix() for p in (tmp_path / "build").rglob("*.png"))
    assert files == sorted(
        f"rendered/civitai_{k}_1/{w}-{i}-seed{1234 + i}.png"
        for k in ("diffusers", "kohya")
        for w in ("with", "without")
        for i in range(2)
    )
