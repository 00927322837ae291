"""De-duplication of a snapshot's chunks by record id: the plain functions of a keyed aggregation.

Partitions of a Civitai listing overlap (a model with versions on two base models is listed by both), and
on several workers no process sees what another one committed. So the crawl pipeline groups every
committed record by id (a ``GroupByKey`` in ``pipelines/crawl.py``), keeps one copy (:func:`extra_copies`;
for listings the merge of all copies, :func:`merge_listings`, since each partition's copy lists only its
own versions) and rewrites each chunk that holds an extra copy (:func:`drop_lines`). This is what makes
"each model exactly once" hold on any runner.

A chunk is rewritten atomically under its own name, so a reader (or a kill) sees either the old or the
new chunk; a rerun of the same crawl finds the duplicates again and finishes the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_bytes
from stylus_docs.crawl.snapshot import (
    committed_chunks,
    encode_record,
    gzip_lines,
    iter_chunk_lines,
    leading_id,
)

#: Where a copy lives and what it holds: (chunk number, line number in the chunk, chunk path, the line).
Place = tuple[int, int, str, bytes]
#: What to do to one line of a chunk: ``(line number, replacement line or None to drop it)``.
Edit = tuple[int, bytes | None]


def chunk_paths(directory: str | os.PathLike[str], prefix: str, _signal: object = None) -> list[str]:
    """Committed ``prefix`` chunks of ``directory`` (``_signal``: a side input that orders this call after
    the stage writing them)."""
    return [str(p) for p in committed_chunks(directory, prefix)]


def _chunk_number(path: str) -> int:
    return int(Path(path).name.split("-", 1)[1].split(".", 1)[0])


def record_places(path: str) -> Iterator[tuple[int, Place]]:
    """``(record id, place)`` of every line of one chunk whose record has an integer ``id``."""
    number = _chunk_number(path)
    for line_no, line in enumerate(iter_chunk_lines(path)):
        ident = leading_id(line)
        if ident is None:  # a record whose keys do not start with "id": decode this one line
            record = json.loads(line)
            ident = record.get("id") if isinstance(record, dict) else None
        if isinstance(ident, int):
            yield ident, (number, line_no, path, line)


def merge_listings(lines: Iterable[bytes]) -> bytes:
    """One ``/models`` item from the copies several partitions listed.

    Each listing trims ``modelVersions`` to the versions matching its own filters (API-NOTES: baseModels
    "trims modelVersions[] to matching versions"), so the copies are merged, not picked: the fields of the
    copy that lists the most versions (ties: the smaller line), and the union of the versions, newest
    (highest id) first. Decided from the contents only, so every runner writes the same line.
    """
    records = [json.loads(line) for line in sorted(lines)]
    base = max(records, key=lambda r: len(r.get("modelVersions") or []))
    versions: dict[Any, Any] = {}
    for record in records:
        for version in record.get("modelVersions") or []:
            key = version.get("id") if isinstance(version, dict) else json.dumps(version, sort_keys=True)
            versions.setdefault(key, version)
    merged = dict(base)
    if any(isinstance(r.get("modelVersions"), list) for r in records):
        merged["modelVersions"] = sorted(versions.values(), key=_version_order)
    return encode_record(merged)


def _version_order(version: Any) -> tuple[int, int]:
    vid = version.get("id") if isinstance(version, dict) else None
    return (0, -vid) if isinstance(vid, int) else (1, 0)


def extra_copies(group: tuple[int, Iterable[Place]], merge: bool = False) -> Iterator[tuple[str, Edit]]:
    """The edits that leave one copy of an id: the first in chunk order stays (with ``merge``, replaced by
    :func:`merge_listings` of all copies); every other copy is dropped. ``(chunk path, edit)``."""
    _, places = group
    ordered = sorted(places)
    if len(ordered) < 2:
        return
    first = ordered[0]
    if merge:
        merged = merge_listings(place[3] for place in ordered)
        if merged != first[3]:
            yield first[2], (first[1], merged)
    for _number, line_no, path, _line in ordered[1:]:
        yield path, (line_no, None)


def drop_lines(group: tuple[str, Iterable[Edit]]) -> int:
    """Apply the edits to one chunk (rewritten atomically under its name); return the lines dropped."""
    path, edits = group
    todo = dict(edits)
    kept: list[bytes] = []
    for i, line in enumerate(iter_chunk_lines(path)):
        if i in todo:
            if todo[i] is not None:
                kept.append(todo[i])
        else:
            kept.append(line)
    atomic_write_bytes(path, gzip_lines(kept))
    return sum(1 for v in todo.values() if v is None)
