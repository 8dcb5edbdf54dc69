"""Tests of memray.fingerprint.curve_run: subset plans, per-subset curves reusing the fits, the fingerprint run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from memray.config import ConfigError
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.curve_run import (
    compute_curves,
    curve_names,
    fingerprint_run,
    finish_fingerprints,
    plan_record,
    plan_subsets,
)
from memray.fingerprint.curves import normalize_curves as read_curves_frame
from memray.fingerprint.curves import read_curves, read_gallery, to_gallery
from memray.fingerprint.fd_profile import FD_TEST, log_fd_to_test
from memray.fingerprint.fid import feature_stats
from memray.io import schema
from memray.io.features import FeatureSet
from memray.stats.config import CTConfig
from memray.stats.score import fit_layer


def test_plan_subsets_disjoint_and_bootstrap() -> None:
    fcfg = FingerprintConfig(subset_size=100, seed=3)
    plan = plan_subsets({"a": 350, "b": 100}, fcfg)
    assert [len(s) for s in plan["a"]] == [100, 100, 100] and len(plan["b"]) == 1  # 50 rows of "a" dropped
    rows = np.concatenate(plan["a"])
    assert len(np.unique(rows)) == 300 and rows.min() >= 0 and rows.max() < 350
    # deterministic, and a set's subsets do not depend on the other sets
    again = plan_subsets({"a": 350}, fcfg)
    assert all(np.array_equal(x, y) for x, y in zip(plan["a"], again["a"], strict=True))
    assert not np.array_equal(
        plan["a"][0], plan_subsets({"a": 350}, FingerprintConfig(subset_size=100, seed=4))["a"][0]
    )
    assert len(plan_subsets({"a": 350}, FingerprintConfig(subset_size=100, n_subsets=2))["a"]) == 2
    boot = plan_subsets({"a": 50}, FingerprintConfig(subset_size=80, subsets="bootstrap", n_subsets=4))["a"]
    assert len(boot) == 4 and all(len(s) == 80 and s.max() < 50 for s in boot)
    assert len(np.unique(boot[0])) < 80  # drawn with replacement
    with pytest.raises(ValueError, match=r"fewer than fingerprint\.subset_size"):
        plan_subsets({"tiny": 99}, fcfg)
    with pytest.raises(ValueError, match="n_subsets=5"):
        plan_subsets({"a": 350}, FingerprintConfig(subset_size=100, n_subsets=5))
    with pytest.raises(ConfigError, match="n_subsets"):
        plan_subsets({"a": 350}, FingerprintConfig(subset_size=100, subsets="bootstrap"))


def _toy_features(seed: int = 0) -> tuple[dict, dict, dict[str, FeatureSet]]:
    """Two layers of 8-d features: train/test from one Gaussian, a near-copy set and a broader set."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(600, 8))
    test = rng.normal(size=(300, 8))
    copy = train[rng.integers(0, 600, 240)] + 0.05 * rng.normal(size=(240, 8))
    broad = 1.5 * rng.normal(size=(240, 8))
    mix = np.tanh  # layer 2 = a fixed non-linear map of layer 1
    sets = {name: {1: x.astype(np.float32), 2: mix(x).astype(np.float32)} for name, x in
            {"train": train, "test": test, "copy": copy, "broad": broad}.items()}  # fmt: skip
    gens = {k: FeatureSet(np.arange(240).astype(str).astype(object), sets[k]) for k in ("copy", "broad")}
    return sets["train"], sets["test"], gens


