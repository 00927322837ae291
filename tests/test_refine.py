"""Refiners: extractive rules, and the VLM path through Beam RunInference against a loopback fake."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from build_fixtures import model_2023, snapshot
from fakes.openai_server import (
    Answer,
    error,
    refuse_response_format,
    slow,
    start_fake_openai,
    stop,
    text,
    valid,
)

from pipelines.build import BuildConfig, run_build
from stylus_docs import release
from stylus_docs.normalize import civitai
from stylus_docs.refine.extractive import refine_extractive
from stylus_docs.refine.openai_vlm import parse_answer
from stylus_docs.refine.rules import category, recommended_weight, stated_weight


def _card(name: str = "Ink", **kw: object):
    (card,) = civitai.normalize_model(model_2023(1, 11, name, **kw))
    return card


def test_weight_rules() -> None:
    assert (
        recommended_weight(_card()) == 0.7
    )  # <lora:inkdraw:0.7> in the examples overrides the card's 0.6-0.8
    assert recommended_weight(_card(prompt_weight=None)) == 0.7  # middle of the card's range
    assert recommended_weight(_card(prompt_weight=None, description="<p>Nice.</p>")) == 0.8  # default
    assert stated_weight("Recommended strength: 0.5~0.9") == 0.7
    assert stated_weight("use <lora:x:0.55> for best results") == 0.55
    assert stated_weight("trained for 3000 steps") is None


def test_category_and_extractive_description() -> None:
    assert category(_card(tags=["clothing", "style"])) == "clothing"
    assert category(_card(tags=["photorealistic", "sports car"])) == "vehicle"
    # Hub machine tags do not count: "black-forest-labs" must not make a corgi a background.
    hub_tags = ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev", "region:us"]
    assert category(_card(tags=hub_tags, name="corgi-dog-flux-lora")) == "animal"
    ref = refine_extractive(_card(description="<p>Turns photos into ink drawings. Support me on ko-fi!</p>"))
    assert ref.description == "Ink: Turns photos into ink drawings."
    assert ref.refiner == "extractive@v1" and ref.category == "style"
    empty = refine_extractive(_card(description=""))
    assert "Ink" in empty.description and "inkdraw" in empty.description


def test_parse_answer_tolerant() -> None:
    good = {"description": "d", "category": "Style", "recommended_weight": 0.6}
    assert parse_answer("Sure!\n```json\n" + json.dumps(good) + "\n```")[0]["category"] == "style"
    assert parse_answer("not json at all") == (None, "invalid_json")
    assert parse_answer(json.dumps({**good, "recommended_weight": 7}))[1] == "schema_violation"


MODES = ["valid", "fenced", "invalid", "schema", "rate", "fail500", "slow", "refuse_rf"]


def _script():
    seen: Counter[str] = Counter()

    def decide(path: str, body: dict) -> Answer:
        if path.endswith("/embeddings"):
            return Answer()
        title = body["messages"][1]["content"][0]["text"].split("\n", 1)[0].removeprefix("Title: ")
        mode = title.split()[-1]
        seen[mode] += 1
        answer = {"description": f"What {mode} does.", "category": "style", "recommended_weight": 0.6}
        if mode == "valid":
            return valid(answer)
        if mode == "fenced":
            return text("Here you go:\n```json\n" + json.dumps(answer) + "\n```")
        if mode == "invalid":
            return text("I think this adapter is nice")
        if mode == "schema":
            return valid({"description": "x", "category": "dinosaur", "recommended_weight": 0.5})
        if mode == "rate":
            return error(429, retry_after=0) if seen[mode] == 1 else valid(answer)
        if mode == "fail500":
            return error(500)
        if mode == "slow":
            return slow(0.5, valid(answer))
        return refuse_response_format(valid(answer))

    return decide


@pytest.mark.timeout(300)
def test_vlm_every_answer_mode(tmp_path: Path) -> None:
    models = [model_2023(i, i * 10, f"Adapter {m}", prompt_weight=None) for i, m in enumerate(MODES, start=1)]
    raw = snapshot(tmp_path / "raw", models)
    server, base_url = start_fake_openai(script=_script())
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ["OPENAI_API_KEY"] = "sk-test-SECRETKEY123"
    try:
        cfg = dict(
            raw=[str(raw)],
            out=str(tmp_path / "docs"),
            refiner="openai",
            refiner_model="fake-vlm",
            embedder="openai",
            embedder_model="fake-embed",
            vlm_retries=1,
            progress=False,
        )
        os.environ["STYLUS_EMBEDDER_DIM"] = "8"
        manifest = run_build(BuildConfig(**cfg))
        c = manifest["counts"]
        assert c["dead_letter"] == {"invalid_json": 1, "schema_violation": 1, "retries_exhausted": 1}
        assert c["written"] == 5 and c["refined"] == 5
        build = release.resolve_build(tmp_path / "docs")
        rows = pq.read_table(release.table_files(build, manifest, "adapters")[0]).to_pylist()
        got = {r["title"].split()[-1]: r for r in rows}
        assert set(got) == {"valid", "fenced", "rate", "slow", "refuse_rf"}
        assert all(
            r["refiner"] == "openai@v2" and r["recommended_weight"] == pytest.approx(0.6) for r in rows
        )
        assert got["valid"]["refined_description"] == "What valid does."
        chats = server.requests_to("/chat/completions")
        # invalid and schema answers are re-asked (validation_attempts=2) before dead-lettering
        asked = Counter(b["messages"][1]["content"][0]["text"].split("\n", 1)[0].split()[-1] for b in chats)
        assert asked["invalid"] == 2 and asked["schema"] == 2 and asked["rate"] == 2 and asked["fail500"] == 2
        assert any("response_format" in b for b in chats) and any("response_format" not in b for b in chats)
        assert server.log[0][2].get("authorization") == "Bearer sk-test-SECRETKEY123"
        for path in (tmp_path / "docs").rglob("*"):
            if path.is_file():
                assert b"SECRETKEY123" not in path.read_bytes()
        # a re-run costs nothing for what was answered: cached by content hash + refiner version
        before = len(server.requests_to("/chat/completions"))
        again = run_build(BuildConfig(**cfg))
        after = server.requests_to("/chat/completions")[before:]
        retried = {b["messages"][1]["content"][0]["text"].split("\n", 1)[0].split()[-1] for b in after}
        assert retried <= {"invalid", "schema", "fail500"}
        assert again["counts"]["written"] == 5
    finally:
        stop(server)
        for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "STYLUS_EMBEDDER_DIM"):
            os.environ.pop(key, None)
