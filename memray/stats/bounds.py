"""Lower bounds on the distance from a query to every training row of a group (pruning the top-k search).

A search item (:class:`memray.stats.search.SearchItem`) splits its rows into groups of nearby rows
(:func:`split_rows`) and records a few numbers about each group when it is loaded; for a query they give a value no
row of the group can beat, so the group need not answer a query whose current k-th distance is already below it
(:mod:`memray.stats.topk`). Only the amount of work depends on the groups and the bounds, never the answer: they come
from the groups' own rows (not from how the fit assigned them) and carry a slack far above float64 rounding.

- ``l2``: each group's mean row ``m`` and radius ``R = max‖t − m‖`` (triangle inequality ``‖q − t‖ ≥ ‖q − m‖ − R``),
  and its support ``h_j = max t·w_j`` along the unit direction ``w_j`` from the item's cell centroid to centroid
  ``j``: ``‖q − t‖ ≥ q·w_j − h_j`` (taken for the query's own cell ``j``).
- ``cosine`` / ``cosine_abs``: angles on the unit sphere. For a pivot ``p`` (the group's mean direction, and the
  direction of the query's cell centroid) the rows' angles to ``p`` lie in ``[a_min, a_max]``; the angle between
  q̂ and any row is at least ``max(0, φ − a_max, a_min − φ)`` with ``φ = ∠(q̂, p)``, so its cosine distance is at
  least ``1 − cos`` of that. For 1 − |cos| the two signs are bounded separately (``side`` −1: the rows near −q̂).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANGLE_SLACK = 1e-6  # radians taken off every angle bound (acos of a rounded cosine errs by < 1e-7)
REL_SLACK = 1e-9  # relative slack of the Euclidean bounds (float64 rounding is ~1e-15)
EPS64 = float(np.finfo(np.float64).eps)
GROUP_ROWS = 512  # target rows per group of an item (work, never results)
MAX_GROUPS = 64
SPLIT_PASSES = 6  # Lloyd passes of the split (a better split prunes more; any split gives the same lists)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero)."""
    n = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.where(n > 0, n, 1.0)[:, None]


