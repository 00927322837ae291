"""Raw snapshot chunks: gzip JSONL files published atomically under collision-free names.

A chunk is written to a temporary file whose name starts with ``.`` (readers skip those), fsynced,
then hard-linked to the first free ``<prefix>-NNNNN.jsonl.gz`` name. ``os.link`` fails when the
name exists, so concurrent writers (threads, processes, Beam workers on one file system) never
overwrite each other's chunks, and a ``kill -9`` leaves either no chunk or a complete one.

A chunk is a run of gzip members of :data:`MEMBER_LINES` lines each (gzip readers, ``zcat`` and
:func:`gzip.open` included, read them as one stream): a delta crawl copies an old member whose lines
it carries over unchanged as it is (:func:`iter_chunk_members`, :func:`write_chunk_bytes`) instead of
compressing them again.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stylus_docs.atomic import shared_file_mode

logger = logging.getLogger(__name__)

_CHUNK = re.compile(r"^(?P<prefix>[a-z]+)-(?P<num>\d{5,})\.jsonl\.gz$")
#: zlib level of the chunks (readers do not care; see :func:`gzip_lines`).
COMPRESS_LEVEL = 3
#: Lines per gzip member. 16 version records (~300 KB) cost 2 % more bytes than one member per chunk;
#: with 1 % of the catalogue changed, three members in four are copied as they are by a delta crawl.
MEMBER_LINES = 16
# Every line this crawler writes of a /models item or a /model-versions answer starts with its id.
_LEADING_ID = re.compile(rb'^\{"id":(\d{1,18})[,}]')


class UnsafeRecord(ValueError):
    """A record that would not read back as strict JSON; ``reason`` as in :mod:`stylus_docs.safe_json`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode_record(record: Any) -> bytes:
    """One JSONL line (with its newline) for ``record``.

    Raises:
        UnsafeRecord: ``invalid_unicode`` (a lone surrogate, which UTF-8 cannot encode),
            ``non_finite_number`` (NaN/Infinity, which JSON cannot hold) or ``too_deep``. The crawl
            engine checks every record with :func:`stylus_docs.safe_json.find_problem` before it is
            buffered and records such an item as failed, so this is the last line of defence, not the
            normal path: a chunk is never published with a line the build (``safe_json.loads``) would
            refuse.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        raise UnsafeRecord("invalid_unicode", "a string holds a lone UTF-16 surrogate") from None
    except RecursionError:
        raise UnsafeRecord("too_deep", "nesting exceeds the encoder's recursion limit") from None
    except ValueError as exc:  # allow_nan=False
        raise UnsafeRecord("non_finite_number", str(exc)[:120]) from None


def encode_chunk(records: Iterable[Any]) -> bytes:
    """Gzip JSONL bytes of ``records`` (deterministic: no timestamp in the gzip header).

    Raises:
        UnsafeRecord: a record cannot be written as strict JSON (see :func:`encode_record`).
    """
    return gzip_lines([encode_record(record) for record in records])


def gzip_lines(lines: Sequence[bytes]) -> bytes:
    """Gzip members of :data:`MEMBER_LINES` of ``lines`` each (JSONL lines, newline included)."""
    # One zlib call per member (zlib releases the GIL for it) at a fast level: gzip's default level 9
    # made compression the largest CPU cost of a delta crawl (105 MB of version records: 2.9 s at
    # level 9, 1.1 s at level 3, 26 % larger files).
    if not lines:
        return gzip.compress(b"", compresslevel=COMPRESS_LEVEL, mtime=0)
    return b"".join(gzip.compress(b"".join(lines[i:i + MEMBER_LINES]), compresslevel=COMPRESS_LEVEL,
                                  mtime=0) for i in range(0, len(lines), MEMBER_LINES))  # fmt: skip


def committed_chunks(directory: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Complete chunks ``<prefix>-NNNNN.jsonl.gz`` in ``directory``, in number order."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHUNK.match(path.name)
        if match and match["prefix"] == prefix:
            found.append((int(match["num"]), path))
    return [p for _, p in sorted(found)]


def write_chunk(directory: str | os.PathLike[str], prefix: str, records: list[Any]) -> Path:
    """Publish ``records`` as the next free ``<prefix>-NNNNN.jsonl.gz`` in ``directory``; return its path."""
    return _publish(Path(directory), prefix, encode_chunk(records))


def write_chunk_lines(directory: str | os.PathLike[str], prefix: str, lines: list[bytes]) -> Path:
    """Publish already encoded JSONL lines (each ending in a newline, e.g. from :func:`iter_chunk_lines`
    of a committed chunk) as the next free chunk; return its path."""
    return _publish(Path(directory), prefix, gzip_lines(lines))


def write_chunk_bytes(directory: str | os.PathLike[str], prefix: str, data: bytes) -> Path:
    """Publish gzip bytes (members from :func:`gzip_lines` or :func:`iter_chunk_members`) as the next
    free chunk; return its path."""
    return _publish(Path(directory), prefix, data)


def _publish(root: Path, prefix: str, data: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{prefix}-", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), shared_file_mode())
            os.fsync(handle.fileno())
        existing = committed_chunks(root, prefix)
        num = int(_CHUNK.match(existing[-1].name)["num"]) + 1 if existing else 0
        while True:
            target = root / f"{prefix}-{num:05d}.jsonl.gz"
            try:
                os.link(tmp, target)
                break
            except FileExistsError:
                num += 1
        _fsync_dir(root)
        return target
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def iter_chunk_records(directory: str | os.PathLike[str], prefix: str) -> Iterator[Any]:
    """Every record of every committed ``prefix`` chunk, in chunk order."""
    for path in committed_chunks(directory, prefix):
        yield from iter_chunk_file(path)


def iter_chunk_lines(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The raw JSONL lines of one committed chunk (newline included, blank lines skipped).

    JSON strings escape newlines, so a newline byte only ever ends a record. The chunk is decompressed
    whole (a few MB), which is faster than reading it line by line through ``GzipFile``.
    """
    yield from _lines(b"".join(text for _, text in _members(Path(path).read_bytes(), path)))


