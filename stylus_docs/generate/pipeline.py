"""The generation pipeline: the diffusion layer's base pipeline with generation's scheduler.

Loading, device and dtype, the architecture and the sidecar description are
:mod:`stylus_docs.diffusion`'s; this module only restricts generation to the architectures it is tested
on and puts in the DPM++ 2M Karras scheduler.
"""

from __future__ import annotations

import logging
from typing import Any

from stylus_docs.diffusion.family import BASE_MODEL_OF_ARCHITECTURE
from stylus_docs.diffusion.pipeline import (
    LoadedPipeline,
    load_base_pipeline,
    resolve_device,
    source_architecture,
)
from stylus_docs.errors import FatalError

log = logging.getLogger(__name__)

#: Pipeline classes generation runs (SD 1.x and 2.x share the first; the UNet tells them apart).
GENERATE_CLASSES: tuple[str, ...] = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
#: Release ``base_model`` that matches each architecture generation runs (Civitai's names).
BASE_MODEL_OF_KIND: dict[str, str] = {k: BASE_MODEL_OF_ARCHITECTURE[k] for k in ("sd15", "sd2", "sdxl")}
SCHEDULER_NAME = "DPM++ 2M Karras"

__all__ = [
    "BASE_MODEL_OF_KIND",
    "SCHEDULER_NAME",
    "LoadedPipeline",
    "detect_kind",
    "load_pipeline",
    "make_scheduler",
]


def detect_kind(source: str) -> tuple[str, str]:
    """``(architecture, class_name)`` of a pipeline from its ``model_index.json`` (nothing loaded).

    Raises:
        FatalError: not a pipeline, or a class generation does not run.
    """
    kind, name = source_architecture(source)
    if name not in GENERATE_CLASSES or kind not in BASE_MODEL_OF_KIND:
        raise FatalError(f"unsupported pipeline class {name!r} (supported: {', '.join(GENERATE_CLASSES)})")
    return kind, name


def make_scheduler(pipe: Any) -> Any:
    """DPM++ 2M Karras: ``DPMSolverMultistepScheduler`` (order 2, dpmsolver++) with Karras sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2
    )


def load_pipeline(source: str, device: str | None = "auto", dtype: str | None = None) -> LoadedPipeline:
    """Load the base pipeline once (SD 1.5, SD 2.x or SDXL, detected), with the DPM++ 2M Karras scheduler.

    Args:
        source: local pipeline folder or a repo id present in the local HF cache.
        device: ``cpu``, ``cuda`` or ``auto``.
        dtype: ``float16`` / ``bfloat16`` / ``float32``; default fp16 on CUDA, fp32 on CPU.
    """
    detect_kind(source)
    loaded = load_base_pipeline(source, device=resolve_device(device), dtype=dtype)
    loaded.pipe.scheduler = make_scheduler(loaded.pipe)
    return loaded
