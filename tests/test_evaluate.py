"""Evaluation: Wilson intervals, protocols, the authors' published results through the CLI, and an end-to-end
run on synthetic generators (curves from fit_layer + compute_curves vs the feature-FID baseline)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import synthetic
from scipy.stats import binomtest

from memray.cli import main
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.curve_run import compute_curves, curves_to_gallery, plan_subsets
from memray.fingerprint.curves import read_curves, to_gallery
from memray.fingerprint.evaluate import (
    EVALUATION_FILE,
    confusion_matrix,
    evaluate,
    format_table,
    protocol_masks,
    wilson_interval,
    write_evaluation,
)
from memray.fingerprint.fid import feature_stats, match_fid_runs, read_fid_table
from memray.fingerprint.match import UNKNOWN, Gallery, GalleryError
from memray.io import schema
from memray.io.features import FeatureSet
from memray.stats.config import CTConfig
from memray.stats.score import fit_layer

DATA = Path(__file__).parent / "data" / "layerchoice"


def test_wilson_interval_known_values() -> None:
    # x = 15, n = 18, z = 1.959963984540054: p̂ = 0.8333…, denominator 1 + z²/n = 1.2134143…,
    # centre (p̂ + z²/2n)/… = 0.7747069…, half-width z·sqrt(p̂(1 − p̂)/n + z²/4n²)/… = 0.1669273…
    # → [0.6077796, 0.9416342]: the Wilson formula statsmodels documents for proportion_confint(method="wilson");
    # scipy's binomtest(15, 18).proportion_ci(method="wilson") prints the same digits
    lo, hi = wilson_interval(15, 18)
    assert (lo, hi) == pytest.approx((0.6077796189608428, 0.9416342319413856), abs=1e-12)
    assert wilson_interval(5, 6) == pytest.approx((0.43649717781352987, 0.9699466302516935), abs=1e-12)
    assert wilson_interval(6, 6) == pytest.approx((0.6096657120978346, 1.0), abs=1e-12)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775327998628892), abs=1e-12)
    for x, n in [(15, 18), (3, 40), (7, 7)]:  # scipy's independent implementation
        ci = binomtest(x, n).proportion_ci(confidence_level=0.9, method="wilson")
        assert wilson_interval(x, n, 0.9) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


def _gallery(curves: list[list[float]], labels: list[str], runs: list[str]) -> Gallery:
    names = [f"{r}#{i}" for i, r in enumerate(runs)]
    return Gallery(np.array(names, dtype=object), np.array(labels, dtype=object), np.array(curves, float),
                   tuple(range(1, len(curves[0]) + 1)), np.array(runs, dtype=object))  # fmt: skip


def test_leave_one_run_out_excludes_the_whole_run() -> None:
    # r1 has two subsets; the 1st subset's twin must not be its neighbour
    g = _gallery([[1.0, 1.0], [1.0, 1.0], [1.1, 1.0], [5.0, -5.0]], ["A", "A", "A", "B"], ["r1", "r1", "r2", "r3"])
    q, allowed = protocol_masks(g, "leave-one-run-out", None)
    assert q.tolist() == [0, 1, 2, 3]
    assert allowed.tolist()[0] == [False, False, True, True] and allowed.tolist()[3] == [True, True, True, False]
    ev = evaluate(g, FingerprintConfig(), "leave-one-run-out", single_layer=False)
    assert ev.attribution.predicted.tolist() == ["A", "A", "A", "A"]
    # r3 is the only B run: no B in its gallery, so only "unknown" could be right
    assert ev.summary.iloc[0][["correct", "total"]].tolist() == [3, 4]
    with pytest.raises(GalleryError, match="needs a split"):
        protocol_masks(g, "split", None)
    with pytest.raises(GalleryError, match="unknown protocol"):
        protocol_masks(g, "k-fold", None)


def test_open_set_counts_unknown_labels_as_correct() -> None:
    g = _gallery([[1.0, 0.0], [1.0, 0.1], [-9.0, 9.0]], ["A", "A", "new"], ["a1", "a2", "x"])
    split = np.array(["gallery", "query", "query"], dtype=object)
    ev = evaluate(g, FingerprintConfig(open_set_threshold=0.5), "split", split)
    assert ev.attribution.predicted.tolist() == ["A", UNKNOWN]
    assert ev.summary.iloc[0][["correct", "total"]].tolist() == [2, 2]
    assert ev.confusion.loc["new", UNKNOWN] == 1 and ev.confusion.loc["A", "A"] == 1
    table = confusion_matrix(pd.DataFrame({"true_label": ["a", "b"], "predicted": ["a", "a"]}))
    assert table.shape == (2, 2) and table.loc["b", "b"] == 0  # square even when a label is never predicted


def _cli_accuracy(tmp_path: Path, *args: str) -> pd.DataFrame:
    out = tmp_path / "out"
    assert main(["fingerprint", "evaluate", *args, "--out", str(out)]) == 0
    return pd.read_csv(out / "accuracy.csv").set_index("method")


@pytest.mark.parametrize(
    ("file", "alpha", "expected"),
    [
        ("layerchoice_Ffull_score.txt", "0.5", (6, 6)),
        ("layerchoice_Fsmall_score.txt", "0.5", (5, 6)),
        ("layerchoice_model_ct_scores.txt", "0.5", (15, 18)),
        ("layerchoice_model_ct_scores.txt", "1.0", (12, 18)),
        ("layerchoice_model_ct_scores.txt", "0.0", (14, 18)),
    ],
)
def test_published_results_through_the_cli(tmp_path: Path, file: str, alpha: str, expected: tuple) -> None:
    acc = _cli_accuracy(tmp_path, "--curves", str(DATA / file), "--alpha", alpha)
    row = acc.iloc[0]
    assert row.name.startswith("C_T curve (1nn") and (row["correct"], row["total"]) == expected


def test_fid_nearest_on_full_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    acc = _cli_accuracy(
        tmp_path, "--curves", str(DATA / "layerchoice_full_split.csv"), "--fid", str(DATA / "layerchoice_fid_score.txt")
    )
    assert tuple(acc.loc["C_T curve (1nn, alpha=0.5)", ["correct", "total"]]) == (6, 6)
    assert tuple(acc.loc["FID-nearest (scalar)", ["correct", "total"]]) == (5, 6)
    assert len([m for m in acc.index if m.startswith("single-layer")]) == 12
    printed = capsys.readouterr().out
    assert "FID-nearest (scalar)" in printed and "5/6" in printed and "[0.436, 0.970]" in printed
    rows = pd.read_parquet(tmp_path / "out" / EVALUATION_FILE)
    fid = rows[rows.method == "FID-nearest (scalar)"].set_index("query")
    assert fid.loc["ContraGAN_17_17", "predicted"] == "pndm" and not fid.loc["ContraGAN_17_17", "correct"]
    att = pd.read_parquet(tmp_path / "out" / schema.ATTRIBUTION_FILE)
    assert list(att.columns) == [f.name for f in schema.ATTRIBUTION_SCHEMA] and len(att) == 6


def test_cli_gallery_then_attribute(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gal = tmp_path / "gallery.parquet"
    full = str(DATA / "layerchoice_full_split.csv")
    assert main(["fingerprint", "gallery", "--curves", full, "--only-split", "gallery", "--out", str(gal)]) == 0
    queries = pd.read_csv(full).query("split == 'query'").drop(columns=["label", "split"])
    qpath = tmp_path / "queries.csv"
    queries.to_csv(qpath, index=False)
    assert (
        main(["fingerprint", "attribute", "--gallery", str(gal), "--queries", str(qpath), "--out", str(tmp_path)]) == 0
    )
    att = pd.read_parquet(tmp_path / schema.ATTRIBUTION_FILE).set_index("query")
    assert att["true_label"].isna().all()
    assert att["predicted"].to_dict() == {r: r.split("_")[0] for r in queries["run"]}  # the Full split's 6/6
    assert main(["fingerprint", "evaluate", "--curves", str(qpath), "--protocol", "split"]) == 2  # clear error
    assert "needs a label" in capsys.readouterr().err


def test_cli_attribute_refuses_another_method_than_the_gallery_s(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A gallery with FD-to-test profiles (an audit's curve_fd gallery): --method curve is one line, exit 2; the
    default follows the gallery; published curves (no profile) with --method curve_fd are one line too."""
    rows = [(f"{lab}{i}", lab, layer, 0.1 * i + layer, (3.0 if lab == "b" else 1.0) + 0.1 * i)
            for lab in "ab" for i in (1, 2) for layer in (1, 2)]  # fmt: skip
    curves = pd.DataFrame(rows, columns=["run", "label", "layer", "ct", "fd_test"])
    src, gal = tmp_path / "curves.csv", tmp_path / "gallery.parquet"
    curves.to_csv(src, index=False)
    assert main(["fingerprint", "gallery", "--curves", str(src), "--out", str(gal)]) == 0
    queries = curves[curves.run == "a1"].drop(columns="label").assign(run="q")
    queries.to_csv(tmp_path / "q.csv", index=False)
    base = ["fingerprint", "attribute", "--gallery", str(gal), "--queries", str(tmp_path / "q.csv")]
    capsys.readouterr()
    assert main([*base, "--method", "curve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "built with fingerprint.method=curve_fd, this run asks for curve" in err and len(err.splitlines()) == 1
    assert main(base) == 0 and "C_T curve + FD-to-test (1nn)" in capsys.readouterr().out
    published = str(DATA / "layerchoice_full_split.csv")
    assert main(["fingerprint", "evaluate", "--curves", published, "--method", "curve_fd"]) == 2
    assert "published curves" in capsys.readouterr().err


def _synthetic_runs(seed: int = 0) -> tuple[dict, dict, dict[str, FeatureSet], dict[str, str]]:
    """8×8 'images' from 10 blocky prototypes, a fixed random 4-block residual tanh encoder (48-d), and three
    generator families × 3 runs of 1,000 images from scripts/synthetic.py: KDE (bandwidths 0.4/0.5/0.6), a 10-component
    Gaussian mixture in 16 PCA dims, and training images shifted by up to 2 px."""
    rng = np.random.default_rng(seed)
    protos = np.kron(rng.normal(size=(10, 4, 4)), np.ones((2, 2)))

    def images(n: int, r: np.random.Generator) -> np.ndarray:
        c = r.integers(0, 10, n)
        return protos[c] * (1 + 0.2 * r.normal(size=(n, 1, 1))) + 0.5 * r.normal(size=(n, 8, 8))

    weights = [np.random.default_rng([seed, 10 + i]).normal(size=(64 if i == 0 else 48, 48)) for i in range(4)]

    def encode(img: np.ndarray) -> dict[int, np.ndarray]:
        h, out = img.reshape(len(img), -1), {}
        for i, w in enumerate(weights):
            step = np.tanh(h @ w * 1.5 / np.sqrt(w.shape[0]))
            h = step if i == 0 else h + step
            out[i + 1] = h.astype(np.float32)
        return out

    train, test = images(2000, np.random.default_rng([seed, 1])), images(1000, np.random.default_rng([seed, 2]))
    gens, labels = {}, {}
    for r in range(3):
        makers = {
            "kde": lambda g, r=r: synthetic.kde_sample(train, 1000, [0.4, 0.5, 0.6][r], g),
            "gmm": lambda g: synthetic.gmm_sample(train, 1000, 10, g, pca_dim=16),
            "shift": lambda g: synthetic.augment_copies(train, 1000, g, "shift", shift=2),
        }
        for i, (label, make) in enumerate(makers.items()):
            x, _ = make(np.random.default_rng([seed, 100, r, i]))
            gens[f"{label}_{r}"] = FeatureSet(np.arange(1000).astype(str).astype(object), encode(x))
            labels[f"{label}_{r}"] = label
    return encode(train), encode(test), gens, labels


@pytest.mark.timeout(120)
def test_end_to_end_synthetic_generators() -> None:
    t0 = time.perf_counter()
    train, test, gens, labels = _synthetic_runs()
    cfg = CTConfig.preset("paper")
    fitted = {layer: fit_layer(layer, train[layer], np.arange(2000).astype(str), test[layer], cfg) for layer in train}
    fcfg = FingerprintConfig(subset_size=500)
    plan = plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    curves = curves_to_gallery(compute_curves(fitted, gens, labels, fcfg, plan))
    assert len(curves) == 18 and len(set(curves.runs)) == 9  # 9 runs × 2 disjoint subsets of 500
    last = max(train)
    stats = {}
    for name, run in zip(curves.names, curves.runs, strict=True):
        subset = int(name.rsplit("#", 1)[1])
        stats[name] = feature_stats(gens[run].layers[last][plan[run][subset]])
    ev = evaluate(curves, fcfg, "leave-one-run-out", feature_stats=stats)
    print(f"\nsynthetic end-to-end ({time.perf_counter() - t0:.1f} s), leave-one-run-out over 9 runs × 2 subsets:")
    print(format_table(ev.summary))
    print(ev.confusion.to_string())
    method = ev.summary.iloc[0]
    assert method["total"] == 18 and method["ci_low"] > 1 / 3  # well above chance (3 labels)
    fd = ev.summary.set_index("method").loc["FID-nearest (features)"]
    assert fd["total"] == 18  # reported side by side; whichever wins is printed, not asserted


def test_fid_nearest_with_explicit_curve_run_mapping(tmp_path: Path) -> None:
    """The authors' Full file has no run names: map its curves to FID runs with a curve_run column."""
    named, _ = to_gallery(read_curves(str(DATA / "layerchoice_full_split.csv")))
    full, _ = to_gallery(read_curves(str(DATA / "layerchoice_Ffull_score.txt")))
    fid = match_fid_runs(
        read_fid_table(str(DATA / "layerchoice_fid_score.txt")), dict(zip(named.runs, named.labels, strict=True))
    )
    rows = []
    for i, run in enumerate(full.runs):  # the Full file's curve equals exactly one named run's curve
        j = int(np.flatnonzero((named.curves == full.curves[i]).all(axis=1))[0])
        rows.append({"run": named.runs[j], "fid": fid[named.runs[j]], "curve_run": run})
    mapping = tmp_path / "fid.csv"
    pd.DataFrame(rows).to_csv(mapping, index=False)
    acc = _cli_accuracy(tmp_path, "--curves", str(DATA / "layerchoice_Ffull_score.txt"), "--fid", str(mapping))
    assert tuple(acc.loc["FID-nearest (scalar)", ["correct", "total"]]) == (5, 6)


def test_every_method_side_by_side_with_runs_resampled_and_paired_comparisons(tmp_path: Path) -> None:
    """FID-nearest at each layer given sits beside the curve and single-layer C_T, every row names its method, the
    intervals resample runs, and each method is compared with the curve on the same queries."""
    rng = np.random.default_rng(0)
    names = [f"{lab}{r}#{s}" for lab in "ab" for r in range(2) for s in range(2)]
    runs = [n.split("#")[0] for n in names]
    labels = [n[0] for n in names]
    curves = Gallery(np.array(names), np.array(labels), rng.normal(size=(8, 3)), (1, 2, 3), np.array(runs))
    # layer 3: features of label a centred at 0, of b at 5 → FID-nearest is right on every query
    feats = {n: rng.normal(0 if n[0] == "a" else 5, 1, size=(200, 4)) for n in names}
    stats = {3: {n: feature_stats(x) for n, x in feats.items()}}
    ev = evaluate(curves, FingerprintConfig(), layer_stats=stats, n_boot=500, boot_seed=1)
    acc = ev.summary.set_index("method")
    assert acc.loc["FID-nearest (layer 3)", "correct"] == 8 and acc.loc["FID-nearest (layer 3)", "runs"] == 4
    assert {"run_ci_low", "run_ci_high"} <= set(acc.columns)
    assert (acc["run_ci_low"] <= acc["accuracy"]).all() and (acc["accuracy"] <= acc["run_ci_high"]).all()
    rows = ev.rows
    assert list(rows.columns) == [*schema.ATTRIBUTION_SCHEMA.names, "correct"] and rows.columns[0] == "method"
    assert set(rows.method) == set(acc.index) and (ev.attribution.method == acc.index[0]).all()
    comp = ev.comparison.set_index("method")
    assert comp.loc["FID-nearest (layer 3)", "reference"] == acc.index[0] and len(comp) == len(acc) - 1
    wrong = 8 - int(acc.iloc[0]["correct"])
    assert comp.loc["FID-nearest (layer 3)", "only_method"] == wrong
    assert ev.bootstrap == {"unit": "run", "n": 500, "seed": 1}
    write_evaluation(str(tmp_path), ev, {"x": 1})
    assert (tmp_path / "comparison.csv").exists()
    meta = json.loads(pq.read_schema(tmp_path / EVALUATION_FILE).metadata[schema.META_KEY])
    assert meta["bootstrap"] == {"unit": "run", "n": 500, "seed": 1}
