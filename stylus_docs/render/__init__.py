"""Render stage (README, GPU worker): images of each adapter with and without its LoRA, plus a load verdict.

Public API:

* :class:`RenderConfig` – settings (pipeline, device, prompts, seeds, steps, fuse, …);
* :class:`RenderAdapters` – the Beam PTransform (cards in; ``cards`` and ``images`` out);
* :class:`DiffusersRenderModelHandler` – the RunInference handler behind it;
* :class:`AdapterRenderer` – the resident-pipeline worker, usable without Beam;
* :data:`RENDER_STATUSES`.

Importing this package does not import torch or diffusers; the worker does, when it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stylus_docs.render.config import RENDER_STATUSES, RenderConfig

if TYPE_CHECKING:
    from stylus_docs.render.beam import DiffusersRenderModelHandler, RenderAdapters
    from stylus_docs.render.worker import AdapterRenderer, RenderResult

__all__ = [
    "RENDER_STATUSES",
    "AdapterRenderer",
    "DiffusersRenderModelHandler",
    "RenderAdapters",
    "RenderConfig",
    "RenderResult",
]

_LAZY = {
    "RenderAdapters": "stylus_docs.render.beam",
    "DiffusersRenderModelHandler": "stylus_docs.render.beam",
    "AdapterRenderer": "stylus_docs.render.worker",
    "RenderResult": "stylus_docs.render.worker",
}


def __getattr__(name: str) -> Any:
    # Lazy: `from stylus_docs.render import RenderConfig` must not pull in Beam or torch.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stylus_docs.render' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
