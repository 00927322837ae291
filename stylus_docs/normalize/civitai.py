"""Civitai API items of every era → :class:`~stylus_docs.records.AdapterCard` (one per model version).

Handles the eras listed in API-NOTES.md §1.9:

* 2023 ``/models`` items: ``allowCommercialUse`` a string, images with ``nsfw`` strings and ``meta``;
* 2024–25 ``/models`` items: arrays, ``nsfwLevel`` bitmasks, images **without** ``meta``;
* ``/model-versions/{id}`` responses (flat version with a ``model`` sub-object, images with ``meta``)
  plus ``/images`` items the crawler attached under ``_images`` (string ``nsfwLevel``, ``meta`` maybe
  wrapped as ``{"id":…, "meta":{…}}``).

:func:`merge_detail` folds a version detail into the card made from the ``/models`` item, which is how
2025 cards get their prompts.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from stylus_docs.errors import SkipRecord
from stylus_docs.normalize.base_models import family
from stylus_docs.normalize.license import as_bool, normalize_commercial_use
from stylus_docs.normalize.lora import parse_lora_tags
from stylus_docs.normalize.text import html_to_text
from stylus_docs.records import AdapterCard, ExampleImage
from stylus_docs.secrets import strip_token_params

#: Legacy string NSFW levels → bit flags (API-NOTES §1.8).
NSFW_STRING_LEVELS = {"none": 1, "soft": 2, "mature": 4, "x": 8, "xxx": 16, "blocked": 32}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
#: Bounds on ``meta.civitaiResources`` kept per image (the field is free-form creator metadata).
MAX_RESOURCES = 64
_MAX_RESOURCE_TEXT = 300
_INT64_MAX = 2**63 - 1


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number)


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def nsfw_level(value: Any) -> int:
    """An NSFW level of any era as a bitmask (0 when absent or unknown)."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str):
        if value.strip().isdigit():
            return int(value.strip())
        return NSFW_STRING_LEVELS.get(value.strip().lower(), 0)
    return 0


def iso_utc(value: Any) -> str | None:
    """An API timestamp as ISO 8601 in UTC (``...Z``); timestamps without a zone are taken as UTC."""
    text = _str(value)
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat().replace("+00:00", "Z")


