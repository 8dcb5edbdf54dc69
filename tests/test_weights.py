"""Model building: safetensors round trips (local and a real S3 endpoint), refusals, hub failure, random init."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from ray_helpers import HUB_REPO, fake_hub_cache
from safetensors.torch import load_file, save, save_file

from memray.embedding.config import EmbedConfig
from memray.embedding.embed import LayerEmbedder
from memray.embedding.weights import INIT_SEED, WeightsError, create_model, load_model, state_digest
from memray.io.storage import open_output

MICRO = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
NAME = "vit_tiny_patch16_224"


def trained_like_model(seed: int = 7, **kwargs: object) -> torch.nn.Module:
    """An untrained ViT whose weights differ from memray's own seeded init (so a load is visible)."""
    torch.manual_seed(seed)
    model = timm.create_model(NAME, pretrained=False, **{**MICRO, **kwargs}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.forward_features(x)


def test_local_safetensors_round_trip(tmp_path: Path) -> None:
    src = trained_like_model()
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    model, info = load_model(EmbedConfig(model=NAME, weights=str(path), model_kwargs=MICRO))
    assert torch.equal(outputs(model), outputs(src))
    assert not model.training
    assert info["source"] == "file" and info["url"] == str(path) and info["filtered"] is False
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    emb = LayerEmbedder(EmbedConfig(model=NAME, weights=str(path), model_kwargs=MICRO))
    assert emb.describe()["weights"]["sha256"] == info["sha256"]


@pytest.mark.timeout(120)
def test_s3_safetensors_round_trip(s3_bucket: str) -> None:
    src = trained_like_model(seed=11)
    url = f"s3://{s3_bucket}/weights/vit.safetensors"
    data = save(src.state_dict())
    with open_output(url) as fh:
        fh.write(data)
    model, info = load_model(EmbedConfig(model=NAME, weights=url, model_kwargs=MICRO))
    assert torch.equal(outputs(model), outputs(src))
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)


def test_timm_filter_resamples_position_embedding(tmp_path: Path) -> None:
    src = trained_like_model(img_size=64)  # 8×8 patch grid; the target model has 4×4
    path = tmp_path / "big.safetensors"
    save_file(src.state_dict(), str(path))
    model, info = load_model(EmbedConfig(model=NAME, weights=str(path), model_kwargs=MICRO))
    assert info["filtered"] is True and model.pos_embed.shape == (1, 17, 64)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_mismatched_or_unreadable_files_are_refused(tmp_path: Path) -> None:
    state = trained_like_model().state_dict()
    del state["blocks.1.attn.qkv.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError, match=r"missing: blocks\.1\.attn\.qkv\.weight"):
        create_model(EmbedConfig(model=NAME, weights=str(tmp_path / "partial.safetensors"), model_kwargs=MICRO))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        create_model(EmbedConfig(model=NAME, weights=str(tmp_path / "junk.safetensors"), model_kwargs=MICRO))
    with pytest.raises(WeightsError, match="not found"):
        create_model(EmbedConfig(model=NAME, weights=str(tmp_path / "absent.safetensors"), model_kwargs=MICRO))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".pkl"])
def test_pickle_checkpoints_are_refused_unread(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    torch.save(trained_like_model().state_dict(), path)
    with pytest.raises(WeightsError, match=r"never loaded.*safetensors"):
        create_model(EmbedConfig(model=NAME, weights=str(path), model_kwargs=MICRO))


def test_offline_hub_failure_says_how_to_provide_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as info:
        create_model(EmbedConfig(model="test_vit", model_kwargs={"depth": 1}))
    msg = str(info.value)
    assert "--weights" in msg and "HF_HOME" in msg and "model.safetensors" in msg and "timm/test_vit" in msg


def test_random_init_is_seeded_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    cfg = EmbedConfig(model=NAME, random_init=True, model_kwargs=MICRO)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    with caplog.at_level(logging.WARNING, logger="memray.embedding.weights"):
        a, info = load_model(cfg)
    assert torch.rand(1).item() == before.item()  # the global RNG stream is untouched
    b = create_model(cfg)
    assert info == {"source": "random_init", "seed": 0, "timm_version": timm.__version__}
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert "measures nothing about semantics" in caplog.text
    assert not np.allclose(a.blocks[0].attn.qkv.weight.detach().numpy(), 0)


def test_unknown_model_and_bad_kwargs() -> None:
    with pytest.raises(WeightsError, match=r"list_models\('vit_\*'"):
        create_model(EmbedConfig(model="vit_does_not_exist_patch3", random_init=True))
    with pytest.raises(WeightsError, match="cannot build"):
        create_model(EmbedConfig(model=NAME, random_init=True, model_kwargs={**MICRO, "num_heads": 3}))


def test_backbone_checkpoints_with_and_without_head_give_identical_embeddings(tmp_path: Path) -> None:
    src = trained_like_model()  # timm's default model: a 1000-class head
    bare = timm.create_model(NAME, pretrained=False, num_classes=0, **MICRO)  # a feature-extractor checkpoint
    bare.load_state_dict({k: v for k, v in src.state_dict().items() if not k.startswith("head.")})
    save_file(src.state_dict(), str(tmp_path / "full.safetensors"))
    save_file(bare.state_dict(), str(tmp_path / "bare.safetensors"))
    assert not any(k.startswith("head.") for k in load_file(str(tmp_path / "bare.safetensors")))
    infos = {}
    for form in ("full", "bare"):
        model, infos[form] = load_model(
            EmbedConfig(model=NAME, weights=str(tmp_path / f"{form}.safetensors"), model_kwargs=MICRO)
        )
        assert model.num_classes == 0 and not any(k.startswith("head.") for k in model.state_dict())
        assert torch.equal(outputs(model), outputs(src))
    assert infos["full"]["dropped_head_keys"] == ["head.bias", "head.weight"]
    assert infos["bare"]["dropped_head_keys"] == []
    images = np.random.default_rng(1).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)

    def embed(weights: str | None, model: torch.nn.Module | None = None) -> dict:
        cfg = EmbedConfig(
            model=NAME, weights=weights, random_init=weights is None, model_kwargs=MICRO,
            pooling=("cls", "mean"), layers=(0, 1, 2), norm=True,
        )  # fmt: skip
        return LayerEmbedder(cfg, model=model).embed_images(images)

    reference = embed(None, model=src)  # the model with its head, as timm builds it
    for form in ("full", "bare"):
        out = embed(str(tmp_path / f"{form}.safetensors"))
        for pooling in ("cls", "mean"):
            for layer in (0, 1, 2):
                np.testing.assert_array_equal(out[pooling][layer], reference[pooling][layer])


