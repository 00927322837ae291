"""Validate a ``.safetensors`` file's header before any tensor is read.

A safetensors file is ``<u64 little-endian N><N bytes of JSON header><tensor bytes>``. The header names
every tensor with its dtype, shape and ``[begin, end)`` byte range inside the data section. Loaders trust
it, so a hostile file can claim a multi-gigabyte header (allocation bomb), out-of-range offsets or
overlapping tensors. This module checks, reading only the first ``8 + N`` bytes:

* ``N`` is bounded (``max_header_bytes``, default 100 MB) and fits in the file — checked *before* the
  header is read, so a huge claimed length allocates nothing;
* the header is UTF-8 JSON, an object, starting with ``{``, parsed strictly by
  :func:`stylus_docs.safe_json.loads`: nesting deeper than 64 (a real header is 3 deep), ``NaN`` /
  ``Infinity`` and lone surrogate escapes are refused with the same ``bad_safetensors_header`` reason
  (the detail names ``too_deep`` / ``non_finite_number`` / ``invalid_unicode``) — a header of 100,000
  ``[`` never reaches a :class:`RecursionError`;
* ``__metadata__`` (optional) maps strings to strings;
* every dtype is in an allow-list, every shape a list of non-negative ints;
* ``prod(shape) × itemsize == end - begin``;
* the byte ranges are contiguous, non-overlapping and cover the data section exactly (the rule the
  reference Rust implementation enforces).

Pickle-based formats never get this far: :func:`refuse_unsafe_format` rejects them by name.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from stylus_docs import safe_json
from stylus_docs.errors import SkipRecord

#: Largest header accepted by default (the reference implementation's own limit is 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Most tensors accepted in one file (a big SDXL LoRA has ~2,000).
MAX_TENSORS = 200_000

#: dtype → bytes per element (safetensors spec).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

#: Suffixes of pickle-based weight formats: loading them runs arbitrary code.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


class UnsafeWeightsError(SkipRecord):
    """A weights file that must not be loaded (pickle format, bad header, …)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a validated header.

    Args:
        dtype: Safetensors dtype name (e.g. ``"F16"``).
        shape: Tensor shape.
        begin: Start offset inside the data section.
        end: End offset (exclusive) inside the data section.
    """

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header.

    Args:
        header_bytes: Length of the JSON header.
        data_bytes: Length of the data section.
        tensors: Tensor name → entry, in file order.
        metadata: The optional ``__metadata__`` string map.
    """

    header_bytes: int
    data_bytes: int
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def refuse_unsafe_format(file_name: str) -> None:
    """Raise :class:`UnsafeWeightsError` unless ``file_name`` names a ``.safetensors`` file.

    Args:
        file_name: The file name given by the API or card.

    Raises:
        UnsafeWeightsError: ``reason="pickle_format"`` for ``.ckpt/.pt/.pth/.bin/...``,
            ``reason="not_safetensors"`` for any other suffix.
    """
    lower = (file_name or "").strip().lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise UnsafeWeightsError(
            "pickle_format",
            f"{file_name!r} is a pickle-based format, which can execute code when loaded; "
            "only .safetensors files are accepted",
        )
    if not lower.endswith(".safetensors"):
        raise UnsafeWeightsError("not_safetensors", f"{file_name!r} is not a .safetensors file")


def _bad(detail: str) -> UnsafeWeightsError:
    return UnsafeWeightsError("bad_safetensors_header", detail)


def validate_safetensors(
    path: str | os.PathLike[str], max_header_bytes: int = MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """Validate the header of the safetensors file at ``path`` without reading tensor data.

    Args:
        path: The file.
        max_header_bytes: Largest JSON header accepted.

    Returns:
        The parsed header.

    Raises:
        UnsafeWeightsError: ``reason="bad_safetensors_header"`` with what is wrong.
    """
    p = Path(path)
    size = p.stat().st_size
    if size < 8:
        raise _bad(f"file is {size} bytes, shorter than the 8-byte length prefix")
    with p.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        # Bound the claimed length before reading it: a hostile file may claim 2**64-1 bytes.
        if n > max_header_bytes:
            raise _bad(f"header length {n} exceeds the limit of {max_header_bytes} bytes")
        if n > size - 8:
            raise _bad(f"header length {n} exceeds the file size ({size} bytes)")
        if n < 2:
            raise _bad(f"header length {n} is too small for a JSON object")
        raw = fh.read(n)
    return parse_header(raw, data_bytes=size - 8 - n)


def parse_header(raw: bytes, data_bytes: int) -> SafetensorsHeader:
    """Check a raw JSON header against a data section of ``data_bytes`` bytes.

    Args:
        raw: The header bytes (after the length prefix).
        data_bytes: Size of the data section that follows the header.

    Returns:
        The parsed header.

    Raises:
        UnsafeWeightsError: ``reason="bad_safetensors_header"``.
    """
    if not raw.startswith(b"{"):
        raise _bad("header does not start with '{'")
    try:
        doc = safe_json.loads(bytes(raw))
    except safe_json.UnsafeJSON as exc:
        if exc.reason == "bad_json":
            raise _bad(f"header is not UTF-8 JSON ({exc.detail[:120]})") from None
        raise _bad(f"header JSON refused: {exc.reason}: {exc.detail[:120]}") from None
    if not isinstance(doc, dict):
        raise _bad("header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad("__metadata__ must map strings to strings")
    if len(doc) > MAX_TENSORS:
        raise _bad(f"{len(doc)} tensors exceed the limit of {MAX_TENSORS}")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _check_entry(name, entry, data_bytes)
    # Contiguous, non-overlapping, covering the data section exactly.
    cursor = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != cursor:
            kind = "overlaps the previous tensor" if info.begin < cursor else "leaves a gap before it"
            raise _bad(f"tensor {name!r} at offset {info.begin} {kind} (expected {cursor})")
        cursor = info.end
    if cursor != data_bytes:
        raise _bad(f"tensors cover {cursor} bytes but the data section has {data_bytes}")
    return SafetensorsHeader(len(raw), data_bytes, tensors, dict(meta))


def _check_entry(name: str, entry: object, data_bytes: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _bad(f"tensor {name!r}: entry is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise _bad(f"tensor {name!r}: dtype {dtype!r} is not allowed")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise _bad(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise _bad(
            f"tensor {name!r}: byte range [{begin}, {end}) is outside the data section ({data_bytes} bytes)"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if expected != end - begin:
        raise _bad(
            f"tensor {name!r}: shape {shape} × {dtype} needs {expected} bytes, range holds {end - begin}"
        )
    return TensorInfo(dtype, tuple(shape), begin, end)