def source_host(value: Any) -> str | None:
    """An API base URL from a record's ``_host`` as ``scheme://host[:port][/path]``, or None.

    Credentials, query and fragment are dropped (a token must never reach a release), and anything that
    is not an http(s) URL is ignored.
    """
    if not isinstance(value, str) or len(value) > 2048:
        return None
    try:
        parts = urlsplit(value.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    netloc = f"{host}:{port}" if port else host
    out = f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return out


def _site_url(host: str | None) -> str:
    """The Civitai web site a card links to: the red host for records crawled there, else civitai.com."""
    if host:
        name = urlsplit(host).hostname or ""
        if name == "civitai.red" or name.endswith(".civitai.red"):
            return "https://civitai.red"
    return "https://civitai.com"


def _resource_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a string")
    text = value.strip()[:_MAX_RESOURCE_TEXT]
    text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError (a ValueError)
    return text or None


def civitai_resources(meta: dict[str, Any]) -> list[dict[str, Any]] | None:
    """``meta.civitaiResources`` as ``[{model_version_id, type, weight, name}]`` (None when there are none).

    The resources an image was really generated with (API-NOTES §1.6/§1.13). Entries that are not
    objects, lack a usable positive ``modelVersionId`` (an integer, or a string of one), or carry text
    that is not a string or not valid Unicode are dropped; a weight that is not a finite number is
    dropped (the entry is kept with ``weight`` null). At most :data:`MAX_RESOURCES` entries.
    """
    raw = meta.get("civitaiResources")
    if not isinstance(raw, list):
        return None
    out: list[dict[str, Any]] = []
    for entry in raw:
        if len(out) >= MAX_RESOURCES:
            break
        if not isinstance(entry, dict):
            continue
        vid = entry.get("modelVersionId")
        if isinstance(vid, str) and vid.strip().isdigit():
            vid = int(vid.strip())
        if isinstance(vid, bool) or not isinstance(vid, int) or not 0 < vid <= _INT64_MAX:
            continue
        try:
            kind = _resource_text(entry.get("type"))
            name = _resource_text(entry.get("modelVersionName"))
        except ValueError:
            continue
        weight = _float(entry.get("weight"))
        out.append({"model_version_id": vid, "type": kind, "weight": weight, "name": name})
    return out or None


def safe_file_name(name: Any) -> str | None:
    """The base name of an API-provided file name (no directories, no traversal, no control chars)."""
    text = _str(name)
    if not text:
        return None
    base = posixpath.basename(unquote(text).replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable())
    return None if base in ("", ".", "..") else base


def _tags(value: Any) -> list[str]:
    out: dict[str, None] = {}
    for tag in value or []:
        name = tag.get("name") if isinstance(tag, dict) else tag
        text = _str(name)
        if text:
            out.setdefault(text, None)
    return list(out)


def _trigger_words(value: Any) -> list[str]:
    out: dict[str, None] = {}
    if isinstance(value, str):
        value = [value]
    for word in value or []:
        text = _str(word)
        if text:
            out.setdefault(text, None)
    return list(out)


def _image_key(url: str | None, image_id: Any) -> str:
    """A stable image id: the API id, else the CDN uuid segment, else a hash of the URL."""
    if image_id is not None and str(image_id).strip():
        return str(image_id)
    if url:
        parts = [p for p in urlsplit(url).path.split("/") if p]
        if len(parts) >= 2 and len(parts[1]) >= 32:
            return parts[1]
        return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
    return ""


def parse_image(raw: dict[str, Any], adapter_id: str) -> ExampleImage | None:
    """One image object of any era (``/models``, ``/model-versions``, ``/images``)."""
    if not isinstance(raw, dict):
        return None
    url = _str(raw.get("url"))
    if url:
        url = strip_token_params(url)
    meta = raw.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("meta"), dict) and "prompt" not in meta:
        meta = meta["meta"]  # /images legacy wrapping {id, meta: {...}}
    if not isinstance(meta, dict):
        meta = {}
    key = _image_key(url, raw.get("id"))
    if not key:
        return None
    level = nsfw_level(raw.get("nsfwLevel"))
    if not level:
        level = nsfw_level(raw.get("nsfw")) or nsfw_level(raw.get("browsingLevel"))
    width, height = _int(raw.get("width")), _int(raw.get("height"))
    size = _SIZE.match(str(meta.get("Size") or ""))
    if size and not (width and height):
        width, height = int(size.group(1)), int(size.group(2))
    prompt = _str(meta.get("prompt"))
    weights = parse_lora_tags(prompt)
    if not weights:
        for res in meta.get("resources") or []:
            if isinstance(res, dict) and str(res.get("type", "")).lower() in ("lora", "lycoris", "locon"):
                weight = _float(res.get("weight"))
                if res.get("name") and weight is not None:
                    weights[str(res["name"])] = weight
    return ExampleImage(
        adapter_id=adapter_id,
        image_id=key,
        origin="example",
        url=url,
        prompt=prompt,
        negative_prompt=_str(meta.get("negativePrompt")),
        seed=_int(meta.get("seed")),
        steps=_int(meta.get("steps")),
        sampler=_str(meta.get("sampler")),
        cfg_scale=_float(meta.get("cfgScale")),
        width=width,
        height=height,
        nsfw_level=level or None,
        lora_weights=weights,
        scheduler=_str(meta.get("scheduler")),
        civitai_resources=civitai_resources(meta),
    )


def _primary_safetensors(files: Any) -> dict[str, Any] | None:
    """The file to use: the primary one if it is a .safetensors, else the first .safetensors model file."""
    candidates = [f for f in files or [] if isinstance(f, dict)]

    def is_st(f: dict[str, Any]) -> bool:
        name = str(f.get("name") or "").lower()
        fmt = str((f.get("metadata") or {}).get("format") or "")
        return name.endswith(".safetensors") or (fmt == "SafeTensor" and not name)

    for f in candidates:
        if f.get("primary") is True and is_st(f):
            return f
    for f in candidates:
        if is_st(f) and str(f.get("type") or "Model") in ("Model", "Pruned Model"):
            return f
    return None


def _file_fields(card: AdapterCard, files: Any, version_download: Any) -> None:
    chosen = _primary_safetensors(files)
    if chosen is None:
        return
    card.file_name = safe_file_name(chosen.get("name"))
    card.file_size_kb = _float(chosen.get("sizeKB"))
    card.file_format = _str((chosen.get("metadata") or {}).get("format")) or "SafeTensor"
    sha = str((chosen.get("hashes") or {}).get("SHA256") or "")
    card.sha256 = sha.lower() if _HEX64.match(sha) else None
    url = _str(chosen.get("downloadUrl")) or _str(version_download)
    card.download_url = strip_token_params(url) if url else None


