"""The diffusion layer on the tiny random pipeline (CPU): family, LoRA session, textual inversion, formats
in render and generate, image-to-image and inpainting.

Adapter files are built here: a textual-inversion embedding as wide as the tiny text encoder, and a LoHa
file (``hada_w1_a`` … keys) that diffusers cannot load. Images are 64×64, 2 steps.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from stylus_docs import cli
from stylus_docs.diffusion import (
    AdapterStore,
    LoraSession,
    card_architecture,
    insert_token,
    load_base_pipeline,
    normalize_architecture,
    pipeline_architecture,
    source_architecture,
    textual_inversion_token,
)
from stylus_docs.diffusion.family import class_architecture, unet_architecture
from stylus_docs.errors import SkipRecord
from stylus_docs.generate import prompt_slug
from stylus_docs.render import RenderConfig
from tests.release_fixture import sample_rows, write_release
from tests.tiny_models import tiny_models  # noqa: F401 - session fixture

PROMPT = "a graffiti of a corgi with a fire dragon"
CORGI, GRAFFITI, DRAGON = "civitai:103@1003", "civitai:104@1004", "civitai:102@1002"
FAST = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu", "--no-cache"]


@pytest.fixture(scope="module")
def loaded(tiny_models):  # noqa: F811
    return load_base_pipeline(str(tiny_models.pipeline))


@pytest.fixture(scope="module")
def files(tiny_models, loaded, tmp_path_factory):  # noqa: F811
    """A textual inversion (2 vectors, as wide as the tiny text encoder) and a LoHa file."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("adapter_files")
    hidden = loaded.pipe.text_encoder.config.hidden_size
    gen = torch.Generator().manual_seed(7)
    ti = root / "tiny-ti.safetensors"
    save_file({"emb_params": torch.randn(2, hidden, generator=gen)}, str(ti))
    loha = root / "tiny-loha.safetensors"
    tensors = {}
    for block in ("attn1_to_q", "attn1_to_k", "attn2_to_v"):
        key = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_{block}"
        for part in ("w1", "w2"):
            tensors[f"{key}.hada_{part}_a"] = torch.randn(32, 4, generator=gen)
            tensors[f"{key}.hada_{part}_b"] = torch.randn(4, 32, generator=gen)
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(loha))
    return SimpleNamespace(ti=ti, loha=loha, hidden=hidden)


