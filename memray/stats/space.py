"""The per-layer embedding space of C_T: a fitted PCA (or identity) plus k-means centroids.

:class:`LayerSpace` projects raw features and assigns them to the exact nearest centroid (float64 squared L2, ties
-> the lower cell; a sample's cell never depends on how many samples are assigned together, unlike FAISS' float32
search, which switches to a BLAS formula above 20 queries and can flip near-ties). The fit itself (PCA moments,
:mod:`memray.stats.pca`, and k-means over the training set's row blocks, :mod:`memray.stats.kmeans`) is
:func:`memray.stats.fit.fit_space`; :data:`MIN_POINTS_PER_CELL` is the cell size below which the fit warns once.

Without PCA (``pca_dim=None``, or ``pca_only_if_larger`` and d <= ``pca_dim``) the raw vectors are used as they
are, not centred: k-means and Euclidean distances do not change under a shift, and cosine distances are then
those of the raw embeddings (what dgm-eval does when it skips PCA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memray.stats import device
from memray.stats.pca import EPS64, ROW_BLOCK

ASSIGN_BATCH = 8192  # rows per chunk of the exact centroid assignment (bounds memory, not results)
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
        backend = device.current()
        if backend is not None:  # torch float64 (memray.stats.device)
            return backend.project(x, self.mean, self.components)
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
        backend = device.current()
        if backend is not None:  # torch float64, near ties on the CPU by the formula below (memray.stats.device)
            return backend.assign(z, c[None])[:, 0]
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
