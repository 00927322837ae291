"""Which normalized cards make it into a release, and why the others do not.

Defaults (documented in the build's ``--help`` and the manifest's ``filters``):

* ``type_not_allowed`` – adapter type not in ``types`` (default ``LORA``, ``LoCon``, ``DoRA``; the
  paper kept ``LORA`` only, LoCon/DoRA load the same way in diffusers);
* ``base_model_not_allowed`` – base model not in ``base_models`` (default: every base model);
* ``nsfw`` – the model's NSFW flag is set, or its API NSFW level has a bit above ``max_nsfw_level``
  (default PG13 = 2). Example images above that level are dropped from the card first (counted under
  ``images_filtered``), so a SFW adapter keeps only its SFW examples;
* ``no_safetensors`` – no ``.safetensors`` weights file (pickle formats execute code when loaded);
* ``blacklisted`` – adapter id or model id in ``blacklist``;
* ``slider`` – concept sliders (title or tags say "slider"), which the paper's composer excludes;
* ``too_few_images`` – fewer than ``min_images`` example images left (default 1: the VLM and the
  composer need at least one example; the paper's composer drops ≤ 2 images at compose time, which
  stays a compose-time choice).

:func:`apply_filters` returns the first reason that applies, or ``None`` to keep the card. The build
also drops adapters a tombstone of the snapshot marks deleted (``deleted``, before these rules; see
:func:`stylus_docs.build.rules.merge_versions`), and :func:`unknown_base_model` names base models to
count because neither the live enums nor the family table knows them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stylus_docs.errors import FatalError
from stylus_docs.normalize.base_models import counted_name, family
from stylus_docs.records import AdapterCard

DEFAULT_TYPES = ("LORA", "LoCon", "DoRA")
PG, PG13, R, X, XXX, BLOCKED = 1, 2, 4, 8, 16, 32
#: Everything up to and including XXX (Blocked stays out even with --include-nsfw).
ALL_LEVELS = PG | PG13 | R | X | XXX


@dataclass(slots=True)
class FilterConfig:
    """Filter settings.

    Args:
        types: allowed adapter types (compared case-insensitively).
        base_models: allowed base models; empty means all.
        include_nsfw: keep NSFW adapters and images.
        max_nsfw_level: highest allowed NSFW bit when ``include_nsfw`` is off (1 PG, 2 PG13, 4 R, …).
        min_images: minimum number of example images after NSFW image filtering.
        blacklist: adapter ids (``civitai:1@2``) or model ids (``civitai:1``, ``hf:owner/name``).
        drop_sliders: drop concept sliders.
    """

    types: tuple[str, ...] = DEFAULT_TYPES
    base_models: tuple[str, ...] = ()
    include_nsfw: bool = False
    max_nsfw_level: int = PG13
    min_images: int = 1
    blacklist: frozenset[str] = field(default_factory=frozenset)
    drop_sliders: bool = True

    def __post_init__(self) -> None:
        if self.min_images < 0:
            raise FatalError("--min-images must be >= 0")
        if self.max_nsfw_level not in (PG, PG13, R, X, XXX):
            raise FatalError("--max-nsfw-level must be one of 1, 2, 4, 8, 16")
        if not self.types:
            raise FatalError("at least one adapter type must be allowed")
        self.types = tuple(self.types)
        self.base_models = tuple(self.base_models)
        self.blacklist = frozenset(self.blacklist)

    @property
    def allowed_mask(self) -> int:
        """NSFW bits a kept card or image may have."""
        if self.include_nsfw:
            return ALL_LEVELS
        return (self.max_nsfw_level << 1) - 1

    def describe(self) -> dict[str, Any]:
        """The settings as written to the manifest."""
        return {
            "types": list(self.types),
            "base_models": list(self.base_models) or "all",
            "include_nsfw": self.include_nsfw,
            "max_nsfw_level": self.max_nsfw_level,
            "min_images": self.min_images,
            "blacklist_size": len(self.blacklist),
            "drop_sliders": self.drop_sliders,
        }


def load_blacklist(path: str) -> frozenset[str]:
    """Read a blacklist file: one id per line, ``#`` comments allowed."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split("#", 1)[0].strip() for line in handle]
    except OSError as exc:
        raise FatalError(f"cannot read blacklist {path}: {exc.strerror}") from exc
    return frozenset(line for line in lines if line)


def filter_images(card: AdapterCard, config: FilterConfig) -> Counter[str]:
    """Drop example images above the allowed NSFW level; return how many were dropped by reason.

    When the API gave no NSFW level for the card (2023 items), the card's level becomes the OR of its
    kept images' levels.
    """
    dropped: Counter[str] = Counter()
    mask = config.allowed_mask
    kept = []
    for img in card.images:
        level = img.nsfw_level or 0
        if level & ~mask or level & BLOCKED:
            dropped["nsfw"] += 1
        else:
            kept.append(img)
    card.images = kept
    if not card.nsfw_level:
        level = 0
        for img in kept:
            level |= img.nsfw_level or 0
        card.nsfw_level = level
    return dropped


def _is_slider(card: AdapterCard) -> bool:
    if "slider" in card.title.lower():
        return True
    return any("slider" in tag.lower() for tag in card.tags)


def has_safetensors(card: AdapterCard) -> bool:
    """True when the card names a ``.safetensors`` weights file."""
    if card.file_name:
        return card.file_name.lower().endswith(".safetensors")
    return card.file_format == "SafeTensor"


def apply_filters(card: AdapterCard, config: FilterConfig) -> str | None:
    """The reason to drop ``card``, or ``None`` to keep it (images must be filtered first)."""
    types = {t.lower() for t in config.types}
    if card.type.lower() not in types:
        return "type_not_allowed"
    if config.base_models and (card.base_model or "") not in config.base_models:
        return "base_model_not_allowed"
    if not config.include_nsfw and (card.nsfw or card.nsfw_level & ~config.allowed_mask):
        return "nsfw"
    if card.nsfw_level & BLOCKED:
        return "nsfw"
    if not has_safetensors(card):
        return "no_safetensors"
    model_key = card.adapter_id.split("@", 1)[0]
    if card.adapter_id in config.blacklist or model_key in config.blacklist:
        return "blacklisted"
    if config.drop_sliders and _is_slider(card):
        return "slider"
    if len(card.images) < config.min_images:
        return "too_few_images"
    return None


def unknown_base_model(card: AdapterCard, known: frozenset[str]) -> str | None:
    """The card's base model when it is in neither ``known`` (the live enums) nor any family, else None.

    Such cards are kept as they are; the build counts them by name (``counts.unknown_base_models``).
    """
    name = counted_name(card.base_model)
    if name is None or card.base_model in known or name in known:
        return None
    return None if family(name) else name
