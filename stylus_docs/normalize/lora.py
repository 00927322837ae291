"""``<lora:name:weight>`` tags in A1111-style prompts."""

from __future__ import annotations

import math
import re

#: ``<lora:name:w>``, ``<lyco:name:w>`` and ``<lora:name:w:te_w>``; the second weight is ignored.
_TAG = re.compile(r"<(?:lora|lyco|locon):([^:<>]+?)(?::\s*([-+]?\d*\.?\d+)\s*)?(?::[^<>]*)?>", re.I)


def parse_lora_tags(prompt: str | None) -> dict[str, float]:
    """Map each LoRA named in ``prompt`` to its weight (1.0 when the tag gives none).

    A name that appears twice keeps its last weight. Unparseable or non-finite weights are skipped.
    """
    out: dict[str, float] = {}
    if not prompt or "<" not in prompt:
        return out
    for match in _TAG.finditer(prompt):
        name = match.group(1).strip()
        raw = match.group(2)
        try:
            weight = float(raw) if raw is not None else 1.0
        except ValueError:
            continue
        if name and math.isfinite(weight):
            out[name] = weight
    return out


def strip_lora_tags(prompt: str) -> str:
    """The prompt with its LoRA tags removed (for embedding and display)."""
    return re.sub(r"\s*,\s*,", ",", _TAG.sub("", prompt)).strip(" ,")
