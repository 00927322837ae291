"""Make a tiny, randomly initialised Stable Diffusion pipeline and tiny LoRA files for it.

Nothing is downloaded: the weights are random (seeded) and the CLIP tokenizer is rebuilt offline from the
BPE vocabulary that ``open_clip_torch`` ships (``open_clip/bpe_simple_vocab_16e6.txt.gz``), the same way
OpenAI's CLIP ``SimpleTokenizer`` builds it. The pipeline has SD 1.5's layout (UNet with cross-attention,
KL VAE, CLIP text encoder, 49,408-token vocabulary) at toy width, so tests render 64×64 images on a CPU in
well under a second per image.

Usage::

    python scripts/make_tiny_models.py OUT

writes::

    OUT/pipeline/                      StableDiffusionPipeline.save_pretrained layout
    OUT/loras/tiny-diffusers.safetensors   diffusers/PEFT keys (UNet attention + text encoder)
    OUT/loras/tiny-kohya.safetensors       Kohya/A1111 keys (lora_unet_… / lora_te_…, with .alpha)
    OUT/loras/tiny-broken.safetensors      Kohya-style keys with wrong shapes (must fail to load)
    OUT/tiny_models.json                   what was made, with each file's SHA-256

The library never imports this script; tests reach it through ``tests/tiny_models.py``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Text-encoder width of the tiny pipeline (also the UNet's cross-attention width).
TINY_HIDDEN = 32
#: CLIP's vocabulary size: 256 bytes ×2 (with and without ``</w>``) + 48,894 merges + 2 special tokens.
CLIP_VOCAB_SIZE = 49408
#: Rank of the tiny LoRA files.
TINY_RANK = 4


@dataclass(frozen=True)
class TinyModels:
    """Paths of the tiny models made by :func:`make_tiny_models`.

    Args:
        root: The output directory.
        pipeline: Directory loadable with ``StableDiffusionPipeline.from_pretrained``.
        lora_diffusers: LoRA file in diffusers/PEFT key format.
        lora_kohya: LoRA file in Kohya/A1111 key format.
        lora_broken: A LoRA file whose tensors do not fit the tiny UNet.
        sha256: File name → lowercase hex SHA-256 of the three LoRA files.
    """

    root: Path
    pipeline: Path
    lora_diffusers: Path
    lora_kohya: Path
    lora_broken: Path
    sha256: dict[str, str]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's/GPT-2's reversible byte → printable-unicode table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Build CLIP's BPE vocabulary and merge list from the file shipped by ``open_clip_torch``.

    Returns:
        ``(vocab, merges)``: token → id (49,408 entries) and the merge lines (``"a b"``) in rank order.
    """
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # Same slice as CLIP's SimpleTokenizer: skip the version line, keep 49152-256-2 merges.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(_bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def make_clip_tokenizer(out_dir: Path):
    """Write a real CLIP tokenizer (vocab.json, merges.txt and the tokenizers files) to ``out_dir``."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=77
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def make_tiny_pipeline(seed: int = 0):
    """A randomly initialised SD 1.5-shaped ``StableDiffusionPipeline`` at toy width (not saved)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TINY_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TINY_HIDDEN,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    text_encoder = CLIPTextModel(text_config)
    return assemble_pipeline(unet, vae, text_encoder)


