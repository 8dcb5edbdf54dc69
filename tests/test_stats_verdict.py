"""Verdicts: Holm over the right families, sample-size advice by hand, and end-to-end null / copying cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import binom, kstest

from memray.io import schema
from memray.io.features import FeatureSet
from memray.stats.config import CTConfig
from memray.stats.layers import score_features
from memray.stats.verdict import add_significance, needed_generated, sample_size_advice, verdict_table

NAN = math.nan


def test_add_significance_holm_per_set_families():
    scores = pd.DataFrame(
        {
            schema.GEN_SET: ["a", "b", "a", "b", "a", "b"],  # interleaved: grouping is by set, not by position
            schema.LAYER: [1, 1, 2, 2, 3, 3],
            schema.P_VALUE: [0.01, NAN, 0.02, 0.2, 0.5, 0.01],
        }
    )
    cells = pd.DataFrame(
        {
            schema.GEN_SET: ["a"] * 6 + ["b"],
            schema.LAYER: [1, 1, 1, 2, 2, 2, 1],
            schema.CELL: [0, 1, 2, 0, 1, 2, 0],
            schema.P_VALUE: [0.001, NAN, 0.3, 0.002, 0.04, NAN, 0.04],
        }
    )
    s, c = add_significance(scores, cells)
    # a: 0.01·3, 0.02·2, 0.5 ; b: 0.01·2, 0.2·1 (NaN ignored)
    np.testing.assert_allclose(s[schema.P_HOLM], [0.03, NAN, 0.04, 0.2, 0.5, 0.02], rtol=1e-12)
    # a's 4 defined cells over both layers: 0.001·4, 0.002·3, 0.04·2, 0.3 ; b alone: 0.04
    np.testing.assert_allclose(c[schema.P_HOLM], [0.004, NAN, 0.3, 0.006, 0.08, NAN, 0.04], rtol=1e-12)
    assert list(s.columns) == [schema.GEN_SET, schema.LAYER, schema.P_VALUE, schema.P_HOLM]
    assert schema.P_HOLM not in scores.columns  # inputs untouched
    with pytest.raises(KeyError, match=schema.P_VALUE):
        add_significance(scores.drop(columns=schema.P_VALUE), cells)


def test_needed_generated_by_hand():
    # largest first: 0.5, 0.3, 0.1 reach 90%; the smallest of them needs m·0.1 > 20 → m = 201
    assert needed_generated(np.array([50, 30, 10, 10]), 20, 0.9) == 201
    assert needed_generated(np.array([0.1, 0.3, 0.5, 0.1]), 20, 0.9) == 201  # shares, any order
    assert needed_generated(np.array([50, 30, 10, 10]), 20, 0.8) == 67  # m·0.3 > 20
    assert needed_generated(np.array([1, 1]), 20, 0.9) == 41  # m = 40 gives exactly 20, not more
    assert needed_generated(np.array([7]), 0, 0.9) == 1
    with pytest.raises(ValueError):
        needed_generated(np.array([0, 0]), 20)


def cell_rows(layer: int, n_test: list[int], kept: list[bool], gen_set: str = "g") -> pd.DataFrame:
    status = [schema.CELL_OK if k else schema.CELL_FEW_GEN for k in kept]
    return pd.DataFrame(
        {
            schema.GEN_SET: gen_set,
            schema.LAYER: layer,
            schema.CELL: range(len(n_test)),
            schema.N_TEST: n_test,
            schema.KEPT: kept,
            schema.STATUS: status,
        }
    )


N_TEST = [250, 100, 60, 100, 100, 100, 90, 80, 70, 50]  # 1000 test samples
KEPT3 = [True, True, True] + [False] * 7  # 410 of them kept


def test_sample_size_advice_wording():
    # 90% by the largest cells: 250, 100×4, 90, 80, 70, 60 (cum 950); the 60-cell needs m·0.06 > 20 → 334
    assert (
        sample_size_advice(cell_rows(1, N_TEST, KEPT3), 200, 20)
        == "only 3 of 10 cells kept (7 few_gen): C_T rests on 41% of the test mass; about 334 generated images "
        "would keep cells covering 90% of the test mass (cells need > 20 each)"
    )
    two = pd.concat([cell_rows(1, N_TEST, [True] * 10), cell_rows(2, N_TEST, KEPT3)])
    assert sample_size_advice(two, 200, 20).startswith("at layer 2, only 3 of 10 cells kept")
    assert "crowd into few cells" in sample_size_advice(cell_rows(1, N_TEST, KEPT3), 500, 20)
    none = sample_size_advice(cell_rows(1, N_TEST, [False] * 10), 100, 20)
    assert none.startswith("no cell of 10 kept (10 few_gen): C_T is undefined; about 334 generated images")
    # kept mass 1000 − 70 − 50 = 880 → 88% < 90%: advice; keeping 9 of 10 (950 = 95%) is enough
    eight = sample_size_advice(cell_rows(1, N_TEST, [True] * 8 + [False] * 2), 400, 20)
    assert eight.startswith("only 8 of 10 cells kept (2 few_gen): C_T rests on 88% of the test mass; the 400 ")
    assert sample_size_advice(cell_rows(1, N_TEST, [True] * 9 + [False]), 400, 20) == ""


def test_verdict_table_from_hand_tables():
    def scores(name, ct, p, n_gen=300):
        return pd.DataFrame({schema.GEN_SET: name, schema.LAYER: [1, 2], schema.CT: ct, schema.N_GEN: n_gen,
                             schema.P_VALUE: p})  # fmt: skip

    def cells(name, p, kept=(True, True)):
        out = pd.concat([cell_rows(1, [500, 500], list(kept), name), cell_rows(2, [500, 500], list(kept), name)])
        return out.assign(**{schema.P_VALUE: p})

    ct_scores = pd.concat(
        [
            scores("copy", [-4.0, -1.0], [1e-4, 0.2]),
            scores("local", [0.5, 0.2], [0.3, 0.4]),
            scores("none", [0.1, 0.0], [0.5, 0.6]),
            scores("undef", [NAN, NAN], [NAN, NAN], 30),
        ]
    )
    ct_cells = pd.concat(
        [
            cells("copy", [1e-5, 0.5, 0.3, 0.6]),
            cells("local", [0.9, 0.002, 0.9, 0.001]),
            cells("none", [0.5] * 4),
            cells("undef", [NAN] * 4, (False, False)),
        ]
    )
    v = verdict_table(*add_significance(ct_scores, ct_cells), alpha=0.05, min_gen_per_cell=20)
    assert list(v.columns) == schema.VERDICTS_SCHEMA.names
    pa.Table.from_pandas(v, schema=schema.VERDICTS_SCHEMA, preserve_index=False)  # the types fit
    v = v.set_index(schema.GEN_SET)
    # without per-image tests a rejection is set-level: closer_to_training, never copying
    assert v[schema.VERDICT].to_dict() == {"copy": schema.VERDICT_CLOSER, "local": schema.VERDICT_CLOSER,
                                           "none": schema.VERDICT_NONE, "undef": schema.VERDICT_UNDEFINED}  # fmt: skip
    # one Holm family per set (2 C_T + 4 cells): copy: 1e-5·6 = 6e-5 (cell L1:c0), 1e-4·5 = 5e-4 (C_T L1), 0.2·4;
    # local: 0.001·6 = 0.006 (L2:c1), 0.002·5 = 0.01 (L1:c1), then ≥ 0.3·4 → 1
    assert v.loc["copy", schema.P_HOLM] == pytest.approx(6e-5) and v.loc["copy", schema.TEST] == "cell:L1:c0"
    assert v.loc["local", schema.P_HOLM] == pytest.approx(0.006) and v.loc["local", schema.TEST] == "cell:L2:c1"
    assert v.loc["none", schema.P_HOLM] == 1.0 and v[schema.N_TESTS].tolist() == [6, 6, 6, 0]
    assert v[schema.LAYERS].tolist() == [[1], [], [], []]
    assert v[schema.FLAGGED_CELLS].tolist() == [["L1:c0"], ["L1:c1", "L2:c1"], [], []]
    assert v[schema.LOCALIZED].tolist() == [True, True, False, False]
    assert math.isnan(v.loc["undef", schema.P_HOLM]) and v[schema.N_GEN].tolist() == [300, 300, 300, 30]
    assert v[schema.ADVICE].tolist()[:3] == ["", "", ""]
    assert v.loc["undef", schema.ADVICE] == (
        "at layer 1, no cell of 2 kept (2 few_gen): C_T is undefined; about 41 generated images would keep cells "
        "covering 90% of the test mass (cells need > 20 each)"
    )


# ---- end to end through score_features -----------------------------------------------------------------------
def fs(x: np.ndarray, prefix: str, layers=(1,)) -> FeatureSet:
    """The same features at every layer in ``layers`` (each layer is fit separately)."""
    x = x.astype(np.float32)
    return FeatureSet(np.array([f"{prefix}{i}" for i in range(len(x))], dtype=object), dict.fromkeys(layers, x))


FAST = CTConfig(mode="meehan", pca_dim=None, kmeans_nredo=1, bootstrap=0, top_k=0)


def test_end_to_end_null_rejection_rate():
    """200 independent worlds, train/test/gen from one Gaussian: the C_T p-values look uniform."""
    rng = np.random.default_rng(8)
    p = []
    for _ in range(200):
        train, test, gen = rng.normal(size=(400, 4)), rng.normal(size=(800, 4)), rng.normal(size=(300, 4))
        res = score_features(fs(train, "t"), fs(test, "p"), {"g": fs(gen, "g")}, FAST)
        p.append(res.ct_scores[schema.P_VALUE].iloc[0])
    p = np.array(p)
    k = int(np.sum(p < 0.05))  # measured: 10 of 200
    assert binom.cdf(k, 200, 0.05) > 1e-3 and binom.sf(k - 1, 200, 0.05) > 1e-3, k  # 2..20 of 200
    assert kstest(p, "uniform").pvalue > 1e-3


def test_localized_and_plain_copying_verdicts():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(10, 8))
    lab = rng.integers(0, 10, 2000)
    train = centres[lab] + rng.normal(size=(2000, 8))
    test = centres[rng.integers(0, 10, 1000)] + rng.normal(size=(1000, 8))
    src = rng.choice(np.flatnonzero(lab == 0), 60, replace=False)
    copies0 = train[src] + 0.01 * rng.normal(size=(60, 8))
    far = np.concatenate([centres[k] + 2.5 * rng.normal(size=(40, 8)) for k in range(1, 10)])  # underfit elsewhere
    copy_all = train[rng.choice(2000, 400, replace=False)] + 0.01 * rng.normal(size=(400, 8))
    fresh = centres[rng.integers(0, 10, 400)] + rng.normal(size=(400, 8))
    layers = (1, 2)
    gens = {
        "local": FeatureSet(
            np.array([f"c{i}" for i in range(60)] + [f"f{i}" for i in range(len(far))], dtype=object),
            dict.fromkeys(layers, np.concatenate([copies0, far]).astype(np.float32)),
        ),
        "copy": fs(copy_all, "a", layers),
        "fresh": fs(fresh, "n", layers),
    }
    cfg = CTConfig(mode="meehan", pca_dim=None, bootstrap=200, top_k=0)
    res = score_features(fs(train, "t", layers), fs(test, "p", layers), gens, cfg)
    s, v = res.ct_scores, res.verdicts.set_index(schema.GEN_SET)
    local = s[s[schema.GEN_SET] == "local"]
    assert (local[schema.CT] > 0).all() and (local[schema.P_HOLM] > 0.5).all()  # C_T itself says "underfit"
    assert (s[schema.CI_LOW] <= s[schema.CT]).all() and (s[schema.CT] <= s[schema.CI_HIGH]).all()
    assert v.loc["local", schema.VERDICT] == schema.VERDICT_CLOSER  # top_k = 0: no per-image test
    nb = res.neighbors
    copied = nb[(nb[schema.GEN_SET] == "local") & nb[schema.SAMPLE_ID].str.startswith("c")]
    cell = {layer: np.unique(copied[copied[schema.LAYER] == layer][schema.CELL]) for layer in layers}
    assert all(len(x) == 1 for x in cell.values())  # the copies share one cell per layer
    assert v.loc["local", schema.FLAGGED_CELLS] == [f"L1:c{cell[1][0]}", f"L2:c{cell[2][0]}"]
    assert v.loc["local", schema.LAYERS] == [] and v.loc["local", schema.TEST].startswith("cell:")
    assert v.loc["copy", schema.VERDICT] == schema.VERDICT_CLOSER and v.loc["copy", schema.LAYERS] == [1, 2]
    assert (
        sum(c.startswith("L1:") for c in v.loc["copy", schema.FLAGGED_CELLS]) == 10 and v.loc["copy", schema.LOCALIZED]
    )
    assert v.loc["fresh", schema.VERDICT] == schema.VERDICT_NONE and v.loc["fresh", schema.FLAGGED_CELLS] == []
    assert (v[schema.ADVICE] == "").all()


def test_replication_and_concentration_join_the_family_by_hand():
    sc = pd.DataFrame({schema.GEN_SET: "g", schema.LAYER: [1, 2], schema.CT: [0.5, 0.3], schema.N_GEN: 300,
                       schema.P_VALUE: [0.3, 0.4]})  # fmt: skip
    ce = cell_rows(1, [500, 500], [True, True], "g").assign(**{schema.P_VALUE: [0.5, 0.6]})
    rep = pd.DataFrame({schema.GEN_SET: "g", schema.LAYER: [1, 2], schema.P_VALUE: [0.2, 0.004],
                        schema.CONCENTRATION_P: [0.009, 0.5]})  # fmt: skip
    v = verdict_table(*add_significance(sc, ce), alpha=0.05, min_gen_per_cell=20, replication=rep).iloc[0]
    # 8 tests: 0.004·8 = 0.032 (replication L2) < 0.05; then 0.009·7 = 0.063
    assert v[schema.VERDICT] == schema.VERDICT_COPYING and v[schema.TEST] == "replication:L2"
    assert v[schema.P_HOLM] == pytest.approx(0.032) and v[schema.N_TESTS] == 8
    assert v[schema.REPLICATION_LAYERS] == [2] and v[schema.LAYERS] == []
    v2 = verdict_table(*add_significance(sc, ce), alpha=0.05, min_gen_per_cell=20, replication=rep.assign(
        **{schema.P_VALUE: [0.2, 0.3]})).iloc[0]  # fmt: skip
    assert v2[schema.VERDICT] == schema.VERDICT_NONE and v2[schema.P_HOLM] == pytest.approx(0.072)


def test_copying_names_the_per_image_test_that_carried_it():
    """A C_T p smaller than the replication p: both rejected, the verdict is copying and ``test`` names the
    replication test (the one that makes it copying), with its own adjusted p."""
    sc = pd.DataFrame({schema.GEN_SET: "g", schema.LAYER: [1, 2], schema.CT: [-5.0, 0.3], schema.N_GEN: 300,
                       schema.P_VALUE: [1e-9, 0.4]})  # fmt: skip
    ce = cell_rows(1, [500, 500], [True, True], "g").assign(**{schema.P_VALUE: [0.5, 0.6]})
    rep = pd.DataFrame({schema.GEN_SET: "g", schema.LAYER: [1, 2], schema.P_VALUE: [0.3, 0.001],
                        schema.CONCENTRATION_P: [0.5, 0.5]})  # fmt: skip
    v = verdict_table(*add_significance(sc, ce), alpha=0.05, min_gen_per_cell=20, replication=rep).iloc[0]
    # Holm over 8: 1e-9·8 (ct:L1), then 0.001·7 = 0.007 (replication:L2), both < 0.05
    assert v[schema.VERDICT] == schema.VERDICT_COPYING and v[schema.TEST] == "replication:L2"
    assert v[schema.P_HOLM] == pytest.approx(0.007) and v[schema.LAYERS] == [1] and v[schema.REPLICATION_LAYERS] == [2]
    v2 = verdict_table(*add_significance(sc, ce), alpha=0.05, min_gen_per_cell=20, replication=rep.assign(
        **{schema.P_VALUE: [0.3, 0.2]})).iloc[0]  # fmt: skip
    assert v2[schema.VERDICT] == schema.VERDICT_CLOSER and v2[schema.TEST] == "ct:L1"
