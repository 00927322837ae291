"""Image generation with Stylus-composed adapters (diffusers SD 1.5 / SDXL, in-process).

The pipeline, adapter lifecycle and adapter files are the diffusion layer's (:mod:`stylus_docs.diffusion`);
this package adds generation's scheduler, masks, sidecars and the resumable batch runner.

Public API::

    from stylus_docs.generate import load_pipeline, StylusGenerator, AdapterStore, GenerateSettings
    loaded = load_pipeline("path/to/pipeline", device="cuda")
    store = AdapterStore("~/.cache/stylus-docs/adapters")
    gen = StylusGenerator(loaded, composer.source.cards, store, build_id)
    gen.render(prompt, composition, GenerateSettings(num_images=4, baseline=True), "out/<slug>")
"""

from stylus_docs.diffusion import AdapterStore, LoadedPipeline
from stylus_docs.generate.pipeline import BASE_MODEL_OF_KIND, detect_kind, load_pipeline
from stylus_docs.generate.runner import (
    DEFAULT_NEGATIVE,
    GenerateSettings,
    ImageInput,
    StylusGenerator,
    adapter_name,
    is_done,
    prompt_slug,
    read_prompts,
    run_prompts,
)

__all__ = [
    "BASE_MODEL_OF_KIND",
    "DEFAULT_NEGATIVE",
    "AdapterStore",
    "GenerateSettings",
    "ImageInput",
    "LoadedPipeline",
    "StylusGenerator",
    "adapter_name",
    "detect_kind",
    "is_done",
    "load_pipeline",
    "prompt_slug",
    "read_prompts",
    "run_prompts",
]
