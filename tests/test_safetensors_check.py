"""Safetensors header validation: real files pass, hostile headers are rejected before reading data."""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
import torch
from safetensors.torch import save_file

from stylus_docs.safetensors_check import UnsafeWeightsError, refuse_unsafe_format, validate_safetensors


def _raw(path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> None:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)


def test_real_file_passes(tmp_path):
    p = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.float16)}, str(p), metadata={"k": "v"})
    header = validate_safetensors(p)
    assert header.tensors["a"].shape == (3, 4) and header.tensors["a"].dtype == "F32"
    assert header.tensors["b"].dtype == "F16"
    assert header.metadata == {"k": "v"}
    assert header.data_bytes == 3 * 4 * 4 + 2 * 2


def test_huge_header_length_rejected_without_allocating(tmp_path):
    p = tmp_path / "bomb.safetensors"
    _raw(p, b'{"a":', length=2**63 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeWeightsError) as info:
            validate_safetensors(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "bad_safetensors_header"
    assert "exceeds the limit" in str(info.value)
    assert peak < 1_000_000


def test_header_longer_than_file_rejected(tmp_path):
    p = tmp_path / "short.safetensors"
    _raw(p, b"{}", length=50_000_000)
    with pytest.raises(UnsafeWeightsError, match="exceeds the file size"):
        validate_safetensors(p)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 16, "cover 8 bytes"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 16 bytes"),
        ({"a": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "not allowed"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "non-negative"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 999]}}, b"\0" * 4, "outside the data"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
        ({"__metadata__": {"k": 1}}, b"", "strings"),
        ({"a": [1, 2]}, b"", "not an object"),
    ],
)
def test_bad_headers_rejected(tmp_path, header, data, message):
    p = tmp_path / "bad.safetensors"
    _raw(p, header, data)
    with pytest.raises(UnsafeWeightsError) as info:
        validate_safetensors(p)
    assert info.value.reason == "bad_safetensors_header"
    assert message in str(info.value)


def test_not_json_and_tiny_files(tmp_path):
    p = tmp_path / "x.safetensors"
    _raw(p, b"{not json}")
    with pytest.raises(UnsafeWeightsError, match="JSON"):
        validate_safetensors(p)
    p.write_bytes(b"\x01\x02")
    with pytest.raises(UnsafeWeightsError, match="shorter"):
        validate_safetensors(p)


def test_pickle_file_rejected(tmp_path):
    p = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, str(p))
    with pytest.raises(UnsafeWeightsError):
        validate_safetensors(p)


@pytest.mark.parametrize("name", ["a.ckpt", "b.pt", "c.bin", "d.pth", "e.pkl"])
def test_pickle_names_refused(name):
    with pytest.raises(UnsafeWeightsError) as info:
        refuse_unsafe_format(name)
    assert info.value.reason == "pickle_format"
    assert "execute code" in str(info.value)


def test_other_suffix_refused_and_safetensors_accepted():
    with pytest.raises(UnsafeWeightsError) as info:
        refuse_unsafe_format("weights.zip")
    assert info.value.reason == "not_safetensors"
    refuse_unsafe_format("Lora_V2.SafeTensors")
