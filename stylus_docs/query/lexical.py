"""Lexical (BM25) index over an adapters table, cached next to the release build.

Document text per adapter: title, version name, tags, trigger words, description and the example
prompts (the creators' own prompts are the single strongest signal for the tag-soup prompts people
type; see the issue's measurements). Scoring is ``bm25s`` (sparse CSC matrix, numpy): it returns
a full score vector per query, which is what a row mask and fusion with the dense scores need.
The choice against DuckDB's ``fts`` extension is measured in ``stylus_docs/query/README.md``.

The index is stored under ``builds/<id>/index/bm25-<key>/`` where ``key`` hashes the SHA-256 of every
adapters file listed in the manifest plus the tokenizer settings, so a changed release (or changed
settings) gets a new index — never a stale one. When the build directory is read-only the index goes
to the user cache dir, and when that fails too it lives only in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stylus_docs.normalize.lora import strip_tags
from stylus_docs.release import sha256_file

log = logging.getLogger(__name__)

#: Bumped whenever the document text or tokenisation changes, so old cached indexes are not reused.
#: v2: network tags as :mod:`stylus_docs.normalize.lora` defines them (``<locon:…>`` too; an unclosed
#: ``<lora:x`` no longer swallows the words up to the next ``>``).
INDEX_VERSION = "bm25.v2"
#: Columns that feed the BM25 document text.
TEXT_COLUMNS = ("title", "version_name", "tags", "trigger_words", "description", "example_prompts")


def document_text(row: dict[str, Any]) -> str:
    """The BM25 document of one adapter row (title and trigger words repeated: they are the names)."""
    parts: list[str] = []
    title = row.get("title") or ""
    parts += [title, title]
    parts.append(row.get("version_name") or "")
    parts += list(row.get("tags") or [])
    triggers = list(row.get("trigger_words") or [])
    parts += triggers + triggers
    parts.append(row.get("description") or "")
    parts += [strip_tags(p) for p in row.get("example_prompts") or []]
    return "\n".join(p for p in parts if p)


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


def index_key(build_dir: Path, manifest: dict[str, Any], files: Sequence[Path]) -> str:
    """Hash of the adapters files' SHA-256 (from the manifest, else computed) and the index settings."""
    listed = {
        e.get("path"): e.get("sha256") for e in manifest.get("files", []) if e.get("table") == "adapters"
    }
    digest = hashlib.sha256(INDEX_VERSION.encode())
    for path in files:
        rel = path.relative_to(build_dir).as_posix()
        digest.update(rel.encode())
        digest.update((listed.get(rel) or sha256_file(path)).encode())
    return digest.hexdigest()[:24]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stylus-docs" / "index"


class LexicalIndex:
    """BM25 scores for a query over all rows, row order = the release's adapters row order.

    Args:
        retriever: a fitted ``bm25s.BM25``.
        n_rows: number of documents (rows of the adapters table).
        location: where the index is stored (None when in memory only).
    """

    def __init__(self, retriever: Any, n_rows: int, location: Path | None) -> None:
        self.retriever = retriever
        self.n_rows = n_rows
        self.location = location
        self._vocab: dict[str, int] = retriever.vocab_dict

    @classmethod
    def build(cls, docs: Iterable[str]) -> LexicalIndex:
        """Fit BM25 over ``docs`` (in memory)."""
        import bm25s

        texts = list(docs)
        # bm25s logs every build at DEBUG on its own logger; keep the CLI's stderr clean.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        retriever = bm25s.BM25()
        retriever.index(_tokenize(texts), show_progress=False)
        return cls(retriever, len(texts), None)

    @classmethod
    def open(
        cls,
        build_dir: Path,
        manifest: dict[str, Any],
        files: Sequence[Path],
        rows: int,
        load_docs: Any,
    ) -> LexicalIndex:
        """Load the cached index for this release, or build and store it.

        Args:
            build_dir: the build directory.
            manifest: its manifest.
            files: the adapters Parquet files in manifest order.
            rows: expected row count (a cached index with another count is rebuilt).
            load_docs: callable returning the document texts in row order (only called to build).
        """
        import bm25s

        key = index_key(build_dir, manifest, files)
        name = f"bm25-{key}"
        for base in (build_dir / "index", _cache_root()):
            path = base / name
            if (path / "stylus_index.json").is_file():
                try:
                    meta = json.loads((path / "stylus_index.json").read_text(encoding="utf-8"))
                    if meta.get("rows") == rows and meta.get("version") == INDEX_VERSION:
                        retriever = bm25s.BM25.load(str(path), mmap=True, show_progress=False)
                        log.debug("BM25 index loaded from %s", path)
                        return cls(retriever, rows, path)
                    log.warning("BM25 index at %s does not match the release; rebuilding", path)
                except (OSError, ValueError) as exc:
                    log.warning("BM25 index at %s unreadable (%s); rebuilding", path, exc)
        index = cls.build(load_docs())
        if index.n_rows != rows:
            raise ValueError(f"BM25 built over {index.n_rows} docs, release has {rows} rows")
        for base in (build_dir / "index", _cache_root()):
            stored = index._store(base, name, rows)
            if stored is not None:
                index.location = stored
                break
        else:
            log.warning("could not store the BM25 index anywhere; it will be rebuilt next time")
        return index

    def _store(self, base: Path, name: str, rows: int) -> Path | None:
        # Written to a temp dir and renamed into place: a crashed writer never leaves a half index.
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=base))
        except OSError as exc:
            log.info("cannot write an index under %s: %s", base, exc)
            return None
        try:
            self.retriever.save(str(tmp), show_progress=False)
            meta = {"version": INDEX_VERSION, "rows": rows, "columns": list(TEXT_COLUMNS)}
            (tmp / "stylus_index.json").write_text(json.dumps(meta), encoding="utf-8")
            final = base / name
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process stored the same key first: theirs is as good as ours.
                if not (final / "stylus_index.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("BM25 index stored at %s", final)
            return final
        except OSError as exc:
            log.info("cannot write an index under %s: %s", base, exc)
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp, ignore_errors=True)
            return None

    def query_tokens(self, text: str) -> list[str]:
        """Tokens of ``text`` that the index knows (unknown words score nothing)."""
        return [t for t in _tokenize([strip_tags(text)])[0] if t in self._vocab]

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every row for ``text`` (float32, zeros when no token matches)."""
        tokens = self.query_tokens(text)
        if not tokens:
            return np.zeros(self.n_rows, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)
