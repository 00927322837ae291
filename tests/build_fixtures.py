# ruff: noqa: E501 - API fixture literals read best one record field per line as the API sends it
"""Small hand-written raw items of every era and helpers to lay them out as crawl snapshots."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

SHA = "9F3B38BF660E91B464C5A25D790F53EB876AC8CF17B479974D426B9732ACAC56"


def model_2023(
    mid: int,
    vid: int,
    name: str,
    *,
    tags: list[str] | None = None,
    nsfw: bool = False,
    description: str = "<p>Turns photos into <b>ink</b> drawings.</p><p>Use weight 0.6-0.8.</p>",
    file_name: str = "inkdraw.safetensors",
    prompt_weight: float | None = 0.7,
) -> dict[str, Any]:
    """A 2023-era /models item (string allowCommercialUse, images with nsfw strings and meta)."""
    prompt = (
        f"inkdraw, a cat on a roof <lora:{file_name.rsplit('.', 1)[0]}:{prompt_weight}>"
        if prompt_weight
        else "inkdraw, a cat on a roof"
    )
    return {
        "id": mid, "name": name, "description": description, "type": "LORA", "poi": False, "nsfw": nsfw,
        "allowNoCredit": True, "allowCommercialUse": "Sell", "allowDerivatives": True,
        "allowDifferentLicense": True,
        "stats": {"downloadCount": 100, "favoriteCount": 5, "commentCount": 1, "ratingCount": 3, "rating": 4.5},
        "creator": {"username": "maker", "image": None}, "tags": tags or ["style", "ink"],
        "modelVersions": [{
            "id": vid, "modelId": mid, "name": "v1.0", "createdAt": "2023-03-01T10:00:00.000Z",
            "updatedAt": "2023-03-02T10:00:00.000Z", "trainedWords": ["inkdraw"], "baseModel": "SD 1.5",
            "earlyAccessTimeFrame": 0, "description": None,
            "stats": {"downloadCount": 90, "ratingCount": 3, "rating": 4.5},
            "files": [{"name": file_name, "id": vid * 10, "sizeKB": 1024.5, "type": "Model",
                       "metadata": {"fp": "fp16", "size": "full", "format": "SafeTensor"},
                       "hashes": {"AutoV2": SHA[:10], "SHA256": SHA},
                       "downloadUrl": f"https://civitai.com/api/download/models/{vid}?token=SECRET123",
                       "primary": True}],
            "images": [
                {"id": vid * 100 + 1, "url": f"https://image.civitai.com/x/aaaaaaaa-bbbb-cccc-dddd-{vid:012d}/width=450/1.jpeg",
                 "nsfw": "None", "width": 512, "height": 768, "hash": "U",
                 "meta": {"prompt": prompt, "negativePrompt": "lowres", "seed": "42", "steps": 20,
                          "sampler": "Euler a", "cfgScale": 7, "Size": "512x768"}},
                {"id": vid * 100 + 2, "url": f"https://image.civitai.com/x/eeeeeeee-bbbb-cccc-dddd-{vid:012d}/width=450/2.jpeg",
                 "nsfw": "X", "width": 512, "height": 768, "hash": "U", "meta": {"prompt": "nsfw prompt"}},
            ],
            "downloadUrl": f"https://civitai.com/api/download/models/{vid}",
        }],
    }  # fmt: skip


def model_2025(mid: int, vid: int, commercial: Any = "{Image,RentCivit}") -> dict[str, Any]:
    """A 2025-era /models item: arrays / Postgres literal, nsfwLevel ints, images without meta."""
    return {
        "id": mid, "name": "Storybook Style", "description": "<h3>Storybook</h3><p>Soft pastel storybook art.</p>"
        "<script>alert(1)</script>", "allowNoCredit": True, "allowCommercialUse": commercial,
        "allowDerivatives": True, "allowDifferentLicense": True, "type": "LoCon", "nsfw": False, "nsfwLevel": 1,
        "stats": {"downloadCount": 2183, "favoriteCount": 0, "thumbsUpCount": 416, "ratingCount": 0, "rating": 0},
        "creator": {"username": "PixelPaws", "image": None}, "tags": ["style", "storybook"],
        "modelVersions": [{
            "id": vid, "index": 0, "name": "v1.0", "baseModel": "Flux.1 D", "publishedAt": "2025-02-08T11:29:04.487",
            "nsfwLevel": 1, "trainedWords": ["ppstorybook"],
            "stats": {"downloadCount": 2183, "thumbsUpCount": 416, "ratingCount": 0, "rating": 0},
            "files": [{"id": 5, "sizeKB": 18829.1, "name": "pp-storybook.safetensors", "type": "Model",
                       "metadata": {"format": "SafeTensor"}, "hashes": {"SHA256": SHA.replace("9", "8")},
                       "downloadUrl": f"https://civitai.com/api/download/models/{vid}", "primary": True}],
            "images": [{"url": f"https://image.civitai.com/x/11111111-2222-3333-4444-{vid:012d}/original=true/a.jpeg",
                        "nsfwLevel": 1, "width": 832, "height": 1216, "type": "image", "hasMeta": True}],
            "downloadUrl": f"https://civitai.com/api/download/models/{vid}",
        }],
    }  # fmt: skip


def version_2025(mid: int, vid: int) -> dict[str, Any]:
    """The matching /model-versions response with meta and an attached ``_images`` item."""
    return {
        "id": vid, "modelId": mid, "name": "v1.0", "baseModel": "Flux.1 D", "trainedWords": ["ppstorybook"],
        "publishedAt": "2025-02-08T11:29:04.487Z", "model": {"name": "Storybook Style", "type": "LoCon", "nsfw": False},
        "files": [{"name": "pp-storybook.safetensors", "primary": True, "type": "Model",
                   "hashes": {"SHA256": SHA.replace("9", "8")}, "metadata": {"format": "SafeTensor"}}],
        "images": [{"url": f"https://image.civitai.com/x/11111111-2222-3333-4444-{vid:012d}/width=450/a.jpeg",
                    "nsfwLevel": 1, "meta": {"prompt": "ppstorybook, a fox <lora:pp-storybook:0.9>", "seed": 7}}],
        "_images": [{"id": 99, "url": f"https://image.civitai.com/x/99999999-2222-3333-4444-{vid:012d}/width=450/b.jpeg",
                     "nsfwLevel": "None", "meta": {"id": 99, "meta": {"prompt": "ppstorybook, a bear", "steps": "30"}}}],
    }  # fmt: skip


HF_CARD = """---
tags:
- text-to-image
- lora
widget:
- text: 'Icon Kit, a yellow jar'
  output:
    url: images/1.png
