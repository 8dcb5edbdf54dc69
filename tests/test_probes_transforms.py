"""The probe transforms, checked pixel by pixel on small hand-made images."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from memray.probes.transforms import (
    PROBE_NAMES,
    PROBES,
    apply_probe,
    cropped,
    downsampled,
    flipped,
    noisy,
    rotate_by,
    rotated,
    scaled_size,
    shuffle_blocks,
    shuffled,
)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_registry_names_shapes_and_determinism() -> None:
    assert PROBE_NAMES == (
        "rotated", "shuffled", "downsampled", "noisy", "cropped", "flipped", "copies", "near_copies"
    )  # fmt: skip
    img = _noise(20, 28)
    before = img.copy()
    for name in PROBE_NAMES:
        out = apply_probe(name, img, _rng(3))
        assert out.dtype == np.uint8 and out.shape == img.shape and out.flags.c_contiguous, name
        assert np.array_equal(out, apply_probe(name, img, _rng(3))), name  # same rng seed, same image
        assert out is not img
    assert np.array_equal(img, before)  # inputs untouched
    for name in ("rotated", "shuffled", "noisy", "cropped", "near_copies"):  # the random ones depend on the rng
        assert not np.array_equal(apply_probe(name, img, _rng(3)), apply_probe(name, img, _rng(4))), name
    with pytest.raises(KeyError, match="known"):
        apply_probe("blurred", img, _rng())
    for bad in (img.astype(np.float32), img[:, :, 0], img[:, :, :2]):
        with pytest.raises(ValueError, match="uint8"):
            PROBES["flipped"][0](bad, _rng())


def test_registry_parameters_are_the_functions_defaults() -> None:
    for name, (fn, params) in PROBES.items():  # the config's recorded parameters are what a bare call uses
        sig = inspect.signature(fn).parameters
        assert {k: v.default for k, v in sig.items() if k not in ("img", "rng")} == params, name


def test_rotation_keeps_size_blacks_corners_and_fixes_centre() -> None:
    white = np.full((33, 33, 3), 255, np.uint8)
    out = rotate_by(white, 30.0)
    assert out.shape == white.shape
    for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert out[r, c].tolist() == [0, 0, 0]
    assert out[16, 16].tolist() == [255, 255, 255]
    assert rotated(_noise(32, 40), _rng()).shape == (32, 40, 3)
    img = _noise(31, 31)
    for seed in range(10):  # odd side: the centre pixel is the rotation's fixed point, whatever the angle
        assert np.array_equal(rotated(img, _rng(seed))[15, 15], img[15, 15])
    assert np.array_equal(rotate_by(img, 0.0), img)


def _bar_angle(img: np.ndarray) -> float:
    """Orientation in degrees (in (-90, 90]) of the bright bar in ``img``: principal axis of its weighted pixels."""
    w = img[:, :, 0].astype(np.float64)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    x, y = xs - (w * xs).sum() / w.sum(), -(ys - (w * ys).sum() / w.sum())  # y up
    cov = np.cov(np.stack([x.ravel(), y.ravel()]), aweights=w.ravel())
    _, vecs = np.linalg.eigh(cov)
    vx, vy = vecs[:, -1]
    angle = np.degrees(np.arctan2(vy, vx))
    return float((angle + 90) % 180 - 90)


@pytest.mark.parametrize("max_angle", [30.0, 5.0])
def test_rotation_angle_drawn_within_bounds(max_angle: float) -> None:
    bar = np.zeros((65, 65, 3), np.uint8)
    bar[31:34, 12:53] = 255  # horizontal bar through the centre, short enough never to reach the frame
    angles = [_bar_angle(rotated(bar, _rng(seed), max_angle=max_angle)) for seed in range(40)]
    assert _bar_angle(bar) == pytest.approx(0.0, abs=1e-6)
    assert max(abs(a) for a in angles) <= max_angle + 1.0
    assert min(angles) < -0.6 * max_angle and max(angles) > 0.6 * max_angle  # both signs, spread over the range
    expected = [np.random.default_rng(seed).uniform(-max_angle, max_angle) for seed in range(40)]
    assert np.allclose(angles, expected, atol=1.0)  # counter-clockwise by the drawn angle


def _blocks(img: np.ndarray, bh: int, bw: int) -> list[bytes]:
    return [img[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw].tobytes() for r in range(4) for c in range(4)]


def test_shuffle_permutes_the_4x4_blocks() -> None:
    img = _noise(32, 32)
    out = shuffled(img, _rng(1))
    before, after = _blocks(img, 8, 8), _blocks(out, 8, 8)
    assert sorted(before) == sorted(after)  # the same multiset of blocks, each block intact
    assert len(set(before)) == 16  # (distinct, so the mapping is a permutation)
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert moved >= 2
    order = [before.index(b) for b in after]
    assert np.array_equal(out, shuffle_blocks(img, np.array(order)))
    rev = shuffle_blocks(img, np.arange(16)[::-1])
    assert np.array_equal(rev[:8, :8], img[24:, 24:]) and np.array_equal(rev[24:, 24:], img[:8, :8])


def test_shuffle_remainder_strip_stays_and_identity_is_redrawn() -> None:
    img = _noise(34, 35)  # blocks of 8 × 8; rows 32-33 and columns 32-34 are the remainder strip
    out = shuffled(img, _rng(2))
    assert np.array_equal(out[32:], img[32:]) and np.array_equal(out[:, 32:], img[:, 32:])
    assert sorted(_blocks(out, 8, 8)) == sorted(_blocks(img, 8, 8))
    small = _noise(8, 8)
    for seed in range(100):  # a 2 × 2 grid draws the identity 1 time in 24: it must be redrawn
        assert not np.array_equal(shuffled(small, _rng(seed), grid=2), small)
    with pytest.raises(ValueError, match="smaller"):
        shuffled(_noise(3, 8), _rng())


def test_downsample_sizes_and_constant_image() -> None:
    assert scaled_size(32, 32, 0.25) == (8, 8)
    assert scaled_size(30, 50, 0.25) == (8, 13)  # 7.5 → 8, 12.5 → 13: half up
    assert scaled_size(2, 3, 0.25) == (1, 1)
    grey = np.full((32, 24, 3), 137, np.uint8)
    assert np.array_equal(downsampled(grey, _rng()), grey)
    img = _noise(32, 32)
    out = downsampled(img, _rng())
    assert out.shape == (32, 32, 3)
    for ch in range(3):  # back from 8 × 8: rank 8 up to the rounding to integers (singular values ~3 and below)
        s = np.linalg.svd(out[:, :, ch].astype(np.float64), compute_uv=False)
        assert s[8] < 3.5 < s[7], s[:10]
        s2 = np.linalg.svd(downsampled(img, _rng(), factor=2.0)[:, :, ch].astype(float), compute_uv=False)
        assert s2[8] > 20  # factor 2 keeps more: a 16 × 16 intermediate
    # 30 × 50 goes down to scaled_size's 8 × 13 (half up) and back, both with Pillow's bilinear filter
    small = Image.fromarray(_noise(30, 50)).resize((13, 8), Image.Resampling.BILINEAR)
    expected = np.asarray(small.resize((50, 30), Image.Resampling.BILINEAR))
    assert np.array_equal(downsampled(_noise(30, 50), _rng()), expected)
    floor = Image.fromarray(_noise(30, 50)).resize((12, 7), Image.Resampling.BILINEAR)  # 7.5 → 7, 12.5 → 12
    assert not np.array_equal(np.asarray(floor.resize((50, 30), Image.Resampling.BILINEAR)), expected)


@pytest.mark.parametrize(("name", "sigma"), [("noisy", 25.0), ("near_copies", 4.0)])
def test_noise_sigma_on_flat_grey(name: str, sigma: float) -> None:
    grey = np.full((256, 256, 3), 128, np.uint8)
    diff = apply_probe(name, grey, _rng(5)).astype(np.float64) - 128
    assert diff.std() == pytest.approx(sigma, rel=0.05)
    assert abs(diff.mean()) < 0.05 * sigma


def test_noise_clips_at_0_and_255() -> None:
    black, white = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)
    lo, hi = noisy(black, _rng()), noisy(white, _rng())
    assert lo.min() == 0 and hi.max() == 255
    assert 0.45 < (lo == 0).mean() < 0.56 and 0.45 < (hi == 255).mean() < 0.56  # the clipped half, not wrapped
    assert lo.max() > 50 and hi.min() < 205


def test_crop_is_a_2x_zoom_at_a_random_offset() -> None:
    rows = np.arange(32, dtype=np.uint8)[:, None] * 8
    cols = np.arange(32, dtype=np.uint8)[None, :] * 4
    img = np.ascontiguousarray(np.stack(np.broadcast_arrays(rows, cols, np.zeros_like(rows)), axis=-1))
    tops, lefts = set(), set()
    for seed in range(20):
        out = cropped(img, _rng(seed)).astype(np.float64)
        r, c = out[:, :, 0].mean(axis=1), out[:, :, 1].mean(axis=0)
        assert np.polyfit(np.arange(4, 28), r[4:28], 1)[0] == pytest.approx(4.0, abs=0.05)  # 8/row zoomed 2×
        assert np.polyfit(np.arange(4, 28), c[4:28], 1)[0] == pytest.approx(2.0, abs=0.05)
        top, left = r.mean() / 8 - 7.5, c.mean() / 4 - 7.5  # the crop's centre is the output's centre
        assert top == pytest.approx(round(top), abs=0.1) and 0 <= round(top) <= 16
        assert left == pytest.approx(round(left), abs=0.1) and 0 <= round(left) <= 16
        tops.add(round(top))
        lefts.add(round(left))
    assert len(tops) >= 5 and len(lefts) >= 5
    grey = np.full((20, 30, 3), 77, np.uint8)
    assert np.array_equal(cropped(grey, _rng()), grey)


def test_flip_and_copies_are_exact() -> None:
    img = _noise(5, 7)
    out = flipped(img, _rng())
    for j in range(7):
        assert np.array_equal(out[:, j], img[:, 6 - j])
    assert np.array_equal(flipped(out, _rng()), img)
    copy = apply_probe("copies", img, _rng())
    assert np.array_equal(copy, img) and not np.shares_memory(copy, img)
