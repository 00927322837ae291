"""Configuration of the render stage (README "The GPU worker")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stylus_docs.download import DownloadConfig
from stylus_docs.errors import FatalError

#: ``render_status`` values. ``not_rendered`` is the adapters table default when the stage is off.
RENDER_STATUSES: tuple[str, ...] = (
    "ok",  # rendered with and without the adapter
    "incompatible_base",  # the card's base model is another family than the pipeline's
    "download_failed",  # the weights could not be had (reason in render_error)
    "unsupported_format",  # LoHa, LoKr, a checkpoint or an unknown file: not loaded (reason in render_error)
    "load_failed",  # diffusers/PEFT could not load the file into the pipeline
    "nan_output",  # the pipeline produced NaN/inf pixels with the adapter
    "render_failed",  # the pipeline raised while rendering (e.g. out of memory)
    "not_rendered",
)


@dataclass(frozen=True)
class RenderConfig:
    """Settings of :class:`~stylus_docs.render.RenderAdapters` and its worker.

    Args:
        pipeline: Directory written by ``save_pretrained`` (or a hub repo id when ``allow_hub``).
        out_dir: The build directory; images go to ``out_dir/rendered/<adapter>/…`` and image rows
            carry paths relative to it.
        cache_dir: Root of the :class:`~stylus_docs.download.AdapterCache` the weights come from.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``; None: float16 on CUDA, float32 on CPU.
        prompts_per_adapter: M, the number of probe prompts per adapter (each rendered with and without).
        base_seed: Prompt ``i`` is rendered with seed ``base_seed + i`` (with and without the adapter).
        steps: Denoising steps.
        cfg_scale: Classifier-free guidance scale.
        width: Image width (multiple of 8).
        height: Image height (multiple of 8).
        batch_size: Prompts per pipeline call.
        negative_prompt: Negative prompt of every render.
        fuse: Fuse the adapter into the base weights for its renders. Fused renders cost the same as
            base renders, while unfused LoRA layers add work to every step (issue 5's H100 figures:
            0.87 s vs 1.93 s per batch of 4 for 0.15 s of fuse + unfuse), so one batch already pays
            for it. Base weights are restored bit-exactly from a resident copy afterwards, so thousands
            of fp16 fuse/unfuse cycles cannot drift them. False keeps the LoRA layers unfused.
        default_weight: Adapter weight when the card has no usable ``recommended_weight``.
        max_abs_weight: Weights outside ``[-max, max]`` are clipped (cards carry typos like 80).
        check_base_model: Mark cards whose base model is another family as ``incompatible_base``
            without loading them.
        base_family: Architecture of the pipeline (``sd15``, ``sd2``, ``sdxl``, … ; ``sd1`` is read as
            ``sd15``); None: inferred from the loaded pipeline's denoiser config.
        baseline_cache_size: No-adapter renders kept (PNG bytes) for adapters sharing probe prompts.
        allow_hub: Let diffusers fetch ``pipeline`` from the Hub (off: local files only).
        download: Settings of the adapter downloads.
    """

    pipeline: str
    out_dir: str
    cache_dir: str
    device: str = "cpu"
    dtype: str | None = None
    prompts_per_adapter: int = 4
    base_seed: int = 1234
    steps: int = 25
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 4
    negative_prompt: str = ""
    fuse: bool = True
    default_weight: float = 0.8
    max_abs_weight: float = 4.0
    check_base_model: bool = True
    base_family: str | None = None
    baseline_cache_size: int = 256
    allow_hub: bool = False
    download: DownloadConfig = field(default_factory=DownloadConfig)

    def __post_init__(self) -> None:
        if not self.pipeline:
            raise FatalError("render: --render-pipeline is required")
        if self.prompts_per_adapter < 1:
            raise FatalError("render: prompts per adapter must be >= 1")
        if self.baseline_cache_size < 0:
            raise FatalError("render: baseline cache size must be >= 0")
        if self.steps < 1 or self.batch_size < 1:
            raise FatalError("render: steps and batch size must be >= 1")
        if self.width % 8 or self.height % 8 or self.width <= 0 or self.height <= 0:
            raise FatalError(
                f"render: width and height must be positive multiples of 8, got {self.width}x{self.height}"
            )
        if not (self.device == "cpu" or self.device.startswith(("cuda", "mps", "xpu"))):
            raise FatalError(f"render: unknown device {self.device!r}")
        if self.dtype not in (None, "float16", "bfloat16", "float32"):
            raise FatalError(f"render: unknown dtype {self.dtype!r}")
        if not math.isfinite(self.cfg_scale) or not math.isfinite(self.default_weight):
            raise FatalError("render: cfg scale and default weight must be finite")

    @property
    def torch_dtype_name(self) -> str:
        """The dtype actually used: fp16 on CUDA, fp32 elsewhere, unless ``dtype`` says otherwise."""
        if self.dtype:
            return self.dtype
        return "float16" if self.device.startswith("cuda") else "float32"
