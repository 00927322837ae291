"""Where adapter files come from: the SHA-256-verified :class:`~stylus_docs.download.AdapterCache`.

The cache does the one SHA-256 check (on download, or on import of a local file); a file in it is always
the bytes its name says, so a cached file is used as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stylus_docs.download import AdapterCache, DownloadConfig, normalize_sha256
from stylus_docs.errors import SkipRecord
from stylus_docs.safetensors_check import refuse_unsafe_format


class AdapterStore:
    """Adapter files from the download cache (downloaded on demand, hash-verified).

    ``root`` is an :class:`~stylus_docs.download.AdapterCache` root; a flat ``root/<sha256>.safetensors``
    is accepted too and imported into the cache (verified) on first use.

    Args:
        root: the cache directory (``--adapters-dir``, ``RenderConfig.cache_dir``).
        download: fetch missing files from the card's ``download_url`` (otherwise skip them).
        config: download settings (retries, deadlines, size limit).
        local: ``{adapter_id: file}`` of the user's own library (:func:`stylus_docs.library.local_weights`,
            ``--local DIR``): used in place, never copied or downloaded. ``stylus-docs link`` hashed each
            file and ``local_weights`` drops any whose size or mtime changed since, so that hash is the
            one SHA-256 check.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        download: bool = True,
        config: DownloadConfig | None = None,
        local: Mapping[str, Path] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.cache = AdapterCache(self.root, config)
        self.download = download
        self.local = dict(local or {})
        self.local_hits = 0  # adapters served from the user's library (reported by generate)

    def path(self, card: Mapping[str, Any], verified: str | os.PathLike[str] | None = None) -> Path:
        """The verified local file of ``card``'s adapter.

        Args:
            card: AdapterCard dict (``sha256``, ``file_name``, ``download_url``, ``file_size_kb``).
            verified: a file the build's download stage already fetched through this cache; used as is.

        Raises:
            SkipRecord: the adapter cannot be had (pickle format, no hash, download failure, mismatch,
                not cached with downloads off); ``reason`` is one of :mod:`stylus_docs.download`'s.
        """
        if verified:
            return Path(verified)
        linked = self.local.get(str(card.get("adapter_id") or ""))
        if linked is not None:
            refuse_unsafe_format(linked.name)
            self.local_hits += 1
            return linked
        file_name = str(card.get("file_name") or "")
        if file_name:
            refuse_unsafe_format(file_name)
        sha = normalize_sha256(card.get("sha256"))
        if sha is None:
            raise SkipRecord("no_sha256", "the card has no SHA-256 to verify the file against")
        cached = self.cache.lookup(sha)
        if cached is not None:
            return cached
        flat = self.root / f"{sha}.safetensors"
        if flat.is_file():
            return self.cache.add_file(flat, sha, file_name or flat.name)
        if not self.download:
            raise SkipRecord("not_cached", f"{sha[:12]}… is not in {self.root} and downloads are off")
        return self.cache.fetch(card)
