"""Which training images leaked: per training image, an exact test of whether generated samples fall on it more
often than test samples do, with false-discovery control over the images, and a per-set concentration test.

Inputs per layer: for every test and generated sample its **hit** — whether its evidence score is below its
cell's test q-quantile (:mod:`memray.stats.replication`) — and the training row it hit (its nearest over views).

**Per image** j: x_j generated and y_j test samples hit it, T_j = x_j + y_j. Under "generated and test samples
are exchangeable" (no copying), given the pooled values the labels are a random split of the m + n samples, so
``x_j | T_j ~ Hypergeometric(m + n, m, T_j)``: ``p_j = P(X ≥ x_j)`` is exact whatever the image's neighbourhood
(a hub image hit by many fresh samples too is not flagged). ``expected_hits = T_j·m/(m + n)``.

**Many images**: only images some generated sample hit are candidates. An image hit T_j times can at best reach
``p_min,j = P(X = T_j) = C(m, T_j)/C(m + n, T_j)``; Tarone's filter keeps the images that could reach p ≤ α
(:func:`tarone_keep`), and Benjamini–Hochberg runs over them (``q_value``; NaN for the filtered ones): the list is
at false-discovery rate α, the filter only removing tests that cannot reject.
Power needs hits: with n = 2m an image hit x times by generated samples and never by test samples has
``p ≈ (1/3)^x`` — a few hits per image. Recall and precision are measured on the detection zoo.

**Concentration** per set: ``S = Σ_j x_j(x_j − 1)/2``, the pairs of generated hits on the same training image (a
model that learned a few hundred images hits few images many times). Its null permutes the generated/test labels
over all m + n samples (seeded sequential Monte Carlo, :func:`concentration_test`): exact at level α for the
same exchangeability hypothesis, and able to reach the small p a family-wise correction asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Hits:
    """One set at one layer: per generated sample (m,) and test sample (n,) whether it is a hit and the training
    row it hit (-1 if none)."""

    gen_hit: np.ndarray
    gen_row: np.ndarray
    test_hit: np.ndarray
    test_row: np.ndarray

    @property
    def m(self) -> int:
        return len(self.gen_hit)

    @property
    def n(self) -> int:
        return len(self.test_hit)


@dataclass(frozen=True)
class LeakTable:
    """Per candidate training row (a generated hit on it): ``rows``, ``n_hits`` (x), ``test_hits`` (y),
    ``expected_hits``, ``p_value``, ``p_min``, ``q_value`` (NaN where Tarone's filter left it out); arrays in
    row order."""

    rows: np.ndarray
    n_hits: np.ndarray
    test_hits: np.ndarray
    expected_hits: np.ndarray
    p_value: np.ndarray
    p_min: np.ndarray
    q_value: np.ndarray


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of ``p`` (all finite), in input order."""
    p = np.asarray(p, dtype=np.float64)
    k = len(p)
    if k == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * k / np.arange(1, k + 1)
    q = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(k)
    out[order] = q
    return out


def tarone_keep(p_min: np.ndarray, alpha: float) -> np.ndarray:
    """Tarone's filter for a false-discovery list: the tests whose smallest attainable p is at most ``alpha``.

    BH never rejects a p above α, so a test that cannot go below α only inflates the count BH divides by.
    ``p_min`` depends only on the pooled hit count T_j, and given T_j the p-value is exact, so dropping on it keeps
    the others valid (Tarone 1990; Gilbert 2005). The FWER version (the smallest K with #{p_min ≤ α/K} ≤ K)
    drops every image with a few hits at m ≈ n/2 and is not used.
    """
    return np.asarray(p_min) <= alpha


def leaked_images(hits: Hits, alpha: float = 0.05) -> LeakTable:
    """The per-image hypergeometric tests of the training rows hit by generated samples (module docstring)."""
    m, n = hits.m, hits.n
    size = int(max(hits.gen_row.max(initial=-1), hits.test_row.max(initial=-1))) + 1
    x = np.bincount(hits.gen_row[hits.gen_hit & (hits.gen_row >= 0)], minlength=size)
    y = np.bincount(hits.test_row[hits.test_hit & (hits.test_row >= 0)], minlength=size)
    rows = np.flatnonzero(x > 0)
    xs, ys = x[rows], y[rows]
    total = xs + ys
    p = stats.hypergeom.sf(xs - 1, m + n, m, total)
    p_min = stats.hypergeom.pmf(total, m + n, m, total)
    q = np.full(len(rows), np.nan)
    keep = tarone_keep(p_min, alpha)
    if keep.any():
        q[keep] = bh(p[keep])
    return LeakTable(rows, xs, ys, total * m / (m + n), p, p_min, q)


def pair_count(x: np.ndarray) -> int:
    """``Σ x_j (x_j − 1)/2``: pairs of hits on the same image."""
    x = np.asarray(x, dtype=np.int64)
    return int((x * (x - 1) // 2).sum())


CONCENTRATION_EXCEEDANCES = 20
"""Besag–Clifford stopping: the permutations stop at the 20th one whose statistic reaches the observed one."""
CONCENTRATION_PERMUTATIONS = 19_999
"""At most this many permutations: p resolves down to 5e-5, below what Holm needs over ~200 tests at α = 0.01."""
_BATCH = 1000


def _permuted_pairs(inv: np.ndarray, m: int, total: int, rng: np.random.Generator, b: int) -> np.ndarray:
    """Same-image pairs of the generated-labelled hits under ``b`` uniform label splits of ``total`` samples with
    ``m`` generated, seen through the pool of hits (``inv``: each hit's image index): (b,)."""
    pool, images = len(inv), int(inv.max()) + 1
    h = rng.hypergeometric(m, total - m, pool, size=b)  # generated labels among the pool, per permutation
    order = rng.permuted(np.broadcast_to(np.arange(pool), (b, pool)), axis=1)
    chosen = np.arange(pool)[None, :] < h[:, None]  # the first h of a random order: a uniform h-subset
    key = (np.arange(b)[:, None] * images + inv[order])[chosen]
    counts = np.bincount(key, minlength=b * images).reshape(b, images).astype(np.int64)
    return (counts * (counts - 1) // 2).sum(axis=1)


def concentration_test(
    hits: Hits, permutations: int = CONCENTRATION_PERMUTATIONS, seed: int | list[int] = 0,
    exceedances: int = CONCENTRATION_EXCEEDANCES,
) -> tuple[int, float]:  # fmt: skip
    """``(S, p)``: the generated hits' same-image pairs and their permutation p-value (module docstring).

    Sequential Monte Carlo (Besag & Clifford 1991), exact for any stopping: permutations are drawn (seeded, in
    batches of 1,000) until the ``exceedances``-th with ``S* ≥ S`` — at the L-th permutation, ``p = exceedances/L``
    — or until ``permutations`` ran with ``G < exceedances`` exceedances, ``p = (G + 1)/(permutations + 1)``. A
    set far from significance stops after a few dozen permutations; a strong one resolves p down to
    ``1/(permutations + 1)``, small enough to survive Holm over a family of a few hundred tests.
    """
    m = hits.m
    hit = np.concatenate([hits.gen_hit, hits.test_hit]) & (np.concatenate([hits.gen_row, hits.test_row]) >= 0)
    rows = np.concatenate([hits.gen_row, hits.test_row])
    s_obs = pair_count(np.bincount(rows[:m][hit[:m]]))
    pool = np.flatnonzero(hit)  # only hit samples can add pairs: permute labels, count the gen-labelled hits
    if s_obs == 0 or len(pool) < 2:
        return s_obs, 1.0
    rng = np.random.default_rng(seed)
    _, inv = np.unique(rows[pool], return_inverse=True)
    done = ge = 0
    while done < permutations:
        b = min(_BATCH, permutations - done)
        at = np.flatnonzero(_permuted_pairs(inv, m, m + hits.n, rng, b) >= s_obs)
        if ge + len(at) >= exceedances:  # stopped at the permutation holding the exceedances-th exceedance
            return s_obs, exceedances / (done + int(at[exceedances - ge - 1]) + 1)
        ge, done = ge + len(at), done + b
    return s_obs, (ge + 1) / (permutations + 1)
