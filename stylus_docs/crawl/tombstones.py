"""End of a crawl: what changed since ``--previous``, and tombstones for what a complete listing lost.

Run by the driver after the pipeline, on every run (a resumed run recounts from the chunks, so the
counts are the snapshot's, not one run's). Tombstones are written only when

* the new listing is complete: every partition done, none stopped by ``--limit``, no partition cut
  short by a repeated cursor, no listed item refused without a usable id (a refused item *with* an id is
  present, just unusable: it is never tombstoned);
* the previous snapshot comes from the same host with the same filters
  (:meth:`~stylus_docs.crawl.delta.PreviousSnapshot.tombstone_problem`).

Otherwise none are written and the summary says why. ``RAW/<source>/tombstones-NNNNN.jsonl.gz``, one line
per deleted thing (read by :mod:`stylus_docs.normalize.deletions`)::

    {"source": "civitai"|"hf", "kind": "model"|"version", "id": <civitai id | hf "owner/name">,
     "model_id": <civitai model id of a version, else null>, "last_seen": "<ISO-8601 UTC>",
     "reason": "absent_from_listing"|"version_removed", "host": "<API base URL>",
     "record": <last known raw record or null>}

``last_seen`` is when the previous snapshot's listing finished. Tombstones of the previous snapshot whose
thing is still absent are carried forward unchanged (their first ``last_seen`` kept). The phase is
marked done in ``state.json`` (section ``delta``); a run killed inside it rewrites it from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stylus_docs.crawl import delta, digests
from stylus_docs.crawl.snapshot import committed_chunks, iter_chunk_records, records_with_ids, write_chunk
from stylus_docs.crawl.state import CrawlState, read_failures

logger = logging.getLogger(__name__)

#: Chunk prefix of tombstone files.
PREFIX = "tombstones"
ABSENT = "absent_from_listing"
VERSION_REMOVED = "version_removed"


def _int_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def listing_problem(state: dict[str, Any], failures: Iterable[dict[str, Any]]) -> str | None:
    """Why this crawl's listing is not the whole catalogue (for its filters), or None when it is."""
    parts = state.get("partitions") or {}
    if not parts:
        return "nothing was listed"
    unfinished = sorted(k for k, v in parts.items() if not v.get("done"))
    if unfinished:
        return f"listing incomplete ({', '.join(unfinished[:3])} not done)"
    if any(v.get("limited") for v in parts.values()):
        return "listing stopped at --limit"
    for row in failures:
        if row.get("stage") == "listing" and row.get("reason") == "cursor_loop":
            return "a listing partition stopped at a repeated cursor"
        if row.get("stage") == "model" and row.get("id") is None:
            return "a listed item without a usable id was refused"
    return None


def refused_ids(failures: Iterable[dict[str, Any]]) -> set[Any]:
    """Ids of listed items that were refused (present in the catalogue, absent from the snapshot)."""
    return {row["id"] for row in failures if row.get("stage") == "model" and row.get("id") is not None}


class _Writer:
    """Buffers tombstones and publishes them in chunks (after removing those of an interrupted phase)."""

    def __init__(self, root: Path, per_chunk: int, enabled: bool) -> None:
        self.root = root
        self.per_chunk = max(1, per_chunk)
        self.enabled = enabled
        self.buffer: list[dict[str, Any]] = []
        self.keys: set[tuple[str, Any]] = set()
        self.counts = {"new": 0, "carried_forward": 0, "model": 0, "version": 0}
        if enabled:
            for path in committed_chunks(root, PREFIX):
                path.unlink(missing_ok=True)

    def add(self, line: dict[str, Any], carried: bool = False) -> None:
        key = (line["kind"], line["id"])
        if key in self.keys:
            return
        self.keys.add(key)
        self.counts["carried_forward" if carried else "new"] += 1
        self.counts[line["kind"]] += 1
        if not self.enabled:
            return
        self.buffer.append(line)
        if len(self.buffer) >= self.per_chunk:
            self.flush()

    def flush(self) -> None:
        if self.enabled and self.buffer:
            write_chunk(self.root, PREFIX, self.buffer)
        self.buffer = []


