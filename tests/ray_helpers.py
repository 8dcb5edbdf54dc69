"""Helpers shared by the Ray job's integration tests: small real image sets and audit configs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from memray.job.config import AuditConfig, audit_config_from_dict

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def sample_images(name: str, n: int) -> np.ndarray:
    """The first ``n`` images (uint8, N×28×28) of a bundled Fashion-MNIST sample file."""
    with np.load(SAMPLE / f"{name}.npz") as z:
        return z["images"][:n]


def write_pngs(folder: Path, images: np.ndarray) -> list[str]:
    """Write images as PNG files ``img_00000.png`` …; returns the file names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        (folder / f"img_{i:05d}.png").write_bytes(buf.getvalue())
        names.append(f"img_{i:05d}.png")
    return names


def write_npz(path: Path, images: np.ndarray) -> str:
    """Write images as an ``.npz`` with key ``images``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images)
    return str(path)


def make_inputs(root: Path) -> dict[str, str]:
    """A small audit: 240 train PNGs (several shards), 120 test images (npz), two generated sets (npz)."""
    write_pngs(root / "train", sample_images("train", 240))
    return {
        "train": str(root / "train"),
        "test": write_npz(root / "test.npz", sample_images("test", 120)),
        "copy": write_npz(root / "copy.npz", sample_images("kde_copy_bw8", 90)),
        "real": write_npz(root / "real.npz", sample_images("heldout_real", 90)),
    }


def audit_config(inputs: dict[str, str], output: str, **overrides: Any) -> AuditConfig:
    """An audit config on a tiny random ViT (timm ``test_vit`` at 32 px), 3 cells, Euclidean distance."""
    data: dict[str, Any] = {
        "train": {"name": "train", "urls": [inputs["train"]]},
        "test": {"name": "test", "urls": [inputs["test"]]},
        "generated": [
            {"name": "copy", "urls": [inputs["copy"]], "label": "kde"},
            {"name": "real", "urls": [inputs["real"]], "label": "real"},
        ],
        "output": output,
        "embed": {"model": "test_vit", "random_init": True, "model_kwargs": {"img_size": 32}, "batch_size": 32},
        "ct": {"mode": "meehan", "cells": 3, "seed": 0},
        "resources": {
            "actors": 1,
            "actor_num_cpus": 0.5,
            "shard_rows": 64,
            "embed_batch_size": 32,
            "index_task_num_cpus": 0.5,
            "torch_threads": 1,
        },
    }
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return audit_config_from_dict(data)


HUB_REPO = "timm/test_vit.r160_in1k"  # the hub repository of timm's test_vit (its pretrained_cfg's hf_hub_id)


def save_weights(path: Path, seed: int) -> str:
    """Write a ``test_vit`` (32 px) checkpoint with seeded random weights (head included) as safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("test_vit", pretrained=False, img_size=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def fake_hub_cache(cache: Path, revision: str, seed: int) -> str:
    """A model-hub cache (``HF_HUB_CACHE`` layout) whose ``main`` of :data:`HUB_REPO` is ``revision``, holding a
    seeded ``test_vit`` checkpoint; returns the snapshot's weights file. Offline timm loads it like a download."""
    repo = cache / f"models--{HUB_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return save_weights(repo / "snapshots" / revision / "model.safetensors", seed)
