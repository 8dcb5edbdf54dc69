"""Seeded k-means over the projected row blocks of a workspace: all restarts in one pass per Lloyd iteration.

The initial centroids and the hash samples of rows come from :mod:`memray.stats.seeding`. With
``cfg.kmeans_sample`` set, Lloyd runs on the hash sample of that size instead of all rows.

Lloyd: every iteration is one pass over the blocks (:func:`lloyd_partial`, one mapper item per block) that assigns
each row to the exact nearest centroid of every restart (:meth:`memray.stats.space.LayerSpace.assign`, float64, ties to
the lower cell) and returns per-cell float64 sums, counts and the objective's exact parts; partials merge in block
order (:func:`memray.stats.workspace.reduce_ordered`). Update: centroid = sum / count in float64, **an empty cell
keeps its previous centroid**. The objective (Σ squared distance to the nearest centroid, each row's Σ over
dimensions left to right) is summed exactly (:func:`exact_parts`): it equals ``math.fsum`` over all rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from memray.stats import Mapper, device
from memray.stats.pca import EPS64
from memray.stats.space import ASSIGN_BATCH
from memray.stats.workspace import reduce_ordered

if TYPE_CHECKING:
    from memray.stats.workspace import Workspace


def exact_parts(values: Iterable[float]) -> tuple[float, ...]:
    """Non-overlapping floats whose exact sum is the exact sum of ``values``: ``fsum`` of the remainder, repeated.

    ``math.fsum`` of the parts (or of the parts of several such lists) is the correctly rounded exact total.
    """
    vals = [float(v) for v in values]
    parts: list[float] = []
    while True:
        rest = math.fsum(vals + [-p for p in parts])
        if rest == 0.0:
            return tuple(parts)
        parts.append(rest)


class LloydPartial(NamedTuple):
    """One block's (or several merged blocks') Lloyd statistics for R restarts of ``cells`` centroids in k dims.

    ``sums`` (R, cells, k) float64 per-cell sums of the rows, ``counts`` (R, cells) int64, ``objective`` one tuple
    of exact parts (:func:`exact_parts`) per restart: Σ squared distance of the rows to their nearest centroid.
    """

    sums: np.ndarray
    counts: np.ndarray
    objective: tuple[tuple[float, ...], ...]


SQDIST_ROWS = 2048  # rows per chunk of row_sqdist (cache-sized; not results)


def row_sqdist(z: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Σ_j (z_ij − c_{labels_i, j})² per row of ``z`` (m, k), accumulated over j left to right (no BLAS, no
    pairwise sum: the same bits on any machine)."""
    out = np.zeros(len(z))
    for start in range(0, len(z), SQDIST_ROWS):
        sq = z[start : start + SQDIST_ROWS] - centroids[labels[start : start + SQDIST_ROWS]]
        np.square(sq, out=sq)
        acc = out[start : start + SQDIST_ROWS]
        acc[:] = sq[:, 0]
        for j in range(1, sq.shape[1]):
            acc += sq[:, j]
    return out


