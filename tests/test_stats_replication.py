"""memray.stats.replication: the exact null of the share below the test q-quantile, its level (m ≪ n and m ≥ n,
ties, mode collapse), the minimum effect r0, power and the interval's coverage, against simulation and enumeration."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from memray.stats import replication as rep
from memray.stats.replication import (
    interval,
    null_pmf,
    observe,
    replication_many,
    replication_test,
    tail_p,
    thresholds,
)

ALPHA = 0.05
SCALES = np.array([0.5, 1.0, 2.0, 4.0])  # each cell its own distance law, as k-means cells have


def bound(reps: int) -> float:
    """α + 3 Monte-Carlo standard errors of a rejection rate over ``reps`` replicates."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


def draw(rng: np.random.Generator, size: int, cell_p=None, zero_share: float = 0.0, shrink: float = 1.0):
    """(distances, cells): cell c w.p. cell_p[c], distance shrink·SCALES[c]·Exp(1), an exact 0 w.p. zero_share."""
    cells = rng.integers(0, len(SCALES), size) if cell_p is None else rng.choice(len(SCALES), size=size, p=cell_p)
    d = shrink * SCALES[cells] * rng.exponential(size=size)
    if zero_share:
        d[rng.random(size) < zero_share] = 0.0
    return d, cells


