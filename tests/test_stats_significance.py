"""Significance of C_T: p-values by hand and null calibration, Holm by hand, the within-cell bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.stats import norm

from memray.stats.ct import cell_table, ct_from_cells, mann_whitney_z
from memray.stats.significance import (
    bootstrap_ct,
    bootstrap_replicates,
    cell_p_values,
    ct_p_value,
    ct_p_value_from_cells,
    holm,
)


def identity(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    return np.broadcast_to(np.arange(n), (reps, n))


def test_ct_p_value_hand_case():
    # C_T = (3·(−2) + 1·1)/4 = −1.25, sd = sqrt(9 + 1)/4, so C_T/sd = −5/sqrt(10)
    assert ct_p_value(np.array([-2.0, 1.0]), np.array([3.0, 1.0])) == pytest.approx(norm.cdf(-5 / math.sqrt(10)))
    assert ct_p_value(np.array([-2.0, 1.0]), np.array([0.3, 0.1])) == pytest.approx(norm.cdf(-5 / math.sqrt(10)))
    assert ct_p_value(np.array([0.0]), np.array([7.0])) == 0.5
    assert math.isnan(ct_p_value(np.array([]), np.array([])))
    assert math.isnan(ct_p_value(np.array([np.nan, 1.0]), np.array([1.0, 1.0])))
    with pytest.raises(ValueError, match="weights"):
        ct_p_value(np.array([1.0]), np.array([1.0, 2.0]))


def test_p_values_from_cell_table():
    rng = np.random.default_rng(0)
    test_c, gen_c = np.repeat([0, 1, 2, 3], [50, 40, 30, 20]), np.repeat([0, 1, 2, 3], [30, 25, 5, 30])
    test_d, gen_d = rng.normal(size=len(test_c)), rng.normal(size=len(gen_c)) - 0.3
    st = cell_table(test_d, test_c, gen_d, gen_c, np.array([9, 9, 9, 0]), 20)  # cell 2 few_gen, cell 3 no_train
    assert st.kept.tolist() == [True, True, False, False]
    p = cell_p_values(st)
    assert p[:2] == pytest.approx(norm.cdf(st.z[:2])) and np.isnan(p[2:]).all()
    w = np.array([50.0, 40.0])
    expected = norm.cdf(np.dot(w, st.z[:2]) / math.sqrt(np.dot(w, w)))
    assert ct_p_value_from_cells(st) == pytest.approx(expected)
    none_kept = cell_table(test_d, test_c, gen_d[:10], gen_c[:10], np.array([9, 9, 9, 9]), 20)
    assert math.isnan(ct_p_value_from_cells(none_kept)) and np.isnan(cell_p_values(none_kept)).all()


def test_null_calibration_of_ct_and_cell_p_values():
    """Gen and test distances from the same per-cell law: P(p < 0.05) ≈ 0.05 for C_T and for single cells."""
    rng = np.random.default_rng(2024)
    sizes = np.array([300, 200, 150, 100, 80, 60, 40, 30, 25, 15])
    test_c = np.repeat(np.arange(10), sizes)
    shape = np.linspace(1.0, 5.0, 10)  # a different distance law per cell
    ps, cps = [], []
    for _ in range(2000):
        gen_c = rng.choice(10, size=400, p=sizes / sizes.sum())  # small cells often fall under the τ rule
        test_d = rng.gamma(shape[test_c]) * (1 + test_c)
        gen_d = rng.gamma(shape[gen_c]) * (1 + gen_c)
        st = cell_table(test_d, test_c, gen_d, gen_c, np.full(10, 5), 20)
        ps.append(ct_p_value_from_cells(st))
        cps.append(cell_p_values(st)[st.kept])
    ps, cps = np.array(ps), np.concatenate(cps)
    assert not np.isnan(ps).any() and len(cps) > 10000
    assert 0.035 <= np.mean(ps < 0.05) <= 0.065
    assert 0.04 <= np.mean(cps < 0.05) <= 0.06  # ~12k kept cells: ±0.002 per sd
    assert 0.4 <= np.mean(ps < 0.5) <= 0.6  # the centre too, not only the tail


def test_holm_hand_computed():
    # sorted: 0.005 (×4 = 0.02), 0.01 (×3 = 0.03), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04 → running max 0.06)
    adj = holm(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(adj[:4], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert np.isnan(adj[4])
    assert holm(np.array([0.5, 0.6])).tolist() == [1.0, 1.0]  # capped at 1
    assert holm(np.array([0.02, 0.02])).tolist() == [0.04, 0.04]  # ties
    assert np.isnan(holm(np.array([np.nan, np.nan]))).all()
    assert holm(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm(np.array([1.2]))


def tied_world(seed: int, cells: int = 6, n: int = 900, sets: int = 3, m: int = 240):
    """Distances rounded to 0.05 (many ties, across test and gen too); uneven cells, one without training rows."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(cells, 2.0))
    test_c = rng.choice(cells, n, p=p)
    test_d = np.round(rng.gamma(2.0, size=n), 1)
    gens = {}
    for s in range(sets):
        gc = rng.choice(cells, m, p=p)
        gens[f"set{s}"] = (np.round(rng.gamma(2.0, size=m) * (0.7 + 0.2 * s), 1), gc)
    gens["tiny"] = (np.array([0.5, 1.0]), np.array([0, 1]))  # keeps no cell
    train = np.full(cells, 10)
    train[-1] = 0
    return test_d, test_c, gens, train


