"""memray.stats.engine as stats.score and fingerprint.curve_run use it: one search round per layer, exact results."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
import pytest

from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.curve_run import compute_curves, plan_subsets
from memray.io.features import FeatureSet
from memray.io.rows import ArrayRows
from memray.stats import search
from memray.stats.config import CTConfig
from memray.stats.engine import fit_layer_engine, score_sets, search_test
from memray.stats.layers import score_features
from memray.stats.score import fit_layer, score_layer
from memray.stats.workspace import Workspace


class Recorder:
    """A mapper with builtin ``map`` semantics that runs the items in reverse and records each call's function."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, int]] = []

    def __call__(self, fn, items):
        items = list(items)
        self.calls.append((fn, len(items)))
        return [fn(x) for x in items[::-1]][::-1]

    def searches(self) -> int:
        """Search rounds run: calls of ``run_task``, alone or packed several items to a task."""
        return sum(fn is search.run_task or (getattr(fn, "args", None) or (None,))[0] is search.run_task
                   for fn, _ in self.calls)  # fmt: skip


def brute_force(train_z, train_cells, q, q_cells, metric):
    """Dense float64 in-cell nearest neighbour, ties -> smallest row, none -> (inf, -1)."""
    if metric == "l2":
        d = np.sqrt(((q[:, None, :] - train_z[None, :, :]) ** 2).sum(-1))
    else:
        cos = (q @ train_z.T) / (np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(train_z, axis=1)[None, :])
        d = 1 - (np.abs(cos) if metric == "cosine_abs" else cos)
    d = np.where(q_cells[:, None] == train_cells[None, :], d, np.inf)
    best = d.min(axis=1)
    nn = np.array([np.flatnonzero(np.isclose(d[r], best[r], rtol=0, atol=1e-12)).min() for r in range(len(d))])
    return best, np.where(np.isfinite(best), nn, -1)


