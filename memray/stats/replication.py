"""Replication rate of a generated set: how many of its samples sit closer to the training set than the test set's
q-quantile allows, with an exact null that carries the test set's own uncertainty (pure numpy/scipy).

Inputs per set and layer: test (P, n) and generated (Q, m) nearest-training distances with their cells (views
included: the same min over views for both). Per cell c with n_c test and m_c generated samples:

* threshold ``t_c`` = the k_c-th smallest test distance, ``k_c = max(1, floor(q·(n_c + 1)))`` (the conformal rule:
  a fresh sample falls below it with probability ``k_c/(n_c + 1) ≤ q``; above q only where n_c + 1 < 1/q);
* ``K_c`` = generated samples STRICTLY below t_c (``share_below = K/m``, ``K = Σ K_c``; ties do not count).

**Null** (no copying): within each cell, generated distances are exchangeable with test distances (i.i.d. from
one continuous law F_c). Then ``U_c = F_c(t_c) ~ Beta(k_c, n_c − k_c + 1)`` and ``K_c | U_c ~ Bin(m_c, U_c)``, so
``K_c ~ BetaBinomial(m_c, k_c, n_c − k_c + 1)`` exactly, with ``Var K_c = m_c μ(1 − μ)(n_c + 1 + m_c)/(n_c + 2) ≈
m q(1 − q)(1 + m/n)`` (μ = k_c/(n_c + 1)). It is not Binomial: every generated sample meets the same order
statistic of P, so a Binomial test over-rejects once m is comparable with n. P sets the threshold and is the null
sample at once, without a split: its randomness is U_c. Cells hold disjoint test samples, so the K_c are
independent given the counts and ``H = Σ_c K_c`` follows the convolution of the cells' beta-binomials.
Stratifying makes the null hold whatever share of its samples the generator puts in each cell (mode collapse
onto a cell is not copying); only exchangeability within a cell is assumed.

**Replication model**: each generated sample is independently a copy with probability ρ (then below its
threshold) or an honest sample as above, ``K_c | U_c ~ Bin(m_c, ρ + (1 − ρ)U_c)``. As ρ is common to all cells,
``K = H + C`` with ``C | H ~ Bin(m − H, ρ)`` (the copies among the samples not already below), hence exactly
``P_ρ(K ≥ k) = Σ_h P(H = h)·P(Bin(m − h, ρ) ≥ k − h)``: one sum over H's support per ρ, equal to P(H ≥ k) at
ρ = 0 and increasing in ρ. **H0: ρ ≤ r0**, ``p = P_{r0}(K ≥ k_obs)``. ``rate`` = ρ̂ = (K − E H)/(m − E H)
(``E H = Σ m_c k_c/(n_c + 1)``, so every generated sample weighs the same), clipped to [0, 1]. The interval
inverts the exact test with α/2 in each tail (Clopper–Pearson style), so it carries Var U_c, and ``ci_low > r0``
exactly when ``p < α/2``; it is an interval for ρ only under the model (else for the apparent rate). Tails are
sums of nonnegative terms; cell laws are trimmed below 1e-30, and large convolutions run by FFT with entries
below 1e-14 of the peak dropped, so a p-value under ~1e-12 means only "tiny". p is per set and layer: the
layers see the same samples, so combine them with Holm (:func:`memray.stats.significance.holm`).

**Ties** (train–test near-duplicates put zeros at the threshold): with X = F⁻(V), Y = F⁻(W) for uniforms V, W,
``Y < X_(k)`` implies ``W < V_(k)``, so K under ties is at most the continuous-case K of the same uniforms: the
p-value stays valid (conservative). A cell whose threshold is 0 cannot see exact copies at 0 at all.

**r0** (default 0.005 = q/2 at q = 0.01; keep r0 ≈ q/2 when changing q): honest generators are never exactly
exchangeable (mode-seeking sampling, blur towards "hub" images shorten distances), and at large m any shift becomes
significant. At r0 = q/2 a set is flagged only when its share below clearly exceeds r0 + (1 − r0)q ≈ 1.5q: honest
samples may fall below the test q-quantile 1.5× as often as fresh data (a 50% density excess at the shortest
distances of a cell), and copying of 0.5% of a set or less is not what the test reports. The p-value is valid for
the composite H0 "each sample independently a copy with probability ≤ r0, honest ones exchangeable within cells".

**Limits**: a generator whose honest samples oversample the dense, short-distance end of a cell by more than the
r0 margin is reported as replicating; cells and r0 mitigate this, they do not remove it. Independence of
samples is assumed (a set of near-identical samples counts each one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, signal, special

Q_DEFAULT = 0.01
R0_DEFAULT = 0.005
ALPHA_DEFAULT = 0.05
_TINY = 1e-30  # cell-law entries below this are trimmed (mass lost ≤ m·1e-30)
_DIRECT_MAX = 1 << 18  # a convolution of len(a)·len(b) above this runs by FFT ...
_FFT_FLOOR = 1e-14  # ... and its entries below this share of the peak are set to 0
_XTOL = 1e-7  # absolute tolerance of the interval's ends


@dataclass(frozen=True, eq=False)
class Thresholds:
    """Per-cell thresholds of one test set, arrays (cells,): ``t`` (NaN where n_c = 0), ``k`` and ``n`` (int64)."""

    t: np.ndarray
    k: np.ndarray
    n: np.ndarray
    q: float


@dataclass(frozen=True)
class ReplicationResult:
    """One set and layer. ``m``: generated samples in cells with test samples; ``m_dropped``: the rest (no
    threshold, not counted); ``cells``: cells holding both; NaN statistics when m = 0."""

    share_below: float
    expected_share: float
    rate: float
    ci_low: float
    ci_high: float
    p_value: float
    k_obs: int
    m: int
    n: int
    q: float
    r0: float
    alpha: float
    cells: int
    m_dropped: int


def _check(dist: np.ndarray, cells: np.ndarray, n_cells: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(dist, dtype=np.float64).ravel()
    c = np.asarray(cells).ravel()
    if len(d) != len(c):
        raise ValueError(f"{name} distances ({len(d)}) and cells ({len(c)}) differ in length")
    if not np.isfinite(d).all():
        bad = int(np.sum(~np.isfinite(d)))
        raise ValueError(f"{name} distances hold {bad} non-finite values: drop those samples before the test")
    if len(c) and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= n_cells):
        raise ValueError(f"{name} cells must be integers in [0, {n_cells})")
    return d, c.astype(np.int64)


def thresholds(test_dist: np.ndarray, test_cells: np.ndarray, n_cells: int, q: float = Q_DEFAULT) -> Thresholds:
    """t_c = the k_c-th smallest test distance of cell c, ``k_c = max(1, floor(q·(n_c + 1)))`` (ties kept)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    d, c = _check(test_dist, test_cells, n_cells, "test")
    n = np.bincount(c, minlength=n_cells).astype(np.int64)
    k = np.maximum(1, np.floor(q * (n + 1) + 1e-9)).astype(np.int64)  # 1e-9: q·(n+1) integral up to rounding
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    t = np.full(n_cells, np.nan)
    has = n > 0
    t[has] = d[np.lexsort((d, c))][start[has] + k[has] - 1]
    return Thresholds(t=t, k=k, n=n, q=float(q))


