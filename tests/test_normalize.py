"""Normalization of every era into AdapterCard (hand-written items + ../shared/data when present)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from build_fixtures import SHA, hf_record, model_2023, model_2025, version_2025

from stylus_docs.errors import SkipRecord
from stylus_docs.normalize import civitai, huggingface
from stylus_docs.normalize.license import normalize_commercial_use
from stylus_docs.normalize.lora import parse_lora_tags
from stylus_docs.normalize.text import html_to_text, markdown_to_text
from stylus_docs.schemas import validation_errors

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Sell", ["Sell"]), ("None", []), (["Image", "Rent"], ["Image", "Rent"]),
     ("{Image,RentCivit}", ["Image", "RentCivit"]), ("{}", []), (None, [])],
)  # fmt: skip
def test_commercial_use_every_era(value: object, expected: list[str]) -> None:
    assert normalize_commercial_use(value) == expected


def test_html_to_text_keeps_paragraphs_drops_scripts() -> None:
    text = html_to_text("<h3>Title</h3><p>One <b>bold</b> line.<br>Next</p><script>evil()</script><p>Two</p>")
    assert text == "Title\n\nOne bold line.\nNext\n\nTwo"
    assert "evil" not in text


def test_markdown_card_body() -> None:
    text = markdown_to_text(
        "# Head\n\n![x](y.png)\n<Gallery />\n\nSome **bold** [link](http://x).\n```py\ncode()\n```"
    )
    assert "code()" not in text and "Gallery" not in text and "Some bold link." in text


def test_lora_tags() -> None:
    assert parse_lora_tags("a <lora:ink_v1:0.6>, b <LORA:Other:1.2:0.5> <lyco:x:.5> <lora:noweight>") == {
        "ink_v1": 0.6, "Other": 1.2, "x": 0.5, "noweight": 1.0}  # fmt: skip
    assert parse_lora_tags("<lora:bad:abc>") == {"bad": 1.0} or parse_lora_tags("<lora:bad:abc>") == {}


def test_2023_item() -> None:
    (card,) = civitai.normalize_model(model_2023(1, 11, "Ink"))
    assert card.adapter_id == "civitai:1@11" and card.source == "civitai"
    assert card.license_commercial == ["Sell"] and card.allow_no_credit is True
    assert card.sha256 == SHA.lower() and card.file_name == "inkdraw.safetensors"
    assert "token" not in card.download_url and "SECRET" not in card.download_url
    assert card.trigger_words == ["inkdraw"] and card.base_model == "SD 1.5"
    assert card.description == "Turns photos into ink drawings.\n\nUse weight 0.6-0.8."
    assert card.rating == 4.5 and card.likes == 5 and card.downloads == 90
    first = card.images[0]
    assert first.seed == 42 and first.cfg_scale == 7 and first.lora_weights == {"inkdraw": 0.7}
    assert first.nsfw_level == 1 and card.images[1].nsfw_level == 8
    assert card.published_at == "2023-03-01T10:00:00.000000Z" or card.published_at.startswith(
        "2023-03-01T10:00:00"
    )
    assert not validation_errors("adapter_card.v1.json", card.card_dict())


def test_2025_item_merged_with_version_detail() -> None:
    (card,) = civitai.normalize_model(model_2025(2, 22))
    assert card.license_commercial == ["Image", "RentCivit"] and card.type == "LoCon"
    assert card.rating is None  # 0/0 placeholders are not a rating
    assert card.published_at.endswith("Z")  # zone-less 2024/25 timestamps taken as UTC
    assert "alert" not in card.description
    assert card.images[0].prompt is None  # /models images have no meta since 2024
    merged = civitai.merge_detail(card, civitai.normalize_version(version_2025(2, 22)))
    prompts = [img.prompt for img in merged.images]
    assert "ppstorybook, a fox <lora:pp-storybook:0.9>" in prompts and "ppstorybook, a bear" in prompts
    assert len(merged.images) == 2  # the same CDN image (width=450 vs original=true) is not duplicated
    assert merged.images[0].width == 832  # size kept from the /models copy


def test_2024_array_and_malformed() -> None:
    (card,) = civitai.normalize_model(model_2025(3, 33, commercial=["Image", "Sell"]))
    assert card.license_commercial == ["Image", "Sell"]
    with pytest.raises(SkipRecord) as exc:
        civitai.normalize_model({"id": 5, "name": "x"})
    assert exc.value.reason == "missing_versions"
    with pytest.raises(SkipRecord):
        civitai.normalize_model([1, 2])


def test_hf_record() -> None:
    card = huggingface.normalize_hf(hf_record())
    assert card.adapter_id == "hf:someone/icon-kit-lora@abc123"
    # The Hub's base-model repo is mapped to Civitai's name, so one base-model filter covers both sources.
    assert card.trigger_words == ["Icon Kit"] and card.base_model == "Flux.1 D"
    assert card.images[0].url == "https://huggingface.co/someone/icon-kit-lora/resolve/abc123/images/1.png"
    assert card.images[0].prompt == "Icon Kit, a yellow jar"
    assert card.file_name == "icon-kit.safetensors"
    assert "Flat icon illustrations" in card.description and "load_lora_weights" not in card.description
    other = hf_record()
    other["card"] = other["card"].replace("black-forest-labs/FLUX.1-dev", "someone/custom-base")
    assert huggingface.normalize_hf(other).base_model == "someone/custom-base"  # unknown repos kept as is
    bad = hf_record()
    bad["card"] = "---\nwidget: [unclosed\n---\nbody"
    with pytest.raises(SkipRecord) as exc:
        huggingface.normalize_hf(bad)
    assert exc.value.reason == "bad_card_yaml"


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data absent")
def test_shared_data_every_era() -> None:
    n = 0
    with gzip.open(SHARED / "civitai-2023" / "lora_normal.dev.jsonl.gz", "rt") as handle:
        for i, line in enumerate(handle):
            if i >= 300:
                break
            for card in civitai.normalize_model(json.loads(line)):
                assert not validation_errors("adapter_card.v1.json", card.card_dict()), card.adapter_id
                n += 1
    assert n >= 300
    model = json.loads((SHARED / "civitai-2025" / "civitai_api_model_by_modelId.json").read_text())
    (card,) = civitai.normalize_model(model)
    assert card.base_model == "Flux.1 D" and len(card.sha256) == 64 and card.license_commercial
    detail = civitai.normalize_version(json.loads((SHARED / "civitai-2025" / "version.json").read_text()))
    assert detail.adapter_id == "civitai:1117241@1255556" and detail.images[0].prompt
    info = civitai.normalize_version(
        json.loads((SHARED / "civitai-2025" / "choke_hold_rnc_ilxl.civitai.info.json").read_text())
    )
    assert info.nsfw is True and info.trigger_words == ["choke hold \\(rnc\\)"]
    multi = civitai.normalize_model(json.loads((SHARED / "civitai-2025" / "model_1580878.json").read_text()))
    assert len(multi) == 2 and all(c.nsfw_level == 7 or c.nsfw_level for c in multi)
    for path in sorted((SHARED / "hf-cards").glob("*.md")):
        repo = path.name.split(".README")[0].replace("_", "/", 1)
        card = huggingface.normalize_hf({"item": {"id": repo, "sha": "main"}, "card": path.read_text()})
        assert card.base_model and card.description
