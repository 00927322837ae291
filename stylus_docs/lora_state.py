"""Undo a LoRA fuse exactly: resident copies of the base weights under PEFT's LoRA layers.

``pipe.unfuse_lora()`` subtracts each adapter's delta again. In fp16 that leaves rounding error in the
base weights, and over thousands of adapters (the render stage) or prompts (batch generation) it
accumulates. It is also slow: one ``B @ A`` product per layer and adapter, all over again. This module
keeps a copy of every base weight the first time a LoRA layer wraps it and restores it with one copy per
layer, then tells PEFT and diffusers that nothing is merged any more.
"""

from __future__ import annotations

from typing import Any

#: Pipeline components that diffusers can put LoRA layers into.
LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


def lora_layers(pipe: Any) -> list[Any]:
    """PEFT tuner layers (LoRA-wrapped Linear/Conv) currently in the pipeline's components."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for name in LORA_COMPONENTS:
        component = getattr(pipe, name, None)
        if component is None or not hasattr(component, "modules"):
            continue
        layers.extend(m for m in component.modules() if isinstance(m, BaseTunerLayer))
    return layers


class PristineWeights:
    """Base weights as they were before any fuse, kept on the weights' own device."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[Any, Any | None]] = {}

    def __len__(self) -> int:
        return len(self._saved)

    def snapshot(self, pipe: Any) -> None:
        """Copy the base weights of LoRA-wrapped layers not seen before. Call it while nothing is fused."""
        for layer in lora_layers(pipe):
            if layer.merged:
                raise RuntimeError("snapshot taken while an adapter is fused: the copy would not be pristine")
            base = layer.get_base_layer()
            if id(base) not in self._saved:
                bias = getattr(base, "bias", None)
                self._saved[id(base)] = (
                    base.weight.detach().clone(),
                    bias.detach().clone() if bias is not None else None,
                )

    def unfuse(self, pipe: Any) -> int:
        """Put every fused layer's base weights back bit-exactly and mark nothing merged; returns how many
        layers were restored."""
        import torch

        restored = 0
        with torch.no_grad():
            for layer in lora_layers(pipe):
                if not layer.merged:
                    continue
                base = layer.get_base_layer()
                saved = self._saved.get(id(base))
                if saved is None:  # fused without a snapshot: fall back to PEFT's subtraction
                    layer.unmerge()
                    continue
                weight, bias = saved
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)
                layer.merged_adapters.clear()
                restored += 1
        if hasattr(pipe, "_merged_adapters"):
            pipe._merged_adapters = set()  # diffusers' own record of what fuse_lora merged
        return restored
