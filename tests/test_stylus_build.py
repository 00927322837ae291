"""The Stylus build end to end on CPU: download → render (tiny diffusers pipeline) → VLM refine → embed.

Real parts only: the tiny random-weight pipeline and LoRA files (``scripts/make_tiny_models.py``), a
loopback file server for the weights, the loopback OpenAI-compatible fake for the VLM, Beam in-process,
Parquet on disk. Asserts that every adapter whose render succeeded had its rendered with/without pairs in
its VLM request — the point of rendering before refining — and that the render columns round-trip.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from build_fixtures import model_2023, snapshot
from download_server import FileServer
from fakes.openai_server import Answer, start_fake_openai, stop, title_of, valid
from test_formats import make_files
from tiny_models import get_tiny_models

from stylus_docs import release
from stylus_docs.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return get_tiny_models(tmp_path_factory.mktemp("tiny"))


def _item(mid: int, title: str, lora: Path | None, server: FileServer) -> dict:
    item = model_2023(mid, mid * 10, title, file_name=lora.name if lora else "gone.safetensors")
    version = item["modelVersions"][0]
    f = version["files"][0]
    if lora is not None:
        f["hashes"] = {"SHA256": hashlib.sha256(lora.read_bytes()).hexdigest().upper()}
        f["downloadUrl"] = f"{server.url}/files/{lora.name}"
    else:
        f["downloadUrl"] = f"{server.url}/status/404"
    return item


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("stylus")
    loha = make_files(tmp_path_factory.mktemp("formats"))["loha"]
    with FileServer() as files:
        for path in (tiny.lora_diffusers, tiny.lora_kohya, tiny.lora_broken, loha):
            files.files[path.name] = path.read_bytes()
        items = [
            _item(1, "Ink diffusers", tiny.lora_diffusers, files),
            _item(2, "Ink kohya", tiny.lora_kohya, files),
            _item(3, "Ink broken", tiny.lora_broken, files),
            _item(4, "Ink missing", None, files),
            _item(5, "Ink loha", loha, files),
        ]
        raw = snapshot(tmp / "raw", copy.deepcopy(items))
        requests: dict[str, dict] = {}

        def vlm(path: str, body: dict) -> Answer:
            if path.endswith("/embeddings"):
                return Answer()
            requests[title_of(body)] = body
            return valid({"description": "Inks the subject.", "category": "style", "recommended_weight": 0.7})

        server, base_url = start_fake_openai(script=vlm)
        os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-test-STYLUSKEY9")
        try:
            argv = ["build", "--raw", str(raw), "--out", str(tmp / "docs"), "--render",
                    "--render-pipeline", str(tiny.pipeline), "--render-device", "cpu", "--render-steps", "2",
                    "--render-size", "64", "--render-prompts", "2", "--render-cache", str(tmp / "weights"),
                    "--refiner", "openai", "--refiner-model", "fake-vlm",
                    "--max-dead-letter-fraction", "1"]  # fmt: skip
            rc = main(argv)
        finally:
            for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
                os.environ.pop(k, None)
            stop(server)
    assert rc == 0
    build = release.resolve_build(tmp / "docs")
    manifest = release.load_manifest(build)
    adapters = release.read_table(build, manifest, "adapters").to_pylist()
    images = release.read_table(build, manifest, "images").to_pylist()
    return {"build": build, "manifest": manifest, "adapters": {a["title"]: a for a in adapters},
            "images": images, "requests": requests, "tmp": tmp}  # fmt: skip


def test_render_statuses_and_columns_round_trip(built: dict) -> None:
    a = built["adapters"]
    assert a["Ink diffusers"]["render_status"] == "ok" and a["Ink kohya"]["render_status"] == "ok"
    assert a["Ink broken"]["render_status"] == "load_failed" and a["Ink broken"]["render_error"]
    assert (
        a["Ink missing"]["render_status"] == "download_failed" and "404" in a["Ink missing"]["render_error"]
    )
    ok = a["Ink diffusers"]
    assert ok["render_load_s"] > 0 and ok["render_s"] > 0 and ok["render_error"] is None
    counts = built["manifest"]["counts"]
    assert counts["rendered"] == {"download_failed": 1, "load_failed": 1, "ok": 2, "unsupported_format": 1}
    assert a["Ink loha"]["render_status"] == "unsupported_format" and "loha" in a["Ink loha"]["render_error"]
    assert counts["input"] == counts["written"] + sum(counts["filtered"].values()) + sum(
        counts["dead_letter"].values()
    )
    # The render columns are real Parquet columns with their schema types.
    shard = release.table_files(built["build"], built["manifest"], "adapters")[0]
    schema = pq.read_schema(shard)
    assert str(schema.field("render_load_s").type) == "double" and "render_error" in schema.names


def test_weights_format_columns(built: dict) -> None:
    """The download stage's header facts (stylus-docs inspect) are adapters-table columns."""
    a = built["adapters"]
    lora = a["Ink kohya"]
    facts = (lora["weights_format"], lora["weights_convention"], lora["weights_loadable"])
    assert facts == ("lora", "kohya", True)
    assert lora["weights_rank"] and lora["weights_rank"] > 0 and lora["weights_reason"] is None
    assert a["Ink diffusers"]["weights_convention"] == "diffusers"
    loha = a["Ink loha"]
    assert (loha["weights_format"], loha["weights_loadable"], loha["weights_rank"]) == ("loha", False, 4)
    assert loha["weights_base_family"] == "SD 1.5" and "LoHa" in loha["weights_reason"]
    missing = a["Ink missing"]  # never downloaded: no facts rather than guesses
    assert missing["weights_format"] is None and missing["weights_loadable"] is None
    counts = built["manifest"]["counts"]["weights_format"]
    assert counts["loha"] == 1 and counts["lora"] == 3 and sum(counts.values()) == 4
    schema = pq.read_schema(release.table_files(built["build"], built["manifest"], "adapters")[0])
    assert str(schema.field("weights_rank").type) == "int32"
    assert str(schema.field("weights_loadable").type) == "bool"


def test_every_ok_render_reached_the_vlm_request(built: dict) -> None:
    build = built["build"]
    for title, row in built["adapters"].items():
        body = built["requests"][title]
        parts = [p for m in body["messages"] if m["role"] == "user" for p in m["content"]]
        urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        texts = " ".join(p.get("text", "") for p in parts if p.get("type") == "text")
        rendered = [
            i for i in built["images"] if i["adapter_id"] == row["adapter_id"] and i["origin"] == "rendered"
        ]
        if row["render_status"] != "ok":
            assert not rendered and "without / with the adapter" not in texts
            continue
        assert len(rendered) == 4  # 2 prompts × with/without
        assert "same prompt and seed" in texts and "without / with the adapter" in texts
        sent = {base64.b64decode(u.split(",", 1)[1]) for u in urls}
        for img in rendered:
            assert (build / img["path"]).read_bytes() in sent, img["path"]


def test_refinement_marks_and_no_secret_written(built: dict) -> None:
    for row in built["adapters"].values():
        assert row["refiner"] == "openai@v2" and row["refined_description"] == "Inks the subject."
    for path in built["tmp"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".parquet", ".gz", ".txt", ""):
            assert b"STYLUSKEY9" not in path.read_bytes(), path
