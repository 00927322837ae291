"""Hostile and broken input never stops a build, never vanishes and never publishes an empty release.

Real builds (Beam in-process, real Parquet), real CLI, the loopback OpenAI-compatible fake for the
refiner. Every test checks the count invariant ``input == written + filtered + dead letters``.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
from pathlib import Path

import pytest
from build_fixtures import model_2023, snapshot
from fakes.openai_server import error, start_fake_openai, stop

from pipelines.build import BuildConfig, run_build
from stylus_docs import release
from stylus_docs.cli import main
from stylus_docs.refine.openai_vlm import parse_answer
from stylus_docs.schemas import validation_errors


def _invariant(counts: dict) -> None:
    assert counts["input"] == counts["written"] + sum(counts["filtered"].values()) + sum(
        counts["dead_letter"].values()
    ), counts


def _dead_letters(docs: Path) -> list[dict]:
    build = release.resolve_build(docs)
    manifest = release.load_manifest(build)
    out: list[dict] = []
    for path in release.table_files(build, manifest, "dead_letter"):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as handle:
            out.extend(json.loads(line) for line in handle if line.strip())
    return out


def _good(n: int) -> list[dict]:
    return [model_2023(i, i * 10, f"Ink style {i}") for i in range(1, n + 1)]


def _version(vid: int) -> dict:
    return copy.deepcopy(model_2023(1, vid, "x")["modelVersions"][0])


def test_hostile_records_become_dead_letters(tmp_path: Path) -> None:
    deep = '{"id": 901, "name": "deep", "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    surrogate = json.dumps(model_2023(902, 9020, "surrogate")).replace('"surrogate"', '"bad \\ud800 title"')
    nan = json.dumps(model_2023(903, 9030, "nan")).replace('"downloadCount": 100', '"downloadCount": NaN')
    inf = json.dumps(model_2023(904, 9040, "inf")).replace('"rating": 4.5', '"rating": 1e999')
    odd = model_2023(905, 9050, "odd types")
    odd["modelVersions"] = [None, 7, "s", _version(9051)]
    huge = json.dumps(model_2023(906, 9060, "huge")).replace(
        '"downloadCount": 100', '"downloadCount": 1' + "0" * 30
    )
    lines = [deep, surrogate, nan, inf, json.dumps(odd), huge]
    raw = snapshot(tmp_path / "raw", _good(4), bad_lines=lines)
    docs = tmp_path / "docs"
    manifest = run_build(
        BuildConfig(raw=[str(raw)], out=str(docs), max_dead_letter_fraction=1.0, progress=False)
    )
    counts = manifest["counts"]
    _invariant(counts)
    letters = _dead_letters(docs)
    assert len(letters) == sum(counts["dead_letter"].values())
    assert all(not validation_errors("dead_letter.v1.json", d) for d in letters)
    reasons = counts["dead_letter"]
    assert reasons.get("too_deep") == 1
    assert reasons.get("invalid_unicode") == 1
    assert reasons.get("non_finite_number") == 2
    assert reasons.get("malformed_version") == 3  # null, 7 and "s": counted, not lost
    # The one good version of the odd-typed item and the four good items are written.
    assert counts["written"] >= 5
    # The out-of-range integer is either clamped by the normalizer or dead-lettered; never lost.
    assert counts["input"] == 4 + 1 + 1 + 2 + 4 + 1


def test_nan_refiner_answer_is_a_schema_violation() -> None:
    good = {"description": "d", "category": "style", "recommended_weight": 0.6}
    assert parse_answer(json.dumps(good))[1] is None
    for bad in ('{"description": "d", "category": "style", "recommended_weight": NaN}',
                '{"description": "d", "category": "style", "recommended_weight": Infinity}',
                '{"description": "d", "category": "style", "recommended_weight": 1e999}'):  # fmt: skip
        assert parse_answer(bad) == (None, "schema_violation"), bad


def test_nan_answer_in_a_build_is_dead_lettered(tmp_path: Path) -> None:
    from fakes.openai_server import Answer, text, valid

    def decide(path: str, body: dict) -> Answer:
        title = body["messages"][1]["content"][0]["text"].split("\n", 1)[0]
        if title.endswith("style 1"):  # the NaN one, asked again on validation failure: NaN again
            return text('{"description": "Paints ink.", "category": "style", "recommended_weight": NaN}')
        return valid({"description": "Paints ink.", "category": "style", "recommended_weight": 0.6})

    server, base_url = start_fake_openai(script=decide)
    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-test-NANKEY")
    try:
        raw = snapshot(tmp_path / "raw", _good(3))
        cfg = BuildConfig(raw=[str(raw)], out=str(tmp_path / "docs"), refiner="openai",
                          refiner_model="fake-vlm", vlm_retries=0, progress=False)  # fmt: skip
        manifest = run_build(cfg)
    finally:
        for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
            os.environ.pop(k, None)
        stop(server)
    assert manifest["counts"]["dead_letter"] == {"schema_violation": 1}
    assert manifest["counts"]["written"] == 2
    _invariant(manifest["counts"])
    # compose over the release prints valid JSON (no NaN weight stored anywhere).
    rows = release.read_table(release.resolve_build(tmp_path / "docs"), manifest, "adapters").to_pylist()
    assert all(r["recommended_weight"] == pytest.approx(0.6) for r in rows)


def test_unauthorized_refiner_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = snapshot(tmp_path / "raw", _good(6))
    docs = tmp_path / "docs"
    assert main(["build", "--raw", str(raw), "--out", str(docs)]) == 0  # a live release to protect
    live = release.current_build_id(docs)
    capsys.readouterr()
    server, base_url = start_fake_openai(script=[error(401, message="Incorrect API key provided")])
    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-test-BADKEY42")
    try:
        rc = main(["build", "--raw", str(raw), "--out", str(docs), "--refiner", "openai",
                   "--refiner-model", "fake-vlm", "--max-dead-letter-fraction", "1"])  # fmt: skip
    finally:
        for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
            os.environ.pop(k, None)
        stop(server)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert "OPENAI_API_KEY" in err[-1] and "BADKEY42" not in "\n".join(err)
    assert release.current_build_id(docs) == live
    assert [p.name for p in (docs / "builds").iterdir()] == [live]
    # A bad key is known after the first refusal: the other records are not all sent.
    assert len(server.requests_to("/chat/completions")) < 6


def test_dead_letter_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = snapshot(tmp_path / "raw", _good(2), bad_lines=["{not json"] * 3)
    docs = tmp_path / "docs"
    assert main(["build", "--raw", str(raw), "--out", str(docs)]) == 2
    assert "more than --max-dead-letter-fraction 0.5" in capsys.readouterr().err
    assert not (docs / "CURRENT").exists()
    assert main(["build", "--raw", str(raw), "--out", str(docs), "--max-dead-letter-fraction", "0.7"]) == 0
    counts = release.load_manifest(release.resolve_build(docs))["counts"]
    assert counts["dead_letter"] == {"bad_json": 3} and counts["written"] == 2
    assert main(["build", "--raw", str(raw), "--out", str(docs), "--max-dead-letter-fraction", "1.5"]) == 2


def test_empty_input_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw" / "civitai"
    raw.mkdir(parents=True)
    with gzip.open(raw / "models-00000.jsonl.gz", "wt"):
        pass
    assert main(["build", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "docs")]) == 2
    assert "holds no records" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["build", "--raw", str(empty), "--out", str(tmp_path / "docs")]) == 2
    assert "empty file" in capsys.readouterr().err
    assert not (tmp_path / "docs" / "CURRENT").exists()


def test_second_build_into_the_same_docs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = snapshot(tmp_path / "raw", _good(2))
    docs = tmp_path / "docs"
    docs.mkdir()
    with release.build_lock(docs):  # another build holds DOCS
        assert main(["build", "--raw", str(raw), "--out", str(docs)]) == 2
        assert "another build" in capsys.readouterr().err
    assert main(["build", "--raw", str(raw), "--out", str(docs)]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "--raw", "RAW", "--out", "DOCS", "--bogus-flag", "3"],
        ["build", "--raw", "RAW", "--out", "DOCS", "--max-dead-leter-fraction", "1"],
        ["crawl", "civitai", "--out", "DOCS", "--bogus"],
        ["query", "ink", "--docs", "DOCS", "--bogus"],
    ],
)
def test_unknown_flags_before_double_dash_are_errors(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = snapshot(tmp_path / "raw", _good(1))
    argv = [str(raw) if a == "RAW" else str(tmp_path / "docs") if a == "DOCS" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "docs" / "CURRENT").exists()


def test_beam_options_after_double_dash_still_reach_beam(tmp_path: Path) -> None:
    raw = snapshot(tmp_path / "raw", _good(1))
    docs = tmp_path / "docs"
    assert main(["build", "--raw", str(raw), "--out", str(docs), "--", "--direct_num_workers=1"]) == 0
    assert release.current_build_id(docs)


# ------------------------------------------------------------------------------------------- fuzz
def _mutate(line: str, rng: random.Random) -> str:
    """One seeded hostile edit of a valid raw line: bytes, structure, types, numbers, unicode."""
    item = json.loads(line)
    kind = rng.randrange(10)
    if kind == 0:  # flip a byte
        at = rng.randrange(len(line))
        return line[:at] + chr(rng.randrange(32, 127)) + line[at + 1 :]
    if kind == 1:  # truncate
        return line[: rng.randrange(1, len(line))]
    if kind == 2:  # a non-finite number somewhere
        return line.replace(
            '"downloadCount": 100', rng.choice(['"downloadCount": NaN', '"downloadCount": -Infinity'])
        )
    if kind == 3:  # deep nesting in some field
        depth = rng.choice([70, 1000, 50_000])
        return line[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    if kind == 4:  # lone surrogate escape
        return line.replace('"name": "', '"name": "\\udc00', 1)
    if kind == 5:  # odd-typed versions
        item["modelVersions"] = rng.choice(
            [[None, 7, "s"], "oops", {}, [[]], None, [item["modelVersions"][0], 3]]
        )
    elif kind == 6:  # drop a key
        key = rng.choice(["name", "id", "type", "modelVersions", "tags", "stats"])
        item.pop(key, None)
    elif kind == 7:  # swap a value's type
        key = rng.choice(["name", "id", "type", "tags", "nsfw", "description", "stats", "creator"])
        item[key] = rng.choice([None, 0, -1, 1.5, "", "x" * 3, [], {}, [None], True, 2**70])
    elif kind == 8:  # a version field's type
        if isinstance(item.get("modelVersions"), list) and item["modelVersions"]:
            v = item["modelVersions"][0]
            key = rng.choice(["id", "images", "files", "trainedWords", "baseModel", "createdAt"])
            v[key] = rng.choice([None, "x", 7, [], {}, [None], [1, 2], -(2**64)])
    else:  # control characters and odd unicode in text
        item["description"] = "\x00\x07 \u202e\ufeff" + str(item.get("description"))
    return json.dumps(item, ensure_ascii=rng.random() < 0.5)


def test_fuzzed_raw_lines_keep_the_invariant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(20261202)
    good = [model_2023(i, i * 10, f"Ink style {i}") for i in range(1, 301)]
    lines = [_mutate(json.dumps(m), rng) for m in good[:250]]
    raw = snapshot(tmp_path / "raw", good[250:], bad_lines=lines)
    docs = tmp_path / "docs"
    manifest = run_build(
        BuildConfig(raw=[str(raw)], out=str(docs), max_dead_letter_fraction=1.0, progress=False)
    )
    counts = manifest["counts"]
    _invariant(counts)
    assert counts["input"] >= 300  # every line is counted (an item with several versions counts more)
    assert counts["written"] >= 50
    letters = _dead_letters(docs)
    assert len(letters) == sum(counts["dead_letter"].values())
    assert all(d["reason"] and not validation_errors("dead_letter.v1.json", d) for d in letters)
    # The CLI with the default threshold publishes exactly when dead letters are at most half the input.
    publishable = sum(counts["dead_letter"].values()) <= 0.5 * counts["input"]
    rc = main(["build", "--raw", str(raw), "--out", str(tmp_path / "docs2")])
    assert rc == (0 if publishable else 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 or (len(err) == 1 and "nothing published" in err[0]), err
