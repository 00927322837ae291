"""Loading the base diffusers pipeline once: kind detection, scheduler, device, dtype.

torch and diffusers are imported lazily (inside functions) so importing the toolkit stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError

log = logging.getLogger(__name__)

#: model_index.json ``_class_name`` → our kind.
PIPELINE_KINDS: dict[str, str] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
}
#: Release ``base_model`` that matches each kind (Civitai's names).
BASE_MODEL_OF_KIND: dict[str, str] = {"sd15": "SD 1.5", "sdxl": "SDXL 1.0"}
SCHEDULER_NAME = "DPM++ 2M Karras"


@dataclass(slots=True)
class LoadedPipeline:
    """A ready pipeline and what it is.

    Attributes:
        pipe: the diffusers pipeline.
        kind: ``sd15`` or ``sdxl``.
        class_name: the pipeline class from ``model_index.json``.
        source: the path or repo id it was loaded from.
        device: torch device string.
        dtype: torch dtype name.
        load_s: seconds spent loading.
    """

    pipe: Any
    kind: str
    class_name: str
    source: str
    device: str
    dtype: str
    load_s: float

    def describe(self) -> dict[str, Any]:
        """JSON description for sidecars."""
        return {
            "source": self.source,
            "kind": self.kind,
            "class": self.class_name,
            "base_model": BASE_MODEL_OF_KIND[self.kind],
            "device": self.device,
            "dtype": self.dtype,
        }


def read_model_index(source: str) -> dict[str, Any]:
    """``model_index.json`` of a local pipeline folder or of a repo already in the local HF cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise FatalError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return json.loads(index.read_text(encoding="utf-8"))
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach out to the hub from here
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(source, "model_index.json", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any hub lookup failure means "not available offline"
        raise FatalError(f"pipeline {source!r} is neither a local folder nor in the local HF cache") from exc
    return json.loads(Path(local).read_text(encoding="utf-8"))


def detect_kind(source: str) -> tuple[str, str]:
    """``(kind, class_name)`` of a pipeline from its ``model_index.json``."""
    index = read_model_index(source)
    name = str(index.get("_class_name") or "")
    if name not in PIPELINE_KINDS:
        raise FatalError(f"unsupported pipeline class {name!r} (supported: {', '.join(PIPELINE_KINDS)})")
    return PIPELINE_KINDS[name], name


def make_scheduler(pipe: Any) -> Any:
    """DPM++ 2M Karras: ``DPMSolverMultistepScheduler`` (order 2, dpmsolver++) with Karras sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2
    )


def resolve_device(device: str | None) -> str:
    """``cuda`` when asked for (or auto and available), else ``cpu``; a missing GPU is fatal if asked for."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FatalError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise FatalError(f"unknown device {device!r} (cpu, cuda)")
    return device


def load_pipeline(source: str, device: str | None = "auto", dtype: str | None = None) -> LoadedPipeline:
    """Load the base pipeline once (SD 1.5 or SDXL, detected), with the DPM++ 2M Karras scheduler.

    Args:
        source: local pipeline folder or a repo id present in the local HF cache.
        device: ``cpu``, ``cuda`` or ``auto``.
        dtype: ``float16`` / ``bfloat16`` / ``float32``; default fp16 on CUDA, fp32 on CPU.
    """
    import time

    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    kind, class_name = detect_kind(source)
    dev = resolve_device(device)
    dtype_name = dtype or ("float16" if dev.startswith("cuda") else "float32")
    if dtype_name not in ("float16", "bfloat16", "float32"):
        raise FatalError(f"unknown dtype {dtype_name!r}")
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, dtype_name)}
    if kind == "sd15":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(
        str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source, **kwargs
    )
    pipe.scheduler = make_scheduler(pipe)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, kind, class_name, str(source), dev, dtype_name, time.perf_counter() - t0)
