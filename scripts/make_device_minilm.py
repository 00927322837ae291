#!/usr/bin/env python3
"""Pack all-MiniLM-L6-v2 small enough to carry to the air-gapped GPU machine, and unpack it there.

The device machine cannot download models and takes at most 64 MiB of working tree, wheels included;
the model's float32 ``model.safetensors`` is 91 MB. ``pack`` keeps every encoder weight (as float16)
but zeroes the word-embedding rows of tokens that no text in the given source files uses, so the
lzma-compressed file is ~20 MB. For any text made of those files' words (the GPU compose benchmark's
prompt and topic cards) the vectors equal the real model's up to float16 rounding, and the shapes —
hence the timings — are the real ones. ``unpack`` writes a float32 sentence-transformers folder;
point ``STYLUS_DOCS_MINILM_DIR`` at it.

    python scripts/make_device_minilm.py pack --out .devcarry/minilm scripts/gpu_compose_bench.py ...
    python3 scripts/make_device_minilm.py unpack .devcarry/minilm /tmp/minilm   # on the device
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
         "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")  # fmt: skip
WORD = "embeddings.word_embeddings.weight"


def pack(sources: list[Path], out: Path) -> None:
    from safetensors.numpy import load_file, save
    from tokenizers import Tokenizer

    from stylus_docs.embedding import default_minilm_dir

    model = default_minilm_dir()
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    # Ids below 1000 are BERT's special and [unusedN] tokens ([PAD], [CLS], [SEP], …): always kept.
    used = {i for line in text.splitlines() for i in tok.encode(line).ids} | set(range(0, 1000))
    weights = load_file(str(model / "model.safetensors"))
    keep = np.zeros(weights[WORD].shape[0], dtype=bool)
    keep[sorted(used)] = True
    weights[WORD] = np.where(keep[:, None], weights[WORD], 0.0)
    blob = save({k: v.astype(np.float16) for k, v in weights.items()})
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.f16.safetensors.xz").write_bytes(lzma.compress(blob, preset=6))
    for name in FILES:
        if (model / name).exists():
            shutil.copy2(model / name, out / name)
    (out / "1_Pooling").mkdir(exist_ok=True)
    shutil.copy2(model / "1_Pooling" / "config.json", out / "1_Pooling" / "config.json")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {int(keep.sum())} of {len(keep)} vocabulary rows into {out} ({size / 1e6:.1f} MB)")


def unpack(src: Path, dest: Path) -> None:
    from safetensors.numpy import load, save_file

    weights = load(lzma.decompress((src / "model.f16.safetensors.xz").read_bytes()))
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in weights.items()}, str(dest / "model.safetensors"))
    for path in src.rglob("*"):
        if path.is_file() and path.name != "model.f16.safetensors.xz":
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    print(f"unpacked to {dest}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("sources", type=Path, nargs="+", help="files whose words must embed exactly")
    u = sub.add_parser("unpack")
    u.add_argument("src", type=Path)
    u.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(args.sources, args.out)
    else:
        unpack(args.src, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
