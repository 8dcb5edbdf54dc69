"""Fit one layer's space (PCA + k-means cells) over the training set's global row blocks: memray's only fit.

:func:`fit_space` runs, each step as one ``mapper`` item per block ``[g·B, min((g+1)·B, n))``:

1. moments (:func:`memray.stats.pca.block_moments`), merged in block order -> exact PCA (or the identity,
   :func:`memray.stats.pca.pca_components`);
2. projection: block g's projected rows to ``proj/block_{g:06d}`` of the workspace, returning only the block's
   share of the hash samples (:mod:`memray.stats.seeding`) and whether all its rows equal row 0;
3. k-means: k-means++ per restart on the gathered seeding sample, then Lloyd passes over the blocks;
4. assignment: each block's rows of cell c (float64 ``z`` and int64 global ``rows``, in global order) to
   ``cells/cell_{c:04d}/block_{g:06d}`` (only when the block has rows in c), returning the per-cell counts.

Items are module-level functions bound with :func:`functools.partial` to picklable handles (the rows, the
workspace) and small arrays (mean, components, centroids), so a Ray mapper ships nothing large. The caller holds
O(d² log(n/B) + sample + n_blocks·cells); the result depends on the data, ``block_rows`` and the config only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from memray.stats import Mapper, inner_threads
from memray.stats.config import CTConfig
from memray.stats.kmeans import best_restart, canonical_order, lloyd
from memray.stats.pca import block_moments, merge_moments, numerical_rank, pca_components, pca_from_moments
from memray.stats.seeding import hash_ids, hash_threshold, seed_restarts
from memray.stats.space import MIN_POINTS_PER_CELL, LayerSpace
from memray.stats.workspace import Workspace, block_count, block_range, reduce_ordered

if TYPE_CHECKING:
    from memray.io.rows import Rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted layer space and where its training rows fell.

    Attributes:
        space: PCA (or identity) + centroids, with ``rank`` and ``kmeans_points``.
        block_cells: (n_blocks, cells) int64 training rows of each block in each cell (the ``cells/…`` keys that
            exist are exactly those with a count > 0).
        train_counts: (cells,) int64 training rows per cell.
    """

    space: LayerSpace
    block_cells: np.ndarray
    train_counts: np.ndarray


class BlockInfo(NamedTuple):
    """What the projection step of one block returns: whether every row equals global row 0, the block's rows of
    the seeding sample (global ids (s,) int64, projected (s, k) float64) and its local rows of the Lloyd sample
    (``None``: every row)."""

    constant: bool
    seed_rows: np.ndarray
    seed_z: np.ndarray
    keep: np.ndarray | None


def proj_key(g: int) -> str:
    """Workspace key of block ``g``'s projected rows."""
    return f"proj/block_{g:06d}"


def cell_key(c: int, g: int) -> str:
    """Workspace key of block ``g``'s rows in cell ``c``."""
    return f"cells/cell_{c:04d}/block_{g:06d}"


def _moments_item(rows: Rows, block_rows: int, g: int):
    return block_moments(rows, *block_range(g, block_rows, rows.n))


def project_block(
    rows: Rows, ws: Workspace, space: LayerSpace, block_rows: int, first: np.ndarray, seed: int,
    seed_t: int | None, lloyd_t: int | None, g: int,
) -> BlockInfo:  # fmt: skip
    """Project block ``g`` (``space.project``), write ``proj/block_g``, return its :class:`BlockInfo`.

    ``first``: global row 0 (the constant-rows check); ``seed_t`` / ``lloyd_t``: hash thresholds of the seeding
    and Lloyd samples (:func:`memray.stats.seeding.hash_threshold`, ``None`` = every row).
    """
    start, stop = block_range(g, block_rows, rows.n)
    x = rows.read(start, stop)
    constant = bool(np.array_equal(x, np.broadcast_to(first, x.shape)))
    z = space.project(x)
    del x
    ws.put(proj_key(g), z=z)
    local = np.arange(stop - start, dtype=np.int64)
    h = None if seed_t is None and lloyd_t is None else hash_ids(seed, rows.ids(local + start))
    seed_local = local if seed_t is None else local[h < np.uint64(seed_t)]
    keep = None if lloyd_t is None else local[h < np.uint64(lloyd_t)]
    return BlockInfo(constant, seed_local + start, np.ascontiguousarray(z[seed_local]), keep)


