"""Adapter formats from the safetensors header: tiny files of every format, built here, classified right."""

from __future__ import annotations

import builtins
import json
import pathlib
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from stylus_docs import cli, formats
from stylus_docs.formats import (
    FORMATS,
    LOADABLE_FORMATS,
    REASON_CHECKPOINT,
    REASON_LOHA,
    REASON_LOKR,
    AdapterFormat,
    inspect_file,
    render_verdict,
)
from tests.tiny_models import tiny_models  # noqa: F401

# SD 1.5 module names (diffusers and Kohya spellings) used by several files below.
D_ATTN2_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
D_ATTN1_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K_ATTN2_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
K_ATTN1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
K_PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"
K_TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def _z(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float16)


def _write(tmp_path: Path, name: str, tensors: dict[str, np.ndarray], **metadata: str) -> Path:
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def _kohya_lora(module: str, rank: int, in_f: int, out_f: int, conv: int = 0) -> dict[str, np.ndarray]:
    down = _z(rank, in_f, conv, conv) if conv else _z(rank, in_f)
    up = _z(out_f, rank, 1, 1) if conv else _z(out_f, rank)
    return {
        f"{module}.lora_down.weight": down,
        f"{module}.lora_up.weight": up,
        f"{module}.alpha": np.array(float(rank), dtype=np.float16),
    }


# ----------------------------------------------------------------------------------------- the files


