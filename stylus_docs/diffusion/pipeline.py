"""The one base-pipeline loader of render and generate, and the pipelines derived from it.

:func:`load_base_pipeline` loads a diffusers pipeline once: local files only (unless the caller allows
the Hub), on the requested device and dtype, safety checker off, progress bars off, the loaders' per-adapter
noise silenced. :func:`derived_pipeline` builds the image-to-image and inpainting pipelines from the
already loaded components (``AutoPipelineFor….from_pipe``): no second load, and adapters loaded into the
base pipeline act in them too, because the modules are the same objects.

torch and diffusers are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs.diffusion.family import BASE_MODEL_OF_ARCHITECTURE, index_architecture, pipeline_architecture
from stylus_docs.errors import FatalError
from stylus_docs.secrets import redact

logger = logging.getLogger(__name__)

#: dtypes a pipeline may be loaded in.
DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")
#: Tasks :func:`derived_pipeline` can build, with the diffusers auto-pipeline behind each.
TASKS: dict[str, str] = {
    "text2img": "AutoPipelineForText2Image",
    "img2img": "AutoPipelineForImage2Image",
    "inpaint": "AutoPipelineForInpainting",
}


@dataclass(slots=True)
class LoadedPipeline:
    """A ready pipeline and what it is.

    Attributes:
        pipe: the diffusers pipeline.
        kind: its architecture (:data:`~stylus_docs.diffusion.family.PIPELINE_ARCHITECTURES`).
        class_name: the pipeline class.
        source: the path or repo id it was loaded from.
        device: torch device string.
        dtype: torch dtype name.
        load_s: seconds spent loading.
        derived: pipelines built from ``pipe``'s components, by task (see :func:`derived_pipeline`).
    """

    pipe: Any
    kind: str
    class_name: str
    source: str
    device: str
    dtype: str
    load_s: float
    derived: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON description for sidecars."""
        return {
            "source": self.source,
            "kind": self.kind,
            "class": self.class_name,
            "base_model": BASE_MODEL_OF_ARCHITECTURE.get(self.kind),
            "device": self.device,
            "dtype": self.dtype,
        }


def read_model_index(source: str, allow_hub: bool = False) -> dict[str, Any]:
    """``model_index.json`` of a local pipeline folder or of a repo already in the local HF cache.

    Raises:
        FatalError: neither a pipeline folder nor a cached repo (one line).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise FatalError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        try:
            return json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FatalError(f"unreadable {index}: {exc}") from None
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(source, "model_index.json", local_files_only=not allow_hub)
    except Exception as exc:  # noqa: BLE001 - boundary: any hub lookup failure means "not available"
        where = "reachable on the Hub" if allow_hub else "in the local HF cache"
        raise FatalError(f"pipeline {source!r} is neither a local folder nor {where}") from exc
    return json.loads(Path(local).read_text(encoding="utf-8"))


def source_architecture(source: str, allow_hub: bool = False) -> tuple[str | None, str]:
    """``(architecture, class_name)`` of a pipeline from its ``model_index.json``, without loading it."""
    index = read_model_index(source, allow_hub)
    path = Path(source).expanduser()
    return index_architecture(index, path if path.is_dir() else None), str(index.get("_class_name") or "")


def resolve_device(device: str | None) -> str:
    """``cuda`` when asked for (or ``auto`` and available), else ``cpu``; a missing GPU is fatal."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FatalError(f"--device {device} was asked for but no CUDA device is available")
    if not (device == "cpu" or device.startswith(("cuda", "mps", "xpu"))):
        raise FatalError(f"unknown device {device!r} (cpu, cuda)")
    return device


def resolve_dtype(device: str, dtype: str | None) -> str:
    """The dtype name to load in: ``dtype``, else fp16 on CUDA and fp32 elsewhere."""
    name = dtype or ("float16" if device.startswith("cuda") else "float32")
    if name not in DTYPES:
        raise FatalError(f"unknown dtype {name!r} ({', '.join(DTYPES)})")
    return name


def load_base_pipeline(
    source: str, device: str = "cpu", dtype: str | None = None, allow_hub: bool = False
) -> LoadedPipeline:
    """Load the base pipeline once.

    Args:
        source: local pipeline folder, or a repo id in the local HF cache (or on the Hub with ``allow_hub``).
        device: torch device (``cpu``, ``cuda``, ``cuda:1`` …); see :func:`resolve_device` for ``auto``.
        dtype: ``float16`` / ``bfloat16`` / ``float32``; None: fp16 on CUDA, fp32 elsewhere.
        allow_hub: let diffusers download ``source`` (off: local files only).

    Raises:
        FatalError: the pipeline cannot be loaded (bad path, not a diffusers pipeline, …), one line.
    """
    import diffusers
    import torch
    from diffusers import DiffusionPipeline

    t0 = time.perf_counter()
    dtype_name = resolve_dtype(device, dtype)
    path = Path(source).expanduser()
    index: dict[str, Any] = {}
    if path.is_dir() or not allow_hub:
        index = read_model_index(source, allow_hub)
    # diffusers renamed torch_dtype to dtype (the old name warns from 0.36 on).
    dtype_key = "dtype" if _version_tuple(diffusers.__version__) >= (0, 36) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: getattr(torch, dtype_name), "local_files_only": not allow_hub}
    if "safety_checker" in index:
        # Renders are for judging adapters and generation is the user's own: a safety checker would
        # blank NSFW images and add latency.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.is_dir() else source, **kwargs)
    except (OSError, ValueError) as exc:
        raise FatalError(f"cannot load the pipeline {source!r}: {redact(str(exc))[:300]}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    quiet_loaders()
    return LoadedPipeline(
        pipe,
        pipeline_architecture(pipe),
        type(pipe).__name__,
        str(source),
        device,
        dtype_name,
        time.perf_counter() - t0,
    )


def derived_pipeline(loaded: LoadedPipeline, task: str) -> Any:
    """The pipeline for ``task`` (``text2img``, ``img2img``, ``inpaint``) built from ``loaded``'s components.

    Built once per task and kept in ``loaded.derived``. It shares every module with the base pipeline, so
    LoRA layers, fused weights and textual-inversion tokens of the base pipeline are in it too; only the
    scheduler is the base pipeline's current one, set again at each call.

    Raises:
        FatalError: diffusers has no such pipeline for this architecture.
    """
    if task == "text2img":
        return loaded.pipe
    if task not in TASKS:
        raise FatalError(f"unknown task {task!r} ({', '.join(TASKS)})")
    pipe = loaded.derived.get(task)
    if pipe is None:
        import diffusers

        auto = getattr(diffusers, TASKS[task])
        try:
            pipe = auto.from_pipe(loaded.pipe)
        except (ValueError, KeyError) as exc:
            raise FatalError(f"no {task} pipeline for {loaded.class_name}: {exc}") from None
        pipe.set_progress_bar_config(disable=True)
        loaded.derived[task] = pipe
    pipe.scheduler = loaded.pipe.scheduler
    return pipe


def quiet_loaders() -> None:
    """Silence what the libraries print per adapter load; render and generate report each outcome themselves.

    diffusers logs a failed LoRA load at ERROR with the whole state-dict error (a thousand lines for one
    mismatched file) and then raises; the caller catches it and keeps a bounded, redacted line.
    transformers draws a "Loading weights" bar for every adapter's text-encoder part, and logs a "LOAD
    REPORT" table at WARNING for every text-encoder LoRA that does not cover every layer (most do not).
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    logging.getLogger("diffusers.loaders.peft").setLevel(logging.CRITICAL)
    logging.getLogger("transformers.integrations.peft").setLevel(logging.ERROR)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