def _state(pipe) -> dict:
    return {
        f"{c}.{k}": v.detach().clone()
        for c in ("unet", "text_encoder")
        for k, v in getattr(pipe, c).state_dict().items()
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.dtype == after[key].dtype and value.shape == after[key].shape, key
        assert np.array_equal(value.numpy(), after[key].numpy()), key  # bit for bit


def _render(pipe, prompt: str, seed: int = 3) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = pipe(
            prompt=[prompt],
            num_inference_steps=2,
            width=64,
            height=64,
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="np",
        )
    return out.images[0]


# -- family ------------------------------------------------------------------------------------------


def test_family_of_the_tiny_pipeline_its_folder_and_card_names(tiny_models, loaded):  # noqa: F811
    assert loaded.kind == pipeline_architecture(loaded.pipe) == "sd15"
    assert loaded.class_name == "StableDiffusionPipeline" and loaded.dtype == "float32"
    assert source_architecture(str(tiny_models.pipeline)) == ("sd15", "StableDiffusionPipeline")
    assert loaded.describe()["base_model"] == "SD 1.5"
    # denoiser configs of the real families
    assert unet_architecture({"cross_attention_dim": 768}) == "sd15"
    assert unet_architecture({"cross_attention_dim": 1024}) == "sd2"
    assert unet_architecture({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}) == "sdxl"
    flux_transformer = type("FluxTransformer2DModel", (), {"config": {}})()
    assert pipeline_architecture(SimpleNamespace(transformer=flux_transformer)) == "flux"
    assert class_architecture("StableDiffusionXLImg2ImgPipeline") == "sdxl"
    assert class_architecture("KandinskyPipeline") is None
    # card base-model names, through the catalogue's families
    for name, arch in {
        "SD 1.5": "sd15",
        "SD 1.4": "sd15",
        "runwayml/stable-diffusion-v1-5": "sd15",
        "SD 2.1 768": "sd2",
        "SDXL 1.0": "sdxl",
        "SDXL Lightning": "sdxl",
        "Pony": "sdxl",
        "Illustrious": "sdxl",
        "NoobAI": "sdxl",
        "Playground v2": "sdxl",
        "Flux.1 D": "flux",
        "black-forest-labs/FLUX.1-dev": "flux",
        "Wan Video 14B t2v": "wan",
    }.items():
        assert card_architecture(name) == arch, name
    assert card_architecture("") is None and card_architecture("Something New") is None
    assert card_architecture("Other") is None
    assert normalize_architecture("sd1") == "sd15" and normalize_architecture(None) is None


# -- the LoRA session -----------------------------------------------------------------------------------


def test_lora_session_restores_the_base_weights_bit_exactly(tiny_models, loaded):  # noqa: F811
    pipe = loaded.pipe
    before = _state(pipe)
    base = _render(pipe, "a cat, sks style")
    with LoraSession(pipe) as session:
        session.load_lora(tiny_models.lora_kohya, "k")
        session.load_lora(tiny_models.lora_diffusers, "d")
        with pytest.raises(SkipRecord) as err:
            session.load_lora(tiny_models.lora_broken, "broken")
        assert err.value.reason == "load_failed" and "size mismatch" in err.value.detail
        assert session.loras == ("k", "d")
        for i, weights in enumerate(({"k": 0.9, "d": 0.5}, {"k": 1.3}, {"d": 0.7})):  # fuse / restore cycles
            with session.applied(weights) as applied:
                assert applied.fused and applied.fuse_s > 0
                assert pipe.num_fused_loras
                fused_state = {k.replace(".base_layer", ""): v for k, v in _state(pipe).items()}
                assert any(
                    not np.array_equal(v.numpy(), before[k].numpy())
                    for k, v in fused_state.items()
                    if k in before
                )
                if i == 0:
                    assert np.abs(_render(pipe, "a cat, sks style") - base).mean() > 1e-3
            assert applied.restore_s > 0 and not pipe.num_fused_loras
        with session.applied({"k": 0.9}, fuse=False) as applied:
            assert not applied.fused
            unfused = _render(pipe, "a cat, sks style")
        with session.applied({}):  # every LoRA layer bypassed: the base image
            off = _render(pipe, "a cat, sks style")
        assert np.abs(unfused - base).mean() > 1e-3
        assert np.abs(off - base).max() < 1e-5
        with pytest.raises(KeyError):
            with session.applied({"nope": 1.0}):
                pass
        assert len(session.pristine) > 0
    assert not pipe.get_list_adapters() or not any(pipe.get_list_adapters().values())
    _assert_same_state(before, _state(pipe))


def test_textual_inversion_changes_the_output_and_unloads_cleanly(loaded, files):
    pipe = loaded.pipe
    vocab = len(pipe.tokenizer)
    before = _state(pipe)
    token = textual_inversion_token(["zq style"], "adapter-1")
    assert token == "<zq-style>"
    assert textual_inversion_token(["zq style"], "x", taken={"<zq-style>"}) == "<zq-style-2>"
    assert textual_inversion_token([], "adapter-9") == "<adapter-9>"
    assert insert_token("a cat, zq style, night", token, "zq style") == "a cat, <zq-style>, night"
    assert insert_token("a cat", token, "zq style") == "a cat, <zq-style>"
    prompt = insert_token("a cat on a chair", token)
    plain, plain_no_token = _render(pipe, prompt), _render(pipe, "a cat on a chair")
    with LoraSession(pipe) as session:
        session.load_textual_inversion(files.ti, token)
        assert session.tokens == (token,)
        assert len(pipe.tokenizer) == vocab + 2  # two vectors: <zq-style>, <zq-style>_1
        with_ti = _render(pipe, prompt)
        without_token = _render(pipe, "a cat on a chair")
    assert np.abs(with_ti - plain).mean() > 1e-3  # the embedding changes the image
    assert np.abs(without_token - plain_no_token).max() < 1e-5  # loaded, but no token: no effect
    assert len(pipe.tokenizer) == vocab
    _assert_same_state(before, _state(pipe))  # the text encoder's embeddings are back as they were
    # A file of the wrong width is a load failure, and leaves nothing behind.
    import torch
    from safetensors.torch import save_file

    wrong = files.ti.with_name("wrong-width.safetensors")
    save_file({"emb_params": torch.zeros(1, files.hidden + 8)}, str(wrong))
    with LoraSession(pipe) as session, pytest.raises(SkipRecord) as err:
        session.load_textual_inversion(wrong, "<wrong>")
    assert err.value.reason == "load_failed"
    assert len(pipe.tokenizer) == vocab


def test_adapter_store_verifies_and_imports_flat_files(tiny_models, tmp_path):  # noqa: F811
    sha = tiny_models.sha256[tiny_models.lora_kohya.name]
    root = tmp_path / "adapters"
    root.mkdir()
    shutil.copy(tiny_models.lora_kohya, root / f"{sha}.safetensors")
    store = AdapterStore(root, download=False)
    path = store.path({"sha256": sha.upper(), "file_name": "x.safetensors"})
    assert path == store.cache.path_for(sha) and path.is_file()
    with pytest.raises(SkipRecord, match="pickle_format"):
        store.path({"sha256": sha, "file_name": "x.ckpt"})
    with pytest.raises(SkipRecord, match="not_cached"):
        store.path({"sha256": "1" * 64, "file_name": "y.safetensors"})
    with pytest.raises(SkipRecord, match="no_sha256"):
        store.path({"sha256": None, "file_name": "y.safetensors"})


# -- render: formats and textual inversion -----------------------------------------------------------


@pytest.fixture(scope="module")
def renderer(tiny_models, loaded, tmp_path_factory):  # noqa: F811
    from stylus_docs.render import AdapterRenderer

    root = tmp_path_factory.mktemp("render_formats")
    config = RenderConfig(
        pipeline=str(tiny_models.pipeline),
        out_dir=str(root / "build"),
        cache_dir=str(root / "cache"),
        width=64,
        height=64,
        steps=2,
        prompts_per_adapter=2,
        batch_size=2,
    )
    return AdapterRenderer(config, pipe=loaded.pipe)


def _card(adapter_id: str, path: Path, **extra) -> dict:
    card = {
        "adapter_id": adapter_id,
        "title": "Tiny",
        "example_prompts": ["a cat sitting on a chair, zq style", "a red car in the rain"],
        "trigger_words": ["zq style"],
        "recommended_weight": 0.9,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "file_name": path.name,
        "base_model": "SD 1.5",
        "weights_path": str(path),
    }
    card.update(extra)
    return card


def _pixels(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel).convert("RGB")).astype(np.float64)


