"""Progress bars for long build stages (render, refine), shared by the threads of one worker process.

A stage's work happens deep inside Beam (a RunInference handler answering from a thread pool), far from
the code that knows how much work there is. This registry joins the two: the pipeline counts a stage's
input and calls :func:`expect` with the total once it is known; whoever finishes a unit of work calls
:func:`tick`. Bars exist only where :func:`expect` was called with ``enabled`` true (the build passes
its ``--no-progress`` / "stderr is a terminal" decision), so a worker on a cluster or a test run shows
nothing and pays one dictionary lookup per tick.

tqdm draws ``done/total``, the rate and the ETA; a stage seen by several bundles of one process keeps
one bar (the total is the stage's whole input, counted once).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

_lock = threading.Lock()
_bars: dict[str, Any] = {}


def expect(label: str, total: int, *, enabled: bool = True) -> None:
    """Open the bar of ``label`` for ``total`` units (no-op when disabled or already open)."""
    if not enabled:
        return
    with _lock:
        if label in _bars:
            return
        from tqdm import tqdm

        _bars[label] = tqdm(total=total, desc=label, unit="adapter", file=sys.stderr, leave=True,
                            dynamic_ncols=True, smoothing=0.1)  # fmt: skip


def tick(label: str, n: int = 1) -> None:
    """Count ``n`` finished units of ``label`` (no-op when its bar is not open)."""
    bar = _bars.get(label)
    if bar is None:
        return
    with _lock:
        bar.update(n)
        if bar.total is not None and bar.n >= bar.total:
            bar.close()
            _bars.pop(label, None)


def close_all() -> None:
    """Close every open bar (end of a build, or a failed one)."""
    with _lock:
        for bar in _bars.values():
            bar.close()
        _bars.clear()


def is_open(label: str) -> bool:
    """Whether ``label`` has an open bar (for tests)."""
    return label in _bars
