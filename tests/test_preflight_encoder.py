"""check_encoder: the cheap pre-flight check of model name, weights header and layers (local files and real S3)."""

from __future__ import annotations

import socket
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import timm
import torch
from safetensors.torch import save, save_file

from memray.config import ConfigError
from memray.embedding import weights
from memray.embedding.config import EmbedConfig
from memray.embedding.embed import EmbedError, LayerEmbedder, check_encoder, check_input
from memray.embedding.weights import WeightsError, load_model
from memray.io.storage import filesystem, open_output

NAME = "vit_tiny_patch16_224"
MICRO = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def state(**kwargs: object) -> dict[str, torch.Tensor]:
    """A micro ViT's state dict (with timm's default 1000-class head unless ``num_classes`` says otherwise)."""
    torch.manual_seed(3)
    return timm.create_model(NAME, pretrained=False, **{**MICRO, **kwargs}).state_dict()


def cfg(weights: str | None = None, **over: object) -> EmbedConfig:
    base: dict = {"model": NAME, "model_kwargs": MICRO, "weights": weights, "random_init": weights is None}
    return EmbedConfig(**{**base, **over})


def test_valid_checkpoint_record_with_and_without_head(tmp_path: Path) -> None:
    full = state()
    save_file(full, str(tmp_path / "full.safetensors"))
    save_file({k: v for k, v in full.items() if not k.startswith("head.")}, str(tmp_path / "bare.safetensors"))
    a = check_encoder(cfg(str(tmp_path / "full.safetensors"), layers=(0, 2), pooling=("cls", "mean")))
    b = check_encoder(cfg(str(tmp_path / "bare.safetensors")))
    assert a["num_blocks"] == b["num_blocks"] == 2
    assert a["layers"] == [0, 2] and b["layers"] == [1, 2]
    assert a["dims"] == {0: 64, 2: 64} and a["architecture"] == "VisionTransformer"
    assert a["weights"]["dropped_head_keys"] == ["head.bias", "head.weight"] and b["weights"]["dropped_head_keys"] == []
    assert a["weights"]["tensors"] == len(full) and a["weights"]["filtered"] is False
    assert a["weights"]["bytes"] == (tmp_path / "full.safetensors").stat().st_size
    emb = LayerEmbedder(cfg(str(tmp_path / "full.safetensors"), layers=(0, 2), pooling=("cls", "mean")))
    assert list(emb.resolved_layers) == a["layers"] and emb.dims == a["dims"]  # the embedder agrees


def test_missing_and_pickle_and_non_safetensors_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"absent\.safetensors: weights file not found"):
        check_encoder(cfg(str(tmp_path / "absent.safetensors")))
    torch.save(state(), tmp_path / "model.pth")
    with pytest.raises(WeightsError, match=r"\.pth checkpoints are pickles"):
        check_encoder(cfg(str(tmp_path / "model.pth")))
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "model.pth").read_bytes())  # a zip with a new name
    assert zipfile.is_zipfile(tmp_path / "renamed.safetensors")
    with pytest.raises(WeightsError, match=r"renamed\.safetensors: not a safetensors file"):
        check_encoder(cfg(str(tmp_path / "renamed.safetensors")))
    (tmp_path / "text.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!")
    with pytest.raises(WeightsError, match="header is not JSON"):
        check_encoder(cfg(str(tmp_path / "text.safetensors")))
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(WeightsError, match=r"not a safetensors file.*file size 2 bytes"):
        check_encoder(cfg(str(tmp_path / "tiny.safetensors")))


