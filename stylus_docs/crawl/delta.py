"""Delta crawls: what an earlier complete snapshot (``--previous RAW_OLD``) lets a crawl skip.

The listing is always fetched again (cheap: 100 models a request) and always written from the new
answers. What is skipped is the per-record detail work whose input did not change:

* **Civitai**: a version's details (``/model-versions/{id}`` and ``/images?modelVersionId=``, two
  requests) are carried over from ``RAW_OLD``'s ``versions`` chunks when the version's *listing
  fingerprint* (:func:`version_fingerprint`) is the same in both listings. The listing version object
  holds what those details derive from (files and hashes, images by id and URL, dates, trigger words,
  docs/API-NOTES.md §1.13); old snapshots lack ``updatedAt``, so the content is compared, not dates.
* **Hugging Face**: a README card is carried over when the repo's ``sha`` and ``lastModified`` are
  both unchanged (the card is fetched at that commit).

Carry-over needs an old snapshot whose detail records are what this crawl would fetch: same API host
(green and red answer differently), and for Civitai the same ``--nsfw`` and ``--max-images-per-version``.
Otherwise every detail is fetched and the summary says why (:meth:`PreviousSnapshot.carry_problem`).

Carried ids are appended to ``OUT/<source>/carried.jsonl`` *before* the chunk holding them is published,
so the exact count of carried records is the ledger's ids that are in committed chunks (a ``kill -9``
between the two leaves ledger ids that the next run carries again).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import sys
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs import safe_json
from stylus_docs.crawl.snapshot import committed_chunks, iter_chunk_records, leading_id
from stylus_docs.crawl.state import state_problem
from stylus_docs.errors import FatalError
from stylus_docs.sources import civitai

logger = logging.getLogger(__name__)

#: Ledger of carried ids beside the chunks (one JSON array of ids per line).
LEDGER = "carried.jsonl"
#: Version keys left out of the fingerprint: counters that move every day without changing what the
#: details hold, and the position (``index``), which shifts for every version when a new one is put first.
VOLATILE_VERSION_KEYS = frozenset({"stats", "index"})
#: Model keys copied into every ``/model-versions`` answer (``model {name, type, nsfw, poi, mode}``).
MODEL_KEYS_IN_VERSION = ("name", "type", "nsfw", "poi", "mode")
#: Model keys left out of the model fingerprint (counters; versions have their own fingerprints).
VOLATILE_MODEL_KEYS = frozenset({"stats", "modelVersions"})
#: Hub item keys left out of the repo fingerprint (download/like counters).
VOLATILE_HF_KEYS = frozenset({"downloads", "downloadsAllTime", "likes", "trendingScore"})
#: Query fields that change the order of a listing, not which records it holds.
ORDER_ONLY_QUERY_KEYS = frozenset({"sort", "page_size"})


#: How fingerprints are computed (:func:`_digest`); digests kept on disk under another scheme (another
#: Python included) are not compared with these (:mod:`~stylus_docs.crawl.digests` recomputes them).
FINGERPRINT_SCHEME = f"pickle5-fast-sha256/py{sys.version_info[0]}.{sys.version_info[1]}"


def _digest(value: Any) -> str:
    """SHA-256 (32 hex digits) of a parsed JSON value.

    The bytes hashed are the value pickled (protocol 5) in "fast" mode, i.e. without the memo, so they
    depend on the values, their types and the order of keys only, not on which objects happen to be
    shared. Nothing is ever unpickled: pickle is the serializer here because it is 3.5× faster than
    ``json.dumps(sort_keys=True)`` on listing versions (their image metadata dominates), and a delta
    crawl fingerprints every listed version. Unlike sorted JSON, a listing that sends the same keys in
    another order reads as changed: its details are fetched again, never wrongly carried over.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.fast = True
    try:
        pickler.dump(value)
    except (pickle.PicklingError, TypeError, ValueError, RecursionError):  # not plain JSON values
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:32]
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:32]


