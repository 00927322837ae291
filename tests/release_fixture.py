"""Write a small, hand-made StylusDocs release in the exact release format (COMMON.md contract 2).

Used by the query tests and by other consumers' tests (compose). Embeddings are real: the default
MiniLM query encoder embeds the paper's text template, so dense ranking behaves as it would on a real
build. Everything goes through the build stage's writer (``stylus_docs.writer``: explicit schema from
``schemas/``, page checksums, validated manifest, ``release.publish``).

Usage::

    from tests.release_fixture import write_release
    build_dir = write_release(tmp_path / "docs")
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from stylus_docs import release

DIM = 384
#: What the build stage (stylus_docs.embedding.embedder_info("minilm")) writes to the manifest.
EMBEDDER_INFO = {
    "name": "minilm",
    "model": "all-MiniLM-L6-v2",
    "version": "v3",
    "dim": DIM,
    "normalized": True,
}


# (id, title, type, base_model, category, tags, triggers, description, example prompts, nsfw, downloads)
SAMPLE: list[tuple[Any, ...]] = [
    (
        "civitai:101@1001",
        "Ink Wash Hanfu",
        "LORA",
        "SD 1.5",
        "clothing",
        ["clothing", "chinese"],
        ["hnfu_style"],
        "Traditional Chinese hanfu robes painted in an ink wash style.",
        ["masterpiece, 1girl, hanfu, ink wash, mountains", "hnfu_style, woman in silk robe"],
        False,
        5200,
    ),
    (
        "civitai:102@1002",
        "Fire Dragon",
        "LORA",
        "SD 1.5",
        "concept",
        ["dragon", "fantasy"],
        ["drgnfire"],
        "Huge winged dragons breathing flames over medieval fortresses.",
        ["drgnfire, dragon over a castle, epic", "red dragon, flames, night sky"],
        False,
        9100,
    ),
    (
        "civitai:103@1003",
        "Welsh Corgi",
        "LORA",
        "SD 1.5",
        "animal",
        ["animal", "dog"],
        ["corgidog"],
        "Short-legged Pembroke Welsh corgi dogs with fluffy coats.",
        ["corgidog sitting on grass", "corgidog running on a beach"],
        False,
        3000,
    ),
    (
        "civitai:104@1004",
        "Graffiti Wall Art",
        "LORA",
        "SD 1.5",
        "style",
        ["style", "street art"],
        ["grffti"],
        "Spray paint murals and street art tags on brick walls.",
        ["grffti, colorful mural on a brick wall", "grffti lettering, urban alley"],
        False,
        800,
    ),
    (
        "civitai:105@1005",
        "Neon Cyberpunk City",
        "LORA",
        "SDXL 1.0",
        "background",
        ["background", "scifi"],
        ["cybrcty"],
        "Rainy futuristic megacity streets lit by neon signs at night.",
        ["cybrcty, neon street, rain", "cybrcty skyline, flying cars"],
        False,
        12000,
    ),
    (
        "civitai:106@1006",
        "Soft Watercolor",
        "LoCon",
        "SD 1.5",
        "style",
        ["style", "painting"],
        ["wtrclr"],
        "Delicate watercolor painting with soft washes of pigment on paper.",
        ["wtrclr, landscape with a lake", "wtrclr portrait of a cat"],
        False,
        450,
    ),
    (
        "civitai:107@1007",
        "Boudoir Lingerie",
        "LORA",
        "SD 1.5",
        "clothing",
        ["clothing", "lingerie"],
        ["bdrlng"],
        "Lace lingerie outfits for boudoir photography.",
        ["bdrlng, woman in lace lingerie", "bdrlng, bedroom photo"],
        True,
        20000,
    ),
    (
        "hf:acme/retro-cars@abc123",
        "Vintage Cars",
        "LORA",
        "SD 1.5",
        "vehicle",
        ["vehicle", "car"],
        ["vntgcar"],
        "Classic automobiles from the 1950s with chrome bumpers.",
        ["vntgcar, red convertible on a road", "vntgcar parked by a diner"],
        False,
        60,
    ),
    (
        "civitai:109@1009",
        "Astronaut in Space",
        "LORA",
        "SD 1.5",
        "concept",
        ["space", "astronaut"],
        ["astrnt"],
        "Astronauts floating in orbit with the Earth behind them.",
        ["astrnt, spacewalk, earth in background", "astrnt on the moon"],
        False,
        5,
    ),
    (
        "civitai:110@1010",
        "Anime Portrait",
        "LORA",
        "SD 1.5",
        "character",
        ["character", "anime"],
        ["anmprt"],
        "Clean anime-style character portraits with big eyes.",
        ["anmprt, 1girl, blue hair, smile", "anmprt, boy with glasses"],
        False,
        7000,
    ),
]



def sample_rows(embed: bool = True) -> list[dict[str, Any]]:
    """Rows of :data:`SAMPLE` with every column of the contract filled in."""
    rows = []
    for aid, title, typ, base, cat, tags, trig, desc, prompts, nsfw, dl in SAMPLE:
        source = aid.split(":", 1)[0]
        model_id, version_id = aid.split(":", 1)[1].split("@")
        rows.append(
            {
                "adapter_id": aid,
                "source": source,
                "model_id": model_id,
                "version_id": version_id,
                "title": title,
                "version_name": "v1.0",
                "type": typ,
                "base_model": base,
                "tags": tags,
                "trigger_words": trig,
                "description": desc,
                "example_prompts": prompts,
                "refined_description": desc,
                "category": cat,
                "recommended_weight": 0.8,
                "nsfw": nsfw,
                "nsfw_level": 8 if nsfw else 1,
                "creator": "tester",
                "downloads": dl,
                "likes": dl // 10,
                "rating": None,
                "license_commercial": ["Image"],
                "allow_no_credit": True,
                "allow_derivatives": True,
                "file_name": f"{title.replace(' ', '_')}.safetensors",
                "file_size_kb": 1024.0,
                "sha256": "0" * 64,
                "download_url": f"https://example.invalid/{version_id}",
                "published_at": None,
                "card_url": f"https://example.invalid/models/{model_id}",
                "content_hash": f"h{version_id}",
                "refiner": "extractive.v1",
                "embedder": "minilm:all-MiniLM-L6-v2@v3",
                "embedding": None,
                "render_status": "not_rendered",
            }
        )
    if embed:
        from stylus_docs.embedding import NumpyMiniLM, embed_cards

        vecs = embed_cards(NumpyMiniLM(), rows)  # the build's card vectors, with the query-side encoder
        for r, v in zip(rows, vecs, strict=True):
            r["embedding"] = v.tolist()
    return rows


def write_release(
    docs: Path,
    rows: list[dict[str, Any]] | None = None,
    *,
    shards: int = 2,
    embedder_info: dict[str, Any] | None = None,
    build_id: str | None = None,
) -> Path:
    """Write a complete build under ``docs/builds/<id>/`` and publish it; return the build dir."""
    from stylus_docs import writer

    rows = sample_rows() if rows is None else rows
    info = dict(EMBEDDER_INFO if embedder_info is None else embedder_info)
    dim = int(info["dim"])
    bid = build_id or release.new_build_id()
    build = release.build_path(docs, bid)
    build.mkdir(parents=True)
    parts = [rows[i::shards] for i in range(shards)] if rows else [[]]
    files = [
        writer.write_parquet_shard(build, "adapters", i, len(parts), part, dim)
        for i, part in enumerate(parts)
    ]
    images = [
        {
            "adapter_id": r["adapter_id"], "image_id": f"img{j}-{r['version_id']}", "origin": "example",
            "url": f"https://example.invalid/{r['version_id']}/{j}.png", "path": None, "prompt": p,
            "negative_prompt": "lowres", "seed": 1234 + j, "steps": 25, "sampler": "Euler a",
            "cfg_scale": 7.0, "width": 512, "height": 512, "nsfw_level": r["nsfw_level"],
            "lora_weights": json.dumps({r["title"]: 0.8}), "with_adapter": None, "weight": None,
            "scheduler": None,
        }
        for r in rows
        for j, p in enumerate(r["example_prompts"])
    ]  # fmt: skip
    files.append(writer.write_parquet_shard(build, "images", 0, 1, images))
    files.append(writer.write_dead_letters(build, []))
    manifest = {
        "schema_version": release.SCHEMA_VERSION,
        "build_id": bid,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [{"path": "fixture", "sha256": "0" * 64}],
        "refiner": {"name": "extractive", "version": "v1", "model": "none"},
        "embedder": info,
        "counts": {
            "input": len(rows), "written": len(rows), "filtered": {}, "dead_letter": {}, "reused": 0,
            "refined": len(rows), "embedded": len(rows),
        },
        "files": files,
    }  # fmt: skip
    writer.finalize_build(docs, bid, manifest, keep=100)
    return build


def random_unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Random L2-normalised float32 vectors (for synthetic benchmarks)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
