"""Rendering of query hits and SQL results for the command line (table, JSON, JSONL, CSV)."""

from __future__ import annotations

import csv
import datetime as _dt
import decimal
import json
import math
from collections.abc import Sequence
from typing import IO, Any

from stylus_docs.query.core import Hit


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def hit_record(hit: Hit, rank: int) -> dict[str, Any]:
    """A flat JSON record of one hit: id, rank, fused score, components and display fields."""
    rec: dict[str, Any] = {
        "rank": rank,
        "adapter_id": hit.adapter_id,
        "score": hit.score,
        "dense": round(hit.dense, 6),
        "concept": round(hit.concept, 6),
        "bm25": round(hit.bm25, 6),
        "dense_rank": hit.dense_rank,
        "bm25_rank": hit.bm25_rank,
        "dense_weight": hit.dense_weight,
        "bm25_weight": hit.bm25_weight,
    }
    rec.update(hit.fields)
    return _jsonable(rec)


def _cell(value: Any, width: int) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def write_table(
    out: IO[str], columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 40
) -> None:
    """A plain aligned text table (no dependencies, stable for diffing)."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


HIT_TABLE_COLUMNS = (
    "rank",
    "adapter_id",
    "score",
    "dense",
    "bm25",
    "title",
    "type",
    "base_model",
    "category",
)


def write_hits(out: IO[str], hits: Sequence[Hit], fmt: str) -> None:
    """Hits of one query as ``table`` or ``json``."""
    records = [hit_record(h, i + 1) for i, h in enumerate(hits)]
    if fmt == "json":
        json.dump(records, out, ensure_ascii=False, indent=2)
        out.write("\n")
        return
    rows = [[_fmt_num(rec.get(c)) for c in HIT_TABLE_COLUMNS] for rec in records]
    write_table(out, HIT_TABLE_COLUMNS, rows)


def _fmt_num(v: Any) -> Any:
    return f"{v:.4f}" if isinstance(v, float) else v


def write_sql(out: IO[str], columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    """A SQL result as ``table``, ``json`` (list of objects) or ``csv`` (header + rows)."""
    if fmt == "json":
        json.dump(
            [_jsonable(dict(zip(columns, r, strict=True))) for r in rows], out, ensure_ascii=False, indent=2
        )
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                [
                    json.dumps(_jsonable(v), ensure_ascii=False) if isinstance(v, (list, dict)) else v
                    for v in r
                ]
            )
    else:
        write_table(out, columns, rows)
