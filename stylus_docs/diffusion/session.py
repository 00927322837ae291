"""The adapter lifecycle of a resident pipeline: load → set weights → fuse → restore exactly → unload.

:class:`LoraSession` is the only code that loads, weights, fuses or removes adapters (render and generate
both go through it)::

    with LoraSession(pipe) as session:            # leaving the block unloads every adapter
        session.load_lora(path, "a1")              # SkipRecord("load_failed", why) for a bad file
        with session.disabled():
            base = pipe(...)                       # LoRA layers bypassed
        with session.applied({"a1": 0.8}):         # set_adapters + fuse; restored bit-exactly on exit
            styled = pipe(...)

Textual inversions load into the tokenizer and text encoder (:meth:`LoraSession.load_textual_inversion`):
they have no weight and no off switch, they act wherever their token is in the prompt
(:func:`insert_token`), and the session removes them on unload.

Why restore from copies (:class:`PristineWeights`) rather than ``pipe.unfuse_lora()``: unfusing
subtracts each adapter's delta again, which in fp16 leaves rounding error in the base weights; over
thousands of adapters (the render stage) or prompts (batch generation) it accumulates. It is also slow (a
``B @ A`` product per layer and adapter, all over again); the copy is one ``copy_`` per layer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs.errors import SkipRecord
from stylus_docs.secrets import redact

logger = logging.getLogger(__name__)

#: Pipeline components that diffusers can put LoRA layers into.
LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
#: (tokenizer, text encoder) attribute pairs a textual inversion can go into, and its SDXL key for each.
_TI_PAIRS = (("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g"))
_TOKEN_CHARS = re.compile(r"[^a-z0-9_-]+")


class PipelineStateError(RuntimeError):
    """The pipeline could not be put back as it was; the worker holding it is unusable."""


def error_text(exc: BaseException) -> str:
    """One bounded, redacted line: the exception type and the start of its message."""
    text = " ".join(str(exc).split())
    return redact(f"{type(exc).__name__}: {text}")[:500]


def lora_layers(pipe: Any) -> list[Any]:
    """PEFT tuner layers (LoRA-wrapped Linear/Conv) currently in the pipeline's components."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for name in LORA_COMPONENTS:
        component = getattr(pipe, name, None)
        if component is None or not hasattr(component, "modules"):
            continue
        layers.extend(m for m in component.modules() if isinstance(m, BaseTunerLayer))
    return layers


class PristineWeights:
    """Base weights as they were before any fuse, kept on the weights' own device.

    A copy is taken the first time a LoRA layer wraps a base layer and kept for the life of the worker,
    so later fuses of other adapters into the same layers copy nothing.
    """

    def __init__(self) -> None:
        self._saved: dict[int, tuple[Any, Any | None]] = {}

    def __len__(self) -> int:
        return len(self._saved)

    def snapshot(self, pipe: Any) -> None:
        """Copy the base weights of LoRA-wrapped layers not seen before. Call it while nothing is fused."""
        for layer in lora_layers(pipe):
            if layer.merged:
                raise RuntimeError("snapshot taken while an adapter is fused: the copy would not be pristine")
            base = layer.get_base_layer()
            if id(base) not in self._saved:
                bias = getattr(base, "bias", None)
                self._saved[id(base)] = (
                    base.weight.detach().clone(),
                    bias.detach().clone() if bias is not None else None,
                )

    def unfuse(self, pipe: Any) -> int:
        """Put every fused layer's base weights back bit-exactly and mark nothing merged; returns how many
        layers were restored."""
        import torch

        restored = 0
        with torch.no_grad():
            for layer in lora_layers(pipe):
                if not layer.merged:
                    continue
                base = layer.get_base_layer()
                saved = self._saved.get(id(base))
                if saved is None:  # fused without a snapshot: fall back to PEFT's subtraction
                    layer.unmerge()
                    continue
                weight, bias = saved
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)
                layer.merged_adapters.clear()
                restored += 1
        if hasattr(pipe, "_merged_adapters"):
            pipe._merged_adapters = set()  # diffusers' own record of what fuse_lora merged
        return restored


@dataclass(slots=True)
class Applied:
    """What :meth:`LoraSession.applied` did, with its timings (``restore_s`` is set on leaving).

    Attributes:
        fused: the adapters were fused into the base weights.
        set_s: seconds in ``set_adapters`` (or ``disable_lora`` for an empty set).
        fuse_s: seconds snapshotting and fusing.
        restore_s: seconds restoring the base weights.
    """

    fused: bool = False
    set_s: float = 0.0
    fuse_s: float = 0.0
    restore_s: float = 0.0


