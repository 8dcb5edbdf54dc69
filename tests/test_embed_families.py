"""The encoder families users pick for copy detection, by their timm names (small random-init variants), and an
encoder's own inputs: greyscale (``in_chans=1``), explicit mean/std/resize, ``pooling: auto``, ``memray embed``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from memray.embedding.config import EmbedConfig
from memray.embedding.embed import LayerEmbedder, describe_preprocessing, make_prepare
from memray.embedding.weights import create_model

N_IMAGES = 6
SMALL = {"depth": 2, "embed_dim": 32, "num_heads": 2}  # every family's builder takes these overrides
MICRO = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 64, "num_heads": 2}

# timm name, img_size, patch size, prefix tokens (class + distillation + register tokens), has a class token
FAMILIES = [
    ("vit_small_patch14_dinov2.lvd142m", 28, 14, 1, True),
    ("vit_small_patch14_reg4_dinov2.lvd142m", 28, 14, 5, True),
    ("vit_base_patch16_clip_224.openai", 32, 16, 1, True),
    ("vit_base_patch16_siglip_224.webli", 32, 16, 0, False),  # global_pool='map': no class token
    ("eva02_tiny_patch14_224.mim_in22k", 28, 14, 1, True),
    ("deit_small_distilled_patch16_224", 32, 16, 2, True),
    ("vit_small_patch16_dinov3.lvd1689m", 32, 16, 5, True),  # an Eva with dynamic_img_size=True and 4 registers
]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (N_IMAGES, 40, 36, 3), dtype=np.uint8)


def timm_sequences(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(patch tokens, prefix tokens or None) of every block, straight from timm (final norm applied)."""
    with torch.no_grad():
        out = model.forward_intermediates(
            x, return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True, norm=True
        )
    return [item if isinstance(item, tuple) else (item, None) for item in out]


