"""``stylus-docs link`` and :mod:`stylus_docs.library`: match a folder of .safetensors files to a release
by SHA-256 and by AutoV2, report unmatched files, cache hashes by (path, size, mtime)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from stylus_docs import cli
from stylus_docs.errors import FatalError
from stylus_docs.library import INDEX_NAME, link, local_weights, read_index, scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_fixture import sample_rows, write_release  # noqa: E402

FILES = {
    "full.safetensors": b"weights matched by their full sha256",
    "sub/short.safetensors": b"weights the release knows by AutoV2 only",
    "Crafted.SAFETENSORS": b"weights whose AutoV2 matches a release hash",
    "unknown.safetensors": b"weights nobody published",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def release_and_lib(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("link")
    lib = base / "loras"
    for rel, data in FILES.items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_bytes(data)
    (lib / "notes.txt").write_text("not an adapter")
    (lib / ".hidden").mkdir()
    (lib / ".hidden" / "skip.safetensors").write_bytes(b"hidden")
    rows = copy.deepcopy(sample_rows(embed=False))
    by_id = {r["adapter_id"]: r for r in rows}
    for r in rows:
        r["sha256"] = None
        r["embedding"] = [0.0] * 383 + [1.0]
    by_id["civitai:103@1003"]["sha256"] = _sha(FILES["full.safetensors"])
    # A source that gives only Civitai's AutoV2 (10 hex digits, here in capitals).
    by_id["civitai:104@1004"]["sha256"] = _sha(FILES["sub/short.safetensors"])[:10].upper()
    # A full hash agreeing with the file's in the first 10 digits only: an AutoV2 match.
    crafted = _sha(FILES["Crafted.SAFETENSORS"])
    by_id["civitai:106@1006"]["sha256"] = crafted[:10] + ("0" if crafted[10] != "0" else "1") + crafted[11:]
    docs = base / "docs"
    write_release(docs, rows)
    return docs, lib


def test_scan_finds_safetensors_recursively(release_and_lib):
    _docs, lib = release_and_lib
    assert [p.relative_to(lib).as_posix() for p in scan(lib)] == sorted(FILES)


def test_link_by_sha256_and_autov2_reports_unmatched(release_and_lib):
    docs, lib = release_and_lib
    report = link(docs, lib)
    by_path = {f.path: f for f in report.files}
    assert by_path["full.safetensors"].adapter_id == "civitai:103@1003"
    assert by_path["full.safetensors"].matched_by == "sha256"
    assert by_path["sub/short.safetensors"].adapter_id == "civitai:104@1004"
    assert by_path["sub/short.safetensors"].matched_by == "autov2"
    assert by_path["Crafted.SAFETENSORS"].adapter_id == "civitai:106@1006"
    assert by_path["Crafted.SAFETENSORS"].matched_by == "autov2"
    assert [f.path for f in report.unmatched] == ["unknown.safetensors"]
    assert by_path["unknown.safetensors"].sha256 == _sha(FILES["unknown.safetensors"])
    assert report.hashed == 4 and report.cached == 0
    index = json.loads((lib / INDEX_NAME).read_text())
    assert index["format"] == "stylus-link.v1" and index["build_id"] == report.build_id
    for item in index["files"]:
        assert {"sha256", "path", "adapter_id", "matched_by", "size", "mtime_ns"} <= set(item)


def test_relink_uses_the_hash_cache_and_notices_changes(release_and_lib):
    docs, lib = release_and_lib
    link(docs, lib)
    again = link(docs, lib)
    assert again.hashed == 0 and again.cached == 4
    target = lib / "full.safetensors"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = link(docs, lib)
    assert changed.hashed == 1 and changed.cached == 3
    assert link(docs, lib, rehash=True).hashed == 4


def test_local_weights(release_and_lib, tmp_path):
    docs, lib = release_and_lib
    link(docs, lib)
    weights = local_weights(lib)
    assert weights == {
        "civitai:103@1003": (lib / "full.safetensors").resolve(),
        "civitai:104@1004": (lib / "sub/short.safetensors").resolve(),
        "civitai:106@1006": (lib / "Crafted.SAFETENSORS").resolve(),
    }
    # A file edited after linking is left out until the next link.
    target = lib / "sub/short.safetensors"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert "civitai:104@1004" not in local_weights(lib)
    link(docs, lib)
    assert "civitai:104@1004" in local_weights(lib)
    with pytest.raises(FatalError, match="stylus-docs link"):
        local_weights(tmp_path)


def test_index_elsewhere_and_bad_index(release_and_lib, tmp_path):
    docs, lib = release_and_lib
    index = tmp_path / "idx.json"
    link(docs, lib, index=index)
    assert read_index(lib, index)["files"]
    assert set(local_weights(lib, index)) == {"civitai:103@1003", "civitai:104@1004", "civitai:106@1006"}
    index.write_text("[1, 2]")
    with pytest.raises(FatalError, match="not a stylus-link.v1"):
        read_index(lib, index)
    with pytest.raises(FatalError, match="library folder not found"):
        link(docs, tmp_path / "missing")


def test_cli_link_table_and_json(release_and_lib, capsys):
    docs, lib = release_and_lib
    assert cli.main(["link", "--docs", str(docs), str(lib)]) == 0
    out = capsys.readouterr().out
    assert "linked\tfull.safetensors\tcivitai:103@1003\tsha256" in out
    assert "unmatched\tunknown.safetensors" in out
    assert "3 linked" in out and "1 by SHA-256, 2 by AutoV2" in out and "1 unmatched" in out
    assert cli.main(["link", "--docs", str(docs), str(lib), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matched"] == 3 and report["unmatched"] == ["unknown.safetensors"]
    assert report["matched_by"] == {"sha256": 1, "autov2": 2} and report["hashed"] == 0
    assert cli.main(["link", "--docs", str(docs / "nope"), str(lib)]) != 0
