"""End-to-end build: raw snapshots → release → DuckDB/pyarrow, invariant, dead letters, incremental,
interrupted builds, CLI errors, no secrets in outputs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from build_fixtures import model_2023, sample_snapshot, snapshot, version_2025
from fakes.openai_server import error, start_fake_openai, stop

from pipelines.build import BuildConfig, run_build
from stylus_docs import release
from stylus_docs.cli import main as cli_main
from stylus_docs.errors import FatalError
from stylus_docs.schemas import arrow_schema, validation_errors

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def _read(docs: Path) -> tuple[Path, dict, list]:
    build = release.resolve_build(docs)
    manifest = release.load_manifest(build)
    assert release.verify_files(build, manifest) == []
    rows = []
    for path in release.table_files(build, manifest, "adapters"):
        rows.extend(pq.read_table(path).to_pylist())
    return build, manifest, rows


def _invariant(counts: dict) -> None:
    assert counts["input"] == counts["written"] + sum(counts["filtered"].values()) + sum(
        counts["dead_letter"].values()
    )


@pytest.fixture(scope="module")
def sample_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sample")
    if (SAMPLE / "civitai" / "models.jsonl").exists():
        raw = sample_snapshot(tmp / "raw", SAMPLE)
    else:  # the sample corpus is not there yet: hand-written items
        raw = snapshot(tmp / "raw", [model_2023(i, i * 10, f"Ink {i}") for i in range(1, 30)])
    docs = tmp / "docs"
    run_build(BuildConfig(raw=[str(raw)], out=str(docs), shards=2, progress=False))
    return docs


def test_round_trip_duckdb_and_pyarrow(sample_release: Path) -> None:
    build, manifest, rows = _read(sample_release)
    _invariant(manifest["counts"])
    assert manifest["counts"]["written"] == len(rows) > 20
    assert not validation_errors("manifest.v1.json", manifest)
    files = release.table_files(build, manifest, "adapters")
    assert [p.name for p in files] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    table = pq.read_table(files[0])
    assert table.schema.equals(arrow_schema("adapters", 384), check_metadata=False)
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    ids = [r["adapter_id"] for r in rows]
    assert len(ids) == len(set(ids))
    expected_sources = {"civitai", "hf"} if (SAMPLE / "hf" / "models.jsonl").exists() else {"civitai"}
    assert {r["source"] for r in rows} == expected_sources
    for r in rows:
        assert r["refiner"] == "extractive@v1" and r["refined_description"] and r["category"]
        assert r["sha256"] is None or len(r["sha256"]) == 64 and r["sha256"] == r["sha256"].lower()
    listed = ", ".join(f"'{p}'" for p in files)
    con = duckdb.connect()
    (n,) = con.execute(f"select count(*) from read_parquet([{listed}])").fetchone()
    assert n == len(rows)
    (dims,) = con.execute(f"select distinct len(embedding) from read_parquet([{listed}])").fetchone()
    assert dims == 384
    imgs = release.table_files(build, manifest, "images")
    (orphan,) = con.execute(
        f"select count(*) from read_parquet([{', '.join(repr(str(p)) for p in imgs)}]) i "
        f"anti join read_parquet([{listed}]) a using (adapter_id)"
    ).fetchone()
    assert orphan == 0
    assert (
        manifest["counts"]["images"]
        == con.execute(
            f"select count(*) from read_parquet([{', '.join(repr(str(p)) for p in imgs)}]) "
            "where origin='example'"
        ).fetchone()[0]
    )


def test_no_secret_in_outputs(sample_release: Path) -> None:
    for path in sample_release.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"token=" not in data and b"SECRET" not in data


def _tiny(tmp: Path, n: int = 6) -> list[dict]:
    return [model_2023(i, i * 10, f"Ink style {i}") for i in range(1, n + 1)]


def test_dead_letters_incremental_and_interrupted(tmp_path: Path) -> None:
    models = _tiny(tmp_path)
    bad = ['{"id": 99, "name": "broken", "modelVersions": "oops"}', "{not json", "[1, 2]"]
    raw = snapshot(tmp_path / "raw", models, versions=[version_2025(500, 5000)],
                   hf=[], bad_lines=bad)  # fmt: skip
    docs = tmp_path / "docs"
    m1 = run_build(BuildConfig(raw=[str(raw)], out=str(docs), progress=False))
    c = m1["counts"]
    _invariant(c)
    assert c["written"] == 7  # 6 models + 1 version-only detail
    assert c["dead_letter"] == {"bad_json": 1, "missing_versions": 1, "not_an_object": 1}
    build, manifest, _ = _read(docs)
    (dl,) = release.table_files(build, manifest, "dead_letter")
    letters = [json.loads(line) for line in dl.read_text().splitlines()]
    assert {d["reason"] for d in letters} == {"bad_json", "missing_versions", "not_an_object"}
    assert all(not validation_errors("dead_letter.v1.json", d) for d in letters)
    assert c["refined"] == c["embedded"] == 7 and c["reused"] == 0

    # Edit two cards, drop one, add one: only the changed/new ones are refined and embedded.
    edited = copy.deepcopy(models)
    edited[0]["description"] = "<p>A brand new description.</p>"
    edited[1]["modelVersions"][0]["trainedWords"] = ["newword"]
    edited = edited[:-1] + [model_2023(77, 770, "Fresh")]
    edited[2]["modelVersions"][0]["stats"]["downloadCount"] = 999999  # popularity alone does not invalidate
    raw2 = snapshot(tmp_path / "raw2", edited, versions=[version_2025(500, 5000)])
    m2 = run_build(
        BuildConfig(raw=[str(raw2)], out=str(tmp_path / "docs2"), previous=str(docs), progress=False)
    )
    c2 = m2["counts"]
    _invariant(c2)
    assert (c2["refined"], c2["embedded"], c2["reused"]) == (3, 3, 4)
    _, _, rows2 = _read(tmp_path / "docs2")
    ids = {r["adapter_id"] for r in rows2}
    assert "civitai:6@60" not in ids and "civitai:77@770" in ids
    by_id = {r["adapter_id"]: r for r in rows2}
    _, _, rows1 = _read(docs)
    old = {r["adapter_id"]: r for r in rows1}
    assert np.allclose(by_id["civitai:3@30"]["embedding"], old["civitai:3@30"]["embedding"])
    assert by_id["civitai:3@30"]["downloads"] == 999999  # fresh stats, reused refinement

    # A build that fails mid-pipeline (the embedding endpoint refuses) leaves the previous release live.
    live = release.current_build_id(docs)
    server, base_url = start_fake_openai(script=[error(401, message="bad key")])
    try:
        os.environ["OPENAI_BASE_URL"] = base_url
        with pytest.raises(FatalError):
            run_build(BuildConfig(raw=[str(raw)], out=str(docs), embedder="openai",
                                  embedder_model="text-embedding-3-small", build_id="20990101T000000Z-broken",
                                  progress=False))  # fmt: skip
    finally:
        os.environ.pop("OPENAI_BASE_URL", None)
        stop(server)
    assert server.requests_to("/embeddings")  # it really got as far as embedding
    assert release.current_build_id(docs) == live
    assert not (docs / "builds" / "20990101T000000Z-broken").exists()
    _read(docs)


def test_killed_build_leaves_previous_release(tmp_path: Path) -> None:
    raw = snapshot(tmp_path / "raw", _tiny(tmp_path, 3))
    docs = tmp_path / "docs"
    run_build(BuildConfig(raw=[str(raw)], out=str(docs), progress=False))
    live = release.current_build_id(docs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.build", "--raw", str(raw), "--out", str(docs),
                             "--no-progress"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    import time

    deadline = time.time() + 120
    builds = docs / "builds"
    while time.time() < deadline and len(list(builds.iterdir())) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert release.current_build_id(docs) in (live, *[p.name for p in builds.iterdir()])
    build, manifest, rows = _read(docs)  # whatever is live is complete and readable
    assert len(rows) == manifest["counts"]["written"]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["build", "--raw", str(tmp_path / "missing"), "--out", str(tmp_path / "docs")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "no such file" in err
    raw = snapshot(tmp_path / "raw", _tiny(tmp_path, 1))
    assert cli_main(["build", "--raw", str(raw), "--out", str(tmp_path / "d"), "--shards", "0"]) != 0
    assert cli_main(["build", "--raw", str(raw), "--out", str(tmp_path / "d"), "--render"]) != 0
    assert not (tmp_path / "d" / "CURRENT").exists()


def test_writer_failure_leaves_previous(tmp_path: Path) -> None:
    raw = snapshot(tmp_path / "raw", _tiny(tmp_path, 2))
    docs = tmp_path / "docs"
    run_build(BuildConfig(raw=[str(raw)], out=str(docs), progress=False))
    live = release.current_build_id(docs)
    bid = "20990101T000000Z-xxxxxx"
    (docs / "builds" / bid).mkdir()
    with pytest.raises(FatalError):  # the build dir exists already → refused before anything is written
        run_build(BuildConfig(raw=[str(raw)], out=str(docs), build_id=bid, progress=False))
    (docs / "builds" / bid).rmdir()
    bad_embedder = BuildConfig(raw=[str(raw)], out=str(docs), embedder="clip", build_id=bid, progress=False)
    with pytest.raises(FatalError, match="clip"):
        run_build(bad_embedder)
    assert release.current_build_id(docs) == live
    assert not (docs / "builds" / bid).exists()
    _read(docs)
