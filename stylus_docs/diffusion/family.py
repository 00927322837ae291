"""Base-model architectures: of a loaded pipeline, of a pipeline folder, of a card's base-model name.

One vocabulary for render and generate (:data:`ARCHITECTURES`): ``sd15``, ``sd2``, ``sdxl``, ``sd3``,
``flux`` and a few families no pipeline of ours runs (``flux2``, ``wan``, ``hunyuan``, …). An adapter
loads into a pipeline only when both have the same architecture; Pony, Illustrious and NoobAI are SDXL
fine-tunes, so their adapters are ``sdxl``.

Card names go through the catalogue's own grouping (:func:`stylus_docs.normalize.base_models.family`,
the ``base_model_family`` column), then through a short table of names the catalogue does not group
(``Playground v2``, ``animagine-xl``, bare ``v1-5`` checkpoints …). A name in neither is unknown (None):
such adapters are tried anyway and the load verdict decides.

Pure Python: nothing here imports torch or diffusers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stylus_docs.normalize.base_models import family as catalogue_family

logger = logging.getLogger(__name__)

#: Architectures a diffusers pipeline of ours can be (the rest only ever name a card's base model).
PIPELINE_ARCHITECTURES: tuple[str, ...] = ("sd15", "sd2", "sdxl", "sd3", "flux")

#: Catalogue family (``base_model_family``) → architecture. ``Other`` is unknown on purpose.
ARCHITECTURE_OF_FAMILY: dict[str, str] = {
    "SD 1.x": "sd15",
    "SD 2.x": "sd2",
    "SD 3.x": "sd3",
    "SDXL": "sdxl",
    "Pony": "sdxl",
    "Illustrious": "sdxl",
    "NoobAI": "sdxl",
    "Flux.1": "flux",
    "Flux.2": "flux2",
    "Hunyuan": "hunyuan",
    "Wan Video": "wan",
    "Qwen": "qwen",
    "Kolors": "kolors",
    "Lumina": "lumina",
    "Chroma": "chroma",
    "HiDream": "hidream",
    "AuraFlow": "auraflow",
    "PixArt": "pixart",
}

#: Every architecture this module can answer.
ARCHITECTURES: tuple[str, ...] = tuple(
    dict.fromkeys((*PIPELINE_ARCHITECTURES, *ARCHITECTURE_OF_FAMILY.values(), "video"))
)

#: The release ``base_model`` that stands for each pipeline architecture (Civitai's names).
BASE_MODEL_OF_ARCHITECTURE: dict[str, str] = {
    "sd15": "SD 1.5",
    "sd2": "SD 2.1",
    "sdxl": "SDXL 1.0",
    "sd3": "SD 3.5",
    "flux": "Flux.1 D",
}

#: Other spellings accepted where a user names an architecture (``RenderConfig.base_family``).
ALIASES: dict[str, str] = {"sd1": "sd15", "sd1.5": "sd15", "sd 1.5": "sd15", "sd21": "sd2", "xl": "sdxl"}

# Names the catalogue does not group, lowercased substrings (the render stage's table before the
# catalogue had families); checked only when the catalogue has no answer.
_FALLBACK: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sdxl", ("sd xl", "xl 1.0", "playground v2", "animagine", "stable-diffusion-xl")),
    ("sd3", ("stable-diffusion-3",)),
    ("sd2", ("stable-diffusion-2",)),
    ("sd15", ("stable-diffusion-v1", "stable-diffusion-v-1", "v1-5", "v1.5", "sd-v1")),
    ("video", ("hunyuan video", "ltxv", "mochi", "cogvideo", "svd")),
)

# Pipeline classes (``model_index.json`` ``_class_name``) by prefix → architecture, longest first.
_CLASS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("Flux", "flux"),
    ("StableDiffusion", "sd15"),  # SD 2.x uses the same classes: told apart by the UNet (below)
)


def normalize_architecture(name: str | None) -> str | None:
    """``name`` in this module's vocabulary (``"sd1"`` → ``"sd15"``); None stays None."""
    if name is None:
        return None
    text = name.strip().lower()
    return ALIASES.get(text, text)


def card_architecture(base_model: str | None) -> str | None:
    """Architecture of a card's base model (Civitai ``baseModel`` or a Hub ``base_model`` repo id).

    Returns:
        One of :data:`ARCHITECTURES`, or None when the name is empty or unknown.
    """
    text = (base_model or "").strip()
    if not text:
        return None
    fam = catalogue_family(text)
    if fam is not None and fam in ARCHITECTURE_OF_FAMILY:
        return ARCHITECTURE_OF_FAMILY[fam]
    lowered = text.lower()
    for arch, needles in _FALLBACK:
        if any(n in lowered for n in needles):
            return arch
    return None


def unet_architecture(config: Mapping[str, Any]) -> str:
    """Architecture of a ``UNet2DConditionModel`` config: SDXL conditions on time ids and pooled text
    (``addition_embed_type = "text_time"``), SD 2.x cross-attends to OpenCLIP's 1024-wide states."""
    if config.get("addition_embed_type") == "text_time" or config.get("cross_attention_dim") == 2048:
        return "sdxl"
    if config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd15"


def transformer_architecture(class_name: str) -> str:
    """Architecture of a DiT denoiser from its class name (``FluxTransformer2DModel`` …)."""
    name = class_name.lower()
    if "flux" in name:
        return "flux"
    if "sd3" in name:
        return "sd3"
    return "unknown"


def pipeline_architecture(pipe: Any) -> str:
    """Architecture of a loaded diffusers pipeline, from its denoiser's config (UNet or transformer)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return unet_architecture(dict(unet.config))
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        return transformer_architecture(type(transformer).__name__)
    return class_architecture(type(pipe).__name__) or "unknown"


def class_architecture(class_name: str) -> str | None:
    """Architecture a pipeline class name implies (None for classes of other families)."""
    return next((arch for prefix, arch in _CLASS_PREFIXES if class_name.startswith(prefix)), None)


def index_architecture(index: Mapping[str, Any], folder: str | Path | None = None) -> str | None:
    """Architecture of a pipeline from its ``model_index.json`` (and ``unet/config.json`` when ``folder``
    holds one), without loading any weights; None for classes of other families."""
    arch = class_architecture(str(index.get("_class_name") or ""))
    if arch == "sd15" and folder is not None:
        unet_config = Path(folder) / "unet" / "config.json"
        if unet_config.is_file():
            try:
                arch = unet_architecture(json.loads(unet_config.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:  # the loader will say what is wrong with the folder
                logger.debug("unreadable %s: %s", unet_config, exc)
    return arch
