"""A flipped byte in any shard is reported, in one line naming the file, by every reader of a release.

The release is a real build (``run_build`` on hand-written raw items); each test copies it, flips one
byte of one listed file in place (same size, so only the content check can notice) and runs the real
CLI of every reader: ``query``, ``sql``, ``compose``, ``download``, ``generate`` and ``build --previous``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from build_fixtures import model_2023, snapshot
from tiny_models import get_tiny_models

from pipelines.build import BuildConfig, run_build
from stylus_docs import release
from stylus_docs.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("integrity")
    raw = snapshot(tmp / "raw", [model_2023(i, i * 10, f"Ink style {i}") for i in range(1, 9)])
    docs = tmp / "docs"
    run_build(BuildConfig(raw=[str(raw)], out=str(docs), shards=2, progress=False))
    return {"docs": docs, "raw": raw}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return get_tiny_models(tmp_path_factory.mktemp("tiny")).pipeline


def _copy(pristine: dict[str, Path], tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    shutil.copytree(pristine["docs"], docs, symlinks=True)
    return docs


def _files(docs: Path, table: str) -> list[Path]:
    build = release.resolve_build(docs)
    manifest = release.load_manifest(build)
    return [build / f["path"] for f in manifest["files"] if f["table"] == table]


def _flip(path: Path, seed: int) -> int:
    data = bytearray(path.read_bytes())
    at = random.Random(seed).randrange(len(data))
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))  # same size: only the SHA-256 (or a page checksum) can tell
    return at


def _readers(docs: Path, tmp: Path, pristine: dict[str, Path], pipeline: Path | None) -> dict[str, list[str]]:
    out = {
        "query": ["query", "ink drawing of a cat", "--docs", str(docs)],
        "sql": ["sql", "SELECT adapter_id, title FROM adapters ORDER BY 1", "--docs", str(docs)],
        "compose": ["compose", "an ink drawing of a cat", "--docs", str(docs), "--no-cache"],
        "download": ["download", "--docs", str(docs), "--cache", str(tmp / "cache")],
        "build --previous": ["build", "--raw", str(pristine["raw"]), "--out", str(tmp / "docs2"),
                             "--previous", str(docs)],
    }  # fmt: skip
    if pipeline is not None:
        out["generate"] = ["generate", "an ink drawing of a cat", "--docs", str(docs), "--pipeline",
                           str(pipeline), "--out", str(tmp / "gen"), "--no-download",
                           "--adapters-dir", str(tmp / "adapters")]  # fmt: skip
    return out


@pytest.mark.parametrize("shard", [0, 1])
def test_every_reader_reports_a_flipped_byte_in_an_adapters_shard(
    pristine: dict[str, Path],
    tiny_pipeline: Path,
    tmp_path: Path,
    shard: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    docs = _copy(pristine, tmp_path)
    target = _files(docs, "adapters")[shard]
    _flip(target, seed=shard)
    for name, argv in _readers(docs, tmp_path, pristine, tiny_pipeline).items():
        rc = main(argv)
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert rc == 2, f"{name} exited {rc} on a corrupted shard: {captured.out[-300:]}"
        assert err and "Traceback" not in captured.err, name
        assert target.name in err[-1] and "SHA-256" in err[-1], f"{name}: {err[-1]}"
    assert not (tmp_path / "docs2" / "CURRENT").exists()  # nothing built on a corrupted --previous


def test_sql_reports_a_flipped_byte_in_the_images_shard(
    pristine: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = _copy(pristine, tmp_path)
    target = _files(docs, "images")[0]
    _flip(target, seed=7)
    assert main(["sql", "SELECT count(*) FROM images", "--docs", str(docs)]) == 2
    assert target.name in capsys.readouterr().err


def test_sixty_random_flips_never_answer(
    pristine: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hostile report's experiment: 60 one-byte flips; before the fix 53 changed answers silently."""
    docs = _copy(pristine, tmp_path)
    target = _files(docs, "adapters")[0]
    original = target.read_bytes()
    for seed in range(60):
        target.write_bytes(original)
        _flip(target, seed=1000 + seed)
        for argv in (
            ["query", "ink", "--docs", str(docs)],
            ["sql", "SELECT * FROM adapters", "--docs", str(docs)],
        ):
            assert main(argv) == 2, f"flip seed {seed}: {argv[0]} answered"
            assert len(capsys.readouterr().err.strip().splitlines()) == 1
    target.write_bytes(original)
    assert main(["sql", "SELECT count(*) FROM adapters", "--docs", str(docs)]) == 0


def test_replaced_shard_of_another_size_and_missing_shard(
    pristine: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = _copy(pristine, tmp_path)
    first, second = _files(docs, "adapters")
    shutil.copy(second, first)  # a valid Parquet file, but not the one the manifest lists
    assert main(["query", "ink", "--docs", str(docs)]) == 2
    assert first.name in capsys.readouterr().err
    first.unlink()
    assert main(["sql", "SELECT 1", "--docs", str(docs)]) == 2
    assert first.name in capsys.readouterr().err


def test_page_checksums_are_verified(pristine: dict[str, Path], tmp_path: Path) -> None:
    """Independently of the manifest hash, the reader options make pyarrow check every page's CRC."""
    import pyarrow.parquet as pq

    docs = _copy(pristine, tmp_path)
    target = _files(docs, "adapters")[0]
    meta = pq.ParquetFile(target).metadata
    col = meta.row_group(0).column(1)  # a data page well inside the file
    data = bytearray(target.read_bytes())
    data[col.data_page_offset + col.total_compressed_size - 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(OSError, match="(?i)checksum|CRC"):
        pq.read_table(target, **release.PARQUET_READ_OPTIONS)
