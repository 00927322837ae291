"""Beam pipeline: raw snapshots → a StylusDocs release. A thin entry point over ``pipelines/stages.py``.

Stages (composite PTransforms, each with dead-letter / filtered / event outputs; see the stages module)::

    Normalize → FilterCards → Reuse → [Download → Render] → Refine (extractive | openai) → Embed
        → Write (adapters, images, dead letters, removed.json) → WriteStats

Render comes before refine so that the VLM sees what each adapter really draws.

Before the pipeline starts the driver reads what a snapshot holds besides its data chunks
(:mod:`stylus_docs.build.inputs`): tombstones (adapters deleted at the source: dropped and listed in
``removed.json``, or with ``--keep-deleted`` written from their last known record, ``deleted = true``) and
the saved ``/api/v1/enums`` base-model names (``--base-models`` is checked against them).

Everything is written into ``DOCS/builds/<id>/``; when the pipeline has finished, the driver writes the
manifest (counts, files, SHA-256) and publishes with :func:`stylus_docs.release.publish`. A failure
anywhere leaves the previous release live and publishes nothing.

Run ``python -m pipelines.build --help``; Beam pipeline options go after ``--`` (an unknown flag
before it is an error). The flags are generated from :class:`stylus_docs.build.config.BuildConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam

from pipelines import stages
from stylus_docs import progress as stage_bars
from stylus_docs import release, storage, writer
from stylus_docs.beam_options import make_pipeline_options, split_beam_args
from stylus_docs.build import rules
from stylus_docs.build.config import BuildConfig, add_arguments, config_from_args
from stylus_docs.build.inputs import SnapshotExtras, load_extras
from stylus_docs.embedding import EmbedderInfo, embedder_info
from stylus_docs.errors import FatalError
from stylus_docs.normalize.raw import RawFile, discover
from stylus_docs.query import learned
from stylus_docs.secrets import redact

__all__ = [
    "BuildConfig",
    "add_arguments",
    "build_pipeline",
    "config_from_args",
    "run",
    "run_build",
    "summary",
]

logger = logging.getLogger(__name__)
summary = rules.summary
check_publishable = rules.check_publishable


def build_pipeline(p: beam.Pipeline, config: BuildConfig, files: list[RawFile], build_dir: Path,
                   info: EmbedderInfo, progress: bool,
                   extras: SnapshotExtras | None = None) -> None:  # fmt: skip
    """Add every stage of the build to ``p`` (outputs go to ``build_dir``).

    ``extras``: the snapshot's tombstones and enums (:func:`stylus_docs.build.inputs.load_extras`).
    """
    extras = extras or SnapshotExtras()
    previous = str(release.resolve_build(config.previous)) if config.previous else None
    inputs = files + (extras.tombstone_inputs() if config.keep_deleted else [])
    normalized = p | "Normalize" >> stages.Normalize(inputs, extras.coverage, config.keep_deleted)
    kept = normalized["cards"] | "FilterCards" >> stages.FilterCards(
        config.filters, extras.known_base_models or frozenset()
    )
    reuse = kept["cards"] | "Reuse" >> stages.Reuse(previous, config.refiner_id, info.id, config.render)
    parts = [normalized, kept, reuse]
    to_refine = reuse["refine"]
    if config.render:
        cache = config.render_cache or str(Path(config.out) / "cache" / "weights")
        downloaded = to_refine | "Download" >> stages.Download(cache)
        rendered = downloaded["cards"] | "Render" >> stages.Render(config, build_dir, progress)
        to_refine = rendered["cards"]
        parts += [downloaded, rendered]
    if config.refiner == "extractive":
        refined = to_refine | "Refine" >> stages.ExtractiveRefine()
    else:
        refined = to_refine | "Refine" >> stages.OpenAIRefine(config, build_dir, progress)
    to_embed = (refined["cards"], reuse["embed"]) | "ToEmbed" >> beam.Flatten()
    embedded = to_embed | "Embed" >> stages.Embed(
        config.embedder, config.embedder_model, info, config.embed_batch
    )
    final = (reuse["done"], embedded["cards"]) | "Complete" >> beam.Flatten()
    if progress:
        final = final | "Progress" >> beam.ParDo(stages.Progress("adapters"))
    parts += [refined, embedded]
    dead = [s[stages.DEAD] for s in parts] | "DeadLetters" >> beam.Flatten()
    written = {"cards": final, "dead": dead} | "Write" >> stages.Write(
        build_dir, config.shards, info.dim, extras.removal
    )
    parts.append(written)
    side = {tag: [s[tag] for s in parts] | f"All{tag.capitalize()}" >> beam.Flatten() for tag in stages.SIDE}
    _ = side | "WriteStats" >> stages.WriteStats(build_dir)


# --------------------------------------------------------------------------------------------- driver
def _read_json_or(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def run_build(
    config: BuildConfig, beam_args: Sequence[str] = (), runner: str | None = None
) -> dict[str, Any]:
    """Run a whole build and publish it; return the manifest.

    ``--raw``, ``--out`` and ``--previous`` may be object-store URLs (``s3://``, ``gs://``): see
    :func:`_run_staged`.

    Raises:
        FatalError: bad inputs or configuration, or a failed stage. Nothing is published then; the
            unfinished build directory is removed and the previous release stays live.
    """
    if any(storage.is_url(u) for u in [*config.raw, config.out, config.previous]):
        return _run_staged(config, beam_args, runner)
    files = discover(config.raw)
    info = embedder_info(config.embedder, config.embedder_model)
    if config.previous:
        # Fail fast, in one line, on a bad or corrupted --previous: the reused shards are verified
        # against its manifest (size + SHA-256) before the pipeline starts, not deep inside a worker.
        prev = release.resolve_build(config.previous)
        release.table_files(prev, release.load_manifest(prev), "adapters")
    extras = load_extras(config.raw, files, config.previous, config.filters.base_models)
    docs = Path(config.out)
    try:
        docs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"cannot create release root {docs}: {exc.strerror}") from exc
    with release.build_lock(docs):
        return _run_locked(config, files, extras, info, docs, beam_args, runner)


def _run_staged(config: BuildConfig, beam_args: Sequence[str], runner: str | None) -> dict[str, Any]:
    """A build whose inputs or release root are on object storage.

    ``--raw`` URLs are synced into persistent local staging copies, a ``--previous`` URL is resolved
    through its ``CURRENT`` object into a verified local mirror (:func:`stylus_docs.storage.mirror_release`),
    and with an ``--out`` URL the build runs into a local staging release root and is then published
    on the store without a rename: uploaded under ``builds/<id>/`` (its manifest after its shards) and
    the ``CURRENT`` object written last, so a reader resolving ``CURRENT`` never sees half a build.
    """
    raw = []
    for path in config.raw:
        if storage.is_url(path):
            local = storage.staging_dir(path, "raw")
            storage.sync_down(path, local)
            path = str(local)
        raw.append(path)
    previous = config.previous
    if storage.is_url(previous):
        previous = str(release.resolve_build(str(previous)))
    local_config = dataclasses.replace(config, raw=raw, previous=previous)
    if not storage.is_url(config.out):
        return run_build(local_config, beam_args, runner)
    storage.check_reachable(config.out)
    staging = storage.staging_dir(config.out, "out")
    manifest = run_build(dataclasses.replace(local_config, out=str(staging)), beam_args, runner)
    storage.publish_build(staging, str(manifest["build_id"]), config.out)
    return manifest


def _run_locked(config: BuildConfig, files: list[RawFile], extras: SnapshotExtras, info: EmbedderInfo,
                docs: Path, beam_args: Sequence[str], runner: str | None) -> dict[str, Any]:  # fmt: skip
    build_id = config.build_id or release.new_build_id()
    build_dir = release.build_path(docs, build_id)
    if build_dir.exists():
        raise FatalError(f"build {build_id} already exists in {docs}")
    try:
        build_dir.mkdir(parents=True)
    except OSError as exc:
        raise FatalError(f"cannot write into release root {docs}: {exc.strerror}") from exc
    progress = config.progress if config.progress is not None else sys.stderr.isatty()
    options = make_pipeline_options(beam_args, runner or config.runner)
    started = time.time()
    ok = False
    try:
        paths = [f.path for f in files] + extras.manifest_inputs()
        inputs = [{"path": path, "sha256": release.sha256_file(path)} for path in paths]
        p = beam.Pipeline(options=options)
        build_pipeline(p, config, files, build_dir, info, progress, extras)
        result = p.run()
        result.wait_until_finish()
        timings = stages.stage_seconds(result)
        # Beam writes these only when some event/file exists: an input with no records leaves neither,
        # and check_publishable then refuses it ("the --raw input holds no records").
        stats = dict(_read_json_or(build_dir / ".stats.json", {}))
        file_list = list(_read_json_or(build_dir / ".files.json", []))
        file_list = rules.order_files(file_list)
        counts = rules.counts(stats, file_list)
        rules.check_publishable(counts, config.max_dead_letter_fraction)
        # Learned fusion (issue 16): fitted on this build's own example prompts; listed and hashed.
        learn_started = time.time()
        file_list += learned.learn_build(build_dir, file_list, info.to_manifest(), config.previous)
        timings = {**timings, "Learn": round(time.time() - learn_started, 3)}
        manifest = {
            "schema_version": release.SCHEMA_VERSION,
            "build_id": build_id,
            "created_at": writer.utc_now(),
            "inputs": inputs,
            "previous": writer.previous_build_id(config.previous) if config.previous else None,
            "refiner": config.refiner_manifest(),
            "embedder": info.to_manifest(),
            "filters": config.filters.describe(),
            "counts": counts,
            "files": file_list,
            "wall_s": round(time.time() - started, 3),
            "stage_seconds": timings,
        }
        for tmp in (".stats.json", ".files.json"):
            (build_dir / tmp).unlink(missing_ok=True)
        writer.finalize_build(docs, build_id, manifest, config.keep)
        ok = True
        return manifest
    except FatalError:
        raise
    except OSError as exc:
        raise FatalError(
            f"build failed writing {getattr(exc, 'filename', '') or 'output'}: {exc.strerror or exc}"
        ) from exc
    except Exception as exc:
        # Documented boundary: Beam wraps stage failures in its own exceptions; report one line and
        # keep the traceback in the log.
        logger.error("build failed", exc_info=True)
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise FatalError("build failed: " + redact(last)) from exc
    finally:
        stage_bars.close_all()
        if not ok and release.current_build_id(docs) != build_id:
            shutil.rmtree(build_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- CLI
def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse app flags, pass what follows ``--`` to Beam, run the build; return the manifest."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.splitlines()[0])
    add_arguments(parser)
    own, beam_args = split_beam_args(list(sys.argv[1:] if argv is None else argv))
    return run_build(config_from_args(parser.parse_args(own)), beam_args)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    try:
        print(summary(run()))
    except FatalError as exc:
        print(f"build: error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
