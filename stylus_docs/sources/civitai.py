"""Civitai REST API v1: cursor-paged model listing, version details and example images.

Facts this follows (docs/API-NOTES.md §1): ``page`` is ignored by the server and capped
(``page*limit > 1000`` → a deterministic 429), so listing uses ``cursor`` only, copying
``metadata.nextCursor`` until it is absent; ``types``/``baseModels`` are repeated params; images inside
``/models`` carry no ``meta`` since 2024, so generation metadata comes from
``/api/v1/model-versions/{id}`` (up to 10 images) and ``/api/v1/images?modelVersionId=…&withMeta=true``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stylus_docs import safe_json
from stylus_docs.errors import FatalError, SkipRecord
from stylus_docs.http import HttpClient
from stylus_docs.sources import Page

logger = logging.getLogger(__name__)

#: Environment variable of the green host's API token (sent as ``Authorization: Bearer``).
TOKEN_ENV = "CIVITAI_API_TOKEN"
#: Environment variable of the green host's base URL (without ``/api/v1``).
URL_ENV = "CIVITAI_API_URL"
DEFAULT_URL = "https://civitai.com"
#: The two hosts since April 2026 (docs/API-NOTES.md §1.12): civitai.com ("green") serves SFW content
#: only, civitai.red carries everything. Same paths on both; green filters without saying so.
HOSTS = ("green", "red")
HOST_URLS = {"green": DEFAULT_URL, "red": "https://civitai.red"}
#: Base-URL override per host (``--api-url`` wins over both).
HOST_URL_ENVS = {"green": URL_ENV, "red": "CIVITAI_RED_API_URL"}
#: Each host gets only its own token: whether the two hosts share tokens is unknown, so a green token is
#: never sent to red (there is no fallback from one variable to the other).
HOST_TOKEN_ENVS = {"green": TOKEN_ENV, "red": "CIVITAI_RED_API_TOKEN"}
PAGE_LIMIT = 100
SORTS = ("Highest Rated", "Most Downloaded", "Most Liked", "Most Discussed", "Most Collected",
         "Most Images", "Newest", "Oldest")
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")
#: Images key attached to each version record (contract: raw snapshots, versions-*.jsonl.gz).
IMAGES_KEY = "_images"


@dataclass(frozen=True, slots=True)
class CivitaiQuery:
    """Listing filters of one crawl (validated here, so a typo fails before any request).

    Args:
        types: model types (``LORA``, ``LoCon``, ``DoRA``…); repeated ``types`` params.
        base_models: base model names; each becomes its own listing partition.
        sort: one of :data:`SORTS` (None: server default).
        period: one of :data:`PERIODS`.
        nsfw: send ``nsfw=true`` (all browsing levels); otherwise the server returns PG only.
        query: full-text search.
        username: creator filter.
        tag: tag name filter.
    """

    types: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    sort: str | None = None
    period: str | None = None
    nsfw: bool = False
    query: str | None = None
    username: str | None = None
    tag: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.sort is not None and self.sort not in SORTS:
            raise FatalError(f"unknown --sort {self.sort!r}; expected one of: {', '.join(SORTS)}")
        if self.period is not None and self.period not in PERIODS:
            raise FatalError(f"unknown --period {self.period!r}; expected one of: {', '.join(PERIODS)}")

    def partitions(self) -> list[dict[str, str | None]]:
        """Independent listing partitions: one per (type, base model) pair given, else one for all."""
        types: list[str | None] = list(self.types) or [None]
        bases: list[str | None] = list(self.base_models) or [None]
        if len(types) == 1:
            # One type (or none): no point splitting by type, the filter is applied to every partition.
            return [{"type": None, "base_model": b} for b in bases]
        return [{"type": t, "base_model": b} for t in types for b in bases]

    def params(self, partition: dict[str, str | None]) -> list[tuple[str, str]]:
        """Query params (pairs; repeated keys) of ``partition``'s listing, without cursor."""
        pairs: list[tuple[str, str]] = [("limit", str(PAGE_LIMIT))]
        if partition.get("type"):
            pairs.append(("types", str(partition["type"])))
        else:
            pairs.extend(("types", t) for t in self.types)
        if partition.get("base_model"):
            pairs.append(("baseModels", str(partition["base_model"])))
        for key, value in (("sort", self.sort), ("period", self.period), ("query", self.query),
                           ("username", self.username), ("tag", self.tag)):
            if value:
                pairs.append((key, value))
        if self.nsfw:
            pairs.append(("nsfw", "true"))
        pairs.extend(self.extra)
        return pairs


