"""memray.embedding.prepare: the torch-free paper preprocessing equals torchvision's PIL pipeline bit for bit."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from memray.embedding.prepare import PaperPrepare


def torchvision_reference(img: np.ndarray, resize: int, crop: tuple[int, int]) -> np.ndarray:
    pipeline = transforms.Compose(
        [transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(crop)]
    )
    return np.asarray(pipeline(Image.fromarray(img).convert("RGB"))).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("shape", "resize", "crop"),
    [
        ((32, 32, 3), 256, (224, 224)),  # CIFAR-10 → the paper's ViT-B/16 input
        ((28, 28), 128, (112, 112)),  # greyscale, the demo's ViT-Tiny @ 112
        ((200, 300, 3), 256, (224, 224)),  # landscape: long side truncated, crop offsets rounded
        ((501, 180, 4), 37, (32, 32)),  # portrait RGBA, odd sizes
        ((20, 20, 3), 20, (24, 24)),  # no resize needed, crop larger than the image: zero padding
    ],
)
def test_equals_torchvision_pil_pipeline(shape: tuple[int, ...], resize: int, crop: tuple[int, int]) -> None:
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    got = PaperPrepare(resize, crop)(img)
    assert got.dtype == np.uint8 and got.shape == (3, *crop)
    np.testing.assert_array_equal(got, torchvision_reference(img, resize, crop))


@pytest.mark.parametrize("shape", [(50, 40, 3), (28, 28), (30, 60, 4)])
def test_one_channel_is_pil_luma_then_the_same_pipeline(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    got = PaperPrepare(37, (32, 32), channels=1)(img)
    pipeline = transforms.Compose([transforms.Resize(37), transforms.CenterCrop(32)])
    want = np.asarray(pipeline(Image.fromarray(img).convert("RGB").convert("L")))[None]
    assert got.dtype == np.uint8 and got.shape == (1, 32, 32)
    np.testing.assert_array_equal(got, want)
    if len(shape) == 2:  # a greyscale image keeps its values: the RGB replication converts back exactly
        np.testing.assert_array_equal(got, PaperPrepare(37, (32, 32))(img)[:1])


def test_picklable_and_torch_free() -> None:
    prep = pickle.loads(pickle.dumps(PaperPrepare(128, (112, 112))))
    assert prep == PaperPrepare(128, (112, 112))
    code = "import sys, memray.embedding.prepare, memray.io.shards; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # Ray's read workers never pay for a torch import
