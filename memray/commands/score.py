"""``memray score``: C_T per layer for generated sets, from feature files (``.npy``, ``.npz``, memray Parquet) or
folders / globs of memray feature Parquet (concatenated in natural file order)."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING

from memray.stats.config import METRICS, MODES, STATISTICS, CTConfig, EvidenceConfig
from memray.stats.device import SCORE_DEVICES

if TYPE_CHECKING:  # the engine (numpy, scipy, faiss) is imported by run(), not by `memray --help`
    from memray.stats.score import ScoreResult


def _pca_dim(value: str) -> int | str:
    if value.lower() in ("none", "off", "0"):
        return "none"
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--pca-dim {value!r}: give a positive integer or 'none'") from exc


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``memray score``."""
    p = subparsers.add_parser(
        "score",
        help="C_T per layer of generated sets against a training and a held-out test set",
        description="Fit PCA + k-means cells on the training features once per layer, find every test and "
        "generated sample's nearest training sample in its cell, and report C_T (negative = copying).",
    )
    p.add_argument("--train", required=True, help="training-set features (T): a file, or a folder/glob of Parquet")
    p.add_argument("--test", required=True, help="held-out features from the same distribution (P); file/folder/glob")
    p.add_argument(
        "--gen", action="append", required=True, metavar="[NAME=]FILE",
        help="generated-set features (Q): a file, or a folder/glob of Parquet; repeat for several sets; the name "
        "defaults to the file or folder stem",
    )  # fmt: skip
    p.add_argument("--mode", choices=MODES, default="paper", help="preset: paper (1-|cos|, 10 cells), meehan, dgm-eval")
    p.add_argument("--cells", type=int, help="k-means cells (preset: 10; dgm-eval 3)")
    p.add_argument("--metric", choices=METRICS, help="nearest-neighbour distance (preset: cosine_abs; l2)")
    p.add_argument("--pca-dim", type=_pca_dim, help="PCA dimensions fit on train, or 'none' (preset: 64)")
    p.add_argument("--min-gen-per-cell", type=int, help="keep cells with more generated samples than this (20)")
    p.add_argument("--seed", type=int, help="k-means seed (0)")
    p.add_argument(
        "--kmeans-restarts", type=int, metavar="N",
        help="k-means++ restarts, lowest objective kept (preset: 10, as sklearn KMeans(n_init=10)); ct.kmeans_nredo",
    )  # fmt: skip
    p.add_argument("--search-rows", type=int, help="training rows per exact-search item (262144; results unchanged)")
    p.add_argument("--block-rows", type=int, help="rows per global block of the fit (65536; recorded)")
    p.add_argument("--alpha", type=float, help="level of the verdicts (0.05)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples of the 95%% interval (1000; 0 = none)")
    p.add_argument("--partitions", type=int, help="also score under N seeded k-means partitions (1)")
    p.add_argument("--top-k", type=int, help="global nearest training samples per generated sample (5; 0 = none)")
    p.add_argument("--statistic", choices=STATISTICS, help="evidence score: relative (d1/dk, needs --top-k >= 2) or "
                   "distance (d1); default relative")  # fmt: skip
    p.add_argument("--layer", type=int, default=1, help="layer number given to .npy files (default 1)")
    p.add_argument("--score-device", choices=SCORE_DEVICES, default="cpu",
                   help="the fit's float64 arithmetic: cpu (numpy), cuda or auto (torch); in run.json")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.set_defaults(func=run)
    return p


