"""API clients for the adapter catalogues (Civitai REST v1, Hugging Face Hub).

Each source is a thin layer over :class:`stylus_docs.http.HttpClient`: it knows the endpoints, the
query parameters and the paging scheme, validates the shape of what comes back, and raises
:class:`~stylus_docs.errors.SkipRecord` (or :class:`~stylus_docs.http.HttpFailure`) for records it
cannot use. Resume, snapshots and concurrency live in :mod:`stylus_docs.crawl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Hosts example images may be fetched from by default (entries as in
#: :func:`stylus_docs.http.host_allowed`): Civitai's image CDN (API-NOTES §1.3: every ``images[].url`` is
#: ``https://image.civitai.com/...``) and the Hugging Face Hub, whose widget images are
#: ``https://huggingface.co/{repo}/resolve/main/{path}`` (API-NOTES §2.3) and redirect, for LFS/Xet files,
#: to the Hub's storage and CDN hosts (hub-docs "Downloading behind a proxy or firewall"; the legacy
#: ``cdn-lfs`` and ``cas-bridge`` names are kept because older revisions still redirect there).
DEFAULT_IMAGE_HOSTS: tuple[str, ...] = (
    "image.civitai.com",
    "huggingface.co",
    "hf.co",
    "*.cdn.hf.co",  # regional CDN edges, e.g. us.aws.cdn.hf.co
    "cdn-lfs.huggingface.co",
    "cdn-lfs.hf.co",
    "cdn-lfs-us-1.hf.co",
    "cdn-lfs-eu-1.hf.co",
    "cas-bridge.xethub.hf.co",
    "transfer.xethub.hf.co",
    "transfer.xethub-eu.hf.co",
    "cas-server.xethub.hf.co",
    "cas-server.xethub-eu.hf.co",
)


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
