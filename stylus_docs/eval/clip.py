"""CLIP score with open_clip: ``100 × max(cos(image, text), 0)`` (torchmetrics' ``CLIPScore`` definition).

The model is built from open_clip's architecture config with ``pretrained=None`` (nothing is downloaded)
and its weights are loaded from a local file (``--clip-weights``: safetensors or a ``.pt`` state dict).
The tokenizer is open_clip's own (its BPE vocabulary ships with the package). ``--clip-config FILE.json``
registers an extra architecture (open_clip's model-config format) under the file's stem.

The paper reports CLIP with ViT-L/14 and a **best-of-N** aggregation: per (prompt, method, cfg) only the
highest-scoring of the N images is kept, then the mean is taken (``eval/metrics/clip.py`` of the
reference code). That inflates the score relative to the plain mean over images; it is available as
``best_of=True`` / ``--best-of`` and off by default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError
from stylus_docs.eval.common import ImageItem, load_into, load_state_dict, open_rgb, pick_device

log = logging.getLogger(__name__)


def register_config(path: str | os.PathLike[str]) -> str:
    """Register an open_clip model-config JSON; returns the model name (the file's stem)."""
    import open_clip

    p = Path(path)
    if not p.is_file():
        raise FatalError(f"--clip-config {path}: no such file")
    open_clip.add_model_config(str(p))
    return p.stem


class ClipScorer:
    """An open_clip model with local weights that scores (image, prompt) pairs.

    Args:
        model_name: open_clip architecture name (``ViT-L-14``, ``ViT-B-32``, or a registered config).
        weights: local state dict file (``--clip-weights``).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: images per forward pass.
        progress: show a progress bar (stderr).

    Raises:
        FatalError: unknown architecture, missing weights, weights that do not fit (one line).
    """

    def __init__(
        self,
        model_name: str,
        weights: str | os.PathLike[str] | None,
        device: str = "auto",
        batch_size: int = 32,
        progress: bool = False,
    ) -> None:
        import open_clip
        import torch

        state = load_state_dict(weights, "--clip-weights")
        if model_name not in open_clip.list_models():
            raise FatalError(
                f"--clip-model {model_name!r}: not an open_clip architecture (e.g. ViT-L-14, ViT-B-32; or "
                "give --clip-config FILE.json)"
            )
        self.device = pick_device(device)
        model, _train, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
        load_into(model, state, "--clip-weights", weights)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = max(1, batch_size)
        self.model_name = model_name
        self.progress = progress
        self._torch = torch

    def cosines(self, paths: Sequence[str | os.PathLike[str]], prompts: Sequence[str]) -> list[float]:
        """Cosine similarity of each image with its prompt."""
        torch = self._torch
        out: list[float] = []
        bar = None
        if self.progress and paths:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc="CLIP", unit="img", leave=False)
        with torch.no_grad():
            for start in range(0, len(paths), self.batch_size):
                chunk = list(paths[start : start + self.batch_size])
                texts = list(prompts[start : start + self.batch_size])
                pixels = torch.stack([self.preprocess(open_rgb(p)) for p in chunk]).to(self.device)
                tokens = self.tokenizer(texts).to(self.device)
                img = self.model.encode_image(pixels).float()
                txt = self.model.encode_text(tokens).float()
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                out.extend((img * txt).sum(dim=-1).cpu().tolist())
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def scores(self, paths: Sequence[str | os.PathLike[str]], prompts: Sequence[str]) -> list[float]:
        """CLIP score of each image: ``100 × max(cos, 0)``."""
        return [100.0 * max(c, 0.0) for c in self.cosines(paths, prompts)]


@dataclass(slots=True)
class ClipResult:
    """Per-image scores and their aggregate."""

    mean: float
    images: list[dict[str, Any]]
    best_of: bool
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "images": [{"path", "prompt", "score"}], "aggregation", "n_images", "n_prompts"}``."""
        return {
            "mean": self.mean,
            "images": self.images,
            "aggregation": "best_of" if self.best_of else "mean",
            "n_images": len(self.images),
            "n_prompts": self.n_prompts,
        }


def best_per_prompt(images: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The highest-scoring image of each prompt (first one on ties)."""
    best: dict[str, dict[str, Any]] = {}
    for row in images:
        cur = best.get(row["prompt"])
        if cur is None or row["score"] > cur["score"]:
            best[row["prompt"]] = row
    return best


def clip_score(scorer: ClipScorer, items: Sequence[ImageItem], best_of: bool = False) -> ClipResult:
    """Score every image against its prompt; the mean over images, or with ``best_of`` the mean over
    prompts of each prompt's best image (the paper's aggregation)."""
    if not items:
        raise FatalError("no images to score")
    scores = scorer.scores([it.path for it in items], [it.prompt or "" for it in items])
    rows = [
        {"path": str(it.path), "prompt": it.prompt, "score": round(s, 6)}
        for it, s in zip(items, scores, strict=True)
    ]
    exact = dict(zip((str(it.path) for it in items), scores, strict=True))
    best = best_per_prompt(rows)
    if best_of:
        chosen = [exact[r["path"]] for r in best.values()]
        for r in best.values():
            r["best"] = True
    else:
        chosen = list(exact.values())
    return ClipResult(sum(chosen) / len(chosen), rows, best_of, len(best))
