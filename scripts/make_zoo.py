"""Build a zoo of small Fashion-MNIST generators with per-image ground truth, for memorization-detection benchmarks.

    python scripts/make_zoo.py --out DIR [--seeds 0 1 2] [--n-train 2000] [--n-gen 500] [--quick] [--only KIND ...]
                               [--threads 1] [--fashion-mnist /usr/share/datasets/fashion-mnist]

Writes under DIR: ``train/`` (T), ``test/`` (P, from the first half of the 10k test file), ``heldout/`` (a pool of
further test images from its second half: disjoint from P and T by pixel hash), ``gen/<kind>-s<seed>/`` (PNGs
``images/00000.png``… and ``truth.parquet``: one row per image; the truth is kept out of the image folder, which
memray would otherwise read as an input), ``zoo.json`` (groups, parameters, seeds, timings,
diversity statistics), ``labels.csv`` (set → kind, group) and ``audit.yaml`` (the sets as a memray audit config).
Kinds and groups are listed in ``scripts/zoo_kinds.py``. Everything is CPU torch/numpy and seeded: the same
arguments (``--threads`` included) give the same pixels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
import torch
import zoo_kinds as zk
from make_sample_data import DEFAULT_SOURCE, load_split
from PIL import Image
from threadpoolctl import threadpool_limits

log = logging.getLogger("make_zoo")
DATA_SEED = 20250601  # which real images go into train/, test/ and heldout/
SIZES = {"n_train": 2000, "n_test": 1000, "n_heldout": 2000, "n_gen": 500}
QUICK_SIZES = {"n_train": 300, "n_test": 100, "n_heldout": 100, "n_gen": 40}


def pixel_hashes(images: np.ndarray) -> np.ndarray:
    """SHA-1 of each image's bytes (n,) — equal pixels, equal hash."""
    return np.array([hashlib.sha1(im.tobytes()).hexdigest() for im in images])


