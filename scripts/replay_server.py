#!/usr/bin/env python3
"""Local replay server for the Civitai REST API v1 and the Hugging Face Hub API.

Serves a saved corpus (default ``data/sample``) on loopback with the real paging/filter semantics
of the public Civitai and Hugging Face APIs, plus seeded fault injection so crawlers can be tested
against 429/5xx/HTML/truncated/dropped responses without touching the network.

Endpoints
    GET /api/v1/models                          Civitai list (cursor paging, filters, page cap 429):
                                                sort (Highest Rated, Most Downloaded, Newest, Oldest, …),
                                                period (AllTime/Year/Month/Week/Day on lastVersionAt),
                                                allowCommercialUse (array overlap), allowNoCredit,
                                                allowDerivatives, allowDifferentLicense, nsfw, types,
                                                baseModels, tag, username, ids, query
    GET /api/v1/models/{id}                     one model
    GET /api/v1/model-versions/{id}             flat version (images with meta, ``air``)
    GET /api/v1/images?modelVersionId=…         image list (meta only with withMeta=true)
    GET /api/v1/enums                           {ModelType, ModelFileType, ActiveBaseModel, BaseModel,
                                                BaseModelType}
    GET /api/download/models/{versionId}        307 to ``/files/{versionId}/{fileId}/{name}`` (like the
                                                signed-storage redirect; selectors type/format/size/fp/
                                                fileId); ``/files/…`` (the "signed URL") needs no
                                                token and serves a small valid fake safetensors
                                                (Range → 206; the truncated fault cuts it mid-body)
    GET /api/models                             HF list (JSON array, ``Link: <…>; rel="next"``; full,
                                                cardData, expand)
    GET /api/models/{owner}/{name}              HF model info
    GET /{owner}/{name}/resolve/{rev}/{path}    README.md text or a PNG for image siblings
    GET /img/{path}                             PNG for a CDN image; map ``https://image.civitai.com/P``
                                                to ``{base}/img/P`` (same PNG as ``/image-proxy``)
    GET /image-proxy?url=<CDN URL>              PNG for any image URL
    GET /__stats[?detail=1][&reset=1]           request/fault/endpoint counters (never faulted, no auth);
                                                ``detail=1`` adds per-id counts (which versions, repos
                                                and downloads were requested)

Hugging Face answers carry ``RateLimit: "api";r=R;t=T`` and ``RateLimit-Policy: "fixed window";"api";
q=Q;w=W`` (bucket ``resolvers`` for resolve/raw files). Without ``--hf-rate-limit`` the public anonymous
quotas (500 / 3,000 per 300 s) are advertised but never enforced; with ``--hf-rate-limit N`` each bucket
answers 429 (same headers, r=0, plus ``Retry-After``) after N requests in a fixed window.

"Next day" (``--mutate FRACTION --mutate-seed S [--mutate-truth PATH]``): the corpus is changed at start,
deterministically for a seed: of the N models, n = max(1, round(FRACTION × N)) (FRACTION ≤ 0.25) get each
change, chosen without overlap — deleted models (absent from listings; /models/{id}, their versions and
downloads 404), changed descriptions, one replaced preview image in one version (listing, /model-versions
and /images agree), a new version put first (index 0), and n new models synthesised from existing ones
(fresh ids above the maximum, new title). Hugging Face likewise, n counted on its repos: n deleted, n
changed (new ``sha`` and ``lastModified``, README changed), n new. New content is dated one day after
the corpus's latest date. The truth (see :meth:`CorpusMutator.run`) is ``server.truth`` and is written to
PATH as JSON. FRACTION 0 serves the corpus unchanged (and writes an empty truth).

Two hosts (green civitai.com, red civitai.red): start two instances on two ports over the same
corpus — ``--host-kind red``
(default: everything, as before) and ``--host-kind green`` (SFW only: models with ``nsfw`` false whose
``nsfwLevel`` has the PG bit; only PG images anywhere; NSFW models, versions and downloads 404 even with
``nsfw=true``). With the same ``--mutate``/``--mutate-seed`` both serve the same "next day".

``--fake-weights`` rewrites every file's ``hashes`` (SHA256, AutoV2, AutoV1, CRC32, AutoV3; BLAKE3 dropped)
and ``sizeKB`` to those of the fake safetensors body the download endpoint serves, and points
``downloadUrl`` at this server, so a downloader's SHA-256 check passes. Without it the corpus's hashes are
served unchanged (and do not match the fake body).

``period`` windows end at the corpus clock (the latest version date served), not at the wall clock, so a
saved corpus keeps answering the same; ``--now ISO`` sets that reference time.

CLI:   python scripts/replay_server.py --port 0 [--data DIR] [--civitai-models FILE] [--era 2025]
       [--require-token TOKEN] [--fault-rate 0.1 --seed 7 --faults 429,5xx,html,truncated,drop]
       [--retry-after 1] [--latency-ms 50] [--host-kind green|red] [--mutate 0.01 --mutate-seed 7
       --mutate-truth truth.json] [--fake-weights] [--enums FILE] [--now ISO]
       [--hf-rate-limit N --hf-rate-window 300]
       prints one line ``READY http://127.0.0.1:PORT`` and serves until killed.
In-process:  server, base_url = start_server(data_dir=..., fault_rate=..., mutate=0.01, mutate_seed=7,
             truth_path=..., host_kind="green", fake_weights=True, hf_rate_limit=5, ...);
             server.truth; ...; server.shutdown()
"""

import argparse
import base64
import calendar
import copy
import gzip
import hashlib
import json
import math
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import zlib
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "data" / "sample"
# A real saved GET /api/v1/enums (see ../shared/data/README.md); used when present.
SHARED_ENUMS = ROOT.parent / "shared" / "data" / "civitai-2025" / "enums.json"
HOST_KINDS = ("red", "green")
FAULT_KINDS = ("429", "5xx", "html", "truncated", "drop")
NSFW_STRING_LEVEL = {"None": 1, "Soft": 2, "Mature": 4, "X": 8, "Blocked": 32}
LEVEL_STRING = {1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X", 32: "Blocked"}
CLOUDFLARE_HTML = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title></head><body>'
    "<h1>We're adjusting a few things, be back in a few minutes...</h1>"
    "<p>Checking if the site connection is secure. Ray ID: 7d1f00c0ffee0000</p></body></html>"
)
# After this many consecutive faults on the same path+query the next try is forced through, so a
# retrying client can never be starved even at fault rate 1.0.
MAX_CONSECUTIVE_FAULTS = 3


class ApiError(Exception):
    """An error response with a JSON body ``{"error": ...}``."""

    def __init__(self, status: int, error: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error
        self.headers = headers or {}


@dataclass
class Options:
    """Server configuration (CLI flags and ``start_server`` keyword arguments)."""

    data_dir: Path = DEFAULT_DATA
    civitai_models: Path | None = None
    era: int = 2025
    host: str = "127.0.0.1"
    port: int = 0
    require_token: str | None = None
    fault_rate: float = 0.0
    seed: int = 0
    faults: tuple[str, ...] = FAULT_KINDS
    retry_after: int = 1
    latency_ms: float = 0.0
    verbose: bool = False
    host_kind: str = "red"
    mutate: float | None = None
    mutate_seed: int = 0
    truth_path: Path | None = None
    fake_weights: bool = False
    enums: Path | None = None
    now: str | None = None
    hf_rate_limit: int | None = None
    hf_rate_window: float = 300.0


# ---------------------------------------------------------------------------------------------
# Corpus loading and indices


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a .jsonl or .jsonl.gz file of JSON objects."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh if line.strip()]


def image_level(img: dict[str, Any]) -> int:
    """NSFW bit level of an image in either era's shape (int nsfwLevel or legacy string)."""
    level = img.get("nsfwLevel")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        return NSFW_STRING_LEVEL.get(level, 1)
    return NSFW_STRING_LEVEL.get(str(img.get("nsfw", "None")), 1)


def is_sfw_model(item: dict[str, Any]) -> bool:
    """Shown without ``nsfw=true``: legacy flag off and (if present) the bitmask intersects PG."""
    if item.get("nsfw") is True:
        return False
    level = item.get("nsfwLevel")
    return not isinstance(level, int) or bool(level & 1)


def parse_time_ms(value: str | None) -> int:
    """ISO timestamp (with or without Z) → epoch milliseconds; 0 when missing/unparsable."""
    if not value:
        return 0
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def format_time_ms(ms: int) -> str:
    """Epoch ms → the cursor's timestamp form (``2026-09-13 14:37:43.239``)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def slug_username(name: str) -> str:
    """Civitai's username slug: first space → ``_``, drop non-word chars, lowercase."""
    return re.sub(r"[^A-Za-z0-9_]", "", name.replace(" ", "_", 1)).lower()


def air_for(base_model: str, model_type: str, model_id: int, version_id: int) -> str:
    """AIR urn as /model-versions returns it."""
    eco_map = {
        "SD 1": "sd1",
        "SD 2": "sd2",
        "SDXL": "sdxl",
        "Pony": "pony",
        "Flux.1": "flux1",
        "Illustrious": "illustrious",
        "SD 3": "sd3",
    }
    eco = next(
        (v for k, v in eco_map.items() if base_model.startswith(k)), re.sub(r"\W+", "", base_model.lower())
    )
    kind = {
        "LORA": "lora",
        "LoCon": "lycoris",
        "DoRA": "dora",
        "TextualInversion": "embedding",
        "Checkpoint": "checkpoint",
    }.get(model_type, model_type.lower())
    return f"urn:air:{eco}:{kind}:civitai:{model_id}@{version_id}"


def minimal_png(seed: int) -> bytes:
    """Fallback 16x16 PNG used when the corpus has no ``images/`` folder."""
    color = bytes([(seed * 67) % 256, (seed * 131) % 256, (seed * 29 + 80) % 256])
    raw = b"".join(b"\x00" + color * 16 for _ in range(16))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


SORT_NAMES = ("Highest Rated", "Most Downloaded", "Newest", "Oldest")
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")
TIME_SORTS = ("Newest", "Oldest")


@dataclass
class ModelEntry:
    """One Civitai model with precomputed sort keys and pre-serialized JSON variants."""

    item: dict[str, Any]
    sfw: bool
    name_lower: str
    user_slug: str
    tags_lower: frozenset[str]
    base_models: frozenset[str]
    thumbs: int
    downloads: int
    last_ms: int
    commercial: frozenset[str] = frozenset()
    licence: dict[str, bool | None] = field(default_factory=dict)
    json_all: str = ""
    json_sfw: str = ""


@dataclass
class Corpus:
    """Everything the handlers need, built once at startup (read-only afterwards)."""

    models: list[ModelEntry]
    by_id: dict[int, ModelEntry]
    # sort name → (list of ascending key tuples, entries in that order)
    orders: dict[str, tuple[list[tuple[int, ...]], list[ModelEntry]]]
    versions: dict[int, tuple[dict[str, Any], ModelEntry]]
    images_by_version: dict[int, list[dict[str, Any]]]
    images_by_model: dict[int, list[dict[str, Any]]]
    usernames: frozenset[str]
    hf_models: list[dict[str, Any]]
    hf_by_id: dict[str, dict[str, Any]]
    hf_cards: dict[str, str]
    pngs: list[bytes] = field(default_factory=list)
    green: bool = False
    # Reference "now" of ``period`` windows (epoch ms): --now, else the latest version date served.
    clock_ms: int = 0
    enums: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] | None = None


