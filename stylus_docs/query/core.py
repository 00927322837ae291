"""Open a StylusDocs release and search it: dense cosine + BM25, fused, under structured filters.

Cost model (75K adapters × 384 dims, 2 cores): the embedding matrix is read once per process from the
Parquet ``FixedSizeList<float32>`` column straight into one numpy array (each Arrow chunk is viewed
zero-copy and copied once into place); a query is one matrix-vector product plus ``argpartition``.
Structured filters are evaluated by DuckDB with bound parameters into a boolean row mask, cached per
distinct filter set, so repeated queries with the same filters pay nothing for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stylus_docs.embedding import Embedder, canonical_model_name, load_query_embedder
from stylus_docs.errors import FatalError
from stylus_docs.query import learned as learned_fusion
from stylus_docs.query import sandbox
from stylus_docs.query.concepts import CONCEPT_WEIGHT, concept_spans
from stylus_docs.query.learned import LearnedFusion, candidate_features
from stylus_docs.query.lexical import TEXT_COLUMNS, LexicalIndex, document_text
from stylus_docs.query.triggers import TriggerIndex
from stylus_docs.release import load_manifest, read_table, resolve_build, table_files, verify_entry

log = logging.getLogger(__name__)

#: Metadata columns returned with each hit (besides the scores).
HIT_COLUMNS = (
    "title",
    "type",
    "base_model",
    "category",
    "recommended_weight",
    "trigger_words",
    "downloads",
    "nsfw",
)
MAX_K = 10_000
#: Concept phrases whose vectors a release keeps (cleared when full).
CONCEPT_CACHE = 4096
#: Row block of :func:`_matmul_rows`.
_ROW_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """How dense and lexical rankings are combined (defaults tuned on the developer half).

    Args:
        fusion: ``"rrf"`` (reciprocal rank fusion) or ``"dense"`` / ``"bm25"`` (one retriever only).
        rrf_k: the dense ranking's RRF constant: its share of the score is ``dense_weight / (rrf_k + rank)``.
        bm25_rrf_k: the BM25 ranking's RRF constant (``bm25_weight / (bm25_rrf_k + rank)``).
        dense_weight: weight of the dense ranking in RRF.
        bm25_weight: weight of the BM25 ranking in RRF.
        depth: how many top rows of each ranking enter fusion (at least k).
        adaptive: scale the two weights per query by how confident each retriever is (see
            :func:`confidence_weights`); off: the fixed weights.
        dense_confidence: how much a peaked dense ranking counts against a peaked BM25 ranking.
        one_version_after: past this many hits, a model's further versions are left out (the next
            model's best version takes the slot); ``None`` keeps every version.
        every_version_share: with ``one_version_after``, a query whose BM25 confidence share (0…1, see
            :func:`confidence_weights`) is at least this keeps every version all the same; ``None``:
            every query is collapsed.
        every_version_tag_lists: with ``one_version_after`` and the learned ranker, a tag-list query
            (its learned gate is on) keeps every version too.
        learned: with ``fusion="rrf"``, score the fused candidates with the release's learned ranker
            (:mod:`stylus_docs.query.learned`) when it has one; off: the RRF score.
        concept_weight: for sentence-shaped (not tag-list) queries, the dense score of a row is its
            cosine plus this times its best cosine to one of the query's concepts
            (:mod:`stylus_docs.query.concepts`); 0: the plain cosine.
    """

    fusion: str = "rrf"
    # Tuned on the developer half (BENCHMARKS.md `retrieval`). A sharp BM25 constant lets an exact
    # trigger-word / example-prompt match (BM25 rank 1-3) win the top slots outright, where creators'
    # tag-soup prompts need it; the flatter dense constant lets the semantic neighbours of
    # natural-language prompts fill the rest of the list.
    rrf_k: float = 10.0
    bm25_rrf_k: float = 3.0
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    depth: int = 1000
    # Creators' tag-soup prompts have one BM25 hit far above the rest (a trigger word, a copied example
    # prompt) while dense scores are flat; for natural-language captions it is the other way round. The
    # per-query weights follow that, instead of one compromise for both kinds of prompt.
    adaptive: bool = True
    dense_confidence: float = 3.0
    # Stylus' own catalogue holds one version per model: sibling versions (v1, v2, "pruned"…) of one
    # adapter are near-duplicates that crowd a 150-candidate list. The first 10 hits stay untouched,
    # because there the exact version is what a trigger-word query asks for.
    one_version_after: int | None = 10
    # ...but a lexically peaked query (a creator's prompt, a trigger word) names one exact version, and a
    # sibling version ranked above it must not push it out: those queries keep every version. 0.35 was
    # the best on the tuning part (creator R@150 0.961 -> 0.965, Stylus unchanged; about 70 % of creator
    # prompts pass it, under 10 % of captions).
    every_version_share: float | None = 0.35
    # ...and so does a tag list, the form of a creator's prompt, whatever its BM25 share: the collapse is
    # for captions, whose Stylus adapters are one per model (tuning part, learned ranker: creator R@150
    # 0.971 -> 0.976, Stylus unchanged because the gate is off for 99.7 % of captions).
    every_version_tag_lists: bool = True
    # The release's learned ranker (stylus_docs/query/learned.py) replaces the RRF score when the
    # release ships one; a release without it ranks with the RRF above.
    learned: bool = True
    # Captions name several concepts and Stylus picks an adapter per concept; the whole caption's cosine
    # averages them away (stylus_docs/query/concepts.py: Stylus R@10 0.680 -> 0.708 on the tuning part).
    concept_weight: float = CONCEPT_WEIGHT

    def __post_init__(self) -> None:
        if self.fusion not in ("rrf", "dense", "bm25"):
            raise FatalError(f"unknown fusion {self.fusion!r} (rrf, dense, bm25)")
        if self.rrf_k <= 0 or self.bm25_rrf_k <= 0 or self.depth < 1:
            raise FatalError("rrf_k, bm25_rrf_k and depth must be positive")
        if self.dense_weight < 0 or self.bm25_weight < 0 or self.dense_confidence < 0:
            raise FatalError("fusion weights and dense_confidence must be non-negative")
        if self.concept_weight < 0:
            raise FatalError("concept_weight must be non-negative")
        if self.one_version_after is not None and self.one_version_after < 0:
            raise FatalError("one_version_after must be >= 0 (or None)")
        if self.every_version_share is not None and not 0.0 <= self.every_version_share <= 1.0:
            raise FatalError("every_version_share must be within 0..1 (or None)")


@dataclass(frozen=True, slots=True)
class Filters:
    """Structured filters; every value reaches DuckDB as a bound parameter, never as SQL text.

    Args:
        base_model: keep adapters whose base model is one of these.
        type: keep adapters of these types (``LORA``, ``LoCon``, …).
        category: keep adapters in these categories.
        include_nsfw: NSFW adapters are excluded unless this is true.
        min_downloads: keep adapters with at least this many downloads.
        where: a raw SQL boolean expression over the ``adapters`` columns (local user's own SQL; runs in
            the sandboxed connection).
    """

    base_model: tuple[str, ...] = ()
    type: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    include_nsfw: bool = False
    min_downloads: int | None = None
    where: str | None = None

    @classmethod
    def from_kwargs(cls, **kw: Any) -> Filters:
        """Accept strings or sequences for the list filters (``base_model="SD 1.5"`` works too)."""
        unknown = set(kw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise FatalError(f"unknown filter(s): {', '.join(sorted(unknown))}")
        for name in ("base_model", "type", "category"):
            value = kw.get(name)
            if value is None:
                kw.pop(name, None)
            elif isinstance(value, str):
                kw[name] = (value,)
            else:
                kw[name] = tuple(str(v) for v in value)
        if kw.get("min_downloads") is not None:
            kw["min_downloads"] = int(kw["min_downloads"])
        return cls(**kw)

    @property
    def trivial(self) -> bool:
        """True when nothing is filtered."""
        return self == Filters(include_nsfw=True)


@dataclass(slots=True)
class Hit:
    """One search result with its score components.

    Attributes:
        adapter_id: the adapter (model version) id.
        score: the fused score (higher is better).
        dense: cosine similarity between query and adapter embeddings.
        concept: the best cosine between one of the query's concepts and the adapter (0.0 for tag-list
            queries, which have none); the dense ranking orders by ``dense + concept_weight · concept``.
        bm25: BM25 score (0.0 when no query word matches).
        dense_rank: 1-based rank in the dense ranking (None when outside the fusion depth).
        bm25_rank: 1-based rank in the BM25 ranking (None when outside the depth or no match).
        row: row index in the release's adapters table.
        fields: display metadata (title, type, base model, category, weight, triggers, downloads, nsfw).
        dense_weight: the dense ranking's RRF weight for this query (``score`` =
            ``dense_weight / (rrf_k + dense_rank) + bm25_weight / (bm25_rrf_k + bm25_rank)``).
        bm25_weight: the BM25 ranking's RRF weight for this query.
    """

    adapter_id: str
    score: float
    dense: float
    bm25: float
    dense_rank: int | None
    bm25_rank: int | None
    row: int
    fields: dict[str, Any] = field(default_factory=dict)
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    concept: float = 0.0

    @property
    def components(self) -> dict[str, Any]:
        """The score components: ``dense``, ``bm25``, their ranks and this query's fusion weights."""
        return {
            "dense": self.dense,
            "concept": self.concept,
            "bm25": self.bm25,
            "dense_rank": self.dense_rank,
            "bm25_rank": self.bm25_rank,
            "dense_weight": self.dense_weight,
            "bm25_weight": self.bm25_weight,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _embedding_matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """One (n, dim) float32 array from a FixedSizeList column: zero-copy view per chunk, one copy in."""
    n = len(column)
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for chunk in column.chunks:
        if not pa.types.is_fixed_size_list(chunk.type) or chunk.type.list_size != dim:
            raise FatalError(
                f"embedding column has type {chunk.type}, expected fixed_size_list<float>[{dim}]"
            )
        m = len(chunk)
        if chunk.null_count:
            # A row without an embedding can only be found lexically; a zero vector scores 0 cosine.
            valid = np.asarray(chunk.is_valid())
            dense = np.zeros((m, dim), dtype=np.float32)
            flat = chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            dense[valid] = flat.reshape(-1, dim)
            out[start : start + m] = dense
        else:
            values = chunk.values.slice(chunk.offset * dim, m * dim)
            out[start : start + m] = values.to_numpy(zero_copy_only=True).reshape(m, dim)
        start += m
    return out


def _matmul_rows(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``matrix @ vectors.T`` (``(n, B)``), in row blocks when there are several vectors.

    One vector is a plain matrix-vector product. For a few vectors (a caption and its concepts)
    OpenBLAS's skinny matrix product was slower here than a matrix-vector product per vector (4
    vectors at 75K x 384: 15.7 ms vs 4 x 4.1 ms); blocks of 4,096 rows, which stay in cache while each is
    multiplied, took 10.1 ms.
    """
    if len(vectors) == 1:
        return (matrix @ vectors[0])[:, None]
    q = np.ascontiguousarray(vectors.T)
    out = np.empty((matrix.shape[0], q.shape[1]), dtype=np.result_type(matrix, q))
    for start in range(0, matrix.shape[0], _ROW_BLOCK):
        np.matmul(matrix[start : start + _ROW_BLOCK], q, out=out[start : start + _ROW_BLOCK])
    return out


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest finite scores, best first."""
    n = min(n, scores.shape[0])
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    idx = np.argpartition(-scores, n - 1)[:n] if n < scores.shape[0] else np.arange(scores.shape[0])
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx[np.isfinite(scores[idx])]


def one_version_per_model(order: np.ndarray, model_codes: np.ndarray, after: int) -> np.ndarray:
    """Which positions of ``order`` to keep: all of the first ``after``; past them, only a model's first
    appearance in the whole list (so a model already shown in the head is not repeated in the tail).

    Args:
        order: rows, best first.
        model_codes: model code of every row of the release.
        after: how many leading rows are kept as they are.

    Returns:
        A boolean mask over ``order``.
    """
    keep = np.ones(len(order), dtype=bool)
    if len(order) <= after:
        return keep
    _, first = np.unique(model_codes[order], return_index=True)
    keep[after:] = False
    keep[first] = True
    return keep


def peak(scores: np.ndarray) -> float:
    """How far the best of ``scores`` (best first) stands out: its z-score within them (0 if < 2)."""
    if len(scores) < 2:
        return 0.0
    s = scores.astype(np.float64)
    std = float(s.std())
    return max(0.0, float((s[0] - s.mean()) / std)) if std > 0 else 0.0


def confidence_weights(
    dense_top: np.ndarray, bm25_top: np.ndarray, dense_confidence: float
) -> tuple[float, float]:
    """Per-query multipliers ``(dense, bm25)`` of the RRF weights; they sum to 2.

    Each retriever's confidence is the :func:`peak` of its top scores; BM25's share is
    ``z_bm25 / (z_bm25 + dense_confidence · z_dense)``. Equal (1, 1) when neither stands out.
    """
    zd, zl = peak(dense_top), peak(bm25_top)
    denom = zl + dense_confidence * zd
    if denom <= 0:
        return 1.0, 1.0
    w_bm25 = 2.0 * zl / denom
    return 2.0 - w_bm25, w_bm25


def fuse(
    dense: np.ndarray,
    lex: np.ndarray,
    mask: np.ndarray | None,
    k: int,
    cfg: SearchConfig,
    model_codes: np.ndarray | None = None,
    learned: LearnedFusion | None = None,
    prior: np.ndarray | None = None,
    gate: float = 1.0,
    trigger: np.ndarray | None = None,
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Rank rows from full dense and BM25 score vectors under a row mask.

    Args:
        dense: cosine of every row (n,).
        lex: BM25 score of every row (n,); 0 means no query word matched.
        mask: rows allowed (None: all).
        k: how many rows to return.
        cfg: fusion settings.
        model_codes: model code of every row, for ``cfg.one_version_after`` (None: no collapsing).
        learned: the release's learned ranker; with ``cfg.learned`` it scores the RRF candidates.
        prior: :func:`stylus_docs.query.learned.prior_vector` of every row (needed with ``learned``).
        gate: the query's :meth:`LearnedFusion.gate` (0: the learned correction is off for it).
        trigger: the query's trigger-word scores of every row (:class:`TriggerIndex`), a learned
            feature (None: no trigger matched).

    Returns:
        ``(rows best first, their fused scores, dense rank of every row, BM25 rank of every row,
        (dense weight, BM25 weight) used)``; ranks are 1-based, 0 outside the top ``max(k, cfg.depth)``
        of that ranking.
    """
    depth = max(k, cfg.depth)
    use_dense = cfg.fusion in ("rrf", "dense")
    use_bm25 = cfg.fusion in ("rrf", "bm25")
    d_top = np.empty(0, np.int64)
    l_top = np.empty(0, np.int64)
    if use_dense:
        d_top = _top(np.where(mask, dense, -np.inf) if mask is not None else dense, depth)
    if use_bm25:
        lmasked = np.where(lex > 0, lex, -np.inf)
        if mask is not None:
            lmasked = np.where(mask, lmasked, -np.inf)
        l_top = _top(lmasked, depth)
    n = dense.shape[0]
    d_rank = np.zeros(n, dtype=np.int32)  # 0 = outside the depth
    l_rank = np.zeros(n, dtype=np.int32)
    d_rank[d_top] = np.arange(1, len(d_top) + 1, dtype=np.int32)
    l_rank[l_top] = np.arange(1, len(l_top) + 1, dtype=np.int32)
    collapse = model_codes is not None and cfg.one_version_after is not None
    if cfg.fusion == "dense":
        order = d_top[one_version_per_model(d_top, model_codes, cfg.one_version_after)] if collapse else d_top
        order = order[:k]
        return order.tolist(), dense[order].astype(np.float64), d_rank, l_rank, (1.0, 0.0)
    if cfg.fusion == "bm25":
        order = l_top[one_version_per_model(l_top, model_codes, cfg.one_version_after)] if collapse else l_top
        order = order[:k]
        return order.tolist(), lex[order].astype(np.float64), d_rank, l_rank, (0.0, 1.0)
    member = np.zeros(n, dtype=bool)
    member[d_top] = True
    member[l_top] = True
    cand = np.flatnonzero(member)
    fused = np.zeros(len(cand), dtype=np.float64)
    rd = d_rank[cand]
    rl = l_rank[cand]
    w_dense, w_bm25 = cfg.dense_weight, cfg.bm25_weight
    m_dense, m_bm25 = 1.0, 1.0
    shares_needed = collapse and cfg.every_version_share is not None
    if cfg.adaptive or (learned is not None and cfg.learned) or shares_needed:
        # Rows without a matching word score 0 for BM25 and count as such: one lone match is a peak.
        lex_top = np.zeros(max(len(d_top), len(l_top)), dtype=np.float64)
        lex_top[: len(l_top)] = lex[l_top]
        m_dense, m_bm25 = confidence_weights(dense[d_top], lex_top, cfg.dense_confidence)
    if cfg.adaptive:
        w_dense, w_bm25 = w_dense * m_dense, w_bm25 * m_bm25
    if learned is not None and cfg.learned and prior is not None:
        feats = candidate_features(dense, lex, cand, d_rank, l_rank, (m_dense, m_bm25), prior, trigger)
        fused = learned.score(feats, gate)
    else:
        fused[rd > 0] += w_dense / (cfg.rrf_k + rd[rd > 0])
        fused[rl > 0] += w_bm25 / (cfg.bm25_rrf_k + rl[rl > 0])
    # Ties (same fused score) fall back to cosine, then row: deterministic and sensible.
    pick = np.lexsort((cand, -dense[cand], -fused))
    if collapse and cfg.every_version_share is not None and m_bm25 / 2.0 >= cfg.every_version_share:
        collapse = False
    if collapse and cfg.every_version_tag_lists and learned is not None and cfg.learned and gate > 0:
        collapse = False
    if collapse:
        pick = pick[one_version_per_model(cand[pick], model_codes, cfg.one_version_after)]
    pick = pick[:k]
    return cand[pick].tolist(), fused[pick], d_rank, l_rank, (w_dense, w_bm25)


class Release:
    """A release opened for search. Use :func:`open_release`.

    Attributes:
        build_dir: the build directory read.
        manifest: its validated manifest.
        ids: adapter ids in row order (numpy object array).
        embeddings: ``(n, dim)`` float32, L2-normalised.
    """

    def __init__(
        self,
        build_dir: Path,
        manifest: dict[str, Any],
        *,
        embedder: Embedder | None = None,
        config: SearchConfig | None = None,
    ) -> None:
        self.build_dir = build_dir
        self.manifest = manifest
        self.config = config or SearchConfig()
        info = manifest.get("embedder") or {}
        if not isinstance(info, dict) or not info.get("dim"):
            raise FatalError(f"manifest of {build_dir} has no embedder dim")
        self.embedder_info: dict[str, Any] = info
        self.dim = int(info["dim"])
        self.files = table_files(build_dir, manifest, "adapters")
        if not self.files:
            raise FatalError(f"release {build_dir} lists no adapters files")
        if embedder is not None:
            self._check_embedder(embedder)
        self._embedder = embedder
        table = read_table(build_dir, manifest, "adapters", ["adapter_id", "embedding"], files=self.files)
        self.ids: np.ndarray = np.asarray(table.column("adapter_id").to_pylist(), dtype=object)
        self.embeddings: np.ndarray = _embedding_matrix(table.column("embedding"), self.dim)
        self._row_of: dict[str, int] | None = None
        self._lexical: LexicalIndex | None = None
        self._con = None
        self._masks: dict[Filters, np.ndarray] = {}
        self._fields: dict[str, list[Any]] | None = None
        self._model_codes: np.ndarray | None = None
        self._learned: LearnedFusion | None | bool = False  # False = not looked up yet
        self._prior: np.ndarray | None = None
        self._triggers: TriggerIndex | None = None
        self._concept_cache: dict[str, np.ndarray] = {}

    # -- components, built lazily ---------------------------------------------------------------
    def _check_embedder(self, embedder: Embedder) -> None:
        want = str(self.embedder_info.get("model") or self.embedder_info.get("name") or "")
        got = embedder.info
        if canonical_model_name(got.model) != canonical_model_name(want) or got.dim != self.dim:
            raise FatalError(
                f"embedder mismatch: the release {self.build_dir.name} was embedded with {want!r} "
                f"(dim {self.dim}), the query embedder is {got.model!r} (dim {got.dim}); "
                "queries must use the release's embedder"
            )

    @property
    def embedder(self) -> Embedder:
        """The query embedder (loaded on first use; must match the manifest)."""
        if self._embedder is None:
            emb = load_query_embedder(self.embedder_info)
            self._check_embedder(emb)
            self._embedder = emb
        return self._embedder

    @property
    def lexical(self) -> LexicalIndex:
        """The BM25 index (loaded from its cache next to the build, or built and stored)."""
        if self._lexical is None:
            self._lexical = LexicalIndex.open(
                self.build_dir, self.manifest, self.files, len(self.ids), self._documents
            )
        return self._lexical

    def _documents(self) -> list[str]:
        table = read_table(self.build_dir, self.manifest, "adapters", list(TEXT_COLUMNS), files=self.files)
        return [document_text(row) for row in table.to_pylist()]

    @property
    def con(self):
        """Sandboxed DuckDB connection with ``adapters`` and ``images`` views."""
        if self._con is None:
            self._con = sandbox.connect(self.build_dir, self.manifest)
        return self._con

    @property
    def row_of(self) -> dict[str, int]:
        """adapter_id → row index."""
        if self._row_of is None:
            self._row_of = {aid: i for i, aid in enumerate(self.ids)}
        return self._row_of

    @property
    def model_codes(self) -> np.ndarray:
        """An integer per row naming its model (``source:model`` of ``source:model@version``)."""
        if self._model_codes is None:
            keys = [str(a).rsplit("@", 1)[0] for a in self.ids]
            self._model_codes = np.unique(np.asarray(keys, dtype=object), return_inverse=True)[1]
        return self._model_codes

    @property
    def learned(self) -> LearnedFusion | None:
        """The learned ranker the manifest lists (table ``learned``), or None: RRF is used then."""
        if self._learned is False:
            model = None
            entries = [e for e in self.manifest.get("files", []) if e.get("table") == "learned"]
            if entries:
                # Verified like every release file (size + SHA-256): a corrupt file is an error, not
                # a silent fallback; a release that lists none ranks with RRF.
                model = learned_fusion.load(verify_entry(self.build_dir, entries[0]))
            fitted_with = model.meta.get("embedder") if model is not None else None
            if model is not None and canonical_model_name(str(fitted_with)) != canonical_model_name(
                str(self.embedder_info.get("model") or "")
            ):
                raise FatalError(
                    f"learned ranker of {self.build_dir.name} was fitted with encoder {fitted_with!r}, "
                    f"the manifest names {self.embedder_info.get('model')!r}; rebuild the release"
                )
            self._learned = model
        return self._learned  # type: ignore[return-value]

    @property
    def prior(self) -> np.ndarray:
        """The learned ranker's downloads prior of every row."""
        if self._prior is None:
            table = read_table(self.build_dir, self.manifest, "adapters", ["downloads"], files=self.files)
            self._prior = learned_fusion.prior_vector(table.column("downloads").to_pylist())
        return self._prior

    @property
    def triggers(self) -> TriggerIndex:
        """Which rows' trigger words a prompt contains (a learned-ranker feature; built on first use)."""
        if self._triggers is None:
            table = read_table(self.build_dir, self.manifest, "adapters", ["trigger_words"], files=self.files)
            self._triggers = TriggerIndex(table.column("trigger_words"))
        return self._triggers

    def __len__(self) -> int:
        return len(self.ids)

    # -- filters ----------------------------------------------------------------------------------
    def mask(self, filters: Filters) -> np.ndarray | None:
        """Boolean row mask for ``filters`` (None when nothing is filtered); cached per filter set."""
        if filters.trivial:
            return None
        cached = self._masks.get(filters)
        if cached is not None:
            return cached
        params: dict[str, Any] = {
            "include_nsfw": filters.include_nsfw,
            "base_models": list(filters.base_model) or None,
            "types": list(filters.type) or None,
            "categories": list(filters.category) or None,
            "min_downloads": filters.min_downloads,
        }
        sql = (
            "SELECT adapter_id FROM adapters WHERE ($include_nsfw OR NOT coalesce(nsfw, false))"
            " AND ($base_models::VARCHAR[] IS NULL OR list_contains($base_models::VARCHAR[], base_model))"
            " AND ($types::VARCHAR[] IS NULL OR list_contains($types::VARCHAR[], type))"
            " AND ($categories::VARCHAR[] IS NULL OR list_contains($categories::VARCHAR[], category))"
            " AND ($min_downloads::BIGINT IS NULL OR downloads >= $min_downloads::BIGINT)"
        )
        if filters.where:
            sandbox.check_read_only(self.con, f"SELECT 1 WHERE ({filters.where})", single=True)
            sql += f" AND ({filters.where})"
        try:
            rows = self.con.execute(sql, params).fetchall()
        except Exception as exc:  # duckdb raises many error classes; all mean "this filter failed"
            import duckdb

            if not isinstance(exc, duckdb.Error):
                raise
            raise FatalError(f"filter failed: {sandbox._first_line(exc)}") from exc
        mask = np.zeros(len(self.ids), dtype=bool)
        row_of = self.row_of
        for (aid,) in rows:
            mask[row_of[aid]] = True
        if len(self._masks) > 64:
            self._masks.clear()
        self._masks[filters] = mask
        return mask

    # -- search -----------------------------------------------------------------------------------
    def search(self, text: str, k: int = 150, **filters: Any) -> list[Hit]:
        """Hybrid search for one query.

        Args:
            text: the prompt.
            k: number of hits (1 … 10,000).
            **filters: see :class:`Filters` (``base_model``, ``type``, ``category``, ``include_nsfw``,
                ``min_downloads``, ``where``).

        Returns:
            Up to ``k`` hits, best first.
        """
        return self.search_batch([text], k=k, **filters)[0]

    def search_batch(self, texts: Sequence[str], k: int = 150, **filters: Any) -> list[list[Hit]]:
        """Hybrid search for many queries with the same filters (embeds them in batches)."""
        if not 1 <= k <= MAX_K:
            raise FatalError(f"k must be between 1 and {MAX_K}, got {k}")
        texts = [str(t) for t in texts]
        flt = Filters.from_kwargs(**filters)
        mask = self.mask(flt)
        use_dense = self.config.fusion in ("rrf", "dense")
        use_bm25 = self.config.fusion in ("rrf", "bm25")
        return [
            self._rank(d, cos, concept, lex, mask, k, text)
            for text, (d, cos, concept, lex) in zip(
                texts, self._score(texts, dense=use_dense, lexical=use_bm25), strict=True
            )
        ]

    def score_vectors(
        self,
        texts: Sequence[str],
        *,
        dense: bool = True,
        lexical: bool = True,
        mapped: bool | None = None,
        concepts: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text, the full dense and BM25 score vectors over all rows (zeros for a side turned off).

        The building block of :meth:`search_batch`; evaluation scripts use it to try fusion settings
        without re-scoring. ``mapped``: apply the learned query map to tag-list prompts (default: when
        this release's search uses the learned model). ``concepts``: add the concept boost to
        sentence-shaped prompts at ``config.concept_weight``; off, the dense vector is the plain cosine.
        """
        return [
            (d, lex)
            for d, _, _, lex in self._score(
                texts, dense=dense, lexical=lexical, mapped=mapped, concepts=concepts
            )
        ]

    def _score(
        self,
        texts: Sequence[str],
        *,
        dense: bool = True,
        lexical: bool = True,
        mapped: bool | None = None,
        concepts: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]:
        """Per text ``(dense ranking score, cosine, best concept cosine or None, BM25)``, each (n,)."""
        n = len(self.ids)
        texts = list(texts)
        weight = self.config.concept_weight if concepts else 0.0
        # Concepts of the sentence-shaped prompts (tag lists have none).
        spans = [
            concept_spans(t) if dense and weight > 0 and not learned_fusion.gate(t) else [] for t in texts
        ]
        cos_all = None
        concept_sets: list[np.ndarray | None] = [None] * len(texts)
        if dense and texts:
            qvecs, cvecs = self._embed_with_concepts(texts, spans)
            learned = self._uses_learned() if mapped is None else (self.learned if mapped else None)
            if learned is not None:
                qvecs = learned.map_queries(texts, qvecs)
            sizes = [len(c) for c in cvecs]
            # One pass over the embedding matrix for the prompts and all their concepts together.
            scores = _matmul_rows(self.embeddings, np.vstack([qvecs, *[c for c in cvecs if len(c)]]))
            cos_all = scores[:, : len(texts)]  # (n, B)
            bounds = np.cumsum([len(texts), *sizes])
            for k, size in enumerate(sizes):
                if size:
                    concept_sets[k] = scores[:, bounds[k] : bounds[k] + size]
        out = []
        for j, text in enumerate(texts):
            cos = cos_all[:, j] if cos_all is not None else np.zeros(n, np.float32)
            sims = concept_sets[j]
            best = sims.max(axis=1) if sims is not None else None
            d = cos + np.float32(weight) * best if best is not None else cos
            lx = self.lexical.scores(text) if lexical else np.zeros(n, np.float32)
            out.append((d, cos, best, lx))
        return out

    def _embed_with_concepts(
        self, texts: list[str], spans: list[list[tuple[str, int, int]]]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Query vectors ``(B, dim)`` and, per text, its concept vectors ``(c, dim)`` (c = 0: none).

        With the numpy MiniLM a concept's vector is pooled from the caption's own forward pass
        (:meth:`NumpyMiniLM.embed_spans`: no extra encoder work; on the tuning part it measured as well
        as embedding each phrase alone, Stylus R@10 0.708 vs 0.707, R@150 0.932 vs 0.926). Other
        embedders embed the phrases on their own, through a bounded per-release cache.
        """
        with_spans = [j for j, sp in enumerate(spans) if sp]
        span_fn = getattr(self.embedder, "embed_spans", None)
        cvecs = [np.zeros((0, self.dim), np.float32) for _ in texts]
        if span_fn is None or not with_spans:
            qvecs = np.asarray(self.embedder.embed(texts), dtype=np.float32)
            for j in with_spans:
                cvecs[j] = self._phrase_vectors([phrase for phrase, _, _ in spans[j]])
            return qvecs, cvecs
        qvecs = np.zeros((len(texts), self.dim), np.float32)
        rest = [j for j in range(len(texts)) if not spans[j]]
        if rest:
            qvecs[rest] = np.asarray(self.embedder.embed([texts[j] for j in rest]), dtype=np.float32)
        for j in with_spans:
            qvecs[j], vecs = span_fn(texts[j], [(a, b) for _, a, b in spans[j]])
            cvecs[j] = vecs[np.linalg.norm(vecs, axis=1) > 0]  # a span without word pieces counts not
        return qvecs, cvecs

    def _phrase_vectors(self, phrases: Sequence[str]) -> np.ndarray:
        """Vectors of concept phrases embedded on their own, through a bounded cache (captions reuse a
        small vocabulary of concepts, and each uncached one costs an embedder call)."""
        todo = list(dict.fromkeys(p for p in phrases if p not in self._concept_cache))
        if todo:
            if len(self._concept_cache) + len(todo) > CONCEPT_CACHE:
                self._concept_cache.clear()
            vecs = np.asarray(self.embedder.embed(todo), dtype=np.float32)
            self._concept_cache.update(zip(todo, vecs, strict=True))
        return np.stack([self._concept_cache[p] for p in phrases])

    def _uses_learned(self) -> LearnedFusion | None:
        """The learned model this release's search applies (None: plain RRF/dense/BM25)."""
        return self.learned if self.config.learned and self.config.fusion == "rrf" else None

    def learned_inputs(self, text: str, learned: LearnedFusion | None) -> tuple[float, np.ndarray | None]:
        """What :func:`fuse` needs of ``text`` for ``learned``: its gate and, when the gate is on, its
        trigger-word scores of every row (``(0.0, None)`` without a model)."""
        gate = learned.gate(text) if learned is not None else 0.0
        return gate, self.triggers.scores(text) if gate else None

    def _rank(
        self,
        dense: np.ndarray,
        cos: np.ndarray,
        concept: np.ndarray | None,
        lex: np.ndarray,
        mask: np.ndarray | None,
        k: int,
        text: str = "",
    ) -> list[Hit]:
        learned = self._uses_learned()
        order, fused, d_rank, l_rank, (w_dense, w_bm25) = fuse(
            dense, lex, mask, k, self.config, self.model_codes, learned, self.prior if learned else None,
            *self.learned_inputs(text, learned),
        )  # fmt: skip
        fields = self.fields(order)
        # Per-row values gathered with numpy and turned into Python numbers in one call each: a hit list
        # of 150 built value by value (float(), int(), round() per field) was ~1 ms of a ~30 ms query.
        rows = np.asarray(order, dtype=np.int64)
        scores = np.round(np.asarray(fused, dtype=np.float64), 8).tolist()
        cosines = cos[rows].astype(np.float64).tolist()
        concepts = concept[rows].astype(np.float64).tolist() if concept is not None else [0.0] * len(rows)
        bm25s = lex[rows].astype(np.float64).tolist()
        d_ranks = d_rank[rows].tolist()
        l_ranks = l_rank[rows].tolist()
        wd, wl = round(float(w_dense), 6), round(float(w_bm25), 6)
        ids = self.ids
        return [
            Hit(
                adapter_id=str(ids[r]),
                score=scores[i],
                dense=cosines[i],
                concept=concepts[i],
                bm25=bm25s[i],
                dense_rank=d_ranks[i] or None,
                bm25_rank=l_ranks[i] or None,
                row=r,
                fields=fields[i],
                dense_weight=wd,
                bm25_weight=wl,
            )
            for i, r in enumerate(order)
        ]

    def fields(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Display metadata (:data:`HIT_COLUMNS`) of ``rows``."""
        if self._fields is None:
            # Columns as Python lists once (a few MB at 75K rows): per-hit lookups then cost ~nothing.
            table = read_table(self.build_dir, self.manifest, "adapters", list(HIT_COLUMNS), files=self.files)
            self._fields = {c: table.column(c).to_pylist() for c in table.column_names}
        names = list(self._fields)
        picked = [[values[r] for r in rows] for values in self._fields.values()]  # column by column
        return [dict(zip(names, vals, strict=True)) for vals in zip(*picked, strict=True)]

    def sql(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only SQL statement over the ``adapters``/``images`` views (sandboxed)."""
        return sandbox.run_sql(self.con, query)

    def close(self) -> None:
        """Close the DuckDB connection."""
        if self._con is not None:
            self._con.close()
            self._con = None


def open_release(
    docs: str | os.PathLike[str],
    *,
    build_id: str | None = None,
    embedder: Embedder | None = None,
    config: SearchConfig | None = None,
) -> Release:
    """Open the live build of a release (or ``build_id``, or a build directory) for search.

    Args:
        docs: the release root (``DOCS``) or a build directory.
        build_id: a specific build instead of ``CURRENT``.
        embedder: the query embedder; default: the one named by the manifest (loaded on first query).
            It must match the manifest's embedder (model and dim) or :class:`FatalError` is raised.
        config: fusion settings.

    Raises:
        FatalError: no release, invalid manifest, missing files, embedder mismatch.
    """
    build_dir = resolve_build(docs, build_id).resolve()
    manifest = load_manifest(build_dir)
    return Release(build_dir, manifest, embedder=embedder, config=config)