def clusters(seed: int, n: int, d: int = 10, k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(scale=5.0, size=(k, d))
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def sets():
    train = clusters(0, 900)
    train[850:] = train[[5, 50, 500] * 16 + [5, 50]]  # duplicates in the last block: ties -> the smaller row
    gens = {"copies": train[np.random.default_rng(3).integers(0, 900, 200)] + 0.01, "fresh": clusters(4, 150)}
    gens["dupes"] = train[[5, 50, 500, 850]]
    return train, clusters(1, 300), gens


@pytest.mark.parametrize("metric", ["l2", "cosine_abs"])
def test_one_round_for_test_and_every_set_equals_brute_force(tmp_path, sets, metric):
    train, test, gens = sets
    cfg = CTConfig(mode="meehan", metric=metric, cells=4, pca_dim=6, kmeans_nredo=2, block_rows=128, search_rows=200)
    mapper = Recorder()
    eng = fit_layer_engine(2, ArrayRows(train), test, cfg, Workspace(str(tmp_path / "a")), mapper)
    assert mapper.searches() == 0 and eng.test is None  # the fit does not search
    got = score_sets(eng, gens, mapper)
    assert mapper.searches() == 1 and list(got) == list(gens)  # one round: test + three sets
    z = eng.space.project(train)
    cells = eng.space.assign(z)
    assert np.array_equal(eng.train_counts, np.bincount(cells, minlength=4))
    for name, x in [("test", test), *gens.items()]:
        r = eng.test if name == "test" else got[name]
        qz = eng.space.project(x)
        ref_d, ref_nn = brute_force(z, cells, qz, eng.space.assign(qz), metric)
        assert np.array_equal(r.cell, eng.space.assign(qz)) and np.array_equal(r.nn, ref_nn), name
        np.testing.assert_allclose(r.dist, ref_d, rtol=0, atol=1e-10)
    assert got["dupes"].nn.tolist() == [5, 50, 500, 5]
    # a later round searches only the new sets; each query's answer does not depend on its round's company
    again = score_sets(eng, {"fresh": gens["fresh"]}, map)
    assert again["fresh"].dist.tobytes() == got["fresh"].dist.tobytes()
    assert search_test(eng) is eng.test
    # other search groupings, builtin map: the same bits
    for rows in (1, 10**6):
        other = dataclasses.replace(eng, cfg=dataclasses.replace(cfg, search_rows=rows), test=None)
        res = score_sets(other, gens)
        assert other.test.dist.tobytes() == eng.test.dist.tobytes() and np.array_equal(other.test.nn, eng.test.nn)
        assert all(res[k].dist.tobytes() == got[k].dist.tobytes() and np.array_equal(res[k].nn, got[k].nn)
                   for k in gens)  # fmt: skip


def test_score_layer_and_curves_search_once_per_layer(sets):
    train, test, gens = sets
    cfg = CTConfig(mode="meehan", cells=4, pca_dim=6, kmeans_nredo=2, min_gen_per_cell=5, block_rows=256)
    ids = np.array([f"t{i}" for i in range(len(train))], dtype=object)
    fsets = {k: FeatureSet(np.arange(len(v)).astype(str).astype(object), {1: v}) for k, v in gens.items()}
    test_fs = FeatureSet(np.arange(len(test)).astype(str).astype(object), {1: test})
    mapper = Recorder()
    fitted = fit_layer(1, train, ids, test, cfg, mapper, test_fs.ids)
    tables = score_layer(fitted, len(train), test_fs, fsets, mapper)
    assert mapper.searches() == 1  # the test set joined the generated sets' round
    nb = tables["neighbors"]
    dupes = nb[nb.gen_set == "dupes"]
    assert dupes.nn_train_id.tolist() == ["t5", "t50", "t500", "t5"]  # ids resolved from the matched rows only
    lone = fitted.score(gens["fresh"], mapper)
    assert mapper.searches() == 2
    fresh = nb[nb.gen_set == "fresh"]
    assert fresh.nn_distance.to_numpy().tobytes() == lone.dist.tobytes()
    fcfg = FingerprintConfig(subset_size=50)
    plan = plan_subsets({k: len(v) for k, v in fsets.items() if len(v) >= 50}, fcfg)
    curves = compute_curves({1: fitted}, {k: fsets[k] for k in plan}, {}, fcfg, plan, mapper)
    assert mapper.searches() == 3 and len(curves) == 4 + 3  # one round for every subset of both sets
    root = fitted.tmp.name
    assert os.path.isdir(root)
    fitted.close()
    assert not os.path.exists(root)


def test_fit_layer_accepts_rows_and_a_given_workspace(tmp_path, sets):
    train, test, gens = sets
    cfg = CTConfig(mode="meehan", cells=4, pca_dim=6, kmeans_nredo=1)
    ws = Workspace(str(tmp_path / "ws"))
    a = fit_layer(1, ArrayRows(train, np.arange(len(train)).astype(str)), None, test, cfg, ws=ws)
    b = fit_layer(1, train, np.arange(len(train)).astype(str), test, cfg)
    assert a.tmp is None and os.path.isdir(tmp_path / "ws")
    ga, gb = a.score(gens["fresh"]), b.score(gens["fresh"])
    assert ga.ct == gb.ct and ga.dist.tobytes() == gb.dist.tobytes() and np.array_equal(ga.nn, gb.nn)
    a.close()
    assert os.path.isdir(tmp_path / "ws")  # a workspace the caller gave is the caller's


def test_score_features_removes_its_temporary_workspaces(tmp_path, monkeypatch, sets):
    train, test, gens = sets
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where TemporaryDirectory creates its folders
    ids = np.arange(len(train)).astype(str).astype(object)
    fs = FeatureSet(ids, {1: train, 2: np.tanh(train)})
    res = score_features(
        fs, FeatureSet(ids[: len(test)], {1: test, 2: np.tanh(test)}),
        {k: FeatureSet(ids[: len(v)], {1: v, 2: np.tanh(v)}) for k, v in gens.items()},
        CTConfig(mode="meehan", cells=4, pca_dim=6, kmeans_nredo=1, min_gen_per_cell=5),
    )  # fmt: skip
    assert len(res.ct_scores) == 2 * 3 and list(tmp_path.iterdir()) == []
