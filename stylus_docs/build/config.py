"""Build settings, declared once: the dataclass fields carry their CLI flag, so flags are generated.

Each field that is a flag has ``metadata={"cli": {...}}`` (see :func:`flag`): help text and the
argparse keywords that differ from what the field's type and default imply. :func:`add_arguments` and
:func:`config_from_args` walk the fields (and the nested :class:`~stylus_docs.filters.FilterConfig`),
so a new setting is one field, not a field plus a flag plus a line in a constructor call.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from stylus_docs.errors import FatalError
from stylus_docs.filters import DEFAULT_TYPES, PG13, FilterConfig, load_blacklist
from stylus_docs.refine.extractive import EXTRACTIVE_NAME, EXTRACTIVE_VERSION
from stylus_docs.refine.openai_vlm import OPENAI_REFINER_NAME, OPENAI_REFINER_VERSION


def flag(help: str, *, convert: Callable[[Any], Any] | None = None, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata making a dataclass field a CLI flag.

    Args:
        help: the ``--help`` text.
        convert: applied to the parsed value before it reaches the dataclass (e.g. a file → a set).
        argparse_kwargs: anything ``add_argument`` takes (``flag`` renames the option string).
    """
    return {"cli": {"help": help, "convert": convert, **argparse_kwargs}}


@dataclass(slots=True)
class FilterFlags:
    """The filter flags; :meth:`to_config` builds the :class:`FilterConfig` the filter stage uses."""

    base_models: list[str] = field(
        default_factory=list, metadata=flag("keep only these base models", nargs="+", metavar="B")
    )
    types: list[str] = field(
        default_factory=lambda: list(DEFAULT_TYPES),
        metadata=flag("adapter types to keep (default: LORA LoCon DoRA)", nargs="+", metavar="T"),
    )
    include_nsfw: bool = field(default=False, metadata=flag("keep NSFW adapters and images"))
    max_nsfw_level: int = field(
        default=PG13,
        metadata=flag(
            "highest NSFW level bit kept without --include-nsfw (default 2 = PG13)", choices=(1, 2, 4, 8, 16)
        ),
    )
    min_images: int = field(default=1, metadata=flag("drop adapters with fewer example images"))
    keep_sliders: bool = field(default=False, metadata=flag("do not drop concept sliders"))
    blacklist: str | None = field(
        default=None, metadata=flag("file of adapter/model ids to drop, one per line", metavar="FILE")
    )

    def to_config(self) -> FilterConfig:
        return FilterConfig(
            types=tuple(self.types),
            base_models=tuple(self.base_models or ()),
            include_nsfw=self.include_nsfw,
            max_nsfw_level=self.max_nsfw_level,
            min_images=self.min_images,
            blacklist=load_blacklist(self.blacklist) if self.blacklist else frozenset(),
            drop_sliders=not self.keep_sliders,
        )  # fmt: skip