def partition_key(partition: dict[str, str | None]) -> str:
    """Stable name of a partition, used as its key in ``state.json``."""
    return f"type={partition.get('type') or '*'}|base={partition.get('base_model') or '*'}"


def model_id(item: Any, checked: bool = False) -> int:
    """Validate one ``/api/v1/models`` item enough to store it; return its model id.

    ``checked``: the item is known to pass :func:`stylus_docs.safe_json.find_problem` (its page passed
    :func:`~stylus_docs.safe_json.all_clean`), so it is not walked again.

    Raises:
        SkipRecord: ``invalid_item`` when the item is not an object, has no integer id, or its
            ``modelVersions`` is not a list of objects; ``too_deep``, ``non_finite_number`` or
            ``invalid_unicode`` when it holds what :mod:`stylus_docs.safe_json` refuses (listing pages
            are parsed leniently so that such an item costs one record, not the page).
    """
    if not isinstance(item, dict):
        raise SkipRecord("invalid_item", f"item is {type(item).__name__}, not an object")
    mid = item.get("id")
    if isinstance(mid, bool) or not isinstance(mid, int) or mid <= 0:
        raise SkipRecord("invalid_item", f"missing or non-integer model id: {str(mid)[:40]!r}")
    problem = None if checked else safe_json.find_problem(item)
    if problem is not None:
        # Stored as is, this item would be a snapshot line the build cannot read back (safe_json).
        raise SkipRecord(problem[0], f"model {mid}: {problem[1]}")
    versions = item.get("modelVersions", [])
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        raise SkipRecord("invalid_item", f"model {mid}: modelVersions is not a list of objects")
    return mid


def version_ids(item: dict[str, Any]) -> tuple[list[int], list[str]]:
    """Version ids of a validated model item, and a problem note for each unusable version entry."""
    ids: list[int] = []
    problems: list[str] = []
    for version in item.get("modelVersions") or []:
        vid = version.get("id")
        if isinstance(vid, int) and not isinstance(vid, bool) and vid > 0:
            ids.append(vid)
        else:
            problems.append(f"model {item.get('id')}: version without integer id ({str(vid)[:40]!r})")
    return ids, problems


def page_from_body(body: Any, requested: str | None) -> Page:
    """Validate a listing body ``{"items": [...], "metadata": {...}}`` into a :class:`Page`.

    Raises:
        SkipRecord: ``invalid_page`` when the body has the wrong shape (the partition cannot go on).
    """
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise SkipRecord("invalid_page", f"listing body is not {{items: [...]}} (got {type(body).__name__})")
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise SkipRecord("invalid_page", "metadata is not an object")
    problem = safe_json.find_problem(meta)
    if problem is not None:
        # The cursor goes into state.json and the next URL: it must be plain JSON.
        raise SkipRecord("invalid_page", f"metadata: {problem[0]}: {problem[1]}")
    nxt = meta.get("nextCursor")
    if nxt is None and isinstance(meta.get("nextPage"), str):
        # Some eras only give nextPage; follow it only when it carries a cursor (page numbers are capped).
        nxt = (parse_qs(urlsplit(meta["nextPage"]).query).get("cursor") or [None])[0]
    if nxt is not None and not isinstance(nxt, (str, int)):
        raise SkipRecord("invalid_page", f"nextCursor has type {type(nxt).__name__}")
    return Page(items=body["items"], next=None if nxt in (None, "") else str(nxt), requested=requested)


