"""``eval clip``: CLIP score with a tiny random open_clip model, checked against open_clip directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from stylus_docs import cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_models import make_clip, write_images  # noqa: E402

PROMPTS = ("a corgi on a skateboard", "a red dragon over a castle")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    cfg, weights, name = make_clip(root / "model")
    for i, prompt in enumerate(PROMPTS):
        write_images(root / "images" / f"p{i}" / "stylus", 3, seed=10 + i, prompt=prompt)
    return {"root": root, "cfg": cfg, "weights": weights, "name": name, "images": root / "images"}


def _argv(world, *more):
    return [
        "eval",
        "clip",
        "--images",
        str(world["images"]),
        "--clip-config",
        str(world["cfg"]),
        "--clip-weights",
        str(world["weights"]),
        "--device",
        "cpu",
        "--format",
        "json",
        *more,
    ]


def _open_clip_scores(world, paths, prompts):
    """The reference: open_clip's own encoders, cosine × 100, clipped at 0 (torchmetrics' definition)."""
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    model, _, preprocess = open_clip.create_model_and_transforms(world["name"], pretrained=None)
    model.load_state_dict(load_file(str(world["weights"])))
    model.eval()
    tokenizer = open_clip.get_tokenizer(world["name"])
    out = []
    with torch.no_grad():
        for path, prompt in zip(paths, prompts, strict=True):
            img = model.encode_image(preprocess(Image.open(path).convert("RGB")).unsqueeze(0))
            txt = model.encode_text(tokenizer([prompt]))
            cos = torch.nn.functional.cosine_similarity(img, txt).item()
            out.append(max(100 * cos, 0.0))
    return out


def test_clip_score_equals_open_clip_cosine_times_100(world, capsys):
    assert cli.main(_argv(world)) == 0
    out = json.loads(capsys.readouterr().out)
    images = out["images"]
    assert len(images) == 6 and out["aggregation"] == "mean"
    # Prompts come from the sidecars' user prompt (not the sent prompt with its debias suffix).
    assert {im["prompt"] for im in images} == set(PROMPTS)
    expected = _open_clip_scores(world, [im["path"] for im in images], [im["prompt"] for im in images])
    assert [im["score"] for im in images] == pytest.approx(expected, abs=1e-4)
    assert out["mean"] == pytest.approx(sum(expected) / 6, abs=1e-4)
    assert any(s > 0 for s in expected)  # a model that scores everything 0 would test nothing

    assert cli.main([*_argv(world), "--best-of"]) == 0
    best = json.loads(capsys.readouterr().out)
    by_prompt = {
        p: max(s for im, s in zip(images, expected, strict=True) if im["prompt"] == p) for p in PROMPTS
    }
    assert best["aggregation"] == "best_of" and best["n_prompts"] == 2
    assert best["mean"] == pytest.approx(sum(by_prompt.values()) / 2, abs=1e-4)
    assert best["mean"] >= out["mean"] - 1e-9


def test_prompts_csv_overrides_sidecars(world, tmp_path, capsys):
    csv_path = tmp_path / "prompts.csv"
    rows = ["image,prompt"] + [
        f"{p.relative_to(world['images']).as_posix()},a photo of a teapot"
        for p in sorted(world["images"].rglob("*.png"))
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    assert cli.main([*_argv(world), "--prompts", str(csv_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {im["prompt"] for im in out["images"]} == {"a photo of a teapot"}


def test_bad_inputs_fail_in_one_line(world, tmp_path, capsys):
    bare = tmp_path / "bare"
    write_images(bare, 2, seed=0)  # no sidecars
    argv = _argv(world)
    argv[argv.index("--images") + 1] = str(bare)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no prompt" in err
    no_weights = [a for a in _argv(world) if a != str(world["weights"]) and a != "--clip-weights"]
    assert cli.main(no_weights) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--clip-weights" in err
    unknown = [
        "eval",
        "clip",
        "--images",
        str(world["images"]),
        "--clip-model",
        "hf-hub:org/model",
        "--clip-weights",
        str(world["weights"]),
    ]
    assert cli.main(unknown) == 2
    assert "--clip-model" in capsys.readouterr().err