def _angles(x_unit: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """(n, p) angles in [0, π] between unit rows and unit pivots."""
    return np.arccos(np.clip(x_unit @ pivots.T, -1.0, 1.0))


def split_rows(z: np.ndarray, metric: str, target: int | None = None) -> np.ndarray:
    """Group labels (n,) int64 in ``[0, G)``, G ≈ n / ``target`` (at most :data:`MAX_GROUPS`): a few deterministic
    Lloyd passes (directions for the cosine metrics) from evenly spaced rows; an empty group is dropped. ``target``:
    rows per group, default :data:`GROUP_ROWS`."""
    n, target = len(z), GROUP_ROWS if target is None else target
    g = int(min(MAX_GROUPS, max(1, round(n / max(1, target)))))
    if g == 1:
        return np.zeros(n, dtype=np.int64)
    x = np.asarray(z, np.float64) if metric == "l2" else unit_rows(np.asarray(z, np.float64))
    c = x[np.linspace(0, n - 1, g).astype(np.int64)]
    for _ in range(SPLIT_PASSES):
        if metric == "l2":
            lab = np.argmin(np.einsum("ij,ij->i", c, c)[None, :] - 2.0 * (x @ c.T), axis=1)
        else:
            lab = np.argmax(x @ c.T, axis=1)
        counts = np.bincount(lab, minlength=g)
        sums = (lab[None, :] == np.arange(g)[:, None]).astype(np.float64) @ x  # (g, k)
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
    return np.unique(lab, return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True, eq=False)
class ItemBounds:
    """What the G groups of an item's rows (n, k) float64 reveal for pruning; ``centroids`` (cells, k) are the fit's.

    ``l2``: ``center`` (G, k), ``radius`` (G,), ``dirs`` (cells, k), ``support`` (G, cells), ``scale`` (largest row
    norm). Cosine metrics: ``pivots`` (G, k) the groups' unit mean directions and ``cpivots`` (cells, k) the cells'
    unit centroids, ``amin``/``amax`` (G, 1 + cells) the nonzero rows' angle range to their group's pivot, then to
    each centroid; ``has_zero`` (G,): a zero row (distance 1).
    """

    metric: str
    groups: int = 1
    center: np.ndarray | None = None
    radius: np.ndarray | None = None
    dirs: np.ndarray | None = None
    support: np.ndarray | None = None
    scale: float = 0.0
    pivots: np.ndarray | None = None
    cpivots: np.ndarray | None = None
    amin: np.ndarray | None = None
    amax: np.ndarray | None = None
    has_zero: np.ndarray | None = None

    @classmethod
    def build(
        cls, train: np.ndarray, metric: str, centroids: np.ndarray, cell: int, labels: np.ndarray | None = None
    ) -> ItemBounds:
        """Bounds of a non-empty item of cell ``cell`` whose rows form groups ``labels`` (n,) (``None``: one)."""
        c = np.asarray(centroids, np.float64)
        lab = np.zeros(len(train), np.int64) if labels is None else np.asarray(labels, np.int64)
        members = [np.flatnonzero(lab == g) for g in range(int(lab.max()) + 1)]
        if metric == "l2":
            dirs = unit_rows(c - c[cell])
            center = np.stack([train[i].mean(axis=0) for i in members])
            off = train - center[lab]
            r = np.sqrt(np.einsum("ij,ij->i", off, off))
            proj = train @ dirs.T
            return cls(
                metric, len(members), center=center, radius=np.array([r[i].max() for i in members]), dirs=dirs,
                support=np.stack([proj[i].max(axis=0) for i in members]),
                scale=float(np.sqrt(np.einsum("ij,ij->i", train, train).max())),
            )  # fmt: skip
        unit = unit_rows(train)
        nonzero = np.einsum("ij,ij->i", unit, unit) > 0
        pivots = unit_rows(np.stack([unit[i].sum(axis=0) for i in members]))
        cpivots = unit_rows(c)
        own = np.arccos(np.clip(np.einsum("ij,ij->i", unit, pivots[lab]), -1.0, 1.0))
        a = np.hstack([own[:, None], _angles(unit, cpivots)])
        amin, amax = np.zeros((len(members), 1 + len(c))), np.full((len(members), 1 + len(c)), np.pi)
        for g, i in enumerate(members):
            i = i[nonzero[i]]
            if len(i):  # a group of zero rows only (every distance is 1): ranges [0, π] bound nothing
                amin[g], amax[g] = a[i].min(axis=0), a[i].max(axis=0)
        has_zero = np.array([bool((~nonzero[i]).any()) for i in members])
        return cls(metric, len(members), pivots=pivots, cpivots=cpivots, amin=amin, amax=amax, has_zero=has_zero)

    def sides(self) -> tuple[int, ...]:
        """The query signs searched: (+1,) or, for 1 − |cos|, (+1, −1)."""
        return (1, -1) if self.metric == "cosine_abs" else (1,)

    def lower(self, q: np.ndarray, cells: np.ndarray, unit: np.ndarray | None = None) -> np.ndarray:
        """(m, G, sides) lower bounds on the (reported) distance from queries (m, k) of cells ``cells`` to the rows
        of each group (``unit``: ``unit_rows(q)`` when the caller has it)."""
        if self.metric == "l2":
            return self._lower_l2(q, cells)[:, :, None]
        assert self.pivots is not None and self.cpivots is not None and self.amin is not None
        assert self.amax is not None and self.has_zero is not None
        unit = unit_rows(q) if unit is None else unit
        zero = ~np.any(unit, axis=1)
        phi_g = np.arccos(np.clip(unit @ self.pivots.T, -1.0, 1.0))  # (m, G)
        to_cell = np.take_along_axis(unit @ self.cpivots.T, cells[:, None], axis=1)  # (m, 1): one product, no gather
        phi_c = np.arccos(np.clip(to_cell, -1.0, 1.0))
        lo_c, hi_c = self.amin[:, 1 + cells].T, self.amax[:, 1 + cells].T  # (m, G)
        out = []
        for side in self.sides():
            fg, fc = (phi_g, phi_c) if side == 1 else (np.pi - phi_g, np.pi - phi_c)
            gap = np.maximum(
                np.maximum(fg - self.amax[:, 0], self.amin[:, 0] - fg), np.maximum(fc - hi_c, lo_c - fc)
            )  # fmt: skip
            d = 1.0 - np.cos(np.clip(gap - ANGLE_SLACK, 0.0, np.pi)) - 1e-12
            if side == 1:
                d = np.where(self.has_zero[None, :], np.minimum(d, 1.0 - 1e-12), d)  # a zero row is at distance 1
            out.append(np.where(zero[:, None], 0.0, np.maximum(d, 0.0)))
        return np.stack(out, axis=2)

    def _lower_l2(self, q: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """(m, G) Euclidean bounds: the larger of the triangle and the support bound, less a rounding slack."""
        assert self.center is not None and self.dirs is not None and self.support is not None
        assert self.radius is not None
        qq = np.einsum("ij,ij->i", q, q)[:, None]
        cc = np.einsum("ij,ij->i", self.center, self.center)[None, :]
        d2 = qq + cc - 2.0 * (q @ self.center.T)  # expanded: its rounding is below 4(k + 2)·eps·(|q|² + |c|²)
        d2 = d2 - 4.0 * (q.shape[1] + 2) * EPS64 * (qq + cc)
        tri = np.sqrt(np.maximum(d2, 0.0)) - self.radius[None, :]
        sup = np.einsum("ij,ij->i", q, self.dirs[cells])[:, None] - self.support[:, cells].T
        slack = REL_SLACK * (np.sqrt(qq) + self.scale + 1.0)
        return np.maximum(np.maximum(tri, sup) - slack, 0.0)
