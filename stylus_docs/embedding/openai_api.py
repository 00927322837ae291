"""Embeddings through any OpenAI-compatible ``/v1/embeddings`` endpoint (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``): ``text-embedding-3-large`` (dim 3072) or another model by name."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from stylus_docs.embedding.protocol import embedder_info, l2_normalize
from stylus_docs.errors import FatalError, RetryableError
from stylus_docs.secrets import get_secret, redact


class OpenAIEmbedder:
    """OpenAI-compatible ``/v1/embeddings`` (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``).

    The SDK's own bounded retries (which honour ``Retry-After``) handle 429/5xx; what is still failing
    afterwards raises :class:`RetryableError` (transient) or :class:`FatalError` (auth, bad model).

    Args:
        model: model name (default ``text-embedding-3-large``).
        batch_size: texts per request.
        max_retries: the SDK's retries per request.
        timeout_s: per-request timeout.
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
        """L2-normalized float32 vectors of ``texts``, one request per batch."""
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
