"""``eval retrieval``: recall@k and MRR of the query module on creator prompts and civitaiResources images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from stylus_docs import cli
from stylus_docs.eval.retrieval import parse_query
from stylus_docs.query import open_release

sys.path.insert(0, str(Path(__file__).resolve().parent))

QUERIES = [
    {"query": "red dragon, flames, night sky", "expected": ["civitai:102@1002"]},
    {"query": "grffti, colorful mural on a brick wall <lora:graffiti:0.8>", "expected": ["civitai:104@1004"]},
    {"query": "a watercolor cat and a corgi", "expected": ["civitai:106@1006", "civitai:103@1003"]},
    # A Civitai image labelled with the resources it really used (a checkpoint is not an adapter).
    {
        "meta": {
            "prompt": "cybrcty, neon street, rain <lora:cybercity:0.7>",
            "civitaiResources": [
                {"type": "checkpoint", "modelVersionId": 4201},
                {"type": "lora", "weight": 0.7, "modelVersionId": 1005},
            ],
        }
    },
    {"prompt": "astronaut on the moon", "civitaiResources": [{"type": "lora", "modelVersionId": "1009"}]},
    {"query": "something else", "expected": ["civitai:999@9999"]},  # not in the release: skipped
]


def _write(path: Path, lines) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_recall_and_mrr_equal_the_search_ranks(docs, tmp_path, capsys):
    queries = _write(tmp_path / "q.jsonl", QUERIES)
    argv = [
        "eval",
        "retrieval",
        "--docs",
        str(docs),
        "--queries",
        str(queries),
        "-k",
        "1",
        "-k",
        "3",
        "--per-query",
        "--format",
        "json",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ks"] == [1, 3]
    assert out["skipped_no_target"] == 1 and out["targets_missing"] == 1
    assert out["by_kind"]["creator"]["n"] == 3 and out["by_kind"]["resources"]["n"] == 2
    # The reference: ranks straight from Release.search, computed here.
    release = open_release(docs)
    texts = [
        "red dragon, flames, night sky",
        "grffti, colorful mural on a brick wall",
        "a watercolor cat and a corgi",
        "cybrcty, neon street, rain",
        "astronaut on the moon",
    ]
    targets = [
        ["civitai:102@1002"],
        ["civitai:104@1004"],
        ["civitai:106@1006", "civitai:103@1003"],
        ["civitai:105@1005"],
        ["civitai:109@1009"],
    ]
    r1, r3, rr = [], [], []
    for text, want, row in zip(texts, targets, out["queries"], strict=True):
        assert row["query"] == text  # network tags stripped
        ids = [h.adapter_id for h in release.search(text, k=3, include_nsfw=True)]
        ranks = [ids.index(t) + 1 if t in ids else 0 for t in want]
        assert row["ranks"] == ranks
        r1.append(sum(0 < r <= 1 for r in ranks) / len(ranks))
        r3.append(sum(0 < r <= 3 for r in ranks) / len(ranks))
        rr.append(1 / min(r for r in ranks if r) if any(ranks) else 0.0)
    overall = out["overall"]
    assert overall["n"] == 5
    assert overall["recall@1"] == pytest.approx(sum(r1) / 5)
    assert overall["recall@3"] == pytest.approx(sum(r3) / 5)
    assert overall["mrr"] == pytest.approx(sum(rr) / 5)
    assert overall["recall@3"] >= 0.6  # the trigger-word queries find their adapters


def test_query_lines_are_parsed_and_checked():
    q = parse_query(QUERIES[3], 4)
    assert (q.kind, q.targets, q.text) == ("resources", ["civitai:*@1005"], "cybrcty, neon street, rain")
    assert parse_query(QUERIES[0], 1).kind == "creator"
    assert parse_query({"query": "x", "expected": "civitai:1@2", "kind": "mine"}, 1).kind == "mine"


def test_bad_query_file_is_one_line(docs, tmp_path, capsys):
    for lines, needle in (
        (["{not json"], "line 1: not JSON"),
        ([json.dumps({"query": "a dragon"})], "no 'expected'"),
        ([json.dumps({"expected": ["civitai:102@1002"]})], "no 'query'"),
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert cli.main(["eval", "retrieval", "--docs", str(docs), "--queries", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err