def below_counts(thr: Thresholds, gen_dist: np.ndarray, gen_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K_c, m_c)`` (cells,): generated samples with distance strictly below t_c, and all of them, per cell."""
    d, c = _check(gen_dist, gen_cells, len(thr.t), "generated")
    below = d < thr.t[c]  # NaN threshold (no test sample) → never below
    return np.bincount(c[below], minlength=len(thr.t)), np.bincount(c, minlength=len(thr.t))


def betabinom_pmf(m: int, a: float, b: float) -> np.ndarray:
    """(m + 1,) BetaBinomial(m, a, b) pmf: its value at the mean j0, then the term ratio
    ``p(j+1)/p(j) = (m−j)(j+a)/((j+1)(m−j−1+b))`` summed in logs outwards from j0, normalized to sum 1 (which
    removes betaln's ~1e-9 error at large m; relative error ~1e-12)."""
    j = np.arange(m, dtype=np.float64)
    log_ratio = np.log(m - j) + np.log(j + a) - np.log(j + 1) - np.log(m - j - 1 + b)
    j0 = int(m * a / (a + b))
    log_j0 = special.betaln(j0 + a, m - j0 + b) - special.betaln(a, b) - special.betaln(j0 + 1, m - j0 + 1)
    log_j0 -= math.log(m + 1)
    below = -np.cumsum(log_ratio[:j0][::-1])[::-1]
    pmf = np.exp(log_j0 + np.concatenate([below, [0.0], np.cumsum(log_ratio[j0:])]))
    return pmf / pmf.sum()


def _trim(lo: int, pmf: np.ndarray) -> tuple[int, np.ndarray]:
    keep = np.flatnonzero(pmf > _TINY)
    return lo + int(keep[0]), pmf[keep[0] : keep[-1] + 1]


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) * len(b) <= _DIRECT_MAX:
        return np.convolve(a, b)
    out = signal.fftconvolve(a, b)
    out[out < _FFT_FLOOR * out.max()] = 0.0  # round-off of the FFT (~1e-16 of the peak), not probability
    return out


