"""Finding and reading raw snapshot files (crawl output) for the build.

Accepted ``--raw`` inputs:

* a crawl OUT directory: ``civitai/models-*.jsonl.gz``, ``civitai/versions-*.jsonl.gz``,
  ``hf/models-*.jsonl.gz`` (temp files starting with ``.`` are skipped);
* a directory of ``*.jsonl`` / ``*.jsonl.gz`` files, or one such file: each line is sniffed
  (a ``/models`` item, a ``/model-versions`` response or an HF ``{"item", "card"}`` record).

What else a snapshot holds is never read as data: ``tombstones-*.jsonl.gz`` (deletions, read by
:mod:`stylus_docs.normalize.deletions`; with ``--keep-deleted`` their last known records enter the
pipeline as :data:`TOMBSTONE` records), ``enums.json`` (base-model names,
:mod:`stylus_docs.normalize.base_models`), the crawl's state and failure files.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs import safe_json
from stylus_docs.errors import FatalError

#: Record kinds.
CIVITAI_MODEL = "civitai_model"
CIVITAI_VERSION = "civitai_version"
HF_MODEL = "hf_model"
#: A tombstone line whose ``record`` is the last known raw record (``--keep-deleted``).
TOMBSTONE = "tombstone"
UNKNOWN = "unknown"
#: Snapshot files that sit beside the data chunks and are not data.
_NOT_DATA_PREFIXES = ("tombstones-",)


@dataclass(frozen=True, slots=True)
class RawFile:
    """One input file and the kind of its records (``None``: sniff each line)."""

    path: str
    kind: str | None


@dataclass(slots=True)
class RawRecord:
    """One line of an input file: its kind, parsed payload (or parse error) and origin."""

    kind: str
    payload: Any
    source: str
    line: int
    error: str | None = None

    @property
    def origin(self) -> str:
        """``<file name>:<line>`` for dead letters."""
        return f"{os.path.basename(self.source)}:{self.line}"


def _is_data_file(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and not path.name.startswith(_NOT_DATA_PREFIXES)
        and path.name.endswith((".jsonl", ".jsonl.gz"))
    )


def discover(paths: list[str]) -> list[RawFile]:
    """Resolve ``--raw`` arguments to input files, in a stable order.

    Raises:
        FatalError: a path does not exist or holds no snapshot files.
    """
    out: list[RawFile] = []
    for arg in paths:
        root = Path(arg)
        if root.is_file():
            if root.name.startswith(_NOT_DATA_PREFIXES):
                raise FatalError(f"--raw {arg}: a tombstone file, not raw records; pass its snapshot dir")
            if not _is_data_file(root):
                raise FatalError(f"--raw {arg}: not a .jsonl or .jsonl.gz file")
            if root.stat().st_size == 0:
                raise FatalError(f"--raw {arg}: empty file (no raw records)")
            out.append(RawFile(str(root), None))
            continue
        if not root.is_dir():
            raise FatalError(f"--raw {arg}: no such file or directory")
        found: list[RawFile] = []
        layout = {
            "civitai": {"models-": CIVITAI_MODEL, "versions-": CIVITAI_VERSION},
            "hf": {"models-": HF_MODEL},
        }
        for sub, prefixes in layout.items():
            folder = root / sub
            if not folder.is_dir():
                continue
            for file in sorted(folder.iterdir()):
                # Only snapshot chunks: the crawl's own failures.jsonl / state files sit beside them.
                kind = next((k for p, k in prefixes.items() if file.name.startswith(p)), None)
                if kind is None or not _is_data_file(file):
                    continue
                found.append(RawFile(str(file), kind))
        if not found:
            found = [
                RawFile(str(f), None) for f in sorted(root.iterdir()) if f.is_file() and _is_data_file(f)
            ]
        if not found:
            raise FatalError(f"--raw {arg}: no snapshot files (*.jsonl.gz) found")
        out.extend(found)
    seen: dict[str, RawFile] = {}
    for f in out:
        seen.setdefault(os.path.realpath(f.path), f)
    return list(seen.values())


def sniff(payload: Any) -> str:
    """Guess the kind of one parsed line."""
    if not isinstance(payload, dict):
        return UNKNOWN
    if "item" in payload and ("card" in payload or "card_error" in payload):
        return HF_MODEL
    if "modelVersions" in payload:
        return CIVITAI_MODEL
    if "modelId" in payload or ("model" in payload and "files" in payload):
        return CIVITAI_VERSION
    return UNKNOWN


def read_records(raw: RawFile) -> Iterator[RawRecord]:
    """Yield every line of ``raw`` as a :class:`RawRecord`; bad JSON becomes a record with ``error``.

    Lines are parsed strictly (:func:`stylus_docs.safe_json.loads`): invalid JSON, nesting deeper than
    :data:`~stylus_docs.safe_json.MAX_DEPTH`, non-finite numbers and lone surrogates each become an error
    record with that reason, so one hostile line is one dead letter. A truncated gzip stream (an
    interrupted copy) yields one final error record instead of raising.
    """
    opener = gzip.open if raw.path.endswith(".gz") else open
    line_no = 0
    try:
        with opener(raw.path, "rb") as handle:
            for line_no, line in enumerate(io.BufferedReader(handle), start=1):  # type: ignore[arg-type]
                if not line.strip():
                    continue
                try:
                    payload = safe_json.loads(line)
                except safe_json.UnsafeJSON as exc:
                    yield RawRecord(raw.kind or UNKNOWN, None, raw.path, line_no, str(exc))
                    continue
                kind = raw.kind or sniff(payload)
                yield RawRecord(
                    kind, payload, raw.path, line_no, None if kind != UNKNOWN else "unknown_record"
                )
    except (EOFError, OSError, zlib.error) as exc:
        yield RawRecord(raw.kind or UNKNOWN, None, raw.path, line_no + 1, f"truncated_file: {exc}")