def _images(raw_images: Any, adapter_id: str) -> list[ExampleImage]:
    out: list[ExampleImage] = []
    for raw in raw_images or []:
        img = parse_image(raw, adapter_id)
        if img is not None:
            out.append(img)
    return out


def _stats(card: AdapterCard, model_stats: Any, version_stats: Any) -> None:
    ms = model_stats if isinstance(model_stats, dict) else {}
    vs = version_stats if isinstance(version_stats, dict) else {}
    card.downloads = _int(vs.get("downloadCount"))
    if card.downloads is None:
        card.downloads = _int(ms.get("downloadCount"))
    card.likes = _int(vs.get("thumbsUpCount"))
    if card.likes is None:
        card.likes = _int(ms.get("thumbsUpCount"))
    if card.likes is None:
        card.likes = _int(ms.get("favoriteCount"))
    # 2024–25 responses carry rating 0 / ratingCount 0 placeholders: only a counted rating is real.
    for stats in (vs, ms):
        if (_int(stats.get("ratingCount")) or 0) > 0 and _float(stats.get("rating")) is not None:
            card.rating = _float(stats.get("rating"))
            break


def _version_card(model: dict[str, Any], version: dict[str, Any], model_text: str) -> AdapterCard:
    model_id = _int(model.get("id")) if model.get("id") is not None else _int(version.get("modelId"))
    version_id = _int(version.get("id"))
    if model_id is None or version_id is None:
        raise SkipRecord("missing_id", f"model {model.get('id')!r} version {version.get('id')!r}")
    adapter_id = f"civitai:{model_id}@{version_id}"
    name = _str(model.get("name"))
    if not name:
        raise SkipRecord("missing_title", adapter_id)
    version_text = (
        html_to_text(version.get("description")) if isinstance(version.get("description"), str) else ""
    )
    description = model_text
    if version_text and version_text not in description:
        description = f"{description}\n\n{version_text}" if description else version_text
    creator = model.get("creator") if isinstance(model.get("creator"), dict) else {}
    host = source_host(version.get("_host")) or source_host(model.get("_host"))
    base_model = _str(version.get("baseModel"))
    card = AdapterCard(
        adapter_id=adapter_id,
        source="civitai",
        model_id=str(model_id),
        version_id=str(version_id),
        title=name,
        type=_str(model.get("type")) or "Unknown",
        version_name=_str(version.get("name")),
        base_model=base_model,
        base_model_family=family(base_model),
        tags=_tags(model.get("tags")),
        trigger_words=_trigger_words(version.get("trainedWords")),
        description=description,
        nsfw=bool(as_bool(model.get("nsfw"))),
        nsfw_level=nsfw_level(version.get("nsfwLevel")) or nsfw_level(model.get("nsfwLevel")),
        creator=_str(creator.get("username")),
        license_commercial=normalize_commercial_use(model.get("allowCommercialUse")),
        allow_no_credit=as_bool(model.get("allowNoCredit")),
        allow_derivatives=as_bool(model.get("allowDerivatives")),
        published_at=iso_utc(version.get("publishedAt")) or iso_utc(version.get("createdAt")),
        card_url=f"{_site_url(host)}/models/{model_id}?modelVersionId={version_id}",
        source_host=host,
    )
    _stats(card, model.get("stats"), version.get("stats"))
    _file_fields(card, version.get("files"), version.get("downloadUrl"))
    card.images = _images(version.get("images"), adapter_id) + _images(version.get("_images"), adapter_id)
    card.images = dedupe_images(card.images)
    return card


def normalize_model(item: Any) -> list[AdapterCard]:
    """One ``/api/v1/models`` item (any era) → one card per model version.

    Versions that cannot be normalized are left out; the build uses :func:`normalize_model_entries`,
    which reports each of them.

    Raises:
        SkipRecord: the item is not a model object or has no versions list.
    """
    return [e for e in normalize_model_entries(item) if isinstance(e, AdapterCard)]