@dataclass(slots=True)
class _Embedding:
    token: str
    added: dict[str, list[str]]  # tokenizer attribute → tokens added to it (multi-vector: token, token_1 …)


class LoraSession:
    """The adapters loaded into one resident pipeline.

    Args:
        pipe: the diffusers pipeline.
        pristine: the resident copies of the base weights (kept across sessions by long-lived workers,
            so a layer is copied once per process); a new one when None.
    """

    def __init__(self, pipe: Any, pristine: PristineWeights | None = None) -> None:
        self.pipe = pipe
        self.pristine = pristine if pristine is not None else PristineWeights()
        self._loras: dict[str, str] = {}  # adapter name → file
        self._embeddings: list[_Embedding] = []

    def __enter__(self) -> LoraSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unload()

    @property
    def loras(self) -> tuple[str, ...]:
        """Names of the LoRA adapters loaded, in load order."""
        return tuple(self._loras)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Tokens of the textual inversions loaded."""
        return tuple(e.token for e in self._embeddings)

    # -- loading -----------------------------------------------------------------------------------

    def load_lora(self, path: str | Path, name: str) -> None:
        """``load_lora_weights`` (diffusers converts Kohya/A1111 keys itself) and check that LoRA layers
        named ``name`` were injected.

        Raises:
            SkipRecord: ``load_failed`` with a bounded, redacted reason; the pipeline is left as before.
        """
        pipe = self.pipe
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - boundary: any loader error is this adapter's verdict
            logger.debug("load_lora_weights failed for %s", path, exc_info=True)
            self._forget(name)
            raise SkipRecord("load_failed", error_text(exc)) from None
        if not lora_layers(pipe) or name not in _listed(pipe):
            self._forget(name)
            raise SkipRecord("load_failed", "no tensor of the file matched a layer of the base model")
        self._loras[name] = str(path)

    def load_textual_inversion(self, path: str | Path, token: str) -> None:
        """Load a textual-inversion embedding under ``token`` (an SDXL ``clip_l``/``clip_g`` file into both
        text encoders). The tensors are read with safetensors here: given a path, diffusers would fall
        back to unpickling when safetensors refuses the file.

        Raises:
            SkipRecord: ``load_failed`` (wrong width, token taken, no text encoder …); nothing stays loaded.
        """
        from safetensors.torch import load_file

        pipe = self.pipe
        embedding = _Embedding(token, {})
        try:
            tensors = load_file(str(path), device="cpu")
            pairs = [(tok, enc, key) for tok, enc, key in _TI_PAIRS if getattr(pipe, enc, None) is not None]
            if not pairs:
                raise ValueError("the pipeline has no text encoder")
            if {"clip_l", "clip_g"} & set(tensors):
                targets = [(tok, enc, tensors[key]) for tok, enc, key in pairs if key in tensors]
            else:
                tok, enc, _ = pairs[0]
                targets = [(tok, enc, tensors)]
            for tok_name, enc_name, state in targets:
                tokenizer = getattr(pipe, tok_name)
                before = set(tokenizer.get_vocab())
                embedding.added[tok_name] = []
                pipe.load_textual_inversion(
                    state, token=token, tokenizer=tokenizer, text_encoder=getattr(pipe, enc_name)
                )
                embedding.added[tok_name] = sorted(set(tokenizer.get_vocab()) - before)
        except Exception as exc:  # noqa: BLE001 - boundary: any loader error is this adapter's verdict
            logger.debug("load_textual_inversion failed for %s", path, exc_info=True)
            self._unload_embedding(embedding)
            raise SkipRecord("load_failed", error_text(exc)) from None
        self._embeddings.append(embedding)

    # -- weights -----------------------------------------------------------------------------------

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The block runs with every LoRA layer bypassed (textual inversions act on their token only)."""
        if not self._loras:
            yield
            return
        self.pipe.disable_lora()
        try:
            yield
        finally:
            self.pipe.enable_lora()

    @contextmanager
    def applied(self, weights: Mapping[str, float], fuse: bool = True) -> Iterator[Applied]:
        """The block runs with exactly the adapters of ``weights`` at those weights.

        ``set_adapters(names, weights)`` and, with ``fuse``, ``fuse_lora`` into the base weights, which
        are put back bit-exactly when the block ends (also when it raises). Empty ``weights``: every
        LoRA layer is bypassed for the block.

        Raises:
            KeyError: a name in ``weights`` is not loaded.
            PipelineStateError: the base weights could not be restored.
        """
        unknown = [n for n in weights if n not in self._loras]
        if unknown:
            raise KeyError(f"adapters not loaded: {unknown}")
        pipe = self.pipe
        state = Applied()
        disabled = False
        t0 = time.perf_counter()
        try:
            if weights:
                pipe.enable_lora()
                pipe.set_adapters(list(weights), adapter_weights=[float(w) for w in weights.values()])
                state.set_s = time.perf_counter() - t0
                if fuse:
                    t1 = time.perf_counter()
                    self.pristine.snapshot(pipe)  # copies only layers not seen before: ~free after the first
                    state.fused = True  # from here on a failure may leave layers merged: restore them
                    pipe.fuse_lora(adapter_names=list(weights), lora_scale=1.0)
                    state.fuse_s = time.perf_counter() - t1
            elif self._loras:
                pipe.disable_lora()
                disabled = True
                state.set_s = time.perf_counter() - t0
            yield state
        finally:
            if state.fused:
                t2 = time.perf_counter()
                self._restore()
                state.restore_s = time.perf_counter() - t2
            if disabled:
                pipe.enable_lora()

    # -- unloading ---------------------------------------------------------------------------------

    def unload(self) -> None:
        """Restore any fused weights, remove every LoRA layer and every textual-inversion token.

        Raises:
            PipelineStateError: the base weights could not be restored.
        """
        pipe = self.pipe
        if any(layer.merged for layer in lora_layers(pipe)):
            self._restore()
        if self._loras or _listed(pipe):
            pipe.unload_lora_weights()
        self._loras.clear()
        while self._embeddings:
            self._unload_embedding(self._embeddings.pop())

    def _restore(self) -> None:
        try:
            self.pristine.unfuse(self.pipe)
        except Exception as exc:  # noqa: BLE001 - boundary: re-raised as the one error that stops the worker
            logger.error("restoring the base weights failed", exc_info=True)
            raise PipelineStateError(f"cannot restore the base weights: {error_text(exc)}") from exc

    def _forget(self, name: str) -> None:
        # A failed load may leave half-injected layers behind; remove them so later renders are clean.
        try:
            if name in _listed(self.pipe):
                self.pipe.delete_adapters(name)
        except (ValueError, KeyError, AttributeError) as exc:
            logger.debug("could not delete adapter %s after a failed load: %s", name, exc)

    def _unload_embedding(self, embedding: _Embedding) -> None:
        for tok_name, enc_name, _ in _TI_PAIRS:
            added = embedding.added.get(tok_name)
            if added:
                self.pipe.unload_textual_inversion(
                    tokens=added,
                    tokenizer=getattr(self.pipe, tok_name),
                    text_encoder=getattr(self.pipe, enc_name),
                )


