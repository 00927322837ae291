"""The build's decisions as plain functions: merge (and deletions), reuse, refine cache, the
``--base-models`` check against the live enums, manifest.

Nothing here imports Beam; ``pipelines/stages.py`` calls these from its DoFns, and the tests call them
directly.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from stylus_docs.errors import FatalError
from stylus_docs.normalize import civitai
from stylus_docs.normalize.base_models import family
from stylus_docs.records import NOT_RENDERED, WEIGHTS_COLUMNS, AdapterCard, Refinement

# --------------------------------------------------------------------------------------------- merge
#: Tags of the records :func:`merge_versions` folds: input listing cards and version details, and the
#: same from tombstones' last known records (``--keep-deleted``).
CARD, DETAIL, TOMB_CARD, TOMB_DETAIL = "card", "detail", "tomb_card", "tomb_detail"


@dataclass(slots=True)
class Merged:
    """One adapter id's records folded into one card.

    Args:
        card: the merged card, or None when merging failed (``error`` says why) or the adapter is deleted.
        records: input records this adapter id stands for (the card, duplicates and version details).
        duplicates: listing records beyond the first (filtered as ``duplicate``).
        error: ``"<Type>: <message>"`` when the merged card could not be built.
        deleted: records dropped because a tombstone covers the adapter (filtered as ``deleted``).
    """

    card: AdapterCard | None
    records: int
    duplicates: int
    error: str | None = None
    deleted: int = 0


def _record_count(cards: list[AdapterCard], details: list[AdapterCard]) -> int:
    # Details of a listed card are part of it; a detail-only adapter counts once, as its first detail.
    return len(cards) if cards else min(1, len(details))


def merge_versions(values: Iterable[tuple[str, AdapterCard]], *, covered: bool = False,
                   keep_deleted: bool = False) -> Merged:  # fmt: skip
    """Fold ``(tag, card)`` records of one adapter id into one card.

    The first listing card is the base (later listings of the same id are duplicates); version details
    from ``/model-versions`` fill in what the listing lacks. A detail alone (a version the listing did not
    include) becomes the card. Input records counted: the base + duplicates (details of a listed card are
    part of it; a detail-only adapter counts once, as its first detail).

    A tombstone covers the adapter when ``covered`` (or a tombstone record of it is among ``values``):
    without ``keep_deleted`` every record is dropped (``deleted``); with it the card is made from the
    tombstone's last known record (or, when the tombstone has none, from the stale input copy), flagged
    ``deleted``, and stale input listings of it are dropped as ``deleted``.
    """
    items = list(values)
    cards = [c for tag, c in items if tag == CARD]
    details = [c for tag, c in items if tag == DETAIL]
    tomb_cards = [c for tag, c in items if tag == TOMB_CARD]
    tomb_details = [c for tag, c in items if tag == TOMB_DETAIL]
    covered = covered or bool(tomb_cards or tomb_details)
    stale = 0
    if covered and not keep_deleted:
        n = _record_count(cards, details) + _record_count(tomb_cards, tomb_details)
        return Merged(None, n, 0, deleted=n)
    if tomb_cards or tomb_details:
        stale = len(cards)
        cards, details = tomb_cards, tomb_details + details
    if cards:
        base, dupes = cards[0], cards[1:]
    else:
        base, dupes = details[0], []
        details = details[1:]
    try:
        for detail in details:
            base = civitai.merge_detail(base, detail)
        base.base_model_family = family(base.base_model)
        base.deleted = covered
        base.compute_content_hash()
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        # Documented boundary: the merged card is one bad record (e.g. text that cannot be encoded).
        return Merged(None, 1 + len(dupes) + stale, len(dupes), f"{type(exc).__name__}: {exc}", stale)
    return Merged(base, 1 + len(dupes) + stale, len(dupes), deleted=stale)


# --------------------------------------------------------------------------------------------- reuse
#: What :func:`reuse_decision` says about a card.
DONE, EMBED, REFINE = "done", "embed", "refine"


def reuse_decision(card: AdapterCard, prev: dict[str, Any] | None, refiner_id: str, embedder_id: str,
                   *, needs_render: bool = False) -> str:  # fmt: skip
    """Decide what work a card still needs given the previous release's row of the same adapter id.

    ``done`` – same content and refiner, same embedder: refinement and embedding are copied onto the card;
    ``embed`` – same content and refiner, another embedder: the refinement is copied;
    ``refine`` – new, changed, refined by another refiner version, or (``needs_render``: this build
    renders) never rendered before — the refinement of a rendered adapter is made from its renders.
    """
    if prev is None or prev.get("content_hash") != card.content_hash or prev.get("refiner") != refiner_id:
        return REFINE
    if needs_render and prev.get("render_status") in (None, NOT_RENDERED):
        return REFINE
    card.apply_refinement(Refinement(prev["refined_description"], prev["category"],
                                     prev["recommended_weight"], prev["refiner"]))  # fmt: skip
    for name in ("render_status", "render_error", "render_load_s", "render_s", *WEIGHTS_COLUMNS):
        if name in prev and hasattr(card, name):
            setattr(card, name, prev[name])
    if prev.get("embedder") == embedder_id and prev.get("embedding") is not None:
        card.embedding = prev["embedding"]
        card.embedder = embedder_id
        return DONE
    return EMBED


# --------------------------------------------------------------------------------------------- refine cache
def cached_refinement(entry: dict[str, Any], refiner_id: str) -> Refinement:
    """The refinement a cache entry holds."""
    return Refinement(entry["description"], entry["category"], float(entry["recommended_weight"]), refiner_id)


# --------------------------------------------------------------------------------------------- manifest
def counts(stats: dict[str, int], files: list[dict[str, Any]]) -> dict[str, Any]:
    """Manifest ``counts`` from the pipeline's event totals and the written file list."""

    def group(prefix: str) -> dict[str, int]:
        return {k.split("/", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith(prefix + "/") and v}

    out: dict[str, Any] = {
        "input": stats.get("input", 0),
        "written": sum(f["rows"] for f in files if f["table"] == "adapters"),
        "filtered": group("filtered"),
        "dead_letter": group("dead_letter"),
        "reused": stats.get("reused", 0),
        "refined": stats.get("refined", 0),
        "embedded": stats.get("embedded", 0),
        "images": sum(f["rows"] for f in files if f["table"] == "images"),
        "images_filtered": group("images_filtered"),
    }
    out["removed"] = sum(f["rows"] for f in files if f["table"] == "removed")
    out["kept_deleted"] = stats.get("kept_deleted", 0)
    out["unknown_base_models"] = _top(group("unknown_base_models"), MAX_UNKNOWN_NAMES)
    rendered = group("rendered")
    if rendered:
        out["rendered"] = rendered
    weights = group("weights_format")
    if weights:
        out["weights_format"] = weights
    usage = group("refine_usage")
    if usage or stats.get("refine_deferred"):
        out["refine_usage"] = {**usage, "deferred": stats.get("refine_deferred", 0)}
    return out


#: Distinct unknown base-model names kept in the manifest (the rest are summed under ``(other)``).
MAX_UNKNOWN_NAMES = 100


def _top(names: dict[str, int], limit: int) -> dict[str, int]:
    if len(names) <= limit:
        return names
    ranked = sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(sorted(ranked[:limit]))
    kept["(other)"] = kept.get("(other)", 0) + sum(n for _, n in ranked[limit:])
    return kept


# --------------------------------------------------------------------------------------------- base models
def check_base_models(requested: Iterable[str], enums: frozenset[str] | None,
                      seen: Callable[[], set[str]]) -> None:  # fmt: skip
    """Refuse ``--base-models`` names that nothing knows, when the snapshot saved the live enums.

    Known = the enums' ``BaseModel`` names ∪ the names the input uses (``seen``, a full pass over the
    input, is called only when some name is not in the enums). Without enums (older snapshots) nothing
    is checked: a name may simply be newer than the code.

    Raises:
        FatalError: one line naming every unknown name with its closest known names.
    """
    wanted = list(dict.fromkeys(requested))
    if enums is None or not wanted:
        return
    missing = [name for name in wanted if name not in enums]
    if not missing:
        return
    known = set(enums) | seen()
    missing = [name for name in missing if name not in known]
    if not missing:
        return
    by_lower: dict[str, str] = {}
    for name in sorted(known):
        by_lower.setdefault(name.lower(), name)
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
        hint = ", ".join(repr(by_lower[c]) for c in close)
        parts.append(f"{name!r} (did you mean {hint}?)" if hint else f"{name!r} (no close match)")
    raise FatalError(
        f"--base-models: unknown base model{'s' if len(parts) > 1 else ''} {'; '.join(parts)}: not in the "
        f"snapshot's enums.json ({len(enums)} names) nor in the input"
    )


#: Dead-letter reasons that mean the configuration is wrong, not the record: one is enough to refuse.
FATAL_REASONS = {"unauthorized": "the refiner endpoint refused the credentials (check OPENAI_API_KEY)"}


def check_publishable(counts: dict[str, Any], max_dead_fraction: float) -> None:
    """Refuse to publish a build that is empty or mostly failures.

    A bad key or a dead endpoint turns every record into a dead letter; publishing that would replace a
    good live release with an empty one (and ``query`` on it has nothing to search).

    Raises:
        FatalError: no input, a fatal dead-letter reason, dead letters above ``max_dead_fraction`` of the
            input, or no adapter written.
    """
    dead = counts["dead_letter"]
    for reason, message in FATAL_REASONS.items():
        if dead.get(reason):
            raise FatalError(f"{message}: {dead[reason]} records failed with {reason!r}; nothing published")
    if counts["input"] == 0:
        raise FatalError("the --raw input holds no records; nothing published")
    n_dead = sum(dead.values())
    if n_dead > max_dead_fraction * counts["input"]:
        top = ", ".join(f"{r} {n}" for r, n in sorted(dead.items(), key=lambda kv: -kv[1])[:3])
        raise FatalError(
            f"{n_dead} of {counts['input']} records are dead letters ({top}), more than "
            f"--max-dead-letter-fraction {max_dead_fraction:g}; nothing published"
        )
    if counts["written"] == 0:
        raise FatalError(
            f"no adapter was written ({counts['input']} input records, filtered "
            f"{json.dumps(counts['filtered'], sort_keys=True)}); nothing published"
        )


def order_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest file order: adapters, images, dead letters, removed; by path within a table."""
    order = ["adapters", "images", "dead_letter", "removed", "learned"]
    return sorted(files, key=lambda f: (order.index(f["table"]), f["path"]))


def summary(manifest: dict[str, Any]) -> str:
    """A short human summary of a manifest."""
    c = manifest["counts"]
    lines = [
        f"build {manifest['build_id']}: {c['written']} adapters written from {c['input']} input records "
        f"({c['images']} images)",
        f"  filtered: {json.dumps(c['filtered'], sort_keys=True)}",
        f"  dead letters: {json.dumps(c['dead_letter'], sort_keys=True)}",
        f"  reused {c['reused']}, refined {c['refined']}, embedded {c['embedded']}; "
        f"refiner {manifest['refiner']['name']}@{manifest['refiner']['version']}, "
        f"embedder {manifest['embedder']['name']}:{manifest['embedder']['model']} "
        f"(dim {manifest['embedder']['dim']})",
    ]
    if c.get("removed") or c.get("kept_deleted"):
        kept = c.get("kept_deleted", 0)
        kept = f"; {kept} deleted adapters kept (deleted = true)" if kept else ""
        lines.append(f"  removed: {c.get('removed', 0)} adapters deleted at the source (removed.json){kept}")
    unknown = c.get("unknown_base_models") or {}
    if unknown:
        top = sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{name} {n}" for name, n in top[:8]) + (", …" if len(top) > 8 else "")
        lines.append(f"  unknown base models ({len(unknown)}, in no known family, kept as is): {shown}")
    if c.get("rendered"):
        lines.append(f"  rendered: {json.dumps(c['rendered'], sort_keys=True)}")
    if c.get("weights_format"):
        lines.append(f"  weights formats: {json.dumps(c['weights_format'], sort_keys=True)}")
    if c.get("refine_usage"):
        lines.append(f"  refine usage: {json.dumps(c['refine_usage'], sort_keys=True)}")
    if manifest.get("stage_seconds"):
        slow = sorted(manifest["stage_seconds"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("  seconds by step: " + ", ".join(f"{k} {v:.2f}" for k, v in slow))
    return "\n".join(lines)
