"""Writing a StylusDocs build: Parquet shards, dead letters, manifest, publication, retention.

Shards are written with an explicit Arrow schema derived from ``schemas/`` (zstd, page checksums on),
each atomically (temp name + rename) into ``DOCS/builds/<id>/``. The manifest is written last; only then
does :func:`finalize_build` switch ``CURRENT`` with :func:`stylus_docs.release.publish`, so a reader never
sees half a build and a failed build leaves the previous one live.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stylus_docs import release
from stylus_docs.atomic import atomic_open, atomic_write_text
from stylus_docs.errors import FatalError
from stylus_docs.schemas import TABLES, arrow_schema, load_schema, struct_fields, validation_errors

logger = logging.getLogger(__name__)

TABLE_DIRS = {"adapters": "adapters", "images": "images", "dead_letter": "dead_letter"}
#: Columns read back from a previous release for incremental reuse.
REUSE_COLUMNS = ["adapter_id", "content_hash", "refiner", "embedder", "refined_description", "category",
                 "recommended_weight", "embedding"]  # fmt: skip


def shard_of(key: str, shards: int) -> int:
    """Stable shard index of a key (CRC32, identical across processes and runs)."""
    return zlib.crc32(key.encode("utf-8")) % shards


def shard_path(table: str, index: int, count: int, ext: str = "parquet") -> str:
    """Relative path of a shard: ``adapters/part-00003-of-00016.parquet``."""
    return f"{TABLE_DIRS[table]}/part-{index:05d}-of-{count:05d}.{ext}"


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_FLOAT_MAX = {"float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}


def _value_problem(spec: str, value: Any, dim: int | None) -> str | None:
    """Why ``value`` cannot be stored in a column of x-arrow type ``spec`` (None when it can)."""
    if spec in _INT_RANGE:
        lo, hi = _INT_RANGE[spec]
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{type(value).__name__} is not an integer"
        return None if lo <= value <= hi else f"{value} is out of {spec} range"
    if spec in _FLOAT_MAX:
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            return f"{type(value).__name__} is not a number"
        if not math.isfinite(value) or abs(value) > _FLOAT_MAX[spec]:
            return f"{value!r} is not a finite {spec}"
        return None
    if spec == "string":
        if not isinstance(value, str):
            return f"{type(value).__name__} is not a string"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text is not valid Unicode (lone surrogate)"
        return None
    if spec == "bool":
        return None if isinstance(value, bool) else f"{type(value).__name__} is not a boolean"
    if spec.startswith("timestamp"):
        try:
            _timestamp(value)
        except (TypeError, ValueError) as exc:
            return f"not a timestamp ({exc})"
        return None
    if spec.startswith("struct<"):
        if not isinstance(value, dict):
            return f"{type(value).__name__} is not an object"
        fields = dict(struct_fields(spec))
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown:
            return f"field {unknown[0]!r} is not in {spec}"
        for name, kind in fields.items():
            if value.get(name) is not None and (problem := _value_problem(kind, value[name], dim)):
                return f"{name}: {problem}"
        return None
    if spec.startswith("list<"):
        if not isinstance(value, list | tuple):
            return f"{type(value).__name__} is not a list"
        inner = spec[5:-1]
        return next((p for p in (_value_problem(inner, v, dim) for v in value) if p), None)
    if spec.startswith("fixed_size_list<"):
        try:
            vec = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return "not a numeric vector"
        if vec.ndim != 1 or (dim is not None and vec.shape[0] != dim):
            return f"vector of shape {vec.shape}, expected ({dim},)"
        return None if bool(np.isfinite(vec).all()) else "vector holds a non-finite value"
    return None


def row_problem(table: str, row: dict[str, Any], dim: int | None = None) -> str | None:
    """The first reason ``row`` would not fit ``table``'s schema, or None.

    Checked per row before writing, so one bad record becomes a dead letter instead of failing the
    whole shard write (and the build): wrong types, integers out of range, non-finite numbers (NaN is a
    schema violation everywhere), text that is not valid Unicode, a missing required value, a column the
    schema does not have.
    """
    schema = load_schema(TABLES[table])
    props, required = schema["properties"], set(schema.get("required", ()))
    for name in row:
        if name not in props:
            return f"column {name!r} is not in {TABLES[table]}"
    for name, prop in props.items():
        value = row.get(name, prop.get("default"))
        if value is None:
            if name in required and "null" not in (prop.get("type") or []):
                return f"column {name!r} is required"
            continue
        problem = _value_problem(prop["x-arrow"], value, dim)
        if problem:
            return f"column {name!r}: {problem}"
    return None


def rows_to_table(table: str, rows: list[dict[str, Any]], dim: int | None = None) -> pa.Table:
    """Rows (dicts keyed by column) → an Arrow table with the table's explicit schema.

    Raises:
        ValueError: a row does not fit the schema (wrong type, wrong embedding size).
    """
    schema = arrow_schema(table, dim)
    known = set(schema.names)
    # A column missing from a row takes its JSON Schema ``default`` (``deleted`` = false), so writers
    # that predate a column still write valid shards.
    defaults = {name: prop.get("default") for name, prop in load_schema(TABLES[table])["properties"].items()}
    for row in rows:
        unknown = sorted(set(row) - known)
        if unknown:
            # Dropping them silently is how the render columns once vanished: refuse instead.
            raise ValueError(f"{table} row has columns not in schemas/{table}.v1.json: {', '.join(unknown)}")
    columns: dict[str, pa.Array] = {}
    for fld in schema:
        values = [row.get(fld.name, defaults.get(fld.name)) for row in rows]
        if pa.types.is_timestamp(fld.type):
            values = [_timestamp(v) for v in values]
        if pa.types.is_fixed_size_list(fld.type):
            size = fld.type.list_size
            if rows:
                flat = np.asarray(values, dtype=np.float32)
                if flat.ndim != 2 or flat.shape[1] != size:
                    raise ValueError(f"embedding shape {flat.shape} does not match dim {size}")
                columns[fld.name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), size)
            else:
                columns[fld.name] = pa.array([], type=fld.type)
            continue
        columns[fld.name] = pa.array(values, type=fld.type)
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def file_entry(build_dir: Path, rel: str, table: str, rows: int) -> dict[str, Any]:
    """Manifest ``files`` entry of a written file."""
    path = build_dir / rel
    return {"table": table, "path": rel, "rows": rows, "bytes": path.stat().st_size,
            "sha256": release.sha256_file(path)}  # fmt: skip


def write_parquet_shard(
    build_dir: str | os.PathLike[str], table: str, index: int, count: int, rows: list[dict[str, Any]],
    dim: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write one Parquet shard atomically; return its manifest entry.

    Rows are sorted by (adapter_id, image_id) so a rebuild of the same input writes the same bytes.
    """
    base = Path(build_dir)
    rel = shard_path(table, index, count)
    rows = sorted(rows, key=lambda r: (r.get("adapter_id") or "", r.get("image_id") or ""))
    arrow = rows_to_table(table, rows, dim)
    with atomic_open(base / rel, "wb") as handle:
        pq.write_table(arrow, handle, compression="zstd", write_page_checksum=True, write_statistics=True)
    return file_entry(base, rel, table, len(rows))


