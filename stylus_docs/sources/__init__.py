"""API clients for the adapter catalogues (Civitai REST v1, Hugging Face Hub).

Each source is a thin layer over :class:`stylus_docs.http.HttpClient`: it knows the endpoints, the
query parameters and the paging scheme, validates the shape of what comes back, and raises
:class:`~stylus_docs.errors.SkipRecord` (or :class:`~stylus_docs.http.HttpFailure`) for records it
cannot use. Resume, snapshots and concurrency live in :mod:`stylus_docs.crawl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Page:
    """One listing page.

    Attributes:
        items: the raw items exactly as the API returned them (unvalidated).
        next: the cursor (Civitai) or URL (Hugging Face) of the next page; None at the end.
        requested: the cursor/URL that produced this page (None for the first page).
    """

    items: list[Any]
    next: str | None
    requested: str | None = None
