"""``stylus-docs eval``: CLIP score, FID/KID, dFID, retrieval recall, VLM judge, and the paper's baselines.

::

    stylus-docs eval clip --images DIR --clip-model ViT-L-14 --clip-weights W.safetensors [--best-of]
    stylus-docs eval fid --real DIR --fake DIR --inception-weights W.safetensors [--features-out F.npz]
    stylus-docs eval dfid (--images OUT | --a DIR --b DIR) --inception-weights W.safetensors
    stylus-docs eval retrieval --docs DOCS --queries FILE.jsonl [-k 1 -k 10 -k 150]
    stylus-docs eval judge (--images OUT | --a DIR --b DIR) --model NAME [--base-url URL]
    stylus-docs eval run --prompts CSV --docs DOCS --pipeline P --real DIR --out OUT \\
        --methods stylus,retriever,random,base --cfg 3,6,9 --clip-model … --clip-weights … \\
        --inception-weights …

Every model comes from a local file; a missing one is one line naming its flag. ``--images OUT`` reads a
``stylus-docs generate --baseline`` output: set A is its ``stylus`` images, set B its ``baseline`` ones.
``--format json`` prints the library's JSON; ``text`` (default) a short summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text", help="output (default text)")
    p.add_argument("--out-json", type=Path, help="also write the JSON result to this file")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")


def _add_clip(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip-model", default="ViT-L-14", help="open_clip architecture (default ViT-L-14)")
    g.add_argument("--clip-weights", type=Path, help="its state dict (safetensors or .pt); required")
    g.add_argument("--clip-config", type=Path, help="open_clip model-config JSON of a custom architecture")
    g.add_argument(
        "--best-of",
        action="store_true",
        help="the paper's aggregation: mean over prompts of each prompt's best image (off by default)",
    )


def _add_inception(p: argparse.ArgumentParser) -> None:
    from stylus_docs.eval.fid import default_features_cache

    g = p.add_argument_group("Inception features")
    g.add_argument(
        "--inception-weights", type=Path, help="torchvision inception_v3 state dict (safetensors); required"
    )
    g.add_argument("--features-cache", type=Path, help=f"feature cache (default {default_features_cache()})")
    g.add_argument("--no-features-cache", action="store_true", help="do not read or write the cache")
    g.add_argument(
        "--inception-size",
        type=int,
        default=299,
        help="input size (default 299, Inception's; smaller sizes only make smoke tests cheaper)",
    )


def _add_pair_sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="a `generate --baseline` output: A = stylus, B = baseline")
    p.add_argument("--a", type=Path, help="set A (e.g. Stylus images)")
    p.add_argument("--b", type=Path, help="set B (e.g. base-model images)")
    p.add_argument("--prompts", type=Path, help="CSV with columns image, prompt (instead of sidecars)")
    p.add_argument("--prompt-column", default="prompt", help="prompt column of --prompts (default prompt)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` parser and its subcommands."""
    parser = subparsers.add_parser(
        "eval", help="evaluate: CLIP score, FID/KID, dFID, retrieval recall, VLM judge, baselines"
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="WHAT")

    p = sub.add_parser("clip", help="CLIP score of images against their prompts")
    p.add_argument(
        "--images", type=Path, required=True, help="image folder (recursive; sidecars give prompts)"
    )
    p.add_argument("--prompts", type=Path, help="CSV with columns image, prompt (instead of sidecars)")
    p.add_argument("--prompt-column", default="prompt", help="prompt column of --prompts (default prompt)")
    _add_clip(p)
    _add_device(p)
    _add_format(p)
    p.set_defaults(func=run_clip, accepts_extra=False)

    p = sub.add_parser("fid", help="FID and KID of a generated set against real images")
    p.add_argument("--real", type=Path, required=True, help="folder of real images")
    p.add_argument("--fake", type=Path, required=True, help="folder of generated images")
    p.add_argument("--features-out", type=Path, help="write the features used (.npz: real, fake)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="KID subset draw")
    _add_inception(p)
    _add_device(p)
    _add_format(p)
    p.set_defaults(func=run_fid, accepts_extra=False)

    p = sub.add_parser("dfid", help="per-prompt diversity, set A against set B, and the win rate")
    _add_pair_sets(p)
    p.add_argument("--min-images", type=int, default=2, help="images a prompt needs in both sets (default 2)")
    _add_inception(p)
    _add_device(p)
    _add_format(p)
    p.set_defaults(func=run_dfid, accepts_extra=False)

    p = sub.add_parser("retrieval", help="recall@k and MRR of the search on labelled queries")
    p.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    p.add_argument("--queries", type=Path, required=True, help="JSONL: query + expected / civitaiResources")
    p.add_argument("-k", type=int, action="append", help="cut-off (repeat; default 1, 10, 150)")
    p.add_argument("--exclude-nsfw", action="store_true", help="search SFW adapters only")
    p.add_argument("--fusion", choices=("rrf", "dense", "bm25"), default="rrf", help="ranking (default rrf)")
    p.add_argument("--per-query", action="store_true", help="include each query's target ranks")
    _add_format(p)
    p.set_defaults(func=run_retrieval, accepts_extra=False)

    p = sub.add_parser("judge", help="VLM-as-judge, both orders: quality and prompt alignment")
    _add_pair_sets(p)
    p.add_argument("--model", default="gpt-4o", help="vision chat model (default gpt-4o)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (default OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--criteria", default="quality,alignment", help="default quality,alignment")
    p.add_argument("--temperature", type=float, default=0.5, help="default 0.5 (the paper's)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request deadline in seconds")
    p.add_argument("--retries", type=int, default=4, help="retries on 429/5xx/connection errors")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--max-side", type=int, default=768, help="downscale images to this side (default 768)")
    p.add_argument("--limit", type=int, help="judge only the first N pairs")
    p.add_argument("--cache-dir", type=Path, help="answer cache (default <cache>/judge)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the answer cache")
    _add_format(p)
    p.set_defaults(func=run_judge, accepts_extra=False)

    _register_run(sub)
    parser.set_defaults(func=_needs_subcommand, accepts_extra=False, eval_parser=parser)
    return parser


def _register_run(sub: Any) -> None:
    from stylus_docs.commands.compose import add_compose_options
    from stylus_docs.commands.generate import default_adapters_dir
    from stylus_docs.generate.runner import DEFAULT_NEGATIVE
    from stylus_docs.masks import STRATEGIES

    p = sub.add_parser("run", help="generate with Stylus and the baselines; CLIP/FID/KID table + Pareto plot")
    p.add_argument("--prompts", type=Path, required=True, help="CSV of prompts")
    p.add_argument("--column", default="caption", help="prompt column (default caption)")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    p.add_argument(
        "--pipeline", required=True, help="diffusers pipeline folder (or a locally cached repo id)"
    )
    p.add_argument("--real", type=Path, required=True, help="folder of real images (FID reference)")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (images, eval.json, eval.csv, plots)"
    )
    p.add_argument("--methods", default=",".join(("stylus", "retriever", "random", "base")))
    p.add_argument("--cfg", default="3,6,9", help="guidance scales, comma-separated (default 3,6,9)")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (seeds seed..seed+N-1)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--steps", type=int, default=35, help="denoising steps (default 35)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--mask", choices=STRATEGIES, default="all", help="Stylus adapter masks (default all)")
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    p.add_argument("--debias", help='suffix appended to every prompt, e.g. "realistic, best quality"')
    p.add_argument("--retriever-k", type=int, default=3, help="Retriever-only adapters (default 3)")
    p.add_argument("--random-k", type=int, default=3, help="Random-baseline adapters (default 3)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--gen-batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="fp16 on CUDA, fp32 on CPU")
    p.add_argument("--adapters-dir", type=Path, help=f"adapter cache (default {default_adapters_dir()})")
    p.add_argument("--no-download", action="store_true", help="use cached adapters only")
    _add_clip(p)
    _add_inception(p)
    _add_device(p)
    _add_format(p)
    add_compose_options(p)
    p.set_defaults(func=run_run, accepts_extra=False)


def _needs_subcommand(args: argparse.Namespace, extra: list[str]) -> int:
    args.eval_parser.print_help(sys.stderr)
    raise FatalError("eval: name what to evaluate: clip, fid, dfid, retrieval, judge or run")


# -- helpers -------------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    blob = json.dumps(result, ensure_ascii=False, indent=None if args.format == "json" else 1)
    if args.out_json is not None:
        from stylus_docs.atomic import atomic_write_text

        atomic_write_text(args.out_json, blob + "\n")
    print(blob if args.format == "json" else text)
    return 0


def _features_cache(args: argparse.Namespace) -> Path | None:
    from stylus_docs.atomic import writable_dir
    from stylus_docs.eval.fid import default_features_cache

    if args.no_features_cache:
        return None
    return writable_dir(args.features_cache or default_features_cache(), "--features-cache")


def _inception(args: argparse.Namespace) -> Any:
    from stylus_docs.eval.fid import InceptionFeatures

    return InceptionFeatures(
        args.inception_weights,
        cache_dir=_features_cache(args),
        device=args.device,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
        image_size=args.inception_size,
    )


def _clip(args: argparse.Namespace) -> Any:
    from stylus_docs.eval.clip import ClipScorer, register_config

    name = args.clip_model
    if args.clip_config is not None:
        name = register_config(args.clip_config)
    return ClipScorer(
        name, args.clip_weights, device=args.device, batch_size=args.batch_size, progress=sys.stderr.isatty()
    )


def _prompt_map(args: argparse.Namespace) -> dict[str, str] | None:
    from stylus_docs.eval.common import read_prompt_csv

    return read_prompt_csv(args.prompts, args.prompt_column) if args.prompts else None


def _pair_sets(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from stylus_docs.eval.common import collect_images

    prompts = _prompt_map(args)
    if args.images is not None:
        if args.a is not None or args.b is not None:
            raise FatalError("give either --images OUT or --a DIR --b DIR")
        a = collect_images(args.images, "--images", prompts, kind="stylus")
        b = collect_images(args.images, "--images", prompts, kind="baseline")
        return a, b
    if args.a is None or args.b is None:
        raise FatalError("give --images OUT (a `generate --baseline` output) or both --a DIR and --b DIR")
    return collect_images(args.a, "--a", prompts), collect_images(args.b, "--b", prompts)


# -- handlers ------------------------------------------------------------------------------------------


def run_clip(args: argparse.Namespace, extra: list[str]) -> int:
    """``eval clip``."""
    from stylus_docs.eval.clip import clip_score
    from stylus_docs.eval.common import collect_images, require_prompts

    items = collect_images(args.images, "--images", _prompt_map(args))
    require_prompts(items, "--images")
    result = clip_score(_clip(args), items, best_of=args.best_of).to_dict()
    agg = "best-of" if args.best_of else "mean"
    return _emit(args, result, f"CLIP score ({agg}) {result['mean']:.3f} over {result['n_images']} images, "
                 f"{result['n_prompts']} prompts")  # fmt: skip


def run_fid(args: argparse.Namespace, extra: list[str]) -> int:
    """``eval fid``."""
    from stylus_docs.eval.common import collect_images
    from stylus_docs.eval.fid import fid_kid, write_features

    real_items = collect_images(args.real, "--real")
    fake_items = collect_images(args.fake, "--fake")
    if args.features_out is not None and args.features_out.is_dir():
        raise FatalError(f"--features-out {args.features_out}: is a directory; give a .npz file name")
    extractor = _inception(args)
    real = extractor.of_files([it.path for it in real_items], "real")
    fake = extractor.of_files([it.path for it in fake_items], "fake")
    result = fid_kid(real, fake, args.kid_subsets, args.kid_subset_size, args.seed)
    result["features_cached"] = extractor.hits
    result["features_computed"] = extractor.computed
    if args.features_out is not None:
        write_features(args.features_out, real, fake)
        result["features_out"] = str(args.features_out)
    return _emit(args, result, f"FID {result['fid']:.4f}  KID {result['kid']:.6f} ± {result['kid_std']:.6f}  "
                 f"({result['n_real']} real, {result['n_fake']} fake)")  # fmt: skip


def run_dfid(args: argparse.Namespace, extra: list[str]) -> int:
    """``eval dfid``."""
    from stylus_docs.eval.dfid import compare

    a, b = _pair_sets(args)
    result = compare(_inception(args), a, b, min_images=max(2, args.min_images))
    return _emit(args, result, f"dFID: A wins {result['win']}/{result['n_prompts']} prompts "
                 f"({100 * result['win_rate']:.1f}%), ties {result['tie']}; "
                 f"mean trace A {result['mean_a']:.3f} B {result['mean_b']:.3f}")  # fmt: skip


def run_retrieval(args: argparse.Namespace, extra: list[str]) -> int:
    """``eval retrieval``."""
    from stylus_docs.eval.retrieval import DEFAULT_KS, evaluate, read_queries
    from stylus_docs.query import SearchConfig, open_release

    queries = read_queries(args.queries)
    release = open_release(args.docs, config=SearchConfig(fusion=args.fusion))
    try:
        result = evaluate(
            release,
            queries,
            args.k or DEFAULT_KS,
            include_nsfw=not args.exclude_nsfw,
            per_query=args.per_query,
        )
    finally:
        release.close()
    lines = []
    for name, s in [("all", result["overall"]), *result["by_kind"].items()]:
        if not s["n"]:
            lines.append(f"{name}: no query with a target in the release")
            continue
        rec = "  ".join(f"R@{k} {s[f'recall@{k}']:.3f}" for k in result["ks"])
        lines.append(f"{name} ({s['n']} queries): {rec}  MRR {s['mrr']:.3f}")
    lines.append(f"skipped (no target in the release): {result['skipped_no_target']}")
    return _emit(args, result, "\n".join(lines))


def run_judge(args: argparse.Namespace, extra: list[str]) -> int:
    """``eval judge``."""
    from stylus_docs.eval.common import default_cache_root
    from stylus_docs.eval.judge import Judge, JudgeConfig, pair_images

    a, b = _pair_sets(args)
    pairs = pair_images(a, b)
    if args.limit is not None:
        pairs = pairs[: max(0, args.limit)]
    cache = None if args.no_cache else str(args.cache_dir or default_cache_root() / "judge")
    config = JudgeConfig(
        model=args.model,
        base_url=args.base_url,
        temperature=args.temperature,
        timeout_s=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
        max_side=args.max_side,
        cache_dir=cache,
        progress=sys.stderr.isatty(),
    )
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    result = Judge(config).run(pairs, criteria)
    lines = [f"{result['n_pairs']} pairs, model {result['model']} ({result['requests']} requests, "
             f"{result['cached']} cached answers)"]  # fmt: skip
    for c, s in result["criteria"].items():
        lines.append(f"{c}: A wins {s['win']}, ties {s['tie']}, loses {s['lose']}, failed {s['failed']}")
    return _emit(args, result, "\n".join(lines))


def run_run(args: argparse.Namespace, extra: list[str]) -> int:
    """``eval run``."""
    from stylus_docs.atomic import writable_dir
    from stylus_docs.commands.compose import cache_dir_from_args, settings_from_args
    from stylus_docs.commands.generate import default_adapters_dir
    from stylus_docs.compose import Composer
    from stylus_docs.eval import run as runmod
    from stylus_docs.eval.common import collect_images
    from stylus_docs.generate import (
        BASE_MODEL_OF_KIND,
        AdapterStore,
        GenerateSettings,
        StylusGenerator,
        detect_kind,
        load_pipeline,
        read_prompts,
    )

    settings = runmod.RunSettings(
        methods=runmod.parse_methods(args.methods),
        cfgs=runmod.parse_cfgs(args.cfg),
        best_of=args.best_of,
        retriever_k=args.retriever_k,
        random_k=args.random_k,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
    )
    gen_settings = GenerateSettings(
        num_images=args.num_images,
        mask=args.mask,
        seed=args.seed,
        steps=args.steps,
        cfg=settings.cfgs[0],
        width=args.width,
        height=args.height,
        negative_prompt=args.negative_prompt,
        debias=args.debias,
        batch_size=args.gen_batch_size,
    )
    prompts = read_prompts(args.prompts, args.column, args.limit)
    if not prompts:
        raise FatalError(f"--prompts {args.prompts}: no prompts in column {args.column!r}")
    real = collect_images(args.real, "--real")
    out = writable_dir(args.out, "--out")
    adapters_dir = writable_dir(args.adapters_dir or default_adapters_dir(), "--adapters-dir")
    kind, _ = detect_kind(args.pipeline)
    # The scorers first: a missing weights file fails before anything is rendered.
    clip = _clip(args)
    inception = _inception(args)
    composer = Composer(
        args.docs,
        settings_from_args(args, base_model=BASE_MODEL_OF_KIND[kind]),
        cache_dir=cache_dir_from_args(args),
    )
    loaded = load_pipeline(args.pipeline, device=args.device, dtype=args.dtype)
    store = AdapterStore(adapters_dir, download=not args.no_download, local=composer.local)
    generator = StylusGenerator(loaded, composer.source.cards, store, composer.build_id)
    baselines = runmod.Baselines(composer, settings, seed=args.seed)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    generated = runmod.generate(out, prompts, baselines, generator, gen_settings, settings, say)
    table = runmod.score_sets(out, settings, clip, inception, real, say)
    meta = {
        "release": composer.build_id,
        "pipeline": str(args.pipeline),
        "prompts": {"file": str(args.prompts), "column": args.column, "n": len(prompts)},
        "real": {"dir": str(args.real), "n": len(real)},
        "clip_model": clip.model_name,
        "inception_weights_sha256": inception.weights_sha256,
        "inception_size": inception.image_size,
        "settings": runmod.settings_meta(settings, gen_settings),
    }
    files = runmod.write_outputs(out, table, meta)
    result = runmod.RunResult(out, table, files, generated).to_dict()
    lines = [f"{'method':<10} {'cfg':>5} {'CLIP':>8} {'FID':>10} {'KID':>10}  n"]
    for r in table:
        lines.append(
            f"{r['method']:<10} {runmod.cfg_label(r['cfg']):>5} {r['clip']:8.3f} {r['fid']:10.3f} "
            f"{r['kid']:10.5f}  {r['n_images']}"
        )
    lines.append(
        f"wrote {files['eval.json']}, {files['eval.csv']}, {files['pareto.png']}, {files['pareto.svg']}"
    )
    return _emit(args, result, "\n".join(lines))