def test_num_classes_in_model_kwargs_keeps_the_head(tmp_path: Path) -> None:
    src = trained_like_model()
    save_file(src.state_dict(), str(tmp_path / "full.safetensors"))
    kwargs = {**MICRO, "num_classes": 1000}
    model, info = load_model(EmbedConfig(model=NAME, weights=str(tmp_path / "full.safetensors"), model_kwargs=kwargs))
    assert torch.equal(model.head.weight, src.head.weight) and info["dropped_head_keys"] == []
    save_file(
        {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}, str(tmp_path / "bare.safetensors")
    )
    with pytest.raises(WeightsError, match=r"missing: head\.bias, head\.weight"):
        load_model(EmbedConfig(model=NAME, weights=str(tmp_path / "bare.safetensors"), model_kwargs=kwargs))


def test_random_init_has_no_head_and_keeps_timms_seeded_weights() -> None:
    model = create_model(EmbedConfig(model=NAME, random_init=True, model_kwargs=MICRO))
    torch.manual_seed(INIT_SEED)
    ref = timm.create_model(NAME, pretrained=False, **MICRO).state_dict()  # what memray built before: with a head
    own = model.state_dict()
    assert model.num_classes == 0 and set(own) == set(ref) - {"head.weight", "head.bias"}
    assert all(torch.equal(v, ref[k]) for k, v in own.items())


def test_state_digest_follows_the_tensors() -> None:
    a, b = trained_like_model(seed=1), trained_like_model(seed=1)
    assert state_digest(a) == state_digest(b) and len(state_digest(a)) == 64
    with torch.no_grad():
        b.blocks[0].mlp.fc1.bias[0] += 1e-6  # one value of one tensor
    assert state_digest(b) != state_digest(a)
    assert state_digest(a.half()) != state_digest(trained_like_model(seed=1))  # the dtype is part of it


def test_weights_digest_is_sha256_and_size_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memray.io import safetensors_io

    path = tmp_path / "model.safetensors"
    save_file(trained_like_model().state_dict(), str(path))
    monkeypatch.setattr(safetensors_io, "DIGEST_CHUNK", 1000)  # many chunks: the digest of the whole file still
    got = safetensors_io.weights_digest(str(path))
    assert got == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
    with pytest.raises(WeightsError, match=r"\.pth checkpoints are pickles"):
        safetensors_io.weights_digest(str(tmp_path / "model.pth"))


@pytest.mark.timeout(120)
def test_s3_weights_digest_adds_the_etag(s3_bucket: str) -> None:
    from memray.io.safetensors_io import weights_digest

    url = f"s3://{s3_bucket}/w/model.safetensors"
    data = save(trained_like_model().state_dict())
    with open_output(url) as fh:
        fh.write(data)
    got = weights_digest(url)
    assert got["sha256"] == hashlib.sha256(data).hexdigest() and got["bytes"] == len(data) and got["etag"]


def test_hub_weights_record_revision_and_state_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An offline hub cache: the record names hub id, cached revision and the state digest; a pin holds a revision."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    file_a = fake_hub_cache(tmp_path, "a" * 40, seed=1)
    hub = EmbedConfig(model="test_vit", model_kwargs={"img_size": 32})
    model, info = load_model(hub)
    assert (info["source"], info["hf_hub_id"], info["revision"]) == ("hub", HUB_REPO, "a" * 40)
    from_file, _ = load_model(EmbedConfig(model="test_vit", weights=file_a, model_kwargs={"img_size": 32}))
    assert info["state_sha256"] == state_digest(model) == state_digest(from_file)  # the same tensors

    fake_hub_cache(tmp_path, "b" * 40, seed=2)  # main moves to another checkpoint
    _, moved = load_model(hub)
    assert moved["revision"] == "b" * 40 and moved["state_sha256"] != info["state_sha256"]
    overlay = {"pretrained_cfg_overlay": {"hf_hub_id": f"{HUB_REPO}@{'a' * 40}"}}
    _, pinned = load_model(EmbedConfig(model="test_vit", model_kwargs={"img_size": 32, **overlay}))
    assert pinned["revision"] == "a" * 40 and pinned["state_sha256"] == info["state_sha256"]