def iter_chunk_members(path: str | os.PathLike[str]) -> Iterator[tuple[bytes | None, list[bytes]]]:
    """The gzip members of one committed chunk: ``(member bytes, its JSONL lines)``, in order.

    When a member does not end at a line's end (a chunk not written by :func:`gzip_lines`), the whole
    chunk is yielded as one ``(None, lines)``: its members cannot be copied on their own.
    """
    members = _members(Path(path).read_bytes(), path)
    if not all(text.endswith(b"\n") for _, text in members if text):
        yield None, _lines(b"".join(text for _, text in members))
        return
    for member, text in members:
        yield member, _lines(text)


def _members(data: bytes, path: str | os.PathLike[str]) -> list[tuple[bytes, bytes]]:
    """``(member bytes, decompressed member)`` of every gzip member of ``data``.

    Linear in the size of ``data`` (:func:`gzip.decompress` copies the rest of the file once per
    member, which made reading a chunk of 60 members ten times slower).
    """
    members: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # zero padding after the last member (gzip tolerates it)
            pos += 1
            continue
        start = pos
        unzip = zlib.decompressobj(wbits=31)
        parts = []
        while not unzip.eof and pos < len(data):
            piece = data[pos:pos + (1 << 16)]
            pos += len(piece)
            parts.append(unzip.decompress(piece))
        if not unzip.eof:
            raise EOFError(f"{path}: the last gzip member is cut short")
        pos -= len(unzip.unused_data)
        members.append((data[start:pos], b"".join(parts)))
    return members


def _lines(text: bytes) -> list[bytes]:
    return [line + b"\n" for line in text.split(b"\n") if line.strip()]


def leading_id(line: bytes) -> int | None:
    """The id a JSONL line starts with (``{"id":123,…``), or None when it does not start that way."""
    match = _LEADING_ID.match(line)
    return int(match.group(1)) if match else None


def records_with_ids(directory: str | os.PathLike[str], prefix: str, ids: set[int]) -> dict[int, Any]:
    """The first record of each of ``ids`` in the committed ``prefix`` chunks, by id.

    Only the lines that start with one of ``ids``, or do not start with an id, are decoded: finding the
    last known record of a few deleted versions costs a decompression of the chunks, not a JSON decode of
    every record.
    """
    found: dict[int, Any] = {}
    for path in committed_chunks(directory, prefix):
        for line in iter_chunk_lines(path):
            lead = leading_id(line)
            if lead is not None and (lead not in ids or lead in found):
                continue
            record = json.loads(line)
            ident = record.get("id") if isinstance(record, dict) else None
            if ident in ids and ident not in found:
                found[ident] = record
    return found


def iter_chunk_file(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Every record of one committed chunk."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _fsync_dir(path: Path) -> None:
    """Make a rename/link durable (POSIX: the directory entry lives in the directory's own blocks)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
