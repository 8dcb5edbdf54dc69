"""Train the demo's compact ViT encoder on Fashion-MNIST, deterministically; write its weights and record.

    python scripts/train_demo_encoder.py [--fashion-mnist DIR] [--out models/fmnist_vit_tiny]
    python scripts/train_demo_encoder.py --check          # retrain into a temp folder, compare with the record
    python scripts/train_demo_encoder.py --max-steps 5 --train-subset 256 --test-subset 100 --out /tmp/x  # smoke

The images get exactly memray's embed-time preprocessing (the ``paper`` preset at 28 px: grey → RGB, resize the short
side to 32, centre-crop 28, mean = std = 0.5), plus a seeded horizontal flip (a pilot showed a ±2 px shift only
slowed convergence at this budget). Everything is seeded, the data order is fixed, torch runs 2 threads with
deterministic algorithms. Outputs: ``model.safetensors`` (timm state dict *with* its 10-class head; memray's loader
drops it) and ``training.json`` (hashes, accuracy, timing, hyper-parameters, versions and the EmbedConfig fields).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from memray.embedding.preprocess import Preprocessor  # noqa: E402

log = logging.getLogger("train_demo_encoder")

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = ROOT / "models" / "fmnist_vit_tiny"
WEIGHTS_FILE, RECORD_FILE = "model.safetensors", "training.json"
MODEL = "vit_tiny_patch16_224"
MODEL_KWARGS: dict[str, Any] = {"img_size": 28, "patch_size": 4, "embed_dim": 96, "depth": 8, "num_heads": 3}
NUM_CLASSES = 10
HPARAMS: dict[str, Any] = {
    "seed": 0,
    "epochs": 3,
    "batch_size": 128,
    "optimizer": "AdamW",
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_steps": 100,
    "schedule": "linear warmup, cosine decay to min_lr over the planned epochs (max_steps only truncates)",
    "weight_decay": 0.05,
    "betas": [0.9, 0.999],
    "label_smoothing": 0.1,
    "grad_clip_norm": 1.0,
    "hflip_prob": 0.5,
    "threads": 2,
    "eval_batch_size": 500,
}
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}  # fmt: skip
CHECK_IMAGES, CHECK_ACC_POINTS, CHECK_EMB_TOL = 10, 0.5, 1e-4


def read_idx(path: Path) -> np.ndarray:
    """A gzipped unsigned-byte IDX file (Fashion-MNIST images or labels) as a numpy array."""
    raw = gzip.decompress(path.read_bytes())
    if raw[0] or raw[1] or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=raw[3], offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def load_split(source: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (all if ``None``) images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of a split."""
    images, labels = (read_idx(source / name) for name in FILES[split])
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{source}: unexpected Fashion-MNIST {split} shapes {images.shape}, {labels.shape}")
    return images[:limit], labels[:limit].astype(np.int64)


def paper_prepared(images: np.ndarray) -> np.ndarray:
    """memray's ``paper`` preset CPU half at the model's size, one grey channel kept: uint8 ``(N, 28, 28)``."""
    prep = Preprocessor.paper(MODEL_KWARGS["img_size"]).paper_prepare()
    out = np.stack([prep(img) for img in images])  # (N, 3, S, S), the grey value replicated
    if not (np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 0], out[:, 2])):
        raise AssertionError("grey images should be replicated to three equal channels")
    return np.ascontiguousarray(out[:, 0])


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded horizontal flip of each image with probability ``hflip_prob``: uint8 ``(B, S, S)``."""
    flip = rng.random(len(batch)) < HPARAMS["hflip_prob"]
    return np.where(flip[:, None, None], batch[:, :, ::-1], batch)


def to_input(batch: np.ndarray, pre: Preprocessor) -> torch.Tensor:
    """uint8 grey ``(B, S, S)`` → float32 ``(B, 3, S, S)`` through memray's :meth:`Preprocessor.finish`."""
    return pre.finish(torch.from_numpy(np.ascontiguousarray(batch)).unsqueeze(1).expand(-1, 3, -1, -1))