def sort_key(entry: ModelEntry, sort: str) -> tuple[int, ...]:
    """Ascending tuple whose order equals the API's sort (descending, except Oldest; ties by id)."""
    mid = int(entry.item["id"])
    if sort == "Most Downloaded":
        return (-entry.downloads, -entry.thumbs, -mid)
    if sort == "Newest":
        return (-entry.last_ms, -mid)
    if sort == "Oldest":
        return (entry.last_ms, mid)
    return (-entry.thumbs, -entry.downloads, -mid)


def cursor_for(key: tuple[int, ...], sort: str) -> str:
    """Opaque cursor text: the sort values joined with ``|`` (like the real API)."""
    if sort == "Newest":
        return f"{format_time_ms(-key[0])}|{-key[1]}"
    if sort == "Oldest":
        return f"{format_time_ms(key[0])}|{key[1]}"
    return "|".join(str(-k) for k in key)


def parse_cursor(cursor: str, sort: str) -> tuple[int, ...]:
    """Inverse of cursor_for; malformed input → 400."""
    parts = cursor.split("|")
    try:
        if sort in TIME_SORTS:
            if len(parts) != 2:
                raise ValueError("parts")
            dt = datetime.strptime(parts[0], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            ms, mid = int(round(dt.timestamp() * 1000)), int(parts[1])
            return (-ms, -mid) if sort == "Newest" else (ms, mid)
        if len(parts) != 3:
            raise ValueError("parts")
        return tuple(-int(p) for p in parts)
    except ValueError as exc:
        raise ApiError(400, {"code": "invalid_cursor", "message": f"Invalid cursor: {cursor!r}"}) from exc


def strip_meta(version: dict[str, Any]) -> dict[str, Any]:
    """Copy of a version whose images have no ``meta`` (2025-era /models shape)."""
    out = dict(version)
    out["images"] = [{k: v for k, v in img.items() if k != "meta"} for img in version.get("images") or []]
    return out


def render_item(
    item: dict[str, Any], era: int, sfw_images: bool, base_models: set[str] | None = None
) -> dict[str, Any]:
    """The /models item as served: meta stripped in 2025 mode, NSFW images dropped, versions trimmed."""
    versions = item.get("modelVersions") or []
    if base_models:
        versions = [v for v in versions if v.get("baseModel") in base_models]
    out_versions = []
    for v in versions:
        nv = strip_meta(v) if era == 2025 else dict(v)
        if sfw_images:
            nv["images"] = [img for img in nv.get("images") or [] if image_level(img) & 1]
        out_versions.append(nv)
    out = dict(item)
    out["modelVersions"] = out_versions
    return out


def derive_images(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Build an images.jsonl-like list from images embedded in /models items (2023 corpora)."""
    out = []
    synthetic = 1
    for item in items:
        for v in item.get("modelVersions") or []:
            for img in v.get("images") or []:
                img_id = img.get("id")
                if img_id is None:
                    img_id = synthetic  # 2025 embedded images may lack ids
                    synthetic += 1
                out.append(
                    {
                        "id": img_id,
                        "modelId": item["id"],
                        "modelVersionId": v["id"],
                        "url": img.get("url"),
                        "width": img.get("width"),
                        "height": img.get("height"),
                        "hash": img.get("hash"),
                        "nsfwLevel": image_level(img),
                        "createdAt": v.get("createdAt"),
                        "postId": None,
                        "username": (item.get("creator") or {}).get("username"),
                        "meta": img.get("meta"),
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------
# Licence fields and time windows

COMMERCIAL_VALUES = ("None", "Image", "RentCivit", "Rent", "Sell")
LICENCE_FLAGS = ("allowNoCredit", "allowDerivatives", "allowDifferentLicense")


def commercial_set(value: Any) -> frozenset[str]:
    """``allowCommercialUse`` of any era (string, array, ``{A,B}`` literal) as a set; ``"None"`` → empty."""
    if isinstance(value, str):
        text = value.strip()
        parts = text[1:-1].split(",") if text.startswith("{") and text.endswith("}") else [text]
    elif isinstance(value, list | tuple):
        parts = [str(v) for v in value]
    else:
        return frozenset()
    cleaned = (p.strip().strip('"') for p in parts)
    return frozenset(p for p in cleaned if p and p != "None")


def licence_flag(value: Any) -> bool | None:
    """A licence boolean as stored (bool, or a ``"true"``/``"false"`` string); None when absent."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def iso_ms(ms: int) -> str:
    """Epoch ms → the API's ISO form (``2026-09-13T14:37:43.239Z``)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def period_start(now_ms: int, period: str) -> int | None:
    """Start (epoch ms) of a ``period`` window ending at ``now_ms``; None for AllTime.

    Day and Week are 24 h and 7 × 24 h; Month and Year are calendar steps (the site uses dayjs'
    ``subtract(1, 'month'|'year')``), the day clamped to the target month's length.
    """
    if period == "AllTime":
        return None
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    if period == "Day":
        start = now - timedelta(days=1)
    elif period == "Week":
        start = now - timedelta(days=7)
    else:
        months = 1 if period == "Month" else 12
        year, month0 = divmod(now.year * 12 + now.month - 1 - months, 12)
        day = min(now.day, calendar.monthrange(year, month0 + 1)[1])
        start = now.replace(year=year, month=month0 + 1, day=day)
    return int(start.timestamp() * 1000)


def version_times(item: dict[str, Any]) -> list[int]:
    """Every dated field of an item's versions, as epoch ms (0s dropped)."""
    out = []
    for v in item.get("modelVersions") or []:
        for key in ("publishedAt", "createdAt", "updatedAt"):
            ms = parse_time_ms(v.get(key))
            if ms:
                out.append(ms)
    return out


# ---------------------------------------------------------------------------------------------
# "Next day" mutation (--mutate)

MAX_MUTATE_FRACTION = 0.25  # four disjoint kinds of change to existing models
DAY_MS = 86_400_000
FALLBACK_CLOCK = "2026-01-01T00:00:00Z"  # corpus without any dates
DESCRIPTION_UPDATES = (
    "Retrained on a cleaner dataset; try a weight of 0.6 with realistic checkpoints.",
    "Fixed colour bleeding at high weights and added a second trigger word.",
    "New showcase images; works well with hires fix at 1.5x.",
    "Merged the two earlier variants into one file; the old trigger still works.",
)
README_UPDATES = (
    "retrained for more steps; sharper details.",
    "new example images in the gallery.",
    "lowered the recommended LoRA scale to 0.8.",
)


def swap_image_url(url: Any, uuid: str, image_id: int) -> Any:
    """The CDN URL of a replacement image: new uuid and file name, same account and transform."""
    if not isinstance(url, str):
        return url
    parts = url.split("/")
    # https://image.civitai.com/<account>/<uuid>/<transform>/<name>.<ext>
    if len(parts) >= 6 and parts[0] in ("http:", "https:"):
        ext = parts[-1].rpartition(".")[2] if "." in parts[-1] else "jpeg"
        parts[4] = uuid
        parts[-1] = f"{image_id}.{ext}"
        return "/".join(parts)
    return f"https://image.civitai.com/replay/{uuid}/original=true/{image_id}.jpeg"


def fresh_hashes(key: str, template: dict[str, Any]) -> dict[str, str]:
    """Hash values for a synthesised file, with the template's keys (values derived from ``key``)."""
    sha = hashlib.sha256(key.encode()).hexdigest().upper()
    values = {
        "AutoV1": hashlib.sha256(b"autov1:" + key.encode()).hexdigest()[:8].upper(),
        "AutoV2": sha[:10],
        "AutoV3": hashlib.sha256(b"autov3:" + key.encode()).hexdigest()[:12].upper(),
        "SHA256": sha,
        "CRC32": f"{zlib.crc32(key.encode()) & 0xFFFFFFFF:08X}",
        "BLAKE3": hashlib.blake2s(key.encode()).hexdigest().upper(),
    }
    return {k: values.get(k, sha) for k in template}


def healthy(item: dict[str, Any]) -> bool:
    """A model whose newest version can serve as a template (published, has a file, not archived)."""
    versions = item.get("modelVersions") or []
    return bool(versions) and not item.get("mode") and bool(versions[0].get("files"))


class CorpusMutator:
    """The "next day" of a corpus, deterministic for (corpus, fraction, seed).

    Args:
        fraction: Share of the models (and of the Hugging Face repos) given each kind of change,
            0–0.25; at least one of each when > 0 and the corpus is not empty.
        seed: Seed of every choice and every synthesised id, name, hash and URL.
    """

    def __init__(self, fraction: float, seed: int) -> None:
        if not 0 <= fraction <= MAX_MUTATE_FRACTION:
            raise ValueError(f"mutate fraction must be within 0..{MAX_MUTATE_FRACTION}, not {fraction}")
        self.fraction = fraction
        self.seed = seed
        self.rng = random.Random(f"replay-mutate:{seed}")
        self.next_model = self.next_version = self.next_file = self.next_image = 1
        self.clock = self.hf_clock = 0
        self.ticks = 0

    def count(self, total: int) -> int:
        """How many of ``total`` get one kind of change."""
        if self.fraction <= 0 or total <= 0:
            return 0
        return max(1, round(self.fraction * total))

    def uuid(self) -> str:
        bits = self.rng.getrandbits(128)
        h = f"{bits:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def stamp(self) -> int:
        """Next timestamp of the new day: minutes apart, in creation order."""
        self.ticks += 1
        return self.clock + self.ticks * 60_000 + self.ticks % 1000

    def take(self, name: str) -> int:
        value = getattr(self, name)
        setattr(self, name, value + 1)
        return value

    def run(
        self,
        items: list[dict[str, Any]],
        images: list[dict[str, Any]],
        hf_models: list[dict[str, Any]],
        hf_cards: dict[str, str],
    ) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, str], dict[str, Any]
    ]:
        """Return ``(items, images, hf_models, hf_cards, truth)``; the inputs are not modified.

        ``truth`` (every list sorted)::

            {"seed": S, "fraction": F,
             "new_models": [model id], "new_model_versions": [{"model_id", "version_id"}],
             "new_versions": [{"model_id", "version_id"}],          # put first (index 0)
             "changed_descriptions": [model id],
             "changed_images": [{"model_id", "version_id", "image_id", "url"}],  # the new image
             "deleted_models": [model id], "deleted_versions": [version id of the deleted models],
             "hf_changed": [repo id], "hf_deleted": [repo id], "hf_new": [repo id]}
        """
        truth: dict[str, Any] = {"seed": self.seed, "fraction": self.fraction}
        items, images = self.mutate_civitai(items, images, truth)
        hf_models, hf_cards = self.mutate_hf(hf_models, hf_cards, truth)
        return items, images, hf_models, hf_cards, truth

    # -- Civitai

    def mutate_civitai(
        self, items: list[dict[str, Any]], images: list[dict[str, Any]], truth: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        by_id = {int(i["id"]): i for i in items}
        ids = sorted(by_id)
        n = self.count(len(ids))
        versions = [v for i in items for v in i.get("modelVersions") or []]
        self.next_model = max(ids, default=0) + 1
        self.next_version = max((int(v["id"]) for v in versions), default=0) + 1
        file_ids = [f["id"] for v in versions for f in v.get("files") or [] if isinstance(f.get("id"), int)]
        self.next_file = max(file_ids, default=0) + 1
        image_ids = [img["id"] for img in images if isinstance(img.get("id"), int)]
        image_ids += [
            im["id"] for v in versions for im in v.get("images") or [] if isinstance(im.get("id"), int)
        ]
        self.next_image = max(image_ids, default=0) + 1
        self.clock = max((t for i in items for t in version_times(i)), default=0) or parse_time_ms(
            FALLBACK_CLOCK
        )
        self.clock += DAY_MS
        self.ticks = 0
        images = list(images)
        positions: dict[int, list[int]] = {}
        for idx, img in enumerate(images):
            positions.setdefault(int(img["modelVersionId"]), []).append(idx)

        order = list(ids)
        self.rng.shuffle(order)
        eligible = {
            "deleted_models": lambda item: True,
            "changed_descriptions": lambda item: True,
            "changed_images": lambda item: any(v.get("images") for v in item.get("modelVersions") or []),
            "new_versions": healthy,
        }
        used: set[int] = set()
        chosen: dict[str, list[int]] = {}
        for kind, ok in eligible.items():
            picked: list[int] = []
            for mid in order:
                if len(picked) == n:
                    break
                if mid not in used and ok(by_id[mid]):
                    picked.append(mid)
                    used.add(mid)
            chosen[kind] = sorted(picked)
        spare = [mid for mid in order if mid not in used and healthy(by_id[mid])] or [
            mid for mid in order if mid not in chosen["deleted_models"] and healthy(by_id[mid])
        ]
        templates = [spare[k % len(spare)] for k in range(n)] if spare else []

        replaced: dict[int, dict[str, Any]] = {}
        for mid in chosen["changed_descriptions"]:
            item = copy.deepcopy(by_id[mid])
            note = self.rng.choice(DESCRIPTION_UPDATES)
            day = iso_ms(self.stamp())[:10]
            item["description"] = (item.get("description") or "") + f"<p>Update {day}: {note}</p>"
            replaced[mid] = item

        changed_images = []
        for mid in chosen["changed_images"]:
            item = copy.deepcopy(by_id[mid])
            version = self.rng.choice([v for v in item["modelVersions"] if v.get("images")])
            changed_images.append(self.replace_image(mid, version, images, positions))
            replaced[mid] = item

        new_versions = []
        for mid in chosen["new_versions"]:
            item = copy.deepcopy(by_id[mid])
            vs = item["modelVersions"]
            version, new_images = self.copy_version(
                vs[0], mid, images, positions, name=f"v{len(vs) + 1}.0", suffix=f"v{len(vs) + 1}"
            )
            vs.insert(0, version)
            for index, v in enumerate(vs):
                if "index" in v:
                    v["index"] = index
            images.extend(new_images)
            new_versions.append({"model_id": mid, "version_id": int(version["id"])})
            replaced[mid] = item

        new_items = []
        new_model_versions = []
        for k, tid in enumerate(templates):
            template = by_id[tid]
            mid = self.take("next_model")
            item = copy.deepcopy({key: val for key, val in template.items() if key != "modelVersions"})
            item["id"] = mid
            title = f"{template.get('name') or 'Model'} Reloaded {k + 1}"
            item["name"] = title
            item["description"] = f"<p>{title}: a fresh take, trained from scratch.</p>" + (
                template.get("description") or ""
            )
            if isinstance(item.get("stats"), dict):
                item["stats"] = {key: 0 for key in item["stats"]}
            version, new_images = self.copy_version(
                template["modelVersions"][0], mid, images, positions, name="v1.0", suffix=f"reloaded{k + 1}"
            )
            if "index" in version:
                version["index"] = 0
            item["modelVersions"] = [version]
            images.extend(new_images)
            new_items.append(item)
            new_model_versions.append({"model_id": mid, "version_id": int(version["id"])})

        deleted = set(chosen["deleted_models"])
        deleted_versions = sorted(
            int(v["id"]) for mid in deleted for v in by_id[mid].get("modelVersions") or []
        )
        gone = set(deleted_versions)
        out_items = [replaced.get(int(i["id"]), i) for i in items if int(i["id"]) not in deleted] + new_items
        out_images = [
            img
            for img in images
            if int(img["modelVersionId"]) not in gone and int(img["modelId"]) not in deleted
        ]
        truth.update(
            new_models=[int(i["id"]) for i in new_items],
            new_model_versions=new_model_versions,
            new_versions=new_versions,
            changed_descriptions=chosen["changed_descriptions"],
            changed_images=changed_images,
            deleted_models=sorted(deleted),
            deleted_versions=deleted_versions,
        )
        return out_items, out_images

    def replace_image(
        self,
        model_id: int,
        version: dict[str, Any],
        images: list[dict[str, Any]],
        positions: dict[int, list[int]],
    ) -> dict[str, Any]:
        """Swap one preview image of ``version`` (in place) and its images.jsonl record."""
        vid = int(version["id"])
        embedded = version["images"]
        # A PG image, so that the change shows on the SFW listing and the default /images level too.
        pos = next((i for i, img in enumerate(embedded) if image_level(img) & 1), 0)
        old = embedded[pos]
        new_id, uuid = self.take("next_image"), self.uuid()
        new = dict(old, url=swap_image_url(old.get("url"), uuid, new_id))
        if "id" in old:
            new["id"] = new_id
        embedded[pos] = new
        mine = positions.setdefault(vid, [])
        idx = None
        if old.get("id") is not None:
            idx = next((i for i in mine if images[i].get("id") == old["id"]), None)
        if idx is None and len(mine) == len(embedded):
            idx = mine[pos]  # same gallery order (2025 items embed images without ids)
        if idx is not None:
            images[idx] = dict(
                images[idx], id=new_id, url=swap_image_url(images[idx].get("url"), uuid, new_id)
            )
        else:
            mine.append(len(images))
            images.append(
                {
                    "id": new_id,
                    "modelId": model_id,
                    "modelVersionId": vid,
                    "url": new.get("url"),
                    "width": new.get("width"),
                    "height": new.get("height"),
                    "hash": new.get("hash"),
                    "nsfwLevel": image_level(new),
                    "createdAt": iso_ms(self.stamp()),
                    "postId": None,
                    "username": None,
                    "meta": new.get("meta"),
                }
            )
        return {"model_id": model_id, "version_id": vid, "image_id": new_id, "url": new.get("url")}

    def copy_version(
        self,
        template: dict[str, Any],
        model_id: int,
        images: list[dict[str, Any]],
        positions: dict[int, list[int]],
        name: str,
        suffix: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A new version modelled on ``template``: fresh ids, files, hashes and images, dated today."""
        vid = self.take("next_version")
        stamp = iso_ms(self.stamp())
        v = copy.deepcopy(template)
        v["id"] = vid
        if "modelId" in v:
            v["modelId"] = model_id
        v["name"] = name
        dated = [key for key in ("createdAt", "updatedAt", "publishedAt") if key in v]
        for key in dated or ["publishedAt"]:
            v[key] = stamp
        if isinstance(v.get("stats"), dict):
            v["stats"] = {key: 0 for key in v["stats"]}
        if isinstance(v.get("downloadUrl"), str):
            v["downloadUrl"] = re.sub(r"/models/\d+", f"/models/{vid}", v["downloadUrl"])
        files = []
        for f in v.get("files") or []:
            f = dict(f)
            fid = self.take("next_file")
            if "id" in f:
                f["id"] = fid
            if isinstance(f.get("name"), str):
                stem, dot, ext = f["name"].rpartition(".")
                f["name"] = f"{stem}_{suffix}.{ext}" if dot else f"{f['name']}_{suffix}"
            if isinstance(f.get("hashes"), dict):
                f["hashes"] = fresh_hashes(f"{self.seed}:{vid}:{fid}", f["hashes"])
            if isinstance(f.get("downloadUrl"), str):
                f["downloadUrl"] = re.sub(r"/models/\d+", f"/models/{vid}", f["downloadUrl"])
            if "scannedAt" in f:
                f["scannedAt"] = stamp
            files.append(f)
        v["files"] = files
        embedded = v.get("images") or []
        listed = [images[i] for i in positions.get(int(template["id"]), [])]
        new_embedded, new_listed = [], []
        # Embedded gallery and images.jsonl records pair by position (same image, same new id).
        for pos in range(max(len(embedded), len(listed))):
            new_id, uuid = self.take("next_image"), self.uuid()
            if pos < len(embedded):
                img = dict(embedded[pos], url=swap_image_url(embedded[pos].get("url"), uuid, new_id))
                if "id" in embedded[pos]:
                    img["id"] = new_id
                new_embedded.append(img)
            if pos < len(listed):
                rec = listed[pos]
                new_listed.append(
                    dict(
                        rec,
                        id=new_id,
                        url=swap_image_url(rec.get("url"), uuid, new_id),
                        modelVersionId=vid,
                        modelId=model_id,
                        createdAt=stamp,
                    )
                )
        if "images" in v:
            v["images"] = new_embedded
        return v, new_listed

    # -- Hugging Face

    def mutate_hf(
        self, hf_models: list[dict[str, Any]], hf_cards: dict[str, str], truth: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        by_id = {m["id"]: m for m in hf_models}
        order = sorted(by_id)
        n = self.count(len(order))
        self.rng.shuffle(order)
        deleted, changed = sorted(order[:n]), sorted(order[n : 2 * n])
        spare = order[2 * n :] or [rid for rid in order if rid not in deleted]
        templates = [spare[k % len(spare)] for k in range(n)] if spare else []
        latest = max(
            (parse_time_ms(m.get("lastModified") or m.get("createdAt")) for m in hf_models), default=0
        )
        clock = (latest or parse_time_ms(FALLBACK_CLOCK)) + DAY_MS
        cards = dict(hf_cards)
        out = []
        tick = 0
        for m in hf_models:
            rid = m["id"]
            if rid in deleted:
                cards.pop(rid, None)
                continue
            if rid in changed:
                tick += 1
                m = copy.deepcopy(m)
                m["sha"] = hashlib.sha1(f"{m.get('sha', '')}:{self.seed}:{rid}".encode()).hexdigest()
                m["lastModified"] = iso_ms(clock + tick * 60_000)
                if rid in cards:
                    note = self.rng.choice(README_UPDATES)
                    cards[rid] = (
                        cards[rid].rstrip("\n") + f"\n\n## Changelog\n\n- {m['lastModified'][:10]}: {note}\n"
                    )
            out.append(m)
        new_ids = []
        for k, tid in enumerate(templates):
            tick += 1
            owner, _, name = tid.partition("/")
            rid = f"{owner}/{name}-next-{k + 1}"
            while rid in by_id:
                rid += "-x"
            m = copy.deepcopy(by_id[tid])
            stamp = iso_ms(clock + tick * 60_000)
            m.update(id=rid, createdAt=stamp, lastModified=stamp, likes=0, downloads=0)
            m["_id"] = hashlib.sha1(f"_id:{self.seed}:{rid}".encode()).hexdigest()[:24]
            m["sha"] = hashlib.sha1(f"sha:{self.seed}:{rid}".encode()).hexdigest()
            if "modelId" in m:
                m["modelId"] = rid
            if "trendingScore" in m:
                m["trendingScore"] = 0
            if tid in cards:
                cards[rid] = cards[tid].replace(tid, rid)
            out.append(m)
            new_ids.append(rid)
        truth.update(hf_changed=changed, hf_deleted=deleted, hf_new=sorted(new_ids))
        return out, cards


# ---------------------------------------------------------------------------------------------
# Fake weights (--fake-weights) and the download endpoint

FAKE_LORA_PREFIX = "lora_unet_mid_block_attentions_0_proj_in"


def fake_safetensors(version_id: int, file_id: int) -> bytes:
    """A small valid safetensors file (two F16 LoRA tensors), deterministic for (version, file)."""
    tag = f"{version_id}:{file_id}"
    header: dict[str, Any] = {
        "__metadata__": {"format": "pt", "ss_network_module": "networks.lora", "replay_file": tag}
    }
    offset = 0
    for name, shape in (
        (f"{FAKE_LORA_PREFIX}.lora_down.weight", [4, 32]),
        (f"{FAKE_LORA_PREFIX}.lora_up.weight", [32, 4]),
    ):
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    data = bytearray(hashlib.shake_256(tag.encode()).digest(offset))
    # Clear the exponent bits of every little-endian F16 so all values are tiny and finite (no NaN/inf).
    data[1::2] = bytes(b & 0x83 for b in data[1::2])
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


def weight_hashes(body: bytes, template: dict[str, Any]) -> dict[str, str]:
    """The Civitai hash set of ``body`` (AutoV3 only when the template had one; no BLAKE3 in stdlib)."""
    sha = hashlib.sha256(body).hexdigest().upper()
    (n,) = struct.unpack("<Q", body[:8])
    out = {
        # A1111's legacy hash: 64 KiB at offset 1 MiB (empty for a file this small, as A1111 computes it).
        "AutoV1": hashlib.sha256(body[0x100000:0x110000]).hexdigest()[:8].upper(),
        "AutoV2": sha[:10],
        "SHA256": sha,
        "CRC32": f"{zlib.crc32(body) & 0xFFFFFFFF:08X}",
    }
    if "AutoV3" in template:
        out["AutoV3"] = hashlib.sha256(body[8 + n :]).hexdigest()[:12].upper()
    return out


def file_id_of(f: dict[str, Any], position: int) -> int:
    """The id the download endpoint uses for a file (its position when the corpus gives none)."""
    return f["id"] if isinstance(f.get("id"), int) else position


def apply_fake_weights(items: list[dict[str, Any]], base_url: str) -> None:
    """Rewrite every file's hashes/size to the fake body's and point download URLs at ``base_url``."""

    def rehost(url: Any) -> Any:
        return re.sub(r"^https?://[^/]+", base_url, url) if isinstance(url, str) and base_url else url

    for item in items:
        for v in item.get("modelVersions") or []:
            vid = int(v["id"])
            if "downloadUrl" in v or v.get("files"):
                v["downloadUrl"] = rehost(
                    v.get("downloadUrl") or f"https://civitai.com/api/download/models/{vid}"
                )
            for pos, f in enumerate(v.get("files") or []):
                body = fake_safetensors(vid, file_id_of(f, pos))
                f["hashes"] = weight_hashes(body, f.get("hashes") or {})
                f["sizeKB"] = len(body) / 1024
                if "downloadUrl" in f:
                    f["downloadUrl"] = rehost(f["downloadUrl"])


def pick_file(files: list[dict[str, Any]], qs: dict[str, list[str]]) -> tuple[int, dict[str, Any]] | None:
    """The file a download request selects (``fileId``, or type/format/size/fp; else the primary)."""
    indexed = list(enumerate(files))
    file_id = one(qs, "fileId")
    if file_id:
        return next(((p, f) for p, f in indexed if str(file_id_of(f, p)) == file_id), None)
    selectors = {k: one(qs, k) for k in ("type", "format", "size", "fp") if one(qs, k)}
    if not selectors:
        return next(((p, f) for p, f in indexed if f.get("primary")), indexed[0] if indexed else None)

    def matches(f: dict[str, Any]) -> bool:
        meta = f.get("metadata") or {}
        return all((f.get("type") if k == "type" else meta.get(k)) == want for k, want in selectors.items())

    return next(((p, f) for p, f in indexed if matches(f)), None)


def content_disposition(name: str) -> str:
    """``attachment`` header with an ASCII fallback and the RFC 5987 UTF-8 name."""
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


# ---------------------------------------------------------------------------------------------
# Enums

# fmt: off
BUILTIN_ENUMS: dict[str, list[str]] = {
    "ModelType": [
        "Checkpoint", "TextualInversion", "Hypernetwork", "AestheticGradient", "LORA", "LoCon", "DoRA",
        "Controlnet", "Upscaler", "MotionModule", "VAE", "TextEncoder", "UNet", "CLIPVision", "Poses",
        "Wildcards", "Workflows", "ComfyWorkflows", "Detection", "VisionLanguage", "CLIP", "LLM", "Other",
    ],
    "ModelFileType": [
        "Model", "Text Encoder", "Pruned Model", "Negative", "Training Data", "VAE", "Config", "Archive",
    ],
    # Civitai's packages/civitai-shared/src/basemodel.constants.ts
    "BaseModel": [
        "Anima", "AuraFlow", "Chroma", "CogVideoX", "Ernie", "Flux.1 S", "Flux.1 D", "Flux.1 Krea",
        "Flux.1 Kontext", "Flux.2 D", "Flux.2 Klein 9B", "Flux.2 Klein 9B-base", "Flux.2 Klein 4B",
        "Flux.2 Klein 4B-base", "Flux 3 Video", "Grok", "HappyHorse", "HiDream", "HiDream-O1", "Hunyuan 1",
        "Hunyuan Video", "Ideogram 4.0", "Boogu", "Illustrious", "Imagen4", "Kolors", "Krea 2", "LTXV",
        "LTXV2", "LTXV 2.3", "Lens", "Lumina", "MageFlow", "MAI", "Mochi", "Nano Banana", "NoobAI", "ODOR",
        "OpenAI", "Upscaler", "Other", "PixArt a", "PixArt E", "Playground v2", "Pony", "Pony V7", "Qwen",
        "Qwen 2", "Qwen 3", "Stable Cascade", "SD 1.4", "SD 1.5", "SD 1.5 LCM", "SD 1.5 Hyper", "SD 2.0",
        "SD 2.0 768", "SD 2.1", "SD 2.1 768", "SD 2.1 Unclip", "SD 3", "SD 3.5", "SD 3.5 Large",
        "SD 3.5 Large Turbo", "SD 3.5 Medium", "SDXL 0.9", "SDXL 1.0", "SDXL 1.0 LCM", "SDXL Lightning",
        "SDXL Hyper", "SDXL Turbo", "SDXL Distilled", "Reve", "Seedream", "SVD", "SVD XT", "Sora 2", "Veo 3",
        "Wan Video", "Wan Video 1.3B t2v", "Wan Video 14B t2v", "Wan Video 14B i2v 480p",
        "Wan Video 14B i2v 720p", "Wan Video 2.2 TI2V-5B", "Wan Video 2.2 I2V-A14B", "Wan Video 2.2 T2V-A14B",
        "Wan Video 2.5 T2V", "Wan Video 2.5 I2V", "Wan Image 2.7", "Wan Video 2.7", "ZImageTurbo",
        "ZImageBase", "Vidu Q1", "MiniMax H3", "Kling", "Seedance", "ACE Audio", "PolyGen", "Tripo",
        "Hunyuan3D",
    ],
    "BaseModelType": ["Standard", "Inpainting", "Refiner", "Pix2Pix"],
}
# fmt: on


def load_enums(opts: Options, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The /api/v1/enums answer.

    An explicit file (``--enums``, or ``DATA/civitai/enums.json``) is served as is — so a test can
    serve base models the corpus does not use, or leave out one it does. Otherwise the saved real
    answer (../shared/data/civitai-2025/enums.json) or, without it, the built-in lists below,
    with every base model of the corpus that they lack appended to ``BaseModel``.
    """
    explicit = Path(opts.enums) if opts.enums else Path(opts.data_dir) / "civitai" / "enums.json"
    if explicit.is_file():
        return json.loads(explicit.read_text(encoding="utf-8"))
    if SHARED_ENUMS.is_file():
        enums = json.loads(SHARED_ENUMS.read_text(encoding="utf-8"))
    else:
        enums = copy.deepcopy(BUILTIN_ENUMS)
        enums["ActiveBaseModel"] = list(enums["BaseModel"])
    known = enums.setdefault("BaseModel", [])
    corpus = {str(v["baseModel"]) for i in items for v in i.get("modelVersions") or [] if v.get("baseModel")}
    known.extend(sorted(corpus - set(known)))
    return enums


# ---------------------------------------------------------------------------------------------
# Loading


def load_corpus(opts: Options, base_url: str = "") -> Corpus:
    """Read the corpus files, apply --mutate/--fake-weights/--host-kind and build every index."""
    data = Path(opts.data_dir)
    models_path = Path(opts.civitai_models) if opts.civitai_models else data / "civitai" / "models.jsonl"
    items = read_jsonl(models_path) if models_path.exists() else []
    images_path = models_path.parent / "images.jsonl"
    # Derived before any mutation, so that synthetic image ids of unchanged versions stay the same.
    images = (
        read_jsonl(images_path) if images_path.exists() and not opts.civitai_models else derive_images(items)
    )
    hf_path = data / "hf" / "models.jsonl"
    hf_models = read_jsonl(hf_path) if hf_path.exists() else []
    cards: dict[str, str] = {}
    cards_dir = data / "hf" / "cards"
    if cards_dir.is_dir():
        for card in sorted(cards_dir.glob("*.md")):
            cards[card.stem.replace("__", "/", 1)] = card.read_text(encoding="utf-8")

    truth = None
    if opts.mutate is not None:
        items, images, hf_models, cards, truth = CorpusMutator(opts.mutate, opts.mutate_seed).run(
            items, images, hf_models, cards
        )
    enums = load_enums(opts, items)
    if opts.fake_weights:
        apply_fake_weights(items, base_url)
    green = opts.host_kind == "green"
    if green:
        items = [i for i in items if is_sfw_model(i)]
        kept = {int(i["id"]) for i in items}
        images = [img for img in images if int(img["modelId"]) in kept and image_level(img) & 1]

    entries: list[ModelEntry] = []
    versions: dict[int, tuple[dict[str, Any], ModelEntry]] = {}
    for item in items:
        stats = item.get("stats") or {}
        vs = item.get("modelVersions") or []
        last = max((parse_time_ms(v.get("publishedAt") or v.get("createdAt")) for v in vs), default=0)
        entry = ModelEntry(
            item=item,
            sfw=is_sfw_model(item),
            name_lower=str(item.get("name", "")).lower(),
            user_slug=slug_username((item.get("creator") or {}).get("username") or ""),
            tags_lower=frozenset(str(t).lower() for t in item.get("tags") or []),
            base_models=frozenset(str(v.get("baseModel")) for v in vs),
            # 2023 items have no thumbsUpCount; favoriteCount is the closest "liked" signal.
            thumbs=int(stats.get("thumbsUpCount") or stats.get("favoriteCount") or 0),
            downloads=int(stats.get("downloadCount") or 0),
            last_ms=last,
            commercial=commercial_set(item.get("allowCommercialUse")),
            licence={k: licence_flag(item.get(k)) for k in LICENCE_FLAGS},
        )
        entry.json_sfw = json.dumps(render_item(item, opts.era, sfw_images=True), separators=(",", ":"))
        # The green host never serves an NSFW image, whatever the request asks for.
        entry.json_all = (
            entry.json_sfw
            if green
            else json.dumps(render_item(item, opts.era, sfw_images=False), separators=(",", ":"))
        )
        entries.append(entry)
        for v in vs:
            versions[int(v["id"])] = (v, entry)
    orders = {}
    for sort in SORT_NAMES:
        ordered = sorted(entries, key=lambda e, s=sort: sort_key(e, s))
        orders[sort] = ([sort_key(e, sort) for e in ordered], ordered)

    by_version: dict[int, list[dict[str, Any]]] = {}
    by_model: dict[int, list[dict[str, Any]]] = {}
    for img in images:
        by_version.setdefault(int(img["modelVersionId"]), []).append(img)
        by_model.setdefault(int(img["modelId"]), []).append(img)

    png_dir = data / "images"
    pngs = [p.read_bytes() for p in sorted(png_dir.glob("*.png"))] if png_dir.is_dir() else []
    if not pngs:
        pngs = [minimal_png(i) for i in range(8)]
    clock = parse_time_ms(opts.now) if opts.now else max((e.last_ms for e in entries), default=0)
    return Corpus(
        models=entries,
        by_id={int(e.item["id"]): e for e in entries},
        orders=orders,
        versions=versions,
        images_by_version=by_version,
        images_by_model=by_model,
        usernames=frozenset(e.user_slug for e in entries),
        hf_models=hf_models,
        hf_by_id={m["id"]: m for m in hf_models},
        hf_cards=cards,
        pngs=pngs,
        green=green,
        clock_ms=clock,
        enums=enums,
        truth=truth,
    )


# ---------------------------------------------------------------------------------------------
# Fault injection and statistics


class FaultPlan:
    """Seeded per-request fault decisions plus counters for /__stats.

    The decision for request number *n* comes from ``Random(f"{seed}:{n}")``, so a run is
    reproducible for a given request order, and a retry (new *n*) gets a fresh draw. A path that
    failed MAX_CONSECUTIVE_FAULTS times in a row is let through regardless.
    """

    def __init__(self, rate: float, seed: int, kinds: tuple[str, ...]) -> None:
        self.rate = rate
        self.seed = seed
        self.kinds = kinds
        self.lock = threading.Lock()
        self.counter = 0
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.streak: dict[str, int] = {}
        self.endpoints: Counter[str] = Counter()
        # endpoint → id (version id, model id, repo id) → requests; what a delta crawl must not refetch
        self.ids: dict[str, Counter[str]] = {}
        self.token_requests = 0

    def decide(self, key: str) -> str | None:
        """Return the fault kind for this request or None; counts the request."""
        with self.lock:
            self.counter += 1
            self.requests += 1
            n = self.counter
            if self.rate <= 0 or not self.kinds:
                return None
            rng = random.Random(f"{self.seed}:{n}")
            if rng.random() >= self.rate or self.streak.get(key, 0) >= MAX_CONSECUTIVE_FAULTS:
                self.streak.pop(key, None)
                return None
            kind = rng.choice(self.kinds)
            self.streak[key] = self.streak.get(key, 0) + 1
            # Bound memory under long benches: the streak map only needs recent keys.
            if len(self.streak) > 100_000:
                self.streak.clear()
            self.faults[kind] += 1
            return kind

    def fault_rng(self, key: str) -> random.Random:
        """RNG for the details of a fault (which 5xx), derived from the same seed."""
        return random.Random(f"{self.seed}:{key}:{self.counter}")

    def record_status(self, status: int) -> None:
        with self.lock:
            self.statuses[str(status)] += 1

    def record_endpoint(self, endpoint: str, key: Any = None) -> None:
        """Count a routed request (after fault injection) by endpoint and, if given, by id."""
        with self.lock:
            self.endpoints[endpoint] += 1
            if key is not None:
                self.ids.setdefault(endpoint, Counter())[str(key)] += 1

    def record_token(self) -> None:
        with self.lock:
            self.token_requests += 1

    def snapshot(self, detail: bool = False) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "requests": self.requests,
                "faults": dict(self.faults),
                "faults_total": sum(self.faults.values()),
                "statuses": dict(self.statuses),
                "endpoints": dict(self.endpoints),
                "token_requests": self.token_requests,
            }
            if detail:
                out["ids"] = {name: dict(counts) for name, counts in self.ids.items()}
            return out

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.faults.clear()
            self.statuses.clear()
            self.streak.clear()
            self.endpoints.clear()
            self.ids.clear()
            self.token_requests = 0


HF_QUOTAS = {"api": 500, "resolvers": 3000}  # anonymous per-IP quotas per 5-minute window (§2.4)


class HfRateLimiter:
    """Fixed-window counters per Hugging Face bucket and the IETF-draft ``RateLimit`` headers.

    Args:
        limit: Requests allowed per bucket and window; None = advertise HF_QUOTAS, never refuse.
        window: Window length in seconds (300 on the Hub).
    """

    def __init__(self, limit: int | None, window: float) -> None:
        self.limit = limit
        self.window = window
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.index = 0
        self.used: Counter[str] = Counter()

    def take(self, bucket: str) -> tuple[bool, dict[str, str]]:
        """Count one request; returns (allowed, headers to send)."""
        with self.lock:
            now = time.monotonic()
            index = int((now - self.start) // self.window)
            if index != self.index:
                self.index = index
                self.used.clear()
            quota = self.limit if self.limit is not None else HF_QUOTAS[bucket]
            allowed = self.limit is None or self.used[bucket] < quota
            if allowed:
                self.used[bucket] += 1
            remaining = max(0, quota - self.used[bucket])
            reset = max(1, math.ceil(self.start + (index + 1) * self.window - now))
        headers = {
            "RateLimit": f'"{bucket}";r={remaining};t={reset}',
            "RateLimit-Policy": f'"fixed window";"{bucket}";q={quota};w={self.window:g}',
        }
        if not allowed:
            headers["Retry-After"] = str(reset)
        return allowed, headers


# ---------------------------------------------------------------------------------------------
# Request handling


def one(qs: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    """Last value of a query parameter (repeated scalars: last one wins, like zod preprocessors)."""
    values = qs.get(name)
    return values[-1] if values else default


def many(qs: dict[str, list[str]], name: str) -> list[str]:
    """Repeatable parameter; comma-separated values are split too (the docs claim both work)."""
    out: list[str] = []
    for value in qs.get(name, []) + qs.get(name + "[]", []):
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def int_param(qs: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    """Integer parameter validated like zod: out of range → 400 with an issues object."""
    raw = one(qs, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(
            400,
            {
                "issues": [{"code": "invalid_type", "path": [name], "message": "Expected number"}],
                "name": "ZodError",
            },
        ) from exc
    if value < lo or value > hi:
        code = "too_big" if value > hi else "too_small"
        bound = hi if value > hi else lo
        raise ApiError(
            400,
            {
                "issues": [
                    {
                        "code": code,
                        "path": [name],
                        "message": f"Number must be {'less' if value > hi else 'greater'} than or "
                        f"equal to {bound}",
                    }
                ],
                "name": "ZodError",
            },
        )
    return value


def bool_param(qs: dict[str, list[str]], name: str) -> bool | None:
    """A ``true``/``false`` parameter; None when absent; anything else → 400 (zod)."""
    raw = (one(qs, name) or "").strip().lower()
    if not raw:
        return None
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise ApiError(
        400,
        {
            "issues": [{"code": "invalid_type", "path": [name], "message": "Expected boolean"}],
            "name": "ZodError",
        },
    )


def enum_error(name: str) -> ApiError:
    return ApiError(400, {"issues": [{"code": "invalid_enum_value", "path": [name]}], "name": "ZodError"})


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temp name beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class ReplayServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the corpus, options and fault plan."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.faults = FaultPlan(opts.fault_rate, opts.seed, opts.faults)
        self.hf_limiter = HfRateLimiter(opts.hf_rate_limit, opts.hf_rate_window)
        # Bind first: --fake-weights points download URLs at this server's own address.
        super().__init__((opts.host, opts.port), Handler)
        try:
            self.corpus = load_corpus(opts, self.base_url)
            if opts.truth_path is not None and self.corpus.truth is not None:
                write_json_atomic(Path(opts.truth_path), self.corpus.truth)
        except BaseException:
            self.server_close()
            raise

    @property
    def truth(self) -> dict[str, Any] | None:
        """What --mutate changed (None when not mutating); the same as the --mutate-truth file."""
        return self.corpus.truth

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        """Stop serve_forever and close the listening socket (tests call only this)."""
        super().shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    """Routes GET requests; everything it writes has a Content-Length so keep-alive works."""

    protocol_version = "HTTP/1.1"
    server: ReplayServer
    server_version = "replay/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Default logging prints the full request line (which may carry ?token=); log path only.
        if self.server.opts.verbose:
            sys.stderr.write(
                f"{self.command} {urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}\n"
            )

    # -- response helpers

    def send_body(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.faults.record_status(status)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = (
            payload.encode()
            if isinstance(payload, str)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        self.send_body(status, body, "application/json; charset=utf-8", headers)

    # -- dispatch

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        split = urlsplit(self.path)
        path = split.path
        qs = parse_qs(split.query, keep_blank_values=True)
        if path == "/__stats":
            if one(qs, "reset") in ("1", "true"):
                self.server.faults.reset()
            self.send_json(200, self.server.faults.snapshot(detail=one(qs, "detail") in ("1", "true")))
            return
        opts = self.server.opts
        fault = self.server.faults.decide(f"{path}?{split.query}")
        if opts.latency_ms > 0:
            time.sleep(opts.latency_ms / 1000.0)
        if fault == "drop":
            self.drop_connection()
            return
        if fault == "429":
            self.send_json(429, {"error": "Too Many Requests"}, {"Retry-After": str(opts.retry_after)})
            return
        if fault == "5xx":
            status = self.server.faults.fault_rng(path).choice([500, 502, 503, 504])
            self.send_json(
                status,
                {"error": "Internal Server Error"}
                if status == 500
                else {"error": f"upstream error {status}"},
            )
            return
        if fault == "html":
            self.send_body(200, CLOUDFLARE_HTML.encode(), "text/html; charset=UTF-8")
            return
        if self.headers.get("Authorization") or one(qs, "token"):
            self.server.faults.record_token()  # counted, never recorded: host-scoping tests use this
        # /files/ stands for the signed storage URL the download endpoint redirects to: no token there.
        if opts.require_token and not path.startswith("/files/") and not self.authorized(qs):
            self.send_json(401, {"error": "Unauthorized"})
            return
        try:
            status, body, ctype, headers = self.route(path, qs)
        except ApiError as err:
            status, ctype, headers = err.status, "application/json; charset=utf-8", err.headers
            body = json.dumps({"error": err.error}, separators=(",", ":")).encode()
        if fault == "truncated" and ctype == "application/octet-stream":
            self.send_cut(status, body, ctype, headers)
            return
        if fault == "truncated" and body:  # an empty redirect has nothing to cut
            body = body[: max(1, len(body) // 2)]
            status = 200
        self.send_body(status, body, ctype, headers)

    def send_cut(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        """A file transfer cut off mid-body: full Content-Length announced, half sent, socket closed."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
        self.drop_connection()  # counted as status 0, like a dropped connection

    def authorized(self, qs: dict[str, list[str]]) -> bool:
        """Bearer header (preferred) or ``?token=`` — both accepted by the real server."""
        expected = self.server.opts.require_token
        header = self.headers.get("Authorization", "")
        parts = header.split()
        if len(parts) == 2 and parts[0].lower() == "bearer" and parts[1] == expected:
            return True
        return one(qs, "token") == expected

    def drop_connection(self) -> None:
        """Close the socket without writing a response (client sees a connection reset/EOF)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # peer may already be gone; nothing to clean up
        self.server.faults.record_status(0)

    def route(self, path: str, qs: dict[str, list[str]]) -> tuple[int, bytes, str, dict[str, str]]:
        """Dispatch to an endpoint; returns (status, body, content type, headers)."""
        json_type = "application/json; charset=utf-8"
        record = self.server.faults.record_endpoint
        if path in ("/api/v1/models", "/api/v1/models/"):
            record("models")
            body, headers = self.civitai_models(qs)
            return 200, body, json_type, headers
        m = re.fullmatch(r"/api/v1/models/(\d+)", path)
        if m:
            record("model", int(m.group(1)))
            return 200, self.civitai_model(int(m.group(1))), json_type, {}
        m = re.fullmatch(r"/api/v1/model-versions/(\d+)", path)
        if m:
            record("model_version", int(m.group(1)))
            return 200, self.civitai_version(int(m.group(1))), json_type, {}
        if path in ("/api/v1/images", "/api/v1/images/"):
            record(
                "images",
                one(qs, "modelVersionId") or (f"model:{one(qs, 'modelId')}" if one(qs, "modelId") else None),
            )
            return 200, self.civitai_images(qs), json_type, {}
        if path in ("/api/v1/enums", "/api/v1/enums/"):
            record("enums")
            return 200, json.dumps(self.server.corpus.enums, separators=(",", ":")).encode(), json_type, {}
        m = re.fullmatch(r"/api/download/models/(\d+)", path)
        if m:
            record("download", int(m.group(1)))
            return self.civitai_download(int(m.group(1)), qs)
        m = re.fullmatch(r"/files/(\d+)/(\d+)/([^/]+)", path)
        if m:
            record("file", f"{m.group(1)}/{m.group(2)}")
            return self.file_body(int(m.group(1)), int(m.group(2)), unquote(m.group(3)))
        if path in ("/api/models", "/api/models/"):
            record("hf_models")
            return self.hf_limited("api", lambda: self.hf_models(qs))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)", path)
        if m:
            record("hf_model", m.group(1))
            return self.hf_limited("api", lambda: self.hf_model(m.group(1)))
        if path.startswith("/img/"):
            return 200, self.png_for(path[len("/img") :]), "image/png", {}
        if path == "/image-proxy":
            url = one(qs, "url")
            if not url:
                raise ApiError(400, "missing url")
            return 200, self.png_for(urlsplit(url).path), "image/png", {}
        m = re.fullmatch(r"/([^/]+/[^/]+)/(?:resolve|raw)/([^/]+)/(.+)", path)
        if m:
            record("hf_file", m.group(1))
            return self.hf_limited("resolvers", lambda: self.hf_file(m.group(1), m.group(3)))
        raise ApiError(404, "Not found")

    def hf_limited(self, bucket: str, answer: Any) -> tuple[int, bytes, str, dict[str, str]]:
        """Run an HF endpoint under the bucket's rate limit; every answer carries the RateLimit headers."""
        allowed, limit_headers = self.server.hf_limiter.take(bucket)
        if not allowed:
            raise ApiError(
                429,
                f"You have exceeded our '{bucket}' rate limit quota. Retry after the window resets.",
                limit_headers,
            )
        try:
            result = answer()
        except ApiError as err:
            err.headers = {**limit_headers, **err.headers}
            raise
        if len(result) == 2:  # (body, headers) from the JSON endpoints
            body, headers = result
            return 200, body, "application/json; charset=utf-8", {**limit_headers, **headers}
        status, body, ctype, headers = result
        return status, body, ctype, {**limit_headers, **headers}

    # -- Civitai

    def civitai_models(self, qs: dict[str, list[str]]) -> tuple[bytes, dict[str, str]]:
        corpus, opts = self.server.corpus, self.server.opts
        limit = int_param(qs, "limit", 100, 1, 100)
        page_raw = one(qs, "page")
        query = (one(qs, "query") or "").strip().lower()
        page = None
        if page_raw:
            page = int_param(qs, "page", 1, 1, 10**9)
            if query:
                raise ApiError(400, "Cannot use page param with query search. Use cursor-based pagination.")
            if page * limit > 1000:
                raise ApiError(429, "You've requested too many pages, please use cursors instead")
        sort = one(qs, "sort") or "Highest Rated"
        if sort in ("Most Liked", "Most Discussed", "Most Collected", "Most Images"):
            sort = "Highest Rated"  # same ordering keys in the real code for our purposes
        if sort not in SORT_NAMES:
            raise enum_error("sort")
        period = one(qs, "period") or "AllTime"
        if period not in PERIODS:
            raise enum_error("period")
        since = period_start(corpus.clock_ms, period)
        commercial = set(many(qs, "allowCommercialUse"))
        if commercial - set(COMMERCIAL_VALUES):
            raise enum_error("allowCommercialUse")
        # "None" = no commercial use at all: the models whose permission set is empty.
        want_none = "None" in commercial
        commercial.discard("None")
        flags = {k: v for k in LICENCE_FLAGS if (v := bool_param(qs, k)) is not None}
        nsfw_all = (one(qs, "nsfw") or "").lower() == "true"
        types = set(many(qs, "types"))
        base_models = set(many(qs, "baseModels"))
        tag = (one(qs, "tag") or one(qs, "tagname") or "").lower()
        username = one(qs, "username") or one(qs, "user")
        user_slug = slug_username(username) if username else None
        if user_slug is not None and user_slug not in corpus.usernames:
            raise ApiError(404, "User not found")
        ids: set[int] | None = None
        if one(qs, "ids"):
            try:
                ids = {int(x) for x in many(qs, "ids")}
            except ValueError as exc:
                raise ApiError(400, "Invalid ids") from exc

        def keep(e: ModelEntry) -> bool:
            item = e.item
            return (
                (nsfw_all or e.sfw)
                and (not types or item.get("type") in types)
                and (not base_models or bool(e.base_models & base_models))
                and (not query or query in e.name_lower)
                and (not tag or tag in e.tags_lower)
                and (user_slug is None or e.user_slug == user_slug)
                and (ids is None or int(item["id"]) in ids)
                and (since is None or e.last_ms >= since)
                and (
                    not (commercial or want_none)
                    or bool(e.commercial & commercial)
                    or (want_none and not e.commercial)
                )
                and all(e.licence.get(k) is v for k, v in flags.items())
            )

        keys, ordered = corpus.orders[sort]
        cursor = one(qs, "cursor")
        picked: list[ModelEntry] = []
        next_cursor: str | None = None
        if query:
            # Search results page by a numeric offset cursor, as the Meilisearch path does.
            try:
                offset = int(cursor) if cursor else 0
                if offset < 0:
                    raise ValueError
            except ValueError as exc:
                raise ApiError(
                    400, {"code": "invalid_cursor", "message": f"Invalid cursor: {cursor!r}"}
                ) from exc
            matches = [e for e in ordered if keep(e)]
            picked = matches[offset : offset + limit]
            if offset + limit < len(matches):
                next_cursor = str(offset + limit)
            total = len(matches)
        else:
            start = bisect_left(keys, parse_cursor(cursor, sort)) if cursor else 0
            # Fetch limit+1 like the server; the extra row's keys become the (inclusive) next cursor.
            for i in range(start, len(ordered)):
                if keep(ordered[i]):
                    if len(picked) == limit:
                        next_cursor = cursor_for(keys[i], sort)
                        break
                    picked.append(ordered[i])
            total = sum(1 for e in ordered if keep(e)) if opts.era == 2023 else 0

        parts = []
        for e in picked:
            if base_models:
                parts.append(
                    json.dumps(
                        render_item(e.item, opts.era, corpus.green or not nsfw_all, base_models),
                        separators=(",", ":"),
                    )
                )
            else:
                parts.append(e.json_all if nsfw_all else e.json_sfw)
        metadata: dict[str, Any] = {}
        if next_cursor is not None:
            metadata["nextCursor"] = next_cursor
            metadata["nextPage"] = self.next_url("/api/v1/models", qs, next_cursor)
        if page is not None or opts.era == 2023:
            metadata["currentPage"] = page or 1
            metadata["pageSize"] = limit
        if opts.era == 2023:
            metadata["totalItems"] = total
            metadata["totalPages"] = (total + limit - 1) // limit
        body = '{"items":[' + ",".join(parts) + '],"metadata":' + json.dumps(metadata) + "}"
        return body.encode(), {"Cache-Control": "public, s-maxage=300, stale-while-revalidate=150"}

    def next_url(self, path: str, qs: dict[str, list[str]], cursor: str) -> str:
        """Same query with the cursor replaced, on the host the client used."""
        pairs = [(k, v) for k, vs in qs.items() if k not in ("cursor", "page") for v in vs]
        pairs.append(("cursor", cursor))
        host = self.headers.get("Host") or self.server.base_url.removeprefix("http://")
        return f"http://{host}{path}?{urlencode(pairs, quote_via=quote)}"

    def civitai_download(
        self, version_id: int, qs: dict[str, list[str]]
    ) -> tuple[int, bytes, str, dict[str, str]]:
        """307 to the file's storage path (like Civitai's signed-URL redirect); 404 File not found."""
        found = self.server.corpus.versions.get(version_id)
        if found is None:
            raise ApiError(404, "File not found", {"Cache-Control": "no-store"})
        version, entry = found
        if entry.item.get("mode") == "Archived":
            raise ApiError(410, "Model archived, not available for download", {"Cache-Control": "no-store"})
        picked = pick_file(version.get("files") or [], qs)
        if picked is None:
            raise ApiError(404, "File not found", {"Cache-Control": "no-store"})
        pos, f = picked
        name = str(f.get("name") or f"{version_id}.safetensors")
        host = self.headers.get("Host") or self.server.base_url.removeprefix("http://")
        location = f"http://{host}/files/{version_id}/{file_id_of(f, pos)}/{quote(name, safe='')}"
        return 307, b"", "text/plain; charset=utf-8", {"Location": location, "Cache-Control": "no-store"}

    def file_body(self, version_id: int, file_id: int, name: str) -> tuple[int, bytes, str, dict[str, str]]:
        """The fake safetensors bytes of one served file (Range → 206, past the end → 416)."""
        found = self.server.corpus.versions.get(version_id)
        files = (found[0].get("files") or []) if found else []
        if not any(file_id_of(f, pos) == file_id for pos, f in enumerate(files)):
            raise ApiError(404, "File not found")
        body = fake_safetensors(version_id, file_id)
        headers = {
            "Content-Disposition": content_disposition(name),
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-store",
        }
        ctype = "application/octet-stream"
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if m:
            begin = int(m.group(1))
            end = min(int(m.group(2)), len(body) - 1) if m.group(2) else len(body) - 1
            if begin >= len(body) or end < begin:
                return 416, b"", ctype, {**headers, "Content-Range": f"bytes */{len(body)}"}
            return (
                206,
                body[begin : end + 1],
                ctype,
                {**headers, "Content-Range": f"bytes {begin}-{end}/{len(body)}"},
            )
        return 200, body, ctype, headers

    def civitai_model(self, model_id: int) -> bytes:
        entry = self.server.corpus.by_id.get(model_id)
        if entry is None:
            raise ApiError(404, f"No model with id {model_id}")
        return entry.json_all.encode()

    def civitai_version(self, version_id: int) -> bytes:
        """Flat /model-versions/{id} object with up to 10 images carrying meta."""
        found = self.server.corpus.versions.get(version_id)
        if found is None:
            raise ApiError(404, "Model not found")
        v, entry = found
        item = entry.item
        files = [dict(f, primary=bool(f.get("primary"))) for f in v.get("files") or []]
        if not any(f["primary"] for f in files):
            raise ApiError(404, "Missing model file")
        images = []
        for img in self.server.corpus.images_by_version.get(version_id, [])[:10]:
            meta = img.get("meta")
            images.append(
                {
                    "url": img["url"],
                    "nsfwLevel": image_level(img),
                    "width": img.get("width"),
                    "height": img.get("height"),
                    "hash": img.get("hash"),
                    "type": "image",
                    "metadata": {
                        "hash": img.get("hash"),
                        "size": None,
                        "width": img.get("width"),
                        "height": img.get("height"),
                    },
                    "minor": False,
                    "poi": False,
                    "meta": meta,
                    "availability": "Public",
                    "hasMeta": bool(meta),
                    "hasPositivePrompt": bool(meta and meta.get("prompt")),
                    "onSite": False,
                    "remixOfId": None,
                }
            )
        stats = v.get("stats") or {}
        model = {
            "name": item.get("name"),
            "type": item.get("type"),
            "nsfw": bool(item.get("nsfw")),
            "poi": bool(item.get("poi")),
        }
        if item.get("mode"):
            model["mode"] = item["mode"]
        out = {
            "id": v["id"],
            "modelId": item["id"],
            "name": v.get("name"),
            "nsfwLevel": v.get("nsfwLevel", 1),
            "createdAt": v.get("createdAt"),
            "updatedAt": v.get("updatedAt") or v.get("publishedAt"),
            "status": "Published",
            "publishedAt": v.get("publishedAt") or v.get("createdAt"),
            "trainedWords": v.get("trainedWords") or [],
            "trainingStatus": None,
            "trainingDetails": None,
            "baseModel": v.get("baseModel"),
            "baseModelType": v.get("baseModelType", "Standard"),
            "earlyAccessEndsAt": None,
            "earlyAccessConfig": None,
            "description": v.get("description"),
            "uploadType": "Created",
            "usageControl": "Download",
            "air": air_for(str(v.get("baseModel")), str(item.get("type")), int(item["id"]), int(v["id"])),
            "stats": {
                "downloadCount": stats.get("downloadCount"),
                "ratingCount": 0,
                "rating": 0,
                "thumbsUpCount": stats.get("thumbsUpCount", stats.get("ratingCount", 0)),
            },
            "model": model,
            "files": files,
            "images": images,
            "downloadUrl": v.get("downloadUrl") or f"https://civitai.com/api/download/models/{v['id']}",
        }
        if item.get("creator"):
            out["creator"] = item["creator"]
        return json.dumps(out, separators=(",", ":")).encode()

    def civitai_images(self, qs: dict[str, list[str]]) -> bytes:
        """/images with offset cursor; PG-only by default like the real browsingLevel default."""
        corpus = self.server.corpus
        limit = int_param(qs, "limit", 100, 0, 200)
        with_meta = (one(qs, "withMeta") or "").lower() == "true"
        vid, mid = one(qs, "modelVersionId"), one(qs, "modelId")
        try:
            if vid:
                pool = corpus.images_by_version.get(int(vid), [])
            elif mid:
                pool = corpus.images_by_model.get(int(mid), [])
            else:
                pool = [img for imgs in corpus.images_by_version.values() for img in imgs]
        except ValueError as exc:
            raise ApiError(400, "Invalid id") from exc
        level_raw, nsfw = one(qs, "browsingLevel"), (one(qs, "nsfw") or "").strip()
        if level_raw:
            try:
                allowed = int(level_raw)
            except ValueError as exc:
                raise ApiError(400, "Invalid browsingLevel") from exc
        elif nsfw:
            allowed = {"none": 1, "false": 1, "soft": 3, "mature": 7, "x": 31, "true": 4 | 8 | 16 | 32}.get(
                nsfw.lower(), 1
            )
        else:
            allowed = 1
        pool = [img for img in pool if image_level(img) & allowed]
        cursor = one(qs, "cursor")
        try:
            offset = int(cursor) if cursor else 0
            if offset < 0:
                raise ValueError
        except ValueError as exc:
            raise ApiError(400, {"code": "invalid_cursor", "message": f"Invalid cursor: {cursor!r}"}) from exc
        page = pool[offset : offset + limit]
        items = []
        for img in page:
            level = image_level(img)
            version = corpus.versions.get(int(img["modelVersionId"]))
            items.append(
                {
                    "id": img["id"],
                    "url": img["url"],
                    "hash": img.get("hash"),
                    "width": img.get("width"),
                    "height": img.get("height"),
                    "nsfwLevel": LEVEL_STRING.get(level, "X"),
                    "nsfw": level > 1,
                    "browsingLevel": level,
                    "type": "image",
                    "createdAt": img.get("createdAt"),
                    "postId": img.get("postId"),
                    "stats": {
                        "cryCount": 0,
                        "laughCount": 0,
                        "likeCount": int(img["id"]) % 97,
                        "dislikeCount": 0,
                        "heartCount": int(img["id"]) % 31,
                        "commentCount": 0,
                    },
                    "meta": img.get("meta") if with_meta else None,
                    "username": img.get("username") or (version[1].item.get("creator") or {}).get("username")
                    if version
                    else img.get("username"),
                    "baseModel": version[0].get("baseModel") if version else None,
                    "modelVersionIds": [int(img["modelVersionId"])],
                }
            )
        metadata: dict[str, Any] = {}
        if offset + limit < len(pool):
            metadata["nextCursor"] = str(offset + limit)
            metadata["nextPage"] = self.next_url("/api/v1/images", qs, str(offset + limit))
        return json.dumps({"items": items, "metadata": metadata}, separators=(",", ":")).encode()

    # -- Hugging Face

    def hf_models(self, qs: dict[str, list[str]]) -> tuple[bytes, dict[str, str]]:
        """HF list: AND tag filters, search, author, sort (desc), Link-header cursor paging."""
        corpus = self.server.corpus
        filters = [f.lower() for f in qs.get("filter", [])]
        searches = [s.lower() for s in qs.get("search", [])]
        author = one(qs, "author")
        pipeline = one(qs, "pipeline_tag")
        limit = int_param(qs, "limit", 1000, 1, 1000)
        full = (one(qs, "full") or "").lower() in ("true", "1")
        card = (one(qs, "cardData") or "").lower() in ("true", "1")
        expand = qs.get("expand", []) + qs.get("expand[]", [])
        if expand and (full or card or one(qs, "config")):
            raise ApiError(400, "expand cannot be combined with full, cardData or config")
        sort = one(qs, "sort")

        def keep(m: dict[str, Any]) -> bool:
            tags = {str(t).lower() for t in m.get("tags", [])}
            return (
                all(f in tags or f == str(m.get("id", "")).lower() for f in filters)
                and all(s in str(m["id"]).lower() for s in searches)
                and (not author or m.get("author") == author)
                and (not pipeline or m.get("pipeline_tag") == pipeline)
            )

        rows = [m for m in corpus.hf_models if keep(m)]
        if sort:
            if sort not in (
                "downloads",
                "likes",
                "createdAt",
                "lastModified",
                "trendingScore",
                "created_at",
                "last_modified",
                "trending_score",
            ):
                raise ApiError(400, f"Invalid sort: {sort}")
            key = {
                "created_at": "createdAt",
                "last_modified": "lastModified",
                "trending_score": "trendingScore",
            }.get(sort, sort)
            rows.sort(key=lambda m: (m.get(key) or 0, m["id"]), reverse=True)
        cursor = one(qs, "cursor")
        offset = 0
        if cursor:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["$offset"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "Invalid cursor") from exc
        page = rows[offset : offset + limit]
        out = []
        for m in page:
            item = dict(m)
            if expand:
                # Only the asked-for properties (plus the ids the Hub always sends).
                out.append({k: item[k] for k in ("_id", "id", *expand) if k in item})
                continue
            if not card:
                item.pop("cardData", None)
            if not full:
                item = {
                    k: item[k]
                    for k in (
                        "_id",
                        "id",
                        "likes",
                        "downloads",
                        "trendingScore",
                        "private",
                        "tags",
                        "pipeline_tag",
                        "library_name",
                        "createdAt",
                        "modelId",
                        "cardData",
                    )
                    if k in item
                }
            out.append(item)
        headers: dict[str, str] = {}
        if offset + limit < len(rows):
            token = base64.urlsafe_b64encode(json.dumps({"$offset": offset + limit}).encode()).decode()
            headers["Link"] = f'<{self.next_url("/api/models", qs, token)}>; rel="next"'
        return json.dumps(out, separators=(",", ":")).encode(), headers

    def hf_model(self, repo: str) -> tuple[bytes, dict[str, str]]:
        item = self.server.corpus.hf_by_id.get(repo)
        if item is None:
            raise ApiError(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
        return json.dumps(item).encode(), {}

    def hf_file(self, repo: str, file_path: str) -> tuple[int, bytes, str, dict[str, str]]:
        """README text or image bytes for a repo file; weights are not served."""
        corpus = self.server.corpus
        item = corpus.hf_by_id.get(repo)
        if item is None:
            raise ApiError(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
        if file_path == "README.md" and repo in corpus.hf_cards:
            return (
                200,
                corpus.hf_cards[repo].encode(),
                "text/plain; charset=utf-8",
                {"ETag": f'"{item.get("sha", "")}"'},
            )
        names = {s["rfilename"] for s in item.get("siblings", [])}
        if file_path in names and file_path.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            return 200, self.png_for(f"/{repo}/{file_path}"), "image/png", {}
        raise ApiError(404, "Entry not found", {"X-Error-Code": "EntryNotFound"})

    def png_for(self, key_path: str) -> bytes:
        """Deterministic URL-path → sample PNG mapping (same for /img/P and /image-proxy?url=…/P)."""
        pngs = self.server.corpus.pngs
        digest = hashlib.sha1(key_path.encode()).digest()
        return pngs[int.from_bytes(digest[:4], "big") % len(pngs)]


# ---------------------------------------------------------------------------------------------
# Entry points


def make_options(**options: Any) -> Options:
    """Build Options from keyword arguments (accepts ``data``/``data_dir`` and string fault lists)."""
    if "data" in options:
        options["data_dir"] = options.pop("data")
    faults = options.get("faults")
    if isinstance(faults, str):
        options["faults"] = tuple(f.strip() for f in faults.split(",") if f.strip())
    elif faults is not None:
        options["faults"] = tuple(faults)
    bad = [f for f in options.get("faults", ()) if f not in FAULT_KINDS]
    if bad:
        raise ValueError(f"unknown fault kinds {bad}; choose from {FAULT_KINDS}")
    if "mutate_truth" in options:
        options["truth_path"] = options.pop("mutate_truth")
    for key in ("data_dir", "civitai_models", "truth_path", "enums"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    if options.get("host_kind", "red") not in HOST_KINDS:
        raise ValueError(f"host_kind must be one of {HOST_KINDS}")
    if options.get("mutate") is not None:
        options["mutate"] = float(options["mutate"])
        if not 0 <= options["mutate"] <= MAX_MUTATE_FRACTION:
            raise ValueError(f"mutate must be within 0..{MAX_MUTATE_FRACTION}")
    elif options.get("truth_path") is not None:
        raise ValueError("truth_path (--mutate-truth) needs mutate (--mutate FRACTION)")
    if options.get("hf_rate_limit") is not None and int(options["hf_rate_limit"]) < 1:
        raise ValueError("hf_rate_limit must be at least 1")
    if float(options.get("hf_rate_window", 300.0)) <= 0:
        raise ValueError("hf_rate_window must be positive")
    if options.get("now") and not parse_time_ms(options["now"]):
        raise ValueError(f"now must be an ISO timestamp, not {options['now']!r}")
    if "era" in options:
        options["era"] = int(options["era"])
        if options["era"] not in (2023, 2025):
            raise ValueError("era must be 2023 or 2025")
    return Options(**options)


def start_server(**options: Any) -> tuple[ReplayServer, str]:
    """Start a server in a daemon thread; returns (server, base_url). Stop with ``server.shutdown()``."""
    server = ReplayServer(make_options(**options))
    thread = threading.Thread(target=server.serve_forever, name="replay-server", daemon=True)
    thread.start()
    return server, server.base_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Replay Civitai + Hugging Face APIs from a local corpus.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="corpus dir (civitai/, hf/, images/)")
    parser.add_argument(
        "--civitai-models",
        type=Path,
        default=None,
        help=".jsonl or .jsonl.gz of /api/v1/models items (overrides DATA/civitai/models.jsonl)",
    )
    parser.add_argument(
        "--era",
        type=int,
        choices=(2023, 2025),
        default=2025,
        help="2025: strip image meta in /models; 2023: keep it and add totalItems metadata",
    )
    parser.add_argument("--require-token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--faults", default=",".join(FAULT_KINDS), help="comma list of " + ",".join(FAULT_KINDS)
    )
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on injected 429s")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    parser.add_argument(
        "--verbose", action="store_true", help="log method + path (never query/token) to stderr"
    )
    parser.add_argument(
        "--host-kind",
        choices=HOST_KINDS,
        default="red",
        help="red: everything (civitai.red); green: SFW models and PG images only (civitai.com)",
    )
    parser.add_argument(
        "--mutate",
        type=float,
        default=None,
        metavar="FRACTION",
        help=f"serve the 'next day': FRACTION (0..{MAX_MUTATE_FRACTION}) of models/repos get each change",
    )
    parser.add_argument("--mutate-seed", type=int, default=0, help="seed of --mutate's choices")
    parser.add_argument(
        "--mutate-truth", type=Path, default=None, metavar="PATH", help="write the truth JSON"
    )
    parser.add_argument(
        "--fake-weights",
        action="store_true",
        help="rewrite file hashes/sizes to the fake safetensors the download endpoint serves",
    )
    parser.add_argument("--enums", type=Path, default=None, help="JSON served as /api/v1/enums, as is")
    parser.add_argument("--now", default=None, help="ISO end of period windows (default: corpus clock)")
    parser.add_argument(
        "--hf-rate-limit", type=int, default=None, metavar="N", help="HF: 429 after N requests per window"
    )
    parser.add_argument("--hf-rate-window", type=float, default=300.0, help="HF rate-limit window, seconds")
    args = parser.parse_args(argv)
    server = ReplayServer(
        make_options(
            data_dir=args.data,
            civitai_models=args.civitai_models,
            era=args.era,
            host=args.host,
            port=args.port,
            require_token=args.require_token,
            fault_rate=args.fault_rate,
            seed=args.seed,
            faults=args.faults,
            retry_after=args.retry_after,
            latency_ms=args.latency_ms,
            verbose=args.verbose,
            host_kind=args.host_kind,
            mutate=args.mutate,
            mutate_seed=args.mutate_seed,
            truth_path=args.mutate_truth,
            fake_weights=args.fake_weights,
            enums=args.enums,
            now=args.now,
            hf_rate_limit=args.hf_rate_limit,
            hf_rate_window=args.hf_rate_window,
        )
    )
    print(f"READY {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way to stop it interactively
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