def _public(obj: dict[str, Any], drop: frozenset[str]) -> dict[str, Any]:
    """``obj`` without ``drop`` and without our own ``_``-prefixed keys (``_host``, ``_images``)."""
    return {k: v for k, v in obj.items() if k not in drop and not str(k).startswith("_")}


def version_fingerprint(item: dict[str, Any], version: dict[str, Any]) -> str:
    """Stable digest of what a version's detail records derive from, taken from its listing entry.

    Everything of the listing's version object except counters and position (files with their hashes,
    images with ids and URLs, ``publishedAt``/``updatedAt``, trigger words, base model…), plus the model
    fields that ``/model-versions/{id}`` repeats. Equal fingerprints in two listings of the same host mean
    the version's details need not be fetched again.
    """
    model = {k: item.get(k) for k in MODEL_KEYS_IN_VERSION}
    return _digest({"version": _public(version, VOLATILE_VERSION_KEYS), "model": model})


def version_fingerprints(item: Any) -> dict[int, str]:
    """``{version id: fingerprint}`` of a listing item (versions without an integer id left out)."""
    if not isinstance(item, dict):
        return {}
    out: dict[int, str] = {}
    for version in item.get("modelVersions") or []:
        if not isinstance(version, dict):
            continue
        vid = version.get("id")
        if isinstance(vid, int) and not isinstance(vid, bool) and vid > 0:
            out[vid] = version_fingerprint(item, version)
    return out


def model_fingerprint(item: dict[str, Any]) -> str:
    """Digest of a model's own listing content (description, tags, licence…; not counters or versions)."""
    return _digest(_public(item, VOLATILE_MODEL_KEYS))


def hf_revision(item: Any) -> tuple[Any, Any] | None:
    """``(sha, lastModified)`` of a Hub listing item, or None when neither is known (then always fetch)."""
    if not isinstance(item, dict):
        return None
    sha, modified = item.get("sha"), item.get("lastModified")
    if not isinstance(sha, str | type(None)) or not isinstance(modified, str | type(None)):
        return None
    if sha is None and modified is None:
        return None
    return sha, modified


def hf_fingerprint(item: dict[str, Any]) -> str:
    """Digest of a Hub listing item without its counters."""
    return _digest(_public(item, VOLATILE_HF_KEYS))


