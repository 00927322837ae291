"""The JSON Schemas, the Arrow schemas and the record dataclasses agree field for field."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
from build_fixtures import model_2023

from stylus_docs.normalize import civitai
from stylus_docs.records import AdapterCard, ExampleImage
from stylus_docs.schemas import (
    SCHEMA_FILES,
    arrow_schema,
    column_names,
    load_schema,
    schema_dir,
    validation_errors,
)


def test_every_schema_is_valid_json_schema() -> None:
    import jsonschema

    for name in SCHEMA_FILES:
        schema = json.loads((schema_dir() / name).read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)


def test_arrow_schema_derived_from_json_schema() -> None:
    adapters = arrow_schema("adapters", 384)
    assert adapters.field("embedding").type == pa.list_(pa.float32(), 384)
    assert adapters.field("published_at").type == pa.timestamp("us", tz="UTC")
    assert adapters.field("tags").type == pa.list_(pa.string())
    assert adapters.field("rating").nullable and not adapters.field("adapter_id").nullable
    for col in (
        "adapter_id",
        "source",
        "title",
        "type",
        "base_model",
        "tags",
        "trigger_words",
        "description",
        "refined_description",
        "category",
        "recommended_weight",
        "nsfw",
        "content_hash",
        "embedding",
    ):
        assert col in adapters.names
    images = arrow_schema("images")
    assert {"adapter_id", "url", "path", "prompt", "origin"} <= set(images.names)


def test_records_agree_with_schemas() -> None:
    (card,) = civitai.normalize_model(model_2023(1, 11, "Ink"))
    card.compute_content_hash()
    card.embedding = [0.0] * 4
    row = card.to_row()
    assert list(row) == column_names("adapters") or set(row) == set(column_names("adapters"))
    assert set(row) == set(load_schema("adapters.v1.json")["properties"])
    image_fields = {f.name for f in dataclasses.fields(ExampleImage)}
    assert image_fields == set(column_names("images"))
    card_fields = {f.name for f in dataclasses.fields(AdapterCard)}
    assert set(load_schema("adapter_card.v1.json")["properties"]) <= card_fields
    assert not validation_errors("adapter_card.v1.json", card.card_dict())
    assert not validation_errors("images.v1.json", card.images[0].to_row())
