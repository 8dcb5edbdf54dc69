"""LayerEmbedder against forward hooks and forward_features on tiny untrained ViTs (hooks only here, as references)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from memray.embedding.config import EmbedConfig
from memray.embedding.embed import EmbedError, LayerEmbedder, describe_preprocessing, make_prepare, resolve_layers
from memray.embedding.weights import create_model

MICRO = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 64, "num_heads": 2}
N_IMAGES = 10


def micro_cfg(**over: object) -> EmbedConfig:
    kwargs = {**MICRO, **over.pop("extra_kwargs", {})}  # type: ignore[dict-item]
    base = {"model": "vit_tiny_patch16_224", "random_init": True, "model_kwargs": kwargs}
    return EmbedConfig(**{**base, **over})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (N_IMAGES, 40, 36, 3), dtype=np.uint8)


def hook_reference(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Full token sequences {ℓ: (B, T, D)} from hooks (ℓ=0: input of block 1) and forward_features(x)."""
    seqs: dict[int, torch.Tensor] = {}
    handles = [model.blocks[0].register_forward_pre_hook(lambda _m, args: seqs.__setitem__(0, args[0]))]
    for i, blk in enumerate(model.blocks):
        handles.append(blk.register_forward_hook(lambda _m, _i, out, k=i + 1: seqs.__setitem__(k, out)))
    try:
        with torch.no_grad():
            feats = model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return seqs, feats


def build(
    cfg: EmbedConfig, images: np.ndarray
) -> tuple[LayerEmbedder, torch.Tensor, dict, torch.Tensor, torch.nn.Module]:
    model = create_model(cfg)
    emb = LayerEmbedder(cfg, model=model)
    x = emb.preprocessor(images)
    seqs, feats = hook_reference(model, x)
    return emb, x, seqs, feats, model


def test_every_layer_equals_block_hooks_cls_and_mean(images: np.ndarray) -> None:
    cfg = micro_cfg(pooling=("cls", "mean"), layers=(0, 1, 2, 3, 4))
    emb, x, seqs, _, model = build(cfg, images)
    out = emb.embed_batch(x)
    assert set(out) == {"cls", "mean"}
    assert emb.resolved_layers == (0, 1, 2, 3, 4)
    for layer in emb.resolved_layers:
        assert out["cls"][layer].shape == out["mean"][layer].shape == (N_IMAGES, 64)
        assert out["cls"][layer].dtype == np.float32
        np.testing.assert_allclose(out["cls"][layer], seqs[layer][:, 0].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["mean"][layer], seqs[layer][:, 1:].mean(1).numpy(), atol=1e-6, rtol=0)
        assert not np.allclose(out["cls"][layer], out["mean"][layer], atol=1e-3)
    # layer 0 is patch embedding + position: its CLS is the same learned vector for every image
    expected_cls0 = (model.cls_token + model.pos_embed[:, :1]).detach().numpy().reshape(1, -1)
    np.testing.assert_allclose(out["cls"][0], np.repeat(expected_cls0, N_IMAGES, 0), atol=1e-6)
    assert np.ptp(out["mean"][0], axis=0).max() > 1e-3  # the patch part does depend on the image