def select_real(tr: np.ndarray, te: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Sorted rows of T (training file), P (first half of the test file) and the held-out pool (second half).

    Duplicated pixels are dropped first: T draws from first occurrences in the training file; P and the pool from
    first occurrences in the test file whose pixels are not anywhere in the training file. So the three are
    pairwise disjoint by pixel hash.
    """
    rng = np.random.default_rng(seed)
    tr_h, te_h = pixel_hashes(tr), pixel_hashes(te)
    tr_first = np.sort(np.unique(tr_h, return_index=True)[1])
    te_first = np.sort(np.unique(te_h, return_index=True)[1])
    te_ok = te_first[~np.isin(te_h[te_first], tr_h)]
    half = len(te) // 2
    pools = {"train": tr_first, "test": te_ok[te_ok < half], "heldout": te_ok[te_ok >= half]}
    out = {}
    for name, pool in pools.items():
        n = sizes[f"n_{name}"]
        if n > len(pool):
            raise SystemExit(f"--n-{name.replace('heldout', 'heldout')} {n}: only {len(pool)} distinct images there")
        out[name] = np.sort(rng.choice(pool, n, replace=False))
    return out


def write_pngs(folder: Path, images: np.ndarray, names: list[str]) -> None:
    """``images`` (n, 28, 28) uint8 as grey PNGs ``folder/name``; the folder is emptied first."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for im, name in zip(images, names, strict=True):
        Image.fromarray(im, mode="L").save(folder / name)


def set_stats(drawn: zk.Drawn, nn_row: np.ndarray, nn_l2: np.ndarray) -> dict[str, Any]:
    """Simple collapse/copy indicators: distinct nearest training images, NN distance, mean pairwise distance."""
    x = drawn.images.reshape(len(drawn.images), -1).astype(np.float64) / 255.0
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    n = len(x)
    return {
        "distinct_nn_train": len(np.unique(nn_row)),
        "median_nn_l2": round(float(np.median(nn_l2)), 4),
        "exact_train_pixels": int((nn_l2 == 0).sum()),
        "mean_pairwise_l2": round(float(np.sqrt(d2).sum() / max(n * (n - 1), 1)), 4),
        "distinct_images": len(np.unique(pixel_hashes(drawn.images))),
    }


def write_truth(
    folder: Path, drawn: zk.Drawn, names: list[str], nn_row: np.ndarray, nn_l2: np.ndarray, train_names: list[str]
) -> None:
    """``truth.parquet``: file, is_copy, source_train_file, transform, nn_train_file, nn_l2, then kind extras."""
    cols: dict[str, Any] = {
        "file": pa.array(names, pa.string()),
        "is_copy": pa.array(drawn.is_copy.tolist(), pa.bool_()),
        "source_train_file": pa.array(drawn.source, pa.string()),
        "transform": pa.array(drawn.transform, pa.string()),
        "nn_train_file": pa.array([train_names[r] for r in nn_row], pa.string()),
        "nn_l2": pa.array(nn_l2, pa.float64()),
    }
    cols |= {k: pa.array(v) for k, v in drawn.extra.items()}
    pq.write_table(pa.table(cols), folder / "truth.parquet")
    for fname, text in drawn.files.items():
        (folder / fname).write_text(text)


def build_set(ctx: zk.Ctx, out: Path, kind: str, seed: int) -> dict[str, Any]:
    """Draw, write and describe one generated set ``gen/<kind>-s<seed>/``; its zoo.json entry."""
    start = time.perf_counter()
    drawn = zk.DRAW[kind](ctx, kind, seed)
    drawn_s = time.perf_counter() - start
    if drawn.images.shape != (ctx.n_gen, 28, 28) or drawn.images.dtype != np.uint8:
        raise RuntimeError(f"{kind}: drew {drawn.images.shape} {drawn.images.dtype}, expected ({ctx.n_gen}, 28, 28)")
    folder, names = out / "gen" / f"{kind}-s{seed}", [f"{i:05d}.png" for i in range(ctx.n_gen)]
    if folder.exists():
        shutil.rmtree(folder)
    write_pngs(folder / "images", drawn.images, names)
    nn_row, nn_l2 = zk.nearest(ctx.train, drawn.images)
    write_truth(folder, drawn, names, nn_row, nn_l2, ctx.train_names)
    rec = dict(drawn.record)
    train_s = rec.pop("train_s", 0.0)
    entry = {
        "kind": kind,
        "group": zk.GROUPS[kind],
        "seed": seed,
        "folder": f"gen/{kind}-s{seed}/images",
        "n": ctx.n_gen,
        "n_copies": int(drawn.is_copy.sum()),
        **rec,
        "train_s": train_s,
        "sample_s": round(drawn_s - (train_s if rec.get("trained_here") else 0.0), 3),
        "total_s": round(time.perf_counter() - start, 3),
        "stats": set_stats(drawn, nn_row, nn_l2),
    }
    log.info("%-24s %s", entry["folder"], json.dumps({k: entry[k] for k in ("train_s", "total_s", "stats")}))
    return entry


def write_index(out: Path, zoo: dict[str, Any]) -> None:
    """zoo.json, labels.csv (set, kind, group, seed, folder, n, n_copies) and audit.yaml (paths relative to DIR)."""
    (out / "zoo.json").write_text(json.dumps(zoo, indent=1, sort_keys=True) + "\n")
    sets = sorted(zoo["sets"].items())
    rows = [f"{s},{e['kind']},{e['group']},{e['seed']},{e['folder']},{e['n']},{e['n_copies']}" for s, e in sets]
    (out / "labels.csv").write_text("\n".join(["set,kind,group,seed,folder,n,n_copies", *rows]) + "\n")
    gen = [f"  - {{name: {s}, urls: [{e['folder']}], label: {e['kind']}}}   # {e['group']}" for s, e in sets]
    yaml = [
        "# memray audit config for this zoo; relative paths are relative to this file's folder. The encoder is",
        "# memray's default: give one with --set embed.weights=... (see README: Configuration reference).",
        "train: {name: train, urls: [train]}",
        "test: {name: test, urls: [test]}",
        "generated:",
        *gen,
        "output: audit",
    ]
    (out / "audit.yaml").write_text("\n".join(yaml) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (one set per kind and seed)")
    for key, value in SIZES.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a few training steps (for tests)")
    ap.add_argument("--only", nargs="+", choices=sorted(zk.GROUPS), help="build only these kinds")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (results depend on it)")
    ap.add_argument("--fashion-mnist", default=DEFAULT_SOURCE, help="folder with the four *-ubyte.gz IDX files")
    ap.add_argument("--data-seed", type=int, default=DATA_SEED, help="seed of the train/test/heldout selection")
    return ap.parse_args(argv)


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Write the real folders and every requested (kind, seed) set under ``args.out``; the zoo record."""
    start, out, source = time.perf_counter(), Path(args.out), Path(args.fashion_mnist)
    base = QUICK_SIZES if args.quick else SIZES
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    params = {k: {**p, **(zk.QUICK.get(k, {}) if args.quick else {})} for k, p in zk.PARAMS.items()}
    if sizes["n_gen"] > sizes["n_heldout"]:
        raise SystemExit(
            f"--n-gen {sizes['n_gen']} > --n-heldout {sizes['n_heldout']}: the heldout kind draws "
            "without replacement; raise --n-heldout"
        )
    data = {"source": str(source), "data_seed": args.data_seed, "quick": args.quick, **sizes}
    old = json.loads((out / "zoo.json").read_text()) if (out / "zoo.json").exists() else None
    if old is not None and old.get("data") != data:
        raise SystemExit(f"{out}/zoo.json was built with other data settings ({old.get('data')}); use a new --out")
    tr, _ = load_split(source, "train")
    te, _ = load_split(source, "test")
    rows = select_real(tr, te, sizes, args.data_seed)
    names = {
        "train": [f"train-{r:05d}.png" for r in rows["train"]],
        "test": [f"t10k-{r:05d}.png" for r in rows["test"]],
        "heldout": [f"t10k-{r:05d}.png" for r in rows["heldout"]],
    }
    for split, images in (("train", tr), ("test", te), ("heldout", te)):
        write_pngs(out / split, images[rows[split]], names[split])
    ctx = zk.Ctx(tr[rows["train"]], names["train"], te[rows["heldout"]], names["heldout"], sizes["n_gen"], params)
    kinds = args.only or list(zk.GROUPS)
    sets = dict(old["sets"]) if old else {}
    for seed in args.seeds:
        for kind in kinds:
            sets[f"{kind}-s{seed}"] = build_set(ctx, out, kind, seed)
    return {
        "dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), MIT licence",
        "data": data,
        "real": {
            "train": "train/: T, rows of train-images-idx3-ubyte (file name = row)",
            "test": "test/: P, rows < 5000 of t10k-images-idx3-ubyte",
            "heldout": "heldout/: pool for the heldout kind, rows >= 5000 of t10k (disjoint from P and T by pixels)",
        },
        "kinds": {
            k: {"group": g, "model": zk.MODEL_OF.get(k), "params": params[k], "about": _about(k)}
            for k, g in zk.GROUPS.items()
        },
        "sets": sets,
        "threads": args.threads,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
        },
        "last_build_s": round(time.perf_counter() - start, 1),
    }


def _about(kind: str) -> str:
    return (zk.DRAW[kind].__doc__ or "").strip().splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not (Path(args.fashion_mnist) / "train-images-idx3-ubyte.gz").exists():
        print(
            f"{args.fashion_mnist}: Fashion-MNIST IDX files not found; apt-get install dataset-fashion-mnist",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        zoo = build(args)
    write_index(Path(args.out), zoo)
    log.info("wrote %d sets under %s in %.1f s", len(zoo["sets"]), args.out, zoo["last_build_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