def parse_gen(specs: list[str]) -> dict[str, str]:
    """``NAME=FILE`` or ``FILE`` (named after the file stem) -> {name: file}; names must be unique."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name or ":" in name:
            name, path = Path(spec.split("?")[0]).stem, spec
        if not path:
            raise ValueError(f"--gen {spec!r}: give NAME=FILE or FILE")
        if any(c in name for c in "*?["):
            raise ValueError(f"--gen {spec!r}: name a glob's set explicitly with NAME=GLOB")
        if name in out:
            raise ValueError(f"--gen: the name {name!r} is used twice; name the sets explicitly with NAME=FILE")
        out[name] = path
    return out


def build_config(args: argparse.Namespace) -> CTConfig:
    """The CT config of the mode preset with the flags given on the command line applied (recorded as overrides)."""
    given = {
        "cells": args.cells, "metric": args.metric, "min_gen_per_cell": args.min_gen_per_cell, "seed": args.seed,
        "search_rows": getattr(args, "search_rows", None), "block_rows": getattr(args, "block_rows", None),
        "kmeans_nredo": getattr(args, "kmeans_restarts", None), "alpha": getattr(args, "alpha", None),
        "bootstrap": getattr(args, "bootstrap", None), "partitions": getattr(args, "partitions", None),
        "top_k": getattr(args, "top_k", None),
    }  # fmt: skip
    flags = {k: v for k, v in given.items() if v is not None}
    if args.pca_dim is not None:
        flags["pca_dim"] = None if args.pca_dim == "none" else args.pca_dim
    return CTConfig(mode=args.mode, **flags)


def summary(result: ScoreResult) -> str:
    """A short per-set, per-layer table of C_T (95% interval, p) and kept cells, then the verdicts."""
    df = result.ct_scores
    width = max([len("gen_set"), *(len(s) for s in df["gen_set"])])
    lines = [f"{'gen_set':<{width}}  {'layer':>5}  {'C_T':>9}  {'95% interval':>17}  {'p':>8}  cells kept"]
    for row in df.itertuples(index=False):
        ci = f"[{row.ci_low:7.2f}, {row.ci_high:7.2f}]"
        lines.append(f"{row.gen_set:<{width}}  {row.layer:>5}  {row.ct:>9.3f}  {ci:>17}  {row.p_value:>8.2g}  "
                     f"{row.cells_kept}/{row.cells_total}")  # fmt: skip
    if result.verdicts is not None:
        lines.append("verdicts (one Holm family per set: C_T, cells, replication, concentration):")
        for row in result.verdicts.itertuples(index=False):
            where = f" ({row.test})" if row.test else ""
            where += f"; C_T at layers {','.join(map(str, row.layers))}" if len(row.layers) else ""
            lines.append(f"  {row.gen_set:<{width}}  {row.verdict}  p_holm={row.p_holm:.2g}{where}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the features, score every generated set at every layer, write the tables, print a summary."""
    from memray.config import to_dict
    from memray.io.embedding_inputs import load_feature_input as load_features
    from memray.job.keys import features_key
    from memray.job.score import TABLES, FolderSink, score_stats
    from memray.stats.device import DeviceMapper
    from memray.stats.layers import score_features
    from memray.stats.results import write_results

    cfg = build_config(args)
    evidence = EvidenceConfig(statistic=getattr(args, "statistic", None) or EvidenceConfig.statistic)
    if evidence.statistic == "relative" and cfg.top_k == 1:
        raise ValueError("--statistic relative divides by the k-th nearest distance: give --top-k 2 or more, "
                         "or --statistic distance")  # fmt: skip
    gen_files = parse_gen(args.gen)
    train = load_features(args.train, layer=args.layer)
    test = load_features(args.test, layer=args.layer)
    gens = {name: load_features(path, layer=args.layer) for name, path in gen_files.items()}
    sets = {"train": train, "test": test, **{f"gen/{k}": v for k, v in gens.items()}}
    key = features_key({**to_dict(cfg), "evidence": to_dict(evidence)}, sets)
    sink = FolderSink(args.out, key, TABLES, None)  # a rerun skips finished layers
    t0 = time.perf_counter()
    mapper = DeviceMapper(map, getattr(args, "score_device", "cpu"))
    result = score_features(train, test, gens, cfg, mapper, sink=sink, evidence=evidence)
    run_meta = {
        "command": "score",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"train": args.train, "test": args.test, "gen": gen_files, "npy_layer": args.layer},
        "evidence": to_dict(evidence),
        "counts": {"train": len(train), "test": len(test), "gen": {k: len(v) for k, v in gens.items()}},
        "stats": {**score_stats(sink.stats, time.perf_counter() - t0), "score_devices": sorted(mapper.devices)},
    }
    paths = write_results(args.out, result, run_meta)
    print(summary(result))
    print("C_T < 0: generated samples closer to the training set than held-out data (copying); > 0: farther.")
    print("wrote " + ", ".join(paths[k] for k in ("verdicts", "ct_scores", "ct_cells", "copies", "neighbors", "run")))
    return 0
