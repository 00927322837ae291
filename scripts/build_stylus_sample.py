#!/usr/bin/env python3
"""`make stylus-sample`: the whole Stylus build on the bundled sample, on CPU, with no GPU and no key.

What runs is the real CLI, stage for stage as on a GPU box with a real VLM:

    crawl (replay server) → normalize → filter → reuse → download → render → refine (VLM) → embed → write

and only the remote parts are stand-ins on loopback:

* the Civitai/Hugging Face APIs: ``scripts/replay_server.py`` over ``data/sample``, whose Civitai image
  URLs are pointed at the replay server's ``/img/`` route (``--image-hosts`` lets the build fetch them);
* the adapter weights: the sample's real LoRA files are not in the repository (gigabytes), so every
  Civitai version's primary file is replaced by one of the tiny LoRA files of
  ``scripts/make_tiny_models.py`` (diffusers, Kohya and a deliberately broken one, in turn), served by a
  loopback file server, with the card's SHA-256 set to that file's, so the download stage verifies
  real bytes and the render stage loads real tensors (the broken file shows ``load_failed``);
* the diffusion model: the tiny random-weight Stable Diffusion pipeline of the same script;
* the VLM: the test suite's OpenAI-compatible fake (``tests/fakes/openai_server.py``), which answers
  with a description saying how many rendered and example images it was shown.

Prints the build summary (counts, render statuses, seconds by step) and how many VLM requests carried
renders. Run ``--help`` for the flags.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
from _scriptlib import free_port, load_module, replay_server  # noqa: E402 - scripts/ is on sys.path

CLI = [sys.executable, "-m", "stylus_docs.cli"]


def _run(args: list[str], env: dict[str, str]) -> None:
    print("+ stylus-docs " + " ".join(args[3:]), flush=True)
    proc = subprocess.run(args, env=env)
    if proc.returncode != 0:
        sys.exit(f"build_stylus_sample: step failed with exit status {proc.returncode}: {' '.join(args[3:])}")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def serve_directory(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    """A static file server on loopback (port chosen by the OS) in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def with_tiny_weights(models: Path, out: Path, weights_url: str, loras: list[tuple[str, str]]) -> int:
    """Copy the sample's ``/models`` items with each version's primary file replaced by a tiny LoRA.

    Args:
        models: the sample's ``civitai/models.jsonl``.
        out: where to write the copy (read by the replay server through ``--civitai-models``).
        weights_url: base URL of the loopback file server holding the tiny LoRA files.
        loras: ``(file name, sha256)`` of the tiny files, used in turn.

    Returns:
        The number of versions rewritten.
    """
    n = 0
    with open(models, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            if not line.strip():
                continue
            item = json.loads(line)
            for version in item.get("modelVersions") or []:
                name, sha = loras[n % len(loras)]
                n += 1
                version["files"] = [{
                    "id": int(version.get("id") or n) * 10, "name": f"v{version.get('id')}-{name}",
                    "sizeKB": 1.0, "type": "Model", "primary": True,
                    "metadata": {"format": "SafeTensor", "fp": "fp32", "size": "full"},
                    "hashes": {"SHA256": sha.upper()}, "downloadUrl": f"{weights_url}/{name}",
                }]  # fmt: skip
                version["downloadUrl"] = f"{weights_url}/{name}"
            dst.write(json.dumps(item) + "\n")
    return n


CDN = "https://image.civitai.com/"


def local_corpus(data: Path, out: Path, models: Path, image_base: str) -> Path:
    """A copy of the sample whose Civitai image URLs point at the replay server's ``/img/`` route.

    The build fetches example images for the VLM; offline, ``image.civitai.com`` would only cost
    failed connections. The replay server answers ``/img/P`` with a sample PNG for ``CDN/P``.
    """
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(data, out)
    for path in (out / "civitai" / "images.jsonl", models):
        text = path.read_text(encoding="utf-8").replace(CDN, image_base + "/img/")
        (out / "civitai" / "models.jsonl" if path == models else path).write_text(text, encoding="utf-8")
    return out


def vlm_answer(path: str, body: dict[str, Any]) -> Any:
    """The fake VLM: a valid refinement saying what it was shown (renders and examples counted)."""
    fake = sys.modules["fake_openai_server"]
    if path.endswith("/embeddings"):
        return fake.Answer()
    user = next(m for m in body["messages"] if m.get("role") == "user")
    parts = user["content"] if isinstance(user["content"], list) else []
    texts = " ".join(p.get("text", "") for p in parts if p.get("type") == "text")
    images = sum(1 for p in parts if p.get("type") == "image_url")
    renders = texts.count("without / with the adapter")
    title = fake.title_of(body)
    return fake.valid({
        "description": f"{title}: described from {images} images ({renders} rendered pairs).",
        "category": "style", "recommended_weight": 0.8,
    })  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/out/stylus", help="output root (default data/out/stylus)")
    parser.add_argument("--data", default=str(ROOT / "data" / "sample"), help="sample corpus directory")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per render (tiny model)")
    parser.add_argument("--size", type=int, default=64, help="render size in pixels (tiny model)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts rendered per adapter")
    parser.add_argument("--concurrency", type=int, default=16, help="VLM requests in flight")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    raw, docs, tiny_dir = out / "raw", out / "docs", out / "tiny"
    for d in (raw, docs):  # a fresh crawl and build each time: the point is to run every stage
        if d.exists():
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")

    tiny_maker = load_module("make_tiny_models", ROOT / "scripts" / "make_tiny_models.py")
    tiny_json = tiny_dir / "tiny_models.json"
    if tiny_json.is_file():
        tiny = json.loads(tiny_json.read_text())
    else:
        print("+ making the tiny diffusion pipeline and LoRA files", flush=True)
        made = tiny_maker.make_tiny_models(tiny_dir)
        tiny = {"pipeline": str(made.pipeline), "sha256": made.sha256}
    loras = [(name, tiny["sha256"][name]) for name in
             ("tiny-diffusers.safetensors", "tiny-kohya.safetensors", "tiny-broken.safetensors")]  # fmt: skip

    weights, weights_url = serve_directory(tiny_dir / "loras")
    models = out / "civitai-models-tiny-weights.jsonl"
    n = with_tiny_weights(Path(args.data) / "civitai" / "models.jsonl", models, weights_url, loras)
    print(f"+ {n} sample versions point at the tiny LoRA files on {weights_url}", flush=True)

    replay = replay_server()
    fake = load_module("fake_openai_server", ROOT / "tests" / "fakes" / "openai_server.py")
    port = free_port()
    api_host = f"127.0.0.1:{port}"
    corpus = local_corpus(Path(args.data), out / "corpus", models, f"http://{api_host}")
    server, base_url = replay.start_server(data_dir=corpus, port=port)
    vlm, vlm_url = fake.start_fake_openai(script=vlm_answer)
    try:
        _run(CLI + ["crawl", "civitai", "--out", str(raw), "--api-url", base_url], env)
        _run(CLI + ["crawl", "hf", "--out", str(raw), "--api-url", base_url], env)
        env.update(OPENAI_BASE_URL=vlm_url, OPENAI_API_KEY="sk-local-fake")
        _run(CLI + ["build", "--raw", str(raw), "--out", str(docs),
                    "--render", "--render-pipeline", tiny["pipeline"], "--render-device", "cpu",
                    "--render-prompts", str(args.prompts), "--render-steps", str(args.steps),
                    "--render-size", str(args.size), "--render-cache", str(out / "weights"),
                    "--refiner", "openai", "--refiner-model", "fake-vlm",
                    "--refine-concurrency", str(args.concurrency),
                    "--image-hosts", api_host], env)  # fmt: skip
    finally:
        server.shutdown()
        weights.shutdown()
        chats = [b for p, b, _ in vlm.log if p.endswith("/chat/completions")]
        fake.stop(vlm)

    def user_texts(body: dict[str, Any]) -> list[str]:
        return [p.get("text", "") for m in body["messages"] if m.get("role") == "user"
                for p in (m["content"] if isinstance(m["content"], list) else [])]  # fmt: skip

    with_renders = sum(1 for b in chats if any("without / with the adapter" in t for t in user_texts(b)))

    def n_images(body: dict[str, Any]) -> int:
        return sum(1 for m in body["messages"] if m.get("role") == "user"
                   for p in (m["content"] if isinstance(m["content"], list) else [])
                   if p.get("type") == "image_url")  # fmt: skip

    pairs = [sum(t.count("without / with the adapter") for t in user_texts(b)) for b in chats]
    with_examples = sum(1 for b, k in zip(chats, pairs, strict=True) if n_images(b) > 2 * k)

    from stylus_docs import release

    build_dir = release.resolve_build(docs)
    manifest = release.load_manifest(build_dir)
    rendered = sorted((build_dir / "rendered").rglob("*.png")) if (build_dir / "rendered").is_dir() else []
    print(f"\nStylus build {manifest['build_id']} at {build_dir}")
    print(f"  counts {json.dumps(manifest['counts'], sort_keys=True)}")
    print(f"  seconds by step {json.dumps(manifest.get('stage_seconds', {}), sort_keys=True)}")
    timing = release.read_table(build_dir, manifest, "adapters", ["render_load_s", "render_s"]).to_pylist()
    load_s = sum(r["render_load_s"] or 0.0 for r in timing)
    render_s = sum(r["render_s"] or 0.0 for r in timing)
    print(f"  render: {load_s:.1f} s loading LoRAs, {render_s:.1f} s rendering; "
          f"build wall {manifest['wall_s']:.1f} s")
    print(f"  {len(rendered)} rendered PNGs; {len(chats)} VLM requests, {with_renders} of them with renders, "
          f"{with_examples} with creators' example images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
