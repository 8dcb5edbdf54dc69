"""The committed demo encoder (models/fmnist_vit_tiny) and its training script (scripts/train_demo_encoder.py)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memray.embedding.config import EmbedConfig
from memray.embedding.embed import LayerEmbedder
from memray.embedding.preprocess import Preprocessor
from memray.embedding.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "fmnist_vit_tiny"
SCRIPT = ROOT / "scripts" / "train_demo_encoder.py"
SAMPLE = ROOT / "data" / "sample"


@functools.cache
def _script():
    spec = importlib.util.spec_from_file_location("train_demo_encoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((MODEL_DIR / "training.json").read_text())


@pytest.fixture(scope="module")
def sample_test() -> tuple[np.ndarray, np.ndarray]:
    z = np.load(SAMPLE / "test.npz")
    return z["images"], z["labels"].astype(np.int64)


def _cfg(record: dict, **kwargs_extra: int) -> EmbedConfig:
    spec = dict(record["embed_config"])
    spec["model_kwargs"] = {**spec["model_kwargs"], **kwargs_extra}
    return EmbedConfig(**spec, weights=str(MODEL_DIR / record["weights"]["file"]))


def test_committed_weights_match_record(record: dict) -> None:
    data = (MODEL_DIR / record["weights"]["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["weights"]["sha256"]
    assert len(data) == record["weights"]["bytes"]
    assert record["embed_config"]["model_kwargs"]["depth"] >= 6


def test_memray_embeds_every_layer(record: dict, sample_test: tuple) -> None:
    images = sample_test[0][:16]
    embedder = LayerEmbedder(_cfg(record), device="cpu", autocast=None)
    assert embedder.weights_info["sha256"] == record["weights"]["sha256"]
    assert embedder.weights_info["dropped_head_keys"] == ["head.bias", "head.weight"]
    cls = embedder.embed_images(images)["cls"]
    depth, dim = record["embed_config"]["model_kwargs"]["depth"], record["embed_config"]["model_kwargs"]["embed_dim"]
    assert sorted(cls) == list(range(1, depth + 1))
    for layer in range(1, depth + 1):
        assert cls[layer].shape == (16, dim) and np.isfinite(cls[layer]).all()
        assert cls[layer].std(axis=0).mean() > 1e-3  # images are told apart, not one constant vector
        if layer > 1:
            assert np.abs(cls[layer] - cls[layer - 1]).max() > 1e-2


def test_head_classifies_sample_near_recorded_accuracy(record: dict, sample_test: tuple) -> None:
    images, labels = sample_test[0][:500], sample_test[1][:500]
    model, info = load_model(_cfg(record, num_classes=10))  # memray keeps the head when num_classes is given
    assert info["dropped_head_keys"] == []
    x = Preprocessor.paper(record["embed_config"]["model_kwargs"]["img_size"])(images)
    with torch.inference_mode():
        accuracy = float((model(x).argmax(1).numpy() == labels).mean())
    assert abs(accuracy - record["test_accuracy"]) < 0.05, (accuracy, record["test_accuracy"])
    assert accuracy > 0.8


def test_training_inputs_equal_memray_preprocessing(sample_test: tuple) -> None:
    mod = _script()
    images = sample_test[0][:32]
    pre = Preprocessor.paper(28)
    ours = mod.to_input(mod.paper_prepared(images), pre)
    assert torch.equal(ours, pre(images))


def test_augment_flips_some_images_and_keeps_the_rest(sample_test: tuple) -> None:
    mod = _script()
    images = sample_test[0][:40]
    out = mod.augment(images, np.random.default_rng(0))
    flipped = [np.array_equal(o, i[:, ::-1]) for i, o in zip(images, out, strict=True)]
    kept = [np.array_equal(o, i) for i, o in zip(images, out, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 5 < sum(f and not k for f, k in zip(flipped, kept, strict=True)) < 35
    assert np.array_equal(out, mod.augment(images, np.random.default_rng(0)))  # seeded


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes(), mtime=0))


def test_tiny_run_is_deterministic(tmp_path: Path) -> None:
    """Five steps on 256 sample images, once in a subprocess and once in-process: identical weights."""
    src = tmp_path / "fmnist"
    src.mkdir()
    for split, (img_name, lab_name) in _script().FILES.items():
        z = np.load(SAMPLE / f"{split}.npz")
        _write_idx(src / img_name, z["images"][:256])
        _write_idx(src / lab_name, z["labels"][:256])
    args = ["--fashion-mnist", str(src), "--max-steps", "5", "--train-subset", "256", "--test-subset", "64"]
    subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "a")], check=True, timeout=120)
    assert _script().main([*args, "--out", str(tmp_path / "b")]) == 0
    recs = [json.loads((tmp_path / d / "training.json").read_text()) for d in ("a", "b")]
    hashes = [hashlib.sha256((tmp_path / d / "model.safetensors").read_bytes()).hexdigest() for d in ("a", "b")]
    assert hashes[0] == hashes[1] == recs[0]["weights"]["sha256"] == recs[1]["weights"]["sha256"]
    assert recs[0]["steps"] == 5 and recs[0]["epoch_train_loss"] == recs[1]["epoch_train_loss"]
    committed = json.loads((MODEL_DIR / "training.json").read_text())["weights"]["sha256"]
    assert hashes[0] != committed  # five steps are not the full training