@pytest.mark.parametrize(("name", "size", "patch", "prefix", "has_cls"), FAMILIES)
def test_family_embeds_every_layer_and_auto_pools_as_timm(
    images: np.ndarray, name: str, size: int, patch: int, prefix: int, has_cls: bool
) -> None:
    kwargs = {**SMALL, "img_size": size}
    cfg = EmbedConfig(model=name, random_init=True, model_kwargs=kwargs, pooling=("auto", "mean"), norm=True)
    emb = LayerEmbedder(cfg, device="cpu")
    assert emb.preprocessor.input_size == (3, size, size)  # the size the model is built for (DINOv3 too)
    assert emb.pooling == ("cls" if has_cls else "mean", "mean")
    assert describe_preprocessing(cfg)["pooling"] == list(emb.pooling)  # recorded as resolved
    x = emb.preprocessor(images)
    out = emb.embed_batch(x)
    model = create_model(cfg)  # the same seeded init
    assert model.num_prefix_tokens == prefix
    seqs = timm_sequences(model, x)
    assert emb.resolved_layers == (1, 2) and len(seqs) == 2
    for layer, (patches, pre) in enumerate(seqs, 1):
        assert patches.shape == (N_IMAGES, (size // patch) ** 2, 32)
        assert out["auto"][layer].shape == out["mean"][layer].shape == (N_IMAGES, 32)
        want = pre[:, 0] if has_cls else patches.mean(1)
        np.testing.assert_allclose(out["auto"][layer], want.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(out["mean"][layer], patches.mean(1).numpy(), atol=1e-5, rtol=0)
    with torch.no_grad():  # the last layer (norm=True) is forward_features: prefix tokens first, then the patches
        feats = model.forward_features(x)
    want_auto = feats[:, 0] if has_cls else feats[:, prefix:].mean(1)
    np.testing.assert_allclose(out["auto"][2], want_auto.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["mean"][2], feats[:, prefix:].mean(1).numpy(), atol=1e-5, rtol=0)


def test_in_chans_1_model_gets_greyscale_input_end_to_end(images: np.ndarray) -> None:
    cfg = EmbedConfig(
        model="vit_tiny_patch16_224", random_init=True, model_kwargs={**MICRO, "in_chans": 1}, layers=(1, 4)
    )
    emb = LayerEmbedder(cfg)
    assert emb.preprocessor.input_size == (1, 32, 32)
    record = describe_preprocessing(cfg)
    assert record["channels"] == 1 and record["input_size"] == [1, 32, 32]
    assert record["mean"] == [0.5] and record["std"] == [0.5] and "greyscale" in record["input"]
    got = emb.embed_images(images)["cls"]

    by_hand = transforms.Compose(
        [transforms.Resize(37), transforms.CenterCrop(32), transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
    )
    x = torch.stack([by_hand(Image.fromarray(img).convert("L")) for img in images])
    assert x.shape == (N_IMAGES, 1, 32, 32)
    model = create_model(cfg)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[0, 3], return_prefix_tokens=True, intermediates_only=True)
    for layer, (_, pre) in zip((1, 4), ref, strict=True):
        np.testing.assert_allclose(got[layer], pre[:, 0].numpy(), atol=1e-5, rtol=0)

    prepare = pickle.loads(pickle.dumps(make_prepare(cfg)))  # the audit job's read tasks: uint8 (1, 32, 32)
    prepared = np.stack([prepare(img) for img in images])
    assert prepared.shape == (N_IMAGES, 1, 32, 32) and prepared.dtype == np.uint8
    np.testing.assert_array_equal(emb.embed_prepared(prepared)[4], got[4])
    grey = images[..., 0]  # a greyscale image embeds as itself, replicated or not
    np.testing.assert_array_equal(
        emb.embed_images(grey)["cls"][4], emb.embed_images(np.repeat(grey[..., None], 3, axis=3))["cls"][4]
    )


def test_explicit_mean_std_resize_change_the_input_as_by_hand(images: np.ndarray) -> None:
    cfg = EmbedConfig(
        model="vit_tiny_patch16_224",
        random_init=True,
        model_kwargs=MICRO,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        resize=48,
        layers=(4,),
    )
    emb = LayerEmbedder(cfg)
    by_hand = transforms.Compose(
        [
            transforms.Resize(48),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    want = torch.stack([by_hand(Image.fromarray(img)) for img in images])
    torch.testing.assert_close(emb.preprocessor(images), want, atol=1e-6, rtol=0)
    record = describe_preprocessing(cfg)
    assert record["mean"] == [0.485, 0.456, 0.406] and record["std"] == [0.229, 0.224, 0.225]
    assert record["resize_short_side"] == 48 and record["crop"] == [32, 32] and record["preset"] == "paper"


def test_memray_embed_flags_for_the_encoders_inputs(tmp_path: Path) -> None:
    from memray.cli import main
    from memray.io.features import load_features, table_metadata

    imgs = np.random.default_rng(4).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=imgs)
    out = tmp_path / "f.parquet"
    model = ["--model", "vit_base_patch16_siglip_224.webli", "--random-init", "--layers", "2"]
    kwargs = [f"--model-kwarg={k}={v}" for k, v in {**SMALL, "img_size": 32}.items()]
    flags = ["--pooling", "auto", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3", "--resize", "44", "--crop", "32"]
    assert main(["embed", "--images", str(tmp_path / "imgs.npz"), "--out", str(out), *model, *kwargs, *flags]) == 0
    meta = table_metadata(str(out))
    assert meta["config"]["pooling"] == ["auto"] and meta["embedder"]["pooling_resolved"] == ["mean"]
    pre = meta["embedder"]["preprocess"]
    assert pre["mean"] == [0.5, 0.4, 0.3] and pre["std"] == [0.2, 0.25, 0.3] and pre["resize_short_side"] == 44
    cfg = EmbedConfig(
        model="vit_base_patch16_siglip_224.webli",
        random_init=True,
        model_kwargs={**SMALL, "img_size": 32},
        pooling=("mean",),
        layers=(2,),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        resize=44,
    )
    ref = LayerEmbedder(cfg).embed_images(imgs)["mean"][2]
    np.testing.assert_allclose(load_features(str(out), layer=2).layers[2], ref, atol=1e-5, rtol=0)
