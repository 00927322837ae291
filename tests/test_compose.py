"""The composer on a hand-made release: output shape, every rule, the LLM client, the cache, the CLI."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from stylus_docs import cli
from stylus_docs.compose import (
    Composer,
    ComposeSettings,
    InvalidAnswer,
    LLMUnavailable,
    OpenAIComposerClient,
    validate_output,
)
from stylus_docs.compose.llm import load_prompt, parse_answer
from stylus_docs.compose.offline import segment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakes.openai_chat import FakeOpenAIChat  # noqa: E402
from release_fixture import sample_rows, write_release  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a graffiti of a corgi on the wall, watercolor, anime girl Hatsune Miku"


def _extra_rows() -> list[dict]:
    rows = sample_rows()
    base = next(r for r in rows if r["adapter_id"] == "civitai:110@1010")
    miku = copy.deepcopy(base)
    miku.update(
        adapter_id="civitai:111@1011",
        model_id="111",
        version_id="1011",
        title="Hatsune Miku",
        category="character",
        trigger_words=["hatsune miku"],
        tags=["character", "vocaloid"],
    )
    star = copy.deepcopy(base)
    star.update(
        adapter_id="civitai:112@1012",
        model_id="112",
        version_id="1012",
        title="Famous Actor Bob Stone",
        category="celebrity",
        trigger_words=["bobstone"],
        tags=["celebrity"],
    )
    ink = copy.deepcopy(next(r for r in rows if r["adapter_id"] == "civitai:106@1006"))
    ink.update(
        adapter_id="civitai:113@1013",
        model_id="113",
        version_id="1013",
        title="Ink Wall Style",
        category="style",
        trigger_words=["inkwl"],
        tags=["style", "ink"],
    )
    return [*rows, miku, star, ink]


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel") / "docs"
    write_release(root, _extra_rows())
    return root


def shown_catalogue(docs, prompt: str = PROMPT, **kw) -> dict[str, int]:
    """adapter_id → index in the catalogue the LLM composer is shown for ``prompt`` (read off the
    request it sends)."""
    with FakeOpenAIChat([{"content": '{"topics": []}'}]) as server:
        _llm(docs, server, **kw).compose(prompt)
    user = server.requests[0]["messages"][1]["content"]
    by_title = {r["title"]: r["adapter_id"] for r in _extra_rows_cached()}
    shown = re.findall(r"^\[(\d+)\] (.+)$", user, flags=re.M)
    return {by_title[title]: int(i) for i, title in shown}


_ROWS: list[dict] = []


def _extra_rows_cached() -> list[dict]:
    if not _ROWS:
        _ROWS.extend(_extra_rows())
    return _ROWS


@pytest.fixture(scope="module")
def catalogue(docs) -> dict[str, int]:
    """adapter_id → index in the catalogue the LLM composer shows for PROMPT."""
    return shown_catalogue(docs)


def _answer(*topics) -> str:
    return json.dumps(
        {
            "topics": [
                {"topic": t, "adapters": [{"index": i, "reason": f"r{i}"} for i in ids]} for t, ids in topics
            ]
        }
    )


def _llm(docs, server, tmp_path=None, **kw) -> Composer:
    settings = ComposeSettings(
        composer="llm", model="fake-model", http_retries=kw.pop("http_retries", 2), **kw
    )
    client = OpenAIComposerClient(
        "fake-model", base_url=server.base_url, http_retries=settings.http_retries, timeout_s=10
    )
    return Composer(docs, settings, cache_dir=tmp_path, llm_client=client)


# -- offline ----------------------------------------------------------------------------------------


def test_offline_composition_shape_and_determinism(docs):
    composer = Composer(docs, ComposeSettings())
    result = composer.compose("a graffiti of a corgi on the wall")
    validate_output(result)
    assert set(result) == {
        "prompt", "release", "composer", "base_model", "base_family", "base_family_from", "local", "topics",
        "dropped", "timings",
    }  # fmt: skip
    assert result["base_family"] == "SD 1.x" and result["base_family_from"] == "candidates"
    assert result["base_model"] == "SD 1.5" and result["local"] is None
    assert result["release"]["build_id"] == composer.build_id
    assert result["composer"]["name"] == "offline"
    picked = {t["topic"]: [a["adapter_id"] for a in t["adapters"]] for t in result["topics"]}
    assert picked["corgi"] == ["civitai:103@1003"]
    assert "civitai:104@1004" in picked["graffiti"]
    for topic in result["topics"]:
        for a in topic["adapters"]:
            assert set(a) == {"adapter_id", "title", "category", "recommended_weight", "reason"}
            assert a["reason"]
    again = Composer(docs, ComposeSettings()).compose("a graffiti of a corgi on the wall")
    assert again["topics"] == result["topics"] and again["dropped"] == result["dropped"]


def test_offline_rules_characters_and_base_model(docs):
    generic = Composer(docs, ComposeSettings()).compose("an anime girl with a corgi")
    ids = [a["adapter_id"] for t in generic["topics"] for a in t["adapters"]]
    assert "civitai:110@1010" not in ids  # character adapter for a generic girl
    assert any(d["reason"] == "character_not_requested" for d in generic["dropped"])
    named = Composer(docs, ComposeSettings()).compose("Hatsune Miku singing on a stage")
    assert "civitai:111@1011" in [a["adapter_id"] for t in named["topics"] for a in t["adapters"]]
    xl = Composer(docs, ComposeSettings(base_model="SD 1.5")).compose("a neon cyberpunk city")
    assert "civitai:105@1005" not in [a["adapter_id"] for t in xl["topics"] for a in t["adapters"]]


def test_segment_phrases():
    assert segment("a graffiti of a corgi on the wall") == ["graffiti", "corgi", "wall"]
    assert segment("Red car, red car; at night") == ["red car", "night"]


# -- LLM: every rule --------------------------------------------------------------------------------


def test_llm_rules_enforced(docs, catalogue):
    c = catalogue
    answer = _answer(
        (
            "corgi",
            [c["civitai:103@1003"], c["civitai:102@1002"], c["civitai:109@1009"], c["civitai:101@1001"]],
        ),
        ("graffiti", [c["civitai:104@1004"], c["civitai:103@1003"], 999, -1]),  # duplicate + unknown
        ("wall", [c["civitai:113@1013"], c["civitai:106@1006"]]),  # third and fourth style adapters
        ("watercolor", [c["civitai:106@1006"]]),
        ("sunset beach", [c["hf:acme/retro-cars@abc123"]]),  # hallucinated topic
        ("anime girl", []),
        ("Hatsune Miku", [c["civitai:111@1011"]]),  # named character: allowed
    )
    # Characters the prompt does not name never reach the LLM (the rules check its answer as well).
    assert "civitai:110@1010" not in c and "civitai:112@1012" not in c
    with FakeOpenAIChat([{"content": answer}]) as server:
        result = _llm(docs, server).compose(PROMPT)
    validate_output(result)
    topics = {t["topic"]: [a["adapter_id"] for a in t["adapters"]] for t in result["topics"]}
    assert len(topics["corgi"]) == 3 and topics["corgi"][0] == "civitai:103@1003"
    assert topics["graffiti"] == ["civitai:104@1004"]
    styles = [a for t in result["topics"] for a in t["adapters"] if a["category"] == "style"]
    assert len(styles) == 2
    assert "sunset beach" not in topics
    assert topics["anime girl"] == []
    assert topics["Hatsune Miku"] == ["civitai:111@1011"]
    all_ids = [a for ids in topics.values() for a in ids]
    assert len(all_ids) == len(set(all_ids))
    reasons = {}
    for d in result["dropped"]:
        reasons.setdefault(d["reason"], []).append(d)
    assert [d["adapter_id"] for d in reasons["over_topic_cap"]] == ["civitai:101@1001"]
    assert [d["adapter_id"] for d in reasons["duplicate_adapter"]] == ["civitai:103@1003"]
    assert sorted(d["index"] for d in reasons["unknown_index"]) == [-1, 999]
    assert {d["topic"] for d in reasons["topic_not_in_prompt"]} == {"sunset beach"}
    # graffiti (104) and ink wall (113) take the two style slots; watercolor (106) is refused twice
    assert [d["adapter_id"] for d in reasons["style_cap"]] == ["civitai:106@1006"] * 2
    assert "character_not_requested" not in reasons
    for d in result["dropped"]:
        assert d["detail"]


def test_llm_include_characters_and_per_topic(docs):
    c = shown_catalogue(docs, include_characters=True)
    answer = _answer(("anime girl", [c["civitai:110@1010"], c["civitai:112@1012"]]))
    with FakeOpenAIChat([{"content": answer}]) as server:
        result = _llm(docs, server, include_characters=True, per_topic=1).compose(PROMPT)
    assert [a["adapter_id"] for a in result["topics"][0]["adapters"]] == ["civitai:110@1010"]
    assert [d["reason"] for d in result["dropped"]] == ["over_topic_cap"]


def test_llm_prompt_has_catalogue_and_rules(docs, catalogue):
    with FakeOpenAIChat([{"content": _answer(("corgi", [catalogue["civitai:103@1003"]]))}]) as server:
        _llm(docs, server, per_topic=2).compose(PROMPT)
    body = server.requests[0]
    assert body["model"] == "fake-model" and body["temperature"] == 0.0
    user = body["messages"][1]["content"]
    assert f"[{catalogue['civitai:103@1003']}] Welsh Corgi" in user
    assert "category: animal" in user and "0 to 2 adapters" in user and PROMPT in user
    assert body["messages"][0]["content"] == load_prompt()["system"]


def test_invalid_json_is_retried_then_accepted(docs, catalogue):
    good = _answer(("corgi", [catalogue["civitai:103@1003"]]))
    script = [
        {"content": "Sure! {topics: [corgi]}"},
        {"content": '{"topics": [{"topic": 3}]}'},
        {"content": good},
    ]
    with FakeOpenAIChat(script) as server:
        result = _llm(docs, server, answer_retries=2).compose(PROMPT)
    assert len(server.requests) == 3
    assert result["timings"]["llm_invalid_answers"] == 2
    repair = server.requests[1]["messages"][-1]["content"]
    assert "invalid JSON" in repair
    assert "schema violation" in server.requests[2]["messages"][-1]["content"]
    assert result["topics"][0]["adapters"][0]["adapter_id"] == "civitai:103@1003"


def test_invalid_answers_bounded_then_fatal_or_fallback(docs, tmp_path):
    with FakeOpenAIChat([{"content": "no json here"}]) as server:
        with pytest.raises(InvalidAnswer):
            _llm(docs, server, answer_retries=1).compose(PROMPT)
        assert len(server.requests) == 2
        result = _llm(docs, server, tmp_path, answer_retries=0, fallback="offline").compose(PROMPT)
    assert result["composer"]["name"] == "offline" and result["composer"]["fallback_from"] == "llm"
    assert any(t["adapters"] for t in result["topics"])
    assert not list(tmp_path.rglob("*.json"))  # a fallback is not cached


def test_429_then_success(docs, catalogue):
    script = [
        {"status": 429, "headers": {"retry-after-ms": "10"}, "body": {"error": {"message": "slow down"}}},
        {"status": 503, "headers": {"retry-after-ms": "10"}},
        {"content": _answer(("corgi", [catalogue["civitai:103@1003"]]))},
    ]
    with FakeOpenAIChat(script) as server:
        result = _llm(docs, server).compose(PROMPT)
    assert len(server.requests) == 3
    assert result["topics"][0]["adapters"][0]["adapter_id"] == "civitai:103@1003"


def test_retries_are_bounded_and_4xx_not_retried(docs):
    with FakeOpenAIChat([{"status": 500, "headers": {"retry-after-ms": "1"}}]) as server:
        with pytest.raises(LLMUnavailable):
            _llm(docs, server, http_retries=2).compose(PROMPT)
    assert len(server.requests) == 3
    with FakeOpenAIChat([{"status": 401, "body": {"error": {"message": "bad key"}}}]) as server:
        with pytest.raises(LLMUnavailable, match="401"):
            _llm(docs, server, http_retries=3).compose(PROMPT)
    assert len(server.requests) == 1


def test_refine_turn(docs, catalogue):
    c = catalogue
    first = _answer(("corgi", [c["civitai:103@1003"], c["civitai:102@1002"]]))
    second = _answer(("corgi", [c["civitai:103@1003"]]))
    with FakeOpenAIChat([{"content": first}, {"content": second}]) as server:
        result = _llm(docs, server, refine=True).compose(PROMPT)
    assert len(server.requests) == 2
    assert "Review your answer" in server.requests[1]["messages"][-1]["content"]
    assert [a["adapter_id"] for a in result["topics"][0]["adapters"]] == ["civitai:103@1003"]


def test_cache_keyed_by_prompt_model_and_settings(docs, catalogue, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-key-123")
    answer = _answer(("corgi", [catalogue["civitai:103@1003"]]))
    with FakeOpenAIChat([{"content": answer}]) as server:
        first = _llm(docs, server, tmp_path).compose(PROMPT)
        again = _llm(docs, server, tmp_path).compose(PROMPT)
        assert len(server.requests) == 1
        assert again["timings"]["cached"] is True and again["topics"] == first["topics"]
        _llm(docs, server, tmp_path, per_topic=2).compose(PROMPT)
        assert len(server.requests) == 2
        _llm(docs, server, tmp_path).compose(PROMPT + " at night")
        assert len(server.requests) == 3
    sent = {k.lower(): v for k, v in server.headers[0].items()}
    assert sent["authorization"] == "Bearer sk-secret-test-key-123"
    for path in tmp_path.rglob("*.json"):
        assert "sk-secret" not in path.read_text()


def test_parse_answer_rejects_python_literals():
    with pytest.raises(ValueError):
        parse_answer("{'topics': [{'topic': 'a', 'adapters': []}]}")
    assert parse_answer('```json\n{"topics": []}\n```') == []


def test_composition_schema_is_valid_and_loaded_from_schemas_dir():
    top = json.loads((ROOT / "schemas" / "composition.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(top)
    from stylus_docs.compose.llm import load_schema

    assert load_schema() == top


# -- CLI ----------------------------------------------------------------------------------------------


def test_cli_compose_json_and_table(docs, tmp_path, capsys):
    rc = cli.main(["compose", "a graffiti of a corgi", "--docs", str(docs), "--cache-dir", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    validate_output(out)
    rc = cli.main(["compose", "a corgi", "--docs", str(docs), "--no-cache", "--format", "table"])
    assert rc == 0
    assert "civitai:103@1003" in capsys.readouterr().out


def test_cli_compose_errors(docs, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "stylus-docs"), "compose", "a corgi", "--docs", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "release not found" in proc.stderr
    rc = cli.main(
        ["compose", "a corgi", "--docs", str(docs), "--composer", "llm", "--model", "m", "--no-cache"]
    )
    assert rc != 0
