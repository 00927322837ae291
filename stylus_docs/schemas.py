"""The versioned JSON Schemas in ``schemas/`` and the Arrow schemas derived from them.

``schemas/*.v1.json`` are the single source of truth for table columns. Each column property carries an
``x-arrow`` annotation (``string``, ``int32``, ``list<string>``, ``timestamp[us, UTC]``,
``fixed_size_list<float32>``, ``list<struct<name:type,...>>``, ...); :func:`arrow_schema` turns a table
schema into a :class:`pyarrow.Schema` with the columns in property order, nullable exactly when the JSON
type admits ``null``. The embedding's dimension is not fixed by the schema: it comes from the embedder.

The package reads them from ``stylus_docs/_schemas`` (a symlink to ``schemas/`` in a checkout, real files
in a wheel); ``STYLUS_DOCS_SCHEMA_DIR`` overrides it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from stylus_docs.errors import FatalError

#: Table name → schema file.
TABLES = {"adapters": "adapters.v1.json", "images": "images.v1.json"}
#: Every schema file this module knows.
SCHEMA_FILES = (
    "adapter_card.v1.json",
    "adapters.v1.json",
    "images.v1.json",
    "refinement.v1.json",
    "manifest.v1.json",
    "dead_letter.v1.json",
)

_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
}


def schema_dir() -> Path:
    """Directory holding the JSON Schemas.

    ``STYLUS_DOCS_SCHEMA_DIR`` if set; else ``stylus_docs/_schemas``: in a checkout a symlink to the
    top-level ``schemas/`` (the one copy in the repository), in a wheel the files themselves
    (package data, so an installed package needs no checkout).
    """
    override = os.environ.get("STYLUS_DOCS_SCHEMA_DIR")
    if override:
        return Path(override)
    return Path(__file__).parent / "_schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>`` (with or without the ``.json`` suffix)."""
    file = name if name.endswith(".json") else f"{name}.json"
    path = schema_dir() / file
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FatalError(f"schema {file} not found in {path.parent} (set STYLUS_DOCS_SCHEMA_DIR)") from exc


def struct_fields(spec: str) -> list[tuple[str, str]]:
    """``(name, x-arrow type)`` of each field of a ``struct<name:type,...>`` spec, in order."""
    if not (spec.startswith("struct<") and spec.endswith(">")):
        raise ValueError(f"not a struct type: {spec!r}")
    out: list[tuple[str, str]] = []
    depth, start, inner = 0, 0, spec[7:-1]
    for i, ch in enumerate(inner + ","):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            name, sep, kind = inner[start:i].partition(":")
            if not sep or not name.strip() or not kind.strip():
                raise ValueError(f"bad struct field {inner[start:i]!r} in {spec!r}")
            out.append((name.strip(), kind.strip()))
            start = i + 1
    return out


def _arrow_type(spec: str, dim: int | None) -> pa.DataType:
    if spec in _SCALARS:
        return _SCALARS[spec]
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(_arrow_type(spec[5:-1], dim))
    if spec.startswith("struct<"):
        return pa.struct([pa.field(name, _arrow_type(kind, dim)) for name, kind in struct_fields(spec)])
    if spec.startswith("fixed_size_list<") and spec.endswith(">"):
        if not dim:
            raise ValueError("a fixed_size_list column needs the embedding dimension")
        return pa.list_(_arrow_type(spec[16:-1], dim), dim)
    raise ValueError(f"unknown x-arrow type {spec!r}")


def _nullable(prop: dict[str, Any]) -> bool:
    kind = prop.get("type")
    if isinstance(kind, list):
        return "null" in kind
    return False


def arrow_schema(table: str, dim: int | None = None) -> pa.Schema:
    """The Arrow schema of ``table`` ("adapters" or "images") derived from its JSON Schema.

    Args:
        table: table name, a key of :data:`TABLES`.
        dim: embedding dimension (required for the adapters table).
    """
    schema = load_schema(TABLES[table])
    fields = [
        pa.field(name, _arrow_type(prop["x-arrow"], dim), nullable=_nullable(prop))
        for name, prop in schema["properties"].items()
    ]
    return pa.schema(fields, metadata={"schema": schema["$id"]})


def column_names(table: str) -> list[str]:
    """Column names of ``table`` in order."""
    return list(load_schema(TABLES[table])["properties"])


@functools.cache
def _validator(name: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (load_schema(file)["$id"], Resource.from_contents(load_schema(file))) for file in SCHEMA_FILES
    )
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


def validation_errors(name: str, obj: Any) -> list[str]:
    """Messages of every violation of schema ``name`` by ``obj`` (empty when valid)."""
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in _validator(name).iter_errors(obj)
    ]


def validate(name: str, obj: Any) -> None:
    """Raise ``ValueError`` with the first violation when ``obj`` does not match schema ``name``."""
    errors = validation_errors(name, obj)
    if errors:
        raise ValueError(f"{name}: {errors[0]}")
