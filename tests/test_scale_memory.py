"""Memory that does not grow with the catalogue, and de-duplication that does not need shared memory.

* the shard count follows the row count inside the pipeline, so one shard (what one worker holds while
  writing) stays under ``MAX_SHARD_ROWS`` rows at any catalogue size;
* the crawl's keyed aggregation (``DedupeChunks``) drops the extra copies that two workers committed,
  keeping the first in chunk order, on a real Beam pipeline over real chunk files.
"""

from __future__ import annotations

import json

import apache_beam as beam
import pytest

from pipelines import stages
from pipelines.crawl import DedupeChunks
from stylus_docs.beam_options import make_pipeline_options
from stylus_docs.crawl import dedupe
from stylus_docs.crawl.snapshot import committed_chunks, iter_chunk_file, write_chunk


def test_shard_count_grows_with_rows_not_below_the_flag() -> None:
    cap = stages.MAX_SHARD_ROWS["adapters"]
    assert stages.shard_count(0, 1, "adapters") == 1
    assert stages.shard_count(cap, 1, "adapters") == 1
    assert stages.shard_count(cap + 1, 1, "adapters") == 2
    assert stages.shard_count(40 * cap, 1, "adapters") == 40
    assert stages.shard_count(10, 4, "adapters") == 4


def test_write_shards_splits_a_table_larger_than_one_shard(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stages.MAX_SHARD_ROWS, "removed_test", 7)
    from apache_beam.testing.util import assert_that

    rows = [{"adapter_id": f"civitai:{i}@{i}"} for i in range(30)]

    class Probe(stages.WriteShards):
        def _write(self, group, count):  # noqa: ANN001, ANN202 - the parent's signature
            index, items = group
            return index, count, len([r for r in items if r is not None])

    def check(seen: list[tuple[int, int, int]]) -> None:
        assert {c for _, c, _ in seen} == {5}  # ceil(30 / 7), not --shards 1
        assert sorted(i for i, _, _ in seen) == [0, 1, 2, 3, 4]
        assert sum(n for _, _, n in seen) == 30
        assert max(n for _, _, n in seen) < 30

    with beam.Pipeline(options=make_pipeline_options()) as p:
        out = p | beam.Create(rows) | Probe("removed_test", str(tmp_path), 1, None)
        assert_that(out, check)


def _ids(root, prefix: str) -> list[int]:
    return [r["id"] for path in committed_chunks(root, prefix) for r in iter_chunk_file(path)]


def test_dedupe_chunks_drops_extra_copies_keeping_the_first(tmp_path) -> None:
    root = tmp_path / "civitai"
    # Two "workers" committed overlapping listings: 3 and 4 twice, 5 three times.
    write_chunk(root, "models", [{"id": 1, "v": "a"}, {"id": 3, "v": "first"}, {"id": 5, "v": "first"}])
    write_chunk(root, "models", [{"id": 2}, {"id": 3, "v": "second"}, {"id": 4, "v": "first"}])
    write_chunk(root, "models", [{"v": "keys not id-first", "id": 5}, {"id": 4, "v": "second"}, {"id": 6}])
    with beam.Pipeline(options=make_pipeline_options()) as p:
        _ = p | beam.Create([1, 2]) | DedupeChunks(str(root), "models")
    ids = _ids(root, "models")
    assert sorted(ids) == [1, 2, 3, 4, 5, 6]
    kept = {r["id"]: r.get("v") for path in committed_chunks(root, "models") for r in iter_chunk_file(path)}
    assert kept[3] == "first" and kept[4] == "first" and kept[5] == "first"


def test_dedupe_waits_for_its_input_stage(tmp_path) -> None:
    """Chunks written by the stage it follows are seen: the listing is a side-input signal."""
    root = tmp_path / "civitai"
    write_chunk(root, "models", [{"id": 7}])

    def commit(n: int) -> int:
        write_chunk(root, "models", [{"id": 7}, {"id": 100 + n}])
        return n

    with beam.Pipeline(options=make_pipeline_options()) as p:
        written = p | beam.Create([1, 2]) | beam.Map(commit)
        _ = written | DedupeChunks(str(root), "models")
    assert sorted(_ids(root, "models")) == [7, 101, 102]


def test_place_functions_are_plain_and_ordered(tmp_path) -> None:
    path = str(write_chunk(tmp_path, "versions", [{"id": 9}, {"id": 9}, {"x": 1}]))
    places = list(dedupe.record_places(path))
    assert [ident for ident, _ in places] == [9, 9]
    edits = list(dedupe.extra_copies((9, [p for _, p in places])))
    assert edits == [(path, (1, None))]
    assert dedupe.drop_lines((path, [e for _, e in edits])) == 1
    assert [json.dumps(r, sort_keys=True) for r in iter_chunk_file(path)] == ['{"id": 9}', '{"x": 1}']


def test_listings_of_two_partitions_are_merged_whatever_their_order(tmp_path) -> None:
    """Each partition's copy lists only its base model's versions: the kept record has all of them."""
    sd15 = {"id": 5, "name": "m", "modelVersions": [{"id": 11, "baseModel": "SD 1.5"}]}
    sdxl = {"id": 5, "name": "m", "modelVersions": [{"id": 30, "baseModel": "SDXL 1.0"},
                                                    {"id": 12, "baseModel": "SDXL 1.0"}]}
    results = []
    for first, second in ((sd15, sdxl), (sdxl, sd15)):
        root = tmp_path / f"run{len(results)}" / "civitai"
        write_chunk(root, "models", [{"id": 1}, first])
        write_chunk(root, "models", [second, {"id": 2}])
        with beam.Pipeline(options=make_pipeline_options()) as p:
            _ = p | beam.Create([0]) | DedupeChunks(str(root), "models", merge=True)
        records = {r["id"]: r for path in committed_chunks(root, "models") for r in iter_chunk_file(path)}
        assert sorted(_ids(root, "models")) == [1, 2, 5]
        results.append(records[5])
    assert results[0] == results[1]
    assert [v["id"] for v in results[0]["modelVersions"]] == [30, 12, 11]
