"""Fingerprint benchmark: every attribution method's accuracy with intervals that resample runs, on the zoo and
the demo, choosing the method on some seeds and reporting it on a held-out seed.

Reads an audit's ``embeddings/`` folder (every set's per-layer features, e.g. the output of
``benchmarks/bench_detection.py`` on the zoo, or of the demo audit), fits the paper's C_T per layer on its
``train``/``test`` sets (the audit's ``ct`` config from ``config.json``), and cuts every generated run into
disjoint subsets of ``--subset-size`` images (two curves per run of 500). Per curve: its C_T-layer curve and its
images' feature statistics at every layer. Methods (1-NN on a distance between two curves' images):

- ``C_T curve (paper)``: the authors' similarity ``α·cos + (1−α)/(1+L2)``, α = 0.5;
- ``single-layer C_T (layer ℓ)``: |ΔC_T| at one layer;
- ``FID-nearest (layer ℓ)``: the Fréchet distance between the two curves' features at layer ℓ (last = the
  usual FID-nearest);
- ``FD profile (all layers)``: Σ_ℓ FD_ℓ / median_ℓ (each layer's pairwise FD scaled by its median);
- ``FD-to-test profile``: the curve of log FD(curve's images, test set) over layers, compared by L2 (a
  fingerprint relative to real data, like C_T);
- ``curve + FD-to-test``: the C_T curve and the FD-to-test profile, each z-scored per layer, by L2 (the library's
  ``fingerprint.method: curve_fd``, :mod:`memray.fingerprint.fd_profile`).

Protocols: ``select`` = leave-one-run-out among the ``--select-seeds`` runs (the method is chosen here);
``held-out`` = the ``--report-seed`` runs as queries against the selection runs (no tuning on them);
``demo`` = leave-one-run-out over a second folder (``--demo``; labels from its config, ``run2_*`` mapped by
``--demo-labels``); ``base family`` = every ``copy_mix`` curve (30% training copies among ``pca_gmm`` samples)
against all other runs but the memorizers, labelled by its base family (``--no-base-family`` skips it).
Intervals: 95% percentile over 2,000 seeded draws of query runs (:mod:`memray.fingerprint.compare`).

    python benchmarks/bench_fingerprint.py --audit /tmp/detection2 --demo runs/demo
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from memray.config import from_dict
from memray.fingerprint.compare import RunBootstrap
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.curve_run import compute_curves, curve_names, curves_to_gallery, plan_subsets
from memray.fingerprint.fd_profile import joint_vectors, l2_matrix, log_fd
from memray.fingerprint.fid import fd_matrix, feature_stats
from memray.fingerprint.match import Gallery, attribute_by_distance, similarity_matrix
from memray.io.features import FeatureSet
from memray.stats.config import CTConfig
from memray.stats.score import fit_layer

log = logging.getLogger("bench_fingerprint")
DEMO_LABELS = {"run2_a": "kde_copy", "run2_b": "kde_wide", "run2_c": "gmm", "run2_d": "real"}
BASE_FAMILY = {"copy_mix": "pca_gmm"}  # memorizer kind -> the family whose samples it copies among
NO_FAMILY = ("kde", "small_subset_vae")  # memorizers without a base family in the gallery
SEED = re.compile(r"^(.*)-s(\d+)$")


def load_set(folder: Path) -> dict[int, np.ndarray]:
    """Every ``layer_<ℓ>`` column (identity view) of a set's shard files, in shard order → {ℓ: (n, d)}."""
    parts: dict[int, list[np.ndarray]] = {}
    for f in sorted(folder.glob("shard-*.parquet")):
        if f.name.endswith(".errors.parquet"):
            continue
        t = pq.read_table(f)
        for name in t.column_names:
            m = re.fullmatch(r"layer_(\d+)", name)
            if m:
                col = t.column(name).combine_chunks()
                parts.setdefault(int(m.group(1)), []).append(col.flatten().to_numpy().reshape(len(col), -1))
    return {ly: np.concatenate(v).astype(np.float32) for ly, v in sorted(parts.items())}


