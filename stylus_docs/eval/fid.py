"""FID and KID over Inception-v3 pool features, with a feature cache keyed by image SHA-256.

The network is torchvision's ``inception_v3`` architecture (``weights=None, aux_logits=True,
init_weights=False``) with its state dict read from a local safetensors file (``--inception-weights``);
the classifier is replaced by the identity, so a forward pass in eval mode yields the 2048-d pool3
features. Images are converted to RGB, resized to 299 × 299 with PIL bicubic resampling (as clean-fid's
"clean" mode does) and normalised with the ImageNet mean/std torchvision's Inception weights expect.

The numbers depend on the weights: the paper's FID used clean-fid's TF-Inception port, so values are
comparable across methods of one run and across runs with the same weights file, not with published
tables computed with another network.

Features are cached per (weights file SHA-256, preprocessing version) as one ``.npy`` per image SHA-256
(no pickle), so re-evaluating a set, or the same real set against many fake sets, costs nothing.

* FID: ``‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`` with ``scipy.linalg.sqrtm``. When a set has fewer images
  than feature dimensions (every evaluation below ~2,000 images), the trace term is computed exactly in
  the smaller sample space: with ``Σᵢ = AᵢᵀAᵢ`` for the centred, scaled feature rows ``Aᵢ``, the nonzero
  eigenvalues of ``Σ₁Σ₂`` are those of ``(A₁A₂ᵀ)(A₁A₂ᵀ)ᵀ``, an n × n matrix, so ``sqrtm`` runs on n × n
  instead of 2048 × 2048 (a 2048² ``sqrtm`` takes about a minute on two CPU cores).
* KID: the unbiased MMD² estimate with the polynomial kernel ``k(x, y) = (xᵀy / d + 1)³`` (Bińkowski et
  al. 2018), averaged over random subsets; the standard deviation over subsets is reported with it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stylus_docs.atomic import atomic_open
from stylus_docs.errors import FatalError
from stylus_docs.eval.common import (
    default_cache_root,
    load_into,
    load_state_dict,
    open_rgb,
    pick_device,
)
from stylus_docs.release import sha256_file

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
IMAGE_SIZE = 299
#: Bump when the preprocessing changes: cached features of another version are not reused.
PREPROCESS_VERSION = "v1-bicubic299-imagenet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_features_cache() -> Path:
    """``<cache root>/inception-features``."""
    return default_cache_root() / "inception-features"


class InceptionFeatures:
    """Inception-v3 pool3 features of image files, cached by image SHA-256.

    Args:
        weights: state dict of torchvision's ``inception_v3``, safetensors or ``.pt``
            (``--inception-weights``).
        cache_dir: feature cache root (None: no cache).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: images per forward pass.
        progress: show a progress bar (stderr).
        image_size: input size; 299 is Inception-v3's and the only one FID is defined at. A smaller one
            (``--inception-size``) only makes smoke tests cheaper: its features are not comparable.

    Raises:
        FatalError: missing weights, or weights that do not fit the architecture (one line).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        batch_size: int = 32,
        progress: bool = False,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        import torch
        from torchvision.models import inception_v3

        if not 75 <= image_size <= 1024:  # below 75 px the network's last feature map is empty
            raise FatalError(f"--inception-size must be between 75 and 1024, got {image_size}")
        state = load_state_dict(weights, "--inception-weights")
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        load_into(net, state, "--inception-weights", weights)
        net.fc = torch.nn.Identity()
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.image_size = image_size
        self._torch = torch
        self.weights_sha256 = sha256_file(weights)  # type: ignore[arg-type]
        self.cache: Path | None = None
        if cache_dir is not None:
            size = "" if image_size == IMAGE_SIZE else f"-{image_size}px"
            self.cache = Path(cache_dir) / f"{self.weights_sha256[:16]}-{PREPROCESS_VERSION}{size}"
        self.hits = 0
        self.computed = 0

    def _cache_path(self, digest: str) -> Path | None:
        return None if self.cache is None else self.cache / digest[:2] / f"{digest}.npy"

    def _pixels(self, path: Path) -> Any:
        from PIL import Image

        size = (self.image_size, self.image_size)
        img = open_rgb(path).resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return self._torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def of_files(self, paths: Sequence[str | os.PathLike[str]], label: str = "features") -> np.ndarray:
        """Features of each file, shape ``(len(paths), 2048)``, float64 (files with equal bytes are
        computed once)."""
        torch = self._torch
        digests = [sha256_file(p) for p in paths]
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            first.setdefault(d, i)
        out = np.zeros((len(paths), FEATURE_DIM), dtype=np.float64)
        todo: list[int] = []
        for d, i in first.items():
            cached = self._cache_path(d)
            if cached is not None and cached.is_file():
                try:
                    out[i] = np.load(cached, allow_pickle=False)
                    self.hits += 1
                    continue
                except (OSError, ValueError):
                    log.warning("unreadable cached features %s; recomputing", cached)
            todo.append(i)
        bar = None
        if self.progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"inception {label}", unit="img", leave=False)
        with torch.no_grad():
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start : start + self.batch_size]
                batch = torch.stack([self._pixels(Path(paths[i])) for i in idx]).to(self.device)
                feats = self.net(batch)
                if isinstance(feats, tuple):  # train-mode output; eval mode returns a tensor
                    feats = feats[0]
                feats_np = feats.double().cpu().numpy()
                for j, i in enumerate(idx):
                    out[i] = feats_np[j]
                    cached = self._cache_path(digests[i])
                    if cached is not None:
                        with atomic_open(cached, "wb") as handle:
                            np.save(handle, feats_np[j].astype(np.float32), allow_pickle=False)
                self.computed += len(idx)
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        for i, d in enumerate(digests):
            if first[d] != i:
                out[i] = out[first[d]]
        if self.cache is not None:
            # Cached rows are float32: keep freshly computed ones identical to what a re-run reads.
            out = out.astype(np.float32).astype(np.float64)
        return out


