"""The build's decisions as plain functions: merge, reuse, refine cache, manifest.

Nothing here imports Beam; ``pipelines/stages.py`` calls these from its DoFns, and the tests call them
directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stylus_docs.errors import FatalError
from stylus_docs.normalize import civitai
from stylus_docs.records import NOT_RENDERED, AdapterCard, Refinement


# --------------------------------------------------------------------------------------------- merge
@dataclass(slots=True)
class Merged:
    """One adapter id's records folded into one card.

    Args:
        card: the merged card, or None when merging failed (``error`` says why).
        records: input records this adapter id stands for (the card, duplicates and version details).
        duplicates: listing records beyond the first (filtered as ``duplicate``).
        error: ``"<Type>: <message>"`` when the merged card could not be built.
    """

    card: AdapterCard | None
    records: int
    duplicates: int
    error: str | None = None


def merge_versions(values: Iterable[tuple[str, AdapterCard]]) -> Merged:
    """Fold ``("card"|"detail", card)`` records of one adapter id into one card.

    The first listing card is the base (later listings of the same id are duplicates); version details
    from ``/model-versions`` fill in what the listing lacks. A detail alone (a version the listing did not
    include) becomes the card. Input records counted: the base + duplicates (details of a listed card are
    part of it; a detail-only adapter counts once, as its first detail).
    """
    items = list(values)
    cards = [c for tag, c in items if tag == "card"]
    details = [c for tag, c in items if tag == "detail"]
    if cards:
        base, dupes = cards[0], cards[1:]
    else:
        base, dupes = details[0], []
        details = details[1:]
    try:
        for detail in details:
            base = civitai.merge_detail(base, detail)
        base.compute_content_hash()
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        # Documented boundary: the merged card is one bad record (e.g. text that cannot be encoded).
        return Merged(None, 1 + len(dupes), len(dupes), f"{type(exc).__name__}: {exc}")
    return Merged(base, 1 + len(dupes), len(dupes))


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
    for name in ("render_status", "render_error", "render_load_s", "render_s"):
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
    rendered = group("rendered")
    if rendered:
        out["rendered"] = rendered
    usage = group("refine_usage")
    if usage or stats.get("refine_deferred"):
        out["refine_usage"] = {**usage, "deferred": stats.get("refine_deferred", 0)}
    return out


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
    """Manifest file order: adapters, images, dead letters; by path within a table."""
    return sorted(files, key=lambda f: (["adapters", "images", "dead_letter"].index(f["table"]), f["path"]))


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
    if c.get("rendered"):
        lines.append(f"  rendered: {json.dumps(c['rendered'], sort_keys=True)}")
    if c.get("refine_usage"):
        lines.append(f"  refine usage: {json.dumps(c['refine_usage'], sort_keys=True)}")
    if manifest.get("stage_seconds"):
        slow = sorted(manifest["stage_seconds"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("  seconds by step: " + ", ".join(f"{k} {v:.2f}" for k, v in slow))
    return "\n".join(lines)
