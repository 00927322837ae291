"""The render worker: one resident diffusers pipeline that renders adapters with and without them.

:class:`AdapterRenderer` is plain Python (no Beam): the Beam model handler builds one per worker in
``load_model`` and calls :meth:`AdapterRenderer.render_card` for each adapter. Per adapter it

1. checks the card's base-model architecture against the pipeline's (``incompatible_base``;
   :func:`stylus_docs.diffusion.card_architecture`);
2. fetches the verified weights from the :class:`~stylus_docs.diffusion.AdapterStore`
   (``download_failed``);
3. classifies the file from its safetensors header (:func:`stylus_docs.formats.inspect_file`): LoHa,
   LoKr, checkpoints and unknown files are ``unsupported_format`` with the reason, never loaded;
4. loads it in a :class:`~stylus_docs.diffusion.LoraSession`: a LoRA / LoCon / DoRA with
   ``load_lora_weights`` (diffusers converts Kohya/A1111 keys itself; the session checks that LoRA layers
   were actually injected), a textual inversion with ``load_textual_inversion`` under a token derived from
   the adapter (``load_failed`` otherwise);
5. renders the probe prompts that have no cached no-adapter image with the adapter off (LoRA disabled;
   a textual inversion's token is absent from those prompts), then the probe prompts with the adapter:
   the LoRA at the card's weight (fused by default), or the token put into each prompt (in place of the
   trigger word, else appended), at seeds ``base_seed + i``;
6. unfuses and unloads, restoring the touched base weights bit-exactly from a resident copy;
7. writes PNGs under ``out_dir/rendered/<adapter>/`` and returns image rows for the images table (the
   with-adapter row's ``prompt`` is the prompt as sent, token included).

Every failure of one adapter becomes a status with the error text; the pipeline is left clean for the
next adapter. Only a failure to restore the pipeline itself propagates (the worker is then unusable).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs import formats
from stylus_docs.atomic import atomic_write_bytes
from stylus_docs.diffusion import (
    AdapterStore,
    LoraSession,
    PipelineStateError,
    PristineWeights,
    card_architecture,
    error_text,
    insert_token,
    load_base_pipeline,
    normalize_architecture,
    pipeline_architecture,
    textual_inversion_token,
)
from stylus_docs.errors import SkipRecord
from stylus_docs.render.config import RenderConfig
from stylus_docs.render.prompts import adapter_weight, image_relpath, probe_prompts
from stylus_docs.secrets import redact

logger = logging.getLogger(__name__)


@dataclass
class RenderResult:
    """Outcome of rendering one adapter.

    Args:
        status: One of :data:`~stylus_docs.render.config.RENDER_STATUSES`.
        error: Why, when ``status`` is not ``ok`` (already redacted).
        load_s: Seconds spent loading (and fusing) the adapter.
        render_s: Seconds spent rendering (with and without the adapter).
        images: Image rows for the images table (empty unless ``ok``).
    """

    status: str
    error: str | None = None
    load_s: float = 0.0
    render_s: float = 0.0
    images: list[dict[str, Any]] = field(default_factory=list)

    def card_fields(self) -> dict[str, Any]:
        """The adapters-table columns this stage sets."""
        return {
            "render_status": self.status,
            "render_error": self.error,
            "render_load_s": round(self.load_s, 4),
            "render_s": round(self.render_s, 4),
        }


class AdapterRenderer:
    """A resident pipeline that renders adapters one after another.

    Args:
        config: The render settings.
        pipe: An already loaded pipeline (tests, benchmarks); loaded from ``config.pipeline`` when None.
    """

    def __init__(self, config: RenderConfig, pipe: Any = None) -> None:
        import torch

        self.config = config
        self._torch = torch
        if pipe is None:
            pipe = load_base_pipeline(
                config.pipeline,
                device=config.device,
                dtype=config.torch_dtype_name,
                allow_hub=config.allow_hub,
            ).pipe
        self.pipe = pipe
        self.family = normalize_architecture(config.base_family) or pipeline_architecture(self.pipe)
        self.scheduler_name = type(self.pipe.scheduler).__name__
        self.store = AdapterStore(config.cache_dir, config=config.download)
        self.out_dir = Path(config.out_dir)
        self.stats: Counter[str] = Counter()
        self.timings: Counter[str] = Counter()  # seconds by phase, for benchmarks
        self._baseline: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._pristine = PristineWeights()  # resident copies of the base weights, kept across adapters
        self._serial = 0

    # -- public ---------------------------------------------------------------------------------

    def render_card(self, card: Mapping[str, Any]) -> RenderResult:
        """Render one adapter with and without its LoRA; never raises for a bad adapter.

        Args:
            card: AdapterCard dict (``adapter_id``, ``example_prompts``, ``trigger_words``,
                ``recommended_weight``, ``download_url``, ``sha256``, ``file_name``, ``base_model``).

        Returns:
            The status, timings and image rows.

        Raises:
            PipelineStateError: the base weights could not be restored (the worker is unusable).
        """
        result = self._render_card(card)
        self.stats[f"adapters_{result.status}"] += 1
        if result.status != "ok":
            logger.info("render %s: %s (%s)", card.get("adapter_id"), result.status, result.error)
        return result

    # -- steps ----------------------------------------------------------------------------------

    def _render_card(self, card: Mapping[str, Any]) -> RenderResult:
        cfg = self.config
        if cfg.check_base_model:
            family = card_architecture(card.get("base_model"))
            if family is not None and family != self.family:
                return RenderResult(
                    "incompatible_base",
                    f"card base model {card.get('base_model')!r} is {family}, "
                    f"the render pipeline is {self.family}",
                )
        try:
            t0 = time.perf_counter()
            # The build's download stage hands over the verified file; standalone use fetches here.
            weights = self.store.path(card, verified=card.get("weights_path"))
            self.timings["download"] += time.perf_counter() - t0
        except SkipRecord as exc:
            return RenderResult("download_failed", redact(f"{exc.reason}: {exc.detail}"))
        t0 = time.perf_counter()
        fmt = formats.inspect_file(weights)
        ok, status, reason = formats.render_verdict(fmt)
        self.timings["inspect"] += time.perf_counter() - t0
        if not ok:
            return RenderResult(status, redact(f"{fmt.format}: {reason}"))

        session = LoraSession(self.pipe, self._pristine)
        try:
            return self._render_adapter(session, card, weights, fmt)
        finally:
            # Outside the per-adapter boundary: a pipeline that cannot be put back stops the worker.
            t0 = time.perf_counter()
            session.unload()
            self.timings["unload"] += time.perf_counter() - t0

    def _render_adapter(
        self, session: LoraSession, card: Mapping[str, Any], weights: Path, fmt: formats.AdapterFormat
    ) -> RenderResult:
        cfg = self.config
        adapter_id = str(card.get("adapter_id") or "")
        prompts = probe_prompts(card, cfg.prompts_per_adapter)
        seeds = [cfg.base_seed + i for i in range(len(prompts))]
        self._serial += 1
        name = f"adapter{self._serial}"
        embedding = fmt.format == "textual_inversion"
        weight: float | None = None
        with_prompts = prompts
        result = RenderResult("ok")
        t_load = time.perf_counter()
        try:
            if embedding:
                triggers = [str(t) for t in card.get("trigger_words") or [] if str(t).strip()]
                own = [fmt.token] if fmt.convention == "diffusers" and fmt.token else []
                token = textual_inversion_token([*triggers, *own], f"adapter-{self._serial}")
                session.load_textual_inversion(weights, token)
                trigger = triggers[0] if triggers else None
                with_prompts = [insert_token(p, token, trigger) for p in prompts]
            else:
                weight = adapter_weight(card, cfg.default_weight, cfg.max_abs_weight)
                session.load_lora(weights, name)
        except SkipRecord as exc:
            return RenderResult("load_failed", exc.detail)
        t_loaded = time.perf_counter()
        self.timings["load"] += t_loaded - t_load
        try:
            keys = list(zip(prompts, seeds, strict=True))
            # This adapter's no-adapter PNGs, taken now: the shared cache may evict them while we work.
            baselines = {k: self._baseline[k] for k in keys if k in self._baseline}
            missing = [k for k in keys if k not in baselines]
            for key in baselines:
                self._baseline.move_to_end(key)  # least recently used goes first
            self.stats["baseline_hits"] += len(baselines)
            self.stats["baseline_misses"] += len(missing)
            if missing:
                with session.disabled():
                    arrays = self._run([p for p, _ in missing], [s for _, s in missing])
                if any(not _finite(a) for a in arrays):
                    return RenderResult(
                        "nan_output", "the base pipeline produced NaN/inf pixels without the adapter"
                    )
                for key, arr in zip(missing, arrays, strict=True):
                    baselines[key] = _png(arr)
                    self._remember_baseline(key, baselines[key])
            t_fuse = time.perf_counter()
            self.timings["render_without"] += t_fuse - t_loaded

            # A textual inversion has no weight: it acts through the token in ``with_prompts``.
            with session.applied({} if weight is None else {name: weight}, fuse=cfg.fuse) as applied:
                t_fused = time.perf_counter()
                self.timings["fuse"] += t_fused - t_fuse
                with_arrays = self._run(with_prompts, seeds)
                t_done = time.perf_counter()
            self.timings["render_with"] += t_done - t_fused
            self.timings["unload"] += applied.restore_s
            result.load_s = (t_loaded - t_load) + (t_fused - t_fuse)
            result.render_s = (t_fuse - t_loaded) + (t_done - t_fused)
            if any(not _finite(a) for a in with_arrays):
                result.status, result.error = "nan_output", "NaN/inf pixels with the adapter applied"
                return result
            t0 = time.perf_counter()
            result.images = self._write_images(
                adapter_id, prompts, with_prompts, seeds, weight, with_arrays, baselines
            )
            self.timings["save"] += time.perf_counter() - t0
            return result
        except PipelineStateError:
            raise
        except Exception as exc:  # noqa: BLE001 - boundary: a render error (OOM, bad prompt) fails one adapter
            logger.warning("render failed for %s", adapter_id, exc_info=True)
            return RenderResult("render_failed", error_text(exc))

    def _run(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        """Render ``prompts`` at ``seeds`` in batches; returns float arrays (H, W, 3) in [0, 1]."""
        torch = self._torch
        cfg = self.config
        out: list[Any] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), cfg.batch_size):
                chunk = prompts[start : start + cfg.batch_size]
                # CPU generators: the same seed gives the same latents on every device.
                gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + cfg.batch_size]]
                images = self.pipe(
                    prompt=chunk,
                    negative_prompt=[cfg.negative_prompt] * len(chunk),
                    num_inference_steps=cfg.steps,
                    guidance_scale=cfg.cfg_scale,
                    width=cfg.width,
                    height=cfg.height,
                    generator=gens,
                    output_type="np",
                ).images
                out.extend(images[i] for i in range(len(chunk)))
        return out

    def _remember_baseline(self, key: tuple[str, int], png: bytes) -> None:
        self._baseline[key] = png
        self._baseline.move_to_end(key)
        while len(self._baseline) > self.config.baseline_cache_size:
            self._baseline.popitem(last=False)

    def _write_images(
        self,
        adapter_id: str,
        prompts: list[str],
        with_prompts: list[str],
        seeds: list[int],
        weight: float | None,
        with_arrays: list[Any],
        baselines: Mapping[tuple[str, int], bytes],
    ) -> list[dict[str, Any]]:
        """Image rows; ``weight`` is None for a textual inversion (its token is in ``with_prompts``)."""
        cfg = self.config
        rows: list[dict[str, Any]] = []
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            for with_adapter in (False, True):
                active = with_adapter and weight is not None
                png = _png(with_arrays[i]) if with_adapter else baselines[(prompt, seed)]
                rel = image_relpath(adapter_id, with_adapter, i, seed)
                atomic_write_bytes(self.out_dir / rel, png)
                rows.append(
                    {
                        "adapter_id": adapter_id,
                        "image_id": f"rendered:{adapter_id}:{'with' if with_adapter else 'without'}:{i}",
                        "origin": "rendered",
                        "url": None,
                        "path": rel,
                        "prompt": with_prompts[i] if with_adapter else prompt,
                        "negative_prompt": cfg.negative_prompt,
                        "seed": seed,
                        "steps": cfg.steps,
                        "sampler": self.scheduler_name,
                        "cfg_scale": float(cfg.cfg_scale),
                        "width": cfg.width,
                        "height": cfg.height,
                        "nsfw_level": None,
                        "lora_weights": json.dumps({adapter_id: weight} if active else {}),
                        "with_adapter": with_adapter,
                        "weight": float(weight) if active else None,
                        "scheduler": self.scheduler_name,
                    }
                )
        return rows


def _finite(arr: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(arr).all())


def _png(arr: Any) -> bytes:
    """Encode a float (H, W, 3) array in [0, 1] as PNG bytes (deterministic)."""
    import numpy as np
    from PIL import Image

    pixels = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
