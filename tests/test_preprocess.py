"""Preprocessor presets against hand-built torchvision / timm pipelines on the same PIL images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torchvision import transforms

from memray.config import ConfigError
from memray.embedding.config import EmbedConfig
from memray.embedding.preprocess import Preprocessor, model_input_size


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


PAPER_BY_HAND = transforms.Compose(
    [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
)


@pytest.mark.parametrize("shape", [(32, 32), (300, 200), (180, 500)])
def test_paper_preset_matches_torchvision_pipeline(shape: tuple[int, int]) -> None:
    img = rgb(*shape, seed=shape[0])
    got = Preprocessor.paper()([img])
    want = PAPER_BY_HAND(Image.fromarray(img)).unsqueeze(0)
    assert got.shape == (1, 3, 224, 224) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert -1.0 <= got.min() and got.max() <= 1.0


def test_paper_preset_records_and_scales_with_input_size() -> None:
    d = Preprocessor.paper().describe()
    assert d["resize_short_side"] == 256 and d["crop"] == [224, 224] and d["interpolation"] == "bilinear"
    assert d["mean"] == d["std"] == [0.5, 0.5, 0.5] and d["antialias"] is True and d["preset"] == "paper"
    p384 = Preprocessor.paper(384)
    assert p384.params["resize_short_side"] == 439 and p384([rgb(50, 60)]).shape == (1, 3, 384, 384)


def test_channel_handling_grey_and_rgba() -> None:
    pre = Preprocessor.paper(32)
    grey = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    as_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    ref = pre([as_rgb])
    torch.testing.assert_close(pre([grey]), ref, atol=0, rtol=0)
    torch.testing.assert_close(pre([grey[:, :, None]]), ref, atol=0, rtol=0)
    rgba = np.concatenate([as_rgb, np.zeros((40, 40, 1), np.uint8)], axis=2)  # fully transparent: alpha dropped
    torch.testing.assert_close(pre([rgba]), ref, atol=0, rtol=0)


def test_batch_array_equals_list_and_mixed_sizes() -> None:
    pre = Preprocessor.paper(32)
    batch = np.stack([rgb(40, 50, s) for s in range(3)])
    torch.testing.assert_close(pre(batch), pre(list(batch)), atol=0, rtol=0)
    mixed = pre([rgb(40, 50), rgb(64, 33, 1)])
    assert mixed.shape == (2, 3, 32, 32)
    torch.testing.assert_close(mixed[1:], pre([rgb(64, 33, 1)]), atol=0, rtol=0)
    assert pre([]).shape == (0, 3, 32, 32)


def test_bad_inputs_name_the_image() -> None:
    pre = Preprocessor.paper(32)
    with pytest.raises(ValueError, match="image 1: dtype float32"):
        pre([rgb(8, 8), rgb(8, 8).astype(np.float32)])
    with pytest.raises(ValueError, match="image 0: shape"):
        pre([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(ConfigError):
        Preprocessor("imagenet", {})


def test_model_preset_matches_timm_transform_and_pickles() -> None:
    model = timm.create_model("vit_small_patch16_224.augreg_in21k", pretrained=False)
    pre = Preprocessor.for_model("model", model)
    img = rgb(300, 260, 3)
    want = create_transform(**resolve_model_data_config(model), is_training=False)(Image.fromarray(img)).unsqueeze(0)
    got = pre([img])
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert pre.describe()["crop_pct"] == 0.9 and pre.describe()["interpolation"] == "bicubic"
    clone = pickle.loads(pickle.dumps(pre))
    torch.testing.assert_close(clone([img]), got, atol=0, rtol=0)
    assert clone.describe() == pre.describe()


def test_input_size_follows_the_built_model() -> None:
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=224, depth=1)
    assert model.pretrained_cfg["input_size"] == (3, 518, 518)  # what timm reports …
    assert model_input_size(model) == (224, 224)  # … and what the model actually takes
    assert Preprocessor.for_model("model", model)([rgb(300, 300)]).shape == (1, 3, 224, 224)
    assert Preprocessor.for_model("paper", model).params["resize_short_side"] == 256
    cfg = EmbedConfig(model="vit_small_patch14_dinov2.lvd142m", preprocess="paper", model_kwargs={"img_size": 112})
    from_cfg = Preprocessor.from_config(cfg)  # meta device: no weights, no memory
    assert from_cfg.input_size == (3, 112, 112) and from_cfg.params["resize_short_side"] == 128
    with pytest.raises(ConfigError, match="unknown timm model"):
        Preprocessor.from_config(EmbedConfig(model="no_such_vit"))


def test_a_dynamic_size_model_gets_the_size_it_is_built_for() -> None:
    """DINOv3 (an Eva with dynamic_img_size=True) was fed timm's pretrained 256 px whatever img_size said."""
    name = "vit_small_patch16_dinov3.lvd1689m"
    assert Preprocessor.from_config(EmbedConfig(model=name, model_kwargs={"img_size": 112})).input_size == (3, 112, 112)
    assert Preprocessor.from_config(EmbedConfig(model=name)).input_size == (3, 256, 256)  # timm's default
    with torch.device("meta"):
        dino2 = timm.create_model("vit_small_patch14_dinov2.lvd142m", dynamic_img_size=True, img_size=224)
    assert model_input_size(dino2) == (224, 224)