base_model: black-forest-labs/FLUX.1-dev
instance_prompt: Icon Kit
license: creativeml-openrail-m
---
![x](https://cdn.example/x.png)

<Gallery />

# Model description

Flat **icon** illustrations on bright backgrounds.

```python
pipe.load_lora_weights("x")
```
"""


def hf_record(repo: str = "someone/icon-kit-lora", sha: str = "abc123") -> dict[str, Any]:
    """An HF crawl record with a front-matter card."""
    return {"item": {"id": repo, "sha": sha, "author": repo.split("/")[0], "likes": 3, "downloads": 40,
                     "tags": ["lora", "safetensors", "base_model:adapter:black-forest-labs/FLUX.1-dev"],
                     "createdAt": "2024-05-01T00:00:00.000Z",
                     "siblings": [{"rfilename": "README.md"}, {"rfilename": "icon-kit.safetensors"}]},
            "card": HF_CARD, "card_error": None}  # fmt: skip


def write_jsonl_gz(path: Path, items: list[Any], raw_lines: list[str] | None = None) -> Path:
    """Write items (plus raw, possibly broken, lines) as a gzip JSONL chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
        for line in raw_lines or []:
            handle.write(line + "\n")
    return path


def snapshot(
    root: Path,
    models: list[dict[str, Any]],
    versions: list[dict[str, Any]] | None = None,
    hf: list[dict[str, Any]] | None = None,
    bad_lines: list[str] | None = None,
) -> Path:
    """Lay items out as a crawl OUT dir (COMMON.md contract 1)."""
    write_jsonl_gz(root / "civitai" / "models-00000.jsonl.gz", copy.deepcopy(models), bad_lines)
    if versions:
        write_jsonl_gz(root / "civitai" / "versions-00000.jsonl.gz", copy.deepcopy(versions))
    if hf:
        write_jsonl_gz(root / "hf" / "models-00000.jsonl.gz", copy.deepcopy(hf))
    (root / "state.json").write_text("{}")
    return root


def sample_snapshot(root: Path, sample: Path) -> Path:
    """The bundled sample corpus (data/sample) as a crawl snapshot: models as-is, HF items with cards."""
    models = [
        json.loads(line) for line in (sample / "civitai" / "models.jsonl").read_text().splitlines() if line
    ]
    hf = []
    for line in (sample / "hf" / "models.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        card_path = sample / "hf" / "cards" / (item["id"].replace("/", "__") + ".md")
        alt = list((sample / "hf" / "cards").glob(item["id"].split("/")[-1] + "*"))
        card = card_path.read_text() if card_path.exists() else (alt[0].read_text() if alt else None)
        hf.append({"item": item, "card": card, "card_error": None if card else "missing"})
    return snapshot(root, models, hf=hf)
