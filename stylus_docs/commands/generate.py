"""``stylus-docs generate``: images with Stylus-composed adapters (diffusers, in-process).

::

    stylus-docs generate TEXT --docs DOCS --pipeline PATH_OR_REPO --out DIR [--composition FILE.json]
                         [--num-images N] [--mask all|one_hot_loras|one_hot_concepts] [--seed S] [--steps N]
                         [--cfg X] [--baseline] [--device cpu|cuda] [--adapters-dir DIR]
    stylus-docs generate --prompts FILE.csv [--column caption] ... (same options)
    stylus-docs generate TEXT ... --init-image IMG [--mask MASK.png] [--strength S]   # img2img / inpaint

``--mask`` takes either an adapter-mask strategy (``all``, ``one_hot_loras``, ``one_hot_concepts``) or,
any other value, the inpainting mask image (white = repaint); ``--mask-strategy`` names the strategy
when ``--mask`` is an image.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from stylus_docs.atomic import writable_dir
from stylus_docs.commands.compose import (
    add_compose_options,
    cache_dir_from_args,
    check_output_flags,
    settings_from_args,
)
from stylus_docs.errors import FatalError
from stylus_docs.masks import STRATEGIES

log = logging.getLogger(__name__)


def default_adapters_dir() -> Path:
    """``$STYLUS_DOCS_CACHE/adapters`` or ``~/.cache/stylus-docs/adapters``."""
    root = os.environ.get("STYLUS_DOCS_CACHE")
    if root:
        return Path(root) / "adapters"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stylus-docs" / "adapters"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``generate`` parser."""
    from stylus_docs.generate.runner import DEFAULT_NEGATIVE

    p = subparsers.add_parser("generate", help="generate images with composed adapters (diffusers)")
    p.add_argument("text", nargs="?", help="the prompt (or use --prompts)")
    p.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    p.add_argument(
        "--pipeline", required=True, help="diffusers pipeline folder or a repo id in the local HF cache"
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--composition", type=Path, help="composition JSON from `compose` (or JSONL, one per prompt)"
    )
    p.add_argument("--prompts", type=Path, help="CSV file of prompts (batch mode, resumable)")
    p.add_argument("--column", default="caption", help="prompt column of --prompts (default caption)")
    p.add_argument("--limit", type=int, help="only the first N prompts of --prompts")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument(
        "--mask",
        metavar="STRATEGY|MASK",
        help="adapter masks (all, one_hot_loras, one_hot_concepts; default all), or an inpainting mask "
        "image (white = repaint; needs --init-image)",
    )
    p.add_argument(
        "--mask-strategy", choices=STRATEGIES, help="adapter masks when --mask is an inpainting mask image"
    )
    p.add_argument("--init-image", type=Path, help="start from this image (image-to-image / inpainting)")
    p.add_argument(
        "--strength",
        type=float,
        help="how much of --init-image is noised away, in (0, 1] (default 0.8; 1.0 when inpainting)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed; image i gets seed+i (default 0)")
    p.add_argument("--steps", type=int, default=35, help="denoising steps (default 35)")
    p.add_argument("--cfg", type=float, default=6.0, help="guidance scale (default 6)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    p.add_argument("--debias", help='suffix appended to the prompt, e.g. "realistic, best quality"')
    p.add_argument("--inject-triggers", action="store_true", help="append the adapters' trigger words")
    p.add_argument("--baseline", action="store_true", help="also render the same seeds with no adapters")
    p.add_argument("--base-weight", type=float, default=0.8, help="the 0.8 of the weight formula")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    p.add_argument("--no-fuse", action="store_true", help="do not fuse adapters into the weights per batch")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), help="default fp16 on CUDA, fp32 on CPU"
    )
    p.add_argument("--adapters-dir", type=Path, help=f"adapter cache (default {default_adapters_dir()})")
    p.add_argument("--no-download", action="store_true", help="use cached adapters only")
    add_compose_options(p)
    p.set_defaults(func=run, accepts_extra=False)
    return p


