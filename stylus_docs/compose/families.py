"""One base-model family per composition.

LoRAs load only into the architecture they were trained for, so a composition takes all its adapters
from one **catalogue family** — :func:`stylus_docs.normalize.base_models.family` of the card's base model
(``SD 1.x``, ``SD 2.x``, ``SDXL``, ``Pony``, ``Illustrious``, ``NoobAI``, ``Flux.1`` …), the adapters
table's ``base_model_family`` column. The family is the unit, not the architecture: Pony, Illustrious
and NoobAI checkpoints are SDXL networks, but their text encoders and weights drifted so far that their
LoRAs and plain SDXL LoRAs do not carry over in practice (the catalogues list them as separate bases),
so they are never mixed either.

Where the family comes from, in order: ``--base-model`` (mapped through ``family()``), the generation
pipeline's base model (``generate`` passes it), else the family whose candidates compose best for the
prompt (:mod:`stylus_docs.compose.core`). ``Other`` (Civitai's "base model not listed": nothing says
what it loads into) is chosen automatically only when no real family was retrieved, and cards without
a base model never are.
"""

from __future__ import annotations

from stylus_docs.normalize.base_models import FAMILIES, family

#: Families the automatic choice avoids (``Other`` unless nothing else was retrieved; None always).
AUTO_EXCLUDED = frozenset({"Other", None})


def family_of(base_model: str | None, base_model_family: str | None = None) -> str | None:
    """The family key of a card: its ``base_model_family``, else ``family(base_model)``, else the base
    model name itself (an unknown base model is a family of its own), else None."""
    if base_model_family and base_model_family.strip():
        return base_model_family.strip()
    fam = family(base_model)
    if fam:
        return fam
    name = (base_model or "").strip()
    return name or None


def resolve_family(name: str | None) -> str | None:
    """The family a ``--base-model`` value asks for: ``"SD 1.5"`` → ``SD 1.x``, ``"sdxl"`` → ``SDXL``,
    a family name as itself (``"Pony"``, ``"SD 1.x"``), an unknown name as itself."""
    if not name or not name.strip():
        return None
    fam = family(name)
    if fam:
        return fam
    text = name.strip()
    return next((f for f in FAMILIES if f.lower() == text.lower()), text)