def curves_and_stats(audit: Path, labels: dict[str, str], subset_size: int) -> tuple[Gallery, dict, dict]:
    """Curves (Gallery), per-curve feature stats {ℓ: {name: (mu, sigma)}}, test-set stats {ℓ: (mu, sigma)}."""
    ct = from_dict(CTConfig, {**json.loads((audit / "config.json").read_text())["config"]["ct"], "bootstrap": 0})
    emb = audit / "embeddings"
    train, test = load_set(emb / "train"), load_set(emb / "test")
    gens = {n: FeatureSet(np.arange(len(x[1])).astype(str), x) for n in labels for x in [load_set(emb / n)]}
    fitted = {ly: fit_layer(ly, train[ly], np.arange(len(train[ly])).astype(str), test[ly], ct) for ly in train}
    fcfg = FingerprintConfig(subset_size=subset_size)
    plan = plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    curves = curves_to_gallery(compute_curves(fitted, gens, dict(labels), fcfg, plan))
    names = curve_names(plan)
    stats = {
        ly: {n: feature_stats(gens[s].layers[ly][idx]) for s in gens for n, idx in zip(names[s], plan[s], strict=True)}
        for ly in train
    }
    return curves, stats, {ly: feature_stats(test[ly]) for ly in test}


def pairwise_fd(st: list) -> np.ndarray:
    """Symmetric (g, g) Fréchet distances, each pair once (zero diagonal: a curve is never its own neighbour)."""
    out = np.zeros((len(st), len(st)))
    for i in range(len(st) - 1):
        out[i, i + 1 :] = fd_matrix([st[i]], st[i + 1 :])[0]
    return out + out.T


