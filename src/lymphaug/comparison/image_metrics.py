"""Synthetic-image quality on extractor features: FID, KID, memorisation, TSTR probe.

Pure functions of feature matrices (rows = images). Why these choices:

- FID uses the exact identity Tr sqrt(S1 S2) = nuclear norm of A B^T / sqrt((n1-1)(n2-1))
  (A, B the centred feature matrices), so a 4096-d feature space with a dozen
  images per class costs one small SVD instead of a 4096 x 4096 matrix square root,
  and a set compared with itself gives 0 up to rounding.
- KID is the unbiased MMD^2 estimate with the cubic polynomial kernel
  (x.y/d + 1)^3, averaged over seeded random subsets whose size is at most the
  smaller set (per class that is a dozen images, not torchmetrics' default 1000).
  Being unbiased, it can be slightly negative when the two sets match.
- Memorisation: cosine distance from each synthetic image to its nearest
  training image, on features centred by the training mean (raw ReLU features
  are all positive, so uncentred cosines are all close to 1 and flag nothing
  useful). The real-to-real nearest-neighbour distance is given as a yardstick.
- TSTR: a multinomial logistic-regression probe on standardised features
  (a real, deterministic optimisation: full-batch L-BFGS), trained on synthetic
  images only and scored on the real test split; the same probe trained on the
  real training images (TRTR) is the reference it should be read against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fid(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("FID needs at least two images per set")
    a = x - x.mean(0)
    b = y - y.mean(0)
    na, nb = len(x) - 1, len(y) - 1
    mean_term = float(np.sum((x.mean(0) - y.mean(0)) ** 2))
    trace_term = float(np.sum(a * a)) / na + float(np.sum(b * b)) / nb
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(na * nb)
    return max(0.0, mean_term + trace_term - 2.0 * float(cross))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(
    x: np.ndarray, y: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float, int]:
    """Unbiased polynomial-kernel MMD^2: (mean, std over subsets, subset size used)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = min(subset_size, len(x), len(y))  # the subset size actually used
    if m < 2:
        raise ValueError("KID needs at least two images per set")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x_subset = x[rng.choice(len(x), m, replace=False)]
        y_subset = y[rng.choice(len(y), m, replace=False)]
        kxx = _poly_kernel(x_subset, x_subset)
        kyy = _poly_kernel(y_subset, y_subset)
        kxy = _poly_kernel(x_subset, y_subset)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std()), m


def kid_floor(x: np.ndarray, y: np.ndarray, *, subset_size: int) -> float:
    """The small-sample error scale of :func:`kid` for sets of ``subset_size`` rows.

    The unbiased estimate is the biased one (a squared norm, never negative) minus what
    the excluded diagonals are worth: (mean k(x,x) - mean k(x,x')) / m for each set. So
    it cannot fall much below minus this sum, and two sets from one distribution scatter
    around 0 on about this scale.
    """

    def spread(a: np.ndarray, m: int) -> float:
        k = _poly_kernel(a, a)
        n = len(a)
        return (np.trace(k) / n - (k.sum() - np.trace(k)) / (n * (n - 1))) / m

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least two images per set")
    return float(spread(x, m) + spread(y, m))


@dataclass(frozen=True)
class Neighbour:
    """A synthetic image's closest training image: a small distance flags a near copy."""

    index: int  # row of the training set
    distance: float  # cosine distance, 0 = same direction


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def nearest_training(
    synthetic: np.ndarray, train: np.ndarray, centre: np.ndarray | None = None
) -> list[Neighbour]:
    """For each synthetic row, the closest training row by cosine distance."""
    centre = train.mean(0) if centre is None else centre
    synthetic_unit = _unit(np.asarray(synthetic, np.float64) - centre)
    train_unit = _unit(np.asarray(train, np.float64) - centre)
    dist = 1.0 - synthetic_unit @ train_unit.T
    nearest = dist.argmin(axis=1)
    return [
        Neighbour(index=int(j), distance=float(max(0.0, dist[i, j]))) for i, j in enumerate(nearest)
    ]


def real_nn_distances(train: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-neighbour cosine distance among the training images."""
    train_unit = _unit(np.asarray(train, np.float64) - train.mean(0))
    dist = 1.0 - train_unit @ train_unit.T
    np.fill_diagonal(dist, np.inf)
    return np.maximum(0.0, dist.min(axis=1))


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    weight_decay: float = 1e-2,
    steps: int = 100,
) -> float:
    """Fit a logistic-regression probe on (train_x, train_y); accuracy on the test rows.

    Deterministic: zero initialisation and full-batch L-BFGS, no sampling.
    Features are standardised with the training rows' statistics only.
    """
    import torch

    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-6
    x_train = torch.as_tensor((train_x - mean) / std, dtype=torch.float64)
    x_test = torch.as_tensor((test_x - mean) / std, dtype=torch.float64)
    y_train = torch.as_tensor(np.array(train_y), dtype=torch.long)
    weights = torch.zeros(x_train.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ weights + bias, y_train)
        loss = loss + weight_decay * (weights * weights).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (x_test @ weights + bias).argmax(1).numpy()
    return float(np.mean(pred == np.asarray(test_y)))
