"""Benchmark of the render stage: adapters per hour and where the time goes (issue 5, part 4).

Full size (default, CUDA): an SD 1.5-shaped pipeline with random weights (UNet 320/640/1280/1280,
cross-attention 768, KL VAE 128/256/512/512, CLIP ViT-L text encoder, real CLIP tokenizer built offline),
fp16, 512×512, 25 steps, 4 probe prompts at batch 4, rank-32 Kohya LoRAs on every attention projection of
the UNet and the text encoder. ``--tiny``: the tiny test pipeline on the CPU (64×64, 2 steps) — this is
how the script itself is tested where there is no GPU.

Modes, each over the same adapters, measured in the same run:

* ``fused``       – the production path (:class:`~stylus_docs.render.worker.AdapterRenderer`, fuse on,
                    no-adapter renders shared between adapters with the same probe prompts);
* ``unfused``     – the same with fuse off;
* ``no_share``    – fused, but every adapter renders its own no-adapter images (baseline cache off);
* ``hotswap``     – diffusers LoRA hotswap: one resident adapter slot, ``load_lora_weights(hotswap=True)``
                    replaces its weights in place (unfused renders);
* ``merge``       – the adapter's delta ``up @ down · alpha/rank · w`` added straight into the base weights,
                    which are restored afterwards from a resident copy (no PEFT layers at all).

Usage::

    python scripts/gpu_render_bench.py --out /tmp/bench.json              # CUDA, full size
    python scripts/gpu_render_bench.py --tiny --adapters 3 --out x.json   # CPU smoke run
    python scripts/gpu_render_bench.py --tiny --write-benchmarks          # CPU figures → BENCHMARKS.md

Prints a JSON report; ``--write-benchmarks`` replaces the ``render`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "a portrait of an old fisherman, sks style, detailed",
    "a castle on a hill at sunset, sks style",
    "a bowl of fruit on a wooden table, sks style",
    "a city street in the rain at night, sks style",
]


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_models", ROOT / "scripts" / "make_tiny_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_tiny_models", module)
    spec.loader.exec_module(module)
    return module


def full_size_pipeline(device: str, dtype: Any) -> Any:
    """SD 1.5's architecture with random weights (``make_tiny_models.make_sd15_shaped_pipeline``)."""
    return _maker().make_sd15_shaped_pipeline(0, device).to(device=device, dtype=dtype)


def write_adapters(pipe: Any, out: Path, count: int, rank: int) -> list[Path]:
    """``count`` random Kohya-format LoRA files (UNet + text-encoder attention) for ``pipe``."""
    import torch
    from safetensors.torch import save_file

    maker = _maker()
    paths = []
    for i in range(count):
        tensors = maker._kohya_tensors(pipe, seed=100 + i, rank=rank)
        # Scale like a trained LoRA (small deltas), stored in fp16 like real files.
        tensors = {k: (v * 0.1 if "lora_" in k else v).to(torch.float16) for k, v in tensors.items()}
        path = out / f"bench-{i}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _card(i: int, path: Path) -> dict[str, Any]:
    import hashlib

    return {
        "adapter_id": f"bench:{i}@1",
        "title": f"bench {i}",
        "example_prompts": PROMPTS,
        "trigger_words": ["sks style"],
        "recommended_weight": 0.8,
        "download_url": "http://127.0.0.1:9/unused",  # files are put in the cache up front
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "file_name": path.name,
        "base_model": "SD 1.5",
    }


def run_renderer_mode(
    pipe: Any, cards: list[dict], args: argparse.Namespace, work: Path, *, fuse: bool, share: bool
) -> dict[str, Any]:
    """Render every card with the production worker; per-phase seconds per adapter."""
    from stylus_docs.render import AdapterRenderer, RenderConfig

    cfg = RenderConfig(
        pipeline="<resident>",
        out_dir=str(work / f"out-{fuse}-{share}"),
        cache_dir=str(work / "cache"),
        device=args.device,
        prompts_per_adapter=args.prompts,
        steps=args.steps,
        width=args.size,
        height=args.size,
        batch_size=args.batch,
        fuse=fuse,
        baseline_cache_size=256 if share else 0,
    )
    renderer = AdapterRenderer(cfg, pipe=pipe)
    per_adapter = []
    statuses = []
    for card in cards:
        _sync(args.device)
        t0 = time.perf_counter()
        res = renderer.render_card(card)
        _sync(args.device)
        per_adapter.append(time.perf_counter() - t0)
        statuses.append(res.status)
    total = sum(per_adapter)
    phases = {k: v / len(cards) for k, v in sorted(renderer.timings.items())}
    return {
        "statuses": statuses,
        "seconds_per_adapter_median": statistics.median(per_adapter),
        "seconds_per_adapter_mean": total / len(cards),
        "adapters_per_hour": 3600.0 * len(cards) / total,
        "phase_seconds_per_adapter": phases,
        "phase_share": {k: v * len(cards) / total for k, v in phases.items()},
    }