def lr_at(step: int, total: int) -> float:
    """Learning rate of (0-based) ``step`` of a ``total``-step schedule."""
    lr, low, warm = HPARAMS["lr"], HPARAMS["min_lr"], HPARAMS["warmup_steps"]
    if step < warm:
        return lr * (step + 1) / warm
    return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count, deterministic algorithms, forked global RNG; all restored afterwards."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def build_model() -> torch.nn.Module:
    """The classifier being trained: the timm architecture of :data:`MODEL_KWARGS` with a 10-class head."""
    import timm

    return timm.create_model(MODEL, pretrained=False, num_classes=NUM_CLASSES, **MODEL_KWARGS)


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, pre: Preprocessor) -> float:
    """Top-1 accuracy (fraction) on prepared uint8 images ``(N, S, S)``."""
    model.eval()
    bs, correct = HPARAMS["eval_batch_size"], 0
    with torch.inference_mode():
        for i in range(0, len(images), bs):
            pred = model(to_input(images[i : i + bs], pre)).argmax(1).numpy()
            correct += int((pred == labels[i : i + bs]).sum())
    return correct / len(images)


def train(source: Path, max_steps: int | None, train_subset: int | None, test_subset: int | None) -> tuple:
    """Train from scratch; returns ``(state dict, record)`` (the record lacks the weights' hash)."""
    start = time.perf_counter()
    tr_x, tr_y = load_split(source, "train", train_subset)
    te_x, te_y = load_split(source, "test", test_subset)
    tr_x, te_x = paper_prepared(tr_x), paper_prepared(te_x)
    pre = Preprocessor.paper(MODEL_KWARGS["img_size"])
    bs, epochs = HPARAMS["batch_size"], HPARAMS["epochs"]
    per_epoch = len(tr_x) // bs  # the last incomplete batch is dropped
    if per_epoch == 0:
        raise ValueError(f"{len(tr_x)} training images: fewer than one batch of {bs}")
    planned = epochs * per_epoch
    total = min(planned, max_steps) if max_steps else planned
    rng = np.random.default_rng(HPARAMS["seed"])
    with deterministic(HPARAMS["threads"]):
        torch.manual_seed(HPARAMS["seed"])
        model = build_model()
        opt = torch.optim.AdamW(
            model.parameters(), lr=HPARAMS["lr"], betas=tuple(HPARAMS["betas"]), weight_decay=HPARAMS["weight_decay"]
        )
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=HPARAMS["label_smoothing"])
        losses: list[float] = []
        step, prep_s, train_start = 0, time.perf_counter() - start, time.perf_counter()
        for epoch in range(epochs):
            order = rng.permutation(len(tr_x))
            model.train()
            epoch_loss = []
            for b in range(per_epoch):
                if step >= total:
                    break
                idx = order[b * bs : (b + 1) * bs]
                x, y = to_input(augment(tr_x[idx], rng), pre), torch.from_numpy(tr_y[idx])
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, planned)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), HPARAMS["grad_clip_norm"])
                opt.step()
                epoch_loss.append(float(loss.detach()))
                step += 1
                if step % 50 == 0:
                    log.info("step %d/%d epoch %d loss %.4f", step, total, epoch, np.mean(epoch_loss[-50:]))
            if epoch_loss:
                losses.append(float(np.mean(epoch_loss)))
        train_s = time.perf_counter() - train_start
        accuracy = evaluate(model, te_x, te_y, pre)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        n_params = sum(p.numel() for p in model.parameters())
    t_all = time.perf_counter() - start
    log.info("test accuracy %.4f after %d steps (%.0f s training)", accuracy, step, train_s)
    record = {
        "steps": step,
        "steps_per_epoch": per_epoch,
        "train_images": len(tr_x),
        "test_images": len(te_x),
        "test_accuracy": accuracy,
        "epoch_train_loss": losses,
        "params": n_params,
        "timing": {"data_prep_s": round(prep_s, 2), "train_s": round(train_s, 2), "total_s": round(t_all, 2)},
        "run": {"max_steps": max_steps, "train_subset": train_subset, "test_subset": test_subset},
    }
    return state, record


