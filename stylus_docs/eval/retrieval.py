"""Retrieval quality of a release: recall@k and MRR of :mod:`stylus_docs.query` on labelled queries.

Queries are JSON lines; each names its text and the adapters a good search should return:

* ``{"query": TEXT, "expected": [ADAPTER_ID, ...], "kind": "creator"}`` – e.g. a creator's example
  prompt held out of the build, whose adapter is the target (``kind`` defaults to ``creator``);
* ``{"prompt": TEXT, "civitaiResources": [{"type": "lora", "modelVersionId": 123}, ...]}``, or a
  Civitai image object ``{"meta": {"prompt": ..., "civitaiResources": [...]}}`` – the adapters that
  image was really generated with (``kind`` ``resources``). Each LoRA/LyCORIS/embedding resource
  becomes the target ``civitai:*@<modelVersionId>``: any adapter id of that Civitai version matches.
  Checkpoints are not adapters and are left out.

``<lora:…>`` network tags are stripped from the query text (they name the answer). Targets that are
not in the release cannot be found and are left out of the query (counted); a query left without
targets is skipped (counted).

Per query, recall@k is the share of its targets in the top k (1 or 0 for one target) and the reciprocal
rank is ``1 / rank`` of the best-ranked target (0 when none is in the top ``max(ks)``). Reported as
means over queries, overall and per ``kind``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError
from stylus_docs.normalize.civitai import civitai_resources
from stylus_docs.normalize.lora import strip_tags

DEFAULT_KS = (1, 10, 150)
#: ``civitaiResources`` types that are adapters (lower case; Civitai writes ``lora``, ``locon``, ``embed``).
ADAPTER_RESOURCE_TYPES = frozenset({"lora", "locon", "lycoris", "dora", "loha", "lokr", "embed",
                                    "textualinversion", "embedding"})  # fmt: skip
_VERSION_TARGET = re.compile(r"^civitai:\*@(\d+)$")


@dataclass(slots=True)
class Query:
    """One labelled query: its text, target adapter ids (or ``civitai:*@<version>``) and kind."""

    text: str
    targets: list[str]
    kind: str = "creator"
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", strip_tags(text)).strip(" ,")


def parse_query(obj: Any, line: int) -> Query:
    """One JSON line as a :class:`Query`.

    Raises:
        FatalError: not an object, no text, or no targets (naming the line).
    """
    if not isinstance(obj, dict):
        raise FatalError(f"--queries line {line}: not a JSON object")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    text = obj.get("query") or obj.get("prompt") or meta.get("prompt")
    if not isinstance(text, str) or not _clean(text):
        raise FatalError(f"--queries line {line}: no 'query' (or 'prompt') text")
    targets: list[str] = []
    expected = obj.get("expected")
    if expected is not None:
        if isinstance(expected, str):
            expected = [expected]
        if not isinstance(expected, list) or not all(isinstance(e, str) and e for e in expected):
            raise FatalError(f"--queries line {line}: 'expected' must be a list of adapter ids")
        targets.extend(expected)
    source = obj if "civitaiResources" in obj else meta
    resources = civitai_resources(source) or []
    from_resources = [
        f"civitai:*@{r['model_version_id']}"
        for r in resources
        if str(r.get("type") or "").lower().replace(" ", "") in ADAPTER_RESOURCE_TYPES
    ]
    targets.extend(t for t in from_resources if t not in targets)
    if not targets:
        raise FatalError(f"--queries line {line}: no 'expected' adapter ids and no adapter civitaiResources")
    kind = obj.get("kind") or ("resources" if from_resources and expected is None else "creator")
    return Query(_clean(text), targets, str(kind), line)


def read_queries(path: str | os.PathLike[str]) -> list[Query]:
    """Every query of a JSONL file (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise FatalError(f"--queries {path}: no such file")
    out: list[Query] = []
    with p.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FatalError(f"--queries line {n}: not JSON ({exc.msg})") from None
            out.append(parse_query(obj, n))
    if not out:
        raise FatalError(f"--queries {path}: no queries")
    return out


def _matcher(ids: Iterable[str]) -> tuple[set[str], dict[str, set[str]]]:
    """The release's adapter ids, and Civitai version id → adapter ids of that version."""
    exact = set(ids)
    by_version: dict[str, set[str]] = {}
    for aid in exact:
        if aid.startswith("civitai:") and "@" in aid:
            by_version.setdefault(aid.rsplit("@", 1)[1], set()).add(aid)
    return exact, by_version


def _resolve(target: str, exact: set[str], by_version: dict[str, set[str]]) -> set[str]:
    m = _VERSION_TARGET.match(target)
    if m:
        return by_version.get(m.group(1), set())
    return {target} if target in exact else set()


def evaluate(
    release: Any,
    queries: Sequence[Query],
    ks: Sequence[int] = DEFAULT_KS,
    include_nsfw: bool = True,
    per_query: bool = False,
    **filters: Any,
) -> dict[str, Any]:
    """Recall@k and MRR of ``release.search_batch`` on ``queries``.

    Args:
        release: an opened :class:`~stylus_docs.query.Release`.
        queries: the labelled queries.
        ks: cut-offs (the search returns ``max(ks)`` hits).
        include_nsfw: search NSFW adapters too (targets may be NSFW; default yes).
        per_query: include each query's target ranks in the output.
        **filters: further :class:`~stylus_docs.query.Filters`.

    Returns:
        ``{"ks", "overall": {"n", "recall@K"…, "mrr"}, "by_kind": {kind: {...}}, "skipped_no_target",
        "targets_missing", "queries"?}``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise FatalError("-k values must be positive")
    exact, by_version = _matcher(str(a) for a in release.ids)
    usable: list[tuple[Query, list[set[str]]]] = []
    missing = 0
    skipped = 0
    for q in queries:
        resolved = [_resolve(t, exact, by_version) for t in q.targets]
        present = [r for r in resolved if r]
        missing += len(resolved) - len(present)
        if present:
            usable.append((q, present))
        else:
            skipped += 1
    hits = (
        release.search_batch([q.text for q, _ in usable], k=max(ks), include_nsfw=include_nsfw, **filters)
        if usable
        else []
    )
    rows: list[dict[str, Any]] = []
    for (q, targets), found in zip(usable, hits, strict=True):
        rank_of: dict[str, int] = {}
        for i, h in enumerate(found, 1):
            rank_of.setdefault(h.adapter_id, i)
        ranks = [min((rank_of[a] for a in ids if a in rank_of), default=0) for ids in targets]
        row: dict[str, Any] = {"kind": q.kind, "ranks": ranks}
        for k in ks:
            row[f"recall@{k}"] = sum(0 < r <= k for r in ranks) / len(ranks)
        best = min((r for r in ranks if r), default=0)
        row["rr"] = 1.0 / best if best else 0.0
        if per_query:
            row.update(query=q.text, line=q.line, targets=q.targets)
        rows.append(row)

    def summary(sub: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(sub)}
        for k in ks:
            out[f"recall@{k}"] = sum(r[f"recall@{k}"] for r in sub) / len(sub) if sub else None
        out["mrr"] = sum(r["rr"] for r in sub) / len(sub) if sub else None
        return out

    kinds = sorted({r["kind"] for r in rows})
    result: dict[str, Any] = {
        "ks": ks,
        "overall": summary(rows),
        "by_kind": {k: summary([r for r in rows if r["kind"] == k]) for k in kinds},
        "skipped_no_target": skipped,
        "targets_missing": missing,
    }
    if per_query:
        result["queries"] = rows
    return result