def run(
    seed: int,
    reps: int,
    n: int,
    m: int,
    *,
    r0: float = 0.0,
    q: float = 0.01,
    rho: float = 0.0,
    zeros: float = 0.0,
    shrink: float = 1.0,
    gen_cell_p: np.ndarray | None = None,
    stratify: bool = True,
) -> np.ndarray:
    """Seeded replicates (P and Q redrawn each time; ρ of Q are copies at distance 0, Q's honest distances × shrink)
    → rejection rates at α of the exact test, of the naive Binomial test, and of the exact law applied to
    "≤ threshold" counts (ties counted)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((reps, 3), dtype=bool)
    for i in range(reps):
        td, tc = draw(rng, n, zero_share=zeros)
        gd, gc = draw(rng, m, cell_p=gen_cell_p, zero_share=zeros, shrink=shrink)
        if rho:
            gd[rng.random(m) < rho] = 0.0
        if not stratify:
            tc, gc = np.zeros_like(tc), np.zeros_like(gc)
        thr = thresholds(td, tc, len(SCALES), q)
        obs = observe(thr, gd, gc)
        naive = stats.binom.sf(obs.k_obs - 1, obs.m, r0 + (1 - r0) * obs.e_h / obs.m)
        k_le = int(np.sum(gd <= thr.t[gc]))
        out[i] = [obs.p_value(r0) < ALPHA, naive < ALPHA, tail_p(obs.lo, obs.pmf, obs.m, k_le, r0) < ALPHA]
    return out.mean(axis=0)


# --- the threshold and the count ---------------------------------------------------------------------------------


def test_threshold_rule_and_strict_count() -> None:
    """k_c = max(1, floor(q(n_c + 1))), t_c the k_c-th smallest; a generated sample AT the threshold is not below."""
    rng = np.random.default_rng(0)
    sizes = [0, 5, 98, 99, 199, 1000]
    d = rng.random(sum(sizes))
    cells = np.repeat(np.arange(len(sizes)), sizes)
    thr = thresholds(d, cells, len(sizes), q=0.01)
    assert thr.k.tolist() == [1, 1, 1, 1, 2, 10] and thr.n.tolist() == sizes
    assert np.isnan(thr.t[0])
    for c in range(1, len(sizes)):
        assert thr.t[c] == np.sort(d[cells == c])[thr.k[c] - 1]
    assert thresholds(rng.random(99), np.zeros(99, int), 1, q=0.29).k[0] == 29  # 0.29·100 = 28.999…96 in floats
    k_c, m_c = rep.below_counts(thr, np.array([thr.t[1], thr.t[1] - 1e-9, 5.0, 0.0]), np.array([1, 1, 1, 0]))
    assert k_c.tolist() == [0, 1, 0, 0, 0, 0] and m_c.tolist() == [1, 3, 0, 0, 0, 0]


def test_hand_computed_case_against_enumeration() -> None:
    """n = 4, m = 2, one cell: all 15 placements of the 2 generated among 6 exchangeable ranks are equally likely;
    with copies (each w.p. ρ, always below) enumerated too. k = 1: P(K = 0, 1, 2) = 10/15, 4/15, 1/15 by hand."""
    for q, k in [(0.2, 1), (0.4, 2)]:
        law = np.zeros(3)
        for gen in itertools.combinations(range(6), 2):
            kth_test = [r for r in range(6) if r not in gen][k - 1]
            law[sum(r < kth_test for r in gen)] += 1 / 15
        lo, pmf = null_pmf(np.array([2]), thresholds(np.arange(4.0), np.zeros(4, int), 1, q).k, np.array([4]))
        np.testing.assert_allclose(np.r_[np.zeros(lo), pmf, np.zeros(3 - lo - len(pmf))], law, atol=1e-14)
        if k == 1:
            np.testing.assert_allclose(law, [10 / 15, 4 / 15, 1 / 15], atol=1e-15)
        rho = 0.3
        for k_obs in range(3):
            p = 0.0
            for gen in itertools.combinations(range(6), 2):
                kth_test = [r for r in range(6) if r not in gen][k - 1]
                for copies in itertools.product([False, True], repeat=2):
                    weight = math.prod(rho if c else 1 - rho for c in copies) / 15
                    p += weight * (sum(c or r < kth_test for r, c in zip(gen, copies, strict=True)) >= k_obs)
            assert tail_p(lo, pmf, 2, k_obs, rho) == pytest.approx(p, abs=1e-14)
    res = replication_test(np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4, int), np.array([0.05, 0.1]), np.zeros(2, int),
                           1, q=0.2, r0=0.0)  # fmt: skip
    assert (res.k_obs, res.share_below, res.expected_share) == (1, 0.5, pytest.approx(0.2))
    assert res.p_value == pytest.approx(1 / 3, abs=1e-14)  # P(K ≥ 1) = 5/15; the tie at 0.1 did not count


# --- the exact law ----------------------------------------------------------------------------------------------


def test_null_law_is_beta_binomial_by_simulation() -> None:
    """K of one cell (n = 50, m = 100, k = 5) simulated 20,000 times: pmf, mean and variance within MC error of
    BetaBinomial(100, 5, 46); with ρ = 0.1 copies the upper tails match P_ρ(K ≥ j) within MC error."""
    rng = np.random.default_rng(7)
    reps, n, m, k = 20_000, 50, 100, 5
    t = np.partition(rng.random((reps, n)), k - 1, axis=1)[:, k - 1 : k]
    y = rng.random((reps, m))
    lo, pmf = null_pmf(np.array([m]), np.array([k]), np.array([n]))
    for rho in (0.0, 0.1):
        counts = np.sum((y < t) | (rng.random((reps, m)) < rho), axis=1)
        tails = np.array([tail_p(lo, pmf, m, j, rho) for j in range(m + 2)])
        law = tails[:-1] - tails[1:]
        freq = np.bincount(counts, minlength=m + 1) / reps
        assert np.all(np.abs(freq - law) <= 5 * np.sqrt(law * (1 - law) / reps) + 1e-4)
        j = np.arange(m + 1)
        mean, var = law @ j, law @ (j - law @ j) ** 2
        assert abs(counts.mean() - mean) < 4 * math.sqrt(var / reps)
        assert abs(counts.var() - var) < 4 * var * math.sqrt(2 / reps) * 1.5  # 1.5: excess kurtosis allowance
    ref = stats.betabinom(m, k, n - k + 1)
    np.testing.assert_allclose(pmf, ref.pmf(np.arange(lo, lo + len(pmf))), rtol=1e-11)


@pytest.mark.parametrize(("m", "n", "ratio"), [(10_000, 10_000, 2.0), (200_000, 10_000, 21.0)])
def test_variance_is_far_above_the_binomial(m: int, n: int, ratio: float) -> None:
    """Var K = m μ(1−μ)(n+1+m)/(n+2) ≈ m q(1−q)(1 + m/n): 2× the Binomial's at m = n, 21× at m = 200k, n = 10k."""
    k = int(thresholds(np.arange(n, dtype=float), np.zeros(n, int), 1).k[0])
    lo, pmf = null_pmf(np.array([m]), np.array([k]), np.array([n]))
    j = lo + np.arange(len(pmf))
    mu = k / (n + 1)
    var = pmf @ (j - pmf @ j) ** 2
    assert var == pytest.approx(m * mu * (1 - mu) * (n + 1 + m) / (n + 2), rel=1e-9)
    assert var / (m * mu * (1 - mu)) == pytest.approx(ratio, rel=0.01)


