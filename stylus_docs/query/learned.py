"""Learned retrieval: a listwise linear ranker over the existing signals and a linear query map, both
fitted at build time on the catalogue's own (example prompt → adapter) pairs and shipped in the release as
``learned/fusion.json``.

Why these and not a fine-tuned encoder: on 2 CPU cores a MiniLM fine-tune would cost more than the
build's 25 % budget for learning, while the ranker needs only one query embedding and one BM25 pass per
training pair (a few seconds at 5K adapters) and the query map one 384×384 product per query; both add
< 1 ms per query. The map is the cheap form of a fine-tuned query encoder: the card vectors stay as built.

**Training pairs, without leaking.** For an adapter version with at least :data:`MIN_PROMPTS` distinct
example prompts, the query is one example prompt that the dense card vector never saw: the examples view
(:func:`stylus_docs.embedding.views.examples_text`) holds only the first prompts and the encoder truncates
it, so a prompt past that point is not in the vector (checked with the encoder's own tokenizer when it has
one, else only prompts past :data:`~stylus_docs.embedding.views.MAX_EXAMPLE_PROMPTS` qualify). For the
lexical side the training pairs are scored against a second BM25 index whose documents lack their own
training prompt. The prompts that evaluation hides are not in the build input at all, so they cannot be
drawn (``tests/test_learned_retrieval.py`` asserts it).

**Model.** Per candidate (the union of both rankings' top ``depth``), :data:`FEATURES` (reciprocal ranks,
cosine and BM25 relative to the query's best, the per-query confidence shares of
:func:`stylus_docs.query.core.confidence_weights`, a downloads prior, whether and how specifically the
prompt contains one of the row's trigger words, :mod:`stylus_docs.query.triggers`); the score is ``w ·
standardised features``; ``w`` minimises the softmax cross-entropy of the target within its query's
candidates plus ``l2 · |w|²`` (L-BFGS, scipy). The **query map** ``A`` (:func:`train_query_map`) moves a
query vector towards the card it was written for: ``q' = normalize(q + s · qA)``, softmax over the cards,
early-stopped on pairs held out by model. Both apply only to prompts shaped like the training prompts, tag
lists (:func:`gate`); a sentence ranks exactly as with the RRF. A release without the file ranks with the
hand-tuned RRF as before.

**Incremental rebuilds.** The file records a short digest per training pair. When a ``--previous`` build
has a learned file of the same version whose pairs differ by at most :data:`REUSE_CHANGE` of the pairs, its
weights and query map are reused as they are (``reused_from`` names that build); otherwise both fits are
warm-started from them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Bumped when the features or the training recipe change (an older file is then ignored).
#: v2: gated by the prompt's form instead of its BM25 share; plus the linear query map.
#: v3: trigger-word match features (:mod:`stylus_docs.query.triggers`).
LEARNED_VERSION = "fusion.v3"
#: Older versions still read: their features are a prefix of :data:`FEATURES` (v3 only appended), so a
#: release built before v3 keeps its ranker. A rebuild fits the current version afresh.
READABLE_VERSIONS = {"fusion.v2": 11, LEARNED_VERSION: None}
#: Path of the learned file inside a build directory (listed in the manifest as table ``learned``).
LEARNED_PATH = "learned/fusion.json"
FEATURES = (
    "rr_dense",  # 1 / (10 + dense rank)
    "rr_bm25",  # 1 / (3 + BM25 rank)
    "rr_dense_flat",  # 1 / (60 + dense rank)
    "rr_bm25_flat",  # 1 / (60 + BM25 rank)
    "cos",  # cosine
    "cos_gap",  # cosine minus the query's best cosine
    "bm25_rel",  # BM25 / the query's best BM25
    "bm25_hit",  # 1 when a query word matched
    "conf_dense",  # dense confidence share x rr_dense (the adaptive RRF's dense term)
    "conf_bm25",  # BM25 confidence share x rr_bm25
    "prior",  # log(1 + downloads), standardised over the release
    "trigger",  # scaled IDF of the strongest of the row's trigger words the prompt contains whole
    "trigger_hit",  # 1 when the prompt contains one of the row's trigger words whole
)
#: Versions need this many distinct example prompts to give a training pair (one stays in the card).
MIN_PROMPTS = 2
#: Fewer usable training pairs than this: no learned file (the release ranks with RRF).
MIN_PAIRS = 50
#: At most this many training pairs (a seeded sample of the eligible versions): enough for 11 weights.
MAX_PAIRS = 4000
#: Candidates per training query: the union of each ranking's top this many.
TRAIN_DEPTH = 300
#: Share of changed training pairs up to which a previous build's weights are reused unchanged.
REUSE_CHANGE = 0.05
SEED = 16
#: A prompt is a tag list when it has at least this many comma-separated segments (see :func:`gate`;
#: chosen on the tuning part from 3, 4, 5: 93 % of creators' prompts, 0.3 % of COCO/Parti captions).
TAG_SEGMENTS = 4
#: Strength of the query map on tag-list prompts (q' = normalize(q + s · qA); chosen on the tuning part
#: from 0.25, 0.5, 1: at 1 the dense side overfits the creators' vocabulary).
MAP_STRENGTH = 0.5
#: The query map's softmax runs over at most this many cards (every training target plus a seeded sample
#: of the rest), so its fit costs the same at 5,000 and at 500,000 adapters.
MAP_NEGATIVES = 8192
_SEGMENTS = re.compile(r"[,\n|]+")


def gate(text: str, min_segments: int = TAG_SEGMENTS) -> float:
    """1 when ``text`` reads like a creator's prompt, a list of at least ``min_segments`` comma-separated
    tags, else 0: whether the learned parts apply to the query at all.

    The training pairs are creators' prompts, which are tag lists ("masterpiece, best quality, 1girl,
    …"); natural-language captions (Stylus' COCO/Parti queries) are sentences. Applied to every query,
    what is learned from tag lists cost the captions Stylus-agreement recall@10 (0.680 → 0.59 on the
    tuning part): the catalogue teaches how to rank prompts shaped like its own, and only those get it.
    The form of the prompt separates the two far better than the BM25 peak used before (v1).
    """
    return float(sum(1 for part in _SEGMENTS.split(text) if part.strip()) >= min_segments)


def rrf_offset(feats: np.ndarray) -> np.ndarray:
    """The adaptive RRF score of each candidate (its two confidence-weighted terms): the base the learned
    correction is added to, so a zero correction ranks exactly as the RRF."""
    return feats[:, FEATURES.index("conf_dense")] + feats[:, FEATURES.index("conf_bm25")]


@dataclass(slots=True)
class LearnedFusion:
    """Weights of the learned ranker (see the module docstring) and what they were fitted on."""

    weights: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    prior_weight: float = 0.0
    min_segments: int = TAG_SEGMENTS
    #: ``(dim, dim)`` float32 linear query map (:func:`train_query_map`), or None.
    query_map: np.ndarray | None = None
    map_strength: float = MAP_STRENGTH
    meta: dict[str, Any] = field(default_factory=dict)
    #: The file version it was read as; an older one scores with the first ``len(weights)`` features.
    version: str = LEARNED_VERSION

    def gate(self, text: str) -> float:
        """:func:`gate` of a query with this model's threshold."""
        return gate(text, self.min_segments)

    def score(self, feats: np.ndarray, gate_value: float) -> np.ndarray:
        """Scores of candidates from their raw :data:`FEATURES` rows ``(m, F)``: the adaptive RRF score
        plus the learned correction times the query's :meth:`gate` (0: exactly the RRF score)."""
        z = (feats[:, : len(self.weights)] - self.mean) / self.scale
        return (
            rrf_offset(feats)
            + gate_value * (z @ self.weights)
            + self.prior_weight * feats[:, FEATURES.index("prior")]
        )

    def map_queries(self, texts: Sequence[str], qvecs: np.ndarray) -> np.ndarray:
        """Query vectors with the query map applied to the gated (tag-list) ones; the rest unchanged."""
        if self.query_map is None or self.map_strength == 0:
            return qvecs
        on = np.asarray([self.gate(t) > 0 for t in texts], dtype=bool)
        if not on.any():
            return qvecs
        out = np.array(qvecs, dtype=np.float32)
        moved = out[on] + self.map_strength * (out[on] @ self.query_map)
        out[on] = moved / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
        return out

    def to_json(self) -> dict[str, Any]:
        qmap = None
        if self.query_map is not None:
            arr = np.ascontiguousarray(self.query_map, dtype="<f4")
            qmap = {"shape": list(arr.shape), "float32_base64": base64.b64encode(arr.tobytes()).decode()}
        return {
            "version": self.version,
            "features": list(FEATURES[: len(self.weights)]),
            "weights": [round(float(x), 8) for x in self.weights],
            "mean": [round(float(x), 8) for x in self.mean],
            "scale": [round(float(x), 8) for x in self.scale],
            "prior_weight": self.prior_weight,
            "min_segments": self.min_segments,
            "query_map": qmap,
            "map_strength": self.map_strength,
            **self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LearnedFusion | None:
        """The model in ``data``, or None when it is of an unknown version or feature set."""
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            return None
        names = list(data.get("features") or [])
        width = READABLE_VERSIONS[version] or len(FEATURES)
        if names != list(FEATURES[:width]) or len(data.get("weights") or []) != width:
            return None
        known = {"version", "features", "weights", "mean", "scale", "prior_weight", "min_segments",
                 "query_map", "map_strength"}  # fmt: skip
        qmap = None
        if data.get("query_map"):
            shape = tuple(int(x) for x in data["query_map"]["shape"])
            raw = base64.b64decode(data["query_map"]["float32_base64"], validate=True)
            qmap = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
            if len(shape) != 2 or shape[0] != shape[1]:
                raise ValueError(f"query map of shape {shape} is not square")
        return cls(
            weights=np.asarray(data["weights"], dtype=np.float64),
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            prior_weight=float(data.get("prior_weight", 0.0)),
            min_segments=int(data.get("min_segments", TAG_SEGMENTS)),
            query_map=qmap,
            map_strength=float(data.get("map_strength", MAP_STRENGTH)),
            meta={k: v for k, v in data.items() if k not in known},
            version=str(version),
        )


def load(path: Path) -> LearnedFusion | None:
    """Read a learned file (None with a warning when it is unreadable or of another version)."""
    try:
        model = LearnedFusion.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("learned fusion %s unreadable (%s); using the RRF fusion", path, exc)
        return None
    if model is None:
        log.warning("learned fusion %s is of another version; using the RRF fusion", path)
    return model


def prior_vector(downloads: Sequence[Any]) -> np.ndarray:
    """``log1p(downloads)`` standardised over the release (0 for a missing count)."""
    x = np.log1p(np.asarray([max(int(d or 0), 0) for d in downloads], dtype=np.float64))
    std = float(x.std()) if len(x) else 0.0
    return ((x - x.mean()) / std if std > 0 else np.zeros_like(x)).astype(np.float32)


def candidate_features(
    dense: np.ndarray,
    lex: np.ndarray,
    cand: np.ndarray,
    d_rank: np.ndarray,
    l_rank: np.ndarray,
    shares: tuple[float, float],
    prior: np.ndarray,
    trigger: np.ndarray | None = None,
) -> np.ndarray:
    """:data:`FEATURES` of the rows ``cand`` (ranks 1-based, 0 = outside the depth). ``trigger``: the
    query's :meth:`TriggerIndex.scores <stylus_docs.query.triggers.TriggerIndex.scores>` (None: no
    trigger matched)."""
    rd = d_rank[cand].astype(np.float64)
    rl = l_rank[cand].astype(np.float64)
    cos = dense[cand].astype(np.float64)
    lx = lex[cand].astype(np.float64)
    in_d, in_l = rd > 0, rl > 0
    rr_d = np.where(in_d, 1.0 / (10.0 + rd), 0.0)
    rr_l = np.where(in_l, 1.0 / (3.0 + rl), 0.0)
    best_cos = float(cos.max()) if len(cos) else 0.0
    best_lex = float(lx.max()) if len(lx) else 0.0
    trig = trigger[cand].astype(np.float64) if trigger is not None else np.zeros(len(cand))
    return np.column_stack(
        [
            rr_d,
            rr_l,
            np.where(in_d, 1.0 / (60.0 + rd), 0.0),
            np.where(in_l, 1.0 / (60.0 + rl), 0.0),
            cos,
            cos - best_cos,
            lx / best_lex if best_lex > 0 else np.zeros_like(lx),
            (lx > 0).astype(np.float64),
            shares[0] * rr_d,
            shares[1] * rr_l,
            prior[cand].astype(np.float64),
            trig,
            (trig > 0).astype(np.float64),
        ]
    )


# -- training pairs ------------------------------------------------------------------------------------
def _unseen_prompt(prompts: Sequence[str], tokenizer: Any | None) -> int | None:
    """Index of the last example prompt the card vector's examples view does not contain (None if all in).

    The view is :func:`examples_text` of the first prompts, truncated by the encoder; with the encoder's
    tokenizer the cut is exact, otherwise only prompts past ``MAX_EXAMPLE_PROMPTS`` count as unseen.
    """
    from stylus_docs.embedding.views import MAX_EXAMPLE_PROMPTS, example_prompt_text, examples_text

    last = len(prompts) - 1
    if last >= MAX_EXAMPLE_PROMPTS:
        return last
    if tokenizer is None:
        return None
    view = examples_text(prompts)
    enc = tokenizer.encode(view)
    ends = [end for (_start, end) in enc.offsets if end > 0]
    cut = max(ends) if ends else 0
    piece = example_prompt_text(prompts[last])
    start = view.rfind(piece) if piece else -1
    return last if start >= cut else None


def training_pairs(rows: Sequence[dict[str, Any]], tokenizer: Any | None = None) -> list[tuple[int, int]]:
    """``(row, prompt index)`` pairs: a seeded sample of up to :data:`MAX_PAIRS` versions whose chosen
    prompt is not in their card vector. Only the release's own ``example_prompts`` are read."""
    eligible = []
    for r, row in enumerate(rows):
        prompts = list(row.get("example_prompts") or [])
        if len(prompts) < MIN_PROMPTS:
            continue
        j = _unseen_prompt(prompts, tokenizer)
        if j is not None and prompts[j].strip():
            eligible.append((r, j))
    rng = np.random.default_rng(SEED)
    if len(eligible) > MAX_PAIRS:
        pick = np.sort(rng.choice(len(eligible), MAX_PAIRS, replace=False))
        eligible = [eligible[i] for i in pick]
    return eligible


def pair_digest(row: dict[str, Any], j: int) -> str:
    """Short digest of one training pair (adapter id + prompt), to tell how much a rebuild changed."""
    text = f"{row.get('adapter_id')}\0{row['example_prompts'][j]}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- fitting ----------------------------------------------------------------------------------------------
def _fit(
    groups: list[np.ndarray], l2: float, x0: np.ndarray | None, gates: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Listwise softmax fit of ``rrf_offset + gate · (z · w)``; each group's row 0 is the target.
    ``gates``: per group (default 1). Returns (w, mean, scale, loss)."""
    from scipy.optimize import minimize

    allx = np.concatenate(groups)
    mean = allx.mean(axis=0)
    scale = allx.std(axis=0)
    scale[scale < 1e-9] = 1.0
    gate_rows = np.repeat(
        np.asarray(gates if gates is not None else [1.0] * len(groups)), [len(g) for g in groups]
    )
    big = np.concatenate([(g - mean) / scale for g in groups]) * gate_rows[:, None]
    offset = rrf_offset(allx)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    starts = bounds[:-1]
    n = len(groups)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = offset + big @ w
        # log-sum-exp per group (vectorised with reduceat over the concatenated candidates).
        mx = np.maximum.reduceat(s, starts)
        e = np.exp(s - np.repeat(mx, np.diff(bounds)))
        tot = np.add.reduceat(e, starts)
        lse = mx + np.log(tot)
        val = float((lse - s[starts]).sum()) / n + l2 * float(w @ w)
        p = e / np.repeat(tot, np.diff(bounds))
        grad = (p @ big - big[starts].sum(axis=0)) / n + 2 * l2 * w
        return val, grad

    w0 = x0 if x0 is not None else np.zeros(big.shape[1])
    res = minimize(loss, w0, jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return res.x, mean, scale, float(res.fun)


def pair_queries(
    rows: Sequence[dict[str, Any]], embedder: Any, pairs: Sequence[tuple[int, int]]
) -> np.ndarray:
    """The training prompts' query vectors (tags stripped, as a query is embedded)."""
    from stylus_docs.normalize.lora import strip_tags

    texts = [strip_tags(rows[r]["example_prompts"][j]) for r, j in pairs]
    return np.asarray(embedder.embed(texts), dtype=np.float32)


def train_query_map(
    queries: np.ndarray,
    embeddings: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    *,
    tau: float = 20.0,
    epochs: int = 120,
    patience: int = 15,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A linear query map ``A`` (``q' = normalize(q + q A)``) fitted on (prompt vector → card row) pairs.

    Softmax over the cards at temperature ``tau`` (every target's card plus a seeded sample of the others,
    at most :data:`MAP_NEGATIVES`), AdamW from ``start`` (a previous build's map) or zero, early-stopped
    on a fifth of the pairs held out by ``groups`` (the model id, so no sibling version of a held pair
    is fitted on). Returns ``(A, info)``. What it learns is the gap between how creators write prompts
    and how the card vectors read (dense-only creator recall@10 0.62 → 0.80 on the tuning part).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.manual_seed(SEED)
    n = embeddings.shape[0]
    rows = np.arange(n)
    if n > MAP_NEGATIVES:
        rng = np.random.default_rng(SEED)
        rest = np.setdiff1d(rows, targets)
        pick = rng.choice(len(rest), max(MAP_NEGATIVES - len(np.unique(targets)), 0), replace=False)
        rows = np.union1d(np.unique(targets), rest[pick])
    local = np.searchsorted(rows, targets)
    q = torch.from_numpy(np.asarray(queries, dtype=np.float32))
    e = torch.from_numpy(np.asarray(embeddings[rows], dtype=np.float32))
    t = torch.from_numpy(local.astype(np.int64))
    held = torch.tensor([int(hashlib.sha256(g.encode()).hexdigest(), 16) % 10 < 2 for g in groups])
    if not held.any() or held.all():
        held = torch.arange(len(groups)) % 5 == 0
    d = q.shape[1]
    a = torch.zeros(d, d) if start is None or start.shape != (d, d) else torch.from_numpy(start.copy())
    a.requires_grad_(True)
    opt = torch.optim.AdamW([a], lr=3e-3, weight_decay=1.0)
    best, best_a, best_epoch, first = float("inf"), a.detach().clone(), 0, None
    for epoch in range(epochs):
        logits = tau * F.normalize(q + q @ a, dim=1) @ e.T
        with torch.no_grad():
            val = float(F.cross_entropy(logits[held], t[held]))
        first = val if first is None else first
        if val < best:
            best, best_a, best_epoch = val, a.detach().clone(), epoch
        elif epoch - best_epoch >= patience:
            break
        loss = F.cross_entropy(logits[~held], t[~held])
        opt.zero_grad()
        loss.backward()
        opt.step()
    info = {"map_val_loss": [round(float(first or 0.0), 4), round(best, 4)], "map_epochs": best_epoch,
            "map_cards": int(len(rows))}  # fmt: skip
    return best_a.numpy().astype(np.float32), info


def training_groups(
    rows: Sequence[dict[str, Any]],
    embeddings: np.ndarray,
    embedder: Any,
    pairs: Sequence[tuple[int, int]],
    depth: int = 1000,
    dense_confidence: float | None = None,
    qvecs: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Per usable training pair, the :data:`FEATURES` of its candidates (the target's row first).

    The pair's prompt is scored against a BM25 index whose documents lack their own training prompt, and
    against the card vectors (which never held it, see :func:`training_pairs`). ``qvecs``: the
    prompts' vectors when already embedded (:func:`pair_queries`).
    """
    from stylus_docs.query.core import SearchConfig, _top, confidence_weights
    from stylus_docs.query.lexical import LexicalIndex, document_text
    from stylus_docs.query.triggers import TriggerIndex

    # The per-query shares as the query module computes them (its default configuration).
    conf = SearchConfig().dense_confidence if dense_confidence is None else dense_confidence
    held = {r: j for r, j in pairs}
    docs = []
    for r, row in enumerate(rows):
        if r in held:
            j = held[r]
            row = {**row, "example_prompts": [p for i, p in enumerate(row["example_prompts"]) if i != j]}
        docs.append(document_text(row))
    lexical = LexicalIndex.build(docs)
    # Trigger words are card metadata, never a prompt: the target's own are fair game.
    triggers = TriggerIndex([row.get("trigger_words") for row in rows])
    queries = [rows[r]["example_prompts"][j] for r, j in pairs]
    if qvecs is None:
        qvecs = pair_queries(rows, embedder, pairs)
    prior = prior_vector([row.get("downloads") for row in rows])
    n = len(rows)
    groups: list[np.ndarray] = []
    for start in range(0, len(pairs), 256):
        dense_block = embeddings @ qvecs[start : start + 256].T
        for off in range(dense_block.shape[1]):
            r = pairs[start + off][0]
            dense = dense_block[:, off]
            lex = lexical.scores(queries[start + off])
            d_top = _top(dense, depth)
            l_top = _top(np.where(lex > 0, lex, -np.inf), depth)
            lex_top = np.zeros(max(len(d_top), len(l_top)))
            lex_top[: len(l_top)] = lex[l_top]
            m_dense, m_bm25 = confidence_weights(dense[d_top], lex_top, conf)
            d_rank = np.zeros(n, np.int32)
            l_rank = np.zeros(n, np.int32)
            d_rank[d_top] = np.arange(1, len(d_top) + 1)
            l_rank[l_top] = np.arange(1, len(l_top) + 1)
            member = np.zeros(n, dtype=bool)
            member[d_top[:TRAIN_DEPTH]] = True
            member[l_top[:TRAIN_DEPTH]] = True
            if not member[r]:
                continue  # the target is not among the candidates: nothing to learn from this pair
            member[r] = False
            cand = np.concatenate([[r], np.flatnonzero(member)])
            trig = triggers.scores(queries[start + off])
            groups.append(
                candidate_features(dense, lex, cand, d_rank, l_rank, (m_dense, m_bm25), prior, trig)
            )
    return groups


def learn(
    rows: Sequence[dict[str, Any]],
    embeddings: np.ndarray,
    embedder: Any,
    *,
    previous: LearnedFusion | None = None,
    previous_build: str | None = None,
    l2: float = 1e-3,
    prior_weight: float = 0.0,
    depth: int = 1000,
    min_segments: int = TAG_SEGMENTS,
    map_strength: float = MAP_STRENGTH,
    groups: list[np.ndarray] | None = None,
    qvecs: np.ndarray | None = None,
) -> LearnedFusion | None:
    """Fit the ranker on the release's own pairs (None when there are too few of them).

    Args:
        rows: adapters-table rows in row order (``adapter_id``, ``downloads`` and the BM25 text columns).
        embeddings: the release's ``(n, dim)`` card vectors, same order.
        embedder: the query embedder of the release (its ``tokenizer``, when it has one, finds the
            prompts the card vectors did not see).
        previous: the previous build's model, reused when the pairs barely changed, else a warm start.
        previous_build: that build's id (recorded as ``reused_from``).
        l2: ridge penalty on the standardised weights.
        prior_weight: fixed weight of the downloads prior (chosen on the tuning part; not fitted, because
            creators' prompts carry no popularity signal).
        depth: the fusion depth, as at query time (the confidence shares use each ranking's top depth).
        min_segments: the tag-list threshold of :func:`gate` at query time.
        map_strength: strength of the query map (0: no map is trained).
        groups: :func:`training_groups` already computed for these rows (the evaluation's grid).
        qvecs: :func:`pair_queries` already computed for these rows (the evaluation's grid).
    """
    t0 = time.perf_counter()
    tokenizer = getattr(embedder, "tokenizer", None)
    pairs = training_pairs(rows, tokenizer)
    if len(pairs) < MIN_PAIRS:
        log.info("learned fusion: only %d training pairs; the release ranks with RRF", len(pairs))
        return None
    digests = sorted(pair_digest(rows[r], j) for r, j in pairs)
    base_meta = {"pairs": len(pairs), "pair_digests": digests, "l2": l2, "depth": depth}
    if previous is not None:
        old = set(previous.meta.get("pair_digests") or [])
        changed = 1.0 - len(old & set(digests)) / max(len(digests), len(old), 1)
        if changed <= REUSE_CHANGE:
            log.info("learned fusion: %.1f%% of the pairs changed; reusing %s", 100 * changed, previous_build)
            meta = {**previous.meta, **base_meta, "reused_from": previous_build, "changed": round(changed, 4)}
            return LearnedFusion(
                previous.weights, previous.mean, previous.scale, previous.prior_weight, previous.min_segments,
                previous.query_map, previous.map_strength, meta,
            )  # fmt: skip
    if qvecs is None:
        qvecs = pair_queries(rows, embedder, pairs)  # embedded once: the fit and the query map share them
    if groups is None:
        groups = training_groups(rows, embeddings, embedder, pairs, depth, qvecs=qvecs)
    if len(groups) < MIN_PAIRS:
        log.info("learned fusion: only %d usable training pairs; the release ranks with RRF", len(groups))
        return None
    x0 = None
    if previous is not None:
        x0 = previous.weights  # warm start (the standardisation is recomputed; close enough to help)
    w, mean, scale, fun = _fit(groups, l2, x0)  # ungated: the gate applies at query time (:func:`gate`)
    query_map, map_info = None, {}
    if map_strength > 0:
        # The ranker is fitted on the plain cosines above: the map is fitted on these very pairs, so
        # their mapped cosines would be optimistic features.
        query_map, map_info = train_query_map(
            qvecs, embeddings, np.asarray([r for r, _ in pairs]),
            [str(rows[r].get("adapter_id", r)).rsplit("@", 1)[0] for r, _ in pairs],
            start=previous.query_map if previous is not None else None,
        )  # fmt: skip
    meta = {
        **base_meta,
        **map_info,
        "used_pairs": len(groups),
        "loss": round(fun, 6),
        "fit_s": round(time.perf_counter() - t0, 2),
        "warm_start": previous_build if previous is not None else None,
    }
    log.info("learned fusion: %d pairs fitted in %.1fs (loss %.4f)", len(groups), meta["fit_s"], fun)
    return LearnedFusion(w, mean, scale, prior_weight, min_segments, query_map, map_strength, meta)


# -- build stage --------------------------------------------------------------------------------------------
#: Adapters-table columns the learning reads.
LEARN_COLUMNS = ("adapter_id", "downloads", "embedding")


def previous_model(previous: str | None) -> tuple[LearnedFusion | None, str | None]:
    """The learned model of a ``--previous`` release (verified like any release file), if it has one."""
    if not previous:
        return None, None
    from stylus_docs import release

    build_dir = release.resolve_build(previous)
    manifest = release.load_manifest(build_dir)
    entries = [e for e in manifest.get("files", []) if e.get("table") == "learned"]
    if not entries:
        return None, manifest.get("build_id")
    return load(release.verify_entry(build_dir, entries[0])), manifest.get("build_id")


def learn_build(
    build_dir: Path,
    files: Sequence[dict[str, Any]],
    embedder_manifest: dict[str, Any],
    previous: str | None = None,
) -> list[dict[str, Any]]:
    """Build stage: fit the ranker on a freshly written build; return its manifest ``files`` entry
    (``table = "learned"``), or ``[]`` when there are too few training pairs.

    Args:
        build_dir: the build directory (its adapters shards are written).
        files: the build's manifest file entries so far.
        embedder_manifest: the manifest's ``embedder`` (the query encoder is the one it names).
        previous: the ``--previous`` release, whose learned weights are reused or warm-started from.
    """
    import pyarrow.parquet as pq

    from stylus_docs import writer
    from stylus_docs.embedding import load_query_embedder
    from stylus_docs.query.core import _embedding_matrix
    from stylus_docs.query.lexical import TEXT_COLUMNS

    paths = [build_dir / e["path"] for e in files if e["table"] == "adapters"]
    if not paths:
        return []
    cols = list(dict.fromkeys(LEARN_COLUMNS + TEXT_COLUMNS))
    table = pq.read_table(paths, columns=cols)
    embeddings = _embedding_matrix(table.column("embedding"), int(embedder_manifest["dim"]))
    rows = table.drop(["embedding"]).to_pylist()
    if sum(len(r.get("example_prompts") or []) >= MIN_PROMPTS for r in rows) < MIN_PAIRS:
        # Too small a catalogue to learn from: decided before the query encoder is even loaded.
        log.info("learned fusion: fewer than %d versions with %d prompts; the release ranks with RRF",
                 MIN_PAIRS, MIN_PROMPTS)  # fmt: skip
        return []
    prev, prev_id = previous_model(previous)
    embedder = load_query_embedder(embedder_manifest)
    if prev is not None and prev.meta.get("embedder") != embedder_manifest.get("model"):
        prev = None  # fitted over another encoder's cosines: neither reusable nor a useful start
    if prev is not None and prev.version != LEARNED_VERSION:
        log.info("learned fusion: %s of %s is an older version; fitting %s afresh", prev.version, prev_id,
                 LEARNED_VERSION)  # fmt: skip
        prev = None  # other features: its weights neither carry over nor start the fit
    model = learn(rows, embeddings, embedder, previous=prev, previous_build=prev_id)
    if model is None:
        return []
    model.meta["embedder"] = embedder_manifest.get("model")
    out = build_dir / LEARNED_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(model.to_json(), sort_keys=True), encoding="utf-8")
    tmp.replace(out)
    return [writer.file_entry(build_dir, LEARNED_PATH, "learned", int(model.meta.get("pairs", 0)))]


def attach(build_dir: Path, **learn_kw: Any) -> dict[str, Any] | None:
    """Fit the ranker on an existing build and list it in its manifest (what the build's stage does, for a
    build written without it: benchmarks, the evaluation). Returns the file entry, or None."""
    from stylus_docs import release, writer

    manifest = release.load_manifest(build_dir)
    files = [e for e in manifest["files"] if e["table"] != "learned"]
    entries = learn_build(build_dir, files, manifest["embedder"], **learn_kw)
    manifest["files"] = files + entries
    writer.write_manifest(build_dir, manifest)
    return entries[0] if entries else None
