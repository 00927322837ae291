"""The SQL sandbox never writes: every writing form is refused by parse, the live release is unchanged.

Each case runs through the real CLI (``stylus-docs sql``), ``Release.sql()`` and ``query --where`` against a
release written by the build's writer, and the test checks the bytes of every file under ``DOCS`` before
and after, so a statement that slipped through and wrote anything would fail here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from stylus_docs.cli import main
from stylus_docs.errors import FatalError
from stylus_docs.query import open_release, sandbox
from stylus_docs.release import load_manifest
from tests.release_fixture import write_release


def _snapshot(root: Path) -> dict[str, str]:
    """Path -> SHA-256 (or link target) of everything under ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _shard(docs: Path) -> Path:
    return next((docs / "latest" / "adapters").resolve().glob("*.parquet"))


WRITING_FORMS = [
    "EXPLAIN ANALYZE COPY (SELECT 42 AS adapter_id) TO '{shard}' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT 'x') TO '{docs}/CURRENT' (FORMAT csv, HEADER false)",
    "explain /* hidden */ analyze copy (select 1) to '{docs}/evil.csv'",
    "EXPLAIN (FORMAT json) COPY (SELECT 1) TO '{docs}/evil.csv'",
    "EXPLAIN ANALYZE CREATE OR REPLACE VIEW adapters AS SELECT 1 AS adapter_id",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE INSERT INTO adapters VALUES (1)",
    "EXPLAIN ANALYZE ATTACH '{docs}/x.duckdb'",
    "EXPLAIN ANALYZE EXPLAIN ANALYZE COPY (SELECT 1) TO '{docs}/evil.csv'",
    "EXPLAIN ANALYZE WITH a AS (SELECT 1) SELECT 1; COPY (SELECT 1) TO '{docs}/evil.csv'",
    "WITH a AS (SELECT 1) SELECT * FROM a; COPY (SELECT 1) TO '{docs}/evil.csv'",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{docs}/evil.csv''')",
    "SELECT * FROM (SELECT 1) t; EXPLAIN ANALYZE COPY (SELECT 1) TO '{docs}/evil.csv'",
    "COPY (SELECT 1) TO '{shard}' (FORMAT parquet)",
    "EXPORT DATABASE '{docs}/exported'",
    "SET temp_directory = '{docs}'",
    "CHECKPOINT",
    "CALL pragma_version()",
    "EXPLAIN",
]


@pytest.mark.parametrize("form", WRITING_FORMS)
def test_cli_refuses_every_writing_form(
    docs: Path, form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    before = _snapshot(docs)
    rc = main(["sql", form.format(docs=docs, shard=_shard(docs)), "--docs", str(docs)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(docs) == before
    assert list(tmp_path.iterdir()) == []  # nothing written to the current directory either


@pytest.mark.parametrize("form", WRITING_FORMS)
def test_release_sql_refuses_every_writing_form(docs: Path, form: str) -> None:
    before = _snapshot(docs)
    rel = open_release(docs)
    with pytest.raises(FatalError):
        rel.sql(form.format(docs=docs, shard=_shard(docs)))
    # The views later searches use are the manifest's, not a forged one.
    assert rel.sql("SELECT count(*) FROM adapters")[1][0][0] == 10
    assert _snapshot(docs) == before


@pytest.mark.parametrize(
    "where",
    [
        "1=1) ; COPY (SELECT 1) TO '{docs}/evil.csv' --",
        "adapter_id IN (SELECT * FROM query('COPY (SELECT 1) TO ''{docs}/evil.csv'''))",
        "1=1)) UNION ALL (SELECT 1",
    ],
)
def test_where_cannot_write(docs: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(docs)
    rc = main(["query", "ink", "--docs", str(docs), "--where", where.format(docs=docs)])
    assert rc == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _snapshot(docs) == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM adapters",
        "FROM adapters SELECT count(*)",
        "WITH a AS (SELECT adapter_id FROM adapters) SELECT count(*) FROM a",
        "SELECT count(*) FROM (SELECT * FROM adapters WHERE adapter_id IN (SELECT adapter_id FROM images))",
        "EXPLAIN SELECT * FROM adapters",
        "EXPLAIN ANALYZE SELECT count(*) FROM adapters",
        "explain /* a comment */ analyze select 1",
        "EXPLAIN (FORMAT json) SELECT 1",
        "DESCRIBE adapters",
        "SUMMARIZE SELECT 1 AS x",
    ],
)
def test_ordinary_reads_still_answer(docs: Path, sql: str) -> None:
    before = _snapshot(docs)
    cols, rows = open_release(docs).sql(sql)
    assert cols and rows
    assert _snapshot(docs) == before


def test_temp_directory_is_private(docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    build = (docs / "latest").resolve()
    con = sandbox.connect(build, load_manifest(build))
    temp = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    assert os.path.isabs(temp) and Path(temp).resolve() != (tmp_path / ".tmp").resolve()
    assert os.stat(temp).st_mode & 0o077 == 0  # mkdtemp: owner only
    assert con.execute("SELECT current_setting('autoload_known_extensions')").fetchone()[0] is False
    with pytest.raises(FatalError):
        sandbox.run_sql(con, f"SET temp_directory = '{tmp_path}'")
    con.close()


def test_symlink_out_of_the_release_is_refused(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_release(docs)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("hunter2\n")
    (docs / "escape").symlink_to(secret, target_is_directory=True)
    rc = main(["sql", f"SELECT * FROM read_text('{docs}/escape/key.txt')", "--docs", str(docs)])
    assert rc == 2
    build = (docs / "latest").resolve()
    with pytest.raises(FatalError, match="symlink .*escape.* points outside"):
        sandbox.connect(build, load_manifest(build))
    # A link inside the release (like `latest`) is fine once the escaping one is gone.
    (docs / "escape").unlink()
    (docs / "inside").symlink_to(docs / "builds")
    con = sandbox.connect(build, load_manifest(build))
    assert sandbox.run_sql(con, "SELECT count(*) FROM adapters")[1][0][0] == 10
