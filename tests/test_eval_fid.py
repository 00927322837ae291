"""``eval fid``: FID/KID over Inception-v3 pool features of a random-weight network (CPU, few images)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from stylus_docs import cli
from stylus_docs.eval.fid import frechet_distance, frechet_from_stats, kernel_inception_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_models import make_inception, write_images  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    weights = make_inception(root / "inception.safetensors")
    write_images(root / "real", 4, seed=1)
    write_images(root / "fake", 3, seed=2)
    return {"root": root, "weights": weights, "real": root / "real", "fake": root / "fake"}


def _fid(world, real, fake, capsys, *more):
    argv = [
        "eval",
        "fid",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--format",
        "json",
        "--device",
        "cpu",
        "--inception-weights",
        str(world["weights"]),
        "--features-cache",
        str(world["root"] / "cache"),
        "--kid-subsets",
        "5",
        *more,
    ]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance by another route: tr √(Σ₁Σ₂) as the nuclear norm of the centred cross product."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    nuclear = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
    d = x.mean(0) - y.mean(0)
    return float(d @ d + (xc**2).sum() / (len(x) - 1) + (yc**2).sum() / (len(y) - 1) - 2 * nuclear)


def test_fid_self_zero_symmetric_and_equal_to_written_features(world, tmp_path, capsys):
    npz = tmp_path / "feats.npz"
    out = _fid(world, world["real"], world["fake"], capsys, "--features-out", str(npz))
    assert set(out) >= {"fid", "kid", "n_real", "n_fake"}
    assert (out["n_real"], out["n_fake"]) == (4, 3)
    with np.load(npz) as z:
        real, fake = z["real"], z["fake"]
    assert real.shape == (4, 2048) and fake.shape == (3, 2048)
    assert real.std(axis=0).mean() > 1e-3  # the images get distinct features
    assert out["fid"] > 0
    assert out["fid"] == pytest.approx(reference_fid(real, fake), rel=1e-6)
    assert out["fid"] == pytest.approx(frechet_distance(real, fake), rel=1e-9)

    swapped = _fid(world, world["fake"], world["real"], capsys)
    assert swapped["fid"] == pytest.approx(out["fid"], rel=1e-6)
    assert swapped["features_computed"] == 0 and swapped["features_cached"] == 7  # all from the cache

    itself = _fid(world, world["real"], world["real"], capsys)
    assert abs(itself["fid"]) < 1e-6 * out["fid"]


def test_cache_is_keyed_by_content_not_name(world, tmp_path, capsys):
    _fid(world, world["real"], world["fake"], capsys)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, p in enumerate(sorted(world["fake"].glob("*.png"))):
        shutil.copy(p, renamed / f"other-{i}.png")
    out = _fid(world, world["real"], renamed, capsys)
    assert out["features_computed"] == 0


def test_fid_formula_matches_the_covariance_route():
    rng = np.random.default_rng(0)
    for n1, n2, d in ((50, 40, 8), (5, 7, 8)):
        x, y = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.3 + 0.4
        full = frechet_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
        assert frechet_distance(x, y) == pytest.approx(full, rel=1e-6)
        assert frechet_distance(x, y) == pytest.approx(reference_fid(x, y), rel=1e-6)
        # Symmetric up to sqrtm's rounding on a non-symmetric Σ₁Σ₂, which differs with the BLAS build
        # (1.2e-9 relative seen on CI); a wrong formula is off by far more than 1e-7.
        assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-7)


def test_kid_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    d = 2048
    same = [
        kernel_inception_distance(rng.normal(size=(100, d)), rng.normal(size=(100, d)), 10, 50, seed=i)[0]
        for i in range(10)
    ]
    shifted, _ = kernel_inception_distance(rng.normal(size=(100, d)), rng.normal(size=(100, d)) + 0.3, 10, 50)
    spread = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * spread + 1e-12  # unbiased: centred on 0 …
    assert min(same) < 0 < max(same) or abs(np.mean(same)) < 1e-3  # … so it goes below 0 too
    assert shifted > 50 * max(abs(np.mean(same)), spread)


def test_missing_or_wrong_weights_fail_in_one_line(world, tmp_path, capsys):
    base = ["eval", "fid", "--real", str(world["real"]), "--fake", str(world["fake"]), "--no-features-cache"]
    assert cli.main(base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights" in err
    assert cli.main([*base, "--inception-weights", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights" in err and "no such file" in err
    import torch
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(wrong))
    assert cli.main([*base, "--inception-weights", str(wrong)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit" in err
    assert cli.main(["eval", "fid", "--real", str(tmp_path), "--fake", str(world["fake"])]) == 2
    assert "no images" in capsys.readouterr().err