def test_identity_resample_reproduces_ct_exactly():
    test_d, test_c, gens, train = tied_world(1)
    reps = bootstrap_replicates(test_d, test_c, gens, train, 20, 4, seed=0, draw=identity)
    for name, (gd, gc) in gens.items():
        ref = ct_from_cells(cell_table(test_d, test_c, gd, gc, train, 20))
        if name == "tiny":
            assert math.isnan(ref) and np.isnan(reps[name]).all()
        else:
            assert reps[name].tolist() == [ref] * 4  # bit for bit, ties included


def test_replicates_equal_brute_force_on_the_drawn_resamples():
    """Record the resamples drawn and recompute each replicate with mann_whitney_z (rank based, no sorting trick)."""
    test_d, test_c, gens, train = tied_world(5, sets=2)
    gens.pop("tiny")
    log: list[np.ndarray] = []

    def recording(rng, n, reps):
        idx = rng.integers(0, n, size=(reps, n))
        log.append(idx)
        return idx

    reps = bootstrap_replicates(test_d, test_c, gens, train, 20, 3, seed=7, draw=recording)
    stats = {k: cell_table(test_d, test_c, *v, train, 20) for k, v in gens.items()}
    calls = iter(log)
    z = {k: np.zeros((3, len(train))) for k in gens}
    for c in range(len(train)):
        users = [k for k in gens if stats[k].kept[c]]
        if not users:
            continue
        ti = next(calls)  # per cell: the test resample, then each set keeping the cell, in dict order
        for k in users:
            gi = next(calls)
            g = gens[k][0][gens[k][1] == c]
            t = test_d[test_c == c]
            z[k][:, c] = [mann_whitney_z(g[gi[r]], t[ti[r]]) for r in range(3)]
    for k, st in stats.items():
        w = st.n_test[st.kept] / st.n_test.sum()
        np.testing.assert_allclose(reps[k], z[k][:, st.kept] @ w / w.sum(), rtol=0, atol=1e-12)
        assert len(set(reps[k].tolist())) == 3  # the resamples differ