def test_mixture_law_against_quadrature() -> None:
    """P_ρ(K = j) = ∫ Bin(j; m, ρ + (1−ρ)u) Beta(u; k, n−k+1) du (numerical integration) equals the K = H + C sum."""
    m, n, k, rho = 60, 30, 3, 0.1
    lo, pmf = null_pmf(np.array([m]), np.array([k]), np.array([n]))
    for j in (0, 3, 8, 20, 45):
        f = lambda u, j=j: stats.binom.pmf(j, m, rho + (1 - rho) * u) * stats.beta.pdf(u, k, n - k + 1)  # noqa: E731
        want = integrate.quad(f, 0, 1, epsabs=1e-14, epsrel=1e-11, limit=200)[0]
        got = tail_p(lo, pmf, m, j, rho) - tail_p(lo, pmf, m, j + 1, rho)
        assert got == pytest.approx(want, rel=1e-8, abs=1e-15)


def test_rho_zero_is_the_beta_binomial_convolution() -> None:
    """At r0 = 0 the p-value is P(K1 + K2 ≥ k) of two independent scipy beta-binomials (a direct double sum)."""
    m, k, n = np.array([300, 120]), np.array([2, 7]), np.array([250, 700])
    lo, pmf = null_pmf(m, k, n)
    a = stats.betabinom.pmf(np.arange(m[0] + 1), m[0], k[0], n[0] - k[0] + 1)
    b = stats.betabinom.pmf(np.arange(m[1] + 1), m[1], k[1], n[1] - k[1] + 1)
    total = np.add.outer(np.arange(m[0] + 1), np.arange(m[1] + 1))
    for k_obs in (0, 3, 6, 12, 25):
        assert tail_p(lo, pmf, int(m.sum()), k_obs, 0.0) == pytest.approx(np.sum(np.outer(a, b)[total >= k_obs]))


def test_fft_convolution_matches_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large convolutions (FFT, round-off floored) give the direct path's law and p-values to 1e-13 absolute."""
    m, k, n = np.array([4000, 3000, 5000]), np.array([3, 2, 12]), np.array([300, 200, 1200])
    monkeypatch.setattr(rep, "_DIRECT_MAX", 1 << 40)
    laws = [null_pmf(m, k, n)]
    monkeypatch.setattr(rep, "_DIRECT_MAX", 0)
    laws.append(null_pmf(m, k, n))
    top = max(lo + len(pmf) for lo, pmf in laws)
    (d, f) = [np.r_[np.zeros(lo), pmf, np.zeros(top - lo - len(pmf))] for lo, pmf in laws]
    np.testing.assert_allclose(f, d, rtol=0, atol=1e-13)
    assert np.abs(f - d).max() > 0  # the FFT path did run
    for k_obs in (50, 120, 200):
        assert tail_p(*laws[1], int(m.sum()), k_obs, 0.0) == pytest.approx(tail_p(*laws[0], int(m.sum()), k_obs, 0.0),
                                                                          rel=0, abs=1e-13)  # fmt: skip


def test_p_value_is_calibrated_under_the_model() -> None:
    """K drawn straight from the model (U_c ~ Beta, K_c ~ Bin(m_c, ρ + (1−ρ)U_c); four cells, m_c = 5,000,
    n_c = 500), 100,000 times at ρ = r0 ∈ {0, 0.005, 0.02}: P(p ≤ u) ≤ u + 3 s.e. at u ∈ {0.01, 0.05, 0.5}, and
    not far below (the test is not vacuous)."""
    rng = np.random.default_rng(13)
    m_c, n_c, reps = np.full(4, 5000), np.full(4, 500), 100_000
    k_c = thresholds(np.arange(500.0), np.zeros(500, int), 1).k.repeat(4)
    lo, pmf = null_pmf(m_c, k_c, n_c)
    for rho in (0.0, 0.005, 0.02):
        counts = rng.binomial(m_c, rho + (1 - rho) * rng.beta(k_c, n_c - k_c + 1, size=(reps, 4))).sum(axis=1)
        low = counts.min()
        p = np.array([tail_p(lo, pmf, int(m_c.sum()), int(k), rho) for k in range(low, counts.max() + 1)])[counts - low]
        for u in (0.01, 0.05, 0.5):
            se = math.sqrt(u * (1 - u) / reps)
            assert u - 0.1 * u - 3 * se < np.mean(p <= u) <= u + 3 * se


