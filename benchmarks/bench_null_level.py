"""Family-wise level of the verdict on seeded null sets: how often a set that does not copy is flagged.

Each replicate draws a fresh world — training, test (P redrawn every time) and generated sets from one law — and
scores it end to end (:func:`memray.stats.layers.score_features`, 2 layers, copies top-k, the evidence score
``--statistic``, the replication and concentration tests), then reads the verdict. A verdict other than
``no_evidence`` on a null set is a false alarm; the family (C_T per layer, kept cells × layers, replication and
concentration per layer) is Holm-corrected at ``ct.alpha``, so the rate must not exceed α beyond Monte-Carlo
error. Prints the rate with its Wilson 95% interval, per test kind that carried a false alarm.

    python benchmarks/bench_null_level.py --worlds 500 --m 300 --n 800 --top-k 5 --statistic relative
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter

import numpy as np

from memray.fingerprint.evaluate import wilson_interval
from memray.io.features import FeatureSet
from memray.stats.config import CTConfig, EvidenceConfig
from memray.stats.layers import score_features


def world(rng: np.random.Generator, n_train: int, n: int, m: int, d: int) -> list[FeatureSet]:
    """Train, test and one generated set from one mixture law; layer 2 is a fixed nonlinear map of layer 1."""
    centres = np.random.default_rng(0).normal(scale=3.0, size=(8, d))
    out = []
    for k, prefix in ((n_train, "t"), (n, "p"), (m, "g")):
        x = centres[rng.integers(0, 8, k)] + rng.normal(size=(k, d))
        ids = np.array([f"{prefix}{i}" for i in range(k)], dtype=object)
        out.append(FeatureSet(ids, {1: x.astype(np.float32), 2: np.tanh(x[:, ::-1] / 2).astype(np.float32)}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=500)
    ap.add_argument("--m", type=int, default=300)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--statistic", choices=["relative", "distance"], default="relative", help="evidence.statistic")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cfg = CTConfig(mode="meehan", pca_dim=None, kmeans_nredo=1, bootstrap=0, top_k=args.top_k, alpha=args.alpha)
    ev = EvidenceConfig(statistic=args.statistic)
    rng = np.random.default_rng(args.seed)
    flagged, carried, t0 = 0, Counter(), time.perf_counter()
    for _ in range(args.worlds):
        train, test, gen = world(rng, args.n_train, args.n, args.m, args.dim)
        v = score_features(train, test, {"g": gen}, cfg, evidence=ev).verdicts.iloc[0]
        if v["verdict"] not in ("no_evidence", "undefined"):
            flagged += 1
            carried[v["test"].split(":")[0]] += 1
    lo, hi = wilson_interval(flagged, args.worlds)
    print(f"null worlds {args.worlds} (m={args.m}, n={args.n}, 2 layers, top-{args.top_k}, {args.statistic}, "
          f"seed {args.seed}), alpha {args.alpha}: "
          f"flagged {flagged} = {flagged / args.worlds:.3f} (Wilson 95% {lo:.3f}-{hi:.3f}); carried by "
          f"{dict(carried)}; {time.perf_counter() - t0:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
