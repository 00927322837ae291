#!/usr/bin/env python3
"""`make portable-sample`: the sample crawl and build through Beam's portable runner, as a cluster runs them.

Flink, Spark and Dataflow all hand a Python pipeline to SDK worker processes over the Fn API. Beam ships
that path in pure Python, so it is exercised here exactly so, on loopback:

1. start the replay server (``scripts/replay_server.py``) over ``data/sample``;
2. crawl (Civitai + Hugging Face) and build the sample in-process (the reference);
3. start ``stylus_docs.job_service`` (Beam's local job service, bundle inputs streamed) and
   ``apache_beam.runners.worker.worker_pool_main`` (the SDK worker pool) as their own processes, the
   venv's ``bin/`` first on the pool's PATH (it starts each worker as ``python -c …``);
4. crawl and build again through them (``-- --runner=PortableRunner --job_endpoint=…
   --environment_type=EXTERNAL --environment_config=… --direct_num_workers=2``), and once more with
   ``-- --direct_running_mode=multi_processing --direct_num_workers=2``;
5. compare every snapshot and release with the in-process one (adapter ids, content hashes, refined text,
   counts, embeddings within 1e-6) and stop the services (also on failure).

Each step is the real CLI in a subprocess. The helpers (:class:`PortableServices`, :func:`compare_releases`,
:func:`compare_snapshots`, :class:`RssSampler`) are imported by the tests and ``scripts/bench_scale.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:  # also imported by path from tests and bench_scale
    sys.path.insert(0, str(ROOT / "scripts"))
from _scriptlib import free_port, replay_server  # noqa: E402

CLI = [sys.executable, "-m", "stylus_docs.cli"]
#: Seconds the job service and the worker pool get to listen (they import Beam first: a few seconds).
START_DEADLINE_S = 90.0
#: Embedding tolerance between runners (float32 sums may be reordered by batching).
EMBED_TOL = 1e-6
#: Release columns compared between runners (besides the embedding).
COMPARED_COLUMNS = ("adapter_id", "content_hash", "description", "category", "recommended_weight",
                    "refiner", "embedder", "title", "base_model", "deleted")  # fmt: skip
MULTI_PROCESS_FLAGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], name: str, deadline_s: float) -> None:
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on port {port} within {deadline_s:.0f} s")


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with this interpreter's ``bin/`` first on PATH (the worker pool runs ``python``)."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    # Workers import the project from the working tree as the driver does.
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process started in its own session, with everything it started (the pool's workers)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


class PortableServices:
    """A Beam job service and an SDK worker pool as separate processes on loopback (a context manager).

    Args:
        log_dir: where their stdout/stderr go (``job_service.log``, ``worker_pool.log``).
        workers: SDK workers per environment (``--direct_num_workers`` of the job).
        env: extra environment of the workers (what a cluster's workers get from their container, e.g.
            ``OPENAI_BASE_URL``): the pipeline's own environment does not travel to them.
        stock: Beam's own ``local_job_service_main`` instead of ``stylus_docs.job_service`` (which streams
            bundle inputs to the workers; the benchmark compares the two).
    """

    def __init__(self, log_dir: str | os.PathLike[str], workers: int = 2,
                 env: dict[str, str] | None = None, stock: bool = False) -> None:  # fmt: skip
        self.log_dir = Path(log_dir)
        self.job_module = ("apache_beam.runners.portability.local_job_service_main" if stock
                           else "stylus_docs.job_service")  # fmt: skip
        self.workers = workers
        self.extra_env = dict(env or {})
        self.job_port = self.pool_port = 0
        self.job: subprocess.Popen[bytes] | None = None
        self.pool: subprocess.Popen[bytes] | None = None

    def start(self) -> PortableServices:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = venv_env(self.extra_env)
        self.job_port, self.pool_port = free_port(), free_port()
        py = sys.executable
        try:
            # Own sessions, so that stopping one also stops the worker processes it started.
            with open(self.log_dir / "job_service.log", "wb") as log:
                self.job = subprocess.Popen(
                    [py, "-m", self.job_module,
                     "--port", str(self.job_port)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            with open(self.log_dir / "worker_pool.log", "wb") as log:
                self.pool = subprocess.Popen(
                    [py, "-m", "apache_beam.runners.worker.worker_pool_main",
                     "--service_port", str(self.pool_port)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            _wait_listening(self.job_port, self.job, "job service", START_DEADLINE_S)
            _wait_listening(self.pool_port, self.pool, "worker pool", START_DEADLINE_S)
        except BaseException:
            self.stop()
            raise
        return self

    def beam_args(self) -> list[str]:
        """The Beam flags that send a pipeline through these services."""
        return ["--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{self.job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{self.pool_port}",
                f"--direct_num_workers={self.workers}"]  # fmt: skip

    def stop(self) -> None:
        _stop(self.pool)
        _stop(self.job)

    def __enter__(self) -> PortableServices:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- memory
def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in task.read_text().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``)."""
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident set (``VmHWM``) of a live process, MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RssSampler:
    """Polls the peak RSS of the SDK worker processes below some roots while a run goes on.

    A worker is a descendant whose command line runs the SDK harness (``SdkHarness`` of a worker pool, or
    ``sdk_worker_main`` of multi-processing mode); the peak is the kernel's ``VmHWM``, read until the
    process ends.
    """

    MARKERS = ("SdkHarness", "sdk_worker_main")

    def __init__(self, roots: Sequence[int], interval_s: float = 0.1) -> None:
        self.roots = list(roots)
        self.interval_s = interval_s
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        for root in self.roots:
            for pid in descendants(root):
                if pid not in self.peaks and not any(m in _cmdline(pid) for m in self.MARKERS):
                    continue
                peak = peak_rss_mib(pid)
                if peak is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


