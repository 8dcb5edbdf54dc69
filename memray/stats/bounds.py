"""Lower bounds on the distance from a query to every training row of a search item (pruning the top-k search).

An item (:class:`memray.stats.search.SearchItem`) records a few numbers about its rows when it is loaded; for a query
they give a value no row of the item can beat, so the item need not answer a query whose current k-th distance is
already below it (:mod:`memray.stats.topk`). Only the amount of work depends on the bounds, never the answer: they
come from the item's own rows (not from how the fit assigned them) and carry a slack far above float64 rounding.

- ``l2``: the item's mean row ``m`` and radius ``R = max‖t − m‖`` (triangle inequality ``‖q − t‖ ≥ ‖q − m‖ − R``),
  and its support ``h_j = max t·w_j`` along the unit direction ``w_j`` from its cell's centroid to centroid ``j``:
  ``‖q − t‖ ≥ q·w_j − h_j`` (taken for the query's own cell ``j``).
- ``cosine`` / ``cosine_abs``: angles on the unit sphere. For a pivot ``p`` (the item's mean direction, and the
  direction of the query's cell centroid) the rows' angles to ``p`` lie in ``[a_min, a_max]``; the angle between
  q̂ and any row is at least ``max(0, φ − a_max, a_min − φ)`` with ``φ = ∠(q̂, p)``, so its cosine distance is at
  least ``1 − cos`` of that. For 1 − |cos| the two signs are bounded separately (``side`` −1: the rows near −q̂).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANGLE_SLACK = 1e-6  # radians taken off every angle bound (acos of a rounded cosine errs by < 1e-7)
REL_SLACK = 1e-9  # relative slack of the Euclidean bounds (float64 rounding is ~1e-15)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero)."""
    n = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.where(n > 0, n, 1.0)[:, None]


def _angles(x_unit: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """(n, p) angles in [0, π] between unit rows and unit pivots."""
    return np.arccos(np.clip(x_unit @ pivots.T, -1.0, 1.0))


@dataclass(frozen=True, eq=False)
class ItemBounds:
    """What an item's rows (n, k) float64 reveal for pruning; ``centroids`` (cells, k) are the fit's.

    ``l2``: ``center`` (k,), ``radius``, ``dirs`` (cells, k), ``support`` (cells,), ``scale`` (largest row norm).
    Cosine metrics: ``pivots`` (1 + cells, k) unit (row 0: the rows' mean direction, then the cells' centroids),
    ``amin``/``amax`` (1 + cells,) the nonzero rows' angle range to each, ``has_zero``: a zero row (distance 1).
    """

    metric: str
    center: np.ndarray | None = None
    radius: float = 0.0
    dirs: np.ndarray | None = None
    support: np.ndarray | None = None
    scale: float = 0.0
    pivots: np.ndarray | None = None
    amin: np.ndarray | None = None
    amax: np.ndarray | None = None
    has_zero: bool = False

    @classmethod
    def build(cls, train: np.ndarray, metric: str, centroids: np.ndarray, cell: int) -> ItemBounds:
        """Bounds of a non-empty item of cell ``cell``."""
        c = np.asarray(centroids, np.float64)
        if metric == "l2":
            m = train.mean(axis=0)
            off = train - m
            dirs = _unit(c - c[cell])
            support = (train @ dirs.T).max(axis=0)
            norms = np.sqrt(np.einsum("ij,ij->i", train, train))
            radius = float(np.sqrt(np.einsum("ij,ij->i", off, off).max()))
            return cls(metric, center=m, radius=radius, dirs=dirs, support=support, scale=float(norms.max()))
        unit = _unit(train)
        nonzero = np.einsum("ij,ij->i", unit, unit) > 0
        pivots = _unit(np.vstack([unit[nonzero].sum(axis=0, keepdims=True), c]))
        a = _angles(unit[nonzero], pivots)
        if not len(a):  # only zero rows (every distance is 1): ranges [0, π] bound nothing
            a = np.array([[0.0], [np.pi]]).repeat(len(pivots), axis=1)
        return cls(metric, pivots=pivots, amin=a.min(axis=0), amax=a.max(axis=0), has_zero=bool((~nonzero).any()))

    def sides(self) -> tuple[int, ...]:
        """The query signs searched: (+1,) or, for 1 − |cos|, (+1, −1)."""
        return (1, -1) if self.metric == "cosine_abs" else (1,)

    def lower(self, q: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """(m, sides) lower bounds on the (reported) distance from queries (m, k) of cells ``cells`` to every row."""
        if self.metric == "l2":
            assert self.center is not None and self.dirs is not None and self.support is not None
            off = q - self.center
            qn = np.sqrt(np.einsum("ij,ij->i", q, q))
            tri = np.sqrt(np.einsum("ij,ij->i", off, off)) - self.radius
            sup = np.einsum("ij,ij->i", q, self.dirs[cells]) - self.support[cells]
            slack = REL_SLACK * (qn + self.scale + 1.0)
            return np.maximum(np.maximum(tri, sup) - slack, 0.0)[:, None]
        assert self.pivots is not None and self.amin is not None and self.amax is not None
        unit = _unit(q)
        zero = np.einsum("ij,ij->i", unit, unit) == 0
        cos = np.stack([unit @ self.pivots[0], np.einsum("ij,ij->i", unit, self.pivots[1 + cells])], axis=1)
        phi = np.arccos(np.clip(cos, -1.0, 1.0))  # (m, 2): to the item's direction, to the query cell's centroid
        lo = np.stack([np.full(len(q), self.amin[0]), self.amin[1 + cells]], axis=1)
        hi = np.stack([np.full(len(q), self.amax[0]), self.amax[1 + cells]], axis=1)
        out = []
        for side in self.sides():
            f = phi if side == 1 else np.pi - phi
            gap = np.maximum(f - hi, lo - f).max(axis=1)
            d = 1.0 - np.cos(np.clip(gap - ANGLE_SLACK, 0.0, np.pi)) - 1e-12
            if side == 1 and self.has_zero:
                d = np.minimum(d, 1.0 - 1e-12)  # a zero row is at distance 1 (its cosine is 0)
            out.append(np.where(zero, 0.0, np.maximum(d, 0.0)))
        return np.stack(out, axis=1)
