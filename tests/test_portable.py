"""The crawl and the build through Beam's portable runner (a job service and an SDK worker pool as their
own processes, on loopback) and in multi-processing mode: the same snapshot and release as in-process.

The services are started by the tests (``scripts/portable_sample.py``'s :class:`PortableServices`) and
stopped afterwards, also when a test fails.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines import build as build_pipeline
from pipelines import crawl as crawl_pipeline

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MODELS = ROOT / "data" / "sample" / "civitai" / "models.jsonl"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


ps = _load("portable_sample")
replay = _load("replay_server")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    svc = ps.PortableServices(tmp_path_factory.mktemp("services"), workers=2).start()
    try:
        yield svc
    finally:
        svc.stop()
    assert svc.job.poll() is not None and svc.pool.poll() is not None  # torn down


@pytest.fixture(scope="module")
def sample_server() -> Iterator[str]:
    server, base_url = replay.start_server(data_dir=ROOT / "data" / "sample")
    try:
        yield base_url
    finally:
        server.shutdown()
        server.server_close()


def _crawl_and_build(out: Path, base_url: str, beam_args: list[str]) -> None:
    extra = ["--", *beam_args] if beam_args else []
    raw, docs = out / "raw", out / "docs"
    for source in ("civitai", "hf"):
        crawl_pipeline.run([source, "--out", str(raw), "--api-url", base_url, "--quiet", "--no-progress",
                            *extra])  # fmt: skip
    build_pipeline.run(["--raw", str(raw), "--out", str(docs), "--no-progress", *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, sample_server: str) -> Path:
    out = tmp_path_factory.mktemp("inprocess")
    _crawl_and_build(out, sample_server, [])
    return out


def test_crawl_and_build_through_job_service_and_worker_pool(
    reference: Path, services: Any, sample_server: str, tmp_path: Path
) -> None:
    _crawl_and_build(tmp_path, sample_server, services.beam_args())
    assert ps.compare_snapshots(reference / "raw", tmp_path / "raw") == []
    assert ps.compare_releases(reference / "docs", tmp_path / "docs") == []
    manifest = json.loads((tmp_path / "docs" / "latest" / "manifest.json").read_text())
    assert manifest["counts"]["written"] > 100
    # The pool really ran SDK worker processes (it logs each start), the driver ran none.
    assert "Starting worker with command" in (services.log_dir / "worker_pool.log").read_text()


def test_multi_processing_mode_gives_the_same_release(reference: Path, sample_server: str,
                                                      tmp_path: Path) -> None:  # fmt: skip
    _crawl_and_build(tmp_path, sample_server, list(ps.MULTI_PROCESS_FLAGS))
    assert ps.compare_snapshots(reference / "raw", tmp_path / "raw") == []
    assert ps.compare_releases(reference / "docs", tmp_path / "docs") == []


def test_compare_releases_sees_a_changed_description(reference: Path, tmp_path: Path) -> None:
    """The comparison the tests above rely on is not vacuous."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    copy = tmp_path / "docs"
    shutil.copytree(reference / "docs", copy, symlinks=True)
    shard = next((copy / "latest" / "adapters").glob("*.parquet"))
    table = pq.read_table(shard)
    desc = table.column("description")
    changed = table.set_column(table.schema.get_field_index("description"), "description",
                               pc.binary_join_element_wise(desc, desc, ""))  # fmt: skip
    pq.write_table(changed, shard)
    from stylus_docs import release

    manifest_path = copy / "latest" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == f"adapters/{shard.name}":
            entry["bytes"], entry["sha256"] = shard.stat().st_size, release.sha256_file(shard)
    manifest_path.write_text(json.dumps(manifest))
    problems = ps.compare_releases(reference / "docs", copy)
    assert any("description differs" in p for p in problems)


def _two_base_corpus(path: Path) -> set[int]:
    """The sample's models, a dozen of them with a second version on SDXL 1.0 (listed by two partitions)."""
    items = [json.loads(line) for line in SAMPLE_MODELS.read_text().splitlines() if line.strip()]
    shared: set[int] = set()
    for item in items:
        versions = item.get("modelVersions") or []
        if len(shared) < 12 and versions and versions[0].get("baseModel") == "SD 1.5":
            extra = json.loads(json.dumps(versions[0]))
            extra["id"] = 90_000_000 + int(item["id"])
            extra["baseModel"] = "SDXL 1.0"
            versions.append(extra)
            shared.add(int(item["id"]))
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    return shared


def _chunk_ids(raw: Path, prefix: str) -> list[int]:
    ids: list[int] = []
    for chunk in sorted((raw / "civitai").glob(f"{prefix}-*.jsonl.gz")):
        with gzip.open(chunk, "rt", encoding="utf-8") as handle:
            ids += [json.loads(line)["id"] for line in handle if line.strip()]
    return ids


@pytest.mark.parametrize("runner", ["in_process", "multi_processing", "portable"])
def test_a_model_listed_by_two_partitions_is_stored_once(runner: str, services: Any, tmp_path: Path) -> None:
    corpus = tmp_path / "models.jsonl.gz"
    shared = _two_base_corpus(corpus)
    server, base_url = replay.start_server(data_dir=ROOT / "data" / "sample", civitai_models=corpus)
    flags = {"in_process": [], "multi_processing": list(ps.MULTI_PROCESS_FLAGS)}.get(runner) \
        if runner != "portable" else services.beam_args()
    raw = tmp_path / "raw"
    try:
        crawl_pipeline.run(["civitai", "--out", str(raw), "--api-url", base_url, "--quiet", "--no-progress",
                            "--base-models", "SD 1.5", "SDXL 1.0", "--chunk-size", "20", "--", *flags])
    finally:
        server.shutdown()
        server.server_close()
    models, versions = _chunk_ids(raw, "models"), _chunk_ids(raw, "versions")
    assert shared <= set(models)
    assert len(models) == len(set(models)), "a model is stored twice"
    assert len(versions) == len(set(versions)), "a version is stored twice"
    # Each partition's copy lists only its own base model's versions; the stored model has both.
    stored = {}
    for chunk in sorted((raw / "civitai").glob("models-*.jsonl.gz")):
        with gzip.open(chunk, "rt", encoding="utf-8") as handle:
            stored.update((r["id"], r) for r in map(json.loads, handle))
    for mid in shared:
        assert {v["baseModel"] for v in stored[mid]["modelVersions"]} == {"SD 1.5", "SDXL 1.0"}
    # Every version of every stored model was fetched, the SDXL twins included.
    assert {90_000_000 + m for m in shared} <= set(versions)


def test_portable_options_lift_the_stream_deadline_and_refuse_a_dead_endpoint(services: Any) -> None:
    """Beam puts the job-service request timeout (300 s) on the job's state stream, so a portable build
    longer than that died with DEADLINE_EXCEEDED; the options lift it, and a dead endpoint is one line."""
    from stylus_docs import beam_options
    from stylus_docs.errors import FatalError

    options = beam_options.make_pipeline_options(services.beam_args()).get_all_options()
    assert options["job_server_timeout"] == beam_options.JOB_STREAM_TIMEOUT_S
    kept = beam_options.make_pipeline_options([*services.beam_args(), "--job_server_timeout=42"])
    assert kept.get_all_options()["job_server_timeout"] == 42
    with pytest.raises(FatalError, match="no Beam job service answers at --job_endpoint=127.0.0.1:9"):
        beam_options.check_job_endpoint("127.0.0.1:9", timeout_s=1.0)
