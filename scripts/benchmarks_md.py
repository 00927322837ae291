"""BENCHMARKS.md: one section per benchmark script, replaced in place.

Each script owns the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and replaces
only that block, so scripts run at different times (or on different machines) never overwrite each
other's figures. The file is written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
if str(ROOT) not in sys.path:  # scripts run as files; the package lives in the repo root
    sys.path.insert(0, str(ROOT))

from stylus_docs.atomic import atomic_write_text  # noqa: E402


def replace_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) section ``name`` with ``body`` (with or without its own marker lines)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    inner = body.strip()
    inner = inner.removeprefix(start).removesuffix(end).strip()
    block = f"{start}\n{inner}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
