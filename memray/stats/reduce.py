"""Per-layer embedding space for C_T and the single-array pieces of its fit; the fit itself (PCA moments and
k-means over the training set's row blocks) is :func:`memray.stats.fit.fit_space`.

- :class:`LayerSpace`: a fitted PCA (or identity) plus k-means centroids, with ``project`` and the exact
  nearest-centroid ``assign`` (float64 squared L2, ties -> the lower cell; a sample's cell never depends on how
  many samples are assigned together, unlike FAISS' float32 search, which switches to a BLAS formula above 20
  queries and can flip near-ties).
- :func:`fit_pca`: the exact PCA of one in-memory array (float64 covariance accumulated over row blocks, no float64
  copy of T), the reference that the block PCA (:mod:`memray.stats.pca`) is tested against;
  :func:`top_components`: the eigen-solver both use (LAPACK ``dsyevr``, components by decreasing variance, each
  one's sign fixed so that its largest-|loading| entry is positive; the authors' code uses sklearn's randomized
  solver unseeded, and distances in the PCA space do not depend on the signs).
- :func:`pca_components` (how many components, or none), :func:`numerical_rank` (``LayerSpace.rank``: a layer
  whose rank is below the number of components is logged as degenerate and still scored; one with no variance at
  all scores NaN, see :class:`memray.stats.score.FittedLayer`) and :func:`all_rows_equal`.
- :func:`kmeans_pp` (greedy k-means++ seeding of each restart) and :func:`canonical_order` (cells numbered in the
  lexicographic order of their centroids), used by :mod:`memray.stats.kmeans` and :mod:`memray.stats.fit`;
  :data:`MIN_POINTS_PER_CELL`, below which the fit warns once, naming the layer.

Without PCA (``pca_dim=None``, or ``pca_only_if_larger`` and d <= ``pca_dim``) the raw vectors are used as they
are, not centred: k-means and Euclidean distances do not change under a shift, and cosine distances are then
those of the raw embeddings (what dgm-eval does when it skips PCA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from memray.config import CTConfig

ASSIGN_BATCH = 8192  # rows per chunk of the exact centroid assignment (bounds memory, not results)
ROW_BLOCK = 1024  # rows per float64 block of the covariance and the projection (memory and cache, not results)
EPS64 = float(np.finfo(np.float64).eps)
MIN_POINTS_PER_CELL = 39  # FAISS' min_points_per_centroid: fewer training points per cell are warned about


@dataclass(frozen=True, eq=False)
class LayerSpace:
    """A fitted PCA (or identity) plus k-means centroids for one layer.

    Attributes:
        mean: (d,) float64 training mean (zeros when there is no PCA).
        components: (d, k) float64 principal axes, columns by decreasing variance; ``None`` = identity.
        centroids: (cells, k) float32 k-means centroids in the projected space.
        explained_variance: (k,) float64 variance of T along each component (``None`` without PCA).
        kmeans_points: how many training points the k-means was fit on.
        rank: numerical rank of the training covariance, at most ``dim`` (eigenvalues above
            ``λ_max · d · eps``; 0 = every training row the same vector). Without PCA only the zero-variance
            case is detected: 0, else ``None``.
    """

    mean: np.ndarray
    components: np.ndarray | None
    centroids: np.ndarray
    explained_variance: np.ndarray | None = None
    kmeans_points: int = 0
    rank: int | None = None

    @property
    def dim(self) -> int:
        """Dimension k of the projected space."""
        return int(self.centroids.shape[1])

    @property
    def degenerate(self) -> bool:
        """True when the training features span fewer dimensions than the space has (rank < dim)."""
        return self.rank is not None and self.rank < self.dim

    def project(self, x: np.ndarray) -> np.ndarray:
        """Project raw features (n, d) to the space (n, k) float64: ``(x - mean) @ components`` or ``x``."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of shape {x.shape} do not match the fitted dimension {self.mean.shape[0]}")
        if self.components is None:
            return x.astype(np.float64, copy=True)
        out = np.empty((len(x), self.components.shape[1]))
        buf = np.empty((min(len(x), ROW_BLOCK), len(self.mean)))
        for start in range(0, len(x), ROW_BLOCK):
            block = np.subtract(x[start : start + ROW_BLOCK], self.mean, out=buf[: len(x[start : start + ROW_BLOCK])])
            np.matmul(block, self.components, out=out[start : start + ROW_BLOCK])
        return out

    def assign(self, z: np.ndarray) -> np.ndarray:
        """Cell of the nearest centroid for each projected row (n, k) -> (n,) int64 (exact, ties -> lower cell).

        Squared distances come from the BLAS expansion ‖z‖² − 2 z·c + ‖c‖²; rows whose two nearest centroids are
        closer than that expansion's error bound are recomputed with the direct Σ(z − c)², so the result is
        the exact nearest centroid whatever the batch.
        """
        z = np.asarray(z, dtype=np.float64)
        c = self.centroids.astype(np.float64)
        out = np.empty(len(z), dtype=np.int64)
        if len(c) == 1:
            out[:] = 0
            return out
        csq = np.einsum("ij,ij->i", c, c)
        for start in range(0, len(z), ASSIGN_BATCH):
            chunk = z[start : start + ASSIGN_BATCH]
            zsq = np.einsum("ij,ij->i", chunk, chunk)
            approx = zsq[:, None] - 2.0 * (chunk @ c.T) + csq[None, :]
            two = np.partition(approx, 1, axis=1)[:, :2]
            best = np.argmin(approx, axis=1)
            tol = 8.0 * (c.shape[1] + 4) * EPS64 * (zsq + csq.max())
            near = np.flatnonzero(two[:, 1] - two[:, 0] <= tol)
            if len(near):
                diff = chunk[near, None, :] - c[None, :, :]
                best[near] = np.argmin(np.sum(diff * diff, axis=-1), axis=1)
            out[start : start + len(chunk)] = best
        return out


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

    Returns:
        components (d, k) float64 C-contiguous and eigenvalues (k,) clipped at 0.
    """
    d = cov.shape[0]
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


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; sklearn's 2 + ln k trials per centre) -> (k, d) float32."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)

    def sqdist(rows: np.ndarray) -> np.ndarray:  # (n, len(rows)) squared distances to the rows' points
        return np.maximum(sq[:, None] - 2.0 * (x @ x[rows].T) + sq[rows][None, :], 0.0)

    chosen = [int(rng.integers(n))]
    d2 = sqdist(np.array(chosen))[:, 0]
    trials = 2 + int(np.log(k))
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            cand = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total), n - 1)
        else:  # every point already coincides with a centre
            cand = rng.integers(n, size=trials)
        nd = np.minimum(d2[:, None], sqdist(cand))
        best = int(np.argmin(nd.sum(axis=0)))
        chosen.append(int(cand[best]))
        d2 = nd[:, best]
    return x[chosen].astype(np.float32)


def canonical_order(centroids: np.ndarray) -> np.ndarray:
    """Centroids (cells, k) sorted lexicographically (first coordinate first): cell numbers then depend only on
    the set of centroids, so restarts that find the same partition return the same array."""
    c = np.asarray(centroids)
    return np.ascontiguousarray(c[np.lexsort(c.T[::-1])])
