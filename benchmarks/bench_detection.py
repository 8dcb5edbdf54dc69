"""Detection benchmark on the zoo of ``scripts/make_zoo.py``: which sets each method flags, per-image recall and
false-positive rate of the copy evidence, the rank-1 source, and leaked-image precision and recall.

One audit (in process, :class:`memray.job.local.LocalEngine`; the bundled Fashion-MNIST encoder, the paper's C_T,
the default views and evidence) scores every zoo set against the zoo's training and test sets, then per method:

- **C_T**: Holm over the set's C_T p-values (one per layer) at α;
- **+ replication**: Holm over C_T and replication p-values; **+ concentration**: and the concentration p-values;
- **verdict copying**: ``verdicts.parquet`` says ``copying`` (C_T, cells, replication, concentration in one Holm
  family; a per-image test rejected);
- **any rejection**: ``copying`` or ``closer_to_training`` (only C_T or cells rejected: the set sits closer to the
  training set than held-out data, which honest generators that oversample dense regions or collapse also do).

A set is *flagged* when the method rejects. Per group (honest, hard negative, memorizer) the flagged count with its
Wilson 95% interval. Per image, on the sets with ground truth (``truth.parquet``): a generated image is flagged when
its rank-1 ``test_quantile`` at the evidence layer is below ``q`` (0.01); recall over the true copies, FPR over the
honest images of the same sets and of the held-out set, precision; the rank-1 source accuracy over flagged true
copies. Leaked images (the small-subset memorizer): ``memorized.parquet`` rows with ``q_value < α`` at the evidence
layer against the subset the model was trained on (precision) and the subset images it actually reproduces (a
generated image whose pixel-nearest training image is in the subset; recall).

The evidence layer is chosen on the ``--dev-seeds`` (the layer with the best per-image recall at FPR ≤ 5%) and
every figure is reported on the other seeds.

    python scripts/make_zoo.py --out runs/zoo
    python benchmarks/bench_detection.py --zoo runs/zoo --out runs/detection
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from memray.fingerprint.evaluate import wilson_interval
from memray.job.config import audit_config_from_dict
from memray.job.local import LocalEngine
from memray.job.run import run_job
from memray.stats.significance import holm

ROOT = Path(__file__).resolve().parents[1]
ENCODER = {
    "model": "vit_tiny_patch16_224",
    "weights": str(ROOT / "models/fmnist_vit_tiny/model.safetensors"),
    "model_kwargs": {"img_size": 28, "patch_size": 4, "embed_dim": 96, "depth": 8, "num_heads": 3},
    "pooling": ["cls"],
    "layers": "all",
    "batch_size": 128,
}


METHODS = ("C_T", "+ replication", "+ concentration", "verdict copying", "any rejection")


def zoo_sets(zoo: Path) -> pd.DataFrame:
    """One row per generated set of the zoo: name, kind, seed, group, folder."""
    meta = json.loads((zoo / "zoo.json").read_text())
    groups = {k: v["group"] for k, v in meta["kinds"].items()}
    rows = []
    for d in sorted((zoo / "gen").iterdir()):
        kind, _, seed = d.name.rpartition("-s")
        rows.append((d.name, kind, int(seed), groups[kind], str(d / "images")))
    return pd.DataFrame(rows, columns=["name", "kind", "seed", "group", "folder"])


def run_audit(zoo: Path, sets: pd.DataFrame, out: Path, threads: int, statistic: str = "relative") -> Path:
    """The audit of every zoo set (resumes: a rerun reuses finished shards and layers)."""
    data = {
        "train": {"name": "train", "urls": [str(zoo / "train")]},
        "test": {"name": "test", "urls": [str(zoo / "test")]},
        "generated": [{"name": r.name, "urls": [r.folder]} for r in sets.itertuples()],
        "output": str(out),
        "embed": ENCODER,
        "ct": {"mode": "paper", "bootstrap": 0, "top_k": 5},
        "evidence": {"statistic": statistic},
        "resources": {"torch_threads": threads, "shard_rows": 4096},
    }
    run_job(audit_config_from_dict(data, "bench_detection"), LocalEngine())
    return out


def flagged_by_method(out: Path, alpha: float) -> pd.DataFrame:
    """Per set, whether each method rejects (module docstring)."""
    ct = pd.read_parquet(out / "ct_scores.parquet")
    rep = pd.read_parquet(out / "replication.parquet")
    ver = pd.read_parquet(out / "verdicts.parquet").set_index("gen_set")
    rows = []
    for name, d in ct.groupby("gen_set"):
        r = rep[rep.gen_set == name]
        p_ct = d.p_value.dropna().to_numpy()
        p_rep, p_conc = r.p_value.dropna().to_numpy(), r.concentration_p.dropna().to_numpy()

        def rejects(*ps: np.ndarray) -> bool:
            p = np.concatenate(ps)
            return bool(len(p) and holm(p).min() < alpha)

        verdict = ver.loc[name, "verdict"]
        rows.append((name, rejects(p_ct), rejects(p_ct, p_rep), rejects(p_ct, p_rep, p_conc), verdict == "copying",
                     verdict in ("copying", "closer_to_training")))  # fmt: skip
    return pd.DataFrame(rows, columns=["name", *METHODS])


def per_image(out: Path, sets: pd.DataFrame, layer: int, q: float) -> dict[str, float]:
    """Per-image recall / FPR / precision at ``q`` and rank-1 source accuracy at ``layer`` over ``sets``."""
    cp = pd.read_parquet(out / "copies.parquet", filters=[("layer", "=", layer), ("rank", "=", 1)])
    tp = fp = pos = neg = right = 0
    for r in sets.itertuples():
        c = cp[cp.gen_set == r.name].set_index("sample_id")
        truth_file = Path(r.folder).parent / "truth.parquet"
        flagged = c.test_quantile < q
        if r.kind == "heldout" or not truth_file.exists():
            if r.group == "honest":
                fp, neg = fp + int(flagged.sum()), neg + len(c)
            continue
        t = pd.read_parquet(truth_file).set_index("file")
        t = t[t.index.isin(c.index)]
        is_copy = t.is_copy.astype(bool)
        f = flagged.reindex(t.index).fillna(False).astype(bool)
        tp, pos = tp + int((f & is_copy).sum()), pos + int(is_copy.sum())
        fp, neg = fp + int((f & ~is_copy).sum()), neg + int((~is_copy).sum())
        src = c.train_id.reindex(t.index).astype(str).str.rsplit("/", n=1).str[-1]
        right += int((f & is_copy & (src == t.source_train_file.astype(str))).sum())
    return {"recall": tp / pos if pos else np.nan, "fpr": fp / neg if neg else np.nan,
            "precision": tp / (tp + fp) if tp + fp else np.nan, "source": right / tp if tp else np.nan,
            "positives": pos, "negatives": neg}  # fmt: skip


def leaked(out: Path, zoo: Path, sets: pd.DataFrame, layer: int, alpha: float) -> dict[str, float]:
    """Leaked-image precision (in the trained subset) and recall (of the subset images the samples reproduce)."""
    mem = pd.read_parquet(out / "memorized.parquet", filters=[("layer", "=", layer)])
    found = hit = right = reproduced = 0
    for r in sets[sets.kind == "small_subset_vae"].itertuples():
        subset = set((Path(r.folder).parent / "subset.txt").read_text().split())
        truth = pd.read_parquet(Path(r.folder).parent / "truth.parquet")
        repro = set(truth.loc[truth.nn_in_subset.astype(bool), "nn_train_file"].astype(str))
        m = mem[(mem.gen_set == r.name) & (mem.q_value < alpha)]
        names = set(m.train_id.astype(str).str.rsplit("/", n=1).str[-1])
        found, right = found + len(names), right + len(names & subset)
        hit, reproduced = hit + len(names & repro), reproduced + len(repro)
    return {"precision": right / found if found else np.nan, "recall": hit / reproduced if reproduced else np.nan,
            "flagged": found, "reproduced": reproduced}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/detection")
    ap.add_argument("--dev-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--q", type=float, default=0.01)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--statistic", choices=["relative", "distance"], default="relative", help="evidence.statistic")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sets = zoo_sets(args.zoo)
    t0 = time.perf_counter()
    run_audit(args.zoo, sets, args.out, args.threads, args.statistic)
    audit_s = time.perf_counter() - t0
    dev, test = sets[sets.seed.isin(args.dev_seeds)], sets[~sets.seed.isin(args.dev_seeds)]
    layers = sorted(pd.read_parquet(args.out / "replication.parquet").layer.unique())  # pixel space (-1) too
    scores = {ly: per_image(args.out, dev, ly, args.q) for ly in layers}
    ok = [ly for ly in layers if scores[ly]["fpr"] <= 0.05] or layers
    layer = max(ok, key=lambda ly: scores[ly]["recall"])
    flags = flagged_by_method(args.out, args.alpha).merge(test, on="name")
    seeds = sorted(test.seed.unique())
    print(f"zoo {args.zoo}: {len(sets)} sets; audit {audit_s:.0f} s; evidence layer {layer} (chosen on seeds "
          f"{args.dev_seeds}); reported on seeds {seeds}, alpha {args.alpha}, q {args.q}")  # fmt: skip
    print("\nsets flagged, per method and group (Wilson 95%):")
    for method in METHODS:
        cells = []
        for group in ("memorizer", "honest", "hard_negative"):
            g = flags[flags.group == group]
            k, n = int(g[method].sum()), len(g)
            lo, hi = wilson_interval(k, n)
            cells.append(f"{group} {k}/{n} [{lo:.2f}, {hi:.2f}]")
        print(f"  {method:<16} " + "; ".join(cells))
    print("\nper set (reported seeds):")
    print(flags.drop(columns=["folder"]).sort_values(["group", "kind", "seed"]).to_string(index=False))
    img = per_image(args.out, test, layer, args.q)
    print(f"\nper image at layer {layer}, q {args.q}: recall {img['recall']:.3f} of {img['positives']} copies, "
          f"FPR {img['fpr']:.4f} of {img['negatives']} honest images, precision {img['precision']:.3f}, "
          f"rank-1 source right for {img['source']:.3f} of the flagged copies")  # fmt: skip
    lk = leaked(args.out, args.zoo, test, layer, args.alpha)
    print(f"leaked images (small-subset memorizer): {lk['flagged']} listed, precision {lk['precision']:.3f}, "
          f"recall {lk['recall']:.3f} of {lk['reproduced']} reproduced subset images")  # fmt: skip


if __name__ == "__main__":
    main()
