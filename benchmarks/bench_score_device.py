"""Seconds of one layer's scoring fit with the block arithmetic on the CPU (numpy) vs torch on a device, and how far
C_T and the cells move between them (``resources.score_device``, :mod:`memray.stats.device`).

Paper shape by default: T 50k, P 10k, d 768 → 64 PCA components, 10 cells, 10 k-means restarts, on bench_ct's
synthetic layer (``make_layer``), plus 3 generated sets of 500 scored in one search round. Both sides run in this
process with builtin ``map`` (one worker); each is timed ``--repeats`` times and the fastest run is printed (the
first CUDA run also pays the CUDA start-up, so the default is 2). Prints the fit seconds of each side and their
ratio, the whole layer (fit + search round) likewise, the largest |ΔC_T| over the sets and whether every cell agrees.

    python benchmarks/bench_score_device.py                       # on a GPU machine: numpy vs cuda
    python benchmarks/bench_score_device.py --device cpu --train 5000 --test 1000 --dim 128   # torch on the CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ct import make_layer

from memray.stats import device
from memray.stats.config import CTConfig
from memray.stats.score import fit_layer


def run_once(train, test, gens, cfg: CTConfig, backend) -> dict:
    """Fit and score one layer with ``backend`` (``None``: numpy); seconds, C_T per set, cells and centroids."""
    ids = np.arange(len(train)).astype(str)
    with device.use(backend):
        t0 = time.perf_counter()
        fitted = fit_layer(1, train, ids, test, cfg)
        fit_s = time.perf_counter() - t0
        try:
            scored = fitted.score_sets(gens)
            total = time.perf_counter() - t0
            return {
                "fit": fit_s,
                "layer": total,
                "ct": np.array([scored[n].ct for n in gens]),
                "cells": np.concatenate([fitted.test_cells] + [scored[n].cell for n in gens]),
                "train_counts": fitted.train_counts.copy(),
                "centroids": fitted.space.centroids.copy(),
            }
        finally:
            fitted.close()


def best_of(repeats: int, *args) -> dict:
    runs = [run_once(*args) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["fit"])
    best["layer"] = min(r["layer"] for r in runs)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--sets", type=int, default=3, help="generated sets of --gen samples, one search round")
    ap.add_argument("--gen", type=int, default=500)
    ap.add_argument("--restarts", type=int, default=10, help="ct.kmeans_nredo")
    ap.add_argument("--device", default="cuda", help="torch device of the other side (cuda, or cpu for a dry run)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side; the fastest is printed")
    args = ap.parse_args()

    train, test, gens_list = make_layer(1, args.train, args.test, args.dim, args.sets, args.gen, seed=0)
    gens = {f"set{i:02d}": g for i, g in enumerate(gens_list)}
    cfg = CTConfig(mode="paper", kmeans_nredo=args.restarts, bootstrap=0, top_k=0)
    backend = device.TorchBackend(args.device)
    print(f"T {args.train} x {args.dim} -> {cfg.pca_dim}, {cfg.cells} cells, {args.restarts} restarts; "
          f"P {args.test}; {args.sets} sets of {args.gen}; torch device {backend.device}")  # fmt: skip
    cpu = best_of(args.repeats, train, test, gens, cfg, None)
    other = best_of(args.repeats, train, test, gens, cfg, backend)
    name = backend.name
    for what in ("fit", "layer"):
        print(f"{what:>5}: numpy cpu {cpu[what]:.3f} s | {name} {other[what]:.3f} s | ratio cpu/{name} "
              f"{cpu[what] / other[what]:.2f}x")  # fmt: skip
    delta = float(np.max(np.abs(cpu["ct"] - other["ct"])))
    same_cells = bool(np.array_equal(cpu["cells"], other["cells"]))
    same_counts = bool(np.array_equal(cpu["train_counts"], other["train_counts"]))
    centroid_delta = float(np.max(np.abs(cpu["centroids"].astype(np.float64) - other["centroids"])))
    print(f"max |dC_T| = {delta:.3g} over {len(gens)} sets (C_T numpy {np.round(cpu['ct'], 4).tolist()})")
    print(f"cells identical: {same_cells} (test + generated), train counts identical: {same_counts}, "
          f"max |d centroid| = {centroid_delta:.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
