"""DuckDB connections over a release whose file access is restricted to the release directory.

``--where`` and ``stylus-docs sql`` run SQL typed by the local user. That is fine for reading the
catalogue, but the same SQL could otherwise read any file the user's shell can (``read_csv('/etc/passwd')``),
attach databases, install extensions or ``COPY`` over the release. A :func:`connect` connection therefore:

1. creates the views ``adapters`` and ``images`` over exactly the Parquet files the manifest lists;
2. sets ``allowed_directories`` to the release root, then ``enable_external_access = false`` (DuckDB ≥ 1.3:
   only the allowed directories stay readable), then ``lock_configuration = true`` so SQL cannot undo it;
3. accepts only read statements (:func:`check_read_only`), decided from DuckDB's own parse (the
   statement type of each extracted statement), not from the first keyword: no ``COPY``/``EXPORT`` that
   would write inside the allowed directory, no ``ATTACH``, ``INSTALL``, ``SET``, DDL or DML, and no
   ``EXPLAIN ANALYZE`` of any of them (``EXPLAIN ANALYZE`` *executes* the statement it explains, so the
   explained statement must itself be a read);
4. spills to a temporary directory private to this process (``mkdtemp``, removed at exit) rather than
   DuckDB's default ``./.tmp`` under whatever directory the user happens to be in, and never autoloads
   or autoinstalls an extension;
5. refuses a release that holds a symlink resolving outside the allowed directory (``allowed_directories``
   is a prefix check on the path as written, so a link inside the release would otherwise be a way out).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
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
    statements = _extract(con, sql)
    if single and len(statements) != 1:
        raise FatalError(f"expected one SQL statement, got {len(statements)}")
    for stmt in statements:
        _check_statement(con, stmt, depth=0)


def _extract(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise FatalError(f"SQL does not parse: {_first_line(exc)}") from exc
    if not statements:
        raise FatalError("empty SQL")
    return statements


def _kind(stmt: Any) -> str:
    return str(getattr(stmt.type, "name", stmt.type))


def _check_statement(con: duckdb.DuckDBPyConnection, stmt: Any, depth: int) -> None:
    kind = _kind(stmt)
    if kind == "SELECT":
        # SELECT covers DuckDB's read-only sugar too (FROM-first, DESCRIBE, SUMMARIZE, SHOW, PRAGMA
        # functions rewritten to table functions); ``query('…')`` itself only accepts a single SELECT.
        return
    if kind != "EXPLAIN":
        raise FatalError(f"only read-only queries (SELECT, EXPLAIN SELECT) are allowed, not {kind}")
    if depth >= 4:
        raise FatalError("EXPLAIN nested too deep")
    inner = _explained(stmt.query)
    if inner is None:
        raise FatalError("EXPLAIN without a statement to explain")
    explained = _extract(con, inner)
    if len(explained) != 1:
        raise FatalError("EXPLAIN must explain exactly one statement")
    if _kind(explained[0]) not in ("SELECT", "EXPLAIN"):
        # EXPLAIN ANALYZE runs its statement; plain EXPLAIN of a write is refused too (no use to a reader).
        raise FatalError(f"EXPLAIN of {_kind(explained[0])} is not allowed: only SELECT may be explained")
    _check_statement(con, explained[0], depth + 1)


def _explained(text: str) -> str | None:
    """The statement an ``EXPLAIN [ANALYZE] [(options)]`` explains, located with DuckDB's tokenizer.

    Tokenizing (rather than a regex) keeps comments, odd spacing and quoted text from hiding a prefix.
    """
    tokens = duckdb.tokenize(text)
    offsets = [off for off, _ in tokens]
    words = [
        text[off : (offsets[i + 1] if i + 1 < len(offsets) else len(text))].strip()
        for i, off in enumerate(offsets)
    ]
    i = 1  # token 0 is EXPLAIN
    while i < len(tokens):
        word = words[i].upper()
        if word in ("ANALYZE", "ANALYSE"):
            i += 1
        elif word.startswith("("):
            depth = 0
            while i < len(tokens):  # skip the option list, balanced parentheses
                depth += words[i].count("(") - words[i].count(")")
                i += 1
                if depth <= 0:
                    break
        else:
            return text[offsets[i] :]
    return None


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
    _refuse_escaping_links(root)
    config: dict[str, Any] = {
        "temp_directory": _private_temp_dir(),
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
    }
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


_TEMP_DIR: str | None = None


def _private_temp_dir() -> str:
    """One ``mkdtemp`` directory (mode 0700) per process for DuckDB spills, removed at exit."""
    global _TEMP_DIR
    if _TEMP_DIR is None or not os.path.isdir(_TEMP_DIR):
        _TEMP_DIR = tempfile.mkdtemp(prefix="stylus-duckdb-")
        atexit.register(shutil.rmtree, _TEMP_DIR, True)
    return _TEMP_DIR


def _refuse_escaping_links(root: Path) -> None:
    """Refuse a release holding a symlink that resolves outside ``root``.

    ``allowed_directories`` compares the path as written, so ``DOCS/x -> /etc`` would make ``/etc``
    readable as ``DOCS/x/…``. Walks without following links (one ``scandir`` per directory: about
    0.02 s for 50,000 files with a warm cache, see BENCHMARKS.md); links that stay inside
    (``latest -> builds/<id>``) are fine.
    """
    root_s = str(root) + os.sep
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            raise FatalError(f"cannot read release directory {current}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if target != str(root) and not target.startswith(root_s):
                    raise FatalError(
                        f"refusing release: symlink {entry.path} points outside it (to {target})"
                    )
            elif entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)


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