def normalize_model_entries(item: Any) -> list[AdapterCard | SkipRecord]:
    """One ``/api/v1/models`` item → one entry per element of ``modelVersions``, in order.

    Each entry is the version's card or the :class:`SkipRecord` saying why that version is unusable
    (``modelVersions: [null, 7, "s"]`` gives three skips), so every version is accounted for and a bad
    sibling never takes the good versions down with it.

    Raises:
        SkipRecord: the item is not a model object, has no id or no (non-empty) versions list.
    """
    if not isinstance(item, dict):
        raise SkipRecord("not_an_object", type(item).__name__)
    if item.get("id") is None:
        raise SkipRecord("missing_id", "model item without id")
    versions = item.get("modelVersions")
    if not isinstance(versions, list):
        raise SkipRecord("missing_versions", f"model {item.get('id')!r}")
    if not versions:
        raise SkipRecord("no_versions", f"model {item.get('id')!r}")
    text = html_to_text(item.get("description") if isinstance(item.get("description"), str) else None)
    out: list[AdapterCard | SkipRecord] = []
    for index, version in enumerate(versions):
        where = f"model {item.get('id')!r} modelVersions[{index}]"
        if not isinstance(version, dict):
            out.append(SkipRecord("malformed_version", f"{where} is {type(version).__name__}, not an object"))
            continue
        try:
            out.append(_version_card(item, version, text))
        except SkipRecord as exc:
            out.append(exc)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # Documented boundary: a version shape no era rule foresaw is one bad version.
            out.append(SkipRecord("malformed_version", f"{where}: {type(exc).__name__}: {exc}"))
    return out


def normalize_version(detail: Any) -> AdapterCard:
    """One ``/api/v1/model-versions/{id}`` response (with optional ``_images``) → a card.

    Used alone when no ``/models`` item names this version, and merged into the ``/models`` card
    otherwise (:func:`merge_detail`).
    """
    if not isinstance(detail, dict):
        raise SkipRecord("not_an_object", type(detail).__name__)
    model = dict(detail.get("model") or {})
    model.setdefault("id", detail.get("modelId"))
    if "creator" in detail:
        model.setdefault("creator", detail.get("creator"))
    return _version_card(model, detail, "")


def _dedupe_key(img: ExampleImage) -> str:
    # The same image appears with different URL transforms (width=450 / original=true) and with or
    # without an id across endpoints; the CDN uuid segment is what they share.
    return _image_key(img.url, None) if img.url else img.image_id


def dedupe_images(images: list[ExampleImage]) -> list[ExampleImage]:
    """Drop repeated images, keeping the richer copy (one with a prompt) at the first one's position.

    Fields missing from the kept copy (NSFW level, size, numeric id) are taken from the other copy.
    """
    order: dict[str, ExampleImage] = {}
    for img in images:
        key = _dedupe_key(img)
        old = order.get(key)
        if old is None:
            order[key] = img
            continue
        keep, other = (img, old) if (img.prompt and not old.prompt) else (old, img)
        keep.nsfw_level = keep.nsfw_level or other.nsfw_level
        keep.width = keep.width or other.width
        keep.height = keep.height or other.height
        keep.civitai_resources = keep.civitai_resources or other.civitai_resources
        if not keep.image_id.isdigit() and other.image_id.isdigit():
            keep.image_id = other.image_id
        order[key] = keep
    return list(order.values())


def merge_detail(card: AdapterCard, detail: AdapterCard) -> AdapterCard:
    """Fold a version-detail card into the card from the ``/models`` item (same adapter id).

    The detail's images carry ``meta`` (prompts, seeds) that 2024+ ``/models`` images lack; the
    ``/models`` card keeps title, tags, description and license fields. Missing scalars are filled in.
    """
    card.images = dedupe_images(list(detail.images) + card.images)
    for name in ("base_model", "version_name", "file_name", "file_size_kb", "file_format", "sha256",
                 "download_url", "published_at", "creator", "source_host"):  # fmt: skip
        if getattr(card, name) is None and getattr(detail, name) is not None:
            setattr(card, name, getattr(detail, name))
    card.base_model_family = family(card.base_model)
    if not card.trigger_words:
        card.trigger_words = detail.trigger_words
    if not card.nsfw_level:
        card.nsfw_level = detail.nsfw_level
    card.nsfw = card.nsfw or detail.nsfw
    if detail.description and detail.description not in card.description:
        card.description = f"{card.description}\n\n{detail.description}".strip()
    return card
