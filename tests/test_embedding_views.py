"""Views in source pixels: expansion of the specs, each transform against a hand-made image, and the read rows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from memray.embedding.views import View, ViewError, ViewPrepare, extra_views, parse_views, shift
from memray.stats.config import EvidenceConfig


def test_specs_expand_identity_first_each_once():
    names = [v.name for v in parse_views(["hflip", "shift:1", "crop:0.9", "hflip"])]
    assert names == ["identity", "hflip", "dx+1", "dx-1", "dy+1", "dy-1", "crop0.9"]
    assert [v.name for v in extra_views(["identity"])] == []


@pytest.mark.parametrize("spec", ["mirror", "shift:0", "shift:17", "crop:1.0", "crop:0.4", "shift:x"])
def test_bad_specs_are_refused_in_one_line(spec):
    with pytest.raises(ViewError, match=re.escape(f"{spec!r} is not a view")):
        parse_views([spec])
    with pytest.raises(ValueError, match=r"evidence\.views"):
        EvidenceConfig(views=(spec,))


def test_shift_moves_pixels_and_replicates_the_edge():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    right = shift(img, 1, 0)  # by hand: column 0 repeated, last column dropped
    np.testing.assert_array_equal(right, [[0, 0, 1, 2], [4, 4, 5, 6], [8, 8, 9, 10]])
    up = shift(img, 0, -1)
    np.testing.assert_array_equal(up, [[4, 5, 6, 7], [8, 9, 10, 11], [8, 9, 10, 11]])
    rgb = np.stack([img] * 3, axis=-1)
    assert shift(rgb, -2, 1).shape == (3, 4, 3)


def test_a_shifted_copy_is_undone_by_the_opposite_view_except_its_border():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    copy = shift(src, 1, 0)  # a generator's copy, moved one pixel right
    back = View("dx-1", "shift", dx=-1)(copy)
    np.testing.assert_array_equal(back[:, :-1], src[:, :-1])


def test_hflip_and_crop_windows():
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    np.testing.assert_array_equal(View("hflip", "hflip")(img), img[:, ::-1])
    crop = View("crop0.8", "crop", scale=0.8)(img)  # 8×8 window at offset (1, 1)
    np.testing.assert_array_equal(crop, img[1:9, 1:9])


def test_view_prepare_stacks_each_view_through_prepare():
    def prepare(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:4, :4].transpose(2, 0, 1))  # (3, 4, 4)

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    views = extra_views(["hflip", "shift:1"])
    out = ViewPrepare(prepare, views)(img, prepare(img))
    assert out.shape == (5, 3, 4, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], prepare(img[:, ::-1]))
    np.testing.assert_array_equal(out[1], prepare(shift(img, 1, 0)))
    assert ViewPrepare(prepare, ())(img, prepare(img)).shape == (0, 3, 4, 4)
