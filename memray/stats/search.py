"""Exact in-cell nearest-neighbour search over the cell-partitioned training blocks of a workspace.

The fit writes each block's rows of each cell to ``cells/cell_{c:04d}/block_{g:06d}`` (arrays ``z`` (m, k) float64
projected rows and ``rows`` (m,) int64 global ids, in global order). A search item is one cell and a run of consecutive
blocks holding at most ``cfg.search_rows`` training rows; a worker loads only those rows, builds a flat FAISS shard
(:class:`memray.stats.index.TrainShard`) and searches the cell's queries exactly (float32 FAISS, float64 re-rank,
exhaustive proof of near-ties, see :mod:`memray.stats.index`). The caller min-merges the items' results with
:func:`memray.stats.index.merge_min` (ties → smallest global id), so distances and ids depend only on the data: not on
the grouping of blocks into items, the order in which a mapper returns them or how many workers run them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from memray.stats import Mapper
from memray.stats.config import CTConfig
from memray.stats.fit import cell_key
from memray.stats.index import TrainShard, merge_min, search_prepared

log = logging.getLogger(__name__)


class Store(Protocol):
    """What the search reads of a workspace (:class:`memray.stats.workspace.Workspace`)."""

    def get(self, key: str) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class SearchItem:
    """One search work item: a cell and the consecutive global blocks whose rows of that cell it searches."""

    cell: int
    blocks: tuple[int, ...]


def plan_search(block_cells: np.ndarray, max_rows: int) -> list[SearchItem]:
    """Group each cell's non-empty blocks, in block order, into items of at most ``max_rows`` training rows.

    ``block_cells`` (n_blocks, cells) int64: training rows per block and cell. A block holding more than
    ``max_rows`` rows of a cell is an item of its own. Items are ordered by cell, then block.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows}: need at least 1")
    counts = np.asarray(block_cells, dtype=np.int64)
    if counts.ndim != 2:
        raise ValueError(f"block_cells must be (n_blocks, cells), got shape {counts.shape}")
    items: list[SearchItem] = []
    for cell in range(counts.shape[1]):
        group: list[int] = []
        held = 0
        for block in np.flatnonzero(counts[:, cell] > 0).tolist():
            m = int(counts[block, cell])
            if group and held + m > max_rows:
                items.append(SearchItem(cell, tuple(group)))
                group, held = [], 0
            group.append(block)
            held += m
        if group:
            items.append(SearchItem(cell, tuple(group)))
    return items


def load_item(ws: Store, item: SearchItem) -> tuple[np.ndarray, np.ndarray]:
    """The training rows of an item: projected rows (m, k) float64 and global ids (m,) int64, in global order."""
    parts = [ws.get(cell_key(item.cell, g)) for g in item.blocks]
    z = np.concatenate([np.asarray(p["z"], np.float64) for p in parts])
    rows = np.concatenate([np.asarray(p["rows"], np.int64) for p in parts])
    return z, rows


def run_search(
    ws: Store, item: SearchItem, queries_z: np.ndarray, query_rows: np.ndarray, cfg: CTConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact nearest neighbour of each query (q_c, k) float64 of the item's cell among the item's training rows.

    Returns ``(query_rows, dist (q_c,) float64, ids (q_c,) int64 global training rows)``; distances per
    ``cfg.metric`` (Euclidean, 1 − cos, 1 − |cos|). The FAISS index is built on the task's GPU when faiss-gpu
    sees one (:func:`memray.stats.faiss_backend.to_gpu`).
    """
    z, rows = load_item(ws, item)
    shard = TrainShard.build(z, rows, cfg.metric, item.cell, item.blocks[0])
    dist, ids = search_prepared(shard, queries_z, cfg.candidates, cfg.query_batch)
    return np.asarray(query_rows, np.int64), dist, ids


@dataclass(frozen=True)
class SearchTask:
    """A picklable work item for a mapper: the workspace handle, the item and its cell's queries (no closures)."""

    ws: Any
    item: SearchItem
    queries: np.ndarray  # (q_c, k) float64 queries of the item's cell
    query_rows: np.ndarray  # (q_c,) int64 positions of those queries in the concatenated query array
    cfg: CTConfig


def run_task(task: SearchTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`run_search` of one :class:`SearchTask`."""
    return run_search(task.ws, task.item, task.queries, task.query_rows, task.cfg)


def search_tasks(ws: Store, block_cells: np.ndarray, query_z: np.ndarray, query_cells: np.ndarray, cfg: CTConfig):
    """The search round's tasks: every item of a cell that holds queries, with that cell's queries."""
    query_z, query_cells = np.asarray(query_z, np.float64), np.asarray(query_cells, np.int64)
    by_cell = {int(c): np.flatnonzero(query_cells == c) for c in np.unique(query_cells)}
    return [
        SearchTask(ws, item, np.ascontiguousarray(query_z[by_cell[item.cell]]), by_cell[item.cell], cfg)
        for item in plan_search(block_cells, cfg.search_rows)
        if item.cell in by_cell
    ]


def search_all(
    ws: Store, fit: Any, query_z: np.ndarray, query_cells: np.ndarray, cfg: CTConfig, mapper: Mapper = map
) -> tuple[np.ndarray, np.ndarray]:
    """One search round: each query's nearest training row in its own cell.

    Args:
        ws: the workspace holding the fit's ``cells/…`` entries.
        fit: the fit (:class:`memray.stats.fit.FitResult`); only ``fit.block_cells`` (n_blocks, cells) is used.
        query_z: (q, k) float64 projected queries, every query set of the round concatenated.
        query_cells: (q,) int64 cell of each query.
        cfg: ``metric``, ``candidates``, ``query_batch``, ``search_rows``.
        mapper: runs the items (builtin ``map`` here, Ray tasks in a job); any result order gives the same answer.

    Returns:
        distance (q,) float64 and global training row (q,) int64; ``(inf, -1)`` where the cell has no training row.
    """
    query_z = np.asarray(query_z, np.float64)
    dist = np.full(len(query_z), np.inf)
    ids = np.full(len(query_z), -1, dtype=np.int64)
    tasks = search_tasks(ws, fit.block_cells, query_z, query_cells, cfg)
    for rows, d, i in mapper(run_task, tasks):
        dist[rows], ids[rows] = merge_min([(dist[rows], ids[rows]), (d, i)])
    log.debug("search round: %d queries, %d items", len(query_z), len(tasks))
    return dist, ids