@dataclass(slots=True)
class BuildConfig:
    """Everything a build needs besides Beam options (each field with ``cli`` metadata is a flag).

    Args:
        raw: ``--raw`` paths (crawl OUT dirs, snapshot dirs, or single JSONL files).
        out: release root ``DOCS``.
        previous: release (or build dir) to reuse refinements and embeddings from.
        refiner: ``extractive`` or ``openai``; ``refiner_model`` is the chat model of ``openai``.
        embedder: ``minilm``, ``openai`` or ``clip``; ``embedder_model`` picks the model.
        filters: the filter stage's settings (built from the filter flags by the CLI).
        shards: Parquet shards per table.
        keep: builds kept by retention (the live one always stays).
        embed_batch: texts per embedding batch inside the pipeline.
        render: run the optional render stage (before refine, so the VLM sees the renders).
        max_dead_letter_fraction: a build with more dead letters than this fraction of its input records
            is not published (a bad key or a dead endpoint must not replace a good release).
        keep_deleted: write adapters the snapshot's tombstones cover from their last known record with
            ``deleted = true`` instead of dropping them (they are then not counted as removed).
        build_id: fixed build id (tests); default: a new timestamped id.
        progress: progress bars (None: when stderr is a terminal).
    """

    raw: list[str] = field(
        metadata=flag(
            "crawl OUT dir, snapshot dir or .jsonl(.gz) file of raw items (repeatable)",
            action="append",
            required=True,
            metavar="DIR",
        )
    )
    out: str = field(metadata=flag("release root to write into", required=True, metavar="DOCS"))
    previous: str | None = field(
        default=None,
        metadata=flag(
            "reuse refinements/embeddings of unchanged adapters from this release", metavar="DOCS_OLD"
        ),
    )
    refiner: str = field(
        default="extractive", metadata=flag("how descriptions are refined", choices=("extractive", "openai"))
    )
    refiner_model: str | None = field(
        default=None, metadata=flag("chat model of the openai refiner", metavar="NAME")
    )
    vlm_max_images: int = field(
        default=8,
        metadata=flag(
            "images sent to the VLM per adapter: rendered pairs first, then the creators' examples"
        ),
    )
    vlm_retries: int = field(default=4, metadata=flag("retries of a VLM request on 429/5xx"))
    image_hosts: list[str] = field(
        default_factory=list,
        metadata=flag(
            "more hosts example images may be fetched from (host, host:port or *.domain), besides "
            "Civitai's image CDN, the Hugging Face hosts and the hosts of CIVITAI_API_URL / HF_ENDPOINT",
            nargs="+", metavar="HOST",
        ),
    )  # fmt: skip
    refine_concurrency: int = field(default=16, metadata=flag("VLM requests in flight per worker"))
    refine_rpm: float | None = field(
        default=None, metadata=flag("client-side limit of VLM requests per minute (per process)", metavar="N")
    )
    refine_tpm: float | None = field(
        default=None, metadata=flag("client-side limit of VLM tokens per minute (per process)", metavar="N")
    )
    refine_max_requests: int | None = field(
        default=None,
        metadata=flag(
            "ask the VLM about at most N adapters this build; the rest are refined extractively and asked "
            "next time",
            metavar="N",
        ),
    )
    embedder: str = field(
        default="minilm", metadata=flag("embedding backend", choices=("minilm", "openai", "clip"))
    )
    embedder_model: str | None = field(
        default=None, metadata=flag("openai model, or clip ARCH[:weights path]", metavar="NAME")
    )
    embed_batch: int = field(default=512, metadata=flag("texts per embedding batch"))
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: int = field(default=1, metadata=flag("Parquet shards per table"))
    keep: int = field(default=3, metadata=flag("builds to keep (older ones are pruned)"))
    runner: str | None = field(
        default=None, metadata=flag("Beam runner (default: the in-process runner)", metavar="NAME")
    )
    render: bool = field(
        default=False,
        metadata=flag("render each adapter with and without its weights before refining (diffusers)"),
    )
    render_pipeline: str | None = field(
        default=None, metadata=flag("local diffusers pipeline for --render", metavar="PATH")
    )
    render_device: str | None = field(
        default=None,
        metadata=flag("torch device for --render: cpu, cuda, cuda:N (default: cpu)", metavar="DEV"),
    )
    render_prompts: int = field(default=2, metadata=flag("prompts rendered per adapter", metavar="M"))
    render_steps: int = field(default=25, metadata=flag("denoising steps per render"))
    render_size: int = field(
        default=512, metadata=flag("render width and height (a multiple of 8)", metavar="PX")
    )
    render_cache: str | None = field(
        default=None,
        metadata=flag("adapter weights cache for --render (default DOCS/cache/weights)", metavar="DIR"),
    )
    progress: bool | None = field(
        default=None,
        metadata=flag(
            "no progress bar even on a terminal", flag="--no-progress", action="store_const", const=False
        ),
    )
    max_dead_letter_fraction: float = field(
        default=0.5,
        metadata=flag(
            "refuse to publish when more than this fraction of the input records are dead letters "
            "(default 0.5)",
            metavar="F",
        ),
    )
    keep_deleted: bool = field(
        default=False,
        metadata=flag(
            "write adapters a tombstone of the snapshot marks deleted from their last known record, "
            "flagged deleted = true (default: drop them and list them in removed.json)"
        ),
    )
    build_id: str | None = None

    def __post_init__(self) -> None:
        if self.refiner not in ("extractive", "openai"):
            raise FatalError(f"unknown refiner {self.refiner!r}; choose extractive or openai")
        if self.shards < 1 or self.shards > 4096:
            raise FatalError("--shards must be between 1 and 4096")
        if self.keep < 1:
            raise FatalError("--keep must be at least 1")
        if self.embed_batch < 1:
            raise FatalError("--embed-batch must be at least 1")
        if self.refine_concurrency < 1:
            raise FatalError("--refine-concurrency must be at least 1")
        if any(v is not None and v <= 0 for v in (self.refine_rpm, self.refine_tpm)):
            raise FatalError("--refine-rpm and --refine-tpm must be positive")
        if self.refine_max_requests is not None and self.refine_max_requests < 0:
            raise FatalError("--refine-max-requests must be >= 0")
        if self.vlm_max_images < 0 or self.vlm_retries < 0:
            raise FatalError("--vlm-max-images and --vlm-retries must be >= 0")
        if self.render_prompts < 1:
            raise FatalError("--render-prompts must be at least 1")
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise FatalError("--max-dead-letter-fraction must be between 0 and 1")
        if self.refiner == "openai" and not self.refiner_model:
            self.refiner_model = os.environ.get("OPENAI_REFINER_MODEL") or "gpt-4o-mini"
        if self.render and not self.render_pipeline:
            raise FatalError("--render needs --render-pipeline PATH (a local diffusers pipeline)")

    def image_api_hosts(self) -> tuple[str, ...]:
        """Hosts example images may come from besides the defaults: ``--image-hosts`` and the
        configured catalogue APIs (``CIVITAI_API_URL``, ``HF_ENDPOINT``; a replay server, a mirror)."""
        hosts = list(self.image_hosts)
        for env in ("CIVITAI_API_URL", "HF_ENDPOINT"):
            netloc = urlsplit(os.environ.get(env) or "").netloc.lower()
            if netloc and "@" not in netloc:
                hosts.append(netloc)
        return tuple(dict.fromkeys(hosts))

    @property
    def refiner_id(self) -> str:
        """The ``refiner`` column value: ``<name>@<version>``."""
        if self.refiner == "extractive":
            return f"{EXTRACTIVE_NAME}@{EXTRACTIVE_VERSION}"
        return f"{OPENAI_REFINER_NAME}@{OPENAI_REFINER_VERSION}"

    def refiner_manifest(self) -> dict[str, Any]:
        """Manifest ``refiner`` object."""
        name, version = self.refiner_id.split("@", 1)
        return {
            "name": name,
            "version": version,
            "model": self.refiner_model if self.refiner == "openai" else None,
        }


