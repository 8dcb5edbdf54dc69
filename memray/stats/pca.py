"""Exact PCA of the training set from per-block moments, merged in block order.

Each global row block gives its row count, float64 mean and centred second moments (the upper triangle by BLAS
``dsyrk`` over sub-blocks of :data:`memray.stats.reduce.ROW_BLOCK` rows, as :func:`memray.stats.reduce.fit_pca` does,
then mirrored so the matrix is exactly symmetric); blocks merge pairwise with Chan et al.'s update
(:func:`merge_moments`) through :func:`memray.stats.workspace.reduce_ordered`. The components are the top
eigenvectors of the covariance with :func:`memray.stats.reduce.fit_pca`'s solver, order and sign rule
(:func:`top_components`). A caller holds O(d² log(n/B)) floats, whatever n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from memray.stats.reduce import ROW_BLOCK, top_components

if TYPE_CHECKING:
    from memray.io.rows import Rows


@dataclass(frozen=True, eq=False)
class Moments:
    """Moments of ``n`` rows: ``mean`` (d,) float64 and ``m2`` (d, d) float64 Σ (x − mean)ᵀ(x − mean), symmetric."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


def moments_of(x: np.ndarray) -> Moments:
    """Moments of the rows of ``x`` (m, d), centred by their own float64 mean (no float64 copy of ``x``)."""
    x = np.asarray(x)
    m, d = x.shape
    if m == 0:
        return Moments(0, np.zeros(d), np.zeros((d, d)))
    mean = x.mean(axis=0, dtype=np.float64)
    upper = np.zeros((d, d), order="F")
    buf = np.empty((min(m, ROW_BLOCK), d))
    for start in range(0, m, ROW_BLOCK):
        part = x[start : start + ROW_BLOCK]
        block = np.subtract(part, mean, out=buf[: len(part)])
        upper = scipy.linalg.blas.dsyrk(1.0, block.T, beta=1.0, c=upper, lower=0, overwrite_c=1)
    m2 = np.triu(upper)
    m2 += np.triu(upper, 1).T  # exactly symmetric: the lower triangle mirrors the upper
    return Moments(int(m), mean, np.ascontiguousarray(m2))


def block_moments(rows: Rows, start: int, stop: int) -> Moments:
    """Moments of global rows ``[start, stop)`` of ``rows`` (float64, centred by the block's mean)."""
    return moments_of(rows.read(start, stop))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint row sets (Chan, Golub & LeVeque's pairwise update).

    ``mean = a.mean + δ·n_b/n`` and ``m2 = a.m2 + b.m2 + δδᵀ·n_a·n_b/n`` with ``δ = b.mean − a.mean``; the result
    stays exactly symmetric.
    """
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + np.outer(delta, delta) * (a.n * b.n / n)
    return Moments(n, mean, m2)


def pca_from_moments(m: Moments, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows behind ``m``: mean (d,), components (d, k), their variances (k,) (unbiased, n − 1), float64."""
    if m.n == 0:
        raise ValueError("pca_from_moments: no rows")
    d = m.mean.shape[0]
    if not 1 <= k <= d:
        raise ValueError(f"pca_from_moments: k={k} components of a {d}-dimensional space")
    cov = np.asfortranarray(m.m2 / max(m.n - 1, 1))
    comps, var = top_components(cov, k)
    return m.mean, comps, var
