"""Tombstones: what a complete crawl listing no longer has, and which adapter ids that covers.

The crawl writes ``RAW/<civitai|hf>/tombstones-NNNNN.jsonl.gz`` beside the data chunks, one line per
deleted thing::

    {"source": "civitai"|"hf", "kind": "model"|"version", "id": <civitai id (int) | hf "owner/name">,
     "model_id": <int, civitai versions>, "last_seen": "<ISO-8601 UTC>",
     "reason": "absent_from_listing"|"version_removed", "host": "<API base URL>",
     "record": <last known raw record or null>}

They are our own output, so :func:`read_tombstones` is strict: a line that is not such an object stops
the build (one line naming the file and line) instead of becoming a dead letter.

Coverage (:class:`Coverage`): a Civitai model tombstone covers every ``civitai:<model>@<version>``; a
version tombstone covers ``civitai:<model_id>@<id>``; an HF tombstone covers ``hf:<repo>@<any
revision>``. :func:`removal_candidates` lists the concrete adapter ids a build reports as removed: the
previous release's ids they cover (``--previous``), else the ids the tombstones themselves name.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs import safe_json
from stylus_docs.errors import FatalError
from stylus_docs.normalize.civitai import iso_utc, source_host

#: Chunk prefix of tombstone files (``tombstones-NNNNN.jsonl.gz``).
PREFIX = "tombstones"
_CHUNK = re.compile(r"^tombstones-\d{5,}\.jsonl\.gz$")
_HF_ID = re.compile(r"^[\w-][\w.-]*(/[\w-][\w.-]*)?$", re.ASCII)
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_INT64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Tombstone:
    """One validated tombstone line, without its record (the driver keeps only what it decides with).

    Args:
        source: ``civitai`` or ``hf``.
        kind: ``model`` or ``version``.
        id: Civitai model/version id as a string, or the HF repo id.
        model_id: the Civitai model id of a version tombstone (None otherwise).
        last_seen: ISO-8601 UTC.
        reason: machine-readable reason (``absent_from_listing``, ``version_removed``).
        host: API base URL the thing was last seen on (no credentials), or None.
        record_ids: adapter ids named by the last known record (its versions; an HF record's revision).
        has_record: the line carries a last known record (``--keep-deleted`` can write it).
        origin: ``<file>:<line>``.
    """

    source: str
    kind: str
    id: str
    model_id: str | None
    last_seen: str
    reason: str
    host: str | None
    record_ids: tuple[str, ...]
    has_record: bool
    origin: str

    @property
    def exact_id(self) -> str | None:
        """The adapter id of a Civitai version tombstone."""
        if self.source == "civitai" and self.kind == "version":
            return f"civitai:{self.model_id}@{self.id}"
        return None

    def covers(self, adapter_id: str) -> bool:
        """Whether this tombstone marks ``adapter_id`` deleted."""
        if self.source == "civitai" and self.kind == "model":
            return adapter_id.startswith(f"civitai:{self.id}@")
        if self.source == "hf":
            return adapter_id.startswith(f"hf:{self.id}@")
        return adapter_id == self.exact_id


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which adapter ids the tombstones of a build cover (picklable, small: ids only).

    Args:
        versions: exact Civitai adapter ids (version tombstones).
        civitai_models: Civitai model ids whose every version is covered.
        hf_repos: HF repo ids whose every revision is covered.
    """

    versions: frozenset[str] = frozenset()
    civitai_models: frozenset[str] = frozenset()
    hf_repos: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.versions or self.civitai_models or self.hf_repos)

    def covers(self, adapter_id: str) -> bool:
        """Whether ``adapter_id`` is marked deleted by some tombstone."""
        if adapter_id in self.versions:
            return True
        prefix, _, _ = adapter_id.partition("@")
        source, _, key = prefix.partition(":")
        if source == "civitai":
            return key in self.civitai_models
        if source == "hf":
            return key in self.hf_repos
        return False


def coverage(tombstones: Iterable[Tombstone]) -> Coverage:
    """The :class:`Coverage` of ``tombstones``."""
    items = list(tombstones)
    return Coverage(
        versions=frozenset(t.exact_id for t in items if t.exact_id),
        civitai_models=frozenset(t.id for t in items if t.source == "civitai" and t.kind == "model"),
        hf_repos=frozenset(t.id for t in items if t.source == "hf"),
    )