def write_dead_letters(
    build_dir: str | os.PathLike[str], letters: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """Write all dead letters as one JSONL shard (sorted for determinism); return its manifest entry."""
    base = Path(build_dir)
    rel = shard_path("dead_letter", 0, 1, "jsonl")
    items = sorted(
        letters, key=lambda d: (d.get("stage") or "", d.get("record_id") or "", d.get("reason") or "")
    )
    with atomic_open(base / rel, "w") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
    return file_entry(base, rel, "dead_letter", len(items))


#: Path (in a build) of the list of adapters the build removed; its manifest table is ``removed``.
REMOVED_FILE = "removed.json"


def write_removed(build_dir: str | os.PathLike[str], entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write ``removed.json`` (``{"count", "adapters": [{adapter_id, reason, last_seen, host}]}``, sorted by
    adapter id); return its manifest entry (table ``removed``, rows = count)."""
    base = Path(build_dir)
    items = sorted(
        ({k: e.get(k) for k in ("adapter_id", "reason", "last_seen", "host")} for e in entries),
        key=lambda e: e["adapter_id"],
    )
    body = {"count": len(items), "adapters": items}
    atomic_write_text(base / REMOVED_FILE, json.dumps(body, indent=1, sort_keys=True) + "\n")
    return file_entry(base, REMOVED_FILE, "removed", len(items))


def check_invariant(counts: dict[str, Any]) -> None:
    """Raise FatalError unless input = written + Σ filtered + Σ dead_letter."""
    total = counts["written"] + sum(counts["filtered"].values()) + sum(counts["dead_letter"].values())
    if counts["input"] != total:
        raise FatalError(
            f"count invariant broken: input {counts['input']} != written {counts['written']} + filtered "
            f"{sum(counts['filtered'].values())} + dead letters {sum(counts['dead_letter'].values())}"
        )


def write_manifest(build_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Validate ``manifest`` against ``schemas/manifest.v1.json`` and the invariant, then write it last."""
    errors = validation_errors("manifest.v1.json", manifest)
    if errors:
        raise FatalError(f"refusing to write an invalid manifest: {errors[0]}")
    check_invariant(manifest["counts"])
    atomic_write_text(
        Path(build_dir) / release.MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    )


def finalize_build(docs: str | os.PathLike[str], build_id: str, manifest: dict[str, Any], keep: int) -> Path:
    """Write the manifest, publish the build (switch ``CURRENT``), prune to ``keep`` builds."""
    build_dir = release.build_path(docs, build_id)
    problems = release.verify_files(build_dir, manifest)
    if problems:
        raise FatalError(f"build {build_id} is not intact: {problems[0]}")
    write_manifest(build_dir, manifest)
    release.publish(docs, build_id)
    removed = release.prune(docs, keep)
    if removed:
        logger.info("pruned old builds: %s", ", ".join(removed))
    return build_dir


def utc_now() -> str:
    """Current time as ISO 8601 UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_previous(docs_old: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Rows of a previous release needed for reuse (refinement + embedding), shard by shard.

    ``docs_old`` may be a release root or a build directory; files come from its manifest.
    """
    build_dir = release.resolve_build(docs_old)
    manifest = release.load_manifest(build_dir)
    for path in release.table_files(build_dir, manifest, "adapters"):
        parquet = pq.ParquetFile(path, **release.PARQUET_READ_OPTIONS)
        names = [c for c in REUSE_COLUMNS if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(columns=names, batch_size=4096):
            cols = {name: batch.column(name) for name in names}
            emb = cols.pop("embedding", None)
            matrix = None
            if emb is not None and len(emb):
                matrix = emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), -1)
            plain = {k: v.to_pylist() for k, v in cols.items()}
            for i in range(batch.num_rows):
                row = {k: v[i] for k, v in plain.items()}
                row["embedding"] = matrix[i] if matrix is not None else None
                yield row


def previous_build_id(docs_old: str | os.PathLike[str]) -> str:
    """Build id of the previous release (for the manifest)."""
    return str(release.load_manifest(release.resolve_build(docs_old))["build_id"])
