"""What a build reads of a snapshot besides its data chunks: tombstones and the saved base-model enums.

Read once by the driver before the pipeline starts, so a malformed tombstone or enums file (our own
crawl output) and an unknown ``--base-models`` name stop the build in one line before any work is done.
What the pipeline needs of them is small and picklable (ids and names, never the records): the
tombstone files themselves are read again inside the pipeline only with ``--keep-deleted``, whose last
known records become input records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stylus_docs import release
from stylus_docs.build import rules
from stylus_docs.normalize import base_models, deletions
from stylus_docs.normalize.raw import TOMBSTONE, RawFile


@dataclass(slots=True)
class SnapshotExtras:
    """Tombstones and enums of the ``--raw`` snapshots, digested for the pipeline.

    Args:
        tombstone_files: every ``tombstones-*.jsonl.gz`` of the ``--raw`` directories.
        enums_files: every saved ``enums.json``.
        coverage: the adapter ids the tombstones mark deleted.
        removal: adapter id → ``{reason, last_seen, host}`` of the concrete ids this build removes
            unless it writes them (``--keep-deleted``): the ``--previous`` release's ids the tombstones
            cover, or without one the ids the tombstones name.
        known_base_models: the enums' base-model names, or None when no snapshot saved them.
    """

    tombstone_files: list[str] = field(default_factory=list)
    enums_files: list[str] = field(default_factory=list)
    coverage: deletions.Coverage = field(default_factory=deletions.Coverage)
    removal: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_base_models: frozenset[str] | None = None

    def tombstone_inputs(self) -> list[RawFile]:
        """The tombstone files as pipeline inputs (``--keep-deleted``)."""
        return [RawFile(path, TOMBSTONE) for path in self.tombstone_files]

    def manifest_inputs(self) -> list[str]:
        """Paths that belong in the manifest's ``inputs`` beside the data files."""
        return [*self.tombstone_files, *self.enums_files]


def previous_adapter_ids(previous: str) -> list[str]:
    """Adapter ids of a previous release (its files verified against its manifest)."""
    build = release.resolve_build(previous)
    manifest = release.load_manifest(build)
    table = release.read_table(build, manifest, "adapters", ["adapter_id"])
    return [str(v) for v in table.column("adapter_id").to_pylist()]


def load_extras(raw: list[str], files: list[RawFile], previous: str | None,
                base_models_wanted: tuple[str, ...] = ()) -> SnapshotExtras:  # fmt: skip
    """Read and check the tombstones and enums of ``raw``; check ``--base-models`` against the enums.

    Raises:
        FatalError: a malformed tombstone or enums file (one line naming it), or a ``--base-models`` name
            that neither the enums nor the input know (with the closest names).
    """
    stone_paths = deletions.tombstone_files(raw)
    stones = deletions.read_tombstones(stone_paths)
    enum_paths = base_models.enums_files(raw)
    enums = base_models.read_enums(enum_paths)
    rules.check_base_models(base_models_wanted, enums, lambda: base_models.seen_base_models(files))
    cover = deletions.coverage(stones)
    prev_ids = (previous_adapter_ids(previous) if cover else []) if previous else None
    return SnapshotExtras(
        tombstone_files=[str(p) for p in stone_paths],
        enums_files=[str(p) for p in enum_paths],
        coverage=cover,
        removal=deletions.removal_candidates(stones, prev_ids),
        known_base_models=enums,
    )
