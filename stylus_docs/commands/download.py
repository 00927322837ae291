"""``stylus-docs download``: fetch adapter weights of a release into the hash-verified cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from stylus_docs.errors import FatalError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``download`` subcommand."""
    parser = subparsers.add_parser(
        "download",
        help="download adapter weights into the hash-verified cache",
        description="Download the .safetensors weights of a release's adapters into a content-addressed "
        "cache, verifying each file's SHA-256 and header. Tokens come from CIVITAI_API_TOKEN / HF_TOKEN "
        "and are sent only to their own hosts. Exit status 1 when some adapter could not be had.",
    )
    parser.add_argument("--docs", required=True, help="release root (or a build directory)")
    parser.add_argument(
        "--adapter-id",
        action="append",
        default=[],
        metavar="ID",
        help="only this adapter (repeatable); default: every adapter of the release",
    )
    parser.add_argument("--cache", default=None, help="cache directory (default: DOCS/cache)")
    parser.add_argument("--limit", type=int, default=None, help="at most N adapters")
    parser.add_argument("--max-mb", type=float, default=2048.0, help="largest file accepted, in MB")
    parser.set_defaults(func=handle, accepts_extra=False)
    return parser


def handle(args: argparse.Namespace, extra: list[str]) -> int:
    """Fetch, print one line per adapter and a summary; 0 when all succeeded, 1 otherwise."""
    from stylus_docs.atomic import writable_dir
    from stylus_docs.download import AdapterCache, DownloadConfig, fetch_all, release_cards

    if args.limit is not None and args.limit < 0:
        raise FatalError("--limit must be >= 0")
    if args.max_mb <= 0:
        raise FatalError("--max-mb must be positive")
    from stylus_docs import storage

    if storage.is_url(args.docs):  # an s3:// release: its live build mirrored locally (and verified)
        docs = storage.mirror_release(args.docs)
    else:
        docs = Path(args.docs)
        if not docs.exists():
            raise FatalError(f"no release at {docs}")
    writable_dir(args.cache or docs / "cache", "--cache")
    cards = release_cards(docs, args.adapter_id or None, args.limit)
    cache = AdapterCache(
        args.cache or docs / "cache", DownloadConfig(max_bytes=int(args.max_mb * 1024 * 1024))
    )
    report = fetch_all(cache, cards)
    for adapter_id, path in report.fetched:
        print(f"ok\t{adapter_id}\t{path}")
    for adapter_id, reason, detail in report.failed:
        print(f"failed\t{adapter_id}\t{reason}\t{detail}")
    reasons = ", ".join(f"{k}={v}" for k, v in report.reasons().items())
    print(
        f"{len(report.fetched)} of {len(cards)} adapters in the cache {cache.root}"
        + (f"; failed: {reasons}" if reasons else "")
    )
    return 0 if not report.failed else 1