def test_compute_curves_equals_scoring_each_subset_alone() -> None:
    """A subset's C_T from the shared scoring equals scoring that subset's features on their own."""
    train, test, gens = _toy_features()
    cfg = CTConfig.preset("paper", cells=3, min_gen_per_cell=5)
    fitted = {layer: fit_layer(layer, train[layer], np.arange(600).astype(str), test[layer], cfg) for layer in (1, 2)}
    fcfg = FingerprintConfig(subset_size=80)
    plan = plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    df = compute_curves(fitted, gens, {"copy": "memorizer", "broad": None}, fcfg, plan)
    assert len(df) == 2 * 3 * 2 and list(df.columns) == [f.name for f in schema.FINGERPRINTS_SCHEMA]
    for r in df.itertuples(index=False):
        alone = fitted[r.layer].score(gens[r.gen_set].layers[r.layer][plan[r.gen_set][r.subset]]).ct
        assert r.ct == pytest.approx(alone, abs=1e-12)
    assert df[df.gen_set == "copy"].ct.max() < min(0, df[df.gen_set == "broad"].ct.min())  # copying ≪ 0
    assert set(df[df.gen_set == "copy"].label) == {"memorizer"} and df[df.gen_set == "broad"].label.isna().all()


def test_fingerprint_run_writes_tables(tmp_path: Path) -> None:
    train, test, gens = _toy_features(1)
    cfg = CTConfig.preset("paper", cells=3, min_gen_per_cell=5)
    fitted = {layer: fit_layer(layer, train[layer], np.arange(600).astype(str), test[layer], cfg) for layer in (1, 2)}
    fcfg = FingerprintConfig(subset_size=80)
    out = fingerprint_run(fitted, gens, {"copy": "copier", "broad": "wide"}, fcfg, str(tmp_path))
    fp = pd.read_parquet(tmp_path / schema.FINGERPRINTS_FILE)
    pd.testing.assert_frame_equal(fp, out["fingerprints"], check_dtype=False)
    meta = json.loads(pq.read_schema(tmp_path / schema.FINGERPRINTS_FILE).metadata[schema.META_KEY])
    assert meta["fingerprint"]["subset_size"] == 80 and meta["ct"]["cells"] == 3 and meta["layers"] == [1, 2]
    assert meta["subsets"]["copy"] == {"n": 240, "curves": 3, "rows_used": 240}
    # one run per label: leave-one-run-out would find no query's label in its gallery, so it is not run
    assert "accuracy" not in out and not (tmp_path / "evaluation").exists()
    assert "attribution" not in out and (tmp_path / "gallery.parquet").exists()  # every curve is labelled
    twice = fingerprint_run(
        fitted, {**gens, "copy2": gens["copy"]}, {"copy": "copier", "copy2": "copier", "broad": "wide"}, fcfg,
        str(tmp_path / "loro"),
    )  # fmt: skip
    # leave-one-run-out: copier curves find the other copier run; "wide" has one run, so its queries must fail
    assert twice["accuracy"].iloc[0]["correct"] == 6 and twice["accuracy"].iloc[0]["total"] == 9
    assert (tmp_path / "loro" / "evaluation" / schema.ATTRIBUTION_FILE).exists()
    gallery, _ = to_gallery(read_curves(str(tmp_path / schema.FINGERPRINTS_FILE)))
    assert gallery.names.tolist()[:3] == ["broad#0", "broad#1", "broad#2"] and set(gallery.runs) == {"broad", "copy"}
    again = fingerprint_run(fitted, gens, {"copy": None, "broad": None}, fcfg, str(tmp_path / "b"), gallery=gallery)
    att = pd.read_parquet(tmp_path / "b" / schema.ATTRIBUTION_FILE)
    assert len(att) == 6 and (att.predicted == np.where(att["query"].str.startswith("copy"), "copier", "wide")).all()
    assert att.score.to_numpy() == pytest.approx(1.0)  # each curve finds itself in the gallery
    assert again["attribution"].shape == att.shape
    assert not (tmp_path / "b" / "gallery.parquet").exists()  # no labelled curve in this run


