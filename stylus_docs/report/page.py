"""The report's HTML: one static page, inline CSS and a small inline script (search + sort), no network.

Every number taken from the manifest carries its key in a ``data-count`` attribute (``input``,
``filtered.no_safetensors``, …; totals of a reason table in ``data-count-total``), the diff's in
``data-diff``, so a test — or a user's own script — can read them back from the DOM and compare them
with the manifest.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import urlsplit

from stylus_docs.report.data import ReportData
from stylus_docs.report.images import Thumb

#: Scalar counts of the manifest, in display order, with their labels.
SCALAR_COUNTS = [
    ("input", "records in"), ("written", "adapters written"), ("reused", "reused from the previous release"),
    ("refined", "refined"), ("embedded", "embedded"), ("images", "images written"),
    ("removed", "removed (tombstones)"), ("kept_deleted", "kept deleted"),
]  # fmt: skip
#: Reason tables of the manifest's counts, with their headings.
REASON_COUNTS = [
    ("filtered", "Filtered, by reason"), ("dead_letter", "Dead letters, by reason"),
    ("images_filtered", "Images filtered, by reason"), ("rendered", "Adapters by render status"),
    ("weights_format", "Weights files by format"), ("unknown_base_models", "Unknown base models"),
]  # fmt: skip

CSS = """
:root { font-family: system-ui, sans-serif; color: #222; }
body { margin: 0 auto; max-width: 1400px; padding: 0 1.5rem 3rem; }
h1 { font-size: 1.5rem; margin-top: 1.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid #eee; padding: .25rem .6rem; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.plots figure { margin: 0; } .plots img { max-width: 600px; width: 100%; border: 1px solid #eee; }
figcaption { font-size: .8rem; color: #666; }
#adapters th[data-key] { cursor: pointer; user-select: none; white-space: nowrap; }
#adapters th[aria-sort=ascending]::after { content: " \\25B2"; }
#adapters th[aria-sort=descending]::after { content: " \\25BC"; }
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; max-width: 600px; }
.thumbs figure { margin: 0; text-align: center; font-size: .7rem; color: #666; }
.thumbs img { height: 96px; width: auto; border: 1px solid #ddd; }
.status-ok { color: #1a7f37; } .status-bad { color: #b42318; }
.muted { color: #777; } input[type=search] { font-size: 1rem; padding: .3rem; width: 24rem; }
.meta td:first-child { color: #666; }
"""

# Vanilla JS only: the page must work from a file or a static server with no network.
SCRIPT = """
(function () {
  const table = document.getElementById('adapters');
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const shown = document.getElementById('shown');
  const search = document.getElementById('search');
  function filter() {
    const terms = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let n = 0;
    for (const row of rows) {
      const hay = row.dataset.search;
      const ok = terms.every(t => hay.includes(t));
      row.hidden = !ok;
      if (ok) n++;
    }
    shown.textContent = n;
    shown.dataset.shown = n;
  }
  search.addEventListener('input', filter);
  for (const th of table.tHead.rows[0].cells) {
    if (!th.dataset.key) continue;
    th.addEventListener('click', function () {
      const col = th.cellIndex;
      const numeric = th.dataset.type === 'num';
      const dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
      for (const other of table.tHead.rows[0].cells) other.removeAttribute('aria-sort');
      th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
      const key = r => {
        const v = r.cells[col].dataset.sort;
        if (!numeric) return v;
        return v === '' ? -Infinity : Number(v);
      };
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      for (const r of rows) body.appendChild(r);
    });
  }
  filter();
})();
"""


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _counts_section(data: ReportData) -> str:
    counts = data.counts
    rows = []
    for key, label in SCALAR_COUNTS:
        if key in counts:
            rows.append(
                f'<tr><td>{escape(label)}</td><td class="n" data-count="{key}">{int(counts[key])}</td></tr>'
            )
    out = [f'<table class="scalar"><tbody>{"".join(rows)}</tbody></table>']
    for key, heading in REASON_COUNTS:
        reasons = counts.get(key)
        if not isinstance(reasons, dict):
            continue
        body = "".join(
            f"<tr><td>{escape(str(reason))}</td>"
            f'<td class="n" data-count="{escape(f"{key}.{reason}")}">{int(n)}</td></tr>'
            for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        total = sum(int(n) for n in reasons.values())
        out.append(
            f'<table><thead><tr><th>{escape(heading)}</th><th class="n">n</th></tr></thead><tbody>{body}'
            f'</tbody><tfoot><tr><th>total</th><th class="n" data-count-total="{key}">{total}</th></tr>'
            "</tfoot></table>"
        )
    usage = counts.get("refine_usage")
    if isinstance(usage, dict) and usage:
        body = "".join(
            f'<tr><td>{escape(k)}</td><td class="n" data-count="refine_usage.{escape(k)}">{int(v)}</td></tr>'
            for k, v in usage.items()
        )
        out.append(f'<table><thead><tr><th>VLM usage</th><th class="n">n</th></tr></thead><tbody>{body}'
                   "</tbody></table>")  # fmt: skip
    invariant = (
        counts["written"] + sum(counts["filtered"].values()) + sum(counts["dead_letter"].values())
        == counts["input"]
    )
    note = (
        '<p class="status-ok">input = written + filtered + dead letters: nothing disappeared.</p>'
        if invariant
        else '<p class="status-bad">The count invariant does not hold for this manifest.</p>'
    )
    return f'<section id="counts"><h2>Counts</h2>{note}<div class="grid">{"".join(out)}</div></section>'


def _plots_section(plots: list[tuple[str, str]]) -> str:
    figs = "".join(
        f'<figure><img src="{escape(rel)}" alt="{escape(alt)}">'
        f"<figcaption>{escape(alt)}</figcaption></figure>"
        for rel, alt in plots
    )
    return f'<section id="plots" class="plots"><h2>Plots</h2><div class="grid">{figs}</div></section>'


def _id_list(ids: list[str], limit: int = 200) -> str:
    items = "".join(f"<li><code>{escape(i)}</code></li>" for i in ids[:limit])
    more = f'<li class="muted">… and {len(ids) - limit} more</li>' if len(ids) > limit else ""
    return f"<ul>{items}{more}</ul>"


def _diff_section(data: ReportData) -> str:
    diff = data.diff
    if diff is None:
        return (
            '<section id="diff"><h2>Against the previous build</h2>'
            '<p class="muted">No previous build.</p></section>'
        )
    parts = [
        f"<p>Previous build <code>{escape(diff.previous_id)}</code>: "
        f'<span data-diff="added">{len(diff.added)}</span> added, '
        f'<span data-diff="removed">{len(diff.removed)}</span> removed, '
        f'<span data-diff="changed">{len(diff.changed)}</span> changed (content hash), '
        f'<span data-diff="unchanged">{diff.unchanged}</span> unchanged.</p>'
    ]
    for name, ids in (("Added", diff.added), ("Removed", diff.removed), ("Changed", diff.changed)):
        if ids:
            parts.append(f"<details><summary>{name} ({len(ids)})</summary>{_id_list(ids)}</details>")
    return f'<section id="diff"><h2>Against the previous build</h2>{"".join(parts)}</section>'


def _safe_link(url: Any) -> str | None:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        return None
    return url


def _thumbs_cell(images: list[tuple[dict[str, Any], Thumb | None]]) -> str:
    figs = []
    for row, thumb in images:
        label = row.get("origin") or ""
        if row.get("origin") == "rendered":
            label = "with" if row.get("with_adapter") else "without"
            if row.get("seed") is not None:
                label += f" · {row['seed']}"
        title = escape(row.get("prompt") or "", quote=True)
        if thumb is not None:
            figs.append(
                f'<figure><img src="{escape(thumb.rel)}" width="{thumb.width}" height="{thumb.height}" '
                f'loading="lazy" alt="{escape(label)}" title="{title}"><figcaption>{escape(label)}'
                "</figcaption></figure>"
            )
        elif (link := _safe_link(row.get("url"))) is not None:
            figs.append(f'<figure><a href="{escape(link)}" title="{title}" rel="noreferrer">{escape(label)} '
                        "\u2197</a></figure>")  # fmt: skip
    return f'<div class="thumbs">{"".join(figs)}</div>'


def _status_cell(adapter: dict[str, Any]) -> str:
    status = adapter.get("render_status") or "not_rendered"
    cls = "status-ok" if status == "ok" else ("muted" if status == "not_rendered" else "status-bad")
    title = escape(adapter.get("render_error") or "", quote=True)
    return f'<td data-sort="{escape(status)}" class="{cls}" title="{title}">{escape(status)}</td>'


def _adapters_section(data: ReportData, thumbs: dict[str, list[tuple[dict[str, Any], Thumb | None]]]) -> str:
    head = (
        '<tr><th data-key="title">title</th><th data-key="category">category</th>'
        '<th data-key="base_model">base model</th><th data-key="weight" data-type="num" class="n">weight</th>'
        '<th data-key="downloads" data-type="num" class="n">downloads</th>'
        '<th data-key="render_status">render status</th><th>images</th></tr>'
    )
    rows = []
    for a in data.adapters:
        aid = a["adapter_id"]
        title = a.get("title") or aid
        search = " ".join(
            str(a.get(k) or "") for k in ("title", "adapter_id", "category", "base_model", "type")
        )
        weight, downloads = a.get("recommended_weight"), a.get("downloads")
        link = _safe_link(a.get("card_url"))
        title_html = (
            f'<a href="{escape(link)}" rel="noreferrer">{escape(title)}</a>' if link else escape(title)
        )
        rows.append(
            f'<tr data-adapter-id="{escape(aid)}" data-search="{escape(search.lower())}">'
            f'<td data-sort="{escape(title.lower())}">{title_html}<br>'
            f'<code class="muted">{escape(aid)}</code></td>'
            f'<td data-sort="{escape(a.get("category") or "")}">{escape(a.get("category") or "")}</td>'
            f'<td data-sort="{escape(a.get("base_model") or "")}">{escape(a.get("base_model") or "")}</td>'
            f'<td class="n" data-sort="{"" if weight is None else f"{weight:.4g}"}">{_fmt(weight)}</td>'
            f'<td class="n" data-sort="{"" if downloads is None else int(downloads)}">{_fmt(downloads)}</td>'
            f"{_status_cell(a)}<td>{_thumbs_cell(thumbs.get(aid, []))}</td></tr>"
        )
    return (
        '<section id="adapters-section"><h2>Adapters</h2>'
        '<p><input type="search" id="search" placeholder="search title, id, category, base model" '
        'aria-label="search adapters"> <span id="shown"></span> of '
        f'<span id="total" data-rows="{len(data.adapters)}">{len(data.adapters)}</span> shown; '
        "click a heading to sort.</p>"
        f'<table id="adapters"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _records_section(section_id: str, heading: str, rows: list[dict[str, Any]], total: int,
                     columns: list[str]) -> str:  # fmt: skip
    if total == 0:
        return f'<section id="{section_id}"><h2>{heading}</h2><p class="muted">None.</p></section>'
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    more = f'<p class="muted">First {len(rows)} of {total}.</p>' if total > len(rows) else ""
    return (
        f'<section id="{section_id}"><h2>{heading} '
        f'(<span data-listed-total="{section_id}">{total}</span>)</h2>'
        f"{more}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )


def _eval_section(data: ReportData, plots: list[str], links: list[tuple[str, str]]) -> str:
    ev = data.eval
    if ev is None:
        return ""
    metrics = sorted({r["metric"] for r in ev.rows})
    table: dict[tuple[str, str], dict[str, float]] = {}
    for r in ev.rows:
        table.setdefault((r["method"], _fmt(r["cfg"])), {})[r["metric"]] = r["value"]
    head = "<th>method</th><th>cfg</th>" + "".join(f'<th class="n">{escape(m)}</th>' for m in metrics)
    body = "".join(
        f"<tr><td>{escape(method)}</td><td>{escape(cfg)}</td>"
        + "".join(f'<td class="n">{_fmt(vals.get(m))}</td>' for m in metrics)
        + "</tr>"
        for (method, cfg), vals in sorted(table.items())
    )
    parts = (
        [f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
        if ev.rows
        else ['<p class="muted">No eval.json rows.</p>']
    )
    parts += [f'<figure><img src="{escape(p)}" alt="CLIP–FID Pareto plot"></figure>' for p in plots]
    if links:
        parts.append("<p>" + " · ".join(f'<a href="{escape(rel)}">{escape(name)}</a>' for rel, name in links)
                     + "</p>")  # fmt: skip
    return f'<section id="eval"><h2>Evaluation</h2><div class="grid">{"".join(parts)}</div></section>'


def render_page(
    data: ReportData,
    *,
    plots: list[tuple[str, str]],
    thumbs: dict[str, list[tuple[dict[str, Any], Thumb | None]]],
    eval_plots: list[str],
    eval_links: list[tuple[str, str]],
    icon: str,
) -> str:
    """The whole HTML document.

    Args:
        plots: (relative PNG path, caption) of each release plot.
        thumbs: per adapter id, its image rows with their thumbnail (None: link only).
        eval_plots: relative paths of copied eval plots.
        eval_links: (relative path, name) of copied eval files.
        icon: relative path of the page's icon.
    """
    m = data.manifest
    meta_rows = [
        ("build", m["build_id"]), ("created", m.get("created_at")), ("release", str(data.build_dir)),
        ("previous (reused from)", m.get("previous")), ("refiner", json.dumps(m.get("refiner"))),
        ("embedder", json.dumps(m.get("embedder"))), ("wall time (s)", m.get("wall_s")),
    ]  # fmt: skip
    meta = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(_fmt(v))}</td></tr>" for k, v in meta_rows if v is not None
    )
    sections = [
        _counts_section(data),
        _plots_section(plots),
        _diff_section(data),
        _adapters_section(data, thumbs),
        _records_section("dead-letters", "Dead letters", data.dead_letters, data.dead_letter_total,
                         ["stage", "reason", "record_id", "detail", "source"]),
        _records_section("removed", "Removed adapters", data.removed, data.removed_total,
                         ["adapter_id", "reason", "last_seen", "host"]),
        _eval_section(data, eval_plots, eval_links),
    ]  # fmt: skip
    targets = [("counts", "counts"), ("plots", "plots"), ("diff", "diff"), ("adapters-section", "adapters"),
               ("dead-letters", "dead letters"), ("removed", "removed")]  # fmt: skip
    if data.eval is not None:
        targets.append(("eval", "evaluation"))
    nav = " ".join(f'<a href="#{i}">{t}</a>' for i, t in targets)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network: the page may only load its own files (images beside it, inline style and script).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>StylusDocs release {escape(m['build_id'])}</title>"
        # An icon of its own, or the browser asks the server for /favicon.ico (a 404 on most servers).
        f'<link rel="icon" href="{escape(icon)}"><style>{CSS}</style></head><body>'
        f'<h1>StylusDocs release <code data-build-id="{escape(m["build_id"])}">'
        f"{escape(m['build_id'])}</code></h1>"
        f'<table class="meta"><tbody>{meta}</tbody></table><nav>{nav}</nav>'
        + "".join(sections)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
