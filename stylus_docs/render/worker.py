"""The render worker: one resident diffusers pipeline that renders adapters with and without their LoRA.

:class:`AdapterRenderer` is plain Python (no Beam): the Beam model handler builds one per worker in
``load_model`` and calls :meth:`AdapterRenderer.render_card` for each adapter. Per adapter it

1. checks the card's base-model family against the pipeline's (``incompatible_base``);
2. fetches the verified weights from the :class:`~stylus_docs.download.AdapterCache`
   (``download_failed``);
3. ``load_lora_weights`` — diffusers converts Kohya/A1111 keys itself — and checks that LoRA layers were
   actually injected (``load_failed`` otherwise);
4. renders the probe prompts that have no cached no-adapter image with the LoRA disabled, then the
   probe prompts with the LoRA at the card's weight (fused by default), at seeds ``base_seed + i``;
5. unfuses and unloads, restoring the touched base weights bit-exactly from a resident copy;
6. writes PNGs under ``out_dir/rendered/<adapter>/`` and returns image rows for the images table.

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

from stylus_docs.atomic import atomic_write_bytes
from stylus_docs.download import AdapterCache
from stylus_docs.errors import FatalError, SkipRecord
from stylus_docs.lora_state import PristineWeights, lora_layers
from stylus_docs.render.config import RenderConfig
from stylus_docs.render.prompts import adapter_weight, base_model_family, image_relpath, probe_prompts
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


def pipeline_family(pipe: Any) -> str:
    """Base-model family of a loaded pipeline (``sd1``, ``sd2``, ``sdxl``, ``sd3``, ``flux``, …)."""
    name = type(pipe).__name__.lower()
    if "xl" in name:
        return "sdxl"
    if "flux" in name:
        return "flux"
    if "stablediffusion3" in name:
        return "sd3"
    unet = getattr(pipe, "unet", None)
    if unet is not None and getattr(unet.config, "cross_attention_dim", None) == 1024:
        return "sd2"
    return "sd1"


def load_pipeline(config: RenderConfig) -> Any:
    """Load the base pipeline once, on the configured device and dtype, with progress bars off.

    Raises:
        FatalError: the pipeline cannot be loaded (bad path, not a diffusers pipeline, …).
    """
    import diffusers
    import torch
    from diffusers import DiffusionPipeline

    dtype = getattr(torch, config.torch_dtype_name)
    # diffusers renamed torch_dtype to dtype (the old name warns from 0.36 on).
    dtype_key = "dtype" if _version_tuple(diffusers.__version__) >= (0, 36) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: dtype, "local_files_only": not config.allow_hub}
    index = Path(config.pipeline) / "model_index.json"
    if index.is_file() and "safety_checker" in json.loads(index.read_text(encoding="utf-8")):
        # Renders are for judging adapters; a safety checker would blank NSFW renders and add latency.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(config.pipeline, **kwargs)
    except (OSError, ValueError) as exc:
        raise FatalError(
            f"render: cannot load the pipeline {config.pipeline!r}: {redact(str(exc))[:300]}"
        ) from None
    pipe = pipe.to(config.device)
    pipe.set_progress_bar_config(disable=True)
    _quiet_loaders()
    return pipe


def _quiet_loaders() -> None:
    """Silence what the libraries print per adapter load; the worker reports each outcome itself.

    diffusers logs a failed LoRA load at ERROR with the whole state-dict error (a thousand lines for one
    mismatched file) and then raises; the worker catches it and keeps a bounded, redacted line in
    ``render_error``. transformers draws a "Loading weights" bar for every adapter's text-encoder part.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    logging.getLogger("diffusers.loaders.peft").setLevel(logging.CRITICAL)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


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
        self.pipe = pipe if pipe is not None else load_pipeline(config)
        self.family = config.base_family or pipeline_family(self.pipe)
        self.scheduler_name = type(self.pipe.scheduler).__name__
        self.cache = AdapterCache(config.cache_dir, config.download)
        self.out_dir = Path(config.out_dir)
        self.stats: Counter[str] = Counter()
        self.timings: Counter[str] = Counter()  # seconds by phase, for benchmarks
        self._baseline: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._pristine = PristineWeights()
        self._serial = 0

    # -- public ---------------------------------------------------------------------------------

    def render_card(self, card: Mapping[str, Any]) -> RenderResult:
        """Render one adapter with and without its LoRA; never raises for a bad adapter.

        Args:
            card: AdapterCard dict (``adapter_id``, ``example_prompts``, ``trigger_words``,
                ``recommended_weight``, ``download_url``, ``sha256``, ``file_name``, ``base_model``).

        Returns:
            The status, timings and image rows.
        """
        result = self._render_card(card)
        self.stats[f"adapters_{result.status}"] += 1
        if result.status != "ok":
            logger.info("render %s: %s (%s)", card.get("adapter_id"), result.status, result.error)
        return result

    # -- steps ----------------------------------------------------------------------------------

    def _render_card(self, card: Mapping[str, Any]) -> RenderResult:
        cfg = self.config
        adapter_id = str(card.get("adapter_id") or "")
        if cfg.check_base_model:
            family = base_model_family(card.get("base_model"))
            if family is not None and family != self.family:
                return RenderResult(
                    "incompatible_base",
                    f"card base model {card.get('base_model')!r} is {family}, "
                    f"the render pipeline is {self.family}",
                )
        try:
            t0 = time.perf_counter()
            # The build's download stage hands over the verified file; standalone use fetches here.
            given = card.get("weights_path")
            weights = Path(given) if given else self.cache.fetch(card)
            self.timings["download"] += time.perf_counter() - t0
        except SkipRecord as exc:
            return RenderResult("download_failed", redact(f"{exc.reason}: {exc.detail}"))

        prompts = probe_prompts(card, cfg.prompts_per_adapter)
        seeds = [cfg.base_seed + i for i in range(len(prompts))]
        weight = adapter_weight(card, cfg.default_weight, cfg.max_abs_weight)
        self._serial += 1
        name = f"adapter{self._serial}"
        pipe = self.pipe
        result = RenderResult("ok")
        fused = False
        loaded = False
        try:
            t_load = time.perf_counter()
            try:
                pipe.load_lora_weights(str(weights), adapter_name=name)
                loaded = True
                layers = lora_layers(pipe)
                if not layers or name not in {
                    a for names in pipe.get_list_adapters().values() for a in names
                }:
                    return RenderResult(
                        "load_failed", "no tensor of the file matched a layer of the base model"
                    )
            except Exception as exc:  # noqa: BLE001 - boundary: any loader error is this adapter's verdict
                logger.debug("load_lora_weights failed for %s", adapter_id, exc_info=True)
                return RenderResult("load_failed", _error_text(exc))
            t_loaded = time.perf_counter()
            self.timings["load"] += t_loaded - t_load

            keys = list(zip(prompts, seeds, strict=True))
            # This adapter's no-adapter PNGs, taken now: the shared cache may evict them while we work.
            baselines = {k: self._baseline[k] for k in keys if k in self._baseline}
            missing = [k for k in keys if k not in baselines]
            for key in baselines:
                self._baseline.move_to_end(key)  # least recently used goes first
            self.stats["baseline_hits"] += len(baselines)
            self.stats["baseline_misses"] += len(missing)
            if missing:
                pipe.disable_lora()
                try:
                    arrays = self._run([p for p, _ in missing], [s for _, s in missing])
                finally:
                    pipe.enable_lora()
                if any(not _finite(a) for a in arrays):
                    return RenderResult(
                        "nan_output", "the base pipeline produced NaN/inf pixels without the adapter"
                    )
                for key, arr in zip(missing, arrays, strict=True):
                    baselines[key] = _png(arr)
                    self._remember_baseline(key, baselines[key])
            t_fuse = time.perf_counter()
            self.timings["render_without"] += t_fuse - t_loaded

            pipe.set_adapters([name], [weight])
            if cfg.fuse:
                fused = True
                self._pristine.snapshot(pipe)
                pipe.fuse_lora(adapter_names=[name], lora_scale=1.0)
            t_fused = time.perf_counter()
            self.timings["fuse"] += t_fused - t_fuse
            with_arrays = self._run(prompts, seeds)
            t_done = time.perf_counter()
            self.timings["render_with"] += t_done - t_fused
            result.load_s = (t_loaded - t_load) + (t_fused - t_fuse)
            result.render_s = (t_fuse - t_loaded) + (t_done - t_fused)
            if any(not _finite(a) for a in with_arrays):
                result.status, result.error = "nan_output", "NaN/inf pixels with the adapter applied"
                return result
            t0 = time.perf_counter()
            result.images = self._write_images(adapter_id, prompts, seeds, weight, with_arrays, baselines)
            self.timings["save"] += time.perf_counter() - t0
            return result
        except Exception as exc:  # noqa: BLE001 - boundary: a render error (OOM, bad prompt) fails one adapter
            logger.warning("render failed for %s", adapter_id, exc_info=True)
            return RenderResult("render_failed", _error_text(exc))
        finally:
            if loaded or fused:
                t0 = time.perf_counter()
                self._unload(fused)
                self.timings["unload"] += time.perf_counter() - t0
            elif pipe.get_list_adapters():
                pipe.unload_lora_weights()

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

    def _unload(self, fused: bool) -> None:
        pipe = self.pipe
        if fused:
            # Not pipe.unfuse_lora(): subtracting the delta again leaves fp16 rounding error that would
            # accumulate over thousands of adapters; the resident copies put the weights back exactly.
            self._pristine.unfuse(pipe)
        pipe.unload_lora_weights()

    def _remember_baseline(self, key: tuple[str, int], png: bytes) -> None:
        self._baseline[key] = png
        self._baseline.move_to_end(key)
        while len(self._baseline) > self.config.baseline_cache_size:
            self._baseline.popitem(last=False)

    def _write_images(
        self,
        adapter_id: str,
        prompts: list[str],
        seeds: list[int],
        weight: float,
        with_arrays: list[Any],
        baselines: Mapping[tuple[str, int], bytes],
    ) -> list[dict[str, Any]]:
        cfg = self.config
        rows: list[dict[str, Any]] = []
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            for with_adapter in (False, True):
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
                        "prompt": prompt,
                        "negative_prompt": cfg.negative_prompt,
                        "seed": seed,
                        "steps": cfg.steps,
                        "sampler": self.scheduler_name,
                        "cfg_scale": float(cfg.cfg_scale),
                        "width": cfg.width,
                        "height": cfg.height,
                        "nsfw_level": None,
                        "lora_weights": json.dumps({adapter_id: weight} if with_adapter else {}),
                        "with_adapter": with_adapter,
                        "weight": float(weight) if with_adapter else None,
                        "scheduler": self.scheduler_name,
                    }
                )
        return rows


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


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


def _error_text(exc: BaseException) -> str:
    """One bounded, redacted line: the exception type and the start of its message."""
    text = " ".join(str(exc).split())
    return redact(f"{type(exc).__name__}: {text}")[:500]