class CivitaiSource:
    """Endpoints of the Civitai REST API v1.

    Args:
        client: an :class:`HttpClient` whose base URL is the site root (``https://civitai.com``).
        max_images_per_version: extra ``/api/v1/images`` items fetched per version (0: none).
        nsfw: ask ``/api/v1/images`` for every browsing level (otherwise PG only, like the server).
    """

    def __init__(self, client: HttpClient, max_images_per_version: int = 10, nsfw: bool = False) -> None:
        self.client = client
        self.max_images_per_version = max(0, max_images_per_version)
        self.nsfw = nsfw

    def fetch_page(self, params: list[tuple[str, str]], cursor: str | None) -> Page:
        """Fetch one listing page (``cursor`` None: the first page)."""
        pairs = list(params) + ([("cursor", cursor)] if cursor else [])
        # Lenient parse: items are checked one by one (model_id), so one hostile item costs one record.
        body, _ = self.client.get_json("/api/v1/models", pairs, strict=False)
        return page_from_body(body, cursor)

    def iter_pages(self, params: list[tuple[str, str]], cursor: str | None = None) -> Iterator[Page]:
        """Follow ``nextCursor`` from ``cursor`` until it is absent (stops on a repeated cursor)."""
        seen: set[str] = set()
        while True:
            page = self.fetch_page(params, cursor)
            yield page
            if page.next is None or page.next in seen:
                return
            seen.add(page.next)
            cursor = page.next

    def fetch_version(self, version_id: int) -> dict[str, Any]:
        """``/api/v1/model-versions/{id}`` plus up to ``max_images_per_version`` images under ``_images``.

        A failure of the images call does not lose the version: ``_images`` is then ``[]`` and
        ``_images_error`` holds the reason.

        Raises:
            HttpFailure: the version call failed (a body refused by :mod:`stylus_docs.safe_json` too:
                reason ``too_deep``, ``non_finite_number`` or ``invalid_unicode``).
            SkipRecord: ``invalid_version`` when the response is not a version object with this id.
        """
        body, _ = self.client.get_json(f"/api/v1/model-versions/{int(version_id)}")
        if not isinstance(body, dict) or body.get("id") != version_id:
            got = body.get("id") if isinstance(body, dict) else type(body).__name__
            raise SkipRecord("invalid_version", f"version {version_id}: response id is {str(got)[:40]!r}")
        if self.max_images_per_version:
            try:
                body[IMAGES_KEY] = self.fetch_images(version_id)
            except SkipRecord as exc:  # HttpFailure is a SkipRecord too
                body[IMAGES_KEY] = []
                body["_images_error"] = exc.reason
        return body

    def fetch_enums(self) -> dict[str, Any]:
        """``/api/v1/enums``: ``{ModelType, ModelFileType, ActiveBaseModel, BaseModel, BaseModelType}``.

        Raises:
            HttpFailure: the call failed.
            SkipRecord: ``invalid_enums`` when the body is not a JSON object of lists.
        """
        body, _ = self.client.get_json("/api/v1/enums")
        if not isinstance(body, dict) or not body:
            raise SkipRecord("invalid_enums", f"enums body is {type(body).__name__}, not a non-empty object")
        bad = sorted(str(k)[:40] for k, v in body.items() if not isinstance(v, list))
        if bad:
            raise SkipRecord("invalid_enums", f"enums keys without a list: {', '.join(bad[:5])}")
        return body

    def fetch_images(self, version_id: int) -> list[Any]:
        """Up to ``max_images_per_version`` items of ``/api/v1/images?modelVersionId=…&withMeta=true``."""
        out: list[Any] = []
        cursor: str | None = None
        seen: set[str] = set()
        while len(out) < self.max_images_per_version:
            params = [("modelVersionId", str(version_id)), ("withMeta", "true"),
                      ("limit", str(min(100, self.max_images_per_version - len(out))))]
            if self.nsfw:
                params.append(("browsingLevel", "31"))
            if cursor:
                params.append(("cursor", cursor))
            body, _ = self.client.get_json("/api/v1/images", params)
            page = page_from_body(body, cursor)
            out.extend(page.items[: self.max_images_per_version - len(out)])
            if page.next is None or page.next in seen or not page.items:
                break
            seen.add(page.next)
            cursor = page.next
        return out
