"""Retrieval of the composer's candidates: top-K hits of the query module plus their card fields.

The query module ranks (hybrid dense + BM25); the card fields the composer shows (title, tags, refined
description, category, weight, trigger words, base model and its family) are read once per process from
the release's adapters table — only the files the manifest lists, never the embedding column.

Retrieval here is two steps so one prompt can be ranked under several row masks without re-embedding:
:meth:`CandidateSource.score` computes the dense and BM25 score vectors of all texts once,
:meth:`CandidateSource.rank` fuses them under a mask (NSFW, one base-model family, the user's linked
library). A composition never mixes families, so each family is ranked on its own: the top-K of SD 1.x
adapters, not the SD 1.x adapters that happen to be in a mixed top-K.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stylus_docs.compose.families import AUTO_EXCLUDED, family_of
from stylus_docs.compose.rules import NameRules, catalogue_common_words
from stylus_docs.compose.types import Candidate, ComposeSettings
from stylus_docs.errors import FatalError
from stylus_docs.query import Release, open_release
from stylus_docs.query.core import Filters, fuse
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
    "base_model_family",
    "nsfw",
    "type",
    "sha256",
    "download_url",
    "file_name",
    "file_size_kb",
)

#: ``(adapter_id, score, components)`` best first, per text.
Hits = list[tuple[str, float, dict[str, Any]]]


class CardTable:
    """Card fields of every adapter of one build, keyed by adapter id (loaded once).

    Args:
        build_dir: a build directory (``DOCS/builds/<id>``).
        manifest: its validated manifest.
    """

    def __init__(self, build_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.build_dir = Path(build_dir)
        self._manifest = manifest
        table = read_table(build_dir, manifest, "adapters", list(CARD_COLUMNS))
        if "adapter_id" not in table.column_names:
            raise FatalError(f"release {build_dir} has no adapter_id column")
        self.rows: dict[str, dict[str, Any]] = {row["adapter_id"]: row for row in table.to_pylist()}
        self._names: NameRules | None = None

    def get(self, adapter_id: str) -> dict[str, Any] | None:
        """The card row of ``adapter_id`` (None when the release does not have it)."""
        return self.rows.get(adapter_id)

    def family(self, adapter_id: str) -> str | None:
        """The base-model family of ``adapter_id`` (see :func:`~stylus_docs.compose.families.family_of`)."""
        row = self.rows.get(adapter_id) or {}
        return family_of(row.get("base_model"), row.get("base_model_family"))

    @property
    def names(self) -> NameRules:
        """The naming rule for character adapters, with this release's common words (built once)."""
        if self._names is None:
            # The creators' example prompts are where ordinary words ("blindfold", "bowtie") show up in
            # many models; read them for this only (they are not card fields the composer shows).
            prompts = read_table(
                self.build_dir, self._manifest, "adapters", ["adapter_id", "example_prompts"]
            )
            examples = {}
            if "example_prompts" in prompts.column_names:
                examples = dict(
                    zip(
                        prompts.column("adapter_id").to_pylist(),
                        prompts.column("example_prompts").to_pylist(),
                        strict=True,
                    )
                )
            rows = ({**row, "example_prompts": examples.get(aid) or []} for aid, row in self.rows.items())
            in_cards, in_prompts = catalogue_common_words(rows)
            self._names = NameRules(in_cards, trigger_common=in_prompts)
        return self._names

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
            family=family_of(row.get("base_model"), row.get("base_model_family")),
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
        self._families: np.ndarray | None = None
        self._family_masks: dict[str | None, np.ndarray] = {}

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

    # -- masks ------------------------------------------------------------------------------------
    @property
    def row_families(self) -> np.ndarray:
        """The family of every row of the query release (object array, aligned with ``release.ids``)."""
        if self._families is None:
            cards = self.cards
            self._families = np.asarray([cards.family(str(a)) for a in self.release.ids], dtype=object)
        return self._families

    def family_mask(self, family: str | None) -> np.ndarray:
        """Rows whose adapters are of ``family``."""
        mask = self._family_masks.get(family)
        if mask is None:
            mask = np.asarray([f == family for f in self.row_families], dtype=bool)
            self._family_masks[family] = mask
        return mask

    def base_mask(
        self, settings: ComposeSettings, allowed: Collection[str] | None = None
    ) -> np.ndarray | None:
        """Rows allowed whatever the family: NSFW unless included; only ``allowed`` ids when given."""
        mask = self.release.mask(Filters(include_nsfw=settings.include_nsfw))
        if allowed is not None:
            row_of = self.release.row_of
            keep = np.zeros(len(self.release), dtype=bool)
            keep[[row_of[a] for a in allowed if a in row_of]] = True
            mask = keep if mask is None else (mask & keep)
        return mask

    # -- retrieval --------------------------------------------------------------------------------
    def score(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Dense and BM25 score vectors of every text over all rows (one embedding batch)."""
        if not texts:
            return []
        cfg = self.release.config
        # The composer ranks with the RRF (``rank``), so the learned query map stays off here too.
        return self.release.score_vectors(
            list(texts), dense=cfg.fusion in ("rrf", "dense"), lexical=cfg.fusion in ("rrf", "bm25"),
            mapped=False,
        )  # fmt: skip

    def rank(
        self, vectors: Sequence[tuple[np.ndarray, np.ndarray]], k: int, mask: np.ndarray | None
    ) -> list[Hits]:
        """Fuse each text's score vectors under ``mask``: per text, the top ``k`` hits best first."""
        release = self.release
        ids = release.ids
        out: list[Hits] = []
        for dense, lex in vectors:
            if mask is not None and not mask.any():
                out.append([])
                continue
            order, fused, d_rank, l_rank, (w_dense, w_bm25) = fuse(
                dense, lex, mask, k, release.config, release.model_codes
            )
            out.append(
                [
                    (
                        str(ids[r]),
                        round(float(fused[i]), 8),
                        {
                            "dense": float(dense[r]),
                            "bm25": float(lex[r]),
                            "dense_rank": int(d_rank[r]) or None,
                            "bm25_rank": int(l_rank[r]) or None,
                            "dense_weight": round(float(w_dense), 6),
                            "bm25_weight": round(float(w_bm25), 6),
                        },
                    )
                    for i, r in enumerate(order)
                ]
            )
        return out

    def families_among(self, hits: Hits) -> list[str]:
        """Families of ``hits``, most frequent first (ties: first seen). ``Other`` (base model not listed)
        is only returned when no real family was retrieved; cards without a base model never are."""
        fam_of = [self.cards.family(aid) for aid, _s, _c in hits]
        counts: Counter[str | None] = Counter(fam_of)
        first: dict[str | None, int] = {}
        for i, fam in enumerate(fam_of):
            first.setdefault(fam, i)
        ranked = sorted(counts, key=lambda f: (-counts[f], first[f]))
        real = [f for f in ranked if f not in AUTO_EXCLUDED]
        return real or [f for f in ranked if f is not None]

    def search_many(
        self,
        texts: list[str],
        settings: ComposeSettings,
        k: int | None = None,
        family: str | None = None,
        allowed: Collection[str] | None = None,
    ) -> list[Hits]:
        """Hybrid search of several texts under the composer's masks (one embedding batch).

        Args:
            texts: the queries.
            settings: top-K and the NSFW switch.
            k: hits per text (default ``settings.top_k``).
            family: only adapters of this base-model family (None: any).
            allowed: only these adapter ids (the linked library; None: all).

        Returns:
            Per text, ``(adapter_id, score, components)`` best first.
        """
        if not texts:
            return []
        mask = self.base_mask(settings, allowed)
        if family is not None:
            fam = self.family_mask(family)
            mask = fam if mask is None else (mask & fam)
        return self.rank(self.score(texts), k or settings.top_k, mask)

    def search(
        self, text: str, settings: ComposeSettings, k: int | None = None
    ) -> list[tuple[str, float, Any]]:
        """Hybrid search of one text (see :meth:`search_many`)."""
        return self.search_many([text], settings, k)[0]

    def candidates(self, prompt: str, settings: ComposeSettings, hits: Hits | None = None) -> list[Candidate]:
        """The top-K candidates for ``prompt``, indexed 0..K-1 in retrieval order.

        Args:
            prompt: the prompt.
            settings: top-K and filters.
            hits: the prompt's search hits when already retrieved (see :meth:`rank`).
        """
        out: list[Candidate] = []
        seen: set[str] = set()
        for aid, score, components in hits if hits is not None else self.search(prompt, settings):
            if aid in seen:
                continue
            seen.add(aid)
            out.append(self.cards.candidate(len(out), aid, score, components))
        return out
