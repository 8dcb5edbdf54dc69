"""Per-layer embedding space for C_T: exact PCA and k-means cells, both fit on the training set T only.

PCA is exact and deterministic: the float64 covariance of T (accumulated over row blocks, so no float64 copy of T
is made) and its top eigenvectors (LAPACK ``dsyevr``); components are sorted by decreasing variance and each
one's sign is fixed so that its largest-|loading| entry is positive. The
authors' code uses sklearn's randomized solver unseeded; distances in the PCA space do not depend on the signs.

The numerical rank of the training covariance is recorded (``LayerSpace.rank``) and a layer whose rank is below
the number of components is logged as degenerate: such a layer is still scored (its PCA space holds all of the
training set's variance, as the reference's sklearn PCA does), except a layer with no variance at all (every
training row the same vector), whose C_T is NaN (see :class:`memray.stats.score.FittedLayer`).

Cells are k-means centroids fit on all training points unless ``cfg.kmeans_sample`` is set (then a seeded
sample): ``cfg.kmeans_nredo`` restarts (sklearn's ``n_init``), each greedy k-means++ seeding from
``default_rng([seed, restart])`` (independent streams: seeds 0 and 1 share no restart) then ``faiss.Kmeans``
Lloyd iterations; the lowest exact objective wins, ties to the lowest restart, and cells are numbered in the
lexicographic order of their centroids. The restarts run through the caller's ``mapper`` (Ray tasks in a job)
and give the same centroids whatever runs them. Too few points per cell is one memray warning naming the layer,
not FAISS' own message.
Samples are assigned to the nearest centroid with exact float64 squared-L2 distances (ties -> the lower cell),
so a sample's cell never depends on how many samples are assigned together (FAISS' float32 search switches to
a BLAS formula above 20 queries, which can flip near-ties).

Without PCA (``pca_dim=None``, or ``pca_only_if_larger`` and d <= ``pca_dim``) the raw vectors are used as they
are, not centred: k-means and Euclidean distances do not change under a shift, and cosine distances are then
those of the raw embeddings (what dgm-eval does when it skips PCA).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from memray.config import CTConfig
from memray.stats.faiss_backend import faiss, faiss_scope  # faiss imported with the CPU's BLAS kernels

log = logging.getLogger(__name__)

ASSIGN_BATCH = 8192  # rows per chunk of the exact centroid assignment (bounds memory, not results)
ROW_BLOCK = 1024  # rows per float64 block of the covariance and the projection (memory and cache, not results)
EPS64 = float(np.finfo(np.float64).eps)
MIN_POINTS_PER_CELL = 39  # FAISS' min_points_per_centroid: fewer training points per cell are warned about
FAISS_SEED_MAX = 2**31 - 1  # FAISS seeds are C ints

Mapper = Callable[[Callable, Iterable], Iterable]


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
    evals, evecs = scipy.linalg.eigh(cov, lower=False, subset_by_index=[d - k, d - 1], driver="evr")
    order = np.argsort(-evals, kind="stable")
    comps = evecs[:, order]
    pivot = np.argmax(np.abs(comps), axis=0)
    signs = np.sign(comps[pivot, np.arange(comps.shape[1])])
    signs[signs == 0] = 1.0
    return mean, np.ascontiguousarray(comps * signs), np.maximum(evals[order], 0.0)


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


def kmeans_objective(x: np.ndarray, centroids: np.ndarray) -> float:
    """Σ over rows of ``x`` (n, k) of the squared L2 distance to the nearest centroid, in float64.

    Rows go to their exact nearest centroid (:meth:`LayerSpace.assign`, centroids in :func:`canonical_order`);
    each row's Σ_d is accumulated left to right and the total is ``math.fsum``, so the value depends only on the
    data and the set of centroids: not on their order, the batch, BLAS threads or the process.
    """
    c = canonical_order(np.asarray(centroids, dtype=np.float32)).astype(np.float64)
    space = LayerSpace(np.zeros(c.shape[1]), None, c.astype(np.float32))
    best = np.empty(len(x))
    for start in range(0, len(x), ASSIGN_BATCH):
        chunk = np.asarray(x[start : start + ASSIGN_BATCH], dtype=np.float64)
        diff = np.ascontiguousarray((chunk - c[space.assign(chunk)]).T)  # (k, rows)
        acc = diff[0] * diff[0]
        for row in diff[1:]:
            acc += row * row
        best[start : start + len(chunk)] = acc
    return math.fsum(best.tolist())


def kmeans_restart(data: np.ndarray, cfg: CTConfig, restart: int) -> tuple[float, np.ndarray]:
    """One k-means restart on float32 rows (n, k): k-means++ from ``default_rng([seed, restart])``, then FAISS
    Lloyd iterations (FAISS seed drawn from the same stream) -> (objective of the final centroids, centroids
    (cells, k) float32 in :func:`canonical_order`)."""
    rng = np.random.default_rng([cfg.seed, restart])
    faiss_seed = int(rng.integers(FAISS_SEED_MAX))
    init = kmeans_pp(data, cfg.cells, rng)
    # min_points_per_centroid=1: FAISS prints nothing; fit_kmeans warns about small cells, naming the layer
    km = faiss.Kmeans(
        data.shape[1], cfg.cells, niter=cfg.kmeans_niter, nredo=1, seed=faiss_seed,
        max_points_per_centroid=10**9, min_points_per_centroid=1, verbose=False,
    )  # fmt: skip
    with faiss_scope(blas=False):  # FAISS' own choice of kernels; threads as in the searches
        km.train(data, init_centroids=init)
    centroids = canonical_order(np.asarray(km.centroids, dtype=np.float32))
    return kmeans_objective(data, centroids), centroids


def fit_kmeans(
    z: np.ndarray, cfg: CTConfig, mapper: Mapper = map, label: str = "training features"
) -> tuple[np.ndarray, int]:
    """Seeded k-means on projected training rows (n, k): returns centroids (cells, k) float32 and #points.

    ``cfg.kmeans_nredo`` restarts (:func:`kmeans_restart`, one ``mapper`` item each: builtin ``map`` runs them
    here, a Ray mapper as parallel tasks); the lowest objective wins, ties to the lowest restart index, so the
    result does not depend on the mapper. FAISS' own random initialisation often merges two well-separated
    clusters and splits another; k-means++ is what the authors' sklearn KMeans uses.
    """
    n = len(z)
    if n < cfg.cells:
        raise ValueError(f"{n} training samples cannot make {cfg.cells} cells; lower ct.cells or add training data")
    if cfg.kmeans_sample is not None and cfg.kmeans_sample < n:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=cfg.kmeans_sample, replace=False))
        z = z[rows]
    if len(z) < MIN_POINTS_PER_CELL * cfg.cells:
        log.warning(
            "%s: k-means fits %d cells on %d training points, fewer than %d per cell (%d); the cells may be unstable",
            label, cfg.cells, len(z), MIN_POINTS_PER_CELL, MIN_POINTS_PER_CELL * cfg.cells,
        )  # fmt: skip
    data = np.ascontiguousarray(z, dtype=np.float32)
    runs = list(mapper(partial(kmeans_restart, data, cfg), range(cfg.kmeans_nredo)))
    best = min(range(len(runs)), key=lambda i: (runs[i][0], i))
    log.debug("%s: k-means restart %d of %d kept, objective %.6g", label, best, len(runs), runs[best][0])
    return runs[best][1], len(data)


def fit_layer_space(
    train: np.ndarray, cfg: CTConfig, mapper: Mapper = map, label: str = "training features"
) -> LayerSpace:
    """Fit PCA (per ``cfg``) and k-means cells on one layer's training features (n, d)."""
    return fit_and_project(train, cfg, mapper, label)[0]


