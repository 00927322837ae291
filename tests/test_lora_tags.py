"""The one grammar of extra-network tags (stylus_docs.normalize.lora) and every reader that uses it."""

from __future__ import annotations

import pytest

from stylus_docs.embedding import example_prompt_text
from stylus_docs.normalize.lora import NetworkTag, find_tags, mentions_tags, parse_lora_tags, strip_tags
from stylus_docs.query.lexical import document_text
from stylus_docs.records import AdapterCard
from stylus_docs.refine.extractive import refine_extractive
from stylus_docs.render.prompts import clean_prompt


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("a <lora:ink_v1:0.6>, b", [("ink_v1", 0.6, "lora")]),
        ("<LORA:Other:1.2> <LyCo:x:.5> <LoCon:y:2>",
         [("Other", 1.2, "lora"), ("x", 0.5, "lyco"), ("y", 2.0, "locon")]),
        ("< lora : my style : 0.7 >", [("my style", 0.7, "lora")]),
        ("<lora:x:0.7:0.5>", [("x", 0.7, "lora")]),  # text-encoder weight first, UNet weight ignored
        ("<lora:x:0.7:lbw=OUTD>", [("x", 0.7, "lora")]),
        ("<lora:x:te=0.8:unet=0.5>", [("x", None, "lora")]),  # named weights: no plain first weight
        ("<lora:noweight>", [("noweight", None, "lora")]),
        ("<lora:bad:abc>", [("bad", None, "lora")]),
        ("<lora:neg:-0.5> <lora:zero:0.> <lora:plus:+1>", [("neg", -0.5, "lora"), ("zero", 0.0, "lora"),
                                                           ("plus", 1.0, "lora")]),
        ("<hypernet:sgqo1n:1.0>", [("sgqo1n", 1.0, "hypernet")]),
        ("<lora:a:1> and <lora:a:0.5>", [("a", 1.0, "lora"), ("a", 0.5, "lora")]),
        ("<lora:big:" + "9" * 400 + ">", [("big", None, "lora")]),  # overflows to inf: not a usable weight
    ],
)  # fmt: skip
def test_find_tags(text: str, tags: list[tuple[str, float | None, str]]) -> None:
    assert find_tags(text) == [NetworkTag(*t) for t in tags]


@pytest.mark.parametrize(
    "text",
    [
        "<lora:>",
        "<lora: >",
        "<lora:half:0.7, street, rain",  # unclosed: the words after it are the prompt's own
        "<lora x:1>",
        "<loras:x:1>",
        "<embedding:x:1>",
        "lora:x:1>",
        "(masterpiece:1.2), <3",
        "",
    ],
)
def test_malformed_tags_are_left_alone(text: str) -> None:
    assert find_tags(text) == []
    assert strip_tags(text) == text
    assert parse_lora_tags(text) == {}


def test_a_name_cannot_swallow_a_later_tag() -> None:
    text = "white thighhighs <lora:bunny:0.7, on bed, pillow, <lora:rurudo:0.6>"
    assert find_tags(text) == [NetworkTag("rurudo", 0.6, "lora")]
    assert strip_tags(text) == "white thighhighs <lora:bunny:0.7, on bed, pillow,  "


def test_strip_tags_separates_words() -> None:
    assert strip_tags("cat<lora:x:1>dog") == "cat dog"
    assert strip_tags("cat<lora:x:1>dog", "") == "catdog"
    assert strip_tags("no tags here") == "no tags here"


def test_parse_lora_tags_weights() -> None:
    text = "<lora:ink_v1:0.6> <LORA:Other:1.2:0.5> <lyco:x:.5> <lora:noweight> <hypernet:h:1>"
    text += " <lora:ink_v1:0.9>"
    # the last weight of a name wins; a tag without one counts 1.0; a hypernetwork is not a LoRA
    assert parse_lora_tags(text) == {"ink_v1": 0.9, "Other": 1.2, "x": 0.5, "noweight": 1.0}
    assert parse_lora_tags(None) == {} and parse_lora_tags("plain") == {}


def test_mentions_tags_sees_cut_off_openings() -> None:
    assert mentions_tags("You'll notice that my prompt includes <lyco:.")
    assert mentions_tags("Settings: < lora: nurse_uniform: 0.7 :1,0,0")
    assert mentions_tags("photo of fish <lora-underwater-0.8>")
    assert not mentions_tags("a <b>bold</b> claim") and not mentions_tags("<lorax is a tree>")


PROMPT = "castle, <hypernet:hypx:1>, <locon:locy:0.5>, < LoRA : lorz : 0.7 >, <lyco:lycw:1:0.5>, night"


def test_every_reader_removes_the_same_tags() -> None:
    names = ("hypx", "locy", "lorz", "lycw")
    assert clean_prompt(PROMPT) == "castle, night"
    assert "night" in example_prompt_text(PROMPT) and not any(n in example_prompt_text(PROMPT) for n in names)
    doc = document_text({"title": "Castle", "example_prompts": [PROMPT]})
    assert "night" in doc and not any(n in doc for n in names)
    card = AdapterCard(
        adapter_id="x:1@1",
        source="x",
        model_id="1",
        version_id="1",
        title="Castle",
        type="LORA",
        description=f"A castle at night, drawn in a gloomy style. Use it like {PROMPT}.",
    )
    assert refine_extractive(card).description == "Castle: A castle at night, drawn in a gloomy style."