def comparable_query(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The listing filters of a crawl fingerprint that decide *which* records it holds."""
    query = dict(fingerprint.get("query") or {})
    return {k: v for k, v in query.items() if k not in ORDER_ONLY_QUERY_KEYS}


def host_kind(fingerprint: dict[str, Any]) -> str | None:
    """The Civitai host kind of a crawl fingerprint (snapshots older than hosts: inferred from the URL)."""
    if fingerprint.get("source") != "civitai":
        return None
    kind = fingerprint.get("host")
    if kind in civitai.HOSTS:
        return str(kind)
    url = str(fingerprint.get("api_url") or "").rstrip("/")
    return "red" if url == civitai.HOST_URLS["red"] else "green"


@dataclass(frozen=True)
class PreviousSnapshot:
    """A complete earlier crawl of the same source, as ``--previous`` names it.

    Args:
        path: the snapshot's OUT directory (holding ``civitai/`` or ``hf/``).
        source: ``civitai`` or ``hf``.
        fingerprint: its ``state.json`` fingerprint.
        last_seen: ISO-8601 UTC time its listing finished (the last time it saw what it holds).
    """

    path: str
    source: str
    fingerprint: dict[str, Any]
    last_seen: str

    @property
    def root(self) -> Path:
        """The source directory (``RAW_OLD/civitai`` or ``RAW_OLD/hf``)."""
        return Path(self.path) / self.source

    @property
    def host(self) -> str:
        """The API base URL the previous snapshot came from."""
        return str(self.fingerprint.get("api_url") or "").rstrip("/")

    @classmethod
    def open(cls, path: str | os.PathLike[str], source: str, out: str | os.PathLike[str]) -> PreviousSnapshot:
        """Check that ``path`` holds a complete ``source`` crawl and read what a delta crawl needs.

        Raises:
            FatalError: one line: no such crawl, the same directory as ``--out``, an unusable
                ``state.json``, another source, or a partition that is not done.
        """
        root = Path(path)
        state_path = root / source / "state.json"
        if root.resolve() == Path(out).resolve():
            raise FatalError(f"--previous {path} is the --out directory; a delta crawl writes a new snapshot")
        if not state_path.is_file():
            raise FatalError(f"--previous {path}: no {source} crawl there ({state_path} is missing)")
        try:
            state = safe_json.loads(state_path.read_bytes())
        except (OSError, safe_json.UnsafeJSON) as exc:
            why = " ".join(str(exc).split())[:200]
            raise FatalError(f"--previous {path}: {state_path} cannot be read ({why})") from None
        problem = state_problem(state)
        fingerprint = state.get("fingerprint") if isinstance(state, dict) else None
        if problem is not None or not isinstance(fingerprint, dict):
            raise FatalError(f"--previous {path}: {state_path} is not a crawl state "
                             f"({problem or 'no fingerprint'})")
        if fingerprint.get("source") != source:
            raise FatalError(f"--previous {path}: its {source}/state.json holds a "
                             f"{str(fingerprint.get('source'))[:20]!r} crawl")
        parts = state.get("partitions") or {}
        unfinished = sorted(k for k, v in parts.items() if not v.get("done"))
        if not parts or unfinished:
            which = ", ".join(unfinished[:3]) or "no partition was listed"
            raise FatalError(f"--previous {path} is not a complete snapshot (not done: {which}); finish "
                             "that crawl first (run its command again) or give a complete one")
        stamps = [str(v.get("updated_at")) for v in parts.values() if v.get("updated_at")]
        last_seen = max(stamps) if stamps else str(state.get("updated_at") or state.get("created_at") or "")
        return cls(str(root), source, fingerprint, last_seen or "1970-01-01T00:00:00Z")

    def carry_problem(self, fingerprint: dict[str, Any]) -> str | None:
        """Why the previous detail records cannot stand in for this crawl's (``fingerprint``), or None."""
        if self.host != str(fingerprint.get("api_url") or "").rstrip("/"):
            return f"other API host ({self.host} before, {fingerprint.get('api_url')} now)"
        if host_kind(self.fingerprint) != host_kind(fingerprint):
            return f"other host kind ({host_kind(self.fingerprint)} before, {host_kind(fingerprint)} now)"
        if self.source == "civitai":
            if self.fingerprint.get("max_images_per_version") != fingerprint.get("max_images_per_version"):
                return "other --max-images-per-version"
            before = bool((self.fingerprint.get("query") or {}).get("nsfw"))
            if before != bool((fingerprint.get("query") or {}).get("nsfw")):
                return "other --nsfw"
        return None

    def tombstone_problem(self, fingerprint: dict[str, Any]) -> str | None:
        """Why absence from this crawl's listing would not mean deletion, or None.

        A model missing from a green listing may still be on red (API-NOTES §1.12), and a model missing
        from a listing with other filters may simply not match them: only listings of the same host with
        the same filters are compared.
        """
        kind = host_kind(self.fingerprint)
        if self.host != str(fingerprint.get("api_url") or "").rstrip("/") or kind != host_kind(fingerprint):
            where = f"{self.host}, {kind}" if kind else self.host
            return (f"the previous snapshot comes from another host ({where}); absence here is not "
                    "evidence of deletion there")
        if comparable_query(self.fingerprint) != comparable_query(fingerprint):
            return "the previous snapshot was listed with other filters"
        return None


# -- ledger of carried ids ---------------------------------------------------------------------------


class CarryLedger:
    """Append-only ``OUT/<source>/carried.jsonl``: the ids of each carried chunk, written before it."""

    _lock = threading.Lock()

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root) / LEDGER

    def record(self, ids: Iterable[Any]) -> None:
        """Append one line holding ``ids`` (one ``write`` call: concurrent writers do not interleave)."""
        line = json.dumps(list(ids), separators=(",", ":"), ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8", errors="replace"))
            finally:
                os.close(fd)

    def ids(self) -> set[Any]:
        """Every id in complete lines (a last partial line left by a kill is skipped)."""
        out: set[Any] = set()
        if not self.path.exists():
            return out
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, list):
                    out.update(v for v in value if isinstance(v, int | str))
        return out


