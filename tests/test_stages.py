"""The build's stages: Beam-free rules directly, each composite with ``TestPipeline`` + ``assert_that``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from build_fixtures import model_2023, version_2025, write_jsonl_gz

from pipelines import stages
from stylus_docs.build import rules
from stylus_docs.build.config import BuildConfig, FilterFlags, add_arguments, config_from_args
from stylus_docs.filters import FilterConfig
from stylus_docs.normalize import civitai
from stylus_docs.normalize.raw import CIVITAI_MODEL, CIVITAI_VERSION, RawFile
from stylus_docs.records import AdapterCard

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def _pipeline() -> TestPipeline:
    return TestPipeline(runner=RUNNER)


def _card(mid: int, vid: int, title: str = "Ink", **kw: object) -> AdapterCard:
    (card,) = civitai.normalize_model(model_2023(mid, vid, title, **kw))  # type: ignore[arg-type]
    card.compute_content_hash()
    return card


# --------------------------------------------------------------------------------------------- rules
def test_merge_versions_folds_details_and_counts_duplicates() -> None:
    a = _card(1, 10)
    dup = _card(1, 10, "Ink again")
    detail = civitai.normalize_version(version_2025(1, 10))
    merged = rules.merge_versions([("card", a), ("detail", detail), ("card", dup)])
    assert merged.card is not None and merged.card.title == "Ink"
    assert (merged.records, merged.duplicates, merged.error) == (2, 1, None)
    alone = rules.merge_versions([("detail", detail)])
    assert alone.card is not None and alone.records == 1


def test_reuse_decision() -> None:
    card = _card(1, 10)
    prev = {"content_hash": card.content_hash, "refiner": "extractive@v1", "refined_description": "d",
            "category": "style", "recommended_weight": 0.6, "embedder": "minilm:x", "embedding": [0.1],
            "render_status": "not_rendered"}  # fmt: skip
    assert rules.reuse_decision(card, None, "extractive@v1", "minilm:x") == rules.REFINE
    assert (
        rules.reuse_decision(card, {**prev, "content_hash": "0" * 64}, "extractive@v1", "minilm:x")
        == "refine"
    )
    assert rules.reuse_decision(card, prev, "openai@v2", "minilm:x") == rules.REFINE
    assert rules.reuse_decision(card, prev, "extractive@v1", "clip:y") == rules.EMBED
    assert card.refined_description == "d" and card.recommended_weight == 0.6
    assert rules.reuse_decision(_card(1, 10), prev, "extractive@v1", "minilm:x") == rules.DONE
    # A build that renders re-refines what was never rendered (its refinement should see renders).
    assert (
        rules.reuse_decision(_card(1, 10), prev, "extractive@v1", "minilm:x", needs_render=True) == "refine"
    )
    rendered = {**prev, "render_status": "ok"}
    assert (
        rules.reuse_decision(_card(1, 10), rendered, "extractive@v1", "minilm:x", needs_render=True) == "done"
    )


def test_counts_and_publishability() -> None:
    stats = {"input": 10, "filtered/nsfw": 2, "dead_letter/bad_json": 1, "refined": 7, "rendered/ok": 3}
    files = [{"table": "adapters", "rows": 7, "path": "a"}, {"table": "images", "rows": 20, "path": "b"}]
    c = rules.counts(stats, files)
    assert c["input"] == c["written"] + sum(c["filtered"].values()) + sum(c["dead_letter"].values())
    assert c["rendered"] == {"ok": 3} and c["images"] == 20
    rules.check_publishable(c, 0.5)
    with pytest.raises(Exception, match="credentials"):
        rules.check_publishable({**c, "dead_letter": {"unauthorized": 1}}, 1.0)


def test_every_config_field_with_cli_metadata_is_a_flag_and_round_trips() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {a.dest for a in parser._actions}
    for cls in (BuildConfig, FilterFlags):
        for f in dataclasses.fields(cls):
            if "cli" in f.metadata:
                assert f.name in options, f.name
    args = parser.parse_args(["--raw", "r", "--raw", "s", "--out", "o", "--shards", "3", "--types", "LORA",
                              "--no-progress", "--render-prompts", "5", "--keep-sliders"])  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.raw == ["r", "s"] and cfg.shards == 3 and cfg.progress is False and cfg.render_prompts == 5
    assert cfg.filters.types == ("LORA",) and cfg.filters.drop_sliders is False
    default = config_from_args(parser.parse_args(["--raw", "r", "--out", "o"]))
    assert default == BuildConfig(raw=["r"], out="o")


# --------------------------------------------------------------------------------------------- composites
def test_normalize_composite(tmp_path: Path) -> None:
    models = tmp_path / "models-0.jsonl.gz"
    write_jsonl_gz(models, [model_2023(1, 10, "Ink"), model_2023(1, 10, "Ink dup"), model_2023(2, 20, "Oil")],
                   ["{not json"])  # fmt: skip
    versions = tmp_path / "versions-0.jsonl.gz"
    write_jsonl_gz(versions, [version_2025(3, 30)])
    files = [RawFile(str(models), CIVITAI_MODEL), RawFile(str(versions), CIVITAI_VERSION)]
    with _pipeline() as p:
        out = p | stages.Normalize(files)
        assert_that(out["cards"] | beam.Map(lambda c: c.adapter_id),
                    equal_to(["civitai:1@10", "civitai:2@20", "civitai:3@30"]), label="cards")  # fmt: skip
        assert_that(out[stages.FILTERED], equal_to(["duplicate"]), label="filtered")
        assert_that(out[stages.DEAD] | beam.Map(lambda d: (d["stage"], d["reason"])),
                    equal_to([("read", "bad_json")]), label="dead")  # fmt: skip
        totals = out[stages.EVENTS] | beam.CombinePerKey(sum)
        assert_that(totals, equal_to([("input", 5)]), label="events")


def test_filter_composite() -> None:
    keep, nsfw = _card(1, 10), _card(2, 20, "Spicy", nsfw=True)
    with _pipeline() as p:
        out = p | beam.Create([keep, nsfw]) | stages.FilterCards(FilterConfig())
        assert_that(out["cards"] | beam.Map(lambda c: c.adapter_id), equal_to(["civitai:1@10"]), label="kept")
        assert_that(out[stages.FILTERED], equal_to(["nsfw"]), label="filtered")


def test_reuse_and_refine_composites(tmp_path: Path) -> None:
    with _pipeline() as p:
        reuse = (
            p | beam.Create([_card(1, 10), _card(2, 20)]) | stages.Reuse(None, "extractive@v1", "minilm:x")
        )
        assert_that(reuse["done"], equal_to([]), label="done")
        refined = reuse["refine"] | stages.ExtractiveRefine()
        assert_that(refined["cards"] | beam.Map(lambda c: (c.adapter_id, c.refiner)),
                    equal_to([("civitai:1@10", "extractive@v1"), ("civitai:2@20", "extractive@v1")]),
                    label="refined")  # fmt: skip
        assert_that(refined[stages.EVENTS] | beam.CombinePerKey(sum), equal_to([("refined", 2)]), label="ev")


def test_write_composite_dead_letters_bad_rows(tmp_path: Path) -> None:
    good, bad = _card(1, 10), _card(2, 20)
    for c in (good, bad):
        c.refined_description, c.category, c.refiner, c.embedder = "d", "style", "extractive@v1", "e"
        c.embedding = [0.0, 1.0]
    bad.recommended_weight = float("nan")
    with _pipeline() as p:
        cards = p | "Cards" >> beam.Create([good, bad])
        earlier = p | "Earlier" >> beam.Create([])
        out = {"cards": cards, "dead": earlier} | stages.Write(tmp_path, 1, 2)
        assert_that(out[stages.DEAD] | beam.Map(lambda d: (d["record_id"], d["reason"])),
                    equal_to([("civitai:2@20", "schema_violation")]), label="dead")  # fmt: skip
    files = json.loads((tmp_path / ".files.json").read_text())
    assert {f["table"]: f["rows"] for f in files}["adapters"] == 1


def test_routed_counts_each_marker_once() -> None:
    def step(x: int):
        if x % 3 == 0:
            yield stages.Dead("s", "bad", str(x))
        elif x % 3 == 1:
            yield stages.Filtered("odd")
        else:
            yield stages.Event("kept")
            yield x

    with _pipeline() as p:
        out = stages.route(p | beam.Create(range(9)), "Step", step)
        assert_that(out.main, equal_to([2, 5, 8]), label="main")
        assert_that(
            out[stages.DEAD] | beam.Map(lambda d: d["record_id"]), equal_to(["0", "3", "6"]), label="d"
        )
        assert_that(out[stages.FILTERED], equal_to(["odd"] * 3), label="f")
        assert_that(out[stages.EVENTS], equal_to([("kept", 1)] * 3), label="e")


def test_expect_progress_opens_a_bar_with_the_input_size(capfd: pytest.CaptureFixture[str]) -> None:
    from stylus_docs import progress

    with _pipeline() as p:
        out = (
            p
            | beam.Create(list(range(7)))
            | "Expect" >> stages.ExpectProgress("unit-bar", True)
            | "Tick" >> beam.Map(stages._tick, "unit-bar")
        )
        assert_that(out, equal_to(list(range(7))))
    err = capfd.readouterr().err
    assert "unit-bar: 100%" in err and "7/7" in err
    assert not progress.is_open("unit-bar")  # closed when the total was reached
    with _pipeline() as p:  # disabled: a plain pass-through, no bar
        out = p | beam.Create([1, 2]) | stages.ExpectProgress("quiet-bar", False)
        assert_that(out, equal_to([1, 2]))
    assert "quiet-bar" not in capfd.readouterr().err


def test_image_hosts_from_flags_and_configured_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = ["--raw", "r", "--out", "o", "--image-hosts", "img.example:8080", "*.cdn.example"]
    args = parser.parse_args(flags)
    monkeypatch.setenv("CIVITAI_API_URL", "http://127.0.0.1:8765/")
    monkeypatch.setenv("HF_ENDPOINT", "https://user:pw@hf.mirror.example")  # credentials: never a host entry
    cfg = config_from_args(args)
    assert cfg.image_api_hosts() == ("img.example:8080", "*.cdn.example", "127.0.0.1:8765")
    monkeypatch.delenv("CIVITAI_API_URL")
    monkeypatch.delenv("HF_ENDPOINT")
    assert config_from_args(parser.parse_args(["--raw", "r", "--out", "o"])).image_api_hosts() == ()
