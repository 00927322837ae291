"""DuckDB connections over a release whose file access is restricted to the release directory.

``--where`` and ``stylus-docs sql`` run SQL typed by the local user. That is fine for reading the
catalogue, but the same SQL could otherwise read any file the user's shell can (``read_csv('/etc/passwd')``),
attach databases, install extensions or ``COPY`` over the release. A :func:`connect` connection therefore:

1. creates the views ``adapters`` and ``images`` over exactly the Parquet files the manifest lists;
2. sets ``allowed_directories`` to the release root, then ``enable_external_access = false`` (DuckDB ≥ 1.3:
   only the allowed directories stay readable), then ``lock_configuration = true`` so SQL cannot undo it;
3. accepts only read statements (:func:`check_read_only`): no ``COPY``/``EXPORT`` that would write
   inside the allowed directory, no ``ATTACH``, ``INSTALL``, ``SET``, DDL or DML.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import duckdb

from stylus_docs.errors import FatalError
from stylus_docs.release import table_files

log = logging.getLogger(__name__)

#: Tables exposed as views, in this order.
TABLES = ("adapters", "images")
_READ_STATEMENTS = {"SELECT", "EXPLAIN"}


def sql_string(value: str) -> str:
    """Quote ``value`` as a SQL string literal (used only for manifest-listed file paths)."""
    return "'" + value.replace("'", "''") + "'"


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str, *, single: bool = True) -> None:
    """Refuse anything but read statements.

    Args:
        con: a connection (used only for its parser).
        sql: the user's SQL text.
        single: require exactly one statement (``--where`` is spliced into one SELECT).

    Raises:
        FatalError: when the SQL does not parse, is empty, holds several statements or writes.
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise FatalError(f"SQL does not parse: {_first_line(exc)}") from exc
    if not statements:
        raise FatalError("empty SQL")
    if single and len(statements) != 1:
        raise FatalError(f"expected one SQL statement, got {len(statements)}")
    for stmt in statements:
        kind = getattr(stmt.type, "name", str(stmt.type))
        if kind not in _READ_STATEMENTS:
            raise FatalError(f"only read-only queries (SELECT) are allowed, not {kind}")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def connect(
    build_dir: str | os.PathLike[str],
    manifest: dict[str, Any],
    *,
    allowed_root: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with ``adapters``/``images`` views, file access locked down.

    Args:
        build_dir: the build directory the manifest belongs to.
        manifest: its validated manifest.
        allowed_root: the directory SQL may read (default: the release root above ``builds/``, so the
            plain ``'DOCS/latest/adapters/*.parquet'`` paths keep working; the build dir itself when the
            build dir was opened directly).
        threads: DuckDB worker threads (default: DuckDB's own choice).
    """
    build = Path(build_dir).resolve()
    root = Path(allowed_root).resolve() if allowed_root is not None else _release_root(build)
    config: dict[str, Any] = {}
    if threads:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    for table in TABLES:
        files = table_files(build, manifest, table)
        if not files:
            log.info("release %s has no %s files; the %s view is not created", build, table, table)
            continue
        listing = ", ".join(sql_string(str(p)) for p in files)
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}])")
    allowed = sorted({str(root) + os.sep, str(build) + os.sep})
    con.execute(f"SET allowed_directories = [{', '.join(sql_string(a) for a in allowed)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _release_root(build: Path) -> Path:
    # builds/<id>/ sits two levels under the release root; a bare build dir is its own root.
    if build.parent.name == "builds" and ((build.parent.parent / "CURRENT").exists()):
        return build.parent.parent
    return build


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only statement (after :func:`check_read_only`); return column names and rows.

    Raises:
        FatalError: on refused statements and on DuckDB errors (one line, e.g. permission denied).
    """
    check_read_only(con, sql, single=True)
    try:
        rel = con.execute(sql)
        cols = [d[0] for d in rel.description or []]
        return cols, rel.fetchall()
    except duckdb.Error as exc:
        raise FatalError(f"SQL failed: {_first_line(exc)}") from exc