def _masks_and_image(args: argparse.Namespace) -> tuple[str, Any]:
    """The adapter-mask strategy and the :class:`~stylus_docs.generate.ImageInput` (or None) of the flags.

    Raises:
        FatalError: a mask image without ``--init-image``, ``--strength`` without it, a missing file, a
            strength outside (0, 1], two strategies (one line, exit 2).
    """
    from stylus_docs.generate import ImageInput

    strategy = args.mask_strategy
    mask_image = None
    if args.mask in STRATEGIES:
        if strategy and strategy != args.mask:
            raise FatalError(f"--mask {args.mask} and --mask-strategy {strategy} disagree")
        strategy = args.mask
    elif args.mask is not None:
        mask_image = str(args.mask)
        if not Path(mask_image).exists():
            raise FatalError(
                f"--mask {args.mask}: neither a strategy ({', '.join(STRATEGIES)}) nor an image file"
            )
        if args.init_image is None:
            raise FatalError(
                f"--mask {args.mask}: an inpainting mask needs --init-image "
                f"(or name a strategy: {', '.join(STRATEGIES)})"
            )
    if args.init_image is None:
        if args.strength is not None:
            raise FatalError("--strength needs --init-image")
        return strategy or "all", None
    image = ImageInput(str(args.init_image), mask_image, args.strength)
    return strategy or "all", image


def _load_compositions(path: Path) -> dict[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FatalError(f"composition file not found: {path}") from exc
    try:
        items = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise FatalError(f"{path} is neither a composition JSON nor JSONL: {exc.msg}") from exc
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or "topics" not in item or "prompt" not in item:
            raise FatalError(f"{path} does not hold compositions (need 'prompt' and 'topics')")
        out[" ".join(str(item["prompt"]).split())] = item
    return out


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs generate``."""
    from stylus_docs.compose import Composer
    from stylus_docs.generate import (
        BASE_MODEL_OF_KIND,
        AdapterStore,
        GenerateSettings,
        StylusGenerator,
        detect_kind,
        load_pipeline,
        read_prompts,
        run_prompts,
    )

    if bool(args.text) == bool(args.prompts):
        raise FatalError("give either a prompt TEXT or --prompts FILE.csv")
    strategy, image_input = _masks_and_image(args)
    settings = GenerateSettings(
        num_images=args.num_images,
        mask=strategy,
        seed=args.seed,
        steps=args.steps,
        cfg=args.cfg,
        width=args.width,
        height=args.height,
        negative_prompt=args.negative_prompt,
        debias=args.debias,
        inject_triggers=args.inject_triggers,
        baseline=args.baseline,
        fuse=not args.no_fuse,
        base_weight=args.base_weight,
        batch_size=args.batch_size,
        image_input=image_input,
    )
    compositions = _load_compositions(args.composition) if args.composition else {}
    if args.prompts:
        prompts = read_prompts(args.prompts, args.column, args.limit)
    else:
        prompts = [" ".join(args.text.split())]
        if compositions and prompts[0] not in compositions and len(compositions) == 1:
            # One composition given for one prompt: use it even if the wording differs slightly.
            compositions = {prompts[0]: next(iter(compositions.values()))}
    kind, _ = detect_kind(args.pipeline)  # fail fast on a bad pipeline before composing anything
    writable_dir(args.out, "--out")
    writable_dir(args.adapters_dir or default_adapters_dir(), "--adapters-dir")
    check_output_flags(args)
    composer = Composer(
        args.docs,
        settings_from_args(args, base_model=BASE_MODEL_OF_KIND[kind]),
        cache_dir=cache_dir_from_args(args),
    )
    for comp in compositions.values():
        built = (comp.get("release") or {}).get("build_id")
        if built and built != composer.build_id:
            log.warning(
                "composition was made on build %s, generating with build %s", built, composer.build_id
            )
    loaded = load_pipeline(args.pipeline, device=args.device, dtype=args.dtype)
    # With --local the composer only picks linked adapters, and their files are used where they lie.
    store = AdapterStore(
        args.adapters_dir or default_adapters_dir(), download=not args.no_download, local=composer.local
    )
    generator = StylusGenerator(loaded, composer.source.cards, store, composer.build_id)

    def progress(prompt: str, status: str) -> None:
        print(f"{status}\t{prompt}", file=sys.stderr)

    counts = run_prompts(prompts, composer.compose, generator, settings, args.out, compositions, progress)
    if composer.local is not None:
        counts["local_adapters_used"] = store.local_hits
    print(json.dumps({"out": str(args.out), **counts}))
    return 0