# --------------------------------------------------------------------------------------------- compare
def _release_rows(docs: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from stylus_docs import release

    build = release.resolve_build(docs)
    manifest = release.load_manifest(build)
    table = release.read_table(build, manifest, "adapters", [*COMPARED_COLUMNS, "embedding"])
    rows = {r["adapter_id"]: r for r in table.to_pylist()}
    return manifest, rows


def compare_releases(expected: str | os.PathLike[str], actual: str | os.PathLike[str],
                     tol: float = EMBED_TOL) -> list[str]:  # fmt: skip
    """Differences between two releases (empty when they are the same release built twice).

    Compared: the adapter ids, every column of :data:`COMPARED_COLUMNS`, the embeddings within ``tol``,
    the manifest counts, and the images and dead-letter row counts.
    """
    import numpy as np

    man_a, rows_a = _release_rows(expected)
    man_b, rows_b = _release_rows(actual)
    problems: list[str] = []
    if set(rows_a) != set(rows_b):
        only_a, only_b = sorted(set(rows_a) - set(rows_b)), sorted(set(rows_b) - set(rows_a))
        problems.append(f"adapter ids differ: only expected {only_a[:5]}, only actual {only_b[:5]}")
    for aid in sorted(set(rows_a) & set(rows_b)):
        a, b = rows_a[aid], rows_b[aid]
        for col in COMPARED_COLUMNS:
            if a.get(col) != b.get(col):
                problems.append(f"{aid}: {col} differs")
        va = np.asarray(a["embedding"], dtype=np.float64)
        vb = np.asarray(b["embedding"], dtype=np.float64)
        if va.shape != vb.shape or (va.size and float(np.max(np.abs(va - vb))) > tol):
            problems.append(f"{aid}: embedding differs by more than {tol}")
    if man_a["counts"] != man_b["counts"]:
        problems.append(f"counts differ: {man_a['counts']} vs {man_b['counts']}")
    for table in ("images", "dead_letter", "removed"):
        na = sum(f["rows"] for f in man_a["files"] if f["table"] == table)
        nb = sum(f["rows"] for f in man_b["files"] if f["table"] == table)
        if na != nb:
            problems.append(f"{table} rows differ: {na} vs {nb}")
    return problems


def snapshot_records(raw: str | os.PathLike[str]) -> dict[str, dict[Any, str]]:
    """``{<source>/<prefix>: {record id: canonical JSON}}`` of a crawl snapshot (chunks only)."""
    out: dict[str, dict[Any, str]] = {}
    for path in sorted(Path(raw).glob("*/*.jsonl.gz")):
        prefix = path.name.split("-", 1)[0]
        key = f"{path.parent.name}/{prefix}"
        bucket = out.setdefault(key, {})
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                rec = json.loads(line)
                item = rec.get("item", rec) if isinstance(rec, dict) else rec
                ident = item.get("id") if isinstance(item, dict) else None
                if ident in bucket:
                    bucket[f"duplicate:{ident}:{len(bucket)}"] = ""
                bucket[ident] = json.dumps(rec, sort_keys=True)
    return out


def compare_snapshots(expected: str | os.PathLike[str], actual: str | os.PathLike[str]) -> list[str]:
    """Differences between two crawl snapshots: record ids per chunk kind, duplicates, record contents."""
    a, b = snapshot_records(expected), snapshot_records(actual)
    problems: list[str] = []
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key, {}), b.get(key, {})
        dups = [k for k in rb if isinstance(k, str) and k.startswith("duplicate:")]
        if dups:
            problems.append(f"{key}: {len(dups)} records stored twice ({dups[:3]})")
        if set(ra) != set(rb):
            problems.append(f"{key}: record ids differ ({len(ra)} vs {len(rb)})")
            continue
        changed = [k for k in ra if ra[k] != rb[k]]
        if changed:
            problems.append(f"{key}: {len(changed)} records differ (e.g. {changed[0]})")
    return problems