# -- Civitai -----------------------------------------------------------------------------------------


def version_chunks(snapshot: PreviousSnapshot) -> list[str]:
    """Paths of the previous snapshot's ``versions`` chunks."""
    return [str(p) for p in committed_chunks(snapshot.root, "versions")]


def model_chunks(snapshot: PreviousSnapshot) -> list[str]:
    """Paths of the previous snapshot's ``models`` chunks."""
    return [str(p) for p in committed_chunks(snapshot.root, "models")]


def carriable_version(record: Any) -> bool:
    """Whether an old version record may be carried over (a complete record: its images call worked).

    Not re-checked with :func:`stylus_docs.safe_json.find_problem`: the old chunks are this crawler's
    output, whose bodies were parsed strictly when fetched and which :func:`~stylus_docs.crawl.snapshot.
    encode_record` refuses to write when not strict JSON (re-walking 100+ MB of records every night
    would cost more than the requests saved).
    """
    if not isinstance(record, dict) or "_images_error" in record:
        return False
    vid = record.get("id")
    return isinstance(vid, int) and not isinstance(vid, bool) and vid > 0


def host_suffix(host_url: str) -> bytes:
    """How a line written for ``host_url`` ends: ``_host`` is the last key the crawler adds."""
    return b',"_host":' + json.dumps(host_url, ensure_ascii=False).encode("utf-8") + b"}\n"


def carry_line(line: bytes, suffix: bytes) -> tuple[int | None, Any]:
    """The version id of one old ``versions`` line and what to write for it.

    Returns:
        ``(id, line)`` when the line can be copied byte for byte (it starts with its id, ends with this
        crawl's ``_host`` and has no ``_images_error`` key); ``(id, record)`` with ``_host`` to be set
        when it must be re-encoded (a snapshot written before ``_host`` existed); ``(None, None)`` when
        it cannot be carried.
    """
    vid = leading_id(line)
    if vid is not None and line.endswith(suffix) and b'"_images_error":' not in line:
        return vid, line
    try:
        record = json.loads(line)
    except ValueError:
        return None, None
    if not carriable_version(record):
        return None, None
    return record["id"], record


# -- Hugging Face ------------------------------------------------------------------------------------


class HfCardIndex:
    """README cards of a previous Hub snapshot by repo id, compressed in memory (a few KB each).

    Only cards that were fetched without error are kept; a repo whose ``(sha, lastModified)`` is unknown
    is not (its card is always fetched again).
    """

    def __init__(self, snapshot: PreviousSnapshot) -> None:
        self._cards: dict[str, tuple[tuple[Any, Any], bytes]] = {}
        for record in iter_chunk_records(snapshot.root, "models"):
            if not isinstance(record, dict) or record.get("card_error"):
                continue
            item, card = record.get("item"), record.get("card")
            rid = item.get("id") if isinstance(item, dict) else None
            revision = hf_revision(item)
            if isinstance(rid, str) and isinstance(card, str) and revision is not None:
                self._cards[rid] = (revision, zlib.compress(card.encode("utf-8"), 6))

    def __len__(self) -> int:
        return len(self._cards)

    def card_for(self, item: dict[str, Any]) -> str | None:
        """The old card of ``item``'s repo when its ``sha`` and ``lastModified`` are unchanged, else None."""
        found = self._cards.get(str(item.get("id")))
        revision = hf_revision(item)
        if found is None or revision is None or found[0] != revision:
            return None
        return zlib.decompress(found[1]).decode("utf-8")
