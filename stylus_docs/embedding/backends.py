"""Loading an embedder by name: for the build (:func:`load_embedder`) and for queries of a release
(:func:`load_query_embedder`, from its manifest)."""

from __future__ import annotations

from typing import Any

from stylus_docs.embedding.clip import ClipTextEmbedder
from stylus_docs.embedding.minilm import MINILM_MODEL, MiniLMEmbedder, NumpyMiniLM
from stylus_docs.embedding.openai_api import OpenAIEmbedder
from stylus_docs.embedding.protocol import BACKENDS, DEFAULT_MODELS, Embedder, canonical_model_name
from stylus_docs.errors import FatalError


def load_embedder(name: str = "minilm", model: str | None = None, batch_size: int = 128) -> Embedder:
    """Load an embedder once (call from ``DoFn.setup`` or once per process).

    Args:
        name: backend (minilm, openai, clip).
        model: model name (openai) or ``ARCH[:weights path]`` (clip); minilm has one model.
        batch_size: texts per forward pass / request.

    Raises:
        FatalError: unknown backend, missing credentials or weights.
    """
    if name == "minilm":
        if model not in (None, "", DEFAULT_MODELS["minilm"]):
            raise FatalError(f"the minilm embedder ships only {DEFAULT_MODELS['minilm']}, not {model!r}")
        return MiniLMEmbedder(batch_size=batch_size)
    if name == "openai":
        return OpenAIEmbedder(model=model, batch_size=batch_size)
    if name == "clip":
        return ClipTextEmbedder(model=model, batch_size=batch_size)
    raise FatalError(f"unknown embedder {name!r}; choose one of {', '.join(BACKENDS)}")


def load_query_embedder(manifest_embedder: dict[str, Any]) -> Embedder:
    """The embedder for queries of a release, from its manifest's ``embedder`` entry.

    The MiniLM default gets :class:`NumpyMiniLM` (no torch: the query cold-start budget); anything else
    is :func:`load_embedder` with the manifest's name and model, so names mean the same on both sides.

    Raises:
        FatalError: when the release's embedder cannot be loaded here.
    """
    model = str(manifest_embedder.get("model") or manifest_embedder.get("name") or "")
    minilm = canonical_model_name(MINILM_MODEL)
    if minilm in (canonical_model_name(model), canonical_model_name(str(manifest_embedder.get("name", "")))):
        return NumpyMiniLM()
    try:
        return load_embedder(str(manifest_embedder.get("name") or model), manifest_embedder.get("model"))
    except (FatalError, ValueError, KeyError, ImportError, OSError) as exc:
        raise FatalError(f"cannot load the release's embedder {model!r} for queries: {exc}") from exc