def distances(curves: Gallery, stats: dict, test_stats: dict, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Every method's (g, g) distance between curves (smaller = closer); ``ref`` (g,) marks the gallery curves
    whose spread z-scores the joined features (no query's statistics enter the scale)."""
    x = np.nan_to_num(curves.curves)
    out = {"C_T curve (paper)": -similarity_matrix(x, x, 0.5)}
    for j, ly in enumerate(curves.layers):
        out[f"single-layer C_T (layer {ly})"] = np.abs(x[:, j, None] - x[None, :, j])
    fd = {}
    for ly in curves.layers:
        fd[ly] = pairwise_fd([stats[ly][n] for n in curves.names])
        out[f"FID-nearest (layer {ly})"] = fd[ly]
    out["FD profile (all layers)"] = sum(fd[ly] / np.median(fd[ly][fd[ly] > 0]) for ly in curves.layers)
    prof = np.array([[log_fd(stats[ly][n], test_stats[ly]) for ly in curves.layers] for n in curves.names])
    out["FD-to-test profile"] = l2_matrix(prof, prof)
    both = joint_vectors(x, prof, ref)  # the library's curve_fd (memray.fingerprint.fd_profile)
    out["curve + FD-to-test"] = l2_matrix(both, both)
    return out


def score(curves: Gallery, dist: dict[str, np.ndarray], queries: np.ndarray, allowed: np.ndarray) -> pd.DataFrame:
    """Per method: correct/total, accuracy and the 95% interval over resampled query runs."""
    q = curves.select(queries)
    boot = RunBootstrap.draw(q.runs, 2000, 0)
    rows = []
    for name, d in dist.items():
        att = attribute_by_distance(q, curves, d[queries], allowed, name)
        ok = (att["predicted"] == att["true_label"]).to_numpy()
        lo, hi = boot.interval(q.runs, ok)
        rows.append((name, int(ok.sum()), len(ok), ok.mean(), lo, hi))
    return pd.DataFrame(rows, columns=["method", "correct", "total", "accuracy", "low", "high"]).set_index("method")


def zoo_curves(audit: Path, subset: int) -> tuple[Gallery, dict, dict, dict[str, str], dict[str, int]]:
    """Every zoo run's curves labelled by kind (fitted once for every table), their feature statistics, the test
    set's, and each run's kind and seed."""
    names = sorted(p.name for p in (audit / "embeddings").iterdir() if SEED.match(p.name))
    kind = {n: SEED.match(n).group(1) for n in names}  # type: ignore[union-attr]
    seed = {n: int(SEED.match(n).group(2)) for n in names}  # type: ignore[union-attr]
    curves, stats, test_stats = curves_and_stats(audit, kind, subset)
    return curves, stats, test_stats, kind, seed


def zoo_tables(zoo: tuple, select: set[int], report: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave-one-run-out over the ``select`` seeds, and the ``report`` seed's runs against them (:func:`zoo_curves`)."""
    curves, stats, test_stats, _, seed = zoo
    s = np.array([seed[r] for r in curves.runs])
    in_sel, in_rep = np.isin(s, list(select)), s == report
    dist = distances(curves, stats, test_stats, in_sel)  # scaled by the selection runs only
    other_run = curves.runs[:, None] != curves.runs[None, :]
    sel_q = np.flatnonzero(in_sel)
    sel = score(curves, dist, sel_q, other_run[sel_q] & in_sel[None, :])
    rep_q = np.flatnonzero(in_rep)
    rep = score(curves, dist, rep_q, np.broadcast_to(in_sel, (len(rep_q), len(curves))))
    return sel, rep


def demo_table(audit: Path, subset: int) -> pd.DataFrame:
    cfg = json.loads((audit / "config.json").read_text())["config"]
    labels = {g["name"]: g["label"] or DEMO_LABELS.get(g["name"]) for g in cfg["generated"]}
    labels = {k: v for k, v in labels.items() if v and not k.startswith("probe_")}
    curves, stats, test_stats = curves_and_stats(audit, labels, subset)
    dist = distances(curves, stats, test_stats, np.ones(len(curves), dtype=bool))
    q = np.arange(len(curves))
    return score(curves, dist, q, curves.runs[:, None] != curves.runs[None, :])


def base_family_table(zoo: tuple) -> pd.DataFrame:
    """Copy-paste memorizers (:data:`BASE_FAMILY`) queried against every other zoo run, all seeds: attributed to
    their base family? (The issue's ask: a memorizer among a family's samples is that family.)"""
    curves, stats, test_stats, kind, _ = zoo
    keep = curves.select(np.array([kind[r] not in NO_FAMILY for r in curves.runs]))
    labels = np.array([BASE_FAMILY.get(k, k) for k in keep.labels], dtype=object)
    curves = Gallery(keep.names, labels, keep.curves, keep.layers, keep.runs, keep.fd_test)
    copier = np.array([kind[r] in BASE_FAMILY for r in curves.runs])
    dist = distances(curves, stats, test_stats, ~copier)  # scaled by the gallery runs only
    q = np.flatnonzero(copier)
    return score(curves, dist, q, np.broadcast_to(~copier, (len(q), len(curves))))


def _cell(r: pd.Series, k: str) -> str:
    frac = f"{int(r[(k, 'correct')])}/{int(r[(k, 'total')])}"
    return f"{frac} {r[(k, 'accuracy')]:.2f} [{r[(k, 'low')]:.2f}, {r[(k, 'high')]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audit", type=Path, required=True, help="a zoo audit's output folder (with embeddings/)")
    ap.add_argument("--demo", type=Path, help="the demo audit's output folder (with embeddings/)")
    ap.add_argument("--select-seeds", default="0,1", help="zoo seeds the method is chosen on")
    ap.add_argument("--report-seed", type=int, default=2, help="zoo seed reported on (queries)")
    ap.add_argument("--subset-size", type=int, default=250, help="images per curve (2 curves per run of 500)")
    ap.add_argument("--no-base-family", action="store_true", help="skip the memorizers' base-family attribution")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    zoo = zoo_curves(args.audit, args.subset_size)
    sel, rep = zoo_tables(zoo, {int(s) for s in args.select_seeds.split(",")}, args.report_seed)
    table = pd.concat({"select": sel, "held-out": rep}, axis=1)
    if args.demo:
        table = pd.concat([table, pd.concat({"demo": demo_table(args.demo, args.subset_size)}, axis=1)], axis=1)
    chosen = sel["accuracy"].idxmax()
    keys = [k for k in ("select", "held-out", "demo") if (k, "accuracy") in table.columns]
    width = max(len(m) for m in table.index)
    print(f"{'method':<{width}}  " + "  ".join(f"{k:<24}" for k in keys))
    for m, r in table.iterrows():
        print(
            f"{m:<{width}}  " + "  ".join(f"{_cell(r, k):<24}" for k in keys) + ("  <- chosen" if m == chosen else "")
        )
    print(f"\nchosen on seeds {args.select_seeds}: {chosen}; {time.perf_counter() - t0:.0f} s")
    if not args.no_base_family:
        base = base_family_table(zoo)
        print(f"\ncopy-paste memorizers {sorted(BASE_FAMILY)} attributed to their base family (all seeds):")
        for m, r in base.iterrows():
            print(f"{m:<{width}}  {int(r['correct'])}/{int(r['total'])} {r['accuracy']:.2f}")


if __name__ == "__main__":
    main()