# --------------------------------------------------------------------------------------------- sample
def _run(args: list[str], env: dict[str, str]) -> float:
    print("+ stylus-docs " + " ".join(args[3:]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(args, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"portable_sample: step failed with exit status {proc.returncode}: "
                         f"{' '.join(args[3:])}")  # fmt: skip
    return time.monotonic() - started


def crawl_and_build(out: Path, base_url: str, beam_args: Sequence[str], env: dict[str, str]) -> float:
    """The sample crawl (Civitai + HF) into ``out/raw`` and its build into ``out/docs``; wall seconds."""
    extra = ["--", *beam_args] if beam_args else []
    raw, docs = out / "raw", out / "docs"
    wall = _run(CLI + ["crawl", "civitai", "--out", str(raw), "--api-url", base_url, "--quiet", *extra], env)
    wall += _run(CLI + ["crawl", "hf", "--out", str(raw), "--api-url", base_url, "--quiet", *extra], env)
    wall += _run(CLI + ["build", "--raw", str(raw), "--out", str(docs), "--no-progress", *extra], env)
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/out/portable", help="output root (default data/out/portable)")
    parser.add_argument("--data", default=str(ROOT / "data" / "sample"), help="sample corpus directory")
    parser.add_argument("--workers", type=int, default=2, help="SDK worker processes (default 2)")
    parser.add_argument("--skip-multi-process", action="store_true", help="only the portable runner")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    env = venv_env()
    replay = replay_server()
    server, base_url = replay.start_server(data_dir=args.data)
    walls: dict[str, float] = {}
    problems: dict[str, list[str]] = {}
    try:
        walls["in-process"] = crawl_and_build(out / "inprocess", base_url, [], env)
        with PortableServices(out / "logs", args.workers) as services:
            walls["portable"] = crawl_and_build(out / "portable", base_url, services.beam_args(), env)
        runs = ["portable"]
        if not args.skip_multi_process:
            walls["multi-process"] = crawl_and_build(out / "multiprocess", base_url, MULTI_PROCESS_FLAGS, env)
            runs.append("multi-process")
    finally:
        server.shutdown()
        server.server_close()
    ref = out / "inprocess"
    for name in runs:
        got = out / name.replace("-", "")
        problems[name] = compare_snapshots(ref / "raw", got / "raw") + compare_releases(
            ref / "docs", got / "docs")
    print()
    for name, wall in walls.items():
        verdict = "reference" if name == "in-process" else (
            "same snapshot and release" if not problems[name] else "DIFFERS")  # fmt: skip
        print(f"  {name:<14} crawl + build {wall:6.1f} s  {verdict}")
        for problem in problems.get(name, [])[:10]:
            print(f"      {problem}")
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
