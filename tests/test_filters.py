"""Filter rules: each drop has one documented reason."""

from __future__ import annotations

from build_fixtures import model_2023, model_2025

from stylus_docs.filters import FilterConfig, apply_filters, filter_images
from stylus_docs.normalize import civitai


def _card(**kw: object):
    (card,) = civitai.normalize_model(model_2023(1, 11, "Ink", **kw))
    return card


def test_keeps_a_good_card_and_drops_nsfw_images() -> None:
    card, cfg = _card(), FilterConfig()
    assert filter_images(card, cfg) == {"nsfw": 1}
    assert apply_filters(card, cfg) is None
    assert len(card.images) == 1 and card.nsfw_level == 1


def test_reasons() -> None:
    cfg = FilterConfig()
    nsfw = _card(nsfw=True)
    filter_images(nsfw, cfg)
    assert apply_filters(nsfw, cfg) == "nsfw"
    assert apply_filters(nsfw, FilterConfig(include_nsfw=True)) is None
    pickle = _card(file_name="model.ckpt")
    assert apply_filters(pickle, cfg) == "no_safetensors"
    slider = _card()
    slider.title = "Age Slider"
    assert apply_filters(slider, cfg) == "slider"
    assert apply_filters(_card(), FilterConfig(blacklist=frozenset({"civitai:1"}))) == "blacklisted"
    assert apply_filters(_card(), FilterConfig(base_models=("SDXL 1.0",))) == "base_model_not_allowed"
    assert apply_filters(_card(), FilterConfig(types=("DoRA",))) == "type_not_allowed"
    few = _card()
    filter_images(few, cfg)
    assert apply_filters(few, FilterConfig(min_images=2)) == "too_few_images"
    (level,) = civitai.normalize_model(model_2025(2, 22))
    level.nsfw_level = 7  # R content in the API's level
    assert apply_filters(level, cfg) == "nsfw"
    assert apply_filters(level, FilterConfig(max_nsfw_level=4)) is None
