"""The assembled score tables: partition stability equals independent refits, intervals, copies, and the Parquet
round trip of every table with its exact schema."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from memray.io import schema
from memray.io.features import FeatureSet
from memray.stats.config import CTConfig
from memray.stats.layers import score_features
from memray.stats.results import write_results


def _sets(seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4, size=(5, 8))

    def draw(n):
        return (centers[rng.integers(0, 5, n)] + rng.normal(size=(n, 8))).astype(np.float32)

    train, test = draw(900), draw(300)
    gens = {"copier": train[:250] + 0.05 * rng.normal(size=(250, 8)).astype(np.float32), "fresh": draw(250)}
    fs = lambda x, p: FeatureSet(np.array([f"{p}{i}" for i in range(len(x))], dtype=object), {1: x, 2: x[:, ::-1] * 2})  # noqa: E731
    return fs(train, "t"), fs(test, "p"), {k: fs(v, k) for k, v in gens.items()}


CFG = CTConfig(mode="meehan", pca_dim=None, cells=4, kmeans_nredo=2, bootstrap=100, top_k=3)


def test_partition_runs_equal_independent_refits() -> None:
    train, test, gens = _sets()
    res = score_features(train, test, gens, CTConfig(**{**CFG.__dict__, "partitions": 3}))
    stab = res.ct_stability
    assert sorted(stab[schema.PARTITION_SEED].unique()) == [0, 1, 2]
    for seed in (1, 2):
        alone = score_features(train, test, gens, CTConfig(**{**CFG.__dict__, "seed": seed}))
        got = stab[stab[schema.PARTITION_SEED] == seed].set_index([schema.GEN_SET, schema.LAYER])[schema.CT]
        want = alone.ct_scores.set_index([schema.GEN_SET, schema.LAYER])[schema.CT]
        pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    sc = res.ct_scores.set_index([schema.GEN_SET, schema.LAYER])
    by = stab.groupby([schema.GEN_SET, schema.LAYER])[schema.CT]
    np.testing.assert_allclose(sc[schema.PARTITION_MIN], by.min().reindex(sc.index))
    np.testing.assert_allclose(sc[schema.PARTITION_MAX], by.max().reindex(sc.index))
    seed0 = stab[stab[schema.PARTITION_SEED] == 0].set_index([schema.GEN_SET, schema.LAYER])[schema.CT]
    np.testing.assert_allclose(seed0.reindex(sc.index), sc[schema.CT])  # seed 0 is the reported partition


def test_single_partition_has_no_stability_rows_and_nan_range() -> None:
    train, test, gens = _sets()
    res = score_features(train, test, gens, CFG)
    assert res.ct_stability.empty and res.ct_scores[schema.PARTITION_MIN].isna().all()
    sc = res.ct_scores
    assert ((sc[schema.CI_LOW] <= sc[schema.CT]) & (sc[schema.CT] <= sc[schema.CI_HIGH])).all()
    v = res.verdicts.set_index(schema.GEN_SET)[schema.VERDICT]
    assert v["copier"] == schema.VERDICT_COPYING
    assert (res.copies.groupby([schema.GEN_SET, schema.LAYER]).size() == 250 * 3).all()


def test_no_bootstrap_no_copies() -> None:
    train, test, gens = _sets()
    res = score_features(train, test, gens, CTConfig(**{**CFG.__dict__, "bootstrap": 0, "top_k": 0}))
    assert res.ct_scores[schema.CI_LOW].isna().all() and res.copies.empty


@pytest.mark.parametrize("top_k", [0, 3])
def test_every_table_round_trips_with_its_schema(tmp_path: Path, top_k: int) -> None:
    train, test, gens = _sets()
    res = score_features(train, test, gens, CTConfig(**{**CFG.__dict__, "top_k": top_k}))
    paths = write_results(str(tmp_path), res, {"inputs": {}})
    want = {
        "ct_scores": schema.CT_SCORES_SCHEMA, "ct_cells": schema.CT_CELLS_SCHEMA, "neighbors": schema.NEIGHBORS_SCHEMA,
        "copies": schema.COPIES_SCHEMA, "ct_stability": schema.STABILITY_SCHEMA, "verdicts": schema.VERDICTS_SCHEMA,
    }  # fmt: skip
    for name, sch in want.items():
        got = pq.read_schema(paths[name])
        assert got.names == sch.names and [f.type for f in got] == [f.type for f in sch], name
    back = pd.read_parquet(paths["verdicts"])
    pd.testing.assert_frame_equal(back, res.verdicts.reset_index(drop=True), check_dtype=False)