def _check(real: np.ndarray, fake: np.ndarray, need: int = 2) -> None:
    for name, arr in (("real", real), ("fake", fake)):
        if arr.ndim != 2 or arr.shape[0] < need:
            raise FatalError(f"FID/KID need at least {need} {name} images, got {arr.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise FatalError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")


def frechet_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                       eps: float = 1e-6) -> float:  # fmt: skip
    """The Fréchet distance of two Gaussians (pytorch-fid's formula, ``scipy.linalg.sqrtm``)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps  # singular product: nudge as pytorch-fid does
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (rows = images); exact, in the smaller of sample and feature space."""
    from scipy import linalg

    _check(real, fake)
    n1, n2, d = real.shape[0], fake.shape[0], real.shape[1]
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    if min(n1, n2) >= d:
        return frechet_from_stats(mu1, np.cov(real, rowvar=False), mu2, np.cov(fake, rowvar=False))
    a1 = (real - mu1) / np.sqrt(n1 - 1)  # Σ₁ = a1ᵀ a1
    a2 = (fake - mu2) / np.sqrt(n2 - 1)
    cross = a1 @ a2.T  # n1 × n2; eig(Σ₁Σ₂) \ {0} = eig(cross crossᵀ) \ {0}
    small = cross @ cross.T if n1 <= n2 else cross.T @ cross
    small = (small + small.T) / 2.0  # symmetric PSD up to rounding
    with warnings.catch_warnings():
        # Singular by construction (centring removes a rank; n > d never takes this path): expected.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        tr_covmean = float(np.trace(np.real(linalg.sqrtm(small))))
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2.0 * tr_covmean)


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Unbiased KID (polynomial-kernel MMD²) averaged over random subsets; returns ``(mean, std)``.

    Each subset draws ``min(subset_size, n_real, n_fake)`` rows of each set without replacement.
    """
    _check(real, fake)
    rng = np.random.default_rng(seed)
    d = real.shape[1]
    m = min(subset_size, real.shape[0], fake.shape[0])
    values = np.empty(subsets)
    for i in range(subsets):
        x = real[rng.choice(real.shape[0], m, replace=False)]
        y = fake[rng.choice(fake.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set means.
        values[i] = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )
    return float(values.mean()), float(values.std())


def fid_kid(real: np.ndarray, fake: np.ndarray, kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``{"fid", "kid", "kid_std", "n_real", "n_fake"}`` of two feature sets."""
    kid, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size, seed)
    return {
        "fid": frechet_distance(real, fake),
        "kid": kid,
        "kid_std": kid_std,
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
    }


def write_features(path: str | os.PathLike[str], real: np.ndarray, fake: np.ndarray) -> None:
    """``--features-out``: an ``.npz`` with arrays ``real`` and ``fake`` (written atomically)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, real=real, fake=fake)