def test_truncated_header_and_truncated_data(tmp_path: Path) -> None:
    data = save(state())
    n = int.from_bytes(data[:8], "little")
    (tmp_path / "head_cut.safetensors").write_bytes(data[: 8 + n // 2])
    with pytest.raises(WeightsError, match=rf"cut off \(header length {n}, file size {8 + n // 2} bytes\)"):
        check_encoder(cfg(str(tmp_path / "head_cut.safetensors")))
    (tmp_path / "data_cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(WeightsError, match=rf"header describes {len(data)} bytes, the file has {len(data) - 100}"):
        check_encoder(cfg(str(tmp_path / "data_cut.safetensors")))


def test_checkpoint_of_another_model_names_the_keys(tmp_path: Path) -> None:
    save_file(state(embed_dim=32), str(tmp_path / "narrow.safetensors"))
    with pytest.raises(WeightsError, match=r"shape mismatch: blocks\.0\.attn\.proj\.bias \(32,\) vs model \(64,\)"):
        check_encoder(cfg(str(tmp_path / "narrow.safetensors")))
    save_file(state(depth=3), str(tmp_path / "deeper.safetensors"))
    with pytest.raises(WeightsError, match=r"unexpected: blocks\.2\."):
        check_encoder(cfg(str(tmp_path / "deeper.safetensors")))
    # the loader refuses the same files (the preflight does not pass what the load would refuse)
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_model(cfg(str(tmp_path / "narrow.safetensors")))


def test_names_timms_filter_fixes_pass_as_they_load(tmp_path: Path) -> None:
    """Rule: when names/shapes differ, timm's checkpoint_filter_fn runs on meta tensors of the header's shapes;
    the preflight fails only if its output still does not fit, i.e. exactly when the load would fail."""
    moved = {**state(img_size=64), "mask_token": torch.zeros(1, 64)}  # other grid + DINOv2-original extra key
    save_file(moved, str(tmp_path / "dino_style.safetensors"))
    record = check_encoder(cfg(str(tmp_path / "dino_style.safetensors")))
    assert record["weights"]["filtered"] is True
    model, info = load_model(cfg(str(tmp_path / "dino_style.safetensors")))
    assert info["filtered"] is True and model.pos_embed.shape == (1, 17, 64)


def test_layers_and_model_name_errors() -> None:
    twelve = EmbedConfig(model=NAME, random_init=True, layers=(13,))  # ViT-Ti: 12 blocks, built on meta only
    with pytest.raises(EmbedError, match=r"layers=\[13\] \(embed\.layers / --layers\): this model has blocks 1…12"):
        check_encoder(twelve)
    assert check_encoder(EmbedConfig(model=NAME, random_init=True, layers=(12, 0)))["layers"] == [0, 12]
    with pytest.raises(WeightsError, match=r"unknown timm model 'vit_nope_patch3'.*list_models"):
        check_encoder(EmbedConfig(model="vit_nope_patch3", random_init=True))
    with pytest.raises(EmbedError, match="no CLS token"):
        check_encoder(cfg(model_kwargs={**MICRO, "class_token": False, "global_pool": "avg"}))


def test_hub_model_checks_name_and_layers_without_the_hub() -> None:
    """HF_HUB_OFFLINE=1 (conftest) and no cache: any hub access would fail; a ViT-B is built on meta only."""
    start = time.perf_counter()
    record = check_encoder(EmbedConfig(model="vit_base_patch16_224.orig_in21k", layers="all"))
    assert time.perf_counter() - start < 5
    assert record["weights"] == {"source": "hub"} and record["num_blocks"] == 12
    assert record["dims"] == {layer: 768 for layer in range(1, 13)}


class CountingProxy:
    """A TCP relay in front of an HTTP endpoint that counts the bytes the server sends back."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.received = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self._server.close()


@pytest.mark.timeout(120)
def test_s3_weights_check_reads_only_the_header(s3_endpoint: str, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/weights/big.safetensors"
    data = save(state(num_classes=40_000))  # a 10 MB head: the file is ~10.6 MB, its header ~8 kB
    assert len(data) > 10 * 1024**2
    with open_output(url) as fh:
        fh.write(data)
    proxy = CountingProxy(s3_endpoint)
    try:
        options = {"client_kwargs": {"endpoint_url": proxy.url}}
        record = check_encoder(cfg(url), storage_options=options)
        header_read = proxy.received
        assert record["weights"]["bytes"] == len(data) and record["weights"]["dropped_head_keys"] == [
            "head.bias",
            "head.weight",
        ]
        assert header_read < 64 * 1024, f"{header_read} bytes came from S3 for a check of a {len(data)}-byte file"
        fs, path = filesystem(url, options)
        assert fs.cat_file(path) == data  # the relay counts what a full read costs
        assert proxy.received - header_read >= len(data)
    finally:
        proxy.close()


def test_an_input_the_model_cannot_take_is_one_line_before_anything_runs() -> None:
    with pytest.raises(EmbedError) as info:  # a fixed-size model given another crop
        check_encoder(cfg(crop=48))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{NAME} does not take the 3x48x48 input (channels x height x width)")
    assert "built for 32x32, 3 channel(s): leave embed.crop (--crop) unset, or build the model for the crop" in text
    grey = cfg(model_kwargs={**MICRO, "in_chans": 1})  # a greyscale encoder is fed greyscale: the check passes
    assert check_encoder(grey)["input_size"] == [1, 32, 32] and check_encoder(cfg())["input_size"] == [3, 32, 32]
    with pytest.raises(EmbedError, match=r"does not take the 3x32x32 input .*Given groups=1|Invalid channel"):
        check_input(weights.preflight_model(grey)[0], grey, (3, 32, 32))  # what RGB input into it would do
    with pytest.raises(ConfigError, match=r"^embed\.mean=\[0\.5, 0\.5, 0\.5\]: must be 1 value\(s\)"):
        check_encoder(cfg(model_kwargs={**MICRO, "in_chans": 1}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def test_pooling_auto_resolves_in_the_check() -> None:
    no_cls = {**MICRO, "class_token": False, "global_pool": "avg"}
    assert check_encoder(cfg(model_kwargs=no_cls, pooling=("auto",)))["pooling"] == ["mean"]
    assert check_encoder(cfg(pooling=("auto", "mean")))["pooling"] == ["cls", "mean"]
    with pytest.raises(EmbedError, match=r"no CLS token .*use pooling 'mean' \(mean of patch tokens\) or 'auto'"):
        check_encoder(cfg(model_kwargs=no_cls))
