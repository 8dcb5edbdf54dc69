"""The probe transforms: pure functions on ``(H, W, 3)`` uint8 RGB images that mimic kinds of copying.

Every transform is ``f(img, rng, **params) -> (H, W, 3) uint8`` (same size as the input, a new C-contiguous
array), deterministic given ``rng`` (a :class:`numpy.random.Generator`; transforms that need no randomness ignore
it). :data:`PROBES` maps each probe name to its function and default parameters, in a fixed order.

The probes follow He et al. (2024, §probes), who score transformed *training* images as generated sets:

- ``rotated``: rotation by an angle drawn uniformly in ``[-max_angle, max_angle]`` degrees (30) about the image
  centre, bilinear, same size, uncovered corners black (for odd sides the centre pixel stays exactly in place).
- ``shuffled``: the image cut into a ``grid × grid`` (4 × 4) grid of equal blocks of ``H // grid × W // grid``
  pixels, the blocks permuted by a random permutation other than the identity. When a side is not a multiple of
  ``grid`` the remainder strip (the last ``H % grid`` rows, the last ``W % grid`` columns) stays in place.
- ``downsampled``: resized to ``1/factor`` (4) of each side (rounded half up, at least 1 pixel; 32 → 8 as in the
  paper) and back, both bilinear (Pillow's, antialiased when shrinking).
- ``noisy``: additive Gaussian noise of ``sigma`` (25) grey levels per channel, rounded, clipped to 0…255.
- ``cropped``: a random crop of ``scale`` (1/2) of each side (rounded half up, at least 1 pixel), the offset
  uniform over all positions, resized back bilinear: a 2× zoom into a random part of the image.
- ``flipped``: horizontal mirror (exact).
- ``copies``: the image itself (exact): an anchor every layer should detect.
- ``near_copies``: mild additive Gaussian noise, ``sigma`` = 4 grey levels (below what the eye notices on natural
  images), rounded, clipped: an anchor that is not bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from memray.probes.config import PROBE_DEFAULTS, PROBE_NAMES

Transform = Callable[..., np.ndarray]


def _check(img: np.ndarray) -> np.ndarray:
    """``img`` as a uint8 ``(H, W, 3)`` array, or ``ValueError``."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {arr.dtype} {arr.shape}")
    return arr


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow bilinear resize of an RGB uint8 image to ``(height, width)``."""
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(⌊height·scale + ½⌋, ⌊width·scale + ½⌋)``, each at least 1: the small size of downsampled/cropped."""
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def rotate_by(img: np.ndarray, angle: float) -> np.ndarray:
    """Rotate counter-clockwise by ``angle`` degrees about the centre: bilinear, same size, black corners."""
    pil = Image.fromarray(_check(img))
    out = pil.rotate(float(angle), resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0))
    return np.ascontiguousarray(np.asarray(out))


def rotated(img: np.ndarray, rng: np.random.Generator, max_angle: float = 30.0) -> np.ndarray:
    """Rotation by an angle drawn uniformly in ``[-max_angle, max_angle]`` degrees (:func:`rotate_by`)."""
    return rotate_by(img, rng.uniform(-max_angle, max_angle))


def shuffle_blocks(img: np.ndarray, order: np.ndarray, grid: int = 4) -> np.ndarray:
    """Block ``i`` of the output (row-major in the ``grid × grid`` grid) is block ``order[i]`` of the input.

    Blocks are ``H // grid × W // grid``; the remainder strip of a side not divisible by ``grid`` stays in place.
    """
    arr = _check(img)
    bh, bw = arr.shape[0] // grid, arr.shape[1] // grid
    if bh < 1 or bw < 1:
        raise ValueError(f"image {arr.shape[:2]} is smaller than the {grid}×{grid} shuffle grid")
    out = arr.copy()
    for i, j in enumerate(np.asarray(order)):
        (ri, ci), (rj, cj) = divmod(i, grid), divmod(int(j), grid)
        out[ri * bh : (ri + 1) * bh, ci * bw : (ci + 1) * bw] = arr[rj * bh : (rj + 1) * bh, cj * bw : (cj + 1) * bw]
    return out


def shuffled(img: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """The ``grid × grid`` blocks permuted at random (:func:`shuffle_blocks`); the identity is redrawn."""
    order = rng.permutation(grid * grid)
    while grid > 1 and np.array_equal(order, np.arange(grid * grid)):
        order = rng.permutation(grid * grid)
    return shuffle_blocks(img, order, grid)


def downsampled(img: np.ndarray, rng: np.random.Generator, factor: float = 4.0) -> np.ndarray:
    """Bilinear down to :func:`scaled_size` ``(H, W, 1/factor)`` and back to ``(H, W)``."""
    arr = _check(img)
    h, w = arr.shape[:2]
    return np.ascontiguousarray(_resize(_resize(arr, *scaled_size(h, w, 1.0 / factor)), h, w))


def noisy(img: np.ndarray, rng: np.random.Generator, sigma: float = 25.0) -> np.ndarray:
    """``clip(round(img + N(0, sigma²)), 0, 255)`` with independent noise per pixel and channel."""
    arr = _check(img)
    noise = rng.normal(0.0, sigma, size=arr.shape)
    return np.clip(np.rint(arr.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def cropped(img: np.ndarray, rng: np.random.Generator, scale: float = 0.5) -> np.ndarray:
    """A crop of :func:`scaled_size` ``(H, W, scale)`` at a uniform random offset, resized back (bilinear)."""
    arr = _check(img)
    h, w = arr.shape[:2]
    ch, cw = scaled_size(h, w, scale)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(_resize(np.ascontiguousarray(arr[top : top + ch, left : left + cw]), h, w))


def flipped(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal mirror."""
    return np.ascontiguousarray(_check(img)[:, ::-1])


def copies(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An exact copy."""
    return _check(img).copy()


def near_copies(img: np.ndarray, rng: np.random.Generator, sigma: float = 4.0) -> np.ndarray:
    """Mild additive Gaussian noise (:func:`noisy` with ``sigma`` = 4 grey levels)."""
    return noisy(img, rng, sigma)


_FUNCTIONS: dict[str, Transform] = {
    "rotated": rotated,
    "shuffled": shuffled,
    "downsampled": downsampled,
    "noisy": noisy,
    "cropped": cropped,
    "flipped": flipped,
    "copies": copies,
    "near_copies": near_copies,
}
PROBES: dict[str, tuple[Transform, dict[str, Any]]] = {n: (_FUNCTIONS[n], PROBE_DEFAULTS[n]) for n in PROBE_NAMES}
"""Probe name → (transform, default parameters from :data:`memray.probes.config.PROBE_DEFAULTS`), in order."""


def apply_probe(name: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply probe ``name`` with its default parameters (``KeyError`` naming the known probes if unknown)."""
    if name not in PROBES:
        raise KeyError(f"unknown probe {name!r}; known: {', '.join(PROBE_NAMES)}")
    fn, params = PROBES[name]
    return fn(img, rng, **params)