def null_pmf(m: np.ndarray, k: np.ndarray, n: np.ndarray) -> tuple[int, np.ndarray]:
    """``(lo, pmf)``: the law of H = Σ_c BetaBinomial(m_c, k_c, n_c − k_c + 1), P(H = lo + i) = pmf[i]."""
    lo, pmf = 0, np.ones(1)
    for mc, kc, nc in zip(np.asarray(m), np.asarray(k), np.asarray(n), strict=True):
        if mc > 0:
            clo, cell = _trim(0, betabinom_pmf(int(mc), float(kc), float(nc - kc + 1)))
            lo, pmf = _trim(lo + clo, _convolve(pmf, cell))
    return lo, pmf


def _binom_tail(x: np.ndarray, size: np.ndarray, rho: float, upper: bool) -> np.ndarray:
    """``P(Bin(size, ρ) ≥ x)`` (upper) or ``P(Bin(size, ρ) ≤ x)``, elementwise, by the regularized beta function."""
    if upper:
        out = (x <= 0).astype(np.float64)
        mid = (x >= 1) & (x <= size)
        out[mid] = special.betainc(x[mid], size[mid] - x[mid] + 1, rho)
    else:
        out = (x >= size).astype(np.float64)
        mid = (x >= 0) & (x < size)
        out[mid] = special.betainc(size[mid] - x[mid], x[mid] + 1, 1.0 - rho)
    return out


def tail_p(lo: int, pmf: np.ndarray, m: int, k_obs: int, rho: float, upper: bool = True) -> float:
    """``P_ρ(K ≥ k_obs)`` (upper) or ``P_ρ(K ≤ k_obs)`` for K = H + Bin(m − H, ρ), H ~ ``(lo, pmf)``."""
    h = lo + np.arange(len(pmf), dtype=np.float64)
    given_h = _binom_tail(k_obs - h, m - h, rho, upper)
    return float(min(1.0, np.dot(pmf, given_h)))


def interval(lo: int, pmf: np.ndarray, m: int, k_obs: int, alpha: float) -> tuple[float, float]:
    """Equal-tailed 1 − α interval for ρ by inverting the exact test (each end solved by Brent's method)."""
    a = alpha / 2

    def up(r: float) -> float:
        return tail_p(lo, pmf, m, k_obs, r, upper=True) - a

    def down(r: float) -> float:
        return tail_p(lo, pmf, m, k_obs, r, upper=False) - a

    low = 0.0 if up(0.0) >= 0 else optimize.brentq(up, 0.0, 1.0, xtol=_XTOL)
    if k_obs >= m:
        return float(low), 1.0
    high = 0.0 if down(0.0) <= 0 else optimize.brentq(down, 0.0, 1.0, xtol=_XTOL)
    return float(low), float(high)


