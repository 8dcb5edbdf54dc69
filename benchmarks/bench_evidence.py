"""What the uncertainty and copy evidence cost beside the statistic itself, at the paper's shape, one layer.

Synthetic features as in ``bench_ct.py`` (|T| = 50k, |P| = 10k, d = 768 → PCA 64, 18 generated sets of 500).
One fit (``fit_layer``), then, measured side by side in this run:

- the statistic: one in-cell search round for the test set and every set, C_T per set (``score_sets``);
- ``+ bootstrap``: the seeded bootstrap interval of every set (``ct.bootstrap`` resamples, one call per layer);
- ``+ top-k``: the global top-k copy search (``ct.top_k``) for the test set and every set;
- ``+ views``: the same search for the test set and every set under ``--views − 1`` further views (the evidence's
  default is 7 views: identity, mirror, four 1-px shifts, a crop), as features near the identity ones.

Usage: ``python benchmarks/bench_evidence.py`` or small: ``--train 5000 --test 1000 --dim 128 --sets 3``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from bench_ct import make_layer

from memray.stats.config import CTConfig
from memray.stats.copies import global_neighbours
from memray.stats.score import fit_layer
from memray.stats.significance import bootstrap_ct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--sets", type=int, default=18)
    ap.add_argument("--gen", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--views", type=int, default=7, help="views per query image, identity included (1 = none)")
    args = ap.parse_args()
    train, test, gens = make_layer(1, args.train, args.test, args.dim, args.sets, args.gen, seed=0)
    cfg = CTConfig(bootstrap=args.bootstrap, top_k=args.top_k)
    names = {f"set{i:02d}": g for i, g in enumerate(gens)}
    t0 = time.perf_counter()
    fitted = fit_layer(1, train, None, test, cfg)
    t_fit = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        scored = fitted.score_sets(names)
        t_stat = time.perf_counter() - t0
        t0 = time.perf_counter()
        bootstrap_ct(fitted.test_dist, fitted.test_cells, {n: (g.dist, g.cell) for n, g in scored.items()},
                     fitted.train_counts, cfg.min_gen_per_cell, cfg.bootstrap, seed=0)  # fmt: skip
        t_boot = time.perf_counter() - t0
        t0 = time.perf_counter()
        global_neighbours(fitted, names, cfg.top_k)
        t_topk = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        under = {f"{n}@{v}": x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
                 for n, x in {"test": test, **names}.items() for v in range(1, args.views)}  # fmt: skip
        t0 = time.perf_counter()
        if under:
            global_neighbours(fitted, under, cfg.top_k)
        t_views = time.perf_counter() - t0
    finally:
        fitted.close()
    shape = f"T {args.train}, P {args.test}, d {args.dim}, {args.sets} sets x {args.gen}"
    print(f"one layer ({shape}); fit {t_fit:.2f} s")
    print(f"  statistic (in-cell search + C_T): {t_stat:7.2f} s   1.00x")
    print(f"  + bootstrap ({cfg.bootstrap} resamples):    {t_boot:7.2f} s   {t_boot / t_stat:.2f}x of the statistic")
    print(f"  + global top-{cfg.top_k} copies:            {t_topk:7.2f} s   {t_topk / t_stat:.2f}x of the statistic")
    more = f"+ {args.views - 1} further views (top-{cfg.top_k}):"
    print(f"  {more:<38}{t_views:7.2f} s   {t_views / t_stat:.2f}x of the statistic")
    total = t_fit + t_stat + t_boot + t_topk
    print(f"  whole layer with evidence, no views: {total:.2f} s = {total / (t_fit + t_stat):.2f}x the fit + statistic")
    total += t_views
    ratio = total / (t_fit + t_stat)
    print(f"  whole layer with evidence and {args.views} views: {total:.2f} s = {ratio:.2f}x the fit + statistic")


if __name__ == "__main__":
    main()
