"""The release layout: publishing switches CURRENT atomically, readers follow it, pruning keeps the live
build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stylus_docs import release
from stylus_docs.errors import FatalError


def _make_build(docs: Path, build_id: str, rows: int = 1) -> Path:
    path = release.build_path(docs, build_id)
    (path / "adapters").mkdir(parents=True)
    data = path / "adapters" / "part-00000-of-00001.parquet"
    data.write_bytes(b"not really parquet" * rows)
    manifest = {
        "schema_version": release.SCHEMA_VERSION,
        "build_id": build_id,
        "created_at": "2026-01-01T00:00:00Z",
        "inputs": [],
        "refiner": {"name": "extractive", "version": "v1"},
        "embedder": {"name": "minilm", "model": "all-MiniLM-L6-v2", "dim": 384, "normalized": True},
        "counts": {"input": rows, "written": rows, "filtered": {}, "dead_letter": {}, "reused": 0,
                   "refined": rows, "embedded": rows},
        "files": [
            {
                "table": "adapters",
                "path": "adapters/part-00000-of-00001.parquet",
                "rows": rows,
                "bytes": data.stat().st_size,
                "sha256": release.sha256_file(data),
            }
        ],
    }
    (path / release.MANIFEST_FILE).write_text(json.dumps(manifest))
    return path


def test_publish_switches_current_and_latest(tmp_path: Path) -> None:
    _make_build(tmp_path, "b1")
    release.publish(tmp_path, "b1")
    assert release.current_build_id(tmp_path) == "b1"
    assert release.resolve_build(tmp_path).name == "b1"
    assert os.readlink(tmp_path / "latest") == "builds/b1"
    _make_build(tmp_path, "b2")
    release.publish(tmp_path, "b2")
    assert release.resolve_build(tmp_path).name == "b2"
    assert (tmp_path / "latest" / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_publish_refuses_incomplete_build(tmp_path: Path) -> None:
    _make_build(tmp_path, "good")
    release.publish(tmp_path, "good")
    release.build_path(tmp_path, "half").mkdir(parents=True)  # no manifest: a crashed build
    with pytest.raises(FatalError):
        release.publish(tmp_path, "half")
    assert release.current_build_id(tmp_path) == "good"


def test_table_files_follow_manifest_not_glob(tmp_path: Path) -> None:
    build = _make_build(tmp_path, "b1")
    (build / "adapters" / "part-00099-of-00100.parquet").write_bytes(b"stray")
    manifest = release.load_manifest(build)
    names = [p.name for p in release.table_files(build, manifest, "adapters")]
    assert names == ["part-00000-of-00001.parquet"]


def test_verify_detects_a_flipped_byte(tmp_path: Path) -> None:
    build = _make_build(tmp_path, "b1", rows=4)
    manifest = release.load_manifest(build)
    assert release.verify_files(build, manifest) == []
    data = build / "adapters" / "part-00000-of-00001.parquet"
    raw = bytearray(data.read_bytes())
    raw[3] ^= 0x01
    data.write_bytes(bytes(raw))
    assert release.verify_files(build, manifest) == ["sha256 mismatch: adapters/part-00000-of-00001.parquet"]


def test_manifest_validation_messages(tmp_path: Path) -> None:
    build = release.build_path(tmp_path, "x")
    build.mkdir(parents=True)
    (build / "manifest.json").write_text("{broken")
    with pytest.raises(FatalError, match="not valid JSON"):
        release.load_manifest(build)
    (build / "manifest.json").write_text(json.dumps({"schema_version": "other"}))
    with pytest.raises(FatalError, match="lacks"):
        release.load_manifest(build)
    with pytest.raises(FatalError, match="not found"):
        release.resolve_build(tmp_path / "missing")
    with pytest.raises(FatalError, match="not a StylusDocs release"):
        release.resolve_build(tmp_path)


def test_unsafe_manifest_path_rejected(tmp_path: Path) -> None:
    build = _make_build(tmp_path, "b1")
    manifest = release.load_manifest(build)
    manifest["files"][0]["path"] = "../../etc/passwd"
    with pytest.raises(FatalError, match="unsafe"):
        release.table_files(build, manifest, "adapters")


def test_prune_keeps_live_and_newest(tmp_path: Path) -> None:
    for bid in ("20260101T000000Z-a", "20260102T000000Z-b", "20260103T000000Z-c"):
        _make_build(tmp_path, bid)
    release.publish(tmp_path, "20260102T000000Z-b")
    crashed = release.build_path(tmp_path, "20260101T120000Z-z")
    crashed.mkdir(parents=True)
    removed = release.prune(tmp_path, keep=1)
    assert sorted(removed) == ["20260101T000000Z-a", "20260101T120000Z-z"]
    assert release.list_builds(tmp_path) == ["20260102T000000Z-b", "20260103T000000Z-c"]
    with pytest.raises(FatalError):
        release.prune(tmp_path, keep=0)
