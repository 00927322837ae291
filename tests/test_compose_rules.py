"""The composer's rules on a fixture release built to break them: one base family per composition
(SD 1.5 + SDXL + Pony adapters for the same concept), characters and celebrities only for prompts that
name them, weak topics left empty, the LLM composer filtered before and validated after, and
``compose --local`` limited to the linked library."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import pytest

from stylus_docs import cli
from stylus_docs.compose import Candidate, Composer, ComposeSettings, OpenAIComposerClient, validate_output
from stylus_docs.compose.families import family_of, resolve_family
from stylus_docs.compose.offline import compose_offline, score_pairs, search_texts, segment
from stylus_docs.compose.rules import NameRules, enforce, is_character
from stylus_docs.compose.types import RawAssignment, RawTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakes.openai_chat import FakeOpenAIChat  # noqa: E402
from release_fixture import sample_rows, write_release  # noqa: E402

CORGI = {"SD 1.5": "civitai:201@2001", "SDXL 1.0": "civitai:202@2002", "Pony": "civitai:203@2003"}
HERMIONE = "civitai:210@2010"
ZELDA = "civitai:211@2011"
MOTO = "civitai:212@2012"
UMBRELLA = "civitai:213@2013"
XL_STYLE = "civitai:214@2014"


def _row(base: dict, aid: str, **kw) -> dict:
    row = copy.deepcopy(base)
    model, version = aid.split(":", 1)[1].split("@")
    row.update(adapter_id=aid, model_id=model, version_id=version, content_hash=f"h{version}", **kw)
    row["file_name"] = f"{row['title'].replace(' ', '_')}.safetensors"
    return row


def rules_rows() -> list[dict]:
    rows = sample_rows(embed=False)
    corgi = next(r for r in rows if r["adapter_id"] == "civitai:103@1003")
    extra = [
        # The same concept for three families, the SDXL one the best match by far.
        _row(corgi, CORGI["SD 1.5"], title="Corgi Dog", base_model="SD 1.5", downloads=10),
        _row(
            corgi,
            CORGI["SDXL 1.0"],
            title="Corgi Puppy XL",
            base_model="SDXL 1.0",
            base_model_family="SDXL",
            trigger_words=["corgi puppy"],
            example_prompts=["a corgi puppy", "corgi on a sofa"],
        ),
        _row(corgi, CORGI["Pony"], title="Corgi Pony", base_model="Pony", base_model_family="Pony"),
        _row(
            corgi,
            HERMIONE,
            title="Hermione Granger – Emma Watson",
            category="celebrity",
            tags=["celebrity", "woman", "girl", "harry potter", "photorealistic"],
            trigger_words=["hermione", "young girl", "woman"],
            description="Emma Watson as Hermione Granger, a young girl with brown hair posing for a photo.",
            example_prompts=["hermione granger, young girl, brown hair, photo", "emma watson, woman, smile"],
        ),
        _row(
            corgi,
            ZELDA,
            title="Young Zelda",
            category="character",
            tags=["character", "girl", "video game"],
            trigger_words=["zelda", "1girl", "brown hair, hair ribbon"],
            description="Young Princess Zelda, a girl posing in a dress.",
            example_prompts=["young zelda, 1girl, posing, dress", "zelda, young girl, smile"],
        ),
        _row(
            corgi,
            MOTO,
            title="Motorcycle",
            category="vehicle",
            tags=["vehicle", "motorcycle"],
            trigger_words=["motorbike"],
            description="Motorcycles and motorbikes, chrome details.",
            example_prompts=["a red motorcycle on a road", "motorbike, chrome"],
        ),
        _row(
            corgi,
            UMBRELLA,
            title="Umbrella",
            category="object",
            tags=["object", "umbrella"],
            trigger_words=["umbrll"],
            description="Umbrellas in the rain.",
            example_prompts=["umbrll, a woman holding an umbrella", "red umbrella in the rain"],
        ),
        _row(
            corgi,
            XL_STYLE,
            title="Graffiti XL",
            category="style",
            base_model="SDXL 1.0",
            tags=["style", "graffiti"],
            trigger_words=["grffxl"],
            description="Graffiti murals for SDXL.",
            example_prompts=["grffxl, a mural", "grffxl graffiti wall"],
        ),
    ]
    rows = [*rows, *extra]
    from stylus_docs.embedding import NumpyMiniLM, embed_cards

    for r, v in zip(rows, embed_cards(NumpyMiniLM(), rows), strict=True):
        r["embedding"] = v.tolist()
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return rules_rows()


@pytest.fixture(scope="module")
def docs(tmp_path_factory, rows) -> Path:
    root = tmp_path_factory.mktemp("rules") / "docs"
    write_release(root, rows)
    return root


def _ids(result: dict) -> list[str]:
    return [a["adapter_id"] for t in result["topics"] for a in t["adapters"]]


def _families(result: dict, rows: list[dict]) -> set[str | None]:
    by_id = {r["adapter_id"]: r for r in rows}
    return {family_of(by_id[a]["base_model"], by_id[a].get("base_model_family")) for a in _ids(result)}


def _llm(docs, server, **kw) -> Composer:
    settings = ComposeSettings(composer="llm", model="fake-model", http_retries=0, **kw)
    client = OpenAIComposerClient("fake-model", base_url=server.base_url, http_retries=0, timeout_s=10)
    return Composer(docs, settings, llm_client=client)


def _shown(server) -> dict[str, int]:
    """title → index of the catalogue in the LLM request."""
    import re

    user = server.requests[0]["messages"][1]["content"]
    return {title: int(i) for i, title in re.findall(r"^\[(\d+)\] (.+)$", user, flags=re.M)}


# -- one base family ----------------------------------------------------------------------------------


def test_resolve_family_and_family_of():
    assert resolve_family("SD 1.5") == "SD 1.x" and resolve_family("sdxl") == "SDXL"
    assert resolve_family("SDXL 1.0") == "SDXL" and resolve_family("Pony") == "Pony"
    assert resolve_family("sd 1.x") == "SD 1.x" and resolve_family("Something New") == "Something New"
    assert family_of("SD 1.5") == "SD 1.x" and family_of("Pony", "Pony") == "Pony"
    assert family_of("SDXL 1.0", None) == "SDXL" and family_of("", None) is None


@pytest.mark.parametrize(
    ("base", "family", "corgi"),
    [
        ("SD 1.5", "SD 1.x", CORGI["SD 1.5"]),
        ("SDXL 1.0", "SDXL", CORGI["SDXL 1.0"]),
        ("Pony", "Pony", CORGI["Pony"]),
    ],
)
def test_base_model_picks_one_family(docs, rows, base, family, corgi):
    result = Composer(docs, ComposeSettings(base_model=base)).compose("a graffiti of a corgi on the wall")
    validate_output(result)
    assert result["base_family"] == family and result["base_family_from"] == "base_model"
    assert result["base_model"] == base
    assert corgi in _ids(result)
    assert _families(result, rows) == {family}


def test_without_base_model_the_best_family_is_chosen_and_never_mixed(docs, rows):
    for prompt in (
        "a graffiti of a corgi on the wall",
        "a corgi puppy",
        "a corgi riding a motorcycle, graffiti",
        "a neon cyberpunk city with a corgi",
    ):
        result = Composer(docs, ComposeSettings()).compose(prompt)
        validate_output(result)
        assert result["base_family_from"] == "candidates"
        fams = _families(result, rows)
        assert len(fams) <= 1 and (not fams or fams == {result["base_family"]}), (prompt, fams)
    # "corgi puppy" is best served by the SDXL adapter: the composer says so at the top level.
    puppy = Composer(docs, ComposeSettings()).compose("a corgi puppy")
    assert puppy["base_family"] == "SDXL" and puppy["base_model"] == "SDXL 1.0"
    assert _ids(puppy) == [CORGI["SDXL 1.0"]]


def test_pipeline_family_is_used_unless_base_model_given(docs, rows):
    result = Composer(docs, ComposeSettings(pipeline_base_model="SDXL 1.0")).compose("a corgi on the wall")
    assert result["base_family"] == "SDXL" and result["base_family_from"] == "pipeline"
    assert _families(result, rows) <= {"SDXL"}
    both = ComposeSettings(base_model="SD 1.5", pipeline_base_model="SDXL 1.0")
    result = Composer(docs, both).compose("a corgi on the wall")
    assert result["base_family"] == "SD 1.x" and result["base_family_from"] == "base_model"


def test_cli_settings_map_generate_base_model_to_pipeline():
    import argparse

    from stylus_docs.commands.compose import add_compose_options, settings_from_args

    parser = argparse.ArgumentParser()
    add_compose_options(parser)
    settings = settings_from_args(parser.parse_args([]), base_model="SD 1.5")
    assert settings.base_model is None and settings.pipeline_base_model == "SD 1.5"
    settings = settings_from_args(parser.parse_args(["--base-model", "Pony"]), base_model="SD 1.5")
    assert settings.base_model == "Pony"


def test_enforce_drops_other_families():
    cands = [
        Candidate(index=0, adapter_id="a", title="Corgi", base_model="SD 1.5", family="SD 1.x"),
        Candidate(index=1, adapter_id="b", title="Corgi XL", base_model="SDXL 1.0", family="SDXL"),
        Candidate(index=2, adapter_id="c", title="Corgi Pony", base_model="Pony", family="Pony"),
    ]
    proposal = [RawTopic("corgi", [RawAssignment(0), RawAssignment(1), RawAssignment(2)])]
    topics, dropped = enforce("a corgi", proposal, cands, ComposeSettings(), family="SD 1.x")
    assert [a["adapter_id"] for a in topics[0]["adapters"]] == ["a"]
    assert [(d["reason"], d["adapter_id"]) for d in dropped] == [
        ("other_base_family", "b"),
        ("other_base_family", "c"),
    ]


# -- characters and celebrities ----------------------------------------------------------------------

GENERIC = (
    "A young girl poses for a photo on a motorcycle",
    "A woman statue holding an umbrella",
    "a girl with brown hair",
    "a man and a woman walking",
    "a person reading a book",
    "young girl smiling",
)


def test_is_character_by_category_or_tags():
    assert is_character(Candidate(index=0, adapter_id="x", category="celebrity"))
    assert is_character(
        Candidate(index=0, adapter_id="x", category="clothing", tags=["character", "cosplay"])
    )
    assert not is_character(Candidate(index=0, adapter_id="x", category="style", tags=["woman", "girl"]))


def test_naming_rule():
    names = NameRules(english=())
    hermione = Candidate(
        index=0,
        adapter_id="h",
        title="Hermione Granger – Emma Watson v2",
        category="celebrity",
        trigger_words=["hermione", "young girl", "woman"],
    )
    zelda = Candidate(
        index=1,
        adapter_id="z",
        title="Young Zelda",
        category="character",
        trigger_words=["1girl, hair ribbon"],
    )
    for prompt in ("Hermione Granger reading", "hermione granger reading", "Emma Watson smiling", "HERMIONE"):
        assert names.named(hermione, prompt), prompt
    assert names.named(hermione, "Hermione smiling") == "hermione"  # a distinctive title word suffices
    for prompt in GENERIC + ("a woman in a hermionegranger shirt", "a granite statue"):
        assert names.named(hermione, prompt) is None, prompt
        assert names.named(zelda, prompt) is None, prompt
    assert names.named(zelda, "Zelda riding a horse") == "zelda"
    # A part of a title split at "for" / "as" is a name as well.
    comics = Candidate(index=3, adapter_id="c", title="Emma_Watson_for_Comics", category="character")
    assert (
        NameRules(english=["emma", "watson", "comics"]).named(comics, "emma watson smiling") == "emma watson"
    )
    assert NameRules(english=["emma", "watson", "comics"]).named(comics, "a girl reading comics") is None
    # A name that is an ordinary word counts only when written as a proper noun.
    launch = Candidate(index=2, adapter_id="l", title="Launch - Dragon Ball", category="character")
    common = NameRules(english=["launch", "dragon", "ball"])
    assert common.named(launch, "a rocket launch at dawn") is None
    assert common.named(launch, "a portrait of Launch smiling") == "launch"
    assert common.named(launch, "launch from dragon ball") == "dragon ball"


@pytest.mark.parametrize("prompt", GENERIC)
def test_generic_people_get_no_character_offline(docs, prompt):
    result = Composer(docs, ComposeSettings(base_model="SD 1.5")).compose(prompt)
    picked = _ids(result)
    assert HERMIONE not in picked and ZELDA not in picked, prompt
    for t in result["topics"]:
        for a in t["adapters"]:
            assert a["category"] not in ("character", "celebrity")


def test_generic_people_prompt_keeps_the_other_adapters(docs):
    result = Composer(docs, ComposeSettings(base_model="SD 1.5")).compose(GENERIC[0])
    assert MOTO in _ids(result)
    assert any(
        d["reason"] == "character_not_requested" and d["adapter_id"] in (HERMIONE, ZELDA)
        for d in result["dropped"]
    )


@pytest.mark.parametrize("prompt", ["Hermione Granger reading", "Emma Watson smiling"])
def test_named_celebrity_may_be_chosen(docs, prompt):
    result = Composer(docs, ComposeSettings(base_model="SD 1.5")).compose(prompt)
    assert HERMIONE in _ids(result)


def test_llm_never_sees_unnamed_characters_and_is_validated(docs):
    with FakeOpenAIChat([{"content": '{"topics": []}'}]) as server:
        _llm(docs, server, base_model="SD 1.5").compose(GENERIC[0])
    shown = _shown(server)
    assert "Hermione Granger – Emma Watson" not in shown and "Young Zelda" not in shown
    assert "Motorcycle" in shown
    assert not {"Corgi Puppy XL", "Corgi Pony", "Graffiti XL", "Neon Cyberpunk City"} & set(shown)
    # The answer is checked too: an index outside the filtered catalogue is refused.
    answer = {
        "topics": [{"topic": "motorcycle", "adapters": [{"index": shown["Motorcycle"]}, {"index": 99}]}]
    }
    with FakeOpenAIChat([{"content": json.dumps(answer)}]) as server:
        result = _llm(docs, server, base_model="SD 1.5").compose(GENERIC[0])
    assert _ids(result) == [MOTO]
    assert [d["reason"] for d in result["dropped"]] == ["unknown_index"]
    # A named celebrity is shown and kept.
    with FakeOpenAIChat([{"content": '{"topics": []}'}]) as server:
        _llm(docs, server, base_model="SD 1.5").compose("Hermione Granger reading")
    shown = _shown(server)
    answer = {
        "topics": [
            {"topic": "Hermione Granger", "adapters": [{"index": shown["Hermione Granger – Emma Watson"]}]}
        ]
    }
    with FakeOpenAIChat([{"content": json.dumps(answer)}]) as server:
        result = _llm(docs, server, base_model="SD 1.5").compose("Hermione Granger reading")
    assert _ids(result) == [HERMIONE]


def test_llm_sees_one_family_only(docs, rows):
    by_title = {r["title"]: r for r in rows}
    with FakeOpenAIChat([{"content": '{"topics": []}'}]) as server:
        result = _llm(docs, server).compose("a corgi puppy")
    assert result["base_family"] == "SDXL"
    fams = {
        family_of(by_title[t]["base_model"], by_title[t].get("base_model_family")) for t in _shown(server)
    }
    assert fams == {"SDXL"}


def test_enforce_validates_llm_characters():
    cands = [
        Candidate(index=0, adapter_id="h", title="Hermione Granger – Emma Watson", category="celebrity"),
        Candidate(index=1, adapter_id="z", title="Young Zelda", category="character", tags=["character"]),
        Candidate(index=2, adapter_id="m", title="Motorcycle", category="vehicle"),
    ]
    proposal = [
        RawTopic("young girl poses", [RawAssignment(0), RawAssignment(1)]),
        RawTopic("motorcycle", [RawAssignment(2)]),
    ]
    topics, dropped = enforce(GENERIC[0], proposal, cands, ComposeSettings())
    assert [a["adapter_id"] for t in topics for a in t["adapters"]] == ["m"]
    assert [d["reason"] for d in dropped] == ["character_not_requested"] * 2


# -- topics ------------------------------------------------------------------------------------------


def test_topics_are_short_and_from_the_prompt():
    assert segment("A small dog eating a treat next to a couple of knitted hats") == [
        "small dog",
        "eating",
        "treat",
        "knitted hats",
    ]
    assert segment("Two young men wearing glasses holding a white frisbee.") == [
        "young men",
        "glasses",
        "white frisbee",
    ]
    assert segment("a photo of a dining table") == ["dining table"]
    assert "polar bear swimming" in search_texts("a polar bear swimming in a zoo")


def test_topics_merge_when_one_adapter_spans_them():
    cands = [
        Candidate(index=0, adapter_id="p", title="Polar Bear Swimming", tags=["animal"]),
        Candidate(index=1, adapter_id="z", title="Zoo", tags=["background"]),
    ]
    topics = compose_offline("a polar bear swimming in a zoo", cands, ComposeSettings(offline_threshold=0.3))
    assert [t.topic for t in topics] == ["polar bear swimming", "zoo"]
    assert [a.index for a in topics[0].adapters] == [0] and [a.index for a in topics[1].adapters] == [1]
    # Without an adapter spanning both, the topics stay apart.
    apart = compose_offline(
        "a polar bear swimming in a zoo", cands[1:], ComposeSettings(offline_threshold=0.3)
    )
    assert [t.topic for t in apart] == ["polar bear", "swimming", "zoo"]


def test_weak_topics_get_no_adapter(docs):
    prompt = "a corgi next to a red sports car"
    composer = Composer(docs, ComposeSettings(base_model="SD 1.5"))
    default = composer.compose(prompt)
    topics = {t["topic"]: [a["adapter_id"] for a in t["adapters"]] for t in default["topics"]}
    assert topics["corgi"] and topics["red sports car"] == []  # "Vintage Cars" only shares "car"
    # The cut is the threshold on the topic's best score: lowered below it, the weak match is taken.
    cands = composer.source.candidates(prompt, composer.settings)
    best = max(s for s, p, _i, _w in score_pairs(["red sports car"], cands, None, 150) if p == 0)
    assert best < ComposeSettings().offline_threshold
    low = Composer(docs, ComposeSettings(base_model="SD 1.5", offline_threshold=best - 0.01)).compose(prompt)
    assert {t["topic"]: [a["adapter_id"] for a in t["adapters"]] for t in low["topics"]}[
        "red sports car"
    ] == ["hf:acme/retro-cars@abc123"]


# -- compose --local ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_docs(tmp_path_factory, rows) -> tuple[Path, Path]:
    """A release whose rows carry the SHA-256 of two files in a library folder (linked)."""
    from stylus_docs.library import link

    base = tmp_path_factory.mktemp("local")
    lib = base / "loras"
    lib.mkdir()
    files = {"civitai:103@1003": b"corgi weights", "civitai:104@1004": b"graffiti weights"}
    rows = copy.deepcopy(rows)
    for aid, data in files.items():
        (lib / f"{aid.split('@')[1]}.safetensors").write_bytes(data)
        next(r for r in rows if r["adapter_id"] == aid)["sha256"] = hashlib.sha256(data).hexdigest()
    (lib / "mine.safetensors").write_bytes(b"not in the release")
    docs = base / "docs"
    write_release(docs, rows)
    report = link(docs, lib)
    assert len(report.matched) == 2
    return docs, lib


def test_compose_local_only_returns_linked_adapters(local_docs):
    docs, lib = local_docs
    prompt = "a graffiti of a corgi on the wall, watercolor, a corgi puppy"
    everything = _ids(Composer(docs, ComposeSettings()).compose(prompt))
    assert set(everything) - {"civitai:103@1003", "civitai:104@1004"}  # more is available in general
    result = Composer(docs, ComposeSettings(local=str(lib))).compose(prompt)
    validate_output(result)
    assert set(_ids(result)) == {"civitai:103@1003", "civitai:104@1004"}
    assert result["local"] == {"dir": str(lib), "adapters": 2}


def test_cli_compose_local(local_docs, capsys):
    docs, lib = local_docs
    rc = cli.main(
        ["compose", "a corgi puppy and a dragon", "--docs", str(docs), "--local", str(lib), "--no-cache"]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert _ids(out) == ["civitai:103@1003"]


def test_compose_local_without_index_is_an_error(docs, tmp_path, capsys):
    rc = cli.main(["compose", "a corgi", "--docs", str(docs), "--local", str(tmp_path), "--no-cache"])
    assert rc != 0
    assert "stylus-docs link" in capsys.readouterr().err
