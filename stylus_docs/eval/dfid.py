"""dFID: per-prompt image diversity, Stylus against a baseline (the paper's §4.2.3, Fig. 8b).

A prompt's diversity is the trace of the covariance of the Inception-v3 pool features over that
prompt's images (the sum of per-dimension variances, i.e. the FID trace term of a set against
itself); a set of one repeated image scores 0. For every prompt that both sets have (at least two
images each), the method with the larger trace wins the prompt; the win rate is wins over compared
prompts (the paper: Stylus 59.22% over 1,106 prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stylus_docs.errors import FatalError
from stylus_docs.eval.common import ImageItem
from stylus_docs.eval.fid import InceptionFeatures

#: Relative difference below which two traces count as equal (a tie).
TIE_RTOL = 1e-9


def diversity(features: np.ndarray) -> float:
    """Trace of the feature covariance (unbiased, rows = images); 0 for fewer than two images."""
    if features.shape[0] < 2:
        return 0.0
    centred = features - features.mean(axis=0)
    return float(np.sum(centred * centred) / (features.shape[0] - 1))


def group_by_prompt(items: Sequence[ImageItem]) -> dict[str, list[ImageItem]]:
    """Images per prompt (order kept)."""
    groups: dict[str, list[ImageItem]] = {}
    for it in items:
        if it.prompt:
            groups.setdefault(it.prompt, []).append(it)
    return groups


def compare(
    extractor: InceptionFeatures, a: Sequence[ImageItem], b: Sequence[ImageItem], min_images: int = 2
) -> dict[str, Any]:
    """dFID of set ``a`` (Stylus) against set ``b`` (baseline), per prompt and as a win rate.

    Returns:
        ``{"n_prompts", "win", "lose", "tie", "win_rate", "mean_a", "mean_b", "prompts": [{"prompt",
        "a", "b", "n_a", "n_b", "result"}]}`` (``result`` is ``win``/``lose``/``tie`` for ``a``).

    Raises:
        FatalError: no prompt has at least ``min_images`` images in both sets.
    """
    ga, gb = group_by_prompt(a), group_by_prompt(b)
    shared = [p for p in ga if p in gb and len(ga[p]) >= min_images and len(gb[p]) >= min_images]
    if not shared:
        raise FatalError(
            f"dfid: no prompt has at least {min_images} images in both sets "
            f"({len(ga)} prompts in --a, {len(gb)} in --b)"
        )
    rows: list[dict[str, Any]] = []
    counts = {"win": 0, "lose": 0, "tie": 0}
    for prompt in shared:
        da = diversity(extractor.of_files([it.path for it in ga[prompt]], "a"))
        db = diversity(extractor.of_files([it.path for it in gb[prompt]], "b"))
        if abs(da - db) <= TIE_RTOL * max(abs(da), abs(db), 1e-300):
            result = "tie"
        else:
            result = "win" if da > db else "lose"
        counts[result] += 1
        rows.append(
            {
                "prompt": prompt,
                "a": da,
                "b": db,
                "n_a": len(ga[prompt]),
                "n_b": len(gb[prompt]),
                "result": result,
            }
        )
    n = len(rows)
    return {
        "n_prompts": n,
        **counts,
        "win_rate": counts["win"] / n,
        "mean_a": float(np.mean([r["a"] for r in rows])),
        "mean_b": float(np.mean([r["b"] for r in rows])),
        "prompts": rows,
    }