def assign_block(ws: Workspace, centroids: np.ndarray, block_rows: int, n: int, g: int) -> np.ndarray:
    """Assign block ``g``'s projected rows to the nearest of ``centroids`` (cells, k) float32, write each non-empty
    cell's rows to ``cells/cell_c/block_g``, return the (cells,) int64 counts."""
    start, _ = block_range(g, block_rows, n)
    z = ws.get(proj_key(g))["z"]
    space = LayerSpace(np.zeros(centroids.shape[1]), None, centroids)
    labels = space.assign(z)
    counts = np.bincount(labels, minlength=len(centroids)).astype(np.int64)
    for c in np.flatnonzero(counts).tolist():
        local = np.flatnonzero(labels == c)
        ws.put(cell_key(c, g), z=np.ascontiguousarray(z[local]), rows=local.astype(np.int64) + start)
    return counts


def fit_space(train: Rows, cfg: CTConfig, ws: Workspace, mapper: Mapper = map, label: str = "") -> FitResult:
    """Fit PCA (per ``cfg``) and k-means cells on the training rows, writing ``proj/…`` and ``cells/…`` to ``ws``.

    ``mapper(fn, items)`` runs the per-block items (builtin ``map`` here, Ray tasks in a job; results in item
    order); ``label`` names the layer in warnings (degenerate features, few points per cell).

    Raises:
        ValueError: no training rows, or fewer than ``cfg.cells``.
    """
    label = label or "training features"
    n, d = int(train.n), int(train.dim)
    if n == 0:
        raise ValueError("training features must be non-empty (n, d) rows, got n = 0")
    if n < cfg.cells:
        raise ValueError(f"{n} training samples cannot make {cfg.cells} cells; lower ct.cells or add training data")
    B = cfg.block_rows
    blocks = range(block_count(n, B))
    k = pca_components(n, d, cfg)
    if k is None:
        mean, comps, var, rank = np.zeros(d), None, None, None
    else:
        moments = reduce_ordered(mapper(partial(_moments_item, train, B), blocks), merge_moments)
        mean, comps, var = pca_from_moments(moments, k)
        rank = numerical_rank(var, d)
    proj = LayerSpace(mean, comps, np.zeros((cfg.cells, k or d), np.float32), var)
    seed_size = cfg.kmeans_seed_sample if cfg.kmeans_sample is None else min(cfg.kmeans_seed_sample, cfg.kmeans_sample)
    seed_t, lloyd_t = hash_threshold(seed_size, n), hash_threshold(cfg.kmeans_sample, n)
    first = train.read(0, 1)[0]
    step = partial(project_block, train, ws, proj, B, first, cfg.seed, seed_t, lloyd_t)
    infos = list(mapper(step, blocks))
    if all(info.constant for info in infos) and (rank is None or rank <= 1):
        rank = 0
    _warn_rank(label, rank, proj.dim)

    items = [(g, info.keep) for g, info in zip(blocks, infos, strict=True)]
    used = n if lloyd_t is None else sum(len(info.keep) for info in infos)
    if used < MIN_POINTS_PER_CELL * cfg.cells:
        log.warning(
            "%s: k-means fits %d cells on %d training points, fewer than %d per cell (%d); the cells may be unstable",
            label, cfg.cells, used, MIN_POINTS_PER_CELL, MIN_POINTS_PER_CELL * cfg.cells,
        )  # fmt: skip
    sample = np.concatenate([info.seed_z for info in infos])
    del infos
    inner = inner_threads(mapper)  # not beside a Ray job's other layers: BLAS limits are process-wide
    init = seed_restarts(sample, cfg.cells, cfg.seed, cfg.kmeans_nredo, inner)
    final, objectives = lloyd(ws, items, init, cfg.kmeans_niter, mapper, inner)
    best = best_restart(objectives)
    log.debug("%s: k-means restart %d of %d kept, objective %.6g", label, best, len(objectives), objectives[best])
    centroids = canonical_order(final[best].astype(np.float32))

    block_cells = np.stack(list(mapper(partial(assign_block, ws, centroids, B, n), blocks))).astype(np.int64)
    space = LayerSpace(mean, comps, centroids, var, used, rank)
    log.debug("%s: n=%d d=%d -> k=%d, %d cells fit on %d points (%d seeding), %d blocks of %d",
              label, n, d, space.dim, cfg.cells, used, len(sample), len(blocks), B)  # fmt: skip
    return FitResult(space, block_cells, block_cells.sum(axis=0))


def _warn_rank(label: str, rank: int | None, dim: int) -> None:
    """Warn about a layer with no variance (rank 0) or rank below the ``dim`` components, naming it ``label``."""
    if rank == 0:
        log.warning("%s: the training features have no variance (rank 0: every row is the same vector); "
                    "distances carry no information and C_T is NaN", label)  # fmt: skip
    elif rank is not None and rank < dim:
        log.warning("%s: the training features have numerical rank %d, below the %d PCA components; components "
                    "beyond %d carry no training variance", label, rank, dim, rank)  # fmt: skip
