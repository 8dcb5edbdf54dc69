"""Global top-k nearest training samples (over the WHOLE training set, not only the query's cell): copy evidence.

C_T measures each sample's nearest training neighbour *within its cell*; a person checking a suspected copy wants
the nearest training images overall. This search reuses the fit's cell-partitioned projected training rows
(:mod:`memray.stats.search`) and the query workspace's projected query blocks (:mod:`memray.stats.queries`) in
two rounds of item tasks (an item is a cell's run of training blocks):

1. *home*: every item answers the queries of its own cell with its k best rows; each query's k-th distance there
   (``limit``) bounds its global k-th distance from above;
2. *far*: every item answers the other cells' queries, but only those where its lower bound on the distance to
   any of its rows (:class:`memray.stats.bounds.ItemBounds`) does not exceed the query's ``limit``.

Lists are exact (:mod:`memray.stats.exact_topk`: float32 FAISS proposes, float64 decides) and a pruned row is
provably farther than k rows found, so a block's merged lists (:func:`merged_topk`, ordered by (distance, id)) are
those of searching every row, bit for bit: they depend only on the data, not on how items are grouped, on the
bounds or on the order in which a mapper returns them.

``share_below(test_d1, d)`` (the ``test_quantile`` column): the share of test samples whose global
nearest-training distance is below ``d``, a calibrated per-image score (0.001 = "closer to the training set than
99.9% of fresh images").
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray.stats import Mapper
from memray.stats.bounds import ItemBounds
from memray.stats.config import CTConfig
from memray.stats.exact_topk import _item_topk, answer, merge_topk  # noqa: F401  (_item_topk: one item's search)
from memray.stats.fit import FitResult
from memray.stats.index import TrainShard
from memray.stats.queries import QueryBlock, query_key
from memray.stats.search import SearchItem, load_item, plan_search
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)

TASK_ROWS = 65536  # queries an item task searches per batch (memory, not results)


@dataclass(frozen=True)
class TopkTask:
    """One item's work in a round: the item (its index names its lists), the query blocks, the fit's centroids
    (bounds) and, in the far round, each block's queries' ``limit`` ((rows,) float64; ``None``: the home round)."""

    ws: Any
    item: SearchItem
    index: int
    qws: Any
    blocks: tuple[QueryBlock, ...]
    k: int
    cfg: CTConfig
    centroids: np.ndarray
    limits: tuple[np.ndarray, ...] | None = None


@dataclass
class TaskResult:
    """What an item task returns: ``(block index, key)`` of each list it wrote, the home round's ``(block index,
    block rows, k-th distances)`` and how many (query, side) searches it ran."""

    written: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    kth: list[tuple[int, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    searches: int = 0


@dataclass(frozen=True)
class TopkLists:
    """Where a round left its lists: ``(prefix, block) -> query-workspace keys``; ``items`` searched, ``searches``
    (query, item side) searches run (without pruning: every query × every item × sides)."""

    keys: dict[tuple[str, int], tuple[str, ...]]
    items: int
    searches: int

    def of(self, block: QueryBlock) -> tuple[str, ...]:
        """The keys of ``block``'s lists."""
        return self.keys.get((block.prefix, block.g), ())


def topk_key(block: QueryBlock, index: int, home: bool) -> str:
    """Query-workspace key of item ``index``'s top-k lists for ``block`` in the home or the far round."""
    return f"topk/{block.prefix}/block_{block.g:06d}/{'home' if home else 'far'}_{index:05d}"


def _flush(task: TopkTask, shard: TrainShard, bounds: ItemBounds, pending: list, out: TaskResult) -> None:
    """Search the pending parts ``(block index, block rows, z, cells, limit, lower)`` as one batch; write a list per
    block."""
    if not pending:
        return
    z, cells, limit, lower = (np.concatenate([p[i] for p in pending]) for i in (2, 3, 4, 5))
    dist, ids, searches = answer(shard, bounds, z, cells, limit, task.k, task.cfg, lower)
    out.searches += searches
    at = np.cumsum([0] + [len(p[1]) for p in pending])
    for bi in sorted({p[0] for p in pending}):
        sel = np.concatenate([np.arange(at[j], at[j + 1]) for j, p in enumerate(pending) if p[0] == bi])
        rows = np.concatenate([p[1] for p in pending if p[0] == bi])
        if task.limits is None:
            out.kth.append((bi, rows, dist[sel, -1]))
        keep = (ids[sel] >= 0).any(axis=1)
        if keep.any():
            key = topk_key(task.blocks[bi], task.index, task.limits is None)
            task.qws.put(key, dist=dist[sel][keep], ids=ids[sel][keep], rows=rows[keep])
            out.written.append((bi, key))
    pending.clear()


