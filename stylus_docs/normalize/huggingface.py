"""Hugging Face LoRA repos (listing item + README card) → :class:`~stylus_docs.records.AdapterCard`.

The raw record is ``{"item": <listing item>, "card": <README text or null>, "card_error": ...}``
(crawl snapshot format). The card's YAML front matter gives ``base_model``, ``instance_prompt``
(trigger words), ``widget`` (example prompts with image URLs), ``tags`` and ``license``; the body
becomes the description.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import quote

import yaml

from stylus_docs.errors import SkipRecord
from stylus_docs.normalize.base_models import family
from stylus_docs.normalize.civitai import iso_utc, safe_file_name, source_host
from stylus_docs.normalize.lora import parse_lora_tags
from stylus_docs.normalize.text import markdown_to_text
from stylus_docs.records import AdapterCard, ExampleImage
from stylus_docs.secrets import strip_token_params

HF_BASE = "https://huggingface.co"
_FRONT = re.compile(r"^\s*---\s*\n(.*?)\n---\s*(?:\n|$)", re.S)
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: Tags the Hub uses for adult content.
_NSFW_TAGS = {"not-for-all-audiences", "nsfw"}


def split_front_matter(card: str | None) -> tuple[dict[str, Any], str]:
    """Split a README into (front-matter mapping, body). Malformed YAML raises SkipRecord."""
    if not card:
        return {}, ""
    match = _FRONT.match(card)
    if not match:
        return {}, card
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise SkipRecord("bad_card_yaml", str(exc).splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise SkipRecord("bad_card_yaml", "front matter is not a mapping")
    return data, card[match.end() :]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None and str(v).strip()]
    return [str(value)]


#: Hub base-model repos → the base-model names Civitai uses, so one ``--base-model "SD 1.5"`` filter
#: covers adapters of both sources. Unknown repos keep their repo id.
HUB_BASE_MODELS: dict[str, str] = {
    "compvis/stable-diffusion-v1-4": "SD 1.4",
    "runwayml/stable-diffusion-v1-5": "SD 1.5",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "SD 1.5",
    "stabilityai/stable-diffusion-2-1": "SD 2.1 768",
    "stabilityai/stable-diffusion-2-1-base": "SD 2.1",
    "stabilityai/stable-diffusion-xl-base-1.0": "SDXL 1.0",
    "stabilityai/stable-diffusion-3-medium-diffusers": "SD 3",
    "stabilityai/stable-diffusion-3.5-large": "SD 3.5 Large",
    "stabilityai/stable-diffusion-3.5-medium": "SD 3.5 Medium",
    "black-forest-labs/flux.1-dev": "Flux.1 D",
    "black-forest-labs/flux.1-schnell": "Flux.1 S",
}


def _base_model(front: dict[str, Any], tags: list[str]) -> str | None:
    repo: str | None = None
    bases = _as_list(front.get("base_model"))
    if bases:
        repo = bases[0].strip()
    else:
        for prefix in ("base_model:adapter:", "base_model:"):
            for tag in tags:
                if tag.startswith(prefix) and ":" not in tag[len(prefix) :]:
                    repo = tag[len(prefix) :]
                    break
            if repo:
                break
    if repo is None:
        return None
    return HUB_BASE_MODELS.get(repo.lower(), repo)


def _widget_images(front: dict[str, Any], repo: str, rev: str, adapter_id: str) -> list[ExampleImage]:
    out: list[ExampleImage] = []
    widget = front.get("widget")
    if not isinstance(widget, list):
        return out
    for entry in widget:
        if not isinstance(entry, dict):
            continue
        prompt = entry.get("text")
        prompt = str(prompt).strip() if prompt else None
        output = entry.get("output") if isinstance(entry.get("output"), dict) else {}
        url = output.get("url")
        if url:
            url = str(url)
            if not url.startswith(("http://", "https://")):
                url = f"{HF_BASE}/{repo}/resolve/{rev}/{quote(url.lstrip('/'))}"
            url = strip_token_params(url)
        if not (prompt or url):
            continue
        params = entry.get("parameters") if isinstance(entry.get("parameters"), dict) else {}
        negative = params.get("negative_prompt")
        key = hashlib.sha1(f"{url}|{prompt}".encode()).hexdigest()[:16]
        out.append(
            ExampleImage(
                adapter_id=adapter_id,
                image_id=key,
                url=url,
                prompt=prompt,
                negative_prompt=str(negative) if negative else None,
                lora_weights=parse_lora_tags(prompt),
            )
        )
    return out


def _weights_file(item: dict[str, Any]) -> dict[str, Any] | None:
    siblings = [s for s in item.get("siblings") or [] if isinstance(s, dict)]
    files = [s for s in siblings if str(s.get("rfilename", "")).lower().endswith(".safetensors")]
    if not files:
        return None
    for preferred in ("pytorch_lora_weights.safetensors", "adapter_model.safetensors"):
        for f in files:
            if f["rfilename"].rsplit("/", 1)[-1] == preferred:
                return f
    # Prefer top-level files (sub-folders usually hold checkpoints of intermediate steps).
    files.sort(key=lambda f: (f["rfilename"].count("/"), f["rfilename"]))
    return files[0]


def normalize_hf(record: Any) -> AdapterCard:
    """One HF crawl record ``{"item", "card", "card_error"}`` → a card.

    Raises:
        SkipRecord: the record lacks a valid repo id or the card's front matter is malformed.
    """
    if not isinstance(record, dict):
        raise SkipRecord("not_an_object", type(record).__name__)
    item = record.get("item") if isinstance(record.get("item"), dict) else None
    if item is None:
        raise SkipRecord("missing_item", "HF record without 'item'")
    repo = str(item.get("id") or item.get("modelId") or "")
    if not _REPO.match(repo):
        raise SkipRecord("missing_id", f"bad HF repo id {repo!r}")
    rev = str(item.get("sha") or "main")
    adapter_id = f"hf:{repo}@{rev}"
    card_text = record.get("card") if isinstance(record.get("card"), str) else None
    front, body = split_front_matter(card_text)
    if not front and isinstance(item.get("cardData"), dict):
        front = item["cardData"]
    tags = list(dict.fromkeys(_as_list(item.get("tags")) + _as_list(front.get("tags"))))
    license_id = front.get("license")
    if license_id and f"license:{license_id}" not in tags:
        tags.append(f"license:{license_id}")
    triggers = [t.strip() for t in _as_list(front.get("instance_prompt")) if t.strip()]
    owner, name = repo.split("/", 1)
    chosen = _weights_file(item)
    base_model = _base_model(front, tags)
    card = AdapterCard(
        adapter_id=adapter_id,
        source="hf",
        model_id=repo,
        version_id=rev,
        title=str(front.get("model_name") or name).strip(),
        type="LORA",
        version_name=rev[:12],
        base_model=base_model,
        base_model_family=family(base_model),
        tags=tags,
        trigger_words=triggers,
        description=markdown_to_text(body),
        nsfw=bool(_NSFW_TAGS & {t.lower() for t in tags}),
        creator=str(item.get("author") or owner),
        downloads=item.get("downloads") if isinstance(item.get("downloads"), int) else None,
        likes=item.get("likes") if isinstance(item.get("likes"), int) else None,
        published_at=iso_utc(item.get("createdAt")) or iso_utc(item.get("lastModified")),
        card_url=f"{HF_BASE}/{repo}",
        source_host=source_host(record.get("_host")) or source_host(item.get("_host")),
    )
    if chosen is not None:
        path = str(chosen["rfilename"])
        card.file_name = safe_file_name(path)
        card.file_format = "SafeTensor"
        size = chosen.get("size") or (chosen.get("lfs") or {}).get("size")
        card.file_size_kb = float(size) / 1024 if isinstance(size, int | float) else None
        sha = str((chosen.get("lfs") or {}).get("sha256") or "")
        card.sha256 = sha.lower() if _HEX64.match(sha) else None
        card.download_url = f"{HF_BASE}/{repo}/resolve/{rev}/{quote(path)}"
    elif "siblings" not in item and "safetensors" in {t.lower() for t in tags}:
        # Listing fetched without file lists: the Hub's tag still says the weights are safetensors.
        card.file_format = "SafeTensor"
    card.images = _widget_images(front, repo, rev, adapter_id)
    return card
