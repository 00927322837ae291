"""Pure helpers of the render stage: probe prompts, adapter weights, base-model labels, file names."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from stylus_docs.diffusion.family import card_architecture
from stylus_docs.download import sanitize_path_component
from stylus_docs.normalize.lora import strip_tags

_SPACES = re.compile(r"\s+")
_COMMAS = re.compile(r"(?:\s*,\s*){2,}")
#: Longest probe prompt kept (CLIP reads 77 tokens anyway; this bounds what is stored).
MAX_PROMPT_CHARS = 1000

#: Fallback templates when a card has fewer example prompts than wanted.
FALLBACK_TEMPLATES: tuple[str, ...] = (
    "{subject}",
    "{subject}, a portrait, detailed",
    "{subject}, a wide landscape scene",
    "{subject}, a still life on a table",
    "{subject}, a city street at night",
    "{subject}, an illustration",
)

#: Labels :func:`base_model_family` gives where the render stage's older names differ from the
#: architecture vocabulary of :mod:`stylus_docs.diffusion.family`.
_RENDER_LABELS = {"sd15": "sd1"}


def clean_prompt(text: str) -> str:
    """Drop A1111 network tags (they mean nothing to diffusers), collapse whitespace and stray commas;
    trigger words stay."""
    out = strip_tags(text or "")
    out = _COMMAS.sub(", ", out)
    out = _SPACES.sub(" ", out).strip(" ,")
    return out[:MAX_PROMPT_CHARS]


def probe_prompts(card: Mapping[str, Any], count: int) -> list[str]:
    """The ``count`` prompts an adapter is rendered with.

    The card's own example prompts come first (cleaned, de-duplicated, trigger words kept). When there
    are fewer, prompts built from the trigger words and the title fill the rest, so every adapter gets
    ``count`` prompts; adapters with the same probe prompts share their no-adapter renders.

    Args:
        card: AdapterCard dict (``example_prompts``, ``trigger_words``, ``title``).
        count: How many prompts.

    Returns:
        ``count`` non-empty prompts.
    """
    seen: set[str] = set()
    prompts: list[str] = []
    for raw in card.get("example_prompts") or []:
        text = clean_prompt(str(raw))
        if text and text.lower() not in seen:
            seen.add(text.lower())
            prompts.append(text)
        if len(prompts) == count:
            return prompts
    triggers = [clean_prompt(str(t)) for t in (card.get("trigger_words") or []) if clean_prompt(str(t))]
    title = clean_prompt(str(card.get("title") or ""))
    subject = ", ".join(dict.fromkeys([*triggers[:3], title] if title else triggers[:3])) or "a picture"
    for template in FALLBACK_TEMPLATES:
        if len(prompts) == count:
            break
        text = template.format(subject=subject)
        if text.lower() not in seen:
            seen.add(text.lower())
            prompts.append(text)
    i = 0
    while len(prompts) < count:  # more prompts wanted than templates: vary by index, still deterministic
        prompts.append(f"{subject}, variation {i + 1}")
        i += 1
    return prompts


def adapter_weight(card: Mapping[str, Any], default: float, max_abs: float) -> float:
    """The card's ``recommended_weight`` when it is a usable number, clipped to ``±max_abs``."""
    value = card.get("recommended_weight")
    try:
        weight = float(value) if value is not None else default
    except (TypeError, ValueError):
        weight = default
    if not math.isfinite(weight) or weight == 0.0:
        weight = default
    return max(-max_abs, min(max_abs, weight))


def base_model_family(base_model: str | None) -> str | None:
    """Family of a card's base model with the render stage's labels (``sd1`` for SD 1.x, else the
    architecture of :func:`stylus_docs.diffusion.card_architecture`: ``sd2``, ``sdxl``, ``flux`` …).

    None when unknown or empty: such adapters are tried anyway and the load verdict decides.
    """
    arch = card_architecture(base_model)
    return _RENDER_LABELS.get(arch, arch) if arch is not None else None


def image_relpath(adapter_id: str, with_adapter: bool, index: int, seed: int, ext: str = "png") -> str:
    """Deterministic path of a rendered image, relative to the build directory (POSIX separators)."""
    kind = "with" if with_adapter else "without"
    return f"rendered/{sanitize_path_component(adapter_id)}/{kind}-{index}-seed{seed}.{ext}"
