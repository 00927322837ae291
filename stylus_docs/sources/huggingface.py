"""Hugging Face Hub: LoRA repos from ``/api/models`` (``Link`` paging) and each repo's README card.

Facts this follows (docs/API-NOTES.md §2): the listing body is a JSON array, the next page URL is in
``Link: <…>; rel="next"``; ``filter`` is repeatable with AND semantics; ``full=true`` adds ``sha``;
the card is ``/{repo}/resolve/{revision}/README.md``. 429s carry ``RateLimit: "api";r=0;t=N``, which
:class:`~stylus_docs.http.HttpClient` honours.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from stylus_docs import safe_json
from stylus_docs.errors import SkipRecord
from stylus_docs.http import HttpClient, HttpFailure
from stylus_docs.sources import Page

logger = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
URL_ENV = "HF_ENDPOINT"
DEFAULT_URL = "https://huggingface.co"
PAGE_LIMIT = 100
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True, slots=True)
class HfQuery:
    """Listing filters of one Hub crawl.

    Args:
        filters: tag filters, all required (AND), e.g. ``("lora",)``.
        search: substring of the repo id.
        author: user or organisation.
        sort: ``downloads``, ``likes``, ``createdAt``, ``lastModified`` or ``trendingScore``.
        page_size: items per listing page (the Hub's ``limit``); later pages come from ``Link`` headers.
    """

    filters: tuple[str, ...] = ("lora",)
    search: str | None = None
    author: str | None = None
    sort: str | None = None
    page_size: int = PAGE_LIMIT

    def params(self) -> list[tuple[str, str]]:
        """Query params of the first listing page."""
        pairs = [("filter", f) for f in self.filters]
        for key, value in (("search", self.search), ("author", self.author), ("sort", self.sort)):
            if value:
                pairs.append((key, value))
        pairs += [("full", "true"), ("limit", str(self.page_size))]
        return pairs


def repo_id(item: Any, checked: bool = False) -> str:
    """Validate one listing item; return its ``owner/name`` repo id.

    ``checked``: the item is known to pass :func:`stylus_docs.safe_json.find_problem` (its page passed
    :func:`~stylus_docs.safe_json.all_clean`), so it is not walked again.

    Raises:
        SkipRecord: ``invalid_item`` for a non-object or a missing/malformed id; ``too_deep``,
            ``non_finite_number`` or ``invalid_unicode`` for what :mod:`stylus_docs.safe_json` refuses.
    """
    if not isinstance(item, dict):
        raise SkipRecord("invalid_item", f"item is {type(item).__name__}, not an object")
    rid = item.get("id", item.get("modelId"))
    if not isinstance(rid, str) or not _REPO_ID.match(rid) or ".." in rid:
        raise SkipRecord("invalid_item", f"missing or malformed repo id: {str(rid)[:60]!r}")
    problem = None if checked else safe_json.find_problem(item)
    if problem is not None:
        raise SkipRecord(problem[0], f"{rid}: {problem[1]}")
    return rid


class HuggingFaceSource:
    """Endpoints of the Hugging Face Hub API.

    Args:
        client: an :class:`HttpClient` whose base URL is the Hub root (``https://huggingface.co``).
    """

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def fetch_page(self, params: list[tuple[str, str]], next_url: str | None) -> Page:
        """Fetch the first page (``next_url`` None) or the page at ``next_url`` (from a Link header).

        Raises:
            HttpFailure: the request failed.
            SkipRecord: ``invalid_page`` when the body is not a JSON array.
        """
        # Lenient parse: items are checked one by one (repo_id), so one hostile item costs one record.
        if next_url:
            body, resp = self.client.get_json(next_url, strict=False)
        else:
            body, resp = self.client.get_json("/api/models", params, strict=False)
        if not isinstance(body, list):
            raise SkipRecord("invalid_page", f"listing body is {type(body).__name__}, not an array")
        nxt = (resp.links.get("next") or {}).get("url")
        return Page(items=body, next=nxt or None, requested=next_url)

    def fetch_card(self, item: dict[str, Any]) -> tuple[str | None, str | None]:
        """README of ``item``'s repo at its ``sha`` (else main): ``(text, None)`` or ``(None, reason)``.

        The text is capped by the client's ``max_text_bytes`` (2 MiB by default; reason ``body_too_large``).
        """
        rid = repo_id(item)
        sha = item.get("sha")
        revision = sha if isinstance(sha, str) and _SHA.match(sha) else "main"
        path = f"/{quote(rid)}/resolve/{revision}/README.md"
        try:
            text, _ = self.client.get_text(path)
        except HttpFailure as exc:
            return None, exc.reason
        return text, None
