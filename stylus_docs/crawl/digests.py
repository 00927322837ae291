"""What the crawl reads back from its own chunks: digests computed once per chunk, kept beside it.

A Civitai crawl reads its listing chunks several times: the pipeline fingerprints the versions of every
item it commits and, in a delta crawl, of every item of the previous snapshot; the end of the crawl
counts ids and images (:mod:`~stylus_docs.crawl.summary`) and compares the two listings
(:mod:`~stylus_docs.crawl.tombstones`). On the 2023 developer corpus (3,994 models, 5,900 versions)
decoding and fingerprinting the listing costs about a second each time and decoding the version records
(105 MB) more, while the delta crawl itself needs 40 listing requests and ~200 detail requests.

So the writer of a chunk computes its digests once, as it publishes the chunk, and keeps them

* in memory for the rest of the process, keyed by the file's identity (device, inode, size,
  modification and change times: a chunk is never modified once published, and a file written again
  under the same name is another key), and
* in ``<source>/.digests/<chunk name>.json`` (written atomically after the chunk; ``.``-names are no
  snapshot data for the build), sealed with the chunk file's size and CRC-32, :data:`INDEX_VERSION`
  and the fingerprint scheme (:data:`~stylus_docs.crawl.delta.FINGERPRINT_SCHEME`, which names the
  Python version), so the next day's delta crawl reads the previous snapshot's fingerprints and image
  counts instead of decoding its chunks.

A reader that finds neither (a chunk published by a run killed before its index, a snapshot written
before indexes existed, a seal that does not match) decodes the chunk: slower, the same answers. The
memo is per process (under a runner with worker processes the driver reads the indexes); :func:`forget`
empties it (the crawl driver does when it is done).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.crawl import delta
from stylus_docs.crawl.snapshot import iter_chunk_file
from stylus_docs.sources import civitai

#: Sub-directory of ``OUT/<source>`` holding the chunk indexes.
INDEX_DIR = ".digests"
#: Version of the index files: bump it when a digest (the fingerprints of :mod:`~stylus_docs.crawl.delta`
#: included) or the layout changes, so older indexes are ignored instead of compared with new digests.
INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class ListedModel:
    """The digests of one ``/models`` item of a ``models`` chunk.

    Attributes:
        id: the item's ``id`` as stored (an int for every item the crawler writes).
        fingerprint: :func:`~stylus_docs.crawl.delta.model_fingerprint` of the item.
        versions: :func:`~stylus_docs.crawl.delta.version_fingerprints` of the item.
        unusable_versions: the item lists a version entry without a usable id.
    """

    id: Any
    fingerprint: str
    versions: dict[int, str]
    unusable_versions: bool


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """What the summary counts of one record of a ``versions`` chunk.

    Attributes:
        id: the record's ``id``.
        images: its ``_images`` items (from ``/api/v1/images``).
        version_images: its ``images`` items (of the ``/model-versions`` answer).
    """

    id: Any
    images: int
    version_images: int


def listed_model(item: Any) -> ListedModel:
    """The digests of one listing item (a non-object gets ``id`` None and no versions)."""
    if not isinstance(item, dict):
        return ListedModel(None, "", {}, False)
    _, problems = civitai.version_ids(item)
    return ListedModel(item.get("id"), delta.model_fingerprint(item), delta.version_fingerprints(item),
                       bool(problems))  # fmt: skip


def version_entry(record: Any) -> VersionEntry | None:
    """The counts of one version record (None for a line that is not an object)."""
    if not isinstance(record, dict):
        return None
    return VersionEntry(record.get("id"), len(record.get("_images") or []), len(record.get("images") or []))


# -- memo and index files ------------------------------------------------------------------------------

_MEMO: dict[tuple[int, ...], tuple[str, tuple[Any, ...]]] = {}
_LOCK = threading.Lock()


def _key(path: str | os.PathLike[str]) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def index_path(chunk: str | os.PathLike[str]) -> Path:
    """Where the index of ``chunk`` (``…/models-00003.jsonl.gz``) is kept."""
    path = Path(chunk)
    return path.parent / INDEX_DIR / (path.name.removesuffix(".jsonl.gz") + ".json")


def _seal(chunk: str | os.PathLike[str]) -> list[int]:
    """The chunk file's size and CRC-32 (of its compressed bytes: a few MB, read in milliseconds)."""
    data = Path(chunk).read_bytes()
    return [len(data), zlib.crc32(data)]


