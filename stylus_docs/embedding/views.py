"""The text views of an adapter: what is embedded for it, and at which weight.

Three views, combined by :func:`stylus_docs.embedding.cards.embed_views`:

* the **template** view — the Stylus paper's template over title, refined description and
  tags, plus trigger words, which carry much of the signal of real prompts;
* the **name** view — title, tags and trigger words only: small sentence encoders average a long
  description into a vague vector, the short view keeps what the adapter *is*;
* the **examples** view — the creator's first example prompts with their network tags removed: what
  people type to use the adapter. Added at :data:`EXAMPLES_WEIGHT`; cards without prompts have two views.

Every text here is part of the embedder id through :data:`TEMPLATE_VERSION`: a change to any of them
must bump it, so that incremental builds re-embed instead of mixing vectors of two definitions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stylus_docs.normalize.lora import strip_tags
from stylus_docs.records import AdapterCard

#: Version of the views; part of the embedder id, so a change re-embeds everything.
#: v2: an adapter's vector is the normalized sum of two views (template + name).
#: v3: plus a third view, the adapter's own example prompts.
TEMPLATE_VERSION = "v3"
TEMPLATE = (
    "Convert Stable Diffusion finetuned adapter description into an embedding for search: "
    "Title: {title}; Description: {description}; Tags: {tags}; Trigger words: {trigger_words};"
)
#: The second, short view: what the adapter is called and tagged with.
NAME_TEMPLATE = "{title}. {tags}. {trigger_words}."
#: The third view: the creator's example prompts (network tags removed), at most this many of them; the
#: encoder truncates long texts anyway (MiniLM: 256 word pieces), so later prompts would be cut off.
MAX_EXAMPLE_PROMPTS = 8
#: Weight of the example-prompt view against the (normalized) sum of the first two.
EXAMPLES_WEIGHT = 0.5
#: Tags that are bookkeeping, not content: left out of the views.
_HIDDEN_TAG_PREFIXES = ("license:", "region:")
_DOUBLE_COMMA = re.compile(r"\s*,\s*,")


def _tag_list(tags: Sequence[str]) -> str:
    return ", ".join(t for t in tags if not t.startswith(_HIDDEN_TAG_PREFIXES))


def card_text(title: str, description: str, tags: Sequence[str], trigger_words: Sequence[str]) -> str:
    """The template view of one adapter (paper's template plus trigger words)."""
    return TEMPLATE.format(
        title=title.strip(),
        description=" ".join(description.split()),
        tags=_tag_list(tags),
        trigger_words=", ".join(trigger_words),
    )


def name_text(title: str, tags: Sequence[str], trigger_words: Sequence[str]) -> str:
    """The name view of one adapter: title, tags and trigger words, without the description."""
    return NAME_TEMPLATE.format(
        title=title.strip(), tags=_tag_list(tags), trigger_words=", ".join(trigger_words)
    )


def example_prompt_text(prompt: str) -> str:
    """One example prompt as the examples view holds it: network tags removed, doubled commas closed.

    Tags are removed outright (not replaced by a space), as since v3; changing that changes the text of
    most views and needs a new :data:`TEMPLATE_VERSION`.
    """
    return _DOUBLE_COMMA.sub(",", strip_tags(prompt, "")).strip(" ,")


def examples_text(prompts: Sequence[str]) -> str:
    """The examples view of one adapter: its first example prompts, tags removed ("" when none)."""
    kept = [example_prompt_text(p) for p in prompts if p and p.strip()][:MAX_EXAMPLE_PROMPTS]
    return " \n".join(p for p in kept if p)


@dataclass(frozen=True, slots=True)
class AdapterViews:
    """The three texts embedded for one adapter.

    Args:
        template: :func:`card_text`.
        name: :func:`name_text`.
        examples: :func:`examples_text` ("" when the adapter has no example prompts).
    """

    template: str
    name: str
    examples: str

    @classmethod
    def of(
        cls,
        title: str,
        description: str,
        tags: Sequence[str],
        trigger_words: Sequence[str],
        example_prompts: Sequence[str] = (),
    ) -> AdapterViews:
        """The views of an adapter given its fields (``description``: the refined one)."""
        return cls(
            template=card_text(title, description, tags, trigger_words),
            name=name_text(title, tags, trigger_words),
            examples=examples_text(example_prompts),
        )

    @classmethod
    def of_card(cls, card: AdapterCard) -> AdapterViews:
        """The views of a card in the build (after refinement)."""
        return cls.of(
            card.title, card.refined_description, card.tags, card.trigger_words, card.example_prompts
        )

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> AdapterViews:
        """The views of an adapters-table row (``title``, ``refined_description``, ``tags``,
        ``trigger_words``, ``example_prompts``)."""
        return cls.of(
            row["title"],
            row.get("refined_description") or "",
            row.get("tags") or [],
            row.get("trigger_words") or [],
            row.get("example_prompts") or [],
        )


def views_manifest() -> dict[str, Any]:
    """What the manifest's ``embedder`` entry records about the views (beside the version)."""
    return {
        "template": TEMPLATE,
        "name_template": NAME_TEMPLATE,  # second view, summed with the first
        # third view: the example prompts, added at this weight to the normalized sum of the first two
        "examples": {"max_prompts": MAX_EXAMPLE_PROMPTS, "weight": EXAMPLES_WEIGHT},
    }
