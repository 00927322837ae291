"""Row types of the build: normalized cards, example images, refinements, dead letters.

Field names match the columns of ``schemas/adapters.v1.json`` and ``schemas/images.v1.json`` (a test
checks that they agree field for field). Records are plain dataclasses so they pickle cheaply between
Beam stages and are testable without Beam.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

#: The paper's topics (STYLUS-NOTES §1.1/§1.3), the allowed values of ``category``.
CATEGORIES: tuple[str, ...] = (
    "concept",
    "style",
    "pose",
    "action",
    "character",
    "celebrity",
    "clothing",
    "background",
    "building",
    "vehicle",
    "animal",
    "object",
)
#: Weight the paper uses when nothing better is known.
DEFAULT_WEIGHT = 0.8
#: Default of ``render_status`` when the render stage did not run.
NOT_RENDERED = "not_rendered"


@dataclass(slots=True)
class ExampleImage:
    """One image of an adapter: an example from the source or one the render stage made.

    Args:
        adapter_id: the adapter it belongs to.
        image_id: source id (Civitai image id, URL hash for HF) or render id.
        origin: "example" or "rendered".
        lora_weights: ``{lora name: weight}`` parsed from ``<lora:name:w>`` in the prompt.
        civitai_resources: ``meta.civitaiResources`` of a Civitai image, each
            ``{model_version_id, type, weight, name}``: the resources it was really generated with.
    """

    adapter_id: str
    image_id: str
    origin: str = "example"
    url: str | None = None
    path: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    nsfw_level: int | None = None
    lora_weights: dict[str, float] = field(default_factory=dict)
    with_adapter: bool | None = None
    weight: float | None = None
    scheduler: str | None = None
    civitai_resources: list[dict[str, Any]] | None = None

    def to_row(self) -> dict[str, Any]:
        """The images-table row (``lora_weights`` as a JSON string)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        row["lora_weights"] = json.dumps(self.lora_weights, sort_keys=True) if self.lora_weights else None
        return row


@dataclass(slots=True)
class Refinement:
    """A refiner's answer for one adapter (``schemas/refinement.v1.json`` plus provenance).

    Args:
        description: concise text of what the adapter does to an image.
        category: one of :data:`CATEGORIES`.
        recommended_weight: LoRA scale to use by default.
        refiner: ``<name>@<version>`` of the refiner that made it.
    """

    description: str
    category: str
    recommended_weight: float
    refiner: str