def make_files(tmp_path: Path) -> dict[str, Path]:
    """One tiny file per case; name → path."""
    files: dict[str, Path] = {}
    files["diffusers_sd15"] = _write(
        tmp_path,
        "diffusers_sd15.safetensors",
        {
            f"unet.{D_ATTN2_K}.lora.down.weight": _z(4, 768),
            f"unet.{D_ATTN2_K}.lora.up.weight": _z(320, 4),
            f"unet.{D_ATTN1_Q}.lora.down.weight": _z(4, 320),
            f"unet.{D_ATTN1_Q}.lora.up.weight": _z(320, 4),
        },
    )
    files["diffusers_processor"] = _write(
        tmp_path,
        "diffusers_processor.safetensors",
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": _z(
                2, 768
            ),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": _z(
                320, 2
            ),
        },
    )
    files["peft_sd2"] = _write(
        tmp_path,
        "peft_sd2.safetensors",
        {
            f"unet.{D_ATTN2_K}.lora_A.weight": _z(8, 1024),
            f"unet.{D_ATTN2_K}.lora_B.weight": _z(320, 8),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": _z(8, 1024),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": _z(1024, 8),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": _z(8, 1024),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": _z(4096, 8),
        },
    )
    files["peft_named"] = _write(
        tmp_path,
        "peft_named.safetensors",
        {
            f"base_model.model.{D_ATTN2_K}.lora_A.default.weight": _z(6, 768),
            f"base_model.model.{D_ATTN2_K}.lora_B.default.weight": _z(320, 6),
        },
    )
    files["kohya_sd15"] = _write(
        tmp_path,
        "kohya_sd15.safetensors",
        {
            **_kohya_lora(K_ATTN2_K, 16, 768, 320),
            **_kohya_lora(K_TE_Q, 16, 768, 768),
            # SD 1.5's proj_in is a 1×1 convolution: still a plain LoRA, not a LoCon.
            **_kohya_lora(K_PROJ_IN, 16, 320, 320, conv=1),
        },
        ss_network_module="networks.lora",
    )
    files["kohya_locon"] = _write(
        tmp_path,
        "kohya_locon.safetensors",
        {
            **_kohya_lora(K_ATTN2_K, 8, 768, 320),
            **_kohya_lora("lora_unet_down_blocks_0_resnets_0_conv1", 8, 320, 320, conv=3),
        },
        ss_network_module="lycoris.kohya",
    )
    files["loha"] = _write(
        tmp_path,
        "loha.safetensors",
        {
            f"{K_ATTN2_K}.hada_w1_a": _z(320, 4),
            f"{K_ATTN2_K}.hada_w1_b": _z(4, 768),
            f"{K_ATTN2_K}.hada_w2_a": _z(320, 4),
            f"{K_ATTN2_K}.hada_w2_b": _z(4, 768),
            f"{K_ATTN2_K}.alpha": np.array(4.0, dtype=np.float16),
        },
    )
    # LoKr: W = kron(w1, w2) with 320 = 16 × 20 out and 768 = 16 × 48 in; w2 split at rank 4.
    files["lokr"] = _write(
        tmp_path,
        "lokr.safetensors",
        {
            f"{K_ATTN2_K}.lokr_w1": _z(16, 16),
            f"{K_ATTN2_K}.lokr_w2_a": _z(20, 4),
            f"{K_ATTN2_K}.lokr_w2_b": _z(4, 48),
            f"{K_ATTN2_K}.alpha": np.array(4.0, dtype=np.float16),
        },
    )
    files["lokr_full"] = _write(
        tmp_path,
        "lokr_full.safetensors",
        {f"{K_ATTN2_K}.lokr_w1": _z(16, 16), f"{K_ATTN2_K}.lokr_w2": _z(20, 48)},
    )
    files["dora_kohya"] = _write(
        tmp_path,
        "dora_kohya.safetensors",
        {**_kohya_lora(K_ATTN2_K, 8, 768, 320), f"{K_ATTN2_K}.dora_scale": _z(1, 768)},
    )
    files["dora_peft"] = _write(
        tmp_path,
        "dora_peft.safetensors",
        {
            f"unet.{D_ATTN2_K}.lora_A.weight": _z(4, 768),
            f"unet.{D_ATTN2_K}.lora_B.weight": _z(320, 4),
            f"unet.{D_ATTN2_K}.lora_magnitude_vector": _z(320),
        },
    )
    files["ti_sd15"] = _write(tmp_path, "my-style.safetensors", {"emb_params": _z(2, 768)})
    files["ti_sd2"] = _write(tmp_path, "ti_sd2.safetensors", {"emb_params": _z(3, 1024)})
    files["ti_sdxl"] = _write(tmp_path, "ti_sdxl.safetensors", {"clip_l": _z(2, 768), "clip_g": _z(2, 1280)})
    files["ti_a1111"] = _write(
        tmp_path,
        "ti_a1111.safetensors",
        {"string_to_param.*": _z(1, 768), "string_to_token": np.array([265], dtype=np.int64)},
    )
    # The width of the tiny pipeline's text encoder: a real embedding, of no known family.
    files["ti_tiny"] = _write(tmp_path, "ti_tiny.safetensors", {"<tiny>": _z(2, 32)})
    files["ti_diffusers"] = _write(tmp_path, "learned_embeds.safetensors", {"<cat-toy>": _z(768)})
    files["checkpoint"] = _write(
        tmp_path,
        "checkpoint.safetensors",
        {
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": _z(320, 768),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": _z(320, 768),
            "model.diffusion_model.input_blocks.0.0.weight": _z(320, 4, 3, 3),
            "first_stage_model.encoder.conv_in.weight": _z(8, 3, 3, 3),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": _z(768),
        },
    )
    files["sdxl_kohya"] = _write(
        tmp_path,
        "sdxl_kohya.safetensors",
        {
            **_kohya_lora("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 4, 2048, 640),
            **_kohya_lora("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 4, 768, 768),
            **_kohya_lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 4, 1280, 1280),
        },
    )
    files["sdxl_te2_only"] = _write(
        tmp_path,
        "sdxl_te2_only.safetensors",
        {
            **_kohya_lora(K_ATTN1_Q.replace("down_blocks_0", "down_blocks_1"), 4, 640, 640),
            **_kohya_lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 4, 1280, 1280),
        },
    )
    files["sdxl_peft"] = _write(
        tmp_path,
        "sdxl_peft.safetensors",
        {
            "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.lora_A.weight": _z(4, 2048),
            "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.lora_B.weight": _z(640, 4),
            "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight": _z(4, 1280),
            "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight": _z(1280, 4),
        },
    )
    files["flux_peft"] = _write(
        tmp_path,
        "flux_peft.safetensors",
        {
            "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": _z(16, 64),
            "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": _z(64, 16),
            "transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight": _z(16, 64),
            "transformer.transformer_blocks.0.ff.net.0.proj.lora_B.weight": _z(256, 16),
        },
    )
    files["flux_kohya"] = _write(
        tmp_path,
        "flux_kohya.safetensors",
        {
            **_kohya_lora("lora_unet_double_blocks_0_img_attn_qkv", 8, 64, 192),
            **_kohya_lora("lora_unet_single_blocks_0_linear1", 8, 64, 256),
        },
    )
    files["metadata_sdxl"] = _write(
        tmp_path,
        "metadata_sdxl.safetensors",
        _kohya_lora(K_ATTN1_Q, 4, 320, 320),
        ss_base_model_version="sdxl_base_v1-0",
    )
    files["oft"] = _write(
        tmp_path, "oft.safetensors", {f"{K_ATTN2_K}.oft_blocks": _z(4, 80, 80), f"{K_ATTN2_K}.alpha": _z()}
    )
    files["plain"] = _write(tmp_path, "plain.safetensors", {"foo": _z(3, 3, 3), "bar": _z(2, 2, 2)})
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("formats"))