def fit_and_project(
    train: np.ndarray, cfg: CTConfig, mapper: Mapper = map, label: str = "training features"
) -> tuple[LayerSpace, np.ndarray]:
    """Like :func:`fit_layer_space`, also returning the projected training rows (n, k) float64.

    ``mapper`` runs the k-means restarts; ``label`` names the layer in warnings (degenerate features, few points).
    """
    train = np.asarray(train)
    if train.ndim != 2 or len(train) == 0:
        raise ValueError(f"training features must be a non-empty (n, d) array, got shape {train.shape}")
    n, d = train.shape
    k = pca_components(n, d, cfg)
    if k is None:
        mean, comps, var = np.zeros(d), None, None
        rank = 0 if all_rows_equal(train) else None
    else:
        mean, comps, var = fit_pca(train, k)
        rank = numerical_rank(var, d)
        if rank <= 1 and all_rows_equal(train):
            rank = 0
    space = LayerSpace(mean, comps, np.zeros((cfg.cells, k or d), np.float32), var, 0, rank)
    if rank == 0:
        log.warning("%s: the training features have no variance (rank 0: every row is the same vector); "
                    "distances carry no information and C_T is NaN", label)  # fmt: skip
    elif space.degenerate:
        log.warning("%s: the training features have numerical rank %d, below the %d PCA components; components "
                    "beyond %d carry no training variance", label, rank, space.dim, rank)  # fmt: skip
    z = space.project(train)
    centroids, used = fit_kmeans(z, cfg, mapper, label)
    log.debug("%s: n=%d d=%d -> k=%d, %d cells fit on %d points", label, n, d, z.shape[1], cfg.cells, used)
    return LayerSpace(mean, comps, centroids, var, used, rank), z
