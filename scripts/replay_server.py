#!/usr/bin/env python3
"""Local replay server for the Civitai REST API v1 and the Hugging Face Hub API.

Serves a saved corpus (default ``data/sample``) on loopback with the real paging/filter semantics
described in docs/API-NOTES.md §1–2, plus seeded fault injection so crawlers can be tested
against 429/5xx/HTML/truncated/dropped responses without touching the network.

Endpoints
    GET /api/v1/models                          Civitai list (cursor paging, filters, page cap 429)
    GET /api/v1/models/{id}                     one model
    GET /api/v1/model-versions/{id}             flat version (images with meta, ``air``)
    GET /api/v1/images?modelVersionId=…         image list (meta only with withMeta=true)
    GET /api/models                             HF list (JSON array, ``Link: <…>; rel="next"``)
    GET /api/models/{owner}/{name}              HF model info
    GET /{owner}/{name}/resolve/{rev}/{path}    README.md text or a PNG for image siblings
    GET /img/{path}                             PNG for a CDN image; map ``https://image.civitai.com/P``
                                                to ``{base}/img/P`` (same PNG as ``/image-proxy``)
    GET /image-proxy?url=<CDN URL>              PNG for any image URL
    GET /__stats                                request/fault counters (never faulted, no auth)

CLI:   python scripts/replay_server.py --port 0 [--data DIR] [--civitai-models FILE] [--era 2025]
       [--require-token TOKEN] [--fault-rate 0.1 --seed 7 --faults 429,5xx,html,truncated,drop]
       [--retry-after 1] [--latency-ms 50]
       prints one line ``READY http://127.0.0.1:PORT`` and serves until killed.
In-process:  server, base_url = start_server(data_dir=..., fault_rate=...); ...; server.shutdown()
"""

import argparse
import base64
import gzip
import hashlib
import json
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
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "sample"
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


SORT_NAMES = ("Highest Rated", "Most Downloaded", "Newest")


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


def sort_key(entry: ModelEntry, sort: str) -> tuple[int, ...]:
    """Ascending tuple whose order equals the API's descending sort (ties broken by id)."""
    mid = int(entry.item["id"])
    if sort == "Most Downloaded":
        return (-entry.downloads, -entry.thumbs, -mid)
    if sort == "Newest":
        return (-entry.last_ms, -mid)
    return (-entry.thumbs, -entry.downloads, -mid)


def cursor_for(key: tuple[int, ...], sort: str) -> str:
    """Opaque cursor text: the sort values joined with ``|`` (like the real API)."""
    if sort == "Newest":
        return f"{format_time_ms(-key[0])}|{-key[1]}"
    return "|".join(str(-k) for k in key)


def parse_cursor(cursor: str, sort: str) -> tuple[int, ...]:
    """Inverse of cursor_for; malformed input → 400."""
    parts = cursor.split("|")
    try:
        if sort == "Newest":
            if len(parts) != 2:
                raise ValueError("parts")
            dt = datetime.strptime(parts[0], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            return (-int(round(dt.timestamp() * 1000)), -int(parts[1]))
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


def load_corpus(opts: Options) -> Corpus:
    """Read the corpus files and build every index the handlers use."""
    data = Path(opts.data_dir)
    models_path = Path(opts.civitai_models) if opts.civitai_models else data / "civitai" / "models.jsonl"
    items = read_jsonl(models_path) if models_path.exists() else []
    images_path = models_path.parent / "images.jsonl"
    images = (
        read_jsonl(images_path) if images_path.exists() and not opts.civitai_models else derive_images(items)
    )

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
        )
        entry.json_all = json.dumps(render_item(item, opts.era, sfw_images=False), separators=(",", ":"))
        entry.json_sfw = json.dumps(render_item(item, opts.era, sfw_images=True), separators=(",", ":"))
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

    hf_path = data / "hf" / "models.jsonl"
    hf_models = read_jsonl(hf_path) if hf_path.exists() else []
    cards: dict[str, str] = {}
    cards_dir = data / "hf" / "cards"
    if cards_dir.is_dir():
        for card in sorted(cards_dir.glob("*.md")):
            cards[card.stem.replace("__", "/", 1)] = card.read_text(encoding="utf-8")

    png_dir = data / "images"
    pngs = [p.read_bytes() for p in sorted(png_dir.glob("*.png"))] if png_dir.is_dir() else []
    if not pngs:
        pngs = [minimal_png(i) for i in range(8)]
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

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "faults": dict(self.faults),
                "faults_total": sum(self.faults.values()),
                "statuses": dict(self.statuses),
            }

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.faults.clear()
            self.statuses.clear()
            self.streak.clear()


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


class ReplayServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the corpus, options and fault plan."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.corpus = load_corpus(opts)
        self.faults = FaultPlan(opts.fault_rate, opts.seed, opts.faults)
        super().__init__((opts.host, opts.port), Handler)

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
            self.send_json(200, self.server.faults.snapshot())
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
        if opts.require_token and not self.authorized(qs):
            self.send_json(401, {"error": "Unauthorized"})
            return
        try:
            status, body, ctype, headers = self.route(path, qs)
        except ApiError as err:
            status, ctype, headers = err.status, "application/json; charset=utf-8", err.headers
            body = json.dumps({"error": err.error}, separators=(",", ":")).encode()
        if fault == "truncated":
            body = body[: max(1, len(body) // 2)]
            status = 200
        self.send_body(status, body, ctype, headers)

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
        if path in ("/api/v1/models", "/api/v1/models/"):
            body, headers = self.civitai_models(qs)
            return 200, body, json_type, headers
        m = re.fullmatch(r"/api/v1/models/(\d+)", path)
        if m:
            return 200, self.civitai_model(int(m.group(1))), json_type, {}
        m = re.fullmatch(r"/api/v1/model-versions/(\d+)", path)
        if m:
            return 200, self.civitai_version(int(m.group(1))), json_type, {}
        if path in ("/api/v1/images", "/api/v1/images/"):
            return 200, self.civitai_images(qs), json_type, {}
        if path in ("/api/models", "/api/models/"):
            body, headers = self.hf_models(qs)
            return 200, body, json_type, headers
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)", path)
        if m:
            item = self.server.corpus.hf_by_id.get(m.group(1))
            if item is None:
                raise ApiError(404, "Repository not found")
            return 200, json.dumps(item).encode(), json_type, {}
        if path.startswith("/img/"):
            return 200, self.png_for(path[len("/img") :]), "image/png", {}
        if path == "/image-proxy":
            url = one(qs, "url")
            if not url:
                raise ApiError(400, "missing url")
            return 200, self.png_for(urlsplit(url).path), "image/png", {}
        m = re.fullmatch(r"/([^/]+/[^/]+)/(?:resolve|raw)/([^/]+)/(.+)", path)
        if m:
            return self.hf_file(m.group(1), m.group(3))
        raise ApiError(404, "Not found")

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
        elif sort == "Oldest":
            sort = "Newest"  # served newest-first; documented limitation
        if sort not in SORT_NAMES:
            raise ApiError(
                400, {"issues": [{"code": "invalid_enum_value", "path": ["sort"]}], "name": "ZodError"}
            )
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
                        render_item(e.item, opts.era, not nsfw_all, base_models), separators=(",", ":")
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
    for key in ("data_dir", "civitai_models"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
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