def run_topk_task(task: TopkTask) -> TaskResult:
    """Load the item's training rows once, then answer the round's queries: its own cell's (home round) or, where
    its bounds can beat their ``limit``, the other cells' (far round); lists go to :func:`topk_key`."""
    z, rows = load_item(task.ws, task.item)
    shard = TrainShard.build(z, rows, task.cfg.metric)
    bounds = ItemBounds.build(shard.train, task.cfg.metric, task.centroids, task.item.cell)
    del z, rows
    out, pending, held = TaskResult(), [], 0
    for bi, block in enumerate(task.blocks):
        home = task.limits is None
        for c in [c for c in block.cells if (c == task.item.cell) == home]:
            part = task.qws.get(query_key(block.prefix, c, block.g))
            local, qz = np.asarray(part["rows"], np.int64) - block.start, np.asarray(part["z"], np.float64)
            cells = np.full(len(local), c, dtype=np.int64)
            limit = np.full(len(local), np.inf) if home else task.limits[bi][local]
            lower = bounds.lower(qz, cells)
            near = ~(lower.min(axis=1) > limit)  # the queries some side of the item can still serve
            if near.any():
                pending.append((bi, local[near], qz[near], cells[near], limit[near], lower[near]))
                held += int(near.sum())
        if held >= TASK_ROWS:
            _flush(task, shard, bounds, pending, out)
            held = 0
    _flush(task, shard, bounds, pending, out)
    return out


def topk_round(
    ws: Workspace, fit: FitResult, qws: Workspace, blocks: list[QueryBlock], k: int, cfg: CTConfig, mapper: Mapper = map
) -> TopkLists:
    """The home round, then the far round, of every search item (``fit.block_cells`` plans them) over the query
    ``blocks``: their lists go to the query workspace, where :func:`merged_topk` reads them."""
    blocks = list(dict.fromkeys(blocks))
    items = plan_search(fit.block_cells, cfg.search_rows)
    cent = np.asarray(fit.space.centroids)
    tasks = [TopkTask(ws, item, i, qws, tuple(blocks), k, cfg, cent) for i, item in enumerate(items)]
    keys: dict[int, list[str]] = {bi: [] for bi in range(len(blocks))}
    limits = [np.full(b.stop - b.start, np.inf) for b in blocks]
    searches = 0
    for got in mapper(run_topk_task, tasks):
        for bi, rows, kth in got.kth:
            limits[bi][rows] = np.minimum(limits[bi][rows], kth)
        for bi, key in got.written:
            keys[bi].append(key)
        searches += got.searches
    if len(items) > 1:
        far = [dataclasses.replace(t, limits=tuple(limits)) for t in tasks]
        for got in mapper(run_topk_task, far):
            for bi, key in got.written:
                keys[bi].append(key)
            searches += got.searches
    queries = sum(b.stop - b.start for b in blocks)
    log.debug("top-%d round: %d queries, %d items, %d searches", k, queries, len(items), searches)
    lists = {(b.prefix, b.g): tuple(sorted(keys[bi])) for bi, b in enumerate(blocks)}
    return TopkLists(lists, len(items), searches)


def merged_topk(qws: Workspace, block: QueryBlock, lists: TopkLists, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's k nearest training rows over the whole training set: its lists merged (:func:`merge_topk`),
    ``(dist (q, k) float64, rows (q, k) int64)`` sorted by (distance, row), ``(inf, -1)`` pads."""
    q = block.stop - block.start
    dist, ids = np.full((q, k), np.inf), np.full((q, k), -1, dtype=np.int64)
    for key in lists.of(block):
        part = qws.get(key)
        r = part["rows"]
        dist[r], ids[r] = merge_topk([(dist[r], ids[r]), (part["dist"], part["ids"])], len(r), k)
    return dist, ids


def share_below(test_d1: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Share of test samples whose nearest-training distance (``test_d1``) is strictly below each ``d``."""
    ref = np.sort(np.asarray(test_d1, np.float64)[np.isfinite(test_d1)])
    if len(ref) == 0:
        return np.full(np.shape(d), np.nan)
    return np.searchsorted(ref, np.asarray(d, np.float64), side="left") / len(ref)