def test_explicit_fields_override_the_model_preset() -> None:
    model = timm.create_model("vit_small_patch16_224.augreg_in21k", pretrained=False, img_size=64, depth=1)
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    pre = Preprocessor.for_model("model", model, mean=mean, std=std, resize=80)
    by_hand = transforms.Compose(
        [
            transforms.Resize(80, interpolation=transforms.InterpolationMode.BICUBIC),  # the model's interpolation
            transforms.CenterCrop(64),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    img = rgb(300, 260, 5)
    torch.testing.assert_close(pre([img]), by_hand(Image.fromarray(img)).unsqueeze(0), atol=1e-6, rtol=0)
    assert pre.describe()["mean"] == list(mean) and pre.describe()["interpolation"] == "bicubic"
    crop = Preprocessor.for_model("paper", timm.create_model("test_vit", dynamic_img_size=True), crop=48)
    assert crop.input_size == (3, 48, 48) and crop.params["resize_short_side"] == 55


def test_crop_pct_gives_exactly_the_resize_asked_for() -> None:
    import math

    from memray.embedding.preprocess import crop_pct_for

    for crop in range(1, 300):
        for resize in range(crop, 2 * crop + 3):
            assert math.floor(crop / crop_pct_for(crop, resize)) == resize, (crop, resize)


def test_greyscale_model_preset_and_channel_mismatches() -> None:
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=56, depth=1, in_chans=1)
    pre = Preprocessor.for_model("model", model)
    timm_mean, timm_std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]  # ImageNet's, per RGB channel
    assert pre.params["mean"] == pytest.approx([sum(timm_mean) / 3]) and pre.describe()["channels"] == 1
    assert pre.params["std"] == pytest.approx([sum(timm_std) / 3])
    img = rgb(70, 90, 6)
    luma = Image.fromarray(img).convert("L")
    stages = create_transform(**{**resolve_model_data_config(model), "input_size": (1, 56, 56)}).transforms[:-2]
    want = transforms.Compose(
        [*stages, transforms.ToTensor(), transforms.Normalize(pre.params["mean"], pre.params["std"])]
    )
    torch.testing.assert_close(pre([img]), want(luma).unsqueeze(0), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match=r"^embed\.mean=\[0\.5, 0\.5, 0\.5\]: must be 1 value\(s\), one per input"):
        Preprocessor.for_model("paper", model, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match=r"^embed\.std=\[0\.5\]: must be 3 value\(s\), one per input channel of"):
        Preprocessor.for_model("paper", timm.create_model("test_vit"), std=(0.5,))
    with pytest.raises(ConfigError, match="takes 4-channel input; memray feeds RGB"):
        Preprocessor.for_model("paper", timm.create_model("test_vit", in_chans=4))
    with pytest.raises(ConfigError, match=r"^embed\.resize=40: must be an integer >= the crop 56"):
        Preprocessor.for_model("paper", model, resize=40)
