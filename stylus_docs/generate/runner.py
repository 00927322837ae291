"""Generating images with composed adapters (diffusers, in-process).

One :class:`StylusGenerator` per process: the base pipeline is loaded once, every adapter at most once
through the diffusion layer's :class:`~stylus_docs.diffusion.LoraSession` (a LoRA / LoCon / DoRA with
``load_lora_weights(adapter_name=…)``, a textual inversion with ``load_textual_inversion`` under a token
that goes into the prompt while the adapter is active); per mask ``set_adapters(names, weights)`` and, by
default, ``fuse_lora`` for the batch (measured on an H100, BENCHMARKS.md ``compose-gpu``: 3 unfused
rank-32 adapters cost 1.8–2.5 s per batch of 4 at 512×512 / 25 steps, against 0.93–1.02 s fused and
0.87–1.10 s base over two runs). Seeds are explicit, one per image (CPU generators, so an image is the
same on any device and in any batch grouping). An adapter that cannot be had, is of a format diffusers
does not load (LoHa, LoKr, …: ``unsupported_format``) or fails to load is skipped with a reason and the
generation goes on without it.

With an :class:`ImageInput` the same composition runs image-to-image (or inpainting, with a mask) through
the pipelines diffusers builds from the loaded components (``AutoPipelineFor….from_pipe``: no second
load); the sidecars record the init image's and mask's SHA-256 and the strength.

Output layout for one prompt::

    OUT/<slug>/composition.json          the composition used
    OUT/<slug>/stylus/000-seed0.png      images with adapters (+ .json sidecar each)
    OUT/<slug>/baseline/000-seed0.png    same seeds, no adapters (with --baseline)
    OUT/<slug>/_DONE.json                written last: settings fingerprint, counts, skipped adapters

A prompt whose ``_DONE.json`` carries the same settings fingerprint is skipped, which makes batch runs
resumable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs import formats
from stylus_docs.atomic import atomic_write_bytes, atomic_write_text
from stylus_docs.compose.candidates import CardTable
from stylus_docs.diffusion import (
    AdapterStore,
    LoadedPipeline,
    LoraSession,
    derived_pipeline,
    insert_token,
    textual_inversion_token,
)
from stylus_docs.errors import FatalError, SkipRecord
from stylus_docs.generate.pipeline import SCHEDULER_NAME
from stylus_docs.masks import (
    DEFAULT_BASE_WEIGHT,
    STRATEGIES,
    adapter_weights,
    enumerate_masks,
    mask_to_json,
    sample_masks,
    topic_sizes,
)

log = logging.getLogger(__name__)

DONE_FILE = "_DONE.json"
SIDECAR_FORMAT = "stylus-image.v1"
DEFAULT_NEGATIVE = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry"
)


#: Largest init image or mask accepted (pixels), checked before it is decoded.
MAX_INPUT_PIXELS = 64 * 1024 * 1024
#: Default strength by task when ``--strength`` is not given (diffusers' own defaults).
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}


@dataclass(frozen=True, slots=True)
class ImageInput:
    """The starting image of image-to-image generation, and the mask of inpainting.

    Validated when built (files readable as images, strength in (0, 1]); the SHA-256 of each file is
    taken then and goes into the sidecars and the settings fingerprint.

    Args:
        init_image: the image to start from (``--init-image``).
        mask_image: the inpainting mask (``--mask FILE``; white = repaint, black = keep), or None for
            image-to-image.
        strength: how much of the init image is noised away, in (0, 1]; None: 0.8 for image-to-image,
            1.0 for inpainting (diffusers' defaults).

    Raises:
        FatalError: a missing or unreadable file, a strength outside (0, 1] (one line).
    """

    init_image: str
    mask_image: str | None = None
    strength: float | None = None
    init_sha256: str = field(init=False, default="")
    mask_sha256: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.strength is not None and not (0.0 < self.strength <= 1.0):
            raise FatalError(f"--strength must be in (0, 1], got {self.strength}")
        object.__setattr__(self, "init_sha256", _image_sha256(self.init_image, "--init-image"))
        if self.mask_image is not None:
            object.__setattr__(self, "mask_sha256", _image_sha256(self.mask_image, "--mask"))

    @property
    def task(self) -> str:
        """``inpaint`` with a mask, else ``img2img``."""
        return "inpaint" if self.mask_image is not None else "img2img"

    @property
    def effective_strength(self) -> float:
        """The strength used: the given one, else the task's default."""
        return self.strength if self.strength is not None else DEFAULT_STRENGTH[self.task]

    def load(self, width: int, height: int) -> tuple[Any, Any | None]:
        """The init image (RGB) and mask (L) as PIL images resized to ``width`` × ``height``."""
        from PIL import Image

        size = (width, height)
        init = _open_image(self.init_image).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        mask = None
        if self.mask_image is not None:
            mask = _open_image(self.mask_image).convert("L").resize(size, Image.Resampling.NEAREST)
        return init, mask

    def describe(self) -> dict[str, Any]:
        """Sidecar fields."""
        return {
            "task": self.task,
            "init_image": self.init_image,
            "init_image_sha256": self.init_sha256,
            "mask_image": self.mask_image,
            "mask_sha256": self.mask_sha256,
            "strength": self.effective_strength,
        }


def _image_sha256(path: str, flag: str) -> str:
    """SHA-256 of an image file after checking that it is one (size bounded before decoding)."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FatalError(f"{flag}: no such file: {path}")
    try:
        with Image.open(p) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise FatalError(f"{flag}: {path} has more than {MAX_INPUT_PIXELS} pixels")
            img.verify()
        data = p.read_bytes()
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        raise FatalError(f"{flag}: {path} is not a readable image ({type(exc).__name__})") from None
    return hashlib.sha256(data).hexdigest()


def _open_image(path: str) -> Any:
    from PIL import Image

    img = Image.open(path)
    img.load()
    return img


@dataclass(slots=True)
class GenerateSettings:
    """Generation settings (defaults as in the paper's setup, cfg 6 as in Table 1).

    Args:
        num_images: images per prompt (one seed each: ``seed + i``).
        mask: masking strategy (``all``, ``one_hot_loras``, ``one_hot_concepts``).
        seed: first seed; also seeds the per-image mask draw.
        steps: denoising steps.
        cfg: guidance scale.
        width: image width.
        height: image height.
        negative_prompt: the negative prompt.
        debias: suffix appended as ``prompt, <debias>`` (e.g. "realistic, best quality").
        inject_triggers: append the active adapters' trigger words (off, as in the reference).
        baseline: also render the same seeds with no adapters.
        fuse: fuse the active adapters into the weights per batch.
        base_weight: the 0.8 of the weight formula.
        batch_size: images per pipeline call.
        image_input: start from an image (image-to-image) or repaint its masked part (inpainting);
            None: text-to-image.
    """

    num_images: int = 4
    mask: str = "all"
    seed: int = 0
    steps: int = 35
    cfg: float = 6.0
    width: int = 512
    height: int = 512
    negative_prompt: str = DEFAULT_NEGATIVE
    debias: str | None = None
    inject_triggers: bool = False
    baseline: bool = False
    fuse: bool = True
    base_weight: float = DEFAULT_BASE_WEIGHT
    batch_size: int = 4
    image_input: ImageInput | None = None

    def __post_init__(self) -> None:
        if self.mask not in STRATEGIES:
            raise FatalError(f"unknown mask {self.mask!r}; choose one of {', '.join(STRATEGIES)}")
        if not 1 <= self.num_images <= 10_000:
            raise FatalError("--num-images must be between 1 and 10000")
        if not 1 <= self.steps <= 1000:
            raise FatalError("--steps must be between 1 and 1000")
        if self.width % 8 or self.height % 8 or not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise FatalError("--width/--height must be multiples of 8 between 8 and 4096")
        if self.batch_size < 1:
            raise FatalError("--batch-size must be positive")
        if self.cfg < 0 or self.base_weight <= 0:
            raise FatalError("--cfg must be non-negative and the base weight positive")

    def fingerprint(self) -> str:
        """Hash of the settings that change the images (batch size and fusing do not)."""
        fields = asdict(self)
        for key in ("batch_size", "fuse", "image_input"):
            fields.pop(key)
        if self.image_input is not None:  # by content, not path; absent for text-to-image, as before
            described = self.image_input.describe()
            fields["image_input"] = {
                k: described[k] for k in ("task", "init_image_sha256", "mask_sha256", "strength")
            }
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prompt_slug(prompt: str) -> str:
    """A safe, unique directory name for a prompt: readable prefix + hash."""
    words = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60] or "prompt"
    return f"{words}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:10]}"


def adapter_name(adapter_id: str) -> str:
    """A diffusers adapter name (a valid module key) for an adapter id."""
    return "a_" + hashlib.sha256(adapter_id.encode("utf-8")).hexdigest()[:16]


def _png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


class StylusGenerator:
    """Renders compositions with one loaded pipeline.

    Args:
        loaded: the base pipeline (:func:`~stylus_docs.generate.pipeline.load_pipeline`).
        cards: card table of the release (sha256, download URL, trigger words per adapter id).
        store: where adapter files come from.
        build_id: release build id, recorded in sidecars.
    """

    def __init__(self, loaded: LoadedPipeline, cards: CardTable, store: AdapterStore, build_id: str) -> None:
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.cards = cards
        self.store = store
        self.build_id = build_id
        self.session = LoraSession(self.pipe)  # adapters stay loaded across prompts
        self._pristine = self.session.pristine  # base weights to restore after each fused batch
        self._names: dict[str, str] = {}  # adapter_id → LoRA adapter name, loaded in this process
        self._tokens: dict[str, str] = {}  # adapter_id → textual-inversion token, loaded in this process
        self._formats: dict[str, str] = {}  # adapter_id → file format (stylus_docs.formats)
        self._failed: dict[str, dict[str, str]] = {}  # adapter_id → {"reason", "detail"}
        self._load_s: dict[str, float] = {}
        self._inputs: dict[tuple[str, int, int], tuple[Any, Any | None]] = {}  # decoded init images

    # -- adapters ----------------------------------------------------------------------------------

    def ensure_adapter(self, adapter_id: str) -> str | None:
        """Load ``adapter_id`` once per process: a LoRA / LoCon / DoRA under its adapter name, a textual
        inversion under its token. Returns the name (or token), or None when it was skipped: the reason
        (``unsupported_format`` for LoHa / LoKr / checkpoints / unknown files, ``load_failed``, the
        download reasons) is kept for :meth:`failure`."""
        if adapter_id in self._names:
            return self._names[adapter_id]
        if adapter_id in self._tokens:
            return self._tokens[adapter_id]
        if adapter_id in self._failed:
            return None
        t0 = time.perf_counter()
        card = self.cards.get(adapter_id)
        name = adapter_name(adapter_id)
        try:
            if card is None:
                raise SkipRecord("not_in_release", f"{adapter_id} is not in build {self.build_id}")
            path = self.store.path(card)
            fmt = formats.inspect_file(path)
            ok, status, reason = formats.render_verdict(fmt)
            if not ok:
                raise SkipRecord(status, f"{fmt.format}: {reason}")
        except SkipRecord as exc:
            self._failed[adapter_id] = {"reason": exc.reason, "detail": exc.detail}
            log.warning("adapter %s skipped: %s", adapter_id, exc)
            return None
        try:
            if fmt.format == "textual_inversion":
                token = textual_inversion_token(
                    [*_triggers(card), *([fmt.token] if fmt.convention == "diffusers" and fmt.token else [])],
                    name,
                    taken=set(self.session.tokens),
                )
                self.session.load_textual_inversion(path, token)
                self._tokens[adapter_id] = token
            else:
                self.session.load_lora(path, name)
                self._names[adapter_id] = name
        except SkipRecord as exc:
            log.warning("adapter %s failed to load: %s", adapter_id, exc.detail)
            self._failed[adapter_id] = {"reason": exc.reason, "detail": exc.detail}
            return None
        self._formats[adapter_id] = fmt.format
        self._load_s[adapter_id] = time.perf_counter() - t0
        return self._names.get(adapter_id) or self._tokens[adapter_id]

    def unload_adapters(self) -> None:
        """Take every loaded adapter out of the pipeline (a later render loads what it needs again)."""
        self.session.unload()
        self._names.clear()
        self._tokens.clear()
        self._formats.clear()
        self._load_s.clear()

    def failure(self, adapter_id: str) -> dict[str, str] | None:
        """Why ``adapter_id`` was skipped (None when it loaded or was never tried)."""
        return self._failed.get(adapter_id)

    # -- rendering ---------------------------------------------------------------------------------

    def _prompt_sent(self, prompt: str, active: Sequence[str], settings: GenerateSettings) -> str:
        text = prompt
        if settings.inject_triggers:
            triggers: list[str] = []
            for aid in active:
                for t in (self.cards.get(aid) or {}).get("trigger_words") or []:
                    if t and t not in triggers and t.lower() not in text.lower():
                        triggers.append(t)
            if triggers:
                text = f"{text}, {', '.join(triggers)}"
        for aid in active:  # a textual inversion acts where its token is: put it in
            token = self._tokens.get(aid)
            if token:
                triggers = _triggers(self.cards.get(aid) or {})
                text = insert_token(text, token, triggers[0] if triggers else None)
        if settings.debias:
            text = f"{text}, {settings.debias}"
        return text

    def _render_batch(
        self, prompt: str, weights: dict[str, float], seeds: Sequence[int], settings: GenerateSettings
    ) -> tuple[list[Any], dict[str, float], bool]:
        import torch

        n = len(seeds)
        kwargs: dict[str, Any] = {
            "prompt": [prompt] * n,
            "negative_prompt": [settings.negative_prompt] * n if settings.negative_prompt else None,
            "num_inference_steps": settings.steps,
            "guidance_scale": settings.cfg,
        }
        image_input = settings.image_input
        if image_input is None:
            pipe = self.pipe
            kwargs.update(width=settings.width, height=settings.height)
        else:
            # Built from the loaded components (no second load): the adapters below act in it too.
            pipe = derived_pipeline(self.loaded, image_input.task)
            init, mask = self._input_images(image_input, settings)
            kwargs.update(image=[init] * n, strength=image_input.effective_strength)
            if mask is not None:
                kwargs.update(mask_image=[mask] * n, width=settings.width, height=settings.height)
        # LoRAs only: a textual inversion is active through its token in ``prompt``.
        names = {self._names[a]: float(w) for a, w in weights.items() if a in self._names}
        timings = {"set_adapters_s": 0.0, "fuse_s": 0.0, "generate_s": 0.0, "unfuse_s": 0.0}
        # Restored from the resident copies on leaving, not pipe.unfuse_lora(): exact (no fp16 drift over
        # a long batch run) and one copy per layer instead of a matmul per layer and adapter.
        with self.session.applied(names, fuse=settings.fuse) as applied:
            t2 = time.perf_counter()
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
            out = pipe(**kwargs, generator=generators)
            if self.loaded.device.startswith("cuda"):
                torch.cuda.synchronize()
            timings["generate_s"] = time.perf_counter() - t2
        timings.update(set_adapters_s=applied.set_s, fuse_s=applied.fuse_s, unfuse_s=applied.restore_s)
        return list(out.images), timings, applied.fused

    def _sidecar_adapter(
        self,
        aid: str,
        weight: float,
        title_of: dict[str, str],
        topic_of: dict[str, str],
        rec_of: dict[str, Any],
    ) -> dict[str, Any]:
        token = self._tokens.get(aid)
        return {
            "adapter_id": aid,
            "title": title_of.get(aid, ""),
            "topic": topic_of.get(aid),
            "recommended_weight": rec_of.get(aid),
            "weight": None if token else round(weight, 6),  # an embedding has no weight
            "adapter_name": self._names.get(aid) or token,
            "format": self._formats.get(aid),
            "token": token,
            "sha256": (self.cards.get(aid) or {}).get("sha256"),
        }

    def _input_images(self, image_input: ImageInput, settings: GenerateSettings) -> tuple[Any, Any | None]:
        key = (f"{image_input.init_sha256}:{image_input.mask_sha256}", settings.width, settings.height)
        if key not in self._inputs:
            self._inputs.clear()  # one init image at a time is the common case; keep memory flat
            self._inputs[key] = image_input.load(settings.width, settings.height)
        return self._inputs[key]

    def render(
        self,
        prompt: str,
        composition: dict[str, Any],
        settings: GenerateSettings,
        out_dir: str | os.PathLike[str],
    ) -> dict[str, Any]:
        """Render one prompt: stylus images (and baseline images) with sidecars, then ``_DONE.json``.

        Args:
            prompt: the user's prompt (the composition's prompt).
            composition: output of the composer.
            settings: generation settings.
            out_dir: the prompt's directory (``OUT/<slug>``).

        Returns:
            The summary written to ``_DONE.json``.
        """
        out = Path(out_dir)
        t_start = time.perf_counter()
        atomic_write_text(out / "composition.json", json.dumps(composition, ensure_ascii=False, indent=1))
        skipped: list[dict[str, Any]] = []
        topics: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for topic in composition.get("topics", []):
            kept = []
            for a in topic.get("adapters", []):
                if self.ensure_adapter(a["adapter_id"]) is None:
                    skipped.append(
                        {
                            "adapter_id": a["adapter_id"],
                            "topic": topic["topic"],
                            **self._failed[a["adapter_id"]],
                        }
                    )
                else:
                    kept.append(a)
            topics.append({"topic": topic["topic"], "adapters": kept})
        load_s = time.perf_counter() - t0
        masks = enumerate_masks(topic_sizes(topics), settings.mask)
        seeds = [settings.seed + i for i in range(settings.num_images)]
        image_masks = sample_masks(masks, len(seeds), settings.seed)
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(image_masks):
            groups.setdefault(m, []).append(i)
        topic_of = {a["adapter_id"]: t["topic"] for t in topics for a in t["adapters"]}
        rec_of = {a["adapter_id"]: a.get("recommended_weight") for t in topics for a in t["adapters"]}
        title_of = {a["adapter_id"]: a.get("title", "") for t in topics for a in t["adapters"]}
        images: list[str] = []

        def emit(kind: str, idxs: list[int], mask: Any, weights: dict[str, float]) -> None:
            sent = self._prompt_sent(prompt, list(weights), settings)
            pics, timings, fused = self._render_batch(sent, weights, [seeds[i] for i in idxs], settings)
            for i, img in zip(idxs, pics, strict=True):
                stem = f"{i:03d}-seed{seeds[i]}"
                rel = f"{kind}/{stem}.png"
                atomic_write_bytes(out / rel, _png_bytes(img))
                sidecar = {
                    "format": SIDECAR_FORMAT,
                    "image": rel,
                    "prompt": sent,
                    "user_prompt": prompt,
                    "negative_prompt": settings.negative_prompt,
                    "base_pipeline": self.loaded.describe(),
                    "baseline": kind == "baseline",
                    "adapters": [
                        self._sidecar_adapter(aid, w, title_of, topic_of, rec_of)
                        for aid, w in weights.items()
                    ],
                    "mask": mask_to_json(mask) if mask is not None else None,
                    "mask_strategy": settings.mask,
                    **(
                        settings.image_input.describe()
                        if settings.image_input is not None
                        else {"task": "text2img"}
                    ),
                    "topics": [t["topic"] for t in topics],
                    "skipped_adapters": skipped,
                    "seed": seeds[i],
                    "steps": settings.steps,
                    "scheduler": SCHEDULER_NAME,
                    "scheduler_class": type(self.pipe.scheduler).__name__,
                    "cfg": settings.cfg,
                    "width": settings.width,
                    "height": settings.height,
                    "debias": settings.debias,
                    "inject_triggers": settings.inject_triggers,
                    "fused": fused,
                    "release": self.build_id,
                    "composer": composition.get("composer", {}).get("name"),
                    "timings": {
                        **{k: round(v, 6) for k, v in timings.items()},
                        "batch_images": len(idxs),
                        "compose_s": composition.get("timings", {}).get("total_s"),
                        "load_adapters_s": round(load_s, 6),
                    },
                }
                atomic_write_text(
                    out / f"{kind}/{stem}.json", json.dumps(sidecar, ensure_ascii=False, indent=1)
                )
                images.append(rel)

        for mask, idxs in groups.items():
            weights = adapter_weights(topics, mask, settings.base_weight)
            for chunk in _chunks(idxs, settings.batch_size):
                emit("stylus", chunk, mask, weights)
        if settings.baseline:
            for chunk in _chunks(list(range(len(seeds))), settings.batch_size):
                emit("baseline", chunk, None, {})
        summary = {
            "prompt": prompt,
            "fingerprint": settings.fingerprint(),
            "release": self.build_id,
            "images": sorted(images),
            "skipped_adapters": skipped,
            "masks_available": len(masks),
            "total_s": round(time.perf_counter() - t_start, 6),
        }
        atomic_write_text(out / DONE_FILE, json.dumps(summary, ensure_ascii=False, indent=1))
        return summary


def _triggers(card: dict[str, Any]) -> list[str]:
    return [str(t) for t in card.get("trigger_words") or [] if str(t).strip()]


def is_done(out_dir: str | os.PathLike[str], settings: GenerateSettings) -> bool:
    """True when ``out_dir`` holds a ``_DONE.json`` made with the same settings."""
    try:
        done = json.loads((Path(out_dir) / DONE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return done.get("fingerprint") == settings.fingerprint()


def read_prompts(
    path: str | os.PathLike[str], column: str = "caption", limit: int | None = None
) -> list[str]:
    """Prompts of a CSV file's ``column`` (empty cells skipped, duplicates kept once, order kept)."""
    p = Path(path)
    if not p.is_file():
        raise FatalError(f"prompts file not found: {p}")
    with p.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or column not in reader.fieldnames:
            raise FatalError(f"{p} has no column {column!r} (columns: {', '.join(reader.fieldnames or [])})")
        out: list[str] = []
        seen: set[str] = set()
        for row in reader:
            text = " ".join((row.get(column) or "").split())
            if text and text not in seen:
                seen.add(text)
                out.append(text)
            if limit is not None and len(out) >= limit:
                break
    return out


def run_prompts(
    prompts: Sequence[str],
    compose_fn: Callable[[str], dict[str, Any]],
    generator: StylusGenerator,
    settings: GenerateSettings,
    out_root: str | os.PathLike[str],
    compositions: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, int]:
    """Render many prompts, skipping those already done with the same settings (resumable).

    Args:
        prompts: the prompts.
        compose_fn: prompt → composition (the composer; not called for done prompts).
        generator: the loaded generator.
        settings: generation settings.
        out_root: output root; each prompt gets ``out_root/<slug>``.
        compositions: ready compositions by prompt (``--composition``), used instead of ``compose_fn``.
        progress: called with ``(prompt, status)`` where status is ``done`` or ``skipped``.

    Returns:
        Counts: ``{"prompts", "rendered", "skipped_done", "images"}``.
    """
    counts = {"prompts": len(prompts), "rendered": 0, "skipped_done": 0, "images": 0}
    for prompt in prompts:
        out_dir = Path(out_root) / prompt_slug(prompt)
        if is_done(out_dir, settings):
            counts["skipped_done"] += 1
            if progress:
                progress(prompt, "skipped")
            continue
        composition = (compositions or {}).get(prompt) or compose_fn(prompt)
        summary = generator.render(prompt, composition, settings, out_dir)
        counts["rendered"] += 1
        counts["images"] += len(summary["images"])
        if progress:
            progress(prompt, "done")
    return counts