def test_last_layer_is_pre_norm_and_norm_true_equals_forward_features(images: np.ndarray) -> None:
    emb, x, seqs, feats, model = build(micro_cfg(layers="all"), images)
    last = emb.embed(x)[4]
    np.testing.assert_allclose(last, seqs[4][:, 0].numpy(), atol=1e-6, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(model.norm(seqs[4]).numpy(), feats.numpy(), atol=1e-6, rtol=0)
    assert not np.allclose(last, feats[:, 0].numpy(), atol=1e-2)  # norm=False is not forward_features
    assert isinstance(emb.model.norm, torch.nn.Identity)  # pruned: never applied

    emb_n = LayerEmbedder(micro_cfg(layers="all", norm=True, pooling=("cls", "mean")), model=model)
    out = emb_n.embed_batch(x)
    np.testing.assert_allclose(out["cls"][4], feats[:, 0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["mean"][4], feats[:, 1:].mean(1).numpy(), atol=1e-5, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(out["cls"][2], model.norm(seqs[2])[:, 0].numpy(), atol=1e-5, rtol=0)


def test_batch_size_independence(images: np.ndarray) -> None:
    emb = LayerEmbedder(micro_cfg(pooling=("cls", "mean"), layers=(0, 2, 4)))
    runs = [emb.embed_images(images, batch_size=bs) for bs in (1, 7, N_IMAGES)]
    for run in runs[1:]:
        for pooling in ("cls", "mean"):
            for layer in (0, 2, 4):
                np.testing.assert_allclose(run[pooling][layer], runs[0][pooling][layer], atol=1e-5, rtol=0)
    assert runs[0]["cls"][4].shape == (N_IMAGES, 64)


def test_layer_selection_prunes_trailing_blocks(images: np.ndarray) -> None:
    full_emb, x, seqs, _, model = build(micro_cfg(), images)
    emb = LayerEmbedder(micro_cfg(layers=(2, 1)), model=model)
    assert emb.resolved_layers == (1, 2)
    assert len(emb.model.blocks) == 2 and len(model.blocks) == 4  # the caller's model is untouched
    out = emb.embed(x)
    full = full_emb.embed(x)
    assert sorted(out) == [1, 2]
    for layer in (1, 2):
        np.testing.assert_allclose(out[layer], full[layer], atol=1e-6, rtol=0)
        np.testing.assert_allclose(out[layer], seqs[layer][:, 0].numpy(), atol=1e-6, rtol=0)
    only0 = LayerEmbedder(micro_cfg(layers=(0,), pooling="mean"), model=model).embed(x)
    np.testing.assert_allclose(only0[0], seqs[0][:, 1:].mean(1).numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("extra", [{"reg_tokens": 4}, {"pre_norm": True}, {"no_embed_class": True, "reg_tokens": 2}])
def test_prefix_tokens_and_norm_pre(images: np.ndarray, extra: dict) -> None:
    emb, x, seqs, _, model = build(micro_cfg(pooling=("cls", "mean"), layers=(0, 3), extra_kwargs=extra), images)
    p = model.num_prefix_tokens
    assert p == 1 + extra.get("reg_tokens", 0)
    out = emb.embed_batch(x)
    for layer in (0, 3):
        np.testing.assert_allclose(out["cls"][layer], seqs[layer][:, 0].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["mean"][layer], seqs[layer][:, p:].mean(1).numpy(), atol=1e-6, rtol=0)


def test_model_without_cls_token_refuses_cls_but_gives_mean(images: np.ndarray) -> None:
    for extra in (
        {"class_token": False, "global_pool": "avg"},
        {"class_token": False, "reg_tokens": 4, "global_pool": "avg"},
    ):
        with pytest.raises(EmbedError, match=r"no CLS token.*mean"):
            LayerEmbedder(micro_cfg(pooling="cls", extra_kwargs=extra))
    emb, x, seqs, _, _ = build(
        micro_cfg(pooling="mean", extra_kwargs={"class_token": False, "global_pool": "avg"}), images
    )
    np.testing.assert_allclose(emb.embed(x)[4], seqs[4].mean(1).numpy(), atol=1e-6, rtol=0)


def test_float16_output_and_two_poolings_need_embed_batch(images: np.ndarray) -> None:
    emb32 = LayerEmbedder(micro_cfg())
    emb16 = LayerEmbedder(micro_cfg(dtype="float16"))
    a, b = emb32.embed_images(images)["cls"], emb16.embed_images(images)["cls"]
    assert b[1].dtype == np.float16
    np.testing.assert_allclose(b[1].astype(np.float32), a[1], rtol=2e-3, atol=2e-3)
    big = create_model(micro_cfg())
    with torch.no_grad():
        big.cls_token.fill_(1e5)  # layer 0's CLS is cls_token + pos_embed[0]: beyond float16
    with pytest.raises(EmbedError, match="float16 range"):
        LayerEmbedder(micro_cfg(dtype="float16", layers=(0,)), model=big).embed_images(images[:2])
    with pytest.raises(EmbedError, match="exactly one pooling"):
        LayerEmbedder(micro_cfg(pooling=("cls", "mean"))).embed(torch.zeros(1, 3, 32, 32))


def test_prepared_uint8_path_equals_float_path(images: np.ndarray) -> None:
    cfg = micro_cfg(layers=(1, 4), batch_size=4)
    emb = LayerEmbedder(cfg)
    prepare = pickle.loads(pickle.dumps(make_prepare(cfg)))  # shipped to CPU workers
    prepared = np.stack([prepare(img) for img in images])
    assert prepared.dtype == np.uint8 and prepared.shape == (N_IMAGES, 3, 32, 32)
    via_uint8 = emb.embed_prepared(prepared)
    via_float = emb.embed_images(images, batch_size=4)["cls"]
    assert emb.dims == {1: 64, 4: 64}
    for layer in (1, 4):
        np.testing.assert_array_equal(via_uint8[layer], via_float[layer])
    assert describe_preprocessing(cfg) == {**emb.preprocessor.describe(), "pooling": ["cls"]}
    with pytest.raises(ValueError, match="expected uint8"):
        emb.embed_prepared(prepared[:, :, :16])


def test_resolve_layers_and_describe() -> None:
    assert resolve_layers("all", 12) == tuple(range(1, 13))
    assert resolve_layers((3, 0, 12), 12) == (0, 3, 12)
    for bad in ((13,), (-1,), (2, 2), ()):
        with pytest.raises(EmbedError):
            resolve_layers(bad, 12)
    with pytest.raises(EmbedError, match="blocks 1…4"):
        LayerEmbedder(micro_cfg(layers=(5,)))
    threads = torch.get_num_threads()
    try:
        d = LayerEmbedder(micro_cfg(layers=(1, 4)), num_threads=1).describe()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert d["layers"] == [1, 4] and d["pooling"] == ["cls"] and d["norm"] is False and d["random_init"] is True
    assert d["weights"] == {"source": "random_init", "seed": 0, "timm_version": d["timm_version"]}
    assert d["device"] == "cpu" and d["autocast"] is None and d["preprocess"]["crop"] == [32, 32]
    assert d["timm_version"] and d["torch_version"] and d["num_blocks"] == 4


def test_dinov2_uses_the_built_image_size(images: np.ndarray) -> None:
    cfg = EmbedConfig(
        model="vit_small_patch14_dinov2.lvd142m",
        random_init=True,
        model_kwargs={"img_size": 28, "depth": 2, "embed_dim": 64, "num_heads": 2},
        layers=(1, 2),
    )
    emb = LayerEmbedder(cfg)
    assert emb.preprocessor.input_size == (3, 28, 28)  # not the pretrained 518
    out = emb.embed_images(images[:3])["cls"]
    assert out[2].shape == (3, 64) and np.isfinite(out[2]).all()


@pytest.mark.gpu
def test_cuda_bf16_autocast_close_to_cpu_float32(images: np.ndarray) -> None:
    cfg = micro_cfg(pooling=("cls", "mean"))
    model = create_model(cfg)
    cpu = LayerEmbedder(cfg, model=model, device="cpu").embed_images(images)
    gpu = LayerEmbedder(cfg, model=model)
    assert gpu.device.type == "cuda" and gpu.describe()["autocast"] == "bfloat16"
    out = gpu.embed_images(images)
    for pooling in ("cls", "mean"):
        for layer in range(1, 5):
            a, b = cpu[pooling][layer], out[pooling][layer]
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cos.min() > 0.99, (pooling, layer, cos.min())


# ---- the CLI -------------------------------------------------------------------------------------------------
CLI_MODEL = ["--model", "vit_tiny_patch16_224", "--random-init"]
CLI_MODEL += [f"--model-kwarg={k}={v}" for k, v in MICRO.items()]


def test_cli_folder_with_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd
    from PIL import Image

    from memray.cli import main
    from memray.io.features import table_metadata
    from memray.io.images import decode_image

    folder = tmp_path / "gen"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    names = ["b.png", "a.png", "sub/c.png", "d.jpg"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out" / "feats.parquet"
    rc = main(["embed", "--images", str(folder), "--out", str(out), "--batch-size", "3", "--layers", "1,4", *CLI_MODEL])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "rows read = rows embedded + rows reported: 5 = 4 + 1" in printed and str(out) in printed

    df = pd.read_parquet(out)
    assert list(df.columns) == ["sample_id", "layer_1", "layer_4"]
    assert df["sample_id"].tolist() == ["a.png", "b.png", "d.jpg", "sub/c.png"]
    decoded = [decode_image((folder / s).read_bytes()) for s in df["sample_id"]]
    ref = LayerEmbedder(micro_cfg(layers=(1, 4))).embed_images(decoded)["cls"]
    np.testing.assert_allclose(np.stack(df["layer_4"].to_numpy()), ref[4], atol=1e-5, rtol=0)
    errors = pd.read_parquet(tmp_path / "out" / "feats.errors.parquet")
    assert errors.to_dict("records") == [
        {"set": "gen", "sample_id": "broken.png", "status": "corrupt", "error": errors["error"][0]}
    ]
    meta = table_metadata(str(out))
    assert meta["counts"] == {"rows_read": 5, "rows_embedded": 4, "rows_reported": 1}
    assert meta["embedder"]["layers"] == [1, 4] and meta["embedder"]["weights"]["source"] == "random_init"


def test_cli_npz_mean_float16_and_all_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from memray.cli import main

    imgs = np.random.default_rng(4).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", images=imgs)
    out = tmp_path / "f.parquet"
    args = ["--pooling", "mean", "--dtype", "float16", "--layers", "0,2"]
    assert main(["embed", "--images", str(tmp_path / "cifar.npz"), "--out", str(out), *args, *CLI_MODEL]) == 0
    table = pq.read_table(out)
    assert table.column("sample_id").to_pylist() == [f"cifar.npz/{i}" for i in range(6)]  # as the audit job names rows
    assert table.schema.field("layer_2").type.value_type == "halffloat"
    ref = LayerEmbedder(micro_cfg(layers=(0, 2), pooling="mean")).embed_images(imgs)["mean"]
    got = table.column("layer_0").combine_chunks().flatten().to_numpy().reshape(6, -1)
    np.testing.assert_allclose(got.astype(np.float32), ref[0], atol=2e-3, rtol=2e-3)
    assert pq.read_table(tmp_path / "f.errors.parquet").num_rows == 0

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    assert main(["embed", "--images", str(bad), "--out", str(tmp_path / "g.parquet"), *CLI_MODEL]) == 1
    assert "1 = 0 + 1" in capsys.readouterr().out and not (tmp_path / "g.parquet").exists()
