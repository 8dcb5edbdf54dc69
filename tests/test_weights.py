"""Model building: safetensors round trips (local and a real S3 endpoint), refusals, hub failure, random init."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save, save_file

from memray.config import EmbedConfig
from memray.embed import LayerEmbedder
from memray.storage import open_output
from memray.weights import WeightsError, create_model, load_model

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
    with caplog.at_level(logging.WARNING, logger="memray.weights"):
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
