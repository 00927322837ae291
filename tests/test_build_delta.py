"""The build side of nightly rebuilds (issue 12): tombstones carried through to the release
(``counts.removed``, ``removed.json``, ``--keep-deleted``), enums-driven base models and families, the
record's host, and ``meta.civitaiResources`` in the images table.

Real in-process Beam builds over hand-written snapshots; the tombstones are written with the crawl's own
chunk writer, as the crawler does.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from build_fixtures import hf_record, model_2023, model_2025, snapshot, version_2025

from pipelines.build import BuildConfig, run_build, summary
from stylus_docs import release
from stylus_docs.build import rules
from stylus_docs.build.inputs import load_extras
from stylus_docs.cli import main as cli_main
from stylus_docs.crawl.snapshot import write_chunk
from stylus_docs.errors import FatalError
from stylus_docs.normalize import base_models, civitai, deletions
from stylus_docs.normalize.raw import CIVITAI_MODEL, discover
from stylus_docs.records import AdapterCard
from stylus_docs.schemas import validation_errors

SEEN = "2026-12-01T03:00:00Z"
GREEN, RED, HUB = "https://civitai.com", "https://civitai.red", "https://huggingface.co"
HF_REPO = "someone/icon-kit-lora"


def _two_versions(mid: int, vids: tuple[int, int], name: str) -> dict:
    item = model_2023(mid, vids[0], name)
    item["modelVersions"].append(model_2023(mid, vids[1], name)["modelVersions"][0])
    return item


def _old_models() -> list[dict]:
    return [model_2023(i, i * 10, f"Ink style {i}") for i in (1, 2, 3, 4)] + [
        _two_versions(5, (50, 51), "Two versions"),
        model_2023(6, 60, "Gone without a record"),
    ]


def _stone(source: str, kind: str, ident: object, record: object = None, *, model_id: object = None,
           reason: str = "absent_from_listing", host: str = GREEN) -> dict:  # fmt: skip
    return {"source": source, "kind": kind, "id": ident, "model_id": model_id, "last_seen": SEEN,
            "reason": reason, "host": host, "record": record}  # fmt: skip


def _rows(docs: Path, table: str = "adapters") -> list[dict]:
    build = release.resolve_build(docs)
    return release.read_table(build, release.load_manifest(build), table).to_pylist()


def _invariant(counts: dict) -> None:
    assert counts["input"] == counts["written"] + sum(counts["filtered"].values()) + sum(
        counts["dead_letter"].values()
    )


@pytest.fixture(scope="module")
def delta(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An old snapshot and its release, and the next day's snapshot with tombstones.

    Next day: model 4 deleted (tombstone with its last listing item; a stale copy of its listing is
    still in the input), version 51 of model 5 removed (tombstone without a record), model 6 deleted
    (no record: only the previous release knows its versions), the HF repo deleted (with its record).
    """
    tmp = tmp_path_factory.mktemp("delta")
    old = _old_models()
    raw_old = snapshot(tmp / "raw-old", old, hf=[hf_record()])
    docs = tmp / "docs"
    run_build(BuildConfig(raw=[str(raw_old)], out=str(docs), progress=False))

    new = [copy.deepcopy(m) for m in old if m["id"] in (1, 2, 3, 5)]
    new[-1]["modelVersions"] = new[-1]["modelVersions"][:1]
    stale = copy.deepcopy(old[3])  # the stale copy of deleted model 4
    raw_new = snapshot(tmp / "raw-new", [*new, stale])
    write_chunk(raw_new / "civitai", "tombstones", [
        _stone("civitai", "model", 4, old[3]),
        _stone("civitai", "version", 51, model_id=5, reason="version_removed"),
        _stone("civitai", "model", 6),
    ])  # fmt: skip
    write_chunk(raw_new / "hf", "tombstones", [_stone("hf", "model", HF_REPO, hf_record(), host=HUB)])
    (raw_new / "civitai" / "enums.json").write_text(json.dumps({"BaseModel": ["SD 1.5", "Flux.1 D"]}))
    return {"raw_old": raw_old, "raw_new": raw_new, "docs_old": docs, "tmp": tmp}


REMOVED = ["civitai:4@40", "civitai:5@51", "civitai:6@60", f"hf:{HF_REPO}@abc123"]


