"""Exact PCA of the training set from per-block moments, merged in block order.

Each global row block gives its row count, float64 mean and centred second moments (the upper triangle by BLAS
``dsyrk`` over sub-blocks of :data:`ROW_BLOCK` rows, as :func:`fit_pca` does,
then mirrored so the matrix is exactly symmetric); blocks merge pairwise with Chan et al.'s update
(:func:`merge_moments`) through :func:`memray.stats.workspace.reduce_ordered`. The components are the top
eigenvectors of the covariance with :func:`fit_pca`'s solver, order and sign rule
(:func:`top_components`). A caller holds O(d² log(n/B)) floats, whatever n.

:func:`fit_pca` is the exact PCA of one in-memory array (float64 covariance accumulated over row blocks, no float64
copy of T), the reference the block PCA is tested against; :func:`top_components` is the eigen-solver both use
(LAPACK ``dsyevr``, components by decreasing variance, each one's sign fixed so that its largest-|loading| entry is
positive; the authors' code uses sklearn's randomized solver unseeded, and distances in the PCA space do not depend
on the signs). :func:`pca_components` says how many components (or none); :func:`numerical_rank` gives
``LayerSpace.rank`` (a layer whose rank is below the number of components is logged as degenerate and still
scored; one with no variance at all scores NaN, see :class:`memray.stats.score.FittedLayer`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

from memray.stats import device
from memray.stats.config import CTConfig

_ONE_SOLVER = threading.Lock()  # one eigensolver at a time under the process-wide one-thread BLAS limit
ROW_BLOCK = 1024  # rows per float64 block of the covariance and the projection (memory and cache, not results)
EPS64 = float(np.finfo(np.float64).eps)

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
    backend = device.current()
    if backend is not None:  # torch float64 (memray.stats.device)
        return Moments(int(m), *backend.moments(x))
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


def fit_pca(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact PCA of ``train`` (n, d): returns mean (d,), components (d, k) and their variances (k,), float64."""
    x = np.asarray(train)
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), order="F")  # upper triangle of Σ (x − mean)ᵀ(x − mean), float64, block by block
    buf = np.empty((min(n, ROW_BLOCK), d))
    for start in range(0, n, ROW_BLOCK):
        block = np.subtract(x[start : start + ROW_BLOCK], mean, out=buf[: len(x[start : start + ROW_BLOCK])])
        cov = scipy.linalg.blas.dsyrk(1.0, block.T, beta=1.0, c=cov, lower=0, overwrite_c=1)
    cov /= max(n - 1, 1)
    comps, var = top_components(cov, k)
    return mean, comps, var


def top_components(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenpairs of a symmetric (d, d) matrix (upper triangle read), for :func:`fit_pca` and the block PCA:
    LAPACK ``dsyevr``, decreasing eigenvalue (stable), each column's largest-|loading| entry positive.

    The solver runs on one BLAS thread: on several, its bits depend on how many (seen for d ≥ 384), so the
    components, cells and every C_T would depend on the cores of the machine that fits. The limit is process-wide,
    so one solve runs at a time (a job's driver fits layers side by side).

    Returns:
        components (d, k) float64 C-contiguous and eigenvalues (k,) clipped at 0.
    """
    d = cov.shape[0]
    with _ONE_SOLVER, threadpool_limits(1, user_api="blas"):  # dsyevr's bits depend on the BLAS thread count
        evals, evecs = scipy.linalg.eigh(cov, lower=False, subset_by_index=[d - k, d - 1], driver="evr")
    order = np.argsort(-evals, kind="stable")
    comps = evecs[:, order]
    pivot = np.argmax(np.abs(comps), axis=0)
    signs = np.sign(comps[pivot, np.arange(comps.shape[1])])
    signs[signs == 0] = 1.0
    return np.ascontiguousarray(comps * signs), np.maximum(evals[order], 0.0)


def numerical_rank(variances: np.ndarray, d: int) -> int:
    """How many covariance eigenvalues exceed ``λ_max · d · eps64`` (numpy's ``matrix_rank`` tolerance)."""
    top = float(np.max(variances, initial=0.0))
    return int(np.count_nonzero(variances > top * d * EPS64)) if top > 0 else 0


def all_rows_equal(x: np.ndarray) -> bool:
    """True when every row of ``x`` (n, d) equals the first (no variance at all), checked block by block."""
    return all(np.array_equal(x[s : s + ROW_BLOCK], np.broadcast_to(x[0], x[s : s + ROW_BLOCK].shape))
               for s in range(0, len(x), ROW_BLOCK))  # fmt: skip


def pca_components(n: int, d: int, cfg: CTConfig) -> int | None:
    """Number of PCA components for n training rows of dimension d, or ``None`` for no PCA."""
    if cfg.pca_dim is None or (cfg.pca_only_if_larger and d <= cfg.pca_dim):
        return None
    return min(n, d, cfg.pca_dim)