@dataclass(slots=True)
class AdapterCard:
    """One adapter version, normalized from any source era.

    The refine/embed fields (``refined_description`` … ``embedding``) are empty until those stages ran.
    ``base_model_family`` groups base-model names (:func:`stylus_docs.normalize.base_models.family`);
    ``source_host`` is the API base URL the record was crawled from; ``deleted`` marks a card a tombstone
    says is gone, kept from its last known record by ``--keep-deleted``.
    """

    adapter_id: str
    source: str
    model_id: str
    version_id: str
    title: str
    type: str
    version_name: str | None = None
    base_model: str | None = None
    base_model_family: str | None = None
    tags: list[str] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)
    description: str = ""
    nsfw: bool = False
    nsfw_level: int = 0
    creator: str | None = None
    downloads: int | None = None
    likes: int | None = None
    rating: float | None = None
    license_commercial: list[str] = field(default_factory=list)
    allow_no_credit: bool | None = None
    allow_derivatives: bool | None = None
    file_name: str | None = None
    file_size_kb: float | None = None
    file_format: str | None = None
    sha256: str | None = None
    download_url: str | None = None
    published_at: str | None = None
    card_url: str | None = None
    source_host: str | None = None
    deleted: bool = False
    images: list[ExampleImage] = field(default_factory=list)
    # Filled by later stages.
    content_hash: str = ""
    refined_description: str = ""
    category: str = ""
    recommended_weight: float = DEFAULT_WEIGHT
    refiner: str = ""
    embedder: str = ""
    embedding: list[float] | None = None
    render_status: str | None = NOT_RENDERED
    render_error: str | None = None
    render_load_s: float | None = None
    render_s: float | None = None
    # What the downloaded weights file is (stylus_docs.formats); None when the weights were not downloaded.
    weights_format: str | None = None
    weights_convention: str | None = None
    weights_rank: int | None = None
    weights_base_family: str | None = None
    weights_loadable: bool | None = None
    weights_reason: str | None = None
    #: Local path of the verified weights (download stage → render stage); not a column.
    weights_path: str | None = None

    @property
    def example_prompts(self) -> list[str]:
        """Prompts of the example images, in order, without duplicates."""
        seen: dict[str, None] = {}
        for img in self.images:
            if img.origin == "example" and img.prompt:
                seen.setdefault(img.prompt, None)
        return list(seen)

    def compute_content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the fields that feed refine and embed.

        Popularity stats (downloads, likes, rating) are left out on purpose: they change daily and would
        otherwise invalidate every cached refinement on each nightly rebuild.
        """
        payload = {
            "title": self.title,
            "version_name": self.version_name,
            "type": self.type,
            "base_model": self.base_model,
            "tags": self.tags,
            "trigger_words": self.trigger_words,
            "description": self.description,
            "file_name": self.file_name,
            "images": [
                [img.url, img.prompt, img.negative_prompt, img.lora_weights]
                for img in self.images
                if img.origin == "example"
            ],
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        self.content_hash = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        return self.content_hash

    def apply_refinement(self, ref: Refinement) -> None:
        """Copy a refiner's answer onto the card."""
        self.refined_description = ref.description
        self.category = ref.category
        self.recommended_weight = float(ref.recommended_weight)
        self.refiner = ref.refiner

    def card_dict(self) -> dict[str, Any]:
        """The normalized card as ``schemas/adapter_card.v1.json`` describes it."""
        out = {name: getattr(self, name) for name in _CARD_FIELDS}
        out["images"] = [img.to_row() for img in self.images]
        return out

    def to_row(self) -> dict[str, Any]:
        """The adapters-table row (``published_at`` stays an ISO string; the writer converts)."""
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        row["example_prompts"] = self.example_prompts
        return row


#: Card fields written to ``adapter_card.v1.json`` (everything but the later stages' output).
_CARD_FIELDS = (
    "adapter_id source model_id version_id title version_name type base_model tags trigger_words description "
    "nsfw nsfw_level creator downloads likes rating license_commercial allow_no_credit allow_derivatives "
    "file_name file_size_kb file_format sha256 download_url published_at card_url"
).split()
#: Adapters-table columns that are attributes of the card (``example_prompts`` is derived).
_ROW_FIELDS = (
    "adapter_id source model_id version_id title version_name type base_model base_model_family tags "
    "trigger_words description refined_description category recommended_weight nsfw nsfw_level creator "
    "downloads likes rating license_commercial allow_no_credit allow_derivatives file_name file_size_kb "
    "sha256 download_url published_at card_url source_host content_hash refiner embedder embedding "
    "render_status render_error render_load_s render_s weights_format weights_convention weights_rank "
    "weights_base_family weights_loadable weights_reason deleted"
).split()
#: Adapters-table columns set from the weights file's header by the download stage (see formats.py).
WEIGHTS_COLUMNS = (
    "weights_format weights_convention weights_rank weights_base_family weights_loadable weights_reason"
).split()


@dataclass(slots=True)
class DeadLetter:
    """A record that failed a stage (``schemas/dead_letter.v1.json``).

    Args:
        stage: the stage that failed it (read, normalize, merge, refine, embed, render, write).
        reason: machine-readable snake_case reason, counted in the manifest.
        record_id: adapter id when known, else ``<file>:<line>``.
        detail: human-readable detail, already redacted.
        source: the input file it came from.
    """

    stage: str
    reason: str
    record_id: str | None = None
    detail: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
