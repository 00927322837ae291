"""The diffusion layer shared by render and generate: one loader, one family detector, one adapter
lifecycle, one adapter store.

* :func:`load_base_pipeline` → :class:`LoadedPipeline` (local files only, device/dtype, safety checker
  and progress bars off); :func:`derived_pipeline` builds image-to-image / inpainting from its components;
* :func:`pipeline_architecture` (a loaded pipeline), :func:`source_architecture` (a pipeline folder,
  nothing loaded) and :func:`card_architecture` (a card's base-model name) answer in one vocabulary,
  :data:`ARCHITECTURES` (``sd15``, ``sd2``, ``sdxl``, ``sd3``, ``flux`` …);
* :class:`LoraSession`: load → set weights → fuse → restore exactly (:class:`PristineWeights`) → unload,
  LoRA and textual inversion;
* :class:`AdapterStore`: adapter files from the SHA-256-verified download cache.

Importing this package does not import torch or diffusers; the functions that need them do.
"""

from stylus_docs.diffusion.family import (
    ARCHITECTURE_OF_FAMILY,
    ARCHITECTURES,
    BASE_MODEL_OF_ARCHITECTURE,
    PIPELINE_ARCHITECTURES,
    card_architecture,
    normalize_architecture,
    pipeline_architecture,
)
from stylus_docs.diffusion.pipeline import (
    TASKS,
    LoadedPipeline,
    derived_pipeline,
    load_base_pipeline,
    read_model_index,
    resolve_device,
    source_architecture,
)
from stylus_docs.diffusion.session import (
    Applied,
    LoraSession,
    PipelineStateError,
    PristineWeights,
    error_text,
    insert_token,
    lora_layers,
    textual_inversion_token,
)
from stylus_docs.diffusion.store import AdapterStore

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_OF_FAMILY",
    "BASE_MODEL_OF_ARCHITECTURE",
    "PIPELINE_ARCHITECTURES",
    "TASKS",
    "AdapterStore",
    "Applied",
    "LoadedPipeline",
    "LoraSession",
    "PipelineStateError",
    "PristineWeights",
    "card_architecture",
    "derived_pipeline",
    "error_text",
    "insert_token",
    "load_base_pipeline",
    "lora_layers",
    "normalize_architecture",
    "pipeline_architecture",
    "read_model_index",
    "resolve_device",
    "source_architecture",
    "textual_inversion_token",
]
