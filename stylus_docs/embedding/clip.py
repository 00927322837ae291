"""open_clip's text tower (``ViT-B-32``, dim 512) from a local weights file.

The weights come from ``--embedder-model ARCH:/path/to/weights`` or ``STYLUS_CLIP_WEIGHTS``; without them
loading fails with a clear message instead of trying a hub download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from stylus_docs.embedding.protocol import DEFAULT_MODELS, embedder_info, l2_normalize
from stylus_docs.errors import FatalError


class ClipTextEmbedder:
    """open_clip text tower from local weights (``ARCH:/path/weights`` or ``STYLUS_CLIP_WEIGHTS``).

    Args:
        model: ``ARCH[:weights path]`` (default ``$STYLUS_CLIP_MODEL``, else ``ViT-B-32``).
        batch_size: texts per forward pass.
    """

    def __init__(self, model: str | None = None, batch_size: int = 128) -> None:
        spec = model or os.environ.get("STYLUS_CLIP_MODEL") or DEFAULT_MODELS["clip"]
        arch, _, weights = spec.partition(":")
        weights = weights or os.environ.get("STYLUS_CLIP_WEIGHTS", "")
        if not weights or not os.path.isfile(weights):
            raise FatalError(
                f"the clip embedder needs local open_clip weights for {arch} (hub downloads are off): pass "
                f"--embedder-model {arch}:/path/to/open_clip_pytorch_model.bin or set STYLUS_CLIP_WEIGHTS"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import open_clip
        import torch

        self._torch = torch
        try:
            model_obj, _, _ = open_clip.create_model_and_transforms(arch, pretrained=weights, device="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise FatalError(f"cannot load open_clip {arch} from {weights}: {exc}") from exc
        model_obj.eval()
        self.model = model_obj
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.batch_size = batch_size
        self.info = embedder_info("clip", arch)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 vectors of ``texts`` (CLIP's 77-token context truncates)."""
        out: list[np.ndarray] = []
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size]))
                out.append(l2_normalize(self.model.encode_text(tokens).float().numpy()))
        return np.concatenate(out) if out else np.zeros((0, self.info.dim), dtype=np.float32)