def test_unlabelled_sets_are_attributed_against_the_labelled_ones(tmp_path: Path) -> None:
    train, test, gens = _toy_features(2)
    gens = {**gens, "copy_b": gens["copy"], "broad_b": gens["broad"]}  # the same generators, run again, unlabelled
    cfg = CTConfig.preset("paper", cells=3, min_gen_per_cell=5)
    fitted = {layer: fit_layer(layer, train[layer], np.arange(600).astype(str), test[layer], cfg) for layer in (1, 2)}
    labels = {"copy": "copier", "broad": "wide", "copy_b": None, "broad_b": None}
    out = fingerprint_run(fitted, gens, labels, FingerprintConfig(subset_size=80), str(tmp_path))
    att = out["attribution"]
    assert sorted(att["query"].str.split("#").str[0].unique()) == ["broad_b", "copy_b"]
    assert (att.predicted == np.where(att["query"].str.startswith("copy"), "copier", "wide")).all()
    assert (tmp_path / "gallery.parquet").exists() and not (tmp_path / "evaluation").exists()  # one run per label


def test_the_evaluation_puts_fid_nearest_beside_the_curve(tmp_path: Path) -> None:
    """With the labelled curves' feature statistics, evaluation/ has FID-nearest rows and the paired comparison."""
    train, test, gens = _toy_features(1)
    cfg = CTConfig.preset("paper", cells=3, min_gen_per_cell=5)
    fitted = {layer: fit_layer(layer, train[layer], np.arange(600).astype(str), test[layer], cfg) for layer in (1, 2)}
    fcfg = FingerprintConfig(subset_size=80)
    gens = {**gens, "copy2": gens["copy"], "broad2": gens["broad"]}
    labels = {"copy": "copier", "copy2": "copier", "broad": "wide", "broad2": "wide"}
    plan = plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    curves = compute_curves(fitted, gens, labels, fcfg, plan)
    names = curve_names(plan)
    stats = {
        2: {n: feature_stats(gens[s].layers[2][idx]) for s in gens for n, idx in zip(names[s], plan[s], strict=True)}
    }
    out = finish_fingerprints(curves, plan_record(plan, {k: len(v) for k, v in gens.items()}), fcfg, cfg,
                              str(tmp_path), layer_stats=stats)  # fmt: skip
    acc = pd.read_csv(tmp_path / "evaluation" / "accuracy.csv").set_index("method")
    assert acc.loc["FID-nearest (layer 2)", "total"] == 12 and acc.loc["FID-nearest (layer 2)", "runs"] == 4
    comp = pd.read_csv(tmp_path / "evaluation" / "comparison.csv")
    assert "FID-nearest (layer 2)" in set(comp.method) and out["accuracy"].shape[0] == len(acc)
    rows = pd.read_parquet(tmp_path / "evaluation" / "evaluation.parquet")
    assert rows.groupby("method").size().eq(12).all()


def _ambiguous_curves(query_label: str | None = None) -> pd.DataFrame:
    """Two layers; A and B two runs each, and a run ``q`` of A whose C_T curve sits on B2's (the paper's similarity
    picks B) while its FD-to-test profile sits on A's (A near 1, B near 3)."""
    rows = {"A1": (0.0, 1.0), "A2": (0.2, 1.1), "B1": (0.1, 3.0), "B2": (0.3, 3.1), "q": (0.3, 1.05)}
    out = []
    for run, (ct, fd) in rows.items():
        label = query_label if run == "q" else run[0]
        for layer, bump in ((1, -0.01), (2, 0.01)):
            out.append((run, label, 0, layer, ct + (bump if run == "q" else 0.0), fd))
    df = pd.DataFrame(out, columns=[schema.GEN_SET, schema.LABEL, schema.SUBSET, schema.LAYER, schema.CT, FD_TEST])
    return df.astype({schema.SUBSET: np.int32, schema.LAYER: np.int32})


