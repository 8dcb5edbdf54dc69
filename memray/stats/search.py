"""Exact in-cell nearest-neighbour search over the cell-partitioned training blocks of a workspace.

The fit writes each block's rows of each cell to ``cells/cell_{c:04d}/block_{g:06d}`` (arrays ``z`` (m, k) float64
projected rows and ``rows`` (m,) int64 global ids, in global order). A search item is one cell and a run of consecutive
blocks holding at most ``cfg.search_rows`` training rows; a worker loads only those rows and the cell's projected
queries (from the query workspace, :mod:`memray.stats.queries`), builds a flat FAISS shard
(:class:`memray.stats.index.TrainShard`) and searches the queries exactly (float32 FAISS, float64 re-rank,
exhaustive proof of near-ties, see :mod:`memray.stats.index`). The caller min-merges the items' results with
:func:`memray.stats.index.merge_min` (ties → smallest global id), so distances and ids depend only on the data: not on
the grouping of blocks into items, the order in which a mapper returns them or how many workers run them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from memray.io.storage import remove
from memray.stats import Mapper, packed_map
from memray.stats.config import CTConfig
from memray.stats.fit import FitResult, cell_key
from memray.stats.index import TrainShard, merge_min, search_prepared
from memray.stats.queries import put_queries, query_key
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)


class Store(Protocol):
    """What the search reads of a workspace (:class:`memray.stats.workspace.Workspace`)."""

    def get(self, key: str) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class SearchItem:
    """One search work item: a cell and the consecutive global blocks whose rows of that cell it searches."""

    cell: int
    blocks: tuple[int, ...]

    def rows(self, block_cells: np.ndarray) -> int:
        """Training rows of the item, from the fit's (n_blocks, cells) per-block cell counts."""
        return int(np.asarray(block_cells, np.int64)[list(self.blocks), self.cell].sum())


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
    """A picklable work item for a mapper: the workspaces, the item and where its cell's queries are (no data).

    ``parts``: ``(query-workspace key, round position of the part's set's first row)`` of every part of the round
    in the item's cell (:mod:`memray.stats.queries`); the task reads those projected rows itself.
    """

    ws: Any
    item: SearchItem
    qws: Any
    parts: tuple[tuple[str, int], ...]
    cfg: CTConfig


def read_queries(qws: Store, parts: tuple[tuple[str, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """The projected queries of ``parts``: rows (q, k) float64 and their round positions (q,) int64."""
    got = [(qws.get(key), offset) for key, offset in parts]
    z = np.concatenate([np.asarray(p["z"], np.float64) for p, _ in got])
    rows = np.concatenate([np.asarray(p["rows"], np.int64) + offset for p, offset in got])
    return z, rows


def run_task(task: SearchTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`run_search` of one :class:`SearchTask` on the queries it reads."""
    z, rows = read_queries(task.qws, task.parts)
    return run_search(task.ws, task.item, z, rows, task.cfg)


def search_round(
    ws: Store, fit: FitResult, qws: Store, parts: dict[int, list[tuple[str, int]]], n: int, cfg: CTConfig,
    mapper: Mapper = map,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One search round over ``n`` queries held in the query workspace: each one's nearest training row in its cell.

    Args:
        ws: the workspace holding the fit's ``cells/…`` entries; ``fit.block_cells`` plans the items.
        qws: the query workspace; ``parts``: cell -> ``(key, round offset)`` of the round's query parts there.
        cfg: ``metric``, ``candidates``, ``query_batch``, ``search_rows``.
        mapper: runs the items (builtin ``map`` here, Ray tasks in a job); any result order gives the same answer.

    Returns:
        distance (n,) float64 and global training row (n,) int64; ``(inf, -1)`` where the cell has no training row.
    """
    dist = np.full(n, np.inf)
    ids = np.full(n, -1, dtype=np.int64)
    tasks = [SearchTask(ws, item, qws, tuple(parts[item.cell]), cfg)
             for item in plan_search(fit.block_cells, cfg.search_rows) if item.cell in parts]  # fmt: skip
    cells = max(1, np.shape(fit.block_cells)[1])
    work = [t.item.rows(fit.block_cells) * n / cells for t in tasks]  # its cell's share of the queries
    for rows, d, i in packed_map(mapper, run_task, tasks, work):
        dist[rows], ids[rows] = merge_min([(dist[rows], ids[rows]), (d, i)])
    log.debug("search round: %d queries, %d items", n, len(tasks))
    return dist, ids


def search_all(
    ws: Workspace, fit: FitResult, query_z: np.ndarray, query_cells: np.ndarray, cfg: CTConfig, mapper: Mapper = map
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search_round` of queries the caller holds: projected (q, k) float64 with their cells (q,) int64.

    They are written to a query workspace under ``ws`` (removed afterwards) and searched like any round.
    """
    query_z, query_cells = np.asarray(query_z, np.float64), np.asarray(query_cells, np.int64)
    qws = ws.child(f"queries/direct-{uuid.uuid4().hex}")
    try:
        put_queries(qws, "q", 0, 0, query_z, query_cells)
        parts = {c: [(query_key("q", c, 0), 0)] for c in np.unique(query_cells).tolist()}
        return search_round(ws, fit, qws, parts, len(query_z), cfg, mapper)
    finally:
        remove(qws.root, qws.storage_options, recursive=True)
