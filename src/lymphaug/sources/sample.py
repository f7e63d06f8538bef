"""A generated H&E-like data set: three classes a CNN can tell apart, from one seed.

Why generate instead of committing images: the quick profile and the tests must
run offline with no image files from elsewhere in the repository, and still
exercise every stage on something that looks like the real task.

Rendering follows stain physics rather than painting colours: each pixel's
optical density is ``H * hematoxylin + E * eosin`` (Beer-Lambert), so nuclei are
purple where hematoxylin is dense and the stroma pink, with per-image stain
jitter like real slides. Nuclei are stamped as soft, optionally irregular
ellipses into a density field all at once (one ``(N, P, P)`` array per image
and one ``np.bincount``), so 90 images take a few seconds.

The arithmetic is float64 throughout, for the same bytes on every CPU: numpy runs sin, exp,
arctan2, power... through SIMD kernels chosen at run time (SSE4, AVX2, AVX-512) that differ
in the last bits. In float32 those differences flipped pixels after rounding (5 of 36 images
differed between AVX2 and SSE4 kernels, so the quick profile's data/raw had another hash on
another CPU); in float64 they are ~1e-13 of a grey level, far below the rounding step
(tests/project/test_golden_bytes.py switches the kernels off and compares).

The classes differ the way the real subtypes are described, with overlapping
per-image ranges so the task is learnable but not trivial:

- style 0 (CLL-like): small, round, uniform, dark nuclei, densely and evenly packed;
- style 1 (FL-like): medium, variable nuclei crowded into follicle-like blobs,
  sparse between them;
- style 2 (MCL-like): medium-large, irregular (notched, elongated), paler nuclei,
  evenly spread at lower density.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Optical density per unit stain, RGB, base 10: eosin alone gives a pink near
# (235, 160, 200); adding one unit of hematoxylin on top gives a purple near (90, 60, 140).
EOSIN_OD = np.array([0.036, 0.201, 0.106])
HEMATOXYLIN_OD = np.array([0.417, 0.426, 0.155])


@dataclass(frozen=True)
class Style:
    radius: tuple[float, float]  # mean nucleus radius range (px), drawn per image
    radius_sd: float  # relative spread of radii within an image
    coverage: tuple[float, float]  # fraction of the area covered by nuclei
    elongation: float  # max ratio of the ellipse axes
    irregularity: float  # amplitude of the boundary's angular wobble
    darkness: tuple[float, float]  # hematoxylin density inside a nucleus
    clustered: bool  # nuclei crowd into follicle-like blobs


STYLES = (
    Style((3.6, 4.8), 0.08, (0.30, 0.42), 1.15, 0.04, (1.05, 1.30), False),
    Style((4.4, 6.0), 0.22, (0.22, 0.32), 1.35, 0.10, (0.80, 1.05), True),
    Style((5.0, 6.6), 0.15, (0.18, 0.28), 1.60, 0.18, (0.75, 1.00), False),
)


def style_for(class_index: int) -> Style:
    """Styles cycle for more than three classes; later cycles get larger nuclei."""
    base = STYLES[class_index % len(STYLES)]
    grow = 1.0 + 0.2 * (class_index // len(STYLES))
    return Style(
        (base.radius[0] * grow, base.radius[1] * grow),
        base.radius_sd,
        base.coverage,
        base.elongation,
        base.irregularity,
        base.darkness,
        base.clustered,
    )


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """One independent stream per image: changing per_class does not change earlier images."""
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, index]))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, cells * height // width), cells
    grid = rng.random((gh, gw), dtype=np.float32)
    img = Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img), 0.0, 1.0)


def _centres(
    rng: np.random.Generator, n: int, height: int, width: int, clustered: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus centres (y, x) and a follicle mask (or zeros) for the background."""
    if not clustered:
        return rng.random(n) * height, rng.random(n) * width, np.zeros((height, width))
    k = int(rng.integers(2, 5))
    fy, fx = rng.random(k) * height, rng.random(k) * width
    fr = rng.uniform(0.12, 0.22, k) * min(height, width) * 1.4
    inside = rng.random(n) < 0.78
    which = rng.integers(0, k, n)
    # inside a follicle: uniform over its disc (sqrt for area-uniform radius)
    ang = rng.random(n) * 2 * np.pi
    rad = np.sqrt(rng.random(n)) * fr[which]
    y = np.where(inside, fy[which] + rad * np.sin(ang), rng.random(n) * height)
    x = np.where(inside, fx[which] + rad * np.cos(ang), rng.random(n) * width)
    yy, xx = np.mgrid[0:height, 0:width]
    d = np.min(
        np.hypot(yy[None] - fy[:, None, None], xx[None] - fx[:, None, None]) / fr[:, None, None],
        axis=0,
    )
    follicle = np.clip(1.2 - d, 0.0, 1.0)
    return y, x, follicle