def _stone(prev: delta.PreviousSnapshot, kind: str, ident: Any, model_id: int | None, reason: str,
           record: Any) -> dict[str, Any]:
    return {"source": prev.source, "kind": kind, "id": ident, "model_id": model_id,
            "last_seen": prev.last_seen, "reason": reason, "host": prev.host, "record": record}


def finish_crawl(cfg: Any, previous: delta.PreviousSnapshot | None, record_ids: set[Any]) -> dict[str, Any]:
    """Count what the snapshot fetched and carried over, compare it with ``previous``, write tombstones.

    Args:
        cfg: the :class:`~stylus_docs.crawl.engine.CrawlConfig`.
        previous: the ``--previous`` snapshot, or None for a full crawl.
        record_ids: ids of the committed detail records (Civitai version ids) or records (Hub repo ids).

    Returns:
        The summary's delta fields: ``fetched``, ``carried_over``, ``new``, ``changed``, ``removed``
        (all ints; records = Civitai versions or Hub repos), ``tombstones`` (``{written, reason}`` or
        ``{written, done, new, carried_forward, model, version}``) and ``delta`` (all of these again
        plus ``previous``, ``carry_over`` and per-model/per-version counts).

        ``new``: records listed now and not in the previous listing; ``changed``: records in both whose
        listing content differs, counters (downloads, likes, ratings) and positions ignored; ``removed``:
        tombstones found by this crawl (not those carried forward); ``fetched``/``carried_over``: detail
        records fetched / copied from the previous snapshot (they add up to the snapshot's records).
    """
    root = Path(cfg.out) / cfg.source
    state_store = CrawlState(root)
    state = state_store.load()
    failures = read_failures(root)
    carried = len(delta.CarryLedger(root).ids() & record_ids)
    info: dict[str, Any] = {"previous": previous.path if previous else None}
    problem = listing_problem(state, failures)
    fingerprint = cfg.fingerprint()
    carry_problem = previous.carry_problem(fingerprint) if previous else "no --previous"
    info["carry_over"] = "on" if carry_problem is None else f"off: {carry_problem}"
    if previous is None:
        stone_problem: str | None = "no --previous"
    else:
        stone_problem = problem or previous.tombstone_problem(fingerprint)
    saved = state_store.section("delta").get("tombstones")
    write = stone_problem is None and not (isinstance(saved, dict) and saved.get("done"))
    writer = _Writer(root, cfg.models_per_chunk, write)
    refused = refused_ids(failures)
    if cfg.source == "civitai":
        counts = _civitai(cfg, root, previous, writer, refused, count_only=stone_problem is not None)
    else:
        counts = _hf(root, previous, writer, refused, count_only=stone_problem is not None)
    writer.flush()
    if stone_problem is not None:
        tomb = {"written": False, "reason": stone_problem}
        removed = 0
    elif write:
        tomb = {"written": True, "done": True, **writer.counts}
        state_store.update_section("delta", tombstones=tomb)
        removed = writer.counts["new"]
    else:
        tomb = dict(saved)
        removed = int(tomb.get("new", 0))
    info["tombstones"] = tomb
    info.update(counts)
    total = len(record_ids)
    top = {"fetched": total - carried, "carried_over": carried, "new": counts["new_records"],
           "changed": counts["changed_records"], "removed": removed}
    info.update(top)  # the delta block stands alone too (rebuild's last-run.json keeps it whole)
    return {**top, "tombstones": tomb, "delta": info}