# ------------------------------------------------------------------------------------ classification

CASES = {
    # name: (format, convention, rank, base_family, loadable)
    "diffusers_sd15": ("lora", "diffusers", 4, "SD 1.5", True),
    "diffusers_processor": ("lora", "diffusers", 2, "SD 1.5", True),
    "peft_sd2": ("lora", "peft", 8, "SD 2.x", True),
    "peft_named": ("lora", "peft", 6, "SD 1.5", True),
    "kohya_sd15": ("lora", "kohya", 16, "SD 1.5", True),
    "kohya_locon": ("locon", "kohya", 8, "SD 1.5", True),
    "loha": ("loha", "kohya", 4, "SD 1.5", False),
    "lokr": ("lokr", "kohya", 4, "SD 1.5", False),
    "lokr_full": ("lokr", "kohya", None, "SD 1.5", False),
    "dora_kohya": ("dora", "kohya", 8, "SD 1.5", True),
    "dora_peft": ("dora", "peft", 4, "SD 1.5", True),
    "ti_sd15": ("textual_inversion", "kohya", None, "SD 1.5", True),
    "ti_sd2": ("textual_inversion", "kohya", None, "SD 2.x", True),
    "ti_sdxl": ("textual_inversion", "kohya", None, "SDXL", True),
    "ti_diffusers": ("textual_inversion", "diffusers", None, "SD 1.5", True),
    "ti_a1111": ("textual_inversion", "kohya", None, "SD 1.5", True),
    "ti_tiny": ("textual_inversion", "diffusers", None, "unknown", True),
    "checkpoint": ("checkpoint", "unknown", None, "SD 1.5", False),
    "sdxl_kohya": ("lora", "kohya", 4, "SDXL", True),
    "sdxl_te2_only": ("lora", "kohya", 4, "SDXL", True),
    "sdxl_peft": ("lora", "peft", 4, "SDXL", True),
    "flux_peft": ("lora", "peft", 16, "Flux", True),
    "flux_kohya": ("lora", "kohya", 8, "Flux", True),
    "metadata_sdxl": ("lora", "kohya", 4, "SDXL", True),
    "oft": ("unknown", "kohya", None, "unknown", False),
    "plain": ("unknown", "unknown", None, "unknown", False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_format_is_classified(files: dict[str, Path], name: str) -> None:
    fmt = inspect_file(files[name])
    expected = CASES[name]
    got = (fmt.format, fmt.convention, fmt.rank, fmt.base_family, fmt.loadable)
    assert got == expected, fmt
    assert fmt.inspected
    assert (fmt.reason is None) == fmt.loadable
    assert fmt.loadable == (fmt.format in LOADABLE_FORMATS)
    assert fmt.path == str(files[name])


def test_every_format_name_is_covered() -> None:
    assert {case[0] for case in CASES.values()} == set(FORMATS)


def test_reasons_say_why(files: dict[str, Path]) -> None:
    assert inspect_file(files["loha"]).reason == REASON_LOHA
    assert inspect_file(files["lokr"]).reason == REASON_LOKR
    assert "LoKr" in REASON_LOKR and "LoHa" in REASON_LOHA
    assert inspect_file(files["checkpoint"]).reason == REASON_CHECKPOINT == "full checkpoint, not an adapter"
    assert "OFT" in inspect_file(files["oft"]).reason
    assert inspect_file(files["plain"]).reason == "no adapter tensor recognised"


def test_targets_and_blocks(files: dict[str, Path]) -> None:
    kohya = inspect_file(files["kohya_sd15"])
    assert kohya.targets == {"text_encoder": 1, "unet": 2}
    assert kohya.blocks == ["attn"]
    assert kohya.tensors == 9
    locon = inspect_file(files["kohya_locon"])
    assert locon.blocks == ["attn", "resnet"]
    sdxl = inspect_file(files["sdxl_kohya"])
    assert sdxl.targets == {"text_encoder": 1, "text_encoder_2": 1, "unet": 1}
    peft = inspect_file(files["peft_sd2"])
    assert peft.targets == {"text_encoder": 2, "unet": 1}
    assert peft.blocks == ["attn", "ff"]
    assert inspect_file(files["flux_peft"]).targets == {"transformer": 2}
    flux = inspect_file(files["flux_kohya"])
    assert flux.targets == {"transformer": 2}
    assert flux.blocks == ["attn", "ff"]
    ti = inspect_file(files["ti_sdxl"])
    assert ti.targets == {"text_encoder": 1, "text_encoder_2": 1}


def test_family_evidence(files: dict[str, Path]) -> None:
    assert "768" in inspect_file(files["kohya_sd15"]).base_family_evidence
    assert "2048" in inspect_file(files["sdxl_kohya"]).base_family_evidence
    assert "text_encoder_2" in inspect_file(files["sdxl_te2_only"]).base_family_evidence
    assert "metadata" in inspect_file(files["metadata_sdxl"]).base_family_evidence
    assert "double_blocks" in inspect_file(files["flux_kohya"]).base_family_evidence


def test_textual_inversion_token_and_vectors(files: dict[str, Path]) -> None:
    kohya = inspect_file(files["ti_sd15"])
    assert (kohya.token, kohya.vectors, kohya.loader) == ("my-style", 2, "load_textual_inversion")
    diffusers = inspect_file(files["ti_diffusers"])
    assert (diffusers.token, diffusers.vectors) == ("<cat-toy>", 1)
    assert (inspect_file(files["ti_tiny"]).token, inspect_file(files["ti_tiny"]).vectors) == ("<tiny>", 2)
    a1111 = inspect_file(files["ti_a1111"])
    assert (a1111.token, a1111.vectors, a1111.tensors) == ("ti_a1111", 1, 2)
    assert inspect_file(files["kohya_sd15"]).loader == "load_lora_weights"
    assert inspect_file(files["loha"]).loader is None


def test_tiny_lora_files(tiny_models) -> None:  # noqa: F811 - the imported fixture
    diffusers = inspect_file(tiny_models.lora_diffusers)
    assert (diffusers.format, diffusers.convention, diffusers.rank) == ("lora", "diffusers", 4)
    assert diffusers.loadable and diffusers.reason is None
    assert diffusers.targets == {"text_encoder": 8, "unet": 32}
    # The tiny pipeline is SD 1.5's layout at width 32, which is no real family's width.
    assert diffusers.base_family == "unknown"
    assert "32" in diffusers.base_family_evidence
    kohya = inspect_file(tiny_models.lora_kohya)
    assert (kohya.format, kohya.convention, kohya.rank, kohya.loadable) == ("lora", "kohya", 4, True)
    assert kohya.targets == diffusers.targets
    # Wrong shapes are found by loading, not from the header: it is still a well-formed LoRA file.
    broken = inspect_file(tiny_models.lora_broken)
    assert (broken.format, broken.loadable) == ("lora", True)


# ------------------------------------------------------------------------------------- refusals


def test_corrupt_header_is_not_loadable(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    fmt = inspect_file(path)
    assert (fmt.format, fmt.loadable, fmt.inspected) == ("unknown", False, True)
    assert fmt.reason.startswith("bad_safetensors_header: header length 10000 exceeds the file size")
    bad_json = tmp_path / "bad_json.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    assert inspect_file(bad_json).reason.startswith("bad_safetensors_header: header is not UTF-8 JSON")
    assert render_verdict(fmt) == (False, "unsupported_format", fmt.reason)


def test_empty_header(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    fmt = inspect_file(path)
    assert (fmt.format, fmt.loadable, fmt.reason) == ("unknown", False, "the file holds no tensors")


@pytest.mark.parametrize(
    ("name", "kind"), [("model.ckpt", "checkpoint"), ("emb.pt", "unknown"), ("pytorch_lora.bin", "unknown")]
)
def test_pickle_formats_refused_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, kind: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x04 not really a pickle")

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"opened {args[0]!r}")

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", no_open)
        patch.setattr(pathlib.Path, "open", no_open)
        patch.setattr(formats, "validate_safetensors", no_open)
        fmt = inspect_file(path)
    assert (fmt.format, fmt.loadable, fmt.inspected) == (kind, False, True)
    assert fmt.reason.startswith("pickle format refused")
    assert render_verdict(fmt)[1] == "unsupported_format"


def test_other_suffix_and_missing_paths(tmp_path: Path) -> None:
    other = tmp_path / "model.gguf"
    other.write_bytes(b"GGUF")
    fmt = inspect_file(other)
    assert (fmt.format, fmt.loadable, fmt.reason, fmt.inspected) == (
        "unknown",
        False,
        "not a .safetensors file",
        True,
    )
    missing = inspect_file(tmp_path / "nope.safetensors")
    assert (missing.format, missing.loadable, missing.reason, missing.inspected) == (
        "unknown",
        False,
        "no such file",
        False,
    )
    folder = inspect_file(tmp_path)
    assert (folder.reason, folder.inspected) == ("not a file", False)


def test_render_verdict(files: dict[str, Path]) -> None:
    assert render_verdict(inspect_file(files["kohya_sd15"])) == (True, "ok", "")
    assert render_verdict(inspect_file(files["ti_sd15"])) == (True, "ok", "")
    assert render_verdict(inspect_file(files["loha"])) == (False, "unsupported_format", REASON_LOHA)
    assert render_verdict(inspect_file(files["lokr"])) == (False, "unsupported_format", REASON_LOKR)
    ok, status, reason = render_verdict(inspect_file(files["checkpoint"]))
    assert (ok, status, reason) == (False, "unsupported_format", REASON_CHECKPOINT)
    ok, status, reason = render_verdict(inspect_file(files["plain"]))
    assert (ok, status) == (False, "unsupported_format") and reason


def test_dataclass_checks_its_values() -> None:
    with pytest.raises(ValueError, match="format"):
        AdapterFormat("x", format="lycoris")
    with pytest.raises(ValueError, match="base_family"):
        AdapterFormat("x", base_family="SD 1.x")


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_json(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(files[n]) for n in ("kohya_sd15", "loha", "ti_sdxl", "checkpoint")]
    assert cli.main(["inspect", *paths, "--format", "json"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [r["path"] for r in rows] == paths
    assert [r["format"] for r in rows] == ["lora", "loha", "textual_inversion", "checkpoint"]
    assert [r["loadable"] for r in rows] == [True, False, True, False]
    assert [r["base_family"] for r in rows] == ["SD 1.5", "SD 1.5", "SDXL", "SD 1.5"]
    assert rows[0]["rank"] == 16 and rows[2]["rank"] is None
    assert [r["architecture"] for r in rows] == ["sd15", "sd15", "sdxl", "sd15"]
    assert [r["loader"] for r in rows] == ["load_lora_weights", None, "load_textual_inversion", None]
    assert rows[1]["reason"] == REASON_LOHA and rows[0]["reason"] is None
    for row in rows:
        assert {
            "path",
            "format",
            "rank",
            "base_family",
            "loadable",
            "reason",
            "convention",
            "targets",
        } <= set(row)
    assert out.err == ""


def test_cli_missing_path_reported_and_exit_2(files: dict[str, Path], capsys, tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.safetensors")
    assert cli.main(["inspect", str(files["loha"]), missing, "--format", "json"]) == 2
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [r["format"] for r in rows] == ["loha", "unknown"]
    assert rows[1] == {**rows[1], "loadable": False, "reason": "no such file", "path": missing}
    assert out.err.strip() == f"stylus-docs inspect: error: {missing}: no such file"


def test_cli_table(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(files["kohya_locon"]), str(files["lokr"]), "--format", "table"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["format", "convention", "rank"]
    assert any(line.startswith("locon") and "SD 1.5" in line for line in lines)
    assert f"reason: {REASON_LOKR}" in text
    assert "targets: unet=2 [attn/resnet]" in text