def environment(source: Path) -> dict[str, Any]:
    """Versions, CPU and data files (with SHA-256) of this run."""
    import safetensors
    import timm

    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.processor())
    data = {name: hashlib.sha256((source / name).read_bytes()).hexdigest() for pair in FILES.values() for name in pair}
    return {
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": HPARAMS["threads"],
        "data_dir": str(source),
        "data_files_sha256": data,
    }


def write(out: Path, state: dict[str, torch.Tensor], record: dict[str, Any], source: Path) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``training.json`` into ``out``; returns the full record."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    data = save(state, metadata={"format": "pt"})
    (out / WEIGHTS_FILE).write_bytes(data)
    full = {
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "head": f"head.* ({NUM_CLASSES} classes) included; memray drops it unless model_kwargs set num_classes",
        "embed_config": {"model": MODEL, "model_kwargs": MODEL_KWARGS, "preprocess": "paper", "pooling": ["cls"]},
        "dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), MIT licence",
        "hyperparameters": HPARAMS,
        **record,
        **environment(source),
    }
    (out / RECORD_FILE).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    return full


def layer1_cls(folder: Path, images: np.ndarray) -> np.ndarray:
    """Layer-1 CLS embeddings ``(N, D)`` of raw uint8 images through memray's own loader and embedder."""
    from memray.embedding.config import EmbedConfig
    from memray.embedding.embed import LayerEmbedder

    spec = json.loads((folder / RECORD_FILE).read_text())["embed_config"]
    cfg = EmbedConfig(**spec, weights=str(folder / WEIGHTS_FILE), layers=(1,))
    return LayerEmbedder(cfg, device="cpu", autocast=None).embed_images(images)["cls"][1]


def check(new: dict[str, Any], new_dir: Path, ref_dir: Path, source: Path) -> bool:
    """Compare a retrained model with the committed one: identical bytes, else accuracy and layer-1 CLS close."""
    ref = json.loads((ref_dir / RECORD_FILE).read_text())
    if new["run"] != ref["run"] or new["hyperparameters"] != ref["hyperparameters"]:
        log.warning("check: run settings or hyper-parameters differ from %s; expect a mismatch", ref_dir)
    if new["weights"]["sha256"] == ref["weights"]["sha256"]:
        log.info("check: identical weights (sha256 %s)", ref["weights"]["sha256"])
        return True
    images = load_split(source, "test", CHECK_IMAGES)[0]
    diff = float(np.abs(layer1_cls(new_dir, images) - layer1_cls(ref_dir, images)).max())
    d_acc = 100 * abs(new["test_accuracy"] - ref["test_accuracy"])
    ok = d_acc <= CHECK_ACC_POINTS and diff <= CHECK_EMB_TOL
    log.warning("check: sha256 differs; accuracy Δ %.3f points, layer-1 CLS max |Δ| %.2e: %s", d_acc, diff, ok)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion-mnist", type=Path, default=DEFAULT_SOURCE, help="folder of the four IDX .gz files")
    ap.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT}; with --check a temp folder)")
    ap.add_argument("--max-steps", type=int, help="stop after N optimiser steps (quick checks)")
    ap.add_argument("--train-subset", type=int, help="train on the first N training images only")
    ap.add_argument("--test-subset", type=int, help="evaluate on the first N test images only")
    ap.add_argument("--check", action="store_true", help="retrain and compare with the committed record")
    ap.add_argument("--reference", type=Path, default=DEFAULT_OUT, help="the committed folder --check compares with")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (args.fashion_mnist / FILES["train"][0]).exists():
        log.error("%s: Fashion-MNIST IDX files not found; apt-get install dataset-fashion-mnist", args.fashion_mnist)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (Path(tmp) if args.check else DEFAULT_OUT)
        state, record = train(args.fashion_mnist, args.max_steps, args.train_subset, args.test_subset)
        full = write(out, state, record, args.fashion_mnist)
        info = full["weights"]
        log.info("wrote %s (sha256 %s, %d bytes)", out / WEIGHTS_FILE, info["sha256"], info["bytes"])
        if args.check:
            return 0 if check(full, out, args.reference, args.fashion_mnist) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