def test_render_loha_is_unsupported_format_and_the_worker_goes_on(renderer, files, tiny_models):  # noqa: F811
    res = renderer.render_card(_card("civitai:loha@1", files.loha))
    assert res.status == "unsupported_format"
    assert res.error.startswith("loha:") and "LoHa" in res.error
    assert res.images == [] and res.card_fields()["render_status"] == "unsupported_format"
    assert not (Path(renderer.config.out_dir) / "rendered" / "civitai_loha_1").exists()
    ok = renderer.render_card(_card("civitai:after-loha@1", tiny_models.lora_kohya))
    assert ok.status == "ok", ok.error
    from stylus_docs.render import RENDER_STATUSES

    assert "unsupported_format" in RENDER_STATUSES


def test_render_textual_inversion_puts_its_token_in_the_with_prompts(renderer, files, loaded):
    vocab = len(loaded.pipe.tokenizer)
    res = renderer.render_card(_card("civitai:ti@1", files.ti))
    assert res.status == "ok", res.error
    out = Path(renderer.config.out_dir)
    by = {(r["with_adapter"], r["seed"]): r for r in res.images}
    assert len(by) == 4
    with0, without0 = by[(True, 1234)], by[(False, 1234)]
    assert with0["prompt"] == "a cat sitting on a chair, <zq-style>"  # the trigger word became the token
    assert without0["prompt"] == "a cat sitting on a chair, zq style"
    assert by[(True, 1235)]["prompt"] == "a red car in the rain, <zq-style>"  # no trigger: appended
    assert with0["weight"] is None and json.loads(with0["lora_weights"]) == {}
    for seed in (1234, 1235):
        diff = np.abs(_pixels(out, by[(True, seed)]["path"]) - _pixels(out, by[(False, seed)]["path"]))
        assert diff.mean() > 1.0, seed
    assert len(loaded.pipe.tokenizer) == vocab  # unloaded after


# -- generate: formats, textual inversion, image-to-image, inpainting --------------------------------------