def test_removed_adapters_absent_counted_and_listed(
    delta: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    docs = delta["tmp"] / "docs-new"
    config = BuildConfig(raw=[str(delta["raw_new"])], out=str(docs), previous=str(delta["docs_old"]),
                         progress=False)  # fmt: skip
    manifest = run_build(config)
    counts = manifest["counts"]
    _invariant(counts)
    ids = {r["adapter_id"] for r in _rows(docs)}
    assert ids == {"civitai:1@10", "civitai:2@20", "civitai:3@30", "civitai:5@50"}
    assert counts["removed"] == 4 and counts["kept_deleted"] == 0
    assert counts["filtered"]["deleted"] == 1  # the stale listing copy of model 4: input, then dropped
    assert counts["reused"] == 4  # unchanged adapters still reuse the previous release

    build = release.resolve_build(docs)
    (entry,) = [f for f in manifest["files"] if f["table"] == "removed"]
    assert entry["path"] == "removed.json" and entry["rows"] == 4
    assert release.verify_release(build) == release.load_manifest(build)
    (path,) = release.table_files(build, manifest, "removed")
    body = json.loads(path.read_text())
    assert body["count"] == 4 and [a["adapter_id"] for a in body["adapters"]] == REMOVED
    by_id = {a["adapter_id"]: a for a in body["adapters"]}
    assert by_id["civitai:5@51"]["reason"] == "version_removed"
    assert by_id["civitai:6@60"] == {"adapter_id": "civitai:6@60", "reason": "absent_from_listing",
                                     "last_seen": SEEN, "host": GREEN}  # fmt: skip
    assert by_id[f"hf:{HF_REPO}@abc123"]["host"] == HUB
    # Tombstones and enums are inputs (hashed in the manifest), never data.
    inputs = {Path(i["path"]).name for i in manifest["inputs"]}
    assert {"tombstones-00000.jsonl.gz", "enums.json"} <= inputs
    assert all(r["deleted"] is False for r in _rows(docs))
    assert "removed: 4 adapters" in summary(manifest)

    # The next night the crawl carries the same tombstones forward: nothing more is removed.
    again = run_build(BuildConfig(raw=[str(delta["raw_new"])], out=str(delta["tmp"] / "docs-3"),
                                  previous=str(docs), progress=False))  # fmt: skip
    assert again["counts"]["removed"] == 0 and again["counts"]["written"] == 4
    assert "removed:" not in summary(again)

    # Readers that iterate tables are unaffected; a flipped byte in removed.json is caught like any file.
    assert cli_main(["sql", "SELECT count(*) AS n FROM adapters", "--docs", str(docs)]) == 0
    assert cli_main(["query", "ink", "--docs", str(docs)]) == 0
    capsys.readouterr()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    release._verified.clear()
    with pytest.raises(FatalError, match="removed.json"):
        release.verify_release(build)


def test_keep_deleted_keeps_the_last_card_flagged(delta: dict[str, Path]) -> None:
    docs = delta["tmp"] / "docs-keep"
    config = BuildConfig(raw=[str(delta["raw_new"])], out=str(docs), previous=str(delta["docs_old"]),
                         keep_deleted=True, progress=False)  # fmt: skip
    manifest = run_build(config)
    counts = manifest["counts"]
    _invariant(counts)
    rows = {r["adapter_id"]: r for r in _rows(docs)}
    flagged = {i for i, r in rows.items() if r["deleted"]}
    assert flagged == {"civitai:4@40", f"hf:{HF_REPO}@abc123"}  # the tombstones with a last known record
    assert counts["kept_deleted"] == 2
    assert rows["civitai:4@40"]["title"] == "Ink style 4" and rows["civitai:4@40"]["refined_description"]
    assert rows[f"hf:{HF_REPO}@abc123"]["source_host"] == HUB  # from the tombstone: the record had none
    assert not rows["civitai:1@10"]["deleted"]
    # Without a record nothing can be written: those two are still removed.
    assert counts["removed"] == 2
    build = release.resolve_build(docs)
    (path,) = release.table_files(build, manifest, "removed")
    assert [a["adapter_id"] for a in json.loads(path.read_text())["adapters"]] == [
        "civitai:5@51",
        "civitai:6@60",
    ]
    assert counts["filtered"]["deleted"] == 1  # the stale listing of model 4 gives way to the tombstone's
    images = {r["adapter_id"] for r in _rows(docs, "images")}
    assert "civitai:4@40" in images


def test_tombstones_and_enums_are_not_data(delta: dict[str, Path]) -> None:
    files = discover([str(delta["raw_new"])])
    assert sorted(Path(f.path).name for f in files) == ["models-00000.jsonl.gz"]
    assert all(f.kind == CIVITAI_MODEL for f in files)
    # A flat directory (--raw RAW/civitai) still skips the tombstones; a tombstone file alone is refused.
    flat = discover([str(delta["raw_new"] / "civitai")])
    assert [Path(f.path).name for f in flat] == ["models-00000.jsonl.gz"]
    with pytest.raises(FatalError, match="tombstone file"):
        discover([str(delta["raw_new"] / "civitai" / "tombstones-00000.jsonl.gz")])
    stones = deletions.read_tombstones(deletions.tombstone_files([str(delta["raw_new"] / "civitai")]))
    assert len(stones) == 3  # found in a flat directory too


def test_malformed_tombstone_is_fatal_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = snapshot(tmp_path / "raw", [model_2023(1, 10, "Ink")])
    good = _stone("civitai", "model", 9)
    write_chunk(raw / "civitai", "tombstones", [good, {**good, "id": "nine"}])
    rc = cli_main(["build", "--raw", str(raw), "--out", str(tmp_path / "docs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "malformed tombstone" in err and "tombstones-00000.jsonl.gz:2" in err and "Traceback" not in err
    assert not (tmp_path / "docs" / "CURRENT").exists()
    (raw / "civitai" / "tombstones-00000.jsonl.gz").unlink()
    with gzip.open(raw / "civitai" / "tombstones-00001.jsonl.gz", "wt") as handle:
        handle.write('{"source": "civitai", "kind": "model", "id": 9, "last_seen": NaN}\n')
    assert cli_main(["build", "--raw", str(raw), "--out", str(tmp_path / "docs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tombstones-00001.jsonl.gz:1" in err
    for bad in ({**good, "source": "ftp"}, {**good, "kind": "version"}, {**good, "last_seen": "yesterday"},
                {**good, "reason": ""}, {**good, "record": [1]}, {**good, "id": True}, [good],
                {**good, "source": "hf", "id": "../etc"}):  # fmt: skip
        with pytest.raises(ValueError):
            deletions.parse_tombstone(bad)


def test_removal_candidates_and_coverage() -> None:
    old = _two_versions(5, (50, 51), "x")
    stones = [
        deletions.parse_tombstone(_stone("civitai", "model", 5, old)),
        deletions.parse_tombstone(_stone("civitai", "version", 51, model_id=5, reason="version_removed")),
        deletions.parse_tombstone(_stone("hf", "model", HF_REPO)),
    ]
    cover = deletions.coverage(stones)
    assert cover.covers("civitai:5@999") and cover.covers(f"hf:{HF_REPO}@anything")
    assert not cover.covers("civitai:55@50") and not cover.covers("hf:someone/other@x")
    # Without a previous release: what the tombstones name (the model's last listing, the version).
    out = deletions.removal_candidates(stones)
    assert list(out) == ["civitai:5@50", "civitai:5@51"]
    assert out["civitai:5@51"]["reason"] == "version_removed"  # the more specific tombstone wins
    assert out["civitai:5@50"]["reason"] == "absent_from_listing"
    # With one: what it held that they cover (a tombstone carried forward from an earlier night names
    # ids the previous release no longer has; they were counted when they went).
    prev = ["civitai:5@51", "civitai:5@52", f"hf:{HF_REPO}@old", "civitai:7@70"]
    out = deletions.removal_candidates(stones, prev)
    assert list(out) == ["civitai:5@51", "civitai:5@52", f"hf:{HF_REPO}@old"]
    assert out["civitai:5@51"]["reason"] == "version_removed"
    assert deletions.removal_candidates(stones, []) == {}
    assert deletions.parse_tombstone(_stone("hf", "model", "gpt2")).id == "gpt2"  # legacy id, no owner


def test_merge_versions_drops_or_keeps_what_a_tombstone_covers() -> None:
    def card(title: str = "Ink") -> AdapterCard:
        (c,) = civitai.normalize_model(model_2023(4, 40, title))
        return c

    detail = civitai.normalize_version(version_2025(4, 40))
    values = [(rules.CARD, card("stale")), (rules.CARD, card("stale dup")), (rules.DETAIL, detail)]
    dropped = rules.merge_versions(values, covered=True)
    assert (dropped.card, dropped.records, dropped.deleted, dropped.duplicates) == (None, 2, 2, 0)
    kept = rules.merge_versions([*values, (rules.TOMB_CARD, card("last known"))], keep_deleted=True)
    assert kept.card is not None and kept.card.deleted and kept.card.title == "last known"
    assert (kept.records, kept.deleted, kept.duplicates) == (3, 2, 0)
    # No last known record: the stale copy is kept, flagged.
    stale = rules.merge_versions(values, covered=True, keep_deleted=True)
    assert stale.card is not None and stale.card.deleted and stale.card.title == "stale"
    assert (stale.records, stale.deleted, stale.duplicates) == (2, 0, 1)
    plain = rules.merge_versions(values)
    assert plain.card is not None and not plain.card.deleted and plain.card.base_model_family == "SD 1.x"


# --------------------------------------------------------------------------------------------- base models
def _resources_detail(mid: int, vid: int, *, bad_text: bool = False) -> dict:
    detail = version_2025(mid, vid)
    detail["_host"] = RED + "/?token=SECRET"
    detail["images"][0]["meta"]["civitaiResources"] = [
        {"type": "lora", "weight": 0.8, "modelVersionId": 123, "modelVersionName": "v1"},
        {"type": "checkpoint", "weight": "NaN", "modelVersionId": "456"},
        {"modelVersionId": True}, "junk", {"modelVersionId": -1}, {"modelVersionId": 2**70},
        {"modelVersionId": 7, "weight": "1e999"}, {"modelVersionId": 8, "type": ["x"]},
    ]  # fmt: skip
    if bad_text:  # only in memory: in a snapshot line a lone surrogate makes the whole line a dead letter
        detail["images"][0]["meta"]["civitaiResources"].append(
            {"modelVersionId": 9, "modelVersionName": "\ud800"}
        )
    return detail


RESOURCES = [
    {"model_version_id": 123, "type": "lora", "weight": 0.8, "name": "v1"},
    {"model_version_id": 456, "type": "checkpoint", "weight": None, "name": None},
    {"model_version_id": 7, "type": None, "weight": None, "name": None},
]


def test_enums_families_unknown_names_host_and_resources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = [model_2023(1, 10, "Ink"), model_2025(2, 20)]
    for mid, base in ((3, "Illustrious"), (4, "Brand New Thing"), (5, "Zeta Image"), (6, "SD 1.4"),
                      (7, "Brand New Thing")):  # fmt: skip
        item = model_2023(mid, mid * 10, f"Ink {mid}")
        item["modelVersions"][0]["baseModel"] = base
        models.append(item)
    models[0]["_host"] = RED
    raw = snapshot(tmp_path / "raw", models, versions=[_resources_detail(2, 20)])
    enums = {
        "ModelType": ["LORA"],
        "BaseModel": ["SD 1.5", "SDXL 1.0", "Flux.1 D", "Illustrious", "Zeta Image"],
    }
    (raw / "civitai" / "enums.json").write_text(json.dumps(enums))
    # An unknown --base-models name is refused before anything runs, with the closest known names.
    rc = cli_main(["build", "--raw", str(raw), "--out", str(tmp_path / "bad"), "--base-models", "SDXL 1.O"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "'SDXL 1.O'" in err and "'SDXL 1.0'" in err
    assert not (tmp_path / "bad" / "CURRENT").exists()
    files = discover([str(raw)])
    load_extras([str(raw)], files, None, ("Brand New Thing", "SD 1.4"))  # in the input: known
    old = snapshot(tmp_path / "raw-old", models[:1])  # a snapshot from before enums.json: not checked
    assert load_extras([str(old)], discover([str(old)]), None, ("Anything",)).known_base_models is None

    docs = tmp_path / "docs"
    manifest = run_build(BuildConfig(raw=[str(raw)], out=str(docs), progress=False))
    counts = manifest["counts"]
    _invariant(counts)
    assert counts["unknown_base_models"] == {"Brand New Thing": 2}
    assert "unknown base models (1, in no known family, kept as is): Brand New Thing 2" in summary(manifest)
    rows = {r["adapter_id"]: r for r in _rows(docs)}
    assert len(rows) == 7 and rows["civitai:4@40"]["base_model"] == "Brand New Thing"
    family = {i: r["base_model_family"] for i, r in rows.items()}
    assert family == {"civitai:1@10": "SD 1.x", "civitai:2@20": "Flux.1", "civitai:3@30": "Illustrious",
                      "civitai:4@40": None, "civitai:5@50": None, "civitai:6@60": "SD 1.x",
                      "civitai:7@70": None}  # fmt: skip
    assert rows["civitai:1@10"]["source_host"] == RED
    assert rows["civitai:1@10"]["card_url"].startswith("https://civitai.red/models/1")
    assert rows["civitai:2@20"]["source_host"] == RED  # from the version detail; its token stripped
    assert rows["civitai:3@30"]["source_host"] is None and rows["civitai:3@30"]["card_url"].startswith(GREEN)

    images = [r for r in _rows(docs, "images") if r["adapter_id"] == "civitai:2@20"]
    with_res = [r for r in images if r["civitai_resources"]]
    assert len(with_res) == 1 and with_res[0]["civitai_resources"] == RESOURCES
    assert all(r["civitai_resources"] is None for r in images if r is not with_res[0])
    build = release.resolve_build(docs)
    image_files = release.table_files(build, release.load_manifest(build), "images")
    listing = ", ".join(repr(str(p)) for p in image_files)
    con = duckdb.connect()
    got = con.execute(
        f"SELECT r.model_version_id, r.weight FROM (SELECT unnest(civitai_resources) AS r "
        f"FROM read_parquet([{listing}])) ORDER BY 1"
    ).fetchall()
    assert got == [(7, None), (123, 0.8), (456, None)]
    field = pq.read_schema(image_files[0]).field("civitai_resources")
    assert field.type.value_type.names == ["model_version_id", "type", "weight", "name"]
    assert str(field.type.value_type.field("model_version_id").type) == "int64"
    assert all(b"SECRET" not in p.read_bytes() for p in docs.rglob("*") if p.is_file())


def test_family_table_and_resource_parsing() -> None:
    cases = {"SD 1.5 LCM": "SD 1.x", "SD 2.1 768": "SD 2.x", "SDXL Lightning": "SDXL",
             "SD 3.5 Large": "SD 3.x", "Pony V7": "Pony", "NoobAI": "NoobAI", "Flux.1 Kontext": "Flux.1",
             "Flux.2 Klein 9B": "Flux.2",
             "Hunyuan Video": "Hunyuan", "Wan Video 2.2 T2V-A14B": "Wan Video", "Qwen 2": "Qwen",
             "Kolors": "Kolors", "Lumina": "Lumina", "Chroma": "Chroma", "HiDream-O1": "HiDream",
             "AuraFlow": "AuraFlow", "PixArt E": "PixArt", "Other": "Other", "Illustrious": "Illustrious",
             "black-forest-labs/FLUX.1-Krea-dev": "Flux.1", "Qwen/Qwen-Image": "Qwen",
             "stabilityai/sdxl-turbo": "SDXL", "Flux 3 Video": None, "Nano Banana": None, "": None,
             None: None}  # fmt: skip
    assert {k: base_models.family(k) for k in cases} == cases
    img = civitai.parse_image(_resources_detail(2, 20, bad_text=True)["images"][0], "civitai:2@20")
    assert img is not None and img.civitai_resources == RESOURCES
    assert not validation_errors("images.v1.json", img.to_row())
    assert civitai.civitai_resources({"civitaiResources": "x"}) is None
    assert civitai.civitai_resources({"civitaiResources": [{"modelVersionId": "x"}]}) is None
    many = civitai.civitai_resources({"civitaiResources": [{"modelVersionId": i} for i in range(1, 500)]})
    assert many is not None and len(many) == civitai.MAX_RESOURCES
    url = "https://user:pw@civitai.red:8443/api/v1/?token=x#f"
    assert civitai.source_host(url) == "https://civitai.red:8443/api/v1"
    assert civitai.source_host("file:///etc/passwd") is None and civitai.source_host(7) is None


def test_base_model_check_and_enums_file() -> None:
    enums = frozenset({"SD 1.5", "SDXL 1.0", "Flux.1 D"})
    rules.check_base_models(["SD 1.5"], enums, lambda: pytest.fail("not needed"))  # in the enums: no scan
    rules.check_base_models(["Anything"], None, lambda: set())  # no enums: nothing is checked
    rules.check_base_models(["New One"], enums, lambda: {"New One"})  # in the input
    with pytest.raises(FatalError) as exc:
        rules.check_base_models(["flux.1 d", "Zzz"], enums, lambda: set())
    message = str(exc.value)
    assert "\n" not in message and "'Flux.1 D'" in message and "'Zzz' (no close match)" in message


def test_enums_file_must_be_ours(tmp_path: Path) -> None:
    path = tmp_path / "civitai" / "enums.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(FatalError, match="malformed enums file"):
        base_models.read_enums(base_models.enums_files([str(tmp_path)]))
    path.write_text(json.dumps({"BaseModel": "SD 1.5"}))
    with pytest.raises(FatalError, match="BaseModel is not a list"):
        base_models.read_enums([path])
    path.write_text(json.dumps({"ModelType": ["LORA"]}))
    assert base_models.read_enums([path]) is None
    assert base_models.read_enums([]) is None
