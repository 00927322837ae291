"""What every evaluation needs: image sets with their prompts, content hashes, local weights, caches.

An image's prompt comes from the sidecar ``<stem>.json`` beside it, as ``stylus-docs generate`` writes
(``user_prompt``: the prompt the user asked for, before the debias suffix and trigger words; ``prompt``
otherwise), or from a CSV (``--prompts``) with an ``image`` column (a path relative to the image folder,
or a bare file name) and a prompt column.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylus_docs.errors import FatalError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Largest image decoded (pixels), checked before decoding: a folder may hold anything.
MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One image of an evaluated set.

    Attributes:
        path: the file.
        rel: its path relative to the set's folder (POSIX form), how it is named in outputs.
        prompt: the prompt it was made for (None when unknown).
        seed: the generation seed (from the sidecar), None when unknown.
        kind: ``stylus`` / ``baseline`` from the sidecar (None when unknown).
    """

    path: Path
    rel: str
    prompt: str | None
    seed: int | None = None
    kind: str | None = None


def default_cache_root() -> Path:
    """``$STYLUS_DOCS_CACHE`` or ``$XDG_CACHE_HOME/stylus-docs`` (``~/.cache/stylus-docs``)."""
    root = os.environ.get("STYLUS_DOCS_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stylus-docs"


def _sidecar(path: Path) -> dict[str, Any] | None:
    side = path.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_prompt_csv(path: Path, column: str = "prompt") -> dict[str, str]:
    """``image`` → prompt from a CSV with columns ``image`` and ``column``."""
    if not path.is_file():
        raise FatalError(f"--prompts: no such file: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "image" not in fields or column not in fields:
            raise FatalError(
                f"--prompts {path} needs columns 'image' and {column!r} (has: {', '.join(fields) or 'none'})"
            )
        return {
            (row.get("image") or "").strip(): " ".join((row.get(column) or "").split())
            for row in reader
            if (row.get("image") or "").strip()
        }


def collect_images(
    root: str | os.PathLike[str],
    flag: str,
    prompts: dict[str, str] | None = None,
    kind: str | None = None,
) -> list[ImageItem]:
    """Every image under ``root`` (recursively, sorted), each with its prompt.

    Args:
        root: the folder.
        flag: the flag that named it (for the error message).
        prompts: ``image`` → prompt from ``--prompts`` (matched on the relative path, then the file name);
            wins over the sidecar.
        kind: keep only images whose sidecar says this kind (``stylus``/``baseline``); None: all.

    Raises:
        FatalError: ``root`` is not a folder, or holds no image.
    """
    base = Path(root)
    if not base.is_dir():
        raise FatalError(f"{flag} {root}: not a directory")
    items: list[ImageItem] = []
    for path in sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(base).as_posix()
        side = _sidecar(path) or {}
        side_kind = side.get("kind") or (
            ("baseline" if side.get("baseline") else "stylus") if "baseline" in side else None
        )
        if kind is not None and side_kind != kind:
            continue
        prompt = None
        if prompts is not None:
            prompt = prompts.get(rel) or prompts.get(path.name)
        if prompt is None:
            raw = side.get("user_prompt") or side.get("prompt")
            prompt = " ".join(str(raw).split()) if raw else None
        seed = side.get("seed")
        items.append(ImageItem(path, rel, prompt, int(seed) if isinstance(seed, int) else None, side_kind))
    if not items:
        raise FatalError(f"{flag} {root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def require_prompts(items: list[ImageItem], flag: str) -> None:
    """Fail in one line when an image has no prompt (no sidecar and not in ``--prompts``)."""
    missing = [it for it in items if not it.prompt]
    if missing:
        raise FatalError(
            f"{flag}: {len(missing)} image(s) have no prompt (no sidecar .json, not in --prompts), "
            f"e.g. {missing[0].path}"
        )


def open_rgb(path: str | os.PathLike[str]) -> Any:
    """An image file as a PIL RGB image, refusing decompression bombs.

    Raises:
        FatalError: not a readable image, or larger than :data:`MAX_PIXELS`.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise FatalError(f"{path}: more than {MAX_PIXELS} pixels")
            return img.convert("RGB")
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        raise FatalError(f"{path}: not a readable image ({type(exc).__name__})") from None


def load_state_dict(path: str | os.PathLike[str] | None, flag: str) -> dict[str, Any]:
    """A torch state dict from a local safetensors or ``.pt``/``.pth``/``.bin`` file (never a download).

    ``.pt`` files are read with ``weights_only=True``: tensors only, no pickled code runs. A checkpoint
    dict holding ``state_dict`` (or ``model``) is unwrapped.

    Raises:
        FatalError: no path, a missing or unreadable file; the message names ``flag``.
    """
    if path is None:
        raise FatalError(f"{flag} is required (a local weights file; nothing is downloaded)")
    p = Path(path)
    if not p.is_file():
        raise FatalError(f"{flag} {path}: no such file (weights are only read from local paths)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            import torch

            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # boundary: any reader failure is the user's file, reported in one line
        raise FatalError(f"{flag} {path}: cannot read weights ({type(exc).__name__}: {exc})"[:300]) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise FatalError(f"{flag} {path}: not a state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from a DataParallel wrapper
    return state


def load_into(model: Any, state: dict[str, Any], flag: str, path: Any) -> None:
    """``model.load_state_dict(state)`` strictly; a mismatch is one line naming ``flag``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise FatalError(f"{flag} {path}: weights do not fit the model ({' '.join(first)})"[:400]) from None


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
