"""``stylus-docs compose``: pick adapters for a prompt (the Stylus composer).

::

    stylus-docs compose TEXT --docs DOCS [--composer offline|llm] [--model NAME] [--top-k 150]
                        [--per-topic 3] [--include-characters] [--base-model B] [--local DIR]
                        [--format json|table]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError


def default_cache_dir() -> Path:
    """``$STYLUS_DOCS_CACHE/compose`` or ``$XDG_CACHE_HOME/stylus-docs/compose`` (``~/.cache`` default)."""
    root = os.environ.get("STYLUS_DOCS_CACHE")
    if root:
        return Path(root) / "compose"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stylus-docs" / "compose"


def add_compose_options(parser: argparse.ArgumentParser) -> None:
    """Composer flags shared by ``compose`` and ``generate``."""
    g = parser.add_argument_group("composer")
    g.add_argument("--composer", choices=("offline", "llm"), default="offline", help="default: offline")
    g.add_argument(
        "--model", help="chat model for --composer llm (endpoint: OPENAI_BASE_URL / OPENAI_API_KEY)"
    )
    g.add_argument("--top-k", type=int, default=150, help="candidates retrieved (default 150)")
    g.add_argument("--per-topic", type=int, default=3, help="max adapters per topic (default 3)")
    g.add_argument("--max-style", type=int, default=2, help="max style adapters overall (default 2)")
    g.add_argument("--include-characters", action="store_true", help="allow character/celebrity adapters")
    g.add_argument("--include-nsfw", action="store_true", help="keep NSFW adapters among the candidates")
    g.add_argument(
        "--base-model",
        help="only adapters of this base model's family (e.g. 'SD 1.5' → SD 1.x, 'Pony'); default: the "
        "generation pipeline's, else the family with the best candidates",
    )
    g.add_argument(
        "--local",
        metavar="DIR",
        help="pick only among the adapters linked in DIR (run `stylus-docs link --docs DOCS DIR` first)",
    )
    g.add_argument("--refine", action="store_true", help="send the paper's second 'refine' turn to the LLM")
    g.add_argument(
        "--fallback", choices=("offline",), help="fall back to the offline composer if the LLM fails"
    )
    g.add_argument("--answer-retries", type=int, default=2, help="retries after an invalid LLM answer")
    g.add_argument("--http-retries", type=int, default=4, help="retries on 429/5xx/timeouts")
    g.add_argument("--timeout", type=float, default=60.0, help="LLM request timeout in seconds")
    g.add_argument("--cache-dir", type=Path, help=f"composition cache (default {default_cache_dir()})")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the composition cache")


def settings_from_args(args: argparse.Namespace, base_model: str | None = None) -> Any:
    """A :class:`~stylus_docs.compose.ComposeSettings` from the shared flags.

    Args:
        args: the parsed flags.
        base_model: the generation pipeline's base model (``generate`` passes it): the family used when
            ``--base-model`` is not given.
    """
    from stylus_docs.compose import ComposeSettings

    return ComposeSettings(
        composer=args.composer,
        model=args.model,
        top_k=args.top_k,
        per_topic=args.per_topic,
        max_style=args.max_style,
        include_characters=args.include_characters,
        include_nsfw=args.include_nsfw,
        base_model=args.base_model or None,
        pipeline_base_model=base_model,
        local=str(args.local) if args.local else None,
        refine=args.refine,
        fallback=args.fallback,
        answer_retries=args.answer_retries,
        http_retries=args.http_retries,
        timeout_s=args.timeout,
    )


def cache_dir_from_args(args: argparse.Namespace) -> Path | None:
    """The cache directory the flags ask for (None with --no-cache)."""
    if args.no_cache:
        return None
    return args.cache_dir or default_cache_dir()


def check_output_flags(args: argparse.Namespace) -> None:
    """Fail in one line, before any work, when ``--out`` or ``--cache-dir`` cannot be written."""
    from stylus_docs.atomic import writable_dir

    out = getattr(args, "out", None)
    if out is not None and getattr(args, "format", None) is not None:  # compose: --out is a file
        if Path(out).is_dir():
            raise FatalError(f"--out {out}: is a directory; give a file name")
        writable_dir(Path(out).parent if str(Path(out).parent) else Path("."), "--out")
    cache = cache_dir_from_args(args)
    if cache is not None:
        writable_dir(cache, "--cache-dir")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compose`` parser."""
    parser = subparsers.add_parser("compose", help="pick adapters for a prompt (the Stylus composer)")
    parser.add_argument("text", help="the prompt")
    parser.add_argument("--docs", required=True, help="release root (DOCS) or a build directory")
    parser.add_argument("--format", choices=("json", "table"), default="json")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    add_compose_options(parser)
    parser.set_defaults(func=run, accepts_extra=False)
    return parser


def format_table(result: dict[str, Any]) -> str:
    """Human-readable rendering of a composition."""
    lines = [f"prompt: {result['prompt']}", f"release: {result['release']['build_id']}"]
    comp = result["composer"]
    name = comp["name"] + (f" ({comp['model']})" if comp.get("model") else "")
    if comp.get("fallback_from"):
        name += f" [fallback from {comp['fallback_from']}: {comp.get('fallback_reason')}]"
    lines.append(f"composer: {name}")
    lines.append(
        f"base: {result.get('base_model') or '-'} (family {result.get('base_family') or '-'}, "
        f"from {result.get('base_family_from') or '-'})"
    )
    if result.get("local"):
        lines.append(f"local: {result['local']['dir']} ({result['local']['adapters']} linked adapters)")
    for topic in result["topics"]:
        lines.append(f"  {topic['topic']}:")
        if not topic["adapters"]:
            lines.append("    (no adapter)")
        for a in topic["adapters"]:
            w = a["recommended_weight"]
            lines.append(f"    {a['adapter_id']:<34} {a['title'][:40]:<40} {a['category'][:12]:<12} w={w}")
    for d in result["dropped"]:
        what = d.get("adapter_id") or d.get("index")
        lines.append(f"  dropped {what!s} [{d['topic']}]: {d['reason']} – {d['detail']}")
    t = result["timings"]
    lines.append("timings: " + ", ".join(f"{k}={v}" for k, v in t.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Handler of ``stylus-docs compose``."""
    from stylus_docs.atomic import atomic_write_text
    from stylus_docs.compose import Composer

    if not args.text.strip():
        raise FatalError("the prompt is empty")
    check_output_flags(args)
    composer = Composer(args.docs, settings_from_args(args), cache_dir=cache_dir_from_args(args))
    result = composer.compose(args.text)
    text = json.dumps(result, ensure_ascii=False, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    sys.stdout.write((text if args.format == "json" else format_table(result)) + "\n")
    return 0
