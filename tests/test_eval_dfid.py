"""``eval dfid``: per-prompt diversity (trace of the Inception feature covariance) and the win rate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from stylus_docs import cli
from stylus_docs.eval.dfid import diversity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_models import make_inception, write_images  # noqa: E402

PROMPTS = ("a corgi on a skateboard", "a red dragon over a castle")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A `generate --baseline`-style output: per prompt, 3 diverse Stylus images and 3 copies of one
    baseline image."""
    root = tmp_path_factory.mktemp("dfid")
    weights = make_inception(root / "inception.safetensors")
    out = root / "gen"
    for i, prompt in enumerate(PROMPTS):
        write_images(out / f"p{i}" / "stylus", 3, seed=20 + i, prompt=prompt, kind="stylus")
        write_images(out / f"p{i}" / "baseline", 3, seed=30 + i, prompt=prompt, kind="baseline", repeat=True)
    return {"root": root, "weights": weights, "out": out}


def _run(world, capsys, *sets):
    argv = [
        "eval",
        "dfid",
        *sets,
        "--inception-weights",
        str(world["weights"]),
        "--device",
        "cpu",
        "--features-cache",
        str(world["root"] / "cache"),
        "--inception-size",
        "128",
        "--format",
        "json",
    ]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_diverse_set_beats_a_repeated_image(world, capsys):
    out = _run(world, capsys, "--images", str(world["out"]))
    assert out["n_prompts"] == 2
    assert (out["win"], out["lose"], out["tie"], out["win_rate"]) == (2, 0, 0, 1.0)
    for row in out["prompts"]:
        assert row["a"] > 0 and row["b"] == pytest.approx(0.0, abs=1e-6)
        assert (row["n_a"], row["n_b"]) == (3, 3)
    # The other way round: the repeated image loses every prompt.
    swapped = _run(
        world,
        capsys,
        "--a",
        str(world["out"] / "p0" / "baseline"),
        "--b",
        str(world["out"] / "p0" / "stylus"),
    )
    assert (swapped["win"], swapped["lose"]) == (0, 1)


def test_diversity_is_the_trace_of_the_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5))
    assert diversity(x) == pytest.approx(np.trace(np.cov(x, rowvar=False)))
    assert diversity(np.repeat(x[:1], 4, axis=0)) == 0.0
    assert diversity(x * 2) == pytest.approx(4 * diversity(x))


def test_no_shared_prompt_is_one_line(world, tmp_path, capsys):
    lonely = tmp_path / "lonely"
    write_images(lonely, 3, seed=1, prompt="a teapot")
    argv = [
        "eval",
        "dfid",
        "--a",
        str(lonely),
        "--b",
        str(world["out"]),
        "--inception-weights",
        str(world["weights"]),
        "--no-features-cache",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no prompt" in err