def cell_sums(z: np.ndarray, labels: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell sums (cells, k) of the rows of ``z`` (each cell's rows added one at a time in row order) and counts."""
    counts = np.bincount(labels, minlength=cells).astype(np.int64)
    sums = np.zeros((cells, z.shape[1]))
    for c in np.flatnonzero(counts).tolist():
        sums[c] = np.compress(labels == c, z, axis=0).sum(axis=0)  # compress: a faster gather than z[mask]
    return sums, counts


def _assign_chunk(z: np.ndarray, centroids: np.ndarray, flat: np.ndarray, csq: np.ndarray, start: int) -> np.ndarray:
    """:func:`assign_all` of rows ``[start, start + ASSIGN_BATCH)`` of ``z`` -> (rows, R); ``flat`` (R·cells, k) the
    centroids, ``csq`` (R, cells) their squared norms.

    The expansion ``‖z‖² − 2 z·c + ‖c‖²`` is laid out (cells, R, rows), so the nearest and second-nearest cell are
    running minima over ``cells`` whole arrays (strict ``<``: ties keep the lower cell, as ``argmin`` does). Where a
    squared norm overflows (‖·‖ ≳ 1.3e154) the expansion can hold NaN (∞ − ∞), which the running minima would
    skip: such a chunk takes ``argmin`` and ``partition`` over the cells, as :meth:`LayerSpace.assign` does."""
    r_count, cells, k = centroids.shape
    chunk = z[start : start + ASSIGN_BATCH]
    zsq = np.einsum("ij,ij->i", chunk, chunk)
    prod = np.ascontiguousarray((chunk @ flat.T).T).reshape(r_count, cells, len(chunk))
    if np.isfinite(zsq).all() and np.isfinite(csq).all():
        best, first, second = _two_nearest(zsq, prod, csq)
    else:
        approx = (zsq[None, None, :] - 2.0 * prod) + csq[:, :, None]  # (R, cells, rows)
        best = np.argmin(approx, axis=1)
        first, second = np.moveaxis(np.partition(approx, 1, axis=1)[:, :2, :], 1, 0)
    tol = 8.0 * (k + 4) * EPS64 * (zsq[None, :] + csq.max(axis=1)[:, None])
    restarts, rows = np.nonzero(second - first <= tol)
    if len(rows):
        diff = chunk[rows, None, :] - centroids[restarts]
        best[restarts, rows] = np.argmin(np.sum(diff * diff, axis=-1), axis=1)
    return best.T


def _two_nearest(zsq: np.ndarray, prod: np.ndarray, csq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest cell (R, rows) int64 and the nearest and second-nearest ``(‖z‖² − 2 z·c) + ‖c‖²`` of ``prod``
    (R, cells, rows) = z·c, as running minima over the cells, in place."""
    r_count, cells, rows = prod.shape
    first, second = np.full((r_count, rows), np.inf), np.full((r_count, rows), np.inf)
    best = np.zeros((r_count, rows), dtype=np.int64)
    approx, high, closer = np.empty_like(first), np.empty_like(first), np.empty(first.shape, dtype=bool)
    for c in range(cells):  # (‖z‖² + (−2 z·c)) + ‖c‖²: the same bits as (‖z‖² − 2 z·c) + ‖c‖²
        np.multiply(prod[:, c, :], -2.0, out=approx)
        approx += zsq[None, :]
        approx += csq[:, c, None]
        np.minimum(second, np.maximum(first, approx, out=high), out=second)
        np.less(approx, first, out=closer)
        np.copyto(first, approx, where=closer)
        np.copyto(best, c, where=closer)
    return best, first, second


def assign_all(z: np.ndarray, centroids: np.ndarray, inner: Mapper = map) -> np.ndarray:
    """Nearest centroid of each row of ``z`` (m, k) for every restart's centroids (R, cells, k) -> (m, R) int64.

    :meth:`memray.stats.space.LayerSpace.assign` for all restarts at once (one matrix product per row chunk): the BLAS
    expansion decides rows whose two nearest centroids are farther apart than its error bound, the rest get the
    direct Σ(z − c)² (ties -> lower cell), so each column equals ``LayerSpace(…, centroids[r]).assign(z)``.
    ``inner`` runs the row chunks (threads in one process, :func:`memray.stats.local_threads`; the same result).
    """
    r_count, cells, k = centroids.shape
    if cells == 1 or len(z) == 0:
        return np.zeros((len(z), r_count), dtype=np.int64)
    flat = np.ascontiguousarray(centroids.reshape(r_count * cells, k), dtype=np.float64)
    csq = np.einsum("ij,ij->i", flat, flat).reshape(r_count, cells)
    step = partial(_assign_chunk, z, centroids, flat, csq)
    return np.concatenate(list(inner(step, range(0, len(z), ASSIGN_BATCH)))).reshape(len(z), r_count)


def _restart_stats(
    z: np.ndarray, centroids: np.ndarray, every: np.ndarray, sums: bool, objective: bool, r: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Restart r's sums (cells, k) (zero when not ``sums``), counts (cells,) and objective parts (or ``()``)."""
    cells = centroids.shape[1]
    labels = np.ascontiguousarray(every[:, r])
    if sums:
        out, counts = cell_sums(z, labels, cells)
    else:
        out, counts = np.zeros((cells, z.shape[1])), np.bincount(labels, minlength=cells).astype(np.int64)
    parts = exact_parts(row_sqdist(z, centroids[r], labels).tolist()) if objective else ()
    return out, counts, parts


def lloyd_stats(
    z: np.ndarray, centroids: np.ndarray, sums: bool = True, objective: bool = True, inner: Mapper = map
) -> LloydPartial:
    """:class:`LloydPartial` of rows ``z`` (m, k) for centroids (R, cells, k) float64; ``sums=False`` leaves the
    sums zero, ``objective=False`` leaves ``objective`` empty (a Lloyd update needs only the sums and counts; only
    the final centroids' objective is compared). ``inner`` runs the row chunks of the assignment and then the
    restarts (threads in one process; each piece's arithmetic is fixed, so the same bits)."""
    centroids = np.asarray(centroids, dtype=np.float64)
    backend = device.current()
    if backend is not None:  # torch float64 (memray.stats.device)
        out_sums, counts, sq = backend.lloyd(z, centroids, sums, objective)
        parts = () if sq is None else tuple(exact_parts(sq[:, r].tolist()) for r in range(sq.shape[1]))
        return LloydPartial(out_sums, counts, parts)
    every = assign_all(z, centroids, inner)
    per = list(inner(partial(_restart_stats, z, centroids, every, sums, objective), range(len(centroids))))
    parts = tuple(p[2] for p in per) if objective else ()
    return LloydPartial(np.stack([p[0] for p in per]), np.stack([p[1] for p in per]), parts)


def lloyd_partial(
    ws: Workspace, g: int, centroids: np.ndarray, keep: np.ndarray | None = None, sums: bool = True,
    objective: bool = True, inner: Mapper = map,
) -> LloydPartial:  # fmt: skip
    """Lloyd statistics (:func:`lloyd_stats`) of block ``g`` (``proj/block_{g:06d}`` of ``ws``) for centroids
    (R, cells, k); ``keep``: only these local rows of the block (the Lloyd sample), else all."""
    z = ws.get(f"proj/block_{g:06d}")["z"]
    if keep is not None:
        z = z[np.asarray(keep, dtype=np.int64)]
    return lloyd_stats(np.asarray(z, dtype=np.float64), centroids, sums, objective, inner)


def merge_lloyd(a: LloydPartial, b: LloydPartial) -> LloydPartial:
    """Sum of two partials (objective parts merged exactly)."""
    obj = tuple(exact_parts(pa + pb) for pa, pb in zip(a.objective, b.objective, strict=True))
    return LloydPartial(a.sums + b.sums, a.counts + b.counts, obj)


def _lloyd_item(
    ws: Workspace, centroids: np.ndarray, inner: Mapper, item: tuple[int, np.ndarray | None]
) -> LloydPartial:
    return lloyd_partial(ws, item[0], centroids, item[1], objective=False, inner=inner)


def _objective_item(
    ws: Workspace, centroids: np.ndarray, inner: Mapper, item: tuple[int, np.ndarray | None]
) -> LloydPartial:
    return lloyd_partial(ws, item[0], centroids, item[1], sums=False, inner=inner)


def lloyd_update(centroids: np.ndarray, total: LloydPartial) -> np.ndarray:
    """New centroids (R, cells, k) float64: sum / count per cell; an empty cell keeps its previous centroid."""
    counts = total.counts[..., None]
    return np.where(counts > 0, total.sums / np.maximum(counts, 1), centroids)


def lloyd(
    ws: Workspace, items: list[tuple[int, np.ndarray | None]], init: np.ndarray, niter: int, mapper: Mapper = map,
    inner: Mapper = map,
) -> tuple[np.ndarray, list[float]]:  # fmt: skip
    """``niter`` Lloyd iterations of every restart from ``init`` (R, cells, k), one pass over ``items`` (block,
    kept local rows or ``None``) each, stopping early only when no restart's centroids changed; then one pass for
    the exact objective of the final centroids.

    A restart whose update left its centroids unchanged is a fixed point (the next pass would assign the same rows
    and give the same sums), so later passes carry only the restarts still moving: the same centroids as updating
    every restart every pass, for less work when restarts converge at different iterations. ``inner`` runs the
    pieces of each item (:func:`lloyd_stats`): builtin ``map`` in a task, threads in one process.

    Returns:
        final centroids (R, cells, k) float64 and each restart's exact objective for them.
    """
    if len(items) == 1 and mapper is not map:  # one block: every pass in one task (the same arithmetic)
        return next(iter(mapper(partial(_lloyd_one, ws, init, niter, inner), items)))
    centroids = np.array(init, dtype=np.float64)
    moving = np.arange(len(centroids))
    for _ in range(niter):
        current = centroids[moving]
        total = reduce_ordered(mapper(partial(_lloyd_item, ws, current, inner), items), merge_lloyd)
        new = lloyd_update(current, total)
        changed = np.array([not np.array_equal(a, b) for a, b in zip(new, current, strict=True)], dtype=bool)
        centroids[moving] = new
        moving = moving[changed]
        if not len(moving):
            break
    total = reduce_ordered(mapper(partial(_objective_item, ws, centroids, inner), items), merge_lloyd)
    return centroids, [math.fsum(p) for p in total.objective]


def _lloyd_one(ws: Workspace, init: np.ndarray, niter: int, inner: Mapper, item: tuple[int, np.ndarray | None]):
    return lloyd(ws, [item], init, niter, inner=inner)


def best_restart(objectives: list[float]) -> int:
    """Index of the lowest objective, ties to the lowest restart."""
    return min(range(len(objectives)), key=lambda r: (objectives[r], r))


def canonical_order(centroids: np.ndarray) -> np.ndarray:
    """Centroids (cells, k) sorted lexicographically (first coordinate first): cell numbers then depend only on
    the set of centroids, so restarts that find the same partition return the same array."""
    c = np.asarray(centroids)
    return np.ascontiguousarray(c[np.lexsort(c.T[::-1])])