def assemble_pipeline(unet, vae, text_encoder):
    """A ``StableDiffusionPipeline`` around the given models: SD 1.5's scheduler settings, the offline CLIP
    tokenizer, no safety checker (random weights make nothing worth checking)."""
    import tempfile

    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_clip_tokenizer(Path(tmp))
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_sd15_shaped_pipeline(seed: int = 0, device: str = "cpu"):
    """SD 1.5's architecture (UNet, VAE, CLIP ViT-L text tower) with random weights, for GPU benchmarks.

    Built on ``device`` (initialising 1B parameters on a GPU is fast). Weight matrices are halved: plain
    random init overflows fp16 in the deep stacks, and the benchmarks must render finite images.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCAB_SIZE,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for param in module.parameters():
                if param.dim() > 1:
                    param.mul_(0.5)
    return assemble_pipeline(unet, vae, text_encoder)


def _unet_attention_linears(unet) -> list[tuple[str, object]]:
    """(module name, nn.Linear) of every attention projection a LoRA targets."""
    import torch

    wanted = ("to_q", "to_k", "to_v", "to_out.0")
    return [
        (name, mod)
        for name, mod in unet.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.endswith(wanted) and ".attn" in name
    ]


def _text_encoder_linears(text_encoder) -> list[tuple[str, object]]:
    import torch

    wanted = ("q_proj", "k_proj", "v_proj", "out_proj")
    return [
        (name, mod)
        for name, mod in text_encoder.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.endswith(wanted)
    ]


def _save_diffusers_lora(pipe, path: Path, seed: int) -> None:
    """LoRA on UNet attention and text-encoder attention, built with PEFT and saved by diffusers."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    # init_lora_weights=False keeps PEFT's random B (the default zero-inits B, which would change nothing).
    pipe.unet.add_adapter(
        LoraConfig(
            r=TINY_RANK,
            lora_alpha=TINY_RANK,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    # transformers' own ``add_adapter`` insists on a newer PEFT than diffusers does; inject directly.
    inject_adapter_in_model(
        LoraConfig(
            r=TINY_RANK,
            lora_alpha=TINY_RANK,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
            init_lora_weights=False,
        ),
        pipe.text_encoder,
    )
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    type(pipe).save_lora_weights(
        str(path.parent),
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=te_layers,
        weight_name=path.name,
        safe_serialization=True,
    )
    pipe.unet.delete_adapters("default")
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in pipe.text_encoder.modules():
        if isinstance(module, BaseTunerLayer):
            module.delete_adapter("default")


def _kohya_tensors(pipe, seed: int, rank: int, broken: bool = False) -> dict[str, object]:
    """Kohya/A1111 LoRA tensors for the pipeline's UNet and text encoder.

    With ``broken`` set, every down matrix gets the wrong input width, so loading must fail.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, modules in (
        ("lora_unet_", _unet_attention_linears(pipe.unet)),
        ("lora_te_", _text_encoder_linears(pipe.text_encoder)),
    ):
        for name, mod in modules:
            # Real Kohya text-encoder keys carry the "text_model" level that transformers 5 flattened away.
            key = prefix + (
                "text_model_" if prefix == "lora_te_" and not name.startswith("text_model") else ""
            )
            key += name.replace(".", "_")
            in_f = mod.in_features + (7 if broken else 0)
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(mod.out_features, rank, generator=gen) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return tensors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_tiny_models(out: str | os.PathLike[str], seed: int = 0) -> TinyModels:
    """Write the tiny pipeline and three tiny LoRA files under ``out`` (deterministic for a seed).

    Args:
        out: Output directory (created).
        seed: Seed of every random initialisation.

    Returns:
        The paths and the LoRA files' SHA-256 digests.
    """
    from safetensors.torch import save_file

    root = Path(out)
    pipe_dir = root / "pipeline"
    lora_dir = root / "loras"
    lora_dir.mkdir(parents=True, exist_ok=True)
    pipe = make_tiny_pipeline(seed)
    pipe.save_pretrained(pipe_dir, safe_serialization=True)
    make_clip_tokenizer(pipe_dir / "tokenizer")  # adds vocab.json/merges.txt beside tokenizer.json

    # Kohya files first: they read the plain nn.Linear layers, which PEFT wraps afterwards.
    lora_kohya = lora_dir / "tiny-kohya.safetensors"
    save_file(
        _kohya_tensors(pipe, seed + 11, TINY_RANK),
        str(lora_kohya),
        metadata={"ss_network_module": "networks.lora"},
    )
    lora_broken = lora_dir / "tiny-broken.safetensors"
    save_file(_kohya_tensors(pipe, seed + 12, TINY_RANK, broken=True), str(lora_broken))
    lora_diffusers = lora_dir / "tiny-diffusers.safetensors"
    _save_diffusers_lora(pipe, lora_diffusers, seed + 10)

    sha = {p.name: _sha256(p) for p in (lora_diffusers, lora_kohya, lora_broken)}
    made = TinyModels(root, pipe_dir, lora_diffusers, lora_kohya, lora_broken, sha)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(made).items()}
    (root / "tiny_models.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    args = parser.parse_args(argv)
    made = make_tiny_models(args.out, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in asdict(made).items() if k != "sha256"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
