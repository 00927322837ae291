"""The plain-DuckDB examples of stylus_docs/query/README.md run against a real release."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from tests.release_fixture import write_release

README = Path(__file__).resolve().parents[1] / "stylus_docs" / "query" / "README.md"


def sql_examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_duckdb_examples() -> None:
    examples = sql_examples()
    assert len(examples) >= 3
    assert all("DOCS/latest/" in e for e in examples)


@pytest.mark.parametrize("index", range(len(sql_examples())))
def test_readme_example_runs_with_plain_duckdb(tmp_path: Path, monkeypatch, index: int) -> None:
    write_release(tmp_path / "DOCS")
    monkeypatch.chdir(tmp_path)  # the examples use the relative path DOCS/latest/...
    con = duckdb.connect()
    rows = con.execute(sql_examples()[index]).fetchall()
    assert rows, "every example returns rows on the fixture release"
