"""``stylus-docs sql`` / ``query`` CLIs and the sandboxed DuckDB connection (real DuckDB, real files)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stylus_docs.cli import main
from stylus_docs.errors import FatalError
from stylus_docs.query import sandbox
from stylus_docs.release import load_manifest
from tests.release_fixture import SAMPLE, write_release

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def con(docs: Path):
    build = (docs / "latest").resolve()
    c = sandbox.connect(build, load_manifest(build))
    yield c
    c.close()


def test_views_adapters_and_images(con, docs: Path) -> None:
    assert sandbox.run_sql(con, "SELECT count(*) FROM adapters")[1] == [(len(SAMPLE),)]
    cols, rows = sandbox.run_sql(con, "SELECT count(*) AS n FROM images")
    assert cols == ["n"] and rows == [(sum(len(s[8]) for s in SAMPLE),)]
    # The release's own files stay readable by path, including through the `latest` symlink.
    assert sandbox.run_sql(con, f"SELECT count(*) FROM '{docs}/latest/adapters/*.parquet'")[1][0][0] == 10


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{outside}')",
        "SELECT * FROM '{docs}/../outside.parquet'",
    ],
)
def test_sql_cannot_read_outside_the_release(con, docs: Path, sql: str) -> None:
    outside = docs.parent / "outside.parquet"
    if not outside.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"secret": ["x"]}), outside)
    with pytest.raises(FatalError, match="(?i)permission|disabled"):
        sandbox.run_sql(con, sql.format(outside=outside, docs=docs))


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("COPY (SELECT 1) TO '{docs}/latest/evil.csv'", "only read-only"),
        ("SET enable_external_access = true", "only read-only"),
        ("ATTACH '{docs}/x.duckdb'", "only read-only"),
        ("INSTALL httpfs", "only read-only"),
        ("CREATE TABLE t AS SELECT 1", "only read-only"),
        ("DROP VIEW adapters", "only read-only"),
        ("SELECT 1; SELECT 2", "one SQL statement"),
        ("SELEC nonsense", "does not parse"),
        ("", "empty"),
    ],
)
def test_sql_refuses_writes_and_settings(con, docs: Path, sql: str, message: str) -> None:
    with pytest.raises(FatalError, match=message):
        sandbox.run_sql(con, sql.format(docs=docs))
    assert not (docs / "latest" / "evil.csv").exists()


def test_configuration_is_locked(con) -> None:
    import duckdb

    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")


def test_cli_sql_formats(docs: Path, capsys) -> None:
    q = "SELECT adapter_id, downloads, tags FROM adapters WHERE downloads > 9000 ORDER BY downloads"
    assert main(["sql", q, "--docs", str(docs), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["adapter_id"] for r in rows] == ["civitai:102@1002", "civitai:105@1005", "civitai:107@1007"]
    assert rows[0]["tags"] == ["dragon", "fantasy"]
    assert main(["sql", q, "--docs", str(docs), "--format", "csv"]) == 0
    parsed = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert parsed[0] == ["adapter_id", "downloads", "tags"] and len(parsed) == 4
    assert json.loads(parsed[1][2]) == ["dragon", "fantasy"]
    assert main(["sql", q, "--docs", str(docs)]) == 0
    assert "(3 rows)" in capsys.readouterr().out


def test_cli_sql_errors_are_one_line(docs: Path, capsys) -> None:
    assert main(["sql", "SELECT * FROM read_csv('/etc/passwd')", "--docs", str(docs)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission" in err[0]
    assert main(["sql", "SELECT 1", "--docs", str(docs.parent / "missing")]) != 0
    assert "release not found" in capsys.readouterr().err


def test_cli_query_json_and_filters(docs: Path, capsys) -> None:
    argv = ["query", "drgnfire dragon", "--docs", str(docs), "-k", "3", "--format", "json"]
    assert main(argv) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["adapter_id"] == "civitai:102@1002" and hits[0]["rank"] == 1
    assert {"score", "dense", "bm25", "dense_rank", "bm25_rank", "title"} <= set(hits[0])
    argv = [
        "query",
        "lingerie",
        "--docs",
        str(docs),
        "-k",
        "20",
        "--format",
        "json",
        "--category",
        "clothing",
    ]
    assert main(argv) == 0
    assert [h["adapter_id"] for h in json.loads(capsys.readouterr().out)] == ["civitai:101@1001"]
    assert main(argv + ["--include-nsfw"]) == 0
    assert {h["adapter_id"] for h in json.loads(capsys.readouterr().out)} == {
        "civitai:101@1001",
        "civitai:107@1007",
    }
    argv = [
        "query",
        "x",
        "--docs",
        str(docs),
        "--format",
        "json",
        "--base-model",
        "SDXL 1.0",
        "--base-model",
        "Pony",
    ]
    assert main(argv) == 0
    assert [h["adapter_id"] for h in json.loads(capsys.readouterr().out)] == ["civitai:105@1005"]


def test_cli_query_where_is_sandboxed(docs: Path, capsys) -> None:
    expr = "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0"
    assert main(["query", "dragon", "--docs", str(docs), "--where", expr]) != 0
    assert "Permission" in capsys.readouterr().err
    assert (
        main(["query", "dragon", "--docs", str(docs), "--where", "downloads < 100", "--format", "json"]) == 0
    )
    got = {h["adapter_id"] for h in json.loads(capsys.readouterr().out)}
    assert got == {"hf:acme/retro-cars@abc123", "civitai:109@1009"}


def test_cli_batch_mode_passes_keys_through(docs: Path, tmp_path: Path, capsys) -> None:
    queries = tmp_path / "q.jsonl"
    items = [
        {"query": "corgidog on grass", "id": 7, "meta": {"split": "dev"}},
        {"query": "cybrcty neon street", "tag": "x", "results": "overwritten"},
        {"query": "zzzz"},
    ]
    queries.write_text("".join(json.dumps(i) + "\n" for i in items) + "\n", encoding="utf-8")
    assert (
        main(["query", "--docs", str(docs), "--queries", str(queries), "-k", "2", "--format", "jsonl"]) == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert (
        lines[0]["id"] == 7
        and lines[0]["meta"] == {"split": "dev"}
        and lines[0]["query"] == items[0]["query"]
    )
    assert lines[0]["results"][0]["adapter_id"] == "civitai:103@1003"
    assert lines[1]["tag"] == "x" and lines[1]["results"][0]["adapter_id"] == "civitai:105@1005"
    assert all(len(x["results"]) == 2 and {"adapter_id", "score"} <= set(x["results"][0]) for x in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "--format", "jsonl"], "give either"),
        (["query", "text", "--queries", "q.jsonl", "--format", "jsonl"], "give either"),
        (["query", "--queries", "{bad}", "--format", "jsonl"], "not JSON"),
        (["query", "--queries", "{bad}"], "use --format jsonl"),
        (["query", "text", "--format", "jsonl"], "batch mode"),
        (["query", "text", "-k", "0"], "k must be"),
    ],
)
def test_cli_query_bad_input(docs: Path, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    argv = [a.format(bad=bad) for a in argv] + ["--docs", str(docs)]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_console_script_query_subprocess(docs: Path) -> None:
    exe = Path(sys.executable).parent / "stylus-docs"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [str(exe), "query", "grffti mural", "--docs", str(docs), "-k", "2", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=True,
    )
    assert json.loads(out.stdout)[0]["adapter_id"] == "civitai:104@1004"
    # The query path must not pull in torch (cold start).
    probe = (
        "import sys; from stylus_docs.query import open_release; r = open_release(sys.argv[1]); "
        "r.search('dragon', k=1); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(docs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_cli_query_every_version(tmp_path: Path, capsys) -> None:
    """By default a model shows once past rank 10; --every-version lists all of its versions."""
    from tests.release_fixture import sample_rows

    rows = sample_rows()
    dragon = next(r for r in rows if r["adapter_id"] == "civitai:102@1002")
    for v in range(14):
        vid = str(9000 + v)
        rows.append(dict(dragon, adapter_id=f"civitai:102@{vid}", version_id=vid, content_hash=f"d{v}"))
    docs = tmp_path / "docs"
    write_release(docs, rows)
    argv = ["query", "drgnfire dragon", "--docs", str(docs), "-k", "30", "--format", "json"]
    argv.append("--include-nsfw")
    assert main(argv) == 0
    default = [h["adapter_id"] for h in json.loads(capsys.readouterr().out)]
    assert main(argv + ["--every-version"]) == 0
    every = [h["adapter_id"] for h in json.loads(capsys.readouterr().out)]
    assert sum(a.startswith("civitai:102@") for a in every) == 15
    assert sum(a.startswith("civitai:102@") for a in default) == 10  # the head only
    assert all(not a.startswith("civitai:102@") for a in default[10:])
