"""Beam wiring of the render stage: a RunInference model handler and the ``RenderAdapters`` PTransform."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from stylus_docs.render.config import RenderConfig

logger = logging.getLogger(__name__)

#: Output tags of :class:`RenderAdapters`.
CARDS_TAG = "cards"
IMAGES_TAG = "images"
_NAMESPACE = "stylus_docs.render"


class DiffusersRenderModelHandler(ModelHandler[dict, dict, Any]):
    """RunInference handler: the "model" is an :class:`~stylus_docs.render.worker.AdapterRenderer`.

    ``load_model`` loads the base pipeline once per worker (shared across processes on CUDA, where a
    second copy would not fit beside the first); ``run_inference`` renders each adapter of a batch and
    returns ``{"card": card + render columns, "images": [image rows]}``. Batches hold one adapter:
    prompts are batched inside the worker, and a small unit keeps a failure's blast radius small.

    Args:
        config: The render settings.
    """

    def __init__(self, config: RenderConfig) -> None:
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=config.device.startswith("cuda"))
        self._config = config

    def load_model(self) -> Any:
        """Build the resident renderer (imports torch/diffusers lazily)."""
        from stylus_docs.render.worker import AdapterRenderer

        return AdapterRenderer(self._config)

    def run_inference(
        self, batch: Sequence[dict], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[dict]:
        """Render every adapter card of ``batch``."""
        outputs = []
        for card in batch:
            result = model.render_card(card)
            outputs.append({"card": {**card, **result.card_fields()}, "images": result.images})
        return outputs

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        """Batch size for Beam's metrics (cards are small dicts)."""
        return len(batch)

    def get_metrics_namespace(self) -> str:
        """Namespace of RunInference's own metrics."""
        return _NAMESPACE


class _SplitRenderOutput(beam.DoFn):
    """Emit the updated card on the main output and its image rows on ``images``; count statuses."""

    def __init__(self) -> None:
        self._counters: dict[str, Any] = {}
        self._images = Metrics.counter(_NAMESPACE, "images_rendered")

    def process(self, element: dict) -> Iterator[Any]:
        status = element["card"].get("render_status", "unknown")
        if status not in self._counters:
            self._counters[status] = Metrics.counter(_NAMESPACE, f"adapters_{status}")
        self._counters[status].inc()
        for row in element["images"]:
            self._images.inc()
            yield beam.pvalue.TaggedOutput(IMAGES_TAG, row)
        yield element["card"]


class RenderAdapters(beam.PTransform):
    """Render each AdapterCard with and without its LoRA (README "The GPU worker").

    Input: AdapterCard dicts with at least ``adapter_id``, ``example_prompts``, ``trigger_words``,
    ``recommended_weight``, ``download_url``, ``sha256``, ``file_name``, ``base_model``.

    Output: a tagged result with

    * ``cards`` (main): every input card, with ``render_status``, ``render_error``, ``render_load_s``
      and ``render_s`` set — failures included, so counts add up;
    * ``images``: image-table rows (``origin="rendered"``, ``path`` relative to ``config.out_dir``).

    Example::

        rendered = cards | RenderAdapters(RenderConfig(pipeline=..., out_dir=build_dir, cache_dir=...))
        rendered.cards, rendered.images

    Args:
        config: The render settings.
    """

    def __init__(self, config: RenderConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, cards: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (
            cards
            | "RenderAdapter" >> RunInference(DiffusersRenderModelHandler(self.config))
            | "SplitCardsAndImages"
            >> beam.ParDo(_SplitRenderOutput()).with_outputs(IMAGES_TAG, main=CARDS_TAG)
        )