@pytest.fixture(scope="module")
def world(tiny_models, files, tmp_path_factory):  # noqa: F811
    """A release whose corgi / graffiti / dragon adapters are a Kohya LoRA, a textual inversion, a LoHa."""
    root = tmp_path_factory.mktemp("gen_formats")
    rows = sample_rows()
    by = {r["adapter_id"]: r for r in rows}
    adapters = root / "adapters"
    adapters.mkdir()
    for aid, path in ((CORGI, tiny_models.lora_kohya), (GRAFFITI, files.ti), (DRAGON, files.loha)):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        by[aid].update(sha256=sha, file_name=path.name)
        shutil.copy(path, adapters / f"{sha}.safetensors")
    docs = root / "docs"
    write_release(docs, rows)
    composition = {
        "prompt": PROMPT,
        "release": {"build_id": "x", "docs": "y"},
        "composer": {"name": "test"},
        "topics": [
            {"topic": t, "adapters": [{"adapter_id": a, "title": t, "recommended_weight": 1.0}]}
            for t, a in (("corgi", CORGI), ("graffiti", GRAFFITI), ("dragon", DRAGON))
        ],
        "dropped": [],
        "timings": {},
    }
    (root / "comp.json").write_text(json.dumps(composition))
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(80, 96, 3) * 255).astype("uint8")).save(root / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(root / "mask.png")
    return SimpleNamespace(root=root, docs=docs, adapters=adapters, pipeline=tiny_models.pipeline)


def _generate(world, out: Path, *extra: str) -> int:
    argv = [
        "generate",
        PROMPT,
        "--docs",
        str(world.docs),
        "--pipeline",
        str(world.pipeline),
        "--out",
        str(out),
        "--composition",
        str(world.root / "comp.json"),
        "--adapters-dir",
        str(world.adapters),
        "--no-download",
        "--num-images",
        "1",
        *FAST,
        *extra,
    ]
    return cli.main(argv)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _img(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_generate_img2img_with_a_lora_a_textual_inversion_and_a_loha(world):
    out = world.root / "img2img"
    assert _generate(world, out, "--init-image", str(world.root / "init.png"), "--baseline") == 0
    d = out / prompt_slug(PROMPT)
    done = json.loads((d / "_DONE.json").read_text())
    skipped = {s["adapter_id"]: s for s in done["skipped_adapters"]}
    assert set(skipped) == {DRAGON}
    assert skipped[DRAGON]["reason"] == "unsupported_format" and "LoHa" in skipped[DRAGON]["detail"]
    car = json.loads((d / "stylus" / "000-seed0.json").read_text())
    assert car["task"] == "img2img" and car["strength"] == pytest.approx(0.8)
    assert car["init_image_sha256"] == _sha(world.root / "init.png") and car["mask_sha256"] is None
    formats = {a["adapter_id"]: a for a in car["adapters"]}
    assert formats[CORGI]["format"] == "lora" and formats[CORGI]["weight"] == pytest.approx(0.8)
    ti = formats[GRAFFITI]
    assert ti["format"] == "textual_inversion" and ti["weight"] is None and ti["token"] == "<grffti>"
    assert car["prompt"] == f"{PROMPT}, <grffti>" and car["user_prompt"] == PROMPT
    base = json.loads((d / "baseline" / "000-seed0.json").read_text())
    assert base["prompt"] == PROMPT and base["task"] == "img2img" and base["adapters"] == []
    assert base["init_image_sha256"] == car["init_image_sha256"]
    styled, plain = _img(d / car["image"]), _img(d / base["image"])
    assert styled.shape == plain.shape == (64, 64, 3)  # the init image was resized to --width/--height
    assert np.abs(styled - plain).mean() > 1.0


def test_generate_inpaint_records_mask_and_strength_and_resumes_by_content(world, capsys):
    out = world.root / "inpaint"
    flags = ["--init-image", str(world.root / "init.png"), "--mask", str(world.root / "mask.png")]
    assert _generate(world, out, *flags, "--strength", "0.6", "--mask-strategy", "all") == 0
    d = out / prompt_slug(PROMPT)
    car = json.loads((d / "stylus" / "000-seed0.json").read_text())
    assert car["task"] == "inpaint" and car["strength"] == pytest.approx(0.6)
    assert car["mask_sha256"] == _sha(world.root / "mask.png")
    assert car["init_image_sha256"] == _sha(world.root / "init.png") and car["mask_strategy"] == "all"
    assert (d / car["image"]).is_file()
    capsys.readouterr()
    assert _generate(world, out, *flags, "--strength", "0.6") == 0  # same inputs: done already
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped_done"] == 1
    assert _generate(world, out, *flags, "--strength", "0.7") == 0  # another strength: rendered again
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rendered"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--init-image", "missing.png"], "--init-image: no such file"),
        (["--mask", "mask.png"], "needs --init-image"),
        (["--mask", "one_hot_lora"], "neither a strategy"),
        (["--init-image", "init.png", "--strength", "0"], "--strength must be in (0, 1]"),
        (["--init-image", "init.png", "--strength", "1.5"], "--strength must be in (0, 1]"),
        (["--strength", "0.5"], "--strength needs --init-image"),
        (["--init-image", "comp.json"], "not a readable image"),
    ],
)
def test_generate_image_inputs_are_validated_with_one_line(world, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(world.root)
    capsys.readouterr()
    assert _generate(world, world.root / "bad", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
