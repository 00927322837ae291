"""Retrieval of the composer's candidates: top-K hits of the query module plus their card fields.

The query module ranks (hybrid dense + BM25, filters as bound parameters); the card fields the composer
shows (title, tags, refined description, category, weight, trigger words) are read once per process from
the release's adapters table — only the files the manifest lists, never the embedding column.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from stylus_docs.compose.types import Candidate, ComposeSettings
from stylus_docs.errors import FatalError
from stylus_docs.query import Release, open_release
from stylus_docs.release import load_manifest, read_table, resolve_build

log = logging.getLogger(__name__)

#: Columns the composer and the generator read from the adapters table (all optional but adapter_id).
CARD_COLUMNS: tuple[str, ...] = (
    "adapter_id",
    "title",
    "category",
    "recommended_weight",
    "tags",
    "trigger_words",
    "refined_description",
    "description",
    "base_model",
    "nsfw",
    "type",
    "sha256",
    "download_url",
    "file_name",
    "file_size_kb",
)


class CardTable:
    """Card fields of every adapter of one build, keyed by adapter id (loaded once).

    Args:
        build_dir: a build directory (``DOCS/builds/<id>``).
        manifest: its validated manifest.
    """

    def __init__(self, build_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.build_dir = Path(build_dir)
        table = read_table(build_dir, manifest, "adapters", list(CARD_COLUMNS))
        if "adapter_id" not in table.column_names:
            raise FatalError(f"release {build_dir} has no adapter_id column")
        self.rows: dict[str, dict[str, Any]] = {row["adapter_id"]: row for row in table.to_pylist()}

    def get(self, adapter_id: str) -> dict[str, Any] | None:
        """The card row of ``adapter_id`` (None when the release does not have it)."""
        return self.rows.get(adapter_id)

    def candidate(self, index: int, adapter_id: str, score: float = 0.0, components: Any = None) -> Candidate:
        """A :class:`Candidate` for ``adapter_id`` (card fields filled from the table)."""
        row = self.rows.get(adapter_id) or {"adapter_id": adapter_id}
        weight = row.get("recommended_weight")
        return Candidate(
            index=index,
            adapter_id=adapter_id,
            title=row.get("title") or "",
            category=(row.get("category") or "").strip().lower(),
            recommended_weight=None if weight is None else round(float(weight), 4),
            tags=list(row.get("tags") or []),
            trigger_words=list(row.get("trigger_words") or []),
            description=row.get("refined_description") or row.get("description") or "",
            base_model=row.get("base_model") or "",
            nsfw=bool(row.get("nsfw") or False),
            score=float(score or 0.0),
            components={k: float(v) for k, v in dict(components or {}).items() if isinstance(v, int | float)},
        )


class CandidateSource:
    """An opened release that yields composer candidates for a prompt.

    Args:
        docs: release root or build directory.
        release: an already opened query release (``stylus_docs.query.open_release``); opened lazily
            from ``docs`` when None.
    """

    def __init__(self, docs: str | os.PathLike[str], release: Release | None = None) -> None:
        self.docs = str(docs)
        self.build_dir = resolve_build(docs)
        self.manifest = load_manifest(self.build_dir)
        self.build_id = str(self.manifest["build_id"])
        self._release = release
        self._cards: CardTable | None = None

    @property
    def cards(self) -> CardTable:
        """The card table of the build (loaded on first use)."""
        if self._cards is None:
            self._cards = CardTable(self.build_dir, self.manifest)
        return self._cards

    @property
    def release(self) -> Release:
        """The query release (opened on first use)."""
        if self._release is None:
            self._release = open_release(self.build_dir)
        return self._release

    def _filters(self, settings: ComposeSettings) -> dict[str, Any]:
        filters: dict[str, Any] = {}
        if settings.base_model:
            filters["base_model"] = settings.base_model
        if settings.include_nsfw:
            filters["include_nsfw"] = True
        return filters

    def search_many(
        self, texts: list[str], settings: ComposeSettings, k: int | None = None
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        """Hybrid search of several texts with the composer's filters (one embedding batch).

        Returns:
            Per text, ``(adapter_id, score, components)`` best first.
        """
        if not texts:
            return []
        batches = self.release.search_batch(texts, k=k or settings.top_k, **self._filters(settings))
        return [[(h.adapter_id, float(h.score), h.components) for h in hits] for hits in batches]

    def search(
        self, text: str, settings: ComposeSettings, k: int | None = None
    ) -> list[tuple[str, float, Any]]:
        """Hybrid search of one text (see :meth:`search_many`)."""
        return self.search_many([text], settings, k)[0]

    def candidates(
        self, prompt: str, settings: ComposeSettings, hits: list[tuple[str, float, Any]] | None = None
    ) -> list[Candidate]:
        """The top-K candidates for ``prompt``, indexed 0..K-1 in retrieval order.

        Args:
            prompt: the prompt.
            settings: top-K and filters.
            hits: the prompt's search hits when already retrieved (see :meth:`search_many`).
        """
        out: list[Candidate] = []
        seen: set[str] = set()
        for aid, score, components in hits if hits is not None else self.search(prompt, settings):
            if aid in seen:
                continue
            seen.add(aid)
            out.append(self.cards.candidate(len(out), aid, score, components))
        return out