def _stamp_nuclei(
    rng: np.random.Generator, style: Style, height: int, width: int, density_jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin density field of all nuclei, plus the follicle mask."""
    r_mean = rng.uniform(*style.radius)
    coverage = rng.uniform(*style.coverage) * density_jitter
    n = int(coverage * height * width / (np.pi * r_mean**2))
    y, x, follicle = _centres(rng, n, height, width, style.clustered)
    r = r_mean * np.exp(rng.normal(0.0, style.radius_sd, n))
    elong = rng.uniform(1.0, style.elongation, n)
    a, b = r * np.sqrt(elong), r / np.sqrt(elong)  # semi-axes, same area as the circle
    theta = rng.random(n) * np.pi
    irr = style.irregularity * rng.uniform(0.5, 1.5, n)
    k1, k2 = rng.integers(2, 4, n), rng.integers(3, 6, n)
    ph1, ph2 = rng.random(n) * 2 * np.pi, rng.random(n) * 2 * np.pi
    dark = rng.uniform(*style.darkness) * rng.uniform(0.85, 1.15, n)

    half = int(np.ceil(a.max() * (1 + irr.max()))) + 2
    offs = np.arange(-half, half + 1, dtype=np.float64)
    cy, cx = np.floor(y).astype(int), np.floor(x).astype(int)
    dy = offs[None, :, None] - (y - cy)[:, None, None]
    dx = offs[None, None, :] - (x - cx)[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * c + dy * s) / a[:, None, None]
    v = (-dx * s + dy * c) / b[:, None, None]
    d = np.hypot(u, v)
    phi = np.arctan2(v, u)
    bound = 1.0 + irr[:, None, None] * (
        0.6 * np.cos(k1[:, None, None] * phi + ph1[:, None, None])
        + 0.4 * np.cos(k2[:, None, None] * phi + ph2[:, None, None])
    )
    # soft edge about one pixel wide, whatever the nucleus size
    mask = 1.0 / (1.0 + np.exp(-(bound - d) * r[:, None, None] / 0.7))
    iy = cy[:, None, None] + offs.astype(int)[None, :, None]
    ix = cx[:, None, None] + offs.astype(int)[None, None, :]
    iy, ix = np.broadcast_to(iy, mask.shape), np.broadcast_to(ix, mask.shape)
    ok = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
    weights = (mask * dark[:, None, None])[ok]
    field = np.bincount(iy[ok] * width + ix[ok], weights=weights, minlength=height * width)
    return np.minimum(field.reshape(height, width), 1.5), follicle


def sample_image(seed: int, class_index: int, index: int, *, height: int, width: int) -> np.ndarray:
    """One H&E-like image (height x width x 3, uint8), fully determined by its arguments."""
    rng = image_rng(seed, class_index, index)
    style = style_for(class_index)
    nuclei, follicle = _stamp_nuclei(rng, style, height, width, rng.uniform(0.85, 1.15))
    # chromatin texture: nuclei are granular, not flat
    grain = rng.random((height, width)) * 0.5 + 0.75
    hema = nuclei * grain
    # stroma: patchy eosin, a faint hematoxylin haze, a few pale gaps
    patch = _smooth_noise(rng, height, width, 7)
    fibres = _smooth_noise(rng, height, width, 40)
    eosin = 0.55 + 0.6 * patch + 0.35 * fibres - 0.25 * follicle
    eosin *= np.clip((patch - 0.07) * 6.0, 0.15, 1.0)
    hema = hema + 0.08 + 0.10 * follicle + 0.05 * fibres
    jitter_h = HEMATOXYLIN_OD * rng.uniform(0.85, 1.15, 3)
    jitter_e = EOSIN_OD * rng.uniform(0.8, 1.2, 3)
    od = hema[..., None] * jitter_h + eosin[..., None] * jitter_e
    rgb = 255.0 * np.power(10.0, -od) + rng.normal(0.0, 3.0, (height, width, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
