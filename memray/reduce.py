"""Per-layer embedding space for C_T: exact PCA and k-means cells, both fit on the training set T only.

PCA is exact and deterministic: the float64 covariance of T (accumulated over row blocks, so no float64 copy of T
is made) and its top eigenvectors (LAPACK ``dsyevr``); components are sorted by decreasing variance and each
one's sign is fixed so that its largest-|loading| entry is positive. The
authors' code uses sklearn's randomized solver unseeded; distances in the PCA space do not depend on the signs.

Cells are k-means centroids (greedy k-means++ seeding from ``default_rng(seed)``, then ``faiss.Kmeans`` Lloyd
iterations) fit on all training points unless ``cfg.kmeans_sample`` is set (then a seeded sample).
Samples are assigned to the nearest centroid with exact float64 squared-L2 distances (ties -> the lower cell),
so a sample's cell never depends on how many samples are assigned together (FAISS' float32 search switches to
a BLAS formula above 20 queries, which can flip near-ties).

Without PCA (``pca_dim=None``, or ``pca_only_if_larger`` and d <= ``pca_dim``) the raw vectors are used as they
are, not centred: k-means and Euclidean distances do not change under a shift, and cosine distances are then
those of the raw embeddings (what dgm-eval does when it skips PCA).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from memray.config import CTConfig
from memray.faiss_backend import faiss, faiss_scope  # faiss imported with the CPU's BLAS kernels

log = logging.getLogger(__name__)

ASSIGN_BATCH = 8192  # rows per chunk of the exact centroid assignment (bounds memory, not results)
ROW_BLOCK = 1024  # rows per float64 block of the covariance and the projection (memory and cache, not results)
EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, eq=False)
class LayerSpace:
    """A fitted PCA (or identity) plus k-means centroids for one layer.

    Attributes:
        mean: (d,) float64 training mean (zeros when there is no PCA).
        components: (d, k) float64 principal axes, columns by decreasing variance; ``None`` = identity.
        centroids: (cells, k) float32 k-means centroids in the projected space.
        explained_variance: (k,) float64 variance of T along each component (``None`` without PCA).
        kmeans_points: how many training points the k-means was fit on.
    """

    mean: np.ndarray
    components: np.ndarray | None
    centroids: np.ndarray
    explained_variance: np.ndarray | None = None
    kmeans_points: int = 0

    @property
    def dim(self) -> int:
        """Dimension k of the projected space."""
        return int(self.centroids.shape[1])

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
    evals, evecs = scipy.linalg.eigh(cov, lower=False, subset_by_index=[d - k, d - 1], driver="evr")
    order = np.argsort(-evals, kind="stable")
    comps = evecs[:, order]
    pivot = np.argmax(np.abs(comps), axis=0)
    signs = np.sign(comps[pivot, np.arange(comps.shape[1])])
    signs[signs == 0] = 1.0
    return mean, np.ascontiguousarray(comps * signs), np.maximum(evals[order], 0.0)


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


def fit_kmeans(z: np.ndarray, cfg: CTConfig) -> tuple[np.ndarray, int]:
    """Seeded k-means on projected training rows (n, k): returns centroids (cells, k) float32 and #points.

    Each of ``cfg.kmeans_nredo`` runs seeds centres with greedy k-means++ (``default_rng(seed + run)``) and runs
    ``faiss.Kmeans`` Lloyd iterations from them; the run with the lowest objective wins (ties: the first).
    FAISS' own random initialisation often merges two well-separated clusters and splits another; k-means++
    is what the authors' sklearn KMeans uses.
    """
    n, k = z.shape
    if n < cfg.cells:
        raise ValueError(f"{n} training samples cannot make {cfg.cells} cells; lower ct.cells or add training data")
    if cfg.kmeans_sample is not None and cfg.kmeans_sample < n:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=cfg.kmeans_sample, replace=False))
        z = z[rows]
    data = np.ascontiguousarray(z, dtype=np.float32)
    best: tuple[float, np.ndarray] | None = None
    for run in range(cfg.kmeans_nredo):
        init = kmeans_pp(data, cfg.cells, np.random.default_rng(cfg.seed + run))
        km = faiss.Kmeans(
            k, cfg.cells, niter=cfg.kmeans_niter, nredo=1, seed=cfg.seed + run, max_points_per_centroid=10**9,
            verbose=False,
        )  # fmt: skip
        with faiss_scope(blas=False):  # FAISS' own choice of kernels, as before; threads as in the searches
            obj = float(km.train(data, init_centroids=init))
        if best is None or obj < best[0]:
            best = (obj, np.ascontiguousarray(km.centroids, dtype=np.float32))
    return best[1], len(data)


def fit_layer_space(train: np.ndarray, cfg: CTConfig) -> LayerSpace:
    """Fit PCA (per ``cfg``) and k-means cells on one layer's training features (n, d)."""
    return fit_and_project(train, cfg)[0]


def fit_and_project(train: np.ndarray, cfg: CTConfig) -> tuple[LayerSpace, np.ndarray]:
    """Like :func:`fit_layer_space`, also returning the projected training rows (n, k) float64."""
    train = np.asarray(train)
    if train.ndim != 2 or len(train) == 0:
        raise ValueError(f"training features must be a non-empty (n, d) array, got shape {train.shape}")
    n, d = train.shape
    k = pca_components(n, d, cfg)
    if k is None:
        space = LayerSpace(mean=np.zeros(d), components=None, centroids=np.zeros((cfg.cells, d), np.float32))
        z = space.project(train)
    else:
        mean, comps, var = fit_pca(train, k)
        space = LayerSpace(
            mean=mean, components=comps, centroids=np.zeros((cfg.cells, k), np.float32), explained_variance=var
        )
        z = space.project(train)
    centroids, used = fit_kmeans(z, cfg)
    log.debug("layer space: n=%d d=%d -> k=%d, %d cells fit on %d points", n, d, z.shape[1], cfg.cells, used)
    space = LayerSpace(space.mean, space.components, centroids, space.explained_variance, used)
    return space, z