def test_curve_fd_attributes_what_the_curve_alone_gets_wrong(tmp_path: Path) -> None:
    """The job's path (finish_fingerprints): with the FD-to-test profile (default auto → curve_fd) the unlabelled run
    goes to A; with method curve it goes to B. The gallery written records its method and carries the profile, and
    attributing against that saved gallery gives A again."""
    curves = _ambiguous_curves()
    record = {r: {"n": 500, "curves": 1, "rows_used": 500} for r in curves[schema.GEN_SET].unique()}
    out = finish_fingerprints(curves, record, FingerprintConfig(), None, str(tmp_path / "fd"))
    assert out["attribution"].set_index("query").loc["q", "predicted"] == "A"
    assert out["attribution"]["method"].iloc[0] == "C_T curve + FD-to-test (1nn)"
    paper = finish_fingerprints(curves, record, FingerprintConfig(method="curve"), None, str(tmp_path / "curve"))
    assert paper["attribution"].set_index("query").loc["q", "predicted"] == "B"
    meta = json.loads(pq.read_schema(tmp_path / "fd" / schema.FINGERPRINTS_FILE).metadata[schema.META_KEY])
    assert meta["fingerprint"]["method"] == "curve_fd"  # recorded resolved
    gpath = tmp_path / "fd" / "gallery.parquet"
    assert json.loads(pq.read_schema(gpath).metadata[schema.META_KEY])["method"] == "curve_fd"
    saved = read_gallery(str(gpath))
    assert saved.method == "curve_fd" and saved.fd_test is not None and len(saved) == 4
    query = curves[curves[schema.GEN_SET] == "q"]
    again = finish_fingerprints(query, record, FingerprintConfig(), None, str(tmp_path / "again"), gallery=saved)
    assert again["attribution"]["predicted"].tolist() == ["A"]


def test_a_gallery_queried_with_another_method_is_one_line(tmp_path: Path) -> None:
    curves = _ambiguous_curves()
    record = {r: {"n": 500, "curves": 1, "rows_used": 500} for r in curves[schema.GEN_SET].unique()}
    labelled = curves[curves[schema.GEN_SET] != "q"]
    published = to_gallery(read_curves_frame(labelled.drop(columns=FD_TEST)))[0]  # C_T values only
    with_fd = to_gallery(read_curves_frame(labelled))[0]
    query = curves[curves[schema.GEN_SET] == "q"]
    for fcfg, gallery, words in (
        (FingerprintConfig(method="curve_fd"), published, "built with fingerprint.method=curve, this run asks for"),
        (FingerprintConfig(method="curve"), with_fd, "built with fingerprint.method=curve_fd, this run asks for"),
    ):
        with pytest.raises(ConfigError, match=words) as exc:
            finish_fingerprints(query, record, fcfg, None, str(tmp_path), gallery=gallery)
        assert "\n" not in str(exc.value)
    # auto follows a curve-only (published) gallery: the paper's curve, no error
    auto = finish_fingerprints(query, record, FingerprintConfig(), None, str(tmp_path / "auto"), gallery=published)
    assert auto["attribution"]["method"].iloc[0].startswith("C_T curve (1nn")


def test_fingerprint_run_with_test_features_adds_the_profile(tmp_path: Path) -> None:
    """Given the test set's features, every curve gets log FD(subset, test) per layer (as computed directly)."""
    train, test, gens = _toy_features(1)
    cfg = CTConfig.preset("paper", cells=3, min_gen_per_cell=5)
    fitted = {layer: fit_layer(layer, train[layer], np.arange(600).astype(str), test[layer], cfg) for layer in (1, 2)}
    fcfg = FingerprintConfig(subset_size=80)
    test_set = FeatureSet(np.arange(300).astype(str).astype(object), test)
    out = fingerprint_run(fitted, gens, {"copy": "copier", "broad": "wide"}, fcfg, str(tmp_path), test=test_set)
    plan = plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    fp = pd.read_parquet(tmp_path / schema.FINGERPRINTS_FILE)
    for r in fp.itertuples(index=False):
        x = gens[r.gen_set].layers[r.layer][plan[r.gen_set][r.subset]]
        assert r.fd_test == pytest.approx(log_fd_to_test(x, feature_stats(test[r.layer])), rel=1e-12)
    assert FD_TEST in out["fingerprints"].columns
    plain = fingerprint_run(fitted, gens, {"copy": "copier", "broad": "wide"}, FingerprintConfig(subset_size=80,
                            method="curve"), str(tmp_path / "c"), test=test_set)  # fmt: skip
    assert FD_TEST not in plain["fingerprints"].columns