def removal_candidates(
    tombstones: Iterable[Tombstone], previous_ids: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Adapter id → ``{reason, last_seen, host}`` of every concrete id the tombstones remove.

    With a previous release (``previous_ids``, its adapter ids): the ids of it that a tombstone covers —
    what this build takes out of the catalogue. The crawl carries a tombstone forward for as long as its
    thing stays absent, so the tombstones' own ids would count the same deletion again every night.
    Without one: the ids the tombstones name (a version tombstone's id, the versions of a model's last
    listing, an HF record's revision). When several tombstones cover one id, the most specific (a
    version tombstone) wins, then the latest ``last_seen``.
    """
    items = sorted(tombstones, key=lambda t: (t.kind == "version", t.last_seen))
    out: dict[str, dict[str, Any]] = {}
    if not items:
        return out

    def put(adapter_id: str, t: Tombstone) -> None:
        out[adapter_id] = {"reason": t.reason, "last_seen": t.last_seen, "host": t.host}

    if previous_ids is None:
        for t in items:
            for adapter_id in t.record_ids:
                if t.covers(adapter_id):
                    put(adapter_id, t)
            if t.exact_id:
                put(t.exact_id, t)
        return dict(sorted(out.items()))
    by_key: dict[str, Tombstone] = {}
    for t in items:  # later (more specific, newer) wins
        by_key[t.exact_id or f"{t.source}:{t.id}"] = t
    for adapter_id in previous_ids:
        t = by_key.get(adapter_id) or by_key.get(adapter_id.partition("@")[0])
        if t is not None:
            put(adapter_id, t)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------- files
def tombstone_files(raw: Iterable[str]) -> list[Path]:
    """Tombstone chunks of the ``--raw`` directories (in ``DIR/civitai``, ``DIR/hf`` or ``DIR`` itself)."""
    out: dict[str, Path] = {}
    for arg in raw:
        root = Path(arg)
        if not root.is_dir():
            continue
        for folder in (root / "civitai", root / "hf", root):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if _CHUNK.match(path.name) and path.is_file():
                    out.setdefault(str(path.resolve()), path)
    return list(out.values())


def read_tombstones(files: Iterable[Path]) -> list[Tombstone]:
    """Every tombstone of ``files``, validated.

    Raises:
        FatalError: ``malformed tombstone <file>:<line>: <problem>`` (one line) for the first bad line,
            or a file that cannot be read to its end.
    """
    out: list[Tombstone] = []
    for path in files:
        out.extend(_read_file(path))
    return out


def iter_tombstone_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` of one tombstone file; unparseable content is a FatalError."""
    line_no = 0
    try:
        with gzip.open(path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, safe_json.loads(line)
                except safe_json.UnsafeJSON as exc:
                    raise FatalError(f"malformed tombstone {path}:{line_no}: {exc}") from exc
    except (EOFError, OSError, zlib.error) as exc:
        raise FatalError(f"malformed tombstone file {path} (after line {line_no}): {exc}") from exc


def _read_file(path: Path) -> Iterator[Tombstone]:
    for line_no, obj in iter_tombstone_lines(path):
        try:
            yield parse_tombstone(obj, f"{path.name}:{line_no}")
        except ValueError as exc:
            raise FatalError(f"malformed tombstone {path}:{line_no}: {exc}") from None


def _civitai_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}"[:200])
    return str(value)


def parse_tombstone(obj: Any, origin: str = "") -> Tombstone:
    """Validate one parsed tombstone line.

    Raises:
        ValueError: what is wrong with it (one line).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    source, kind = obj.get("source"), obj.get("kind")
    if source not in ("civitai", "hf"):
        raise ValueError(f"source must be 'civitai' or 'hf', not {source!r}"[:200])
    if kind not in ("model", "version") or (source == "hf" and kind != "model"):
        raise ValueError(f"kind {kind!r} is not valid for source {source}"[:200])
    model_id: str | None = None
    if source == "civitai":
        ident = _civitai_id(obj.get("id"), "id")
        if kind == "version":
            model_id = _civitai_id(obj.get("model_id"), "model_id of a version tombstone")
        elif obj.get("model_id") not in (None, obj.get("id")):
            raise ValueError("model_id of a model tombstone must be null or its id")
    else:
        # Not the normalizer's owner/name rule: a legacy id without an owner is a valid tombstone (it
        # simply covers nothing a release can hold).
        ident = obj.get("id")
        if not isinstance(ident, str) or not _HF_ID.match(ident):
            raise ValueError(f"id must be an HF repo id, not {ident!r}"[:200])
    last_seen = iso_utc(obj.get("last_seen")) if isinstance(obj.get("last_seen"), str) else None
    if last_seen is None:
        raise ValueError(f"last_seen must be an ISO-8601 time, not {obj.get('last_seen')!r}"[:200])
    reason = obj.get("reason")
    if not isinstance(reason, str) or not _REASON.match(reason):
        raise ValueError(f"reason must be a snake_case string, not {reason!r}"[:200])
    host_raw = obj.get("host")
    if host_raw is not None and not isinstance(host_raw, str):
        raise ValueError(f"host must be a URL string or null, not {type(host_raw).__name__}")
    record = obj.get("record")
    if record is not None and not isinstance(record, dict):
        raise ValueError(f"record must be an object or null, not {type(record).__name__}")
    return Tombstone(source, kind, ident, model_id, last_seen, reason, source_host(host_raw),
                     _record_ids(source, kind, ident, record), record is not None, origin)  # fmt: skip


def _record_ids(source: str, kind: str, ident: str, record: dict[str, Any] | None) -> tuple[str, ...]:
    """Adapter ids the last known record names (without normalizing it: ids only)."""
    if not record:
        return ()
    if source == "hf":
        item = record.get("item") if isinstance(record.get("item"), dict) else {}
        rev = item.get("sha") if isinstance(item.get("sha"), str) and item.get("sha") else "main"
        return (f"hf:{ident}@{rev}",)
    if kind == "model":
        versions = record.get("modelVersions")
        ids = []
        for version in versions if isinstance(versions, list) else []:
            vid = version.get("id") if isinstance(version, dict) else None
            if isinstance(vid, int) and not isinstance(vid, bool) and vid >= 0:
                ids.append(f"civitai:{ident}@{vid}")
        return tuple(dict.fromkeys(ids))
    return ()
