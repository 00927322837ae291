"""``eval run``: the paper's Table 1 / Figure 6 – generate with Stylus and its baselines, then score.

Methods (all rendered with the same pipeline, prompts, seeds and settings, per guidance scale):

* ``stylus`` – the composer's adapters (:class:`~stylus_docs.compose.Composer`, offline or LLM);
* ``retriever`` – the Retriever-only baseline: the top ``retriever_k`` (3) retrieved adapters of the
  pipeline's base-model family, each its own topic, all merged (reference ``launch_stylus.py``);
* ``random`` – ``random_k`` (3) adapters drawn uniformly from the release's SFW adapters of that family,
  seeded by the prompt and ``--seed`` (so every cfg and every re-run draws the same ones);
* ``base`` – the base model without adapters.

Then, per (method, cfg): CLIP score against the prompts, FID and KID against the real images' Inception
features. With ``best_of`` the paper's aggregation is used: each prompt's best-CLIP image only, for the
CLIP mean and as the set FID is computed on (the reference filters the set the same way).

Output layout (``OUT``)::

    OUT/images/<method>/cfg<cfg>/<prompt slug>/stylus/NNN-seedS.png (+ .json sidecar)  generation
    OUT/eval.json    {"format": "stylus-eval-run.v1", "created", "release", "pipeline", "settings",
                      "real": {"dir", "n"}, "table": [{"method", "cfg", "clip", "fid", "kid", "kid_std",
                      "n_images", "n_prompts"}], "rows": [{"method", "cfg", "metric", "value"}],
                      "pareto": {"png": "pareto.png", "svg": "pareto.svg"}}
    OUT/eval.csv     method,cfg,metric,value – one row per (method, cfg, metric); metrics clip, fid, kid,
                     kid_std, n_images
    OUT/pareto.png   CLIP (x) against FID (y), one line per method over the cfg values
    OUT/pareto.svg   the same plot as SVG

Generation is resumable (each prompt's ``_DONE.json``); features are cached, so a re-run that adds a
cfg value only renders and scores the new images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_bytes, atomic_write_text
from stylus_docs.errors import FatalError
from stylus_docs.eval.clip import ClipScorer, best_per_prompt
from stylus_docs.eval.common import ImageItem, collect_images
from stylus_docs.eval.fid import InceptionFeatures, fid_kid

log = logging.getLogger(__name__)

METHODS = ("stylus", "retriever", "random", "base")
RUN_FORMAT = "stylus-eval-run.v1"
METRICS = ("clip", "fid", "kid", "kid_std", "n_images")


def parse_methods(text: str) -> list[str]:
    """``stylus,retriever,random,base`` → a checked list (order kept, duplicates dropped)."""
    out: list[str] = []
    for m in (t.strip() for t in text.split(",")):
        if not m:
            continue
        if m not in METHODS:
            raise FatalError(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
        if m not in out:
            out.append(m)
    if not out:
        raise FatalError("--methods: name at least one method")
    return out


def parse_cfgs(text: str) -> list[float]:
    """``3,6,9`` → ``[3.0, 6.0, 9.0]`` (checked non-negative)."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise FatalError(f"--cfg: not a comma-separated list of numbers: {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise FatalError("--cfg: give one or more non-negative guidance scales")
    return list(dict.fromkeys(vals))


def cfg_label(cfg: float) -> str:
    """``6.0`` → ``6``, ``1.5`` → ``1.5`` (directory names and table keys)."""
    return f"{cfg:g}"


@dataclass(slots=True)
class RunSettings:
    """What ``eval run`` does besides the generation settings.

    Args:
        methods: methods to render and score.
        cfgs: guidance scales.
        best_of: the paper's best-of-N aggregation (off by default).
        retriever_k: adapters of the Retriever-only baseline.
        random_k: adapters of the Random baseline.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (capped by the set sizes).
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    cfgs: list[float] = field(default_factory=lambda: [3.0, 6.0, 9.0])
    best_of: bool = False
    retriever_k: int = 3
    random_k: int = 3
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def __post_init__(self) -> None:
        if self.retriever_k < 1 or self.random_k < 1:
            raise FatalError("--retriever-k and --random-k must be at least 1")
        if self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise FatalError("--kid-subsets must be >= 1 and --kid-subset-size >= 2")


class Baselines:
    """Compositions of the four methods for one composer (and its release).

    Args:
        composer: the Stylus composer (its settings give the family, NSFW switch and cache).
        settings: the run settings (``retriever_k``, ``random_k``).
        seed: seeds the Random baseline's draw (with the prompt).
    """

    def __init__(self, composer: Any, settings: RunSettings, seed: int = 0) -> None:
        self.composer = composer
        self.settings = settings
        self.seed = seed
        self._pool: list[str] | None = None

    def _family(self) -> str | None:
        family, _from, _name = self.composer.requested_family()
        return family

    def _wrap(self, prompt: str, name: str, ids: Sequence[str]) -> dict[str, Any]:
        cards = self.composer.source.cards
        topics = []
        for i, aid in enumerate(ids):
            c = cards.candidate(i, aid)
            adapter = {
                "adapter_id": aid,
                "title": c.title,
                "category": c.category,
                "recommended_weight": c.recommended_weight,
                "reason": name,
            }
            topics.append({"topic": f"{name} {i + 1}", "adapters": [adapter]})
        return {
            "prompt": prompt,
            "release": {"build_id": self.composer.build_id, "docs": str(self.composer.source.docs)},
            "composer": {"name": name, "model": None},
            "topics": topics,
            "dropped": [],
            "timings": {},
        }

    def retriever(self, prompt: str) -> dict[str, Any]:
        """Top ``retriever_k`` retrieved adapters (of the family), each its own topic."""
        k = self.settings.retriever_k
        hits = self.composer.source.search_many(
            [prompt], self.composer.settings, k=max(k, 10), family=self._family()
        )[0]
        ids = list(dict.fromkeys(aid for aid, _s, _c in hits))[:k]
        return self._wrap(prompt, "retriever", ids)

    def pool(self) -> list[str]:
        """Adapters the Random baseline draws from: SFW (unless included) and of the family."""
        if self._pool is None:
            cards = self.composer.source.cards
            family = self._family()
            nsfw_ok = self.composer.settings.include_nsfw
            self._pool = sorted(
                aid
                for aid, row in cards.rows.items()
                if (nsfw_ok or not row.get("nsfw")) and (family is None or cards.family(aid) == family)
            )
        return self._pool

    def random(self, prompt: str) -> dict[str, Any]:
        """``random_k`` adapters drawn uniformly, seeded by the prompt and the run's seed."""
        pool = self.pool()
        digest = hashlib.sha256(f"{self.seed}\n{prompt}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        ids = rng.sample(pool, min(self.settings.random_k, len(pool)))
        return self._wrap(prompt, "random", ids)

    def base(self, prompt: str) -> dict[str, Any]:
        """No adapters."""
        return self._wrap(prompt, "base", [])

    def compose_fn(self, method: str) -> Callable[[str], dict[str, Any]]:
        """prompt → composition for ``method``."""
        if method == "stylus":
            return self.composer.compose
        return {"retriever": self.retriever, "random": self.random, "base": self.base}[method]


def set_dir(out: Path, method: str, cfg: float) -> Path:
    """``OUT/images/<method>/cfg<cfg>``."""
    return out / "images" / method / f"cfg{cfg_label(cfg)}"


def generate(
    out: Path,
    prompts: Sequence[str],
    baselines: Baselines,
    generator: Any,
    gen_settings: Any,
    settings: RunSettings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Render every (method, cfg) set; returns counts per set."""
    from stylus_docs.generate import run_prompts

    counts: dict[str, Any] = {}
    for method in settings.methods:
        fn = baselines.compose_fn(method)
        cache: dict[str, dict[str, Any]] = {}

        def compose_once(prompt: str, fn: Callable[[str], dict[str, Any]] = fn,
                         cache: dict[str, dict[str, Any]] = cache) -> dict[str, Any]:  # fmt: skip
            # One composition per prompt for every cfg: the guidance scale is the only thing varied.
            if prompt not in cache:
                cache[prompt] = fn(prompt)
            return cache[prompt]

        for cfg in settings.cfgs:
            s = replace(gen_settings, cfg=float(cfg), baseline=False)
            t0 = time.perf_counter()
            got = run_prompts(prompts, compose_once, generator, s, set_dir(out, method, cfg))
            counts[f"{method}/cfg{cfg_label(cfg)}"] = got
            if progress:
                progress(f"generated {method} cfg {cfg_label(cfg)}: {got} in {time.perf_counter() - t0:.1f}s")
    return counts


def score_sets(
    out: Path,
    settings: RunSettings,
    clip: ClipScorer,
    inception: InceptionFeatures,
    real: Sequence[ImageItem],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """CLIP, FID and KID of every (method, cfg) set (one table row each)."""
    real_feats = inception.of_files([it.path for it in real], "real")
    table: list[dict[str, Any]] = []
    for method in settings.methods:
        for cfg in settings.cfgs:
            items = collect_images(set_dir(out, method, cfg), f"{method} cfg {cfg_label(cfg)}", kind="stylus")
            scores = clip.scores([it.path for it in items], [it.prompt or "" for it in items])
            rows = [
                {"path": str(it.path), "prompt": it.prompt, "score": s}
                for it, s in zip(items, scores, strict=True)
            ]
            best = best_per_prompt(rows)
            if settings.best_of:
                chosen = list(best.values())
                fake_paths = [r["path"] for r in chosen]
            else:
                chosen = rows
                fake_paths = [str(it.path) for it in items]
            clip_mean = sum(r["score"] for r in chosen) / len(chosen)
            fake = inception.of_files(fake_paths, f"{method} cfg {cfg_label(cfg)}")
            if fake.shape[0] < 2:
                raise FatalError(
                    f"{method} cfg {cfg_label(cfg)}: FID needs 2 or more images per set, got {fake.shape[0]} "
                    "(more prompts, or more --num-images without --best-of)"
                )
            stats = fid_kid(real_feats, fake, settings.kid_subsets, settings.kid_subset_size)
            row = {
                "method": method,
                "cfg": float(cfg),
                "clip": clip_mean,
                "fid": stats["fid"],
                "kid": stats["kid"],
                "kid_std": stats["kid_std"],
                "n_images": len(fake_paths),
                "n_prompts": len(best),
            }
            table.append(row)
            if progress:
                progress(
                    f"{method} cfg {cfg_label(cfg)}: CLIP {clip_mean:.2f} FID {stats['fid']:.2f} "
                    f"KID {stats['kid']:.4f} ({len(fake_paths)} images)"
                )
    return table


def long_rows(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, cfg, metric)."""
    return [
        {"method": r["method"], "cfg": r["cfg"], "metric": m, "value": r[m]} for r in table for m in METRICS
    ]


def pareto_plot(
    table: Sequence[dict[str, Any]], title: str = "CLIP vs FID (lower right is better)"
) -> tuple[bytes, bytes]:
    """The CLIP–FID Pareto plot (Fig. 6) as PNG and SVG bytes (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(r["method"] for r in table))
    for method in methods:
        pts = sorted((r for r in table if r["method"] == method), key=lambda r: r["cfg"])
        xs, ys = [r["clip"] for r in pts], [r["fid"] for r in pts]
        ax.plot(xs, ys, marker="o", label=method)
        for r in pts:
            ax.annotate(f"cfg {cfg_label(r['cfg'])}", (r["clip"], r["fid"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)  # fmt: skip
    ax.set_xlabel("CLIP score")
    ax.set_ylabel("FID")
    ax.set_title(title)
    ax.margins(x=0.12, y=0.1)  # room for the cfg labels at the ends
    ax.grid(True, alpha=0.3)
    ax.legend()
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=120, metadata={"Software": None})
    with matplotlib.rc_context({"svg.hashsalt": "stylus-docs"}):
        fig.savefig(svg, format="svg", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


@dataclass(slots=True)
class RunResult:
    """What ``eval run`` wrote."""

    out: Path
    table: list[dict[str, Any]]
    files: dict[str, str]
    generated: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths, the table)."""
        return {"out": str(self.out), "files": self.files, "table": self.table, "generated": self.generated}


def write_outputs(
    out: Path,
    table: list[dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, str]:
    """Write ``eval.json``, ``eval.csv``, ``pareto.png``, ``pareto.svg`` in ``out`` (returns paths)."""
    rows = long_rows(table)
    png, svg = pareto_plot(table)
    doc = {
        "format": RUN_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
        "table": table,
        "rows": rows,
        "pareto": {"png": "pareto.png", "svg": "pareto.svg"},
    }
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["method", "cfg", "metric", "value"], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "cfg": cfg_label(r["cfg"])})
    atomic_write_bytes(out / "pareto.png", png)
    atomic_write_bytes(out / "pareto.svg", svg)
    atomic_write_text(out / "eval.csv", buf.getvalue())
    # Last: it names the others, so a reader that finds it finds them.
    atomic_write_text(out / "eval.json", json.dumps(doc, indent=1, ensure_ascii=False))
    return {name: str(out / name) for name in ("eval.json", "eval.csv", "pareto.png", "pareto.svg")}


def settings_meta(settings: RunSettings, gen_settings: Any) -> dict[str, Any]:
    """The settings recorded in ``eval.json``."""
    gen = asdict(gen_settings)
    gen.pop("image_input", None)
    return {"run": asdict(settings), "generate": gen}
