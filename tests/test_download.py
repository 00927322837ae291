"""Adapter downloads against real loopback HTTP servers: verification, resume, tokens, errors."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from stylus_docs.download import (
    AdapterCache,
    DownloadConfig,
    filename_from_content_disposition,
    sanitize_filename,
    sanitize_path_component,
)
from stylus_docs.errors import SkipRecord
from tests.download_server import FileServer

TOKEN = "civitai-secret-token-0123456789"
HF_TOKEN = "hf_secret_token_abcdefghij"


def _weights(seed: int = 0, n: int = 64) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    return st_save(
        {
            "lora_unet_x.lora_down.weight": torch.randn(4, n, generator=gen),
            "lora_unet_x.lora_up.weight": torch.randn(n, 4, generator=gen),
        }
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def servers():
    with FileServer() as api, FileServer() as storage:
        api.redirect_base = storage.url
        yield api, storage


@pytest.fixture()
def tokens(monkeypatch):
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)


def _cache(root: Path, api: FileServer, **kw) -> AdapterCache:
    cfg = DownloadConfig(
        auth_hosts=((api.netloc, "CIVITAI_API_TOKEN"),),
        backoff=0.0,
        backoff_max=0.0,
        timeout=(5.0, 10.0),
        **kw,
    )
    return AdapterCache(root, cfg)


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


def test_fetch_follows_redirect_verifies_and_caches(tmp_path, servers, tokens):
    api, storage = servers
    data = _weights()
    storage.files["blob1"] = data
    storage.content_disposition["blob1"] = 'attachment; filename="my_lora.safetensors"'
    cache = _cache(tmp_path, api)
    card = {
        "adapter_id": "civitai:1@2",
        "download_url": f"{api.url}/redirect/blob1",
        "sha256": _sha(data).upper(),
        "file_name": "my_lora.safetensors",
    }
    path = cache.fetch(card)
    assert path == tmp_path / "sha256" / _sha(data)[:2] / f"{_sha(data)}.safetensors"
    assert path.read_bytes() == data
    assert not list((tmp_path / "partial").glob("*.part"))
    sidecar = path.with_suffix(".json").read_text()
    assert '"my_lora.safetensors"' in sidecar
    # The token went to the API host only; the signed storage URL never saw it.
    assert api.requests[0]["headers"].get("Authorization") == f"Bearer {TOKEN}"
    assert all("Authorization" not in r["headers"] for r in storage.requests)
    # A second fetch is served from the cache: no new request.
    before = len(api.requests) + len(storage.requests)
    assert cache.fetch(card) == path
    assert len(api.requests) + len(storage.requests) == before


def test_sha_mismatch_rejected_and_nothing_left(tmp_path, servers):
    api, storage = servers
    storage.files["blob"] = _weights(1)
    cache = _cache(tmp_path, api)
    card = {
        "download_url": f"{storage.url}/files/blob",
        "sha256": _sha(b"something else"),
        "file_name": "a.safetensors",
    }
    with pytest.raises(SkipRecord) as info:
        cache.fetch(card)
    assert info.value.reason == "sha256_mismatch"
    assert _cache_files(tmp_path) == []
    assert cache.lookup(_sha(b"something else")) is None


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "pytorch_lora_weights.bin", "x.PTH"])
def test_pickle_formats_refused_before_any_request(tmp_path, servers, name):
    api, storage = servers
    cache = _cache(tmp_path, api)
    with pytest.raises(SkipRecord) as info:
        cache.fetch({"download_url": f"{storage.url}/files/x", "sha256": "a" * 64, "file_name": name})
    assert info.value.reason == "pickle_format"
    assert "only .safetensors" in str(info.value)
    assert storage.requests == []


def test_pickle_served_under_safetensors_name_is_refused(tmp_path, servers):
    api, storage = servers
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)  # a zip/pickle file, whatever the card calls it
    data = buf.getvalue()
    storage.files["blob"] = data
    cache = _cache(tmp_path, api)
    with pytest.raises(SkipRecord) as info:
        cache.fetch(
            {"download_url": f"{storage.url}/files/blob", "sha256": _sha(data), "file_name": "a.safetensors"}
        )
    assert info.value.reason == "bad_safetensors_header"
    assert _cache_files(tmp_path) == []


def test_served_pickle_file_name_is_refused(tmp_path, servers):
    api, storage = servers
    data = _weights()
    storage.files["blob"] = data
    storage.content_disposition["blob"] = 'attachment; filename="evil.ckpt"'
    cache = _cache(tmp_path, api)
    with pytest.raises(SkipRecord) as info:
        cache.fetch({"download_url": f"{storage.url}/files/blob", "sha256": _sha(data)})
    assert info.value.reason == "pickle_format"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\x.safetensors", "x.safetensors"),
        ("/abs/path/lora.safetensors", "lora.safetensors"),
        ("..%2F..%2Fevil.safetensors", "evil.safetensors"),
        ("..", "adapter.safetensors"),
        ("", "adapter.safetensors"),
        (".hidden.safetensors", "hidden.safetensors"),
        ("a b;rm -rf $(x).safetensors", "a_b_rm_-rf_x_.safetensors"),
        ("nul\x00byte.safetensors", "nulbyte.safetensors"),
    ],
)
def test_traversal_names_sanitized(raw, expected):
    out = sanitize_filename(raw)
    assert out == expected
    assert "/" not in out and "\\" not in out and not out.startswith(".")


def test_long_names_and_ids_stay_bounded_and_unique():
    long = "x" * 500 + ".safetensors"
    assert len(sanitize_filename(long)) == 200 and sanitize_filename(long).endswith(".safetensors")
    a, b = (
        sanitize_path_component("hf:o/" + "n" * 300 + "@1"),
        sanitize_path_component("hf:o/" + "n" * 300 + "@2"),
    )
    assert a != b and len(a) <= 120
    assert sanitize_path_component("civitai:123@456") == "civitai_123_456"
    assert sanitize_path_component("../..") == "unnamed"


def test_served_traversal_name_is_sanitized_in_sidecar(tmp_path, servers):
    api, storage = servers
    data = _weights(2)
    storage.files["blob"] = data
    storage.content_disposition["blob"] = "attachment; filename*=UTF-8''..%2F..%2F..%2Fowned.safetensors"
    cache = _cache(tmp_path / "cache", api)
    path = cache.fetch({"download_url": f"{storage.url}/files/blob", "sha256": _sha(data)})
    assert '"owned.safetensors"' in path.with_suffix(".json").read_text()
    assert not (tmp_path / "owned.safetensors").exists()
    assert all(tmp_path / "cache" in p.parents for p in tmp_path.rglob("*") if p.is_file())
    assert filename_from_content_disposition('attachment; filename="a.safetensors"') == "a.safetensors"


def test_resume_after_interrupted_transfer(tmp_path, servers):
    api, storage = servers
    data = _weights(3, n=4096)  # ~130 KB
    half = len(data) // 2
    storage.files["blob"] = data
    storage.cut_first["blob"] = half
    # Small chunks: what was received in whole chunks before the cut is on disk and is not fetched again.
    cache = _cache(tmp_path, api, chunk_bytes=4096)
    path = cache.fetch(
        {"download_url": f"{storage.url}/files/blob", "sha256": _sha(data), "file_name": "a.safetensors"}
    )
    assert path.read_bytes() == data
    assert len(storage.requests) == 2
    assert "Range" not in storage.requests[0]["headers"]
    resumed_at = int(storage.requests[1]["headers"]["Range"].removeprefix("bytes=").rstrip("-"))
    assert half - 4096 < resumed_at <= half


def test_resume_across_runs_keeps_the_part_file(tmp_path, servers):
    api, storage = servers
    data = _weights(4, n=4096)
    storage.files["blob"] = data
    storage.cut_first["blob"] = 1000
    card = {"download_url": f"{storage.url}/files/blob", "sha256": _sha(data), "file_name": "a.safetensors"}
    with pytest.raises(SkipRecord) as info:
        _cache(tmp_path, api, resume_attempts=1, chunk_bytes=256).fetch(card)
    assert info.value.reason == "download_interrupted"
    part = tmp_path / "partial" / f"{_sha(data)}.part"
    kept = part.stat().st_size
    assert 0 < kept <= 1000
    path = _cache(tmp_path, api, resume_attempts=1).fetch(card)  # a later run picks it up
    assert path.read_bytes() == data
    assert storage.requests[-1]["headers"]["Range"] == f"bytes={kept}-"


def test_server_without_range_support_restarts_cleanly(tmp_path, servers):
    api, storage = servers
    data = _weights(5, n=4096)
    storage.files["blob"] = data
    storage.cut_first["blob"] = 777
    storage.no_range = True
    cache = _cache(tmp_path, api)
    path = cache.fetch(
        {"download_url": f"{storage.url}/files/blob", "sha256": _sha(data), "file_name": "a.safetensors"}
    )
    assert path.read_bytes() == data


def test_size_cap(tmp_path, servers):
    api, storage = servers
    data = _weights(6, n=4096)
    storage.files["blob"] = data
    cache = _cache(tmp_path, api, max_bytes=10_000)
    with pytest.raises(SkipRecord) as info:
        cache.fetch(
            {"download_url": f"{storage.url}/files/blob", "sha256": _sha(data), "file_name": "a.safetensors"}
        )
    assert info.value.reason == "too_large"
    assert _cache_files(tmp_path) == []
    with pytest.raises(SkipRecord) as info:
        cache.fetch(
            {
                "download_url": f"{storage.url}/files/blob",
                "sha256": _sha(data),
                "file_name": "a.safetensors",
                "file_size_kb": 50_000.0,
            }
        )
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (401, "login_required", "logged-in"),
        (403, "early_access", "early access"),
        (404, "not_found", "404"),
        (410, "archived", "archived"),
        (429, "volume_limit", "download volume"),
        (500, "server_error", "500"),
    ],
)
def test_endpoint_errors_mapped_to_reasons(tmp_path, servers, code, reason, words):
    api, _ = servers
    cache = _cache(tmp_path, api, max_attempts=2)
    with pytest.raises(SkipRecord) as info:
        cache.fetch(
            {"download_url": f"{api.url}/status/{code}", "sha256": "b" * 64, "file_name": "a.safetensors"}
        )
    assert info.value.reason == reason
    assert words in str(info.value)
    assert _cache_files(tmp_path) == []


def test_401_with_token_is_a_skip_not_a_crash(tmp_path, servers, tokens):
    api, _ = servers
    cache = _cache(tmp_path, api, max_attempts=1)
    with pytest.raises(SkipRecord) as info:
        cache.fetch(
            {"download_url": f"{api.url}/status/401", "sha256": "b" * 64, "file_name": "a.safetensors"}
        )
    assert info.value.reason == "login_required"
    assert TOKEN not in str(info.value)


def test_tokens_never_written_or_logged(tmp_path, servers, tokens, caplog):
    api, storage = servers
    data = _weights(7)
    storage.files["blob"] = data
    cache = _cache(tmp_path, api, max_attempts=1)
    caplog.set_level(logging.DEBUG)
    errors = []
    path = cache.fetch(
        {
            "download_url": f"{api.url}/redirect/blob?token={TOKEN}",
            "sha256": _sha(data),
            "file_name": "a.safetensors",
        }
    )
    for code in (401, 404, 500):
        with pytest.raises(SkipRecord) as info:
            cache.fetch(
                {
                    "download_url": f"{api.url}/status/{code}?token={TOKEN}",
                    "sha256": "c" * 64,
                    "file_name": "a.safetensors",
                }
            )
        errors.append(str(info.value))
    assert path.is_file()
    # The token was sent as a header to the API host (not as a URL parameter anywhere).
    assert api.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert all(TOKEN not in r["path"] for r in api.requests + storage.requests)
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p
            assert HF_TOKEN.encode() not in p.read_bytes(), p
    assert all(TOKEN not in e for e in errors)
    assert TOKEN not in caplog.text and HF_TOKEN not in caplog.text


def test_hf_token_goes_only_to_hf_host(tmp_path, servers, tokens):
    api, storage = servers
    data = _weights(8)
    storage.files["blob"] = data
    cfg = DownloadConfig(
        auth_hosts=((api.netloc, "CIVITAI_API_TOKEN"), (storage.netloc, "HF_TOKEN")),
        backoff=0.0,
        backoff_max=0.0,
    )
    AdapterCache(tmp_path, cfg).fetch(
        {"download_url": f"{storage.url}/files/blob", "sha256": _sha(data), "file_name": "a.safetensors"}
    )
    assert storage.requests[0]["headers"]["Authorization"] == f"Bearer {HF_TOKEN}"


def test_missing_sha_and_bad_url(tmp_path, servers):
    api, storage = servers
    cache = _cache(tmp_path, api)
    with pytest.raises(SkipRecord) as info:
        cache.fetch(
            {"download_url": f"{storage.url}/files/blob", "sha256": None, "file_name": "a.safetensors"}
        )
    assert info.value.reason == "no_sha256"
    with pytest.raises(SkipRecord) as info:
        cache.fetch({"download_url": "file:///etc/passwd", "sha256": "d" * 64, "file_name": "a.safetensors"})
    assert info.value.reason == "bad_url"


def test_add_file_and_pickling(tmp_path):
    import pickle

    data = _weights(9)
    src = tmp_path / "x.safetensors"
    src.write_bytes(data)
    cache = AdapterCache(tmp_path / "cache")
    path = cache.add_file(src)
    assert path == cache.path_for(_sha(data)) and path.read_bytes() == data
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.lookup(_sha(data)) == path