# --- level -----------------------------------------------------------------------------------------------------


def test_level_when_m_is_much_smaller_than_n() -> None:
    """m = 200, n = 5,000, four cells, 2,000 null replicates: rejections ≤ α + 3 s.e. (discrete K: below α)."""
    exact, _, _ = run(seed=1, reps=2000, n=5000, m=200)
    assert 0.01 < exact <= bound(2000)


def test_level_when_m_exceeds_n_and_the_binomial_test_fails() -> None:
    """m = 20,000, n = 2,000, four cells, 2,000 null replicates: the exact test's rejections are α within 3 s.e.,
    the naive Binomial test (same expected share, P's uncertainty ignored) rejects far more often."""
    exact, naive, _ = run(seed=2, reps=2000, n=2000, m=20_000)
    assert abs(exact - ALPHA) <= bound(2000) - ALPHA
    assert naive > 4 * ALPHA


@pytest.mark.parametrize(("q", "ties_counted_at_least"), [(0.01, 0.99), (0.3, bound(1000))], ids=["q=0.01", "q=0.3"])
def test_heavy_ties_at_zero_keep_the_level(q: float, ties_counted_at_least: float) -> None:
    """30% exact zeros in P and Q (at q = 0.3 the threshold sits at the zero/positive edge): strict counting keeps
    the level; counting ties as below (≤) over-rejects (always at q = 0.01, where every threshold is 0)."""
    exact, _, ties_counted = run(seed=3, reps=1000, n=2000, m=2000, q=q, zeros=0.3)
    assert exact <= bound(1000)
    assert ties_counted > ties_counted_at_least
    zero = replication_test(np.zeros(100), np.zeros(100, int), np.zeros(50), np.zeros(50, int), 1, r0=0.0)
    assert (zero.k_obs, zero.rate) == (0, 0.0) and zero.p_value == pytest.approx(1.0)


def test_mode_collapse_onto_a_dense_cell_is_not_replication() -> None:
    """Q puts 70% of its samples in the cell with the shortest distances, exchangeably within cells: stratified,
    the level holds; one global threshold (no cells) calls it replication."""
    collapse = np.array([0.7, 0.1, 0.1, 0.1])
    strat, _, _ = run(seed=4, reps=500, n=2000, m=2000, gen_cell_p=collapse)
    pooled, _, _ = run(seed=4, reps=500, n=2000, m=2000, gen_cell_p=collapse, stratify=False)
    assert strat <= bound(500)
    assert pooled > 0.5


def test_minimum_effect() -> None:
    """ρ = r0 = 0.005 copies: rejected ≤ α + 3 s.e. with r0, but mostly rejected by the ρ > 0 test (m ≥ n)."""
    at_r0, _, _ = run(seed=5, reps=1000, n=2000, m=20_000, rho=0.005, r0=0.005)
    small_m, _, _ = run(seed=6, reps=1000, n=5000, m=2000, rho=0.005, r0=0.005)
    against_zero, _, _ = run(seed=5, reps=200, n=2000, m=20_000, rho=0.005, r0=0.0)
    assert at_r0 <= bound(1000) and small_m <= bound(1000)
    assert against_zero > 0.5


def test_within_cell_shift_r0_margin_and_its_limit() -> None:
    """Honest samples 20% closer than fresh data (share ≈ 1.25q): flagged against ρ = 0 at m = 20k, not against
    r0 = q/2. 60% closer (share ≈ 2.5q) is flagged even with r0: the margin mitigates, it cannot remove this."""
    mild_r0, _, _ = run(seed=8, reps=200, n=5000, m=20_000, shrink=0.8, r0=0.005)
    mild_zero, _, _ = run(seed=8, reps=200, n=5000, m=20_000, shrink=0.8, r0=0.0)
    strong_r0, _, _ = run(seed=9, reps=100, n=5000, m=20_000, shrink=0.4, r0=0.005)
    assert mild_r0 <= bound(200) and mild_zero > 0.3 and strong_r0 > 0.8


