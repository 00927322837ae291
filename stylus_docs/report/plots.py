"""The report's plots, drawn with matplotlib's Agg backend into PNG files beside the page.

Agg needs no display and is selected per figure (``Figure`` + ``FigureCanvasAgg``, not pyplot), so
writing a report never touches global matplotlib state or opens a window.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

#: Bars shown per bar chart; the rest are summed into "other".
TOP_N = 15


def _figure(width: float = 6.4, height: float = 3.6):  # noqa: ANN202 - matplotlib types stay lazy
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _top(counts: Counter[str], n: int = TOP_N) -> list[tuple[str, int]]:
    items = counts.most_common()
    if len(items) > n:
        items = items[: n - 1] + [("other", sum(c for _, c in items[n - 1 :]))]
    return items


def bar_chart(counts: Counter[str], title: str, xlabel: str, path: Path) -> Path:
    """Horizontal bars of ``counts`` (largest first, at most :data:`TOP_N`), saved as PNG at ``path``."""
    items = _top(counts)
    fig = _figure(height=max(2.4, 0.32 * len(items) + 1.2))
    ax = fig.add_subplot()
    if items:
        labels = [k for k, _ in items][::-1]
        values = [v for _, v in items][::-1]
        bars = ax.barh(labels, values, color="#4c72b0")
        ax.bar_label(bars, padding=3, fontsize=8)
        ax.margins(x=0.12)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.savefig(path, format="png")
    return path


def long_tail(downloads: list[int], path: Path) -> Path:
    """Downloads by popularity rank on log–log axes (the catalogue's long tail), saved as PNG."""
    values = sorted((d for d in downloads if d and d > 0), reverse=True)
    fig = _figure()
    ax = fig.add_subplot()
    if values:
        ax.plot(range(1, len(values) + 1), values, marker="." if len(values) < 200 else None, color="#dd8452")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no downloads recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"Downloads long tail ({len(values)} adapters with downloads)")
    ax.set_xlabel("rank")
    ax.set_ylabel("downloads")
    fig.savefig(path, format="png")
    return path
