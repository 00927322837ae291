"""Random-weight models and small image sets for the ``stylus-docs eval`` tests (built locally, no hub).

* :func:`make_inception` – torchvision ``inception_v3`` with random weights in safetensors. Its batch-norm
  statistics are calibrated on one random batch: with the default initialisation and unit running
  variances the activations shrink layer by layer to ~1e-9, and every image would get the same features.
* :func:`make_clip` – a tiny open_clip architecture (model-config JSON) and random weights.
* :func:`write_images` – PNGs with ``stylus-docs generate``-style sidecars.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_inception(path: Path, seed: int = 0) -> Path:
    """Write a random, BN-calibrated ``inception_v3`` state dict to ``path`` (safetensors)."""
    import torch
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(seed)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
            m.reset_running_stats()
    aux, net.AuxLogits = net.AuxLogits, None  # the aux head needs 299 px; it is not used for features
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 96, 96))
    net.AuxLogits = aux
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def make_clip(root: Path, seed: int = 0) -> tuple[Path, Path, str]:
    """A tiny open_clip config + random weights: ``(config.json, weights.safetensors, model name)``."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    name = "stylus-tiny-clip"
    cfg = root / f"{name}.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = root / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg, weights, name


def random_image(rng: np.random.Generator, size: int = 64) -> Any:
    """A smooth random image: a colour gradient plus a random block (distinct features per image)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    c0, c1, c2 = rng.uniform(0, 255, 3), rng.uniform(-200, 200, 3), rng.uniform(-200, 200, 3)
    arr = c0 + c1 * x[..., None] + c2 * y[..., None]
    x0, y0 = rng.integers(0, size // 2, 2)
    arr[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_images(
    folder: Path,
    n: int,
    seed: int,
    prompt: str | None = None,
    kind: str = "stylus",
    repeat: bool = False,
    size: int = 64,
) -> list[Path]:
    """``n`` PNGs ``NNN-seedS.png`` (one repeated image with ``repeat``), each with a sidecar when
    ``prompt`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    first = random_image(rng, size)
    paths = []
    for i in range(n):
        img = first if repeat or i == 0 else random_image(rng, size)
        path = folder / f"{i:03d}-seed{i}.png"
        img.save(path)
        if prompt is not None:
            side = {
                "format": "stylus-image.v1",
                "user_prompt": prompt,
                "prompt": prompt + ", debias",
                "seed": i,
                "baseline": kind == "baseline",
            }
            path.with_suffix(".json").write_text(json.dumps(side))
        paths.append(path)
    return paths