def _cli_fields(cls: type) -> list[tuple[dataclasses.Field[Any], dict[str, Any]]]:
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(cls) if "cli" in f.metadata]


def _add(parser: argparse.ArgumentParser, cls: type) -> None:
    for f, meta in _cli_fields(cls):
        kwargs = {k: v for k, v in meta.items() if k not in ("convert", "flag")}
        option = meta.get("flag") or "--" + f.name.replace("_", "-")
        kwargs.setdefault("dest", f.name)
        if f.default is not dataclasses.MISSING:
            kwargs.setdefault("default", f.default)
        elif f.default_factory is not dataclasses.MISSING:
            kwargs.setdefault("default", f.default_factory())
        if "action" not in kwargs:
            kind = str(f.type)
            if kind == "bool":
                kwargs["action"] = "store_true"
            elif kind.startswith("int"):
                kwargs["type"] = int
            elif kind.startswith("float"):
                kwargs["type"] = float
        parser.add_argument(option, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every build flag to ``parser``, generated from :class:`BuildConfig` and :class:`FilterFlags`."""
    _add(parser, BuildConfig)
    _add(parser, FilterFlags)


def _values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f, meta in _cli_fields(cls):
        value = getattr(args, f.name)
        out[f.name] = meta["convert"](value) if meta.get("convert") and value is not None else value
    return out


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """A :class:`BuildConfig` from parsed flags."""
    filters = FilterFlags(**_values(args, FilterFlags)).to_config()
    return BuildConfig(**_values(args, BuildConfig), filters=filters)