# --- estimate, interval, power ----------------------------------------------------------------------------------


def copies_set(rng: np.random.Generator, n: int, m: int, rho: float):
    td, tc = draw(rng, n)
    gd, gc = draw(rng, m)
    gd[rng.random(m) < rho] = 0.0
    return td, tc, gd, gc


def test_power_and_estimate() -> None:
    """5% copies among m = 2,000 (n = 5,000, four cells): rejected at the default r0, interval covers 0.05."""
    res = replication_test(*copies_set(np.random.default_rng(10), 5000, 2000, 0.05), len(SCALES))
    assert res.r0 == rep.R0_DEFAULT and res.p_value < 1e-6
    assert res.ci_low < 0.05 < res.ci_high and res.ci_low <= res.rate <= res.ci_high
    assert res.cells == 4 and res.m == 2000 and res.n == 5000 and res.m_dropped == 0


@pytest.mark.parametrize("rho", [0.0, 0.02, 0.1])
def test_interval_coverage(rho: float) -> None:
    """The 95% interval covers the true copy rate in ≥ 93% of 400 seeded replicates (m = 2,000, n = 5,000)."""
    rng = np.random.default_rng(int(1000 * rho) + 11)
    hits = []
    for _ in range(400):
        res = replication_test(*copies_set(rng, 5000, 2000, rho), len(SCALES))
        hits.append(res.ci_low <= rho <= res.ci_high)
    assert np.mean(hits) >= 0.93


def test_interval_inverts_the_test() -> None:
    """ci_low > r0 exactly when p < α/2, for every possible count (some with α/2 < p < α); tails rise with ρ."""
    m, r0 = 400, 0.02
    lo, pmf = null_pmf(np.array([150, 250]), np.array([1, 3]), np.array([120, 310]))
    grid = np.linspace(0, 1, 41)
    between = 0
    for k_obs in range(m + 1):
        p = tail_p(lo, pmf, m, k_obs, r0)
        low, high = interval(lo, pmf, m, k_obs, ALPHA)
        assert 0 <= low <= high <= 1
        assert (low > r0) == (p < ALPHA / 2)
        between += ALPHA / 2 < p < ALPHA
        if k_obs % 20 == 0:
            assert np.all(np.diff([tail_p(lo, pmf, m, k_obs, r) for r in grid]) >= -1e-12)
    assert between > 0


# --- API ------------------------------------------------------------------------------------------------------


def test_many_sets_and_empty_cases() -> None:
    """replication_many equals one call per set; no generated sample → NaN; samples in a cell without test samples
    are dropped and counted."""
    rng = np.random.default_rng(12)
    td, tc, gd, gc = copies_set(rng, 1000, 300, 0.05)
    tc[tc == 3] = 2  # cell 3 has no test sample now
    out = replication_many(td, tc, {"a": (gd, gc), "none": (gd[:0], gc[:0])}, 4)
    assert out["a"] == replication_test(td, tc, gd, gc, 4)
    assert out["a"].m_dropped == int(np.sum(gc == 3)) > 0 and out["a"].m == 300 - out["a"].m_dropped
    assert out["a"].cells == 3
    none = out["none"]
    assert none.m == 0 and math.isnan(none.p_value) and math.isnan(none.rate)
    row = dataclasses.asdict(out["a"])
    assert set(row) >= {"share_below", "expected_share", "rate", "ci_low", "ci_high", "p_value", "k_obs", "m", "n"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.ones(3), np.zeros(2, int), np.ones(1), np.zeros(1, int), 1), "differ in length"),
        ((np.r_[1.0, np.nan], np.zeros(2, int), np.ones(1), np.zeros(1, int), 1), "1 non-finite"),
        ((np.ones(2), np.zeros(2, int), np.ones(1), np.array([5]), 2), r"integers in \[0, 2\)"),
        ((np.ones(2), np.zeros(2), np.ones(1), np.zeros(1, int), 1), "integers"),
    ],
)
def test_bad_input_is_one_clear_error(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replication_test(*args)


def test_bad_levels() -> None:
    d, c = np.ones(3), np.zeros(3, int)
    with pytest.raises(ValueError, match="q must"):
        replication_test(d, c, d, c, 1, q=1.0)
    with pytest.raises(ValueError, match="r0 must"):
        replication_test(d, c, d, c, 1, r0=-0.1)