def _render(pipe: Any, args: argparse.Namespace, prompts: list[str]) -> Any:
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(prompts), args.batch):
            chunk = prompts[s : s + args.batch]
            gens = [torch.Generator("cpu").manual_seed(1234 + s + i) for i in range(len(chunk))]
            out.extend(
                pipe(
                    prompt=chunk,
                    num_inference_steps=args.steps,
                    width=args.size,
                    height=args.size,
                    generator=gens,
                    output_type="np",
                ).images
            )
    return out


def run_hotswap_mode(pipe: Any, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """diffusers hotswap: one adapter slot whose weights are replaced in place (renders unfused).

    diffusers hotswaps UNet adapters only, so this mode uses UNet-only copies of the files.
    """
    from safetensors.torch import load_file, save_file

    unet_only = []
    for path in paths:
        copy = path.with_name(f"unet-only-{path.name}")
        save_file({k: v for k, v in load_file(str(path)).items() if k.startswith("lora_unet_")}, str(copy))
        unet_only.append(copy)
    paths = unet_only
    pipe.enable_lora_hotswap(target_rank=args.rank)
    loads, renders = [], []
    try:
        for i, path in enumerate(paths):
            _sync(args.device)
            t0 = time.perf_counter()
            pipe.load_lora_weights(str(path), adapter_name="slot", hotswap=i > 0)
            pipe.set_adapters(["slot"], [0.8])
            _sync(args.device)
            t1 = time.perf_counter()
            _render(pipe, args, PROMPTS[: args.prompts])
            _sync(args.device)
            loads.append(t1 - t0)
            renders.append(time.perf_counter() - t1)
    finally:
        pipe.unload_lora_weights()
    steady = loads[1:] or loads
    return {
        "note": "UNet-only adapters (diffusers hotswap does not cover text encoders)",
        "first_load_s": loads[0],
        "hotswap_load_s_median": statistics.median(steady),
        "render_with_s_median": statistics.median(renders),
        "adapters_per_hour_with_renders_only": 3600.0
        / (statistics.median(steady) + statistics.median(renders)),
    }


def run_merge_mode(pipe: Any, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Merge ``up @ down · alpha/rank · w`` into the base weights; restore from a resident copy."""
    import torch
    from safetensors.torch import load_file

    maker = _maker()
    targets = {}
    for prefix, modules in (
        ("lora_unet_", maker._unet_attention_linears(pipe.unet)),
        ("lora_te_", maker._text_encoder_linears(pipe.text_encoder)),
    ):
        for name, mod in modules:
            key = prefix + (
                "text_model_" if prefix == "lora_te_" and not name.startswith("text_model") else ""
            )
            targets[key + name.replace(".", "_")] = mod
    pristine = {k: m.weight.detach().clone() for k, m in targets.items()}
    loads, merges, renders, restores = [], [], [], []
    for path in paths:
        _sync(args.device)
        t0 = time.perf_counter()
        sd = load_file(str(path), device=args.device)
        _sync(args.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            for key, mod in targets.items():
                down, up = sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"]
                scale = float(sd[f"{key}.alpha"]) / down.shape[0] * 0.8
                mod.weight.add_((up.float() @ down.float()).mul_(scale).to(mod.weight.dtype))
        _sync(args.device)
        t2 = time.perf_counter()
        _render(pipe, args, PROMPTS[: args.prompts])
        _sync(args.device)
        t3 = time.perf_counter()
        with torch.no_grad():
            for key, mod in targets.items():
                mod.weight.copy_(pristine[key])
        _sync(args.device)
        t4 = time.perf_counter()
        loads.append(t1 - t0)
        merges.append(t2 - t1)
        renders.append(t3 - t2)
        restores.append(t4 - t3)
    per = (
        statistics.median(loads)
        + statistics.median(merges)
        + statistics.median(renders)
        + statistics.median(restores)
    )
    return {
        "read_s_median": statistics.median(loads),
        "merge_s_median": statistics.median(merges),
        "render_with_s_median": statistics.median(renders),
        "restore_s_median": statistics.median(restores),
        "adapters_per_hour_with_renders_only": 3600.0 / per,
    }


def base_batch_seconds(pipe: Any, args: argparse.Namespace, repeats: int) -> float:
    """Median seconds of one batch of ``args.batch`` base renders (after a warm-up)."""
    prompts = (PROMPTS * args.batch)[: args.batch]
    _render(pipe, args, prompts)
    times = []
    for _ in range(repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        _render(pipe, args, prompts)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny pipeline on the CPU (smoke run)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--adapters", type=int, default=None, help="adapters per mode (default 8, tiny 3)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 32, tiny 4)")
    parser.add_argument("--modes", default="fused,unfused,no_share,hotswap,merge")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="replace BENCHMARKS.md's render section"
    )
    parser.add_argument(
        "--from-json", type=Path, help="write the BENCHMARKS.md section from a report made on the device"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        write_benchmarks_section(json.loads(args.from_json.read_text(encoding="utf-8")))
        return 0

    import torch

    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.adapters = args.adapters or (3 if args.tiny else 8)
    args.rank = args.rank or (4 if args.tiny else 32)
    args.size, args.steps = (64, 2) if args.tiny else (512, 25)
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --tiny for a CPU run", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "layout": "tiny" if args.tiny else "sd15-random",
        "device": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "steps": args.steps,
        "prompts": args.prompts,
        "batch": args.batch,
        "rank": args.rank,
        "adapters": args.adapters,
    }
    t0 = time.perf_counter()
    if args.tiny:
        pipe = _maker().make_tiny_pipeline(0).to(args.device)
    else:
        pipe = full_size_pipeline(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    report["pipeline_build_s"] = time.perf_counter() - t0

    from stylus_docs.download import AdapterCache

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_adapters(pipe, work, args.adapters, args.rank)
        report["adapter_file_mb"] = paths[0].stat().st_size / 1e6
        cache = AdapterCache(work / "cache")
        cards = [_card(i, cache.add_file(p)) for i, p in enumerate(paths)]
        report["base_batch_s"] = base_batch_seconds(pipe, args, repeats=3)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        results: dict[str, Any] = {}
        for mode in modes:
            t0 = time.perf_counter()
            try:
                if mode == "fused":
                    results[mode] = run_renderer_mode(pipe, cards, args, work, fuse=True, share=True)
                elif mode == "unfused":
                    results[mode] = run_renderer_mode(pipe, cards, args, work, fuse=False, share=True)
                elif mode == "no_share":
                    results[mode] = run_renderer_mode(pipe, cards, args, work, fuse=True, share=False)
                elif mode == "hotswap":
                    results[mode] = run_hotswap_mode(pipe, paths, args)
                elif mode == "merge":
                    results[mode] = run_merge_mode(pipe, paths, args)
                else:
                    results[mode] = {"error": "unknown mode"}
            except Exception as exc:  # noqa: BLE001 - one failing alternative must not lose the other figures
                results[mode] = {
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                    "traceback": traceback.format_exc()[-1500:],
                }
            results[mode]["mode_wall_s"] = time.perf_counter() - t0
            print(f"{mode}: {json.dumps(results[mode], default=float)[:400]}", file=sys.stderr, flush=True)
        report["modes"] = results
    if "fused" in report["modes"] and "unfused" in report["modes"]:
        f, u = report["modes"]["fused"], report["modes"]["unfused"]
        if "adapters_per_hour" in f and "adapters_per_hour" in u:
            report["fused_over_unfused"] = f["adapters_per_hour"] / u["adapters_per_hour"]
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    if args.write_benchmarks:
        write_benchmarks_section(report)
    return 0


def _fmt_mode(name: str, m: dict[str, Any]) -> str:
    if "error" in m:
        return f"| {name} | failed: {m['error'][:80]} | | |"
    if "adapters_per_hour" in m:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in m["phase_share"].items() if v >= 0.005)
        return f"| {name} | {m['adapters_per_hour']:.0f} | {m['seconds_per_adapter_median']:.3f} | {shares} |"
    per = 3600.0 / m["adapters_per_hour_with_renders_only"]
    detail = ", ".join(f"{k} {v:.3f}s" for k, v in m.items() if k.endswith("_median") or k == "first_load_s")
    rate = m["adapters_per_hour_with_renders_only"]
    return f"| {name} (with-adapter renders only) | {rate:.0f} | {per:.3f} | {detail} |"


def write_benchmarks_section(report: dict[str, Any]) -> None:
    """Replace the ``render`` (tiny) or ``render-gpu`` section of BENCHMARKS.md (created if missing)."""
    name = "render" if report["layout"] == "tiny" else "render-gpu"
    lines = [
        f"<!-- bench:{name} -->",
        "## render" + ("" if report["layout"] == "tiny" else " (GPU)"),
        "",
        f"`scripts/gpu_render_bench.py{' --tiny' if report['layout'] == 'tiny' else ''}` — layout "
        f"{report['layout']}, device {report['device']} ({report['torch_threads']} torch threads), "
        f"{report['dtype']}, "
        f"{report['size']}×{report['size']}, {report['steps']} steps, {report['prompts']} prompts × "
        f"(with + without) per adapter at batch {report['batch']}, rank-{report['rank']} LoRAs "
        f"({report['adapter_file_mb']:.2f} MB), {report['adapters']} adapters per mode; "
        "one run, medians per adapter.",
        "",
        f"Base batch of {report['batch']}: {report['base_batch_s']:.3f} s (median of 3).",
        "",
        "| mode | adapters/hour | s/adapter (median) | share of time / phases |",
        "| --- | --- | --- | --- |",
    ]
    for mode, m in report["modes"].items():
        lines.append(_fmt_mode(mode, m))
    if "fused_over_unfused" in report:
        lines += ["", f"Fused / unfused throughput: {report['fused_over_unfused']:.2f}×."]
    if report["layout"] == "tiny":
        lines += [
            "",
            "CPU figures of the tiny test pipeline only: they check that the script and the render path "
            "work and show the relative cost of the phases on a toy model. GPU figures: section "
            "`render-gpu` (`scripts/device_gpu_checks.sh`).",
        ]
    lines.append(f"<!-- /bench:{name} -->")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmarks_md import replace_section

    replace_section(name, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