@dataclass(frozen=True, eq=False)
class Observed:
    """One generated set against one test set's thresholds: ``k_obs`` of ``m`` below, the null law of H
    (``P(H = lo + i) = pmf[i]``, mean ``e_h``) over the ``cells`` used, ``m_dropped`` samples without a threshold."""

    k_obs: int
    m: int
    e_h: float
    lo: int
    pmf: np.ndarray
    cells: int
    m_dropped: int

    def p_value(self, r0: float) -> float:
        """``P_{r0}(K ≥ k_obs)``: the one-sided p of H0 ρ ≤ r0 (NaN when m = 0)."""
        return tail_p(self.lo, self.pmf, self.m, self.k_obs, r0) if self.m else math.nan


def observe(thr: Thresholds, gen_dist: np.ndarray, gen_cells: np.ndarray) -> Observed:
    """Count a generated set's (m,) distances in cells below the thresholds and build the null law of its count."""
    k_c, m_c = below_counts(thr, gen_dist, gen_cells)
    used = (thr.n > 0) & (m_c > 0)
    e_h = float(np.sum(m_c[used] * thr.k[used] / (thr.n[used] + 1)))
    lo, pmf = null_pmf(m_c[used], thr.k[used], thr.n[used])
    dropped = int(m_c[thr.n == 0].sum())
    return Observed(int(k_c[used].sum()), int(m_c[used].sum()), e_h, lo, pmf, int(used.sum()), dropped)


def replication_from_thresholds(
    thr: Thresholds, gen_dist: np.ndarray, gen_cells: np.ndarray, r0: float = R0_DEFAULT, alpha: float = ALPHA_DEFAULT
) -> ReplicationResult:
    """The replication test of one generated set (m,) distances and cells against a test set's thresholds."""
    if not 0.0 <= r0 < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"r0 must lie in [0, 1) and alpha in (0, 1), got r0={r0}, alpha={alpha}")
    obs = observe(thr, gen_dist, gen_cells)
    m, k_obs = obs.m, obs.k_obs
    base = dict(k_obs=k_obs, m=m, n=int(thr.n.sum()), q=thr.q, r0=float(r0), alpha=float(alpha))
    base.update(cells=obs.cells, m_dropped=obs.m_dropped)
    if m == 0:
        nan = math.nan
        return ReplicationResult(nan, nan, nan, nan, nan, nan, **base)
    ci_low, ci_high = interval(obs.lo, obs.pmf, m, k_obs, alpha)
    return ReplicationResult(
        share_below=k_obs / m,
        expected_share=obs.e_h / m,
        rate=min(1.0, max(0.0, (k_obs - obs.e_h) / (m - obs.e_h))),
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=obs.p_value(r0),
        **base,
    )


def replication_test(
    test_dist: np.ndarray,
    test_cells: np.ndarray,
    gen_dist: np.ndarray,
    gen_cells: np.ndarray,
    n_cells: int,
    q: float = Q_DEFAULT,
    r0: float = R0_DEFAULT,
    alpha: float = ALPHA_DEFAULT,
) -> ReplicationResult:
    """Test (n,) and generated (m,) distances with cells in [0, n_cells) → one :class:`ReplicationResult`.

    Without cells pass zeros and ``n_cells=1`` (valid only if the generator's samples are exchangeable with the
    test samples overall, cell shares included).
    """
    return replication_from_thresholds(thresholds(test_dist, test_cells, n_cells, q), gen_dist, gen_cells, r0, alpha)


def replication_many(
    test_dist: np.ndarray,
    test_cells: np.ndarray,
    gens: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_cells: int,
    q: float = Q_DEFAULT,
    r0: float = R0_DEFAULT,
    alpha: float = ALPHA_DEFAULT,
) -> dict[str, ReplicationResult]:
    """:func:`replication_test` of every set ``{name: (distances (m,), cells (m,))}`` of one layer (thresholds once).

    ``pd.DataFrame([dataclasses.asdict(r) | {"gen_set": s} for s, r in out.items()])`` makes a table of it.
    """
    thr = thresholds(test_dist, test_cells, n_cells, q)
    return {name: replication_from_thresholds(thr, d, c, r0, alpha) for name, (d, c) in gens.items()}
