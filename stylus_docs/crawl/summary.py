"""The end-of-crawl summary: snapshot totals, request counters, failures, elapsed time, and for every
crawl what it fetched and carried over; against ``--previous``, what is new, changed and removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.crawl import digests
from stylus_docs.crawl.snapshot import committed_chunks, iter_chunk_records
from stylus_docs.crawl.state import CrawlState


def snapshot_totals(out: str | Path, source: str, record_ids: set[Any] | None = None) -> dict[str, Any]:
    """Count what the committed chunks hold (across every run of this crawl).

    Args:
        out: crawl output directory.
        source: ``civitai`` or ``hf``.
        record_ids: filled with the ids of the detail records (Civitai version ids, Hub repo ids), which
            :func:`stylus_docs.crawl.tombstones.finish_crawl` needs (one pass over the chunks, not two).

    Returns:
        For ``civitai``: models, unique_models, versions, images (``_images`` items) and
        version_images (``images`` of the version responses), chunks. For ``hf``: models,
        unique_models, cards, card_errors, chunks.
    """
    root = Path(out) / source
    totals: dict[str, Any] = {"chunks": len(committed_chunks(root, "models"))}
    if source == "civitai":
        # Through the chunks' digests (crawl.digests): chunks are not decoded again for this.
        ids = [entry.id for path in committed_chunks(root, "models") for entry in digests.models(path)]
        versions = images = version_images = 0
        for path in committed_chunks(root, "versions"):
            for entry in digests.versions(path):
                versions += 1
                if entry is None:
                    continue
                if record_ids is not None:
                    record_ids.add(entry.id)
                images += entry.images
                version_images += entry.version_images
        totals.update(models=len(ids), unique_models=len(set(ids)), versions=versions, images=images,
                      version_images=version_images,
                      chunks=totals["chunks"] + len(committed_chunks(root, "versions")))
    else:
        recs = list(iter_chunk_records(root, "models"))
        ids = [(r.get("item") or {}).get("id") for r in recs]
        if record_ids is not None:
            record_ids.update(i for i in ids if isinstance(i, str))
        totals.update(models=len(recs), unique_models=len(set(ids)),
                      cards=sum(1 for r in recs if r.get("card") is not None),
                      card_errors=sum(1 for r in recs if r.get("card_error")))
    return totals


def build_summary(out: str | Path, source: str, counters: dict[str, Any], elapsed_s: float,
                  totals: dict[str, Any] | None = None,
                  delta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the summary dict written to ``summary.json``.

    Args:
        out: crawl output directory.
        source: ``civitai`` or ``hf``.
        counters: this run's request counters (requests, retries_by_reason, failures_by_reason,
            record_failures, max_in_flight).
        elapsed_s: wall time of this run.
        totals: :func:`snapshot_totals` when already computed.
        delta: the fields of :func:`stylus_docs.crawl.tombstones.finish_crawl` (``fetched``,
            ``carried_over``, ``new``, ``changed``, ``removed``, ``delta``).
    """
    state = CrawlState(Path(out) / source).load()
    parts = state.get("partitions", {})
    incomplete = {k: v.get("failed") or "not finished" for k, v in parts.items() if not v.get("done")}
    totals = snapshot_totals(out, source) if totals is None else totals
    enums = state.get("enums") if isinstance(state.get("enums"), dict) else {}
    return {
        "source": source,
        **totals,
        **(delta or {}),
        **({"enums": enums.get("outcome")} if source == "civitai" else {}),
        "requests": counters.get("requests", 0),
        "retries": sum(counters.get("retries_by_reason", {}).values()),
        "retries_by_reason": counters.get("retries_by_reason", {}),
        "http_failures_by_reason": counters.get("failures_by_reason", {}),
        "failed_records": sum(counters.get("record_failures", {}).values()),
        "failed_records_by_reason": counters.get("record_failures", {}),
        "max_in_flight": counters.get("max_in_flight", 0),
        "partitions": len(parts),
        "incomplete_partitions": incomplete,
        "complete": not incomplete,
        "runs": state.get("runs", 1),
        "elapsed_s": round(elapsed_s, 3),
        "models_per_s": round(totals["models"] / elapsed_s, 2) if elapsed_s > 0 else None,
        "requests_per_s": round(counters.get("requests", 0) / elapsed_s, 2) if elapsed_s > 0 else None,
    }


def write_summary(out: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``OUT/<source>/summary.json`` atomically; return its path."""
    path = Path(out) / summary["source"] / "summary.json"
    atomic_write_text(path, json.dumps(summary, indent=1, sort_keys=True))
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the terminal."""
    lines = [f"crawl {summary['source']}: {'complete' if summary['complete'] else 'INCOMPLETE'}"]
    if summary["source"] == "civitai":
        lines.append(f"  models {summary['models']}  versions {summary['versions']}  "
                     f"images {summary['images']}")
    else:
        lines.append(f"  models {summary['models']}  cards {summary['cards']}  "
                     f"card errors {summary['card_errors']}")
    lines.append(f"  requests {summary['requests']}  retries {summary['retries']} "
                 f"{summary['retries_by_reason']}")
    lines.append(f"  failed records {summary['failed_records']} {summary['failed_records_by_reason']}")
    info = summary.get("delta")
    if info is not None:
        unit = "versions" if summary["source"] == "civitai" else "cards"
        lines.append(f"  {unit} fetched {summary['fetched']}  carried over {summary['carried_over']}  "
                     f"new {summary['new']}  changed {summary['changed']}  removed {summary['removed']}")
        if info.get("previous"):
            tomb = info.get("tombstones") or {}
            lines.append(f"  previous {info['previous']}  carry-over {info.get('carry_over')}")
            lines.append("  tombstones " + (f"{tomb.get('new', 0)} new, {tomb.get('carried_forward', 0)} "
                                            "carried forward" if tomb.get("written")
                                            else f"none written: {tomb.get('reason')}"))
    if summary.get("enums") not in (None, "fetched", "kept"):
        lines.append(f"  enums {summary['enums']}")
    if summary["incomplete_partitions"]:
        lines.append(f"  incomplete partitions {summary['incomplete_partitions']}")
    lines.append(f"  elapsed {summary['elapsed_s']} s  max in flight {summary['max_in_flight']}")
    return "\n".join(lines)