def _civitai(cfg: Any, root: Path, previous: delta.PreviousSnapshot | None, writer: _Writer,
             refused: set[Any], count_only: bool) -> dict[str, Any]:
    """Compare the listings model by model; tombstones for absent models and removed versions.

    The listings are compared through their chunks' digests (:mod:`~stylus_docs.crawl.digests`: known
    already when this process crawled or fingerprinted them); only the old records that become
    tombstones are decoded.
    """
    now: dict[int, tuple[str, dict[int, str], bool]] = {}
    for entry in _listed(root):
        mid = _int_id(entry.id)
        if mid is None:
            continue
        now[mid] = (entry.fingerprint, entry.versions, entry.unusable_versions)
    listed_versions = {vid for _, fps, _ in now.values() for vid in fps}
    out = {"models": len(now), "models_new": len(now), "models_changed": 0, "models_absent": 0,
           "versions_listed": len(listed_versions), "versions_changed": 0, "versions_absent": 0,
           "new_records": len(listed_versions), "changed_records": 0}
    if previous is None:
        return out
    old_models: set[int] = set()
    old_present: set[int] = set()
    absent_models: list[int] = []
    removed_versions: dict[int, int] = {}
    for entry in _listed(previous.root):
        mid = _int_id(entry.id)
        if mid is None or mid in old_models:
            continue
        old_models.add(mid)
        fps = entry.versions
        current = now.get(mid)
        if current is None:
            if mid in refused:
                continue
            out["models_absent"] += 1
            absent_models.append(mid)
            continue
        model_fp, new_fps, unusable_versions = current
        model_changed = model_fp != entry.fingerprint
        out["models_changed"] += model_changed
        for vid, fp in fps.items():
            if vid in listed_versions:
                old_present.add(vid)
                version_changed = new_fps.get(vid, fp) != fp
                out["versions_changed"] += version_changed
                out["changed_records"] += version_changed or model_changed
            elif not unusable_versions:
                # A listed model holding a version entry we could not read might still hold this one.
                removed_versions[vid] = mid
    out["models_new"] = len(set(now) - old_models)
    out["new_records"] = len(listed_versions - old_present)
    out["versions_absent"] = len(removed_versions)
    if count_only:
        return out
    if absent_models:
        items = records_with_ids(previous.root, "models", set(absent_models))
        for mid in absent_models:
            writer.add(_stone(previous, "model", mid, None, ABSENT, items.get(mid)))
    if removed_versions:
        records = records_with_ids(previous.root, "versions", set(removed_versions))
        for vid, mid in sorted(removed_versions.items()):
            writer.add(_stone(previous, "version", vid, mid, VERSION_REMOVED, records.get(vid)))
    for stone in iter_chunk_records(previous.root, PREFIX):
        if not isinstance(stone, dict):
            continue
        ident = _int_id(stone.get("id"))
        if stone.get("kind") == "model" and ident is not None and ident not in now and ident not in refused:
            writer.add(stone, carried=True)
        elif stone.get("kind") == "version" and ident is not None and ident not in listed_versions:
            writer.add(stone, carried=True)
    return out


def _listed(root: Path) -> list[digests.ListedModel]:
    """The digests of every item of the ``models`` chunks under ``root``, in chunk order."""
    return [entry for path in committed_chunks(root, "models") for entry in digests.models(path)]


def _hf(root: Path, previous: delta.PreviousSnapshot | None, writer: _Writer, refused: set[Any],
        count_only: bool) -> dict[str, Any]:
    """Compare the Hub listings repo by repo; tombstones for absent repos."""
    now: dict[str, tuple[str, Any]] = {}
    for record in iter_chunk_records(root, "models"):
        item = record.get("item") if isinstance(record, dict) else None
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            now[item["id"]] = (delta.hf_fingerprint(item), delta.hf_revision(item))
    out = {"models": len(now), "models_new": len(now), "models_changed": 0, "models_absent": 0,
           "new_records": len(now), "changed_records": 0}
    if previous is None:
        return out
    old: set[str] = set()
    for record in iter_chunk_records(previous.root, "models"):
        item = record.get("item") if isinstance(record, dict) else None
        rid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(rid, str) or rid in old:
            continue
        old.add(rid)
        current = now.get(rid)
        if current is None:
            if rid in refused:
                continue
            out["models_absent"] += 1
            if not count_only:
                writer.add(_stone(previous, "model", rid, None, ABSENT, record))
            continue
        changed = current != (delta.hf_fingerprint(item), delta.hf_revision(item))
        out["models_changed"] += changed
        out["changed_records"] += changed
    out["models_new"] = out["new_records"] = len(set(now) - old)
    if count_only:
        return out
    for stone in iter_chunk_records(previous.root, PREFIX):
        if isinstance(stone, dict) and isinstance(stone.get("id"), str) and stone["id"] not in now and (
                stone["id"] not in refused):
            writer.add(stone, carried=True)
    return out
