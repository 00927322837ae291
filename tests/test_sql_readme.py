"""The plain-DuckDB examples of README.md and stylus_docs/query/README.md run against a real release."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from tests.release_fixture import write_release

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "stylus_docs" / "query" / "README.md")


def sql_examples(readmes: tuple[Path, ...] = READMES) -> list[str]:
    found: list[str] = []
    for readme in readmes:
        found += re.findall(r"```sql\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    return found


def test_readmes_have_duckdb_examples() -> None:
    for readme in READMES:
        examples = sql_examples((readme,))
        assert len(examples) >= 3, readme
        assert all("DOCS/latest/" in e for e in examples)


@pytest.mark.parametrize("index", range(len(sql_examples())))
def test_readme_example_runs_with_plain_duckdb(tmp_path: Path, monkeypatch, index: int) -> None:
    write_release(tmp_path / "DOCS")
    monkeypatch.chdir(tmp_path)  # the examples use the relative path DOCS/latest/...
    con = duckdb.connect()
    rows = con.execute(sql_examples()[index]).fetchall()
    assert rows, "every example returns rows on the fixture release"
