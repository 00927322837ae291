"""Base-model names: the live list from ``/api/v1/enums`` (saved by the crawl) and a family table.

Civitai adds base-model names far more often than anyone edits a list in code (API-NOTES §1.8: 92 names
in 2026, one renamed), so the build never hard-codes the set of valid names:

* the crawl saves the ``/api/v1/enums`` body as ``RAW/civitai/enums.json``; its ``BaseModel`` list (with
  the names the input itself uses) is what ``--base-models`` is checked against (:func:`read_enums`);
* :func:`family` maps a name to a small, stable family (``SDXL``, ``Flux.1``, ``Wan Video`` …) by prefix
  rules, so ``SDXL Lightning`` and ``SDXL 1.0`` group together in the ``base_model_family`` column. A
  name in no family is kept as it is; the build counts those that are not in the enums either
  (``counts.unknown_base_models``), which is how a new family shows up in the manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from stylus_docs.errors import FatalError

#: Name of the saved ``/api/v1/enums`` body inside ``RAW/civitai/``.
ENUMS_FILE = "enums.json"
#: Longest base-model name counted by name (a hostile item could send megabytes).
MAX_NAME = 80

# Civitai base-model names (and Hub repo ids the HF normalizer could not map) → family. The first rule
# that matches wins, so the more specific prefixes come first. Civitai names are matched from the start;
# Hub repo ids (``owner/name``) by their name part.
_CIVITAI_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.I))
    for name, pattern in (
        ("SD 1.x", r"^sd\s*1(\.\d+)?\b"),
        ("SD 2.x", r"^sd\s*2(\.\d+)?\b"),
        ("SD 3.x", r"^sd\s*3(\.\d+)?\b"),
        ("SDXL", r"^sdxl\b"),
        ("Pony", r"^pony\b"),
        ("Illustrious", r"^illustrious\b"),
        ("NoobAI", r"^noob\s*ai\b"),
        ("Flux.1", r"^flux\s*\.?\s*1\b"),
        ("Flux.2", r"^flux\s*\.?\s*2\b"),
        ("Hunyuan", r"^hunyuan"),
        ("Wan Video", r"^wan\s*video\b"),
        ("Qwen", r"^qwen\b"),
        ("Kolors", r"^kolors\b"),
        ("Lumina", r"^lumina\b"),
        ("Chroma", r"^chroma\b"),
        ("HiDream", r"^hi\s*dream\b"),
        ("AuraFlow", r"^aura\s*flow\b"),
        ("PixArt", r"^pixart\b"),
        ("Other", r"^other$"),
    )
)
_HUB_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.I))
    for name, pattern in (
        ("SDXL", r"stable-diffusion-xl|sdxl"),
        ("SD 3.x", r"stable-diffusion-3"),
        ("SD 2.x", r"stable-diffusion-2"),
        ("SD 1.x", r"stable-diffusion-v1|sd-?v?1[-.]?[45]\b"),
        ("Flux.1", r"^flux\.?1"),
        ("Flux.2", r"^flux\.?2"),
        ("Qwen", r"^qwen-image"),
        ("Hunyuan", r"hunyuan"),
        ("Wan Video", r"^wan2?\.?\d*[-_]"),
        ("Kolors", r"kolors"),
        ("Lumina", r"lumina"),
        ("Chroma", r"^chroma"),
        ("HiDream", r"hidream"),
        ("AuraFlow", r"auraflow"),
        ("PixArt", r"pixart"),
        ("Illustrious", r"illustrious"),
        ("NoobAI", r"noob"),
        ("Pony", r"pony"),
    )
)
#: Every family :func:`family` can answer.
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(name for name, _ in _CIVITAI_FAMILIES))


def family(name: str | None) -> str | None:
    """The family of a base-model name (``"SDXL Lightning"`` → ``"SDXL"``), or None when none fits."""
    if not name:
        return None
    text = name.strip()
    if "/" in text:  # a Hub repo id the HF normalizer kept as it was
        repo = text.rsplit("/", 1)[1]
        return next((fam for fam, rule in _HUB_FAMILIES if rule.search(repo)), None)
    return next((fam for fam, rule in _CIVITAI_FAMILIES if rule.search(text)), None)


def counted_name(name: str | None) -> str | None:
    """``name`` as a manifest key: stripped, at most :data:`MAX_NAME` characters, valid UTF-8, or None."""
    if not name:
        return None
    text = name.strip()[:MAX_NAME]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text or None


def enums_files(raw: Iterable[str]) -> list[Path]:
    """The ``enums.json`` of each ``--raw`` directory: ``DIR/civitai/enums.json``, else ``DIR/enums.json``."""
    out: list[Path] = []
    for arg in raw:
        root = Path(arg)
        if not root.is_dir():
            continue
        for candidate in (root / "civitai" / ENUMS_FILE, root / ENUMS_FILE):
            if candidate.is_file():
                out.append(candidate)
                break
    return out


def read_enums(files: Iterable[Path]) -> frozenset[str] | None:
    """The union of the ``BaseModel`` (and ``ActiveBaseModel``) lists of saved enums, or None if none.

    The crawl writes these files (atomically), so a file that is not a JSON object, or whose lists are
    not lists of strings, is our own output gone wrong and stops the build. A body without either key
    (an API that renamed it) gives no names, as if the file were absent.

    Raises:
        FatalError: one line naming the file.
    """
    names: set[str] = set()
    found = False
    for path in files:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise FatalError(f"malformed enums file {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(body, dict):
            raise FatalError(f"malformed enums file {path}: not a JSON object")
        for key in ("BaseModel", "ActiveBaseModel"):
            values = body.get(key)
            if values is None:
                continue
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise FatalError(f"malformed enums file {path}: {key} is not a list of strings")
            names.update(v.strip() for v in values if v.strip())
            found = True
    return frozenset(names) if found else None


def seen_base_models(files: Iterable[object]) -> set[str]:
    """Base-model names the raw input uses (listing versions, version details, HF cards).

    A full pass over the input: only called when a ``--base-models`` name is not in the enums.
    """
    from stylus_docs.errors import SkipRecord
    from stylus_docs.normalize import huggingface
    from stylus_docs.normalize.raw import CIVITAI_MODEL, CIVITAI_VERSION, HF_MODEL, read_records

    seen: set[str] = set()
    for raw in files:
        for rec in read_records(raw):  # type: ignore[arg-type]
            payload = rec.payload
            if rec.error or not isinstance(payload, dict):
                continue
            if rec.kind == CIVITAI_MODEL:
                versions = payload.get("modelVersions")
                versions = versions if isinstance(versions, list) else []
                values = [v.get("baseModel") for v in versions if isinstance(v, dict)]
            elif rec.kind == CIVITAI_VERSION:
                values = [payload.get("baseModel")]
            elif rec.kind == HF_MODEL:
                try:
                    values = [huggingface.normalize_hf(payload).base_model]
                except (SkipRecord, TypeError, ValueError, KeyError, AttributeError):
                    continue
            else:
                continue
            seen.update(v.strip() for v in values if isinstance(v, str) and v.strip())
    return seen