def test_a_large_set_is_drawn_in_bounded_pieces_with_the_same_replicates(monkeypatch):
    """Memory per set and cell is O(_SET_CHUNK), not O(reps × m): the same draws, cut into rows, give the same bits."""
    from memray.stats import significance

    test_d, test_c, gens, train = tied_world(2, n=120, m=3000)  # a cell holds <= 120 test, up to ~1,000 generated
    whole = bootstrap_replicates(test_d, test_c, gens, train, 20, 50, seed=3)
    shapes: list[tuple[int, int]] = []

    def uniform(rng, n, reps):
        shapes.append((reps, n))
        return rng.integers(0, n, size=(reps, n))

    monkeypatch.setattr(significance, "_SET_CHUNK", 1200)
    cut = bootstrap_replicates(test_d, test_c, gens, train, 20, 50, seed=3, draw=uniform)
    assert all(cut[k].tobytes() == whole[k].tobytes() for k in gens)
    set_draws = [(reps, n) for reps, n in shapes if n > 120]  # only a generated set's draws are that wide
    assert set_draws and all(reps * n <= 1200 or reps == 1 for reps, n in set_draws)


def test_bootstrap_seeding_and_independence_of_other_sets():
    test_d, test_c, gens, train = tied_world(3)
    a = bootstrap_ct(test_d, test_c, gens, train, 20, 200, seed=11)
    assert a == bootstrap_ct(test_d, test_c, gens, train, 20, 200, seed=11)
    b = bootstrap_ct(test_d, test_c, gens, train, 20, 200, seed=12)
    assert a["set0"] != b["set0"]
    alone = bootstrap_ct(test_d, test_c, {"set1": gens["set1"]}, train, 20, 200, seed=11)
    assert alone["set1"] == a["set1"]  # a set's interval does not depend on the other sets in the call
    ct = ct_from_cells(cell_table(test_d, test_c, *gens["set1"], train, 20))
    assert a["set1"][0] < ct < a["set1"][1]
    assert all(math.isnan(x) for x in a["tiny"])
    assert all(math.isnan(x) for v in bootstrap_ct(test_d, test_c, gens, train, 20, 0, seed=11).values() for x in v)


def test_bootstrap_interval_covers_the_expected_ct():
    """T ~ N(0,1), G ~ N(δ_c, 1) per cell with fixed counts: E[U] = n·m·Φ(δ/√2), so E[C_T] is exact."""
    n_c, m_c = np.array([200, 150, 100, 60, 40]), np.array([60, 50, 40, 30, 25])
    delta = np.array([-0.3, 0.0, 0.2, -0.5, 0.1])
    sd = np.sqrt(n_c * m_c * (n_c + m_c + 1) / 12)
    ez = (n_c * m_c * norm.cdf(delta / math.sqrt(2)) - (n_c * m_c / 2 - 0.5)) / sd
    expected = float(np.dot(n_c, ez) / n_c.sum())
    test_c, gen_c = np.repeat(np.arange(5), n_c), np.repeat(np.arange(5), m_c)
    rng = np.random.default_rng(99)
    hits, cts = [], []
    for r in range(200):
        test_d, gen_d = rng.normal(size=len(test_c)), rng.normal(size=len(gen_c)) + delta[gen_c]
        low, high = bootstrap_ct(test_d, test_c, {"g": (gen_d, gen_c)}, np.ones(5), 20, 400, seed=r)["g"]
        hits.append(low <= expected <= high)
        cts.append(ct_from_cells(cell_table(test_d, test_c, gen_d, gen_c, np.ones(5), 20)))
    assert abs(np.mean(cts) - expected) < 3 * np.std(cts) / math.sqrt(len(cts))  # the target is right
    assert 0.88 <= np.mean(hits) <= 0.99


def test_bootstrap_speed_at_paper_scale():
    """10k test samples, 20 sets × 500 generated, 10 cells, 1000 resamples: well under a second per layer."""
    rng = np.random.default_rng(4)
    test_c, test_d = rng.integers(0, 10, 10_000), rng.gamma(2.0, size=10_000)
    gens = {f"s{i}": (rng.gamma(2.0, size=500), rng.integers(0, 10, 500)) for i in range(20)}
    start = time.perf_counter()
    out = bootstrap_ct(test_d, test_c, gens, np.ones(10), 20, 1000, seed=0)
    elapsed = time.perf_counter() - start
    assert all(lo < hi for lo, hi in out.values())
    assert elapsed < 5.0, f"bootstrap took {elapsed:.2f} s"  # ~0.3 s measured on one core
