"""Raw snapshot chunks: gzip JSONL files published atomically under collision-free names.

A chunk is written to a temporary file whose name starts with ``.`` (readers skip those), fsynced,
then hard-linked to the first free ``<prefix>-NNNNN.jsonl.gz`` name. ``os.link`` fails when the
name exists, so concurrent writers (threads, processes, Beam workers on one file system) never
overwrite each other's chunks, and a ``kill -9`` leaves either no chunk or a complete one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stylus_docs.atomic import shared_file_mode

logger = logging.getLogger(__name__)

_CHUNK = re.compile(r"^(?P<prefix>[a-z]+)-(?P<num>\d{5,})\.jsonl\.gz$")


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
    return _gzip_lines(encode_record(record) for record in records)


def _gzip_lines(lines: Iterable[bytes]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for line in lines:
            gz.write(line)
    return raw.getvalue()


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
    return _publish(Path(directory), prefix, _gzip_lines(lines))


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

    JSON strings escape newlines, so a newline byte only ever ends a record.
    """
    with gzip.open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


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