def _listed(pipe: Any) -> set[str]:
    """Adapter names diffusers knows in any component."""
    try:
        adapters = pipe.get_list_adapters()
    except (ValueError, AttributeError):  # no PEFT layers anywhere
        return set()
    return {name for names in adapters.values() for name in names}


def textual_inversion_token(candidates: list[str], fallback: str, taken: set[str] | None = None) -> str:
    """The token a textual inversion is loaded under: ``<first usable candidate>``, else ``<fallback>``.

    Candidates are the adapter's trigger words (then its embedding's own name). The token is written as
    ``<slug>`` so it never matches a word of an ordinary prompt: with it absent the embedding has no
    effect, which is what keeps "without the adapter" renders and baselines clean. ``taken`` tokens get a
    ``-2``, ``-3`` … suffix (two embeddings with the same trigger word in one pipeline).
    """
    taken = taken or set()
    slug = ""
    for text in candidates:
        slug = _TOKEN_CHARS.sub("-", (text or "").lower().strip("<> ")).strip("-")[:40]
        if slug:
            break
    base = f"<{slug or _TOKEN_CHARS.sub('-', fallback.lower()).strip('-') or 'adapter'}>"
    token, n = base, 1
    while token in taken:
        n += 1
        token = f"{base[:-1]}-{n}>"
    return token


def insert_token(prompt: str, token: str, trigger: str | None = None) -> str:
    """``prompt`` with ``token`` in it: in place of the trigger word where the prompt has it (as a whole
    word, case-insensitively), else appended after a comma; unchanged when the token is already there."""
    if token in prompt:
        return prompt
    if trigger and trigger.strip():
        pattern = re.compile(rf"(?<!\w){re.escape(trigger.strip())}(?!\w)", re.IGNORECASE)
        replaced, count = pattern.subn(token, prompt, count=1)
        if count:
            return replaced
    return f"{prompt}, {token}" if prompt.strip() else token