def _remember(chunk: str | os.PathLike[str], kind: str, entries: tuple[Any, ...], rows: list[Any]) -> None:
    with _LOCK:
        _MEMO[_key(chunk)] = (kind, entries)
    body = {"version": INDEX_VERSION, "kind": kind, "fingerprints": delta.FINGERPRINT_SCHEME,
            "seal": _seal(chunk), "entries": rows}
    atomic_write_text(index_path(chunk), json.dumps(body, separators=(",", ":"), ensure_ascii=False))


def _recall(chunk: str | os.PathLike[str], kind: str) -> tuple[Any, ...] | list[Any] | None:
    """The memo's entries of ``chunk`` (a tuple), else its index's rows (a list), else None."""
    with _LOCK:
        found = _MEMO.get(_key(chunk))
    if found is not None and found[0] == kind:
        return found[1]
    try:
        body = json.loads(index_path(chunk).read_bytes())
    except (OSError, ValueError):
        return None
    if not (isinstance(body, dict) and body.get("version") == INDEX_VERSION and body.get("kind") == kind
            and body.get("fingerprints") == delta.FINGERPRINT_SCHEME and body.get("seal") == _seal(chunk)
            and isinstance(body.get("entries"), list)):  # fmt: skip
        return None
    return body["entries"]


def _store(chunk: str | os.PathLike[str], kind: str, entries: tuple[Any, ...]) -> None:
    with _LOCK:
        _MEMO[_key(chunk)] = (kind, entries)


def remember_models(chunk: str | os.PathLike[str], entries: list[ListedModel]) -> None:
    """Keep the digests of a ``models`` chunk just published at ``chunk`` (one entry per line)."""
    rows = [[e.id, e.fingerprint, list(e.versions.items()), e.unusable_versions] for e in entries]
    _remember(chunk, "models", tuple(entries), rows)


def remember_versions(chunk: str | os.PathLike[str], entries: Iterable[VersionEntry | None]) -> None:
    """Keep the counts of a ``versions`` chunk just published at ``chunk`` (one entry per line)."""
    entries = tuple(entries)
    rows = [None if e is None else [e.id, e.images, e.version_images] for e in entries]
    _remember(chunk, "versions", entries, rows)


def models(chunk: str | os.PathLike[str]) -> tuple[ListedModel, ...]:
    """The digests of every line of the ``models`` chunk ``chunk``, in order."""
    found = _recall(chunk, "models")
    if isinstance(found, tuple):
        return found
    entries: tuple[ListedModel, ...] | None = None
    if found is not None:
        with contextlib.suppress(TypeError, ValueError):
            entries = tuple(ListedModel(mid, str(fp), {int(v): str(f) for v, f in fps}, bool(bad))
                            for mid, fp, fps, bad in found)  # fmt: skip
    if entries is None:
        entries = tuple(listed_model(item) for item in iter_chunk_file(chunk))
    _store(chunk, "models", entries)
    return entries


def versions(chunk: str | os.PathLike[str]) -> tuple[VersionEntry | None, ...]:
    """The counts of every line of the ``versions`` chunk ``chunk``, in order."""
    found = _recall(chunk, "versions")
    if isinstance(found, tuple):
        return found
    entries: tuple[VersionEntry | None, ...] | None = None
    if found is not None:
        with contextlib.suppress(TypeError, ValueError):
            entries = tuple(None if row is None else VersionEntry(row[0], int(row[1]), int(row[2]))
                            for row in found)  # fmt: skip
    if entries is None:
        entries = tuple(version_entry(record) for record in iter_chunk_file(chunk))
    _store(chunk, "versions", entries)
    return entries


def listing_fingerprints(path: str) -> Iterator[tuple[int, str]]:
    """``(version id, fingerprint)`` of every version listed in one ``models`` chunk (a Beam FlatMap)."""
    for entry in models(path):
        yield from entry.versions.items()


def forget() -> None:
    """Drop the in-memory digests (the index files stay)."""
    with _LOCK:
        _MEMO.clear()
