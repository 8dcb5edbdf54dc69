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

from memray.stats import Mapper, local_threads, packed_map
from memray.stats.bounds import ItemBounds, split_rows, unit_rows
from memray.stats.config import CTConfig
from memray.stats.exact_topk import answer, merge_topk
from memray.stats.fit import FitResult
from memray.stats.index import TrainShard
from memray.stats.queries import QueryBlock, block_key
from memray.stats.search import SearchItem, load_item, plan_search
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)

TASK_ROWS = 65536  # queries an item task searches per batch (memory, not results)


@dataclass(frozen=True)
class TopkTask:
    """One item's work in a round: the item (its index names its lists), the query blocks and each block's group
    (the blocks one reader merges together share a list file per task and flush), the fit's centroids (bounds) and,
    in the far round, each block's queries' ``limit`` ((rows,) float64; ``None``: the home round)."""

    ws: Any
    item: SearchItem
    index: int
    qws: Any
    blocks: tuple[QueryBlock, ...]
    groups: tuple[int, ...]
    k: int
    cfg: CTConfig
    centroids: np.ndarray
    limits: tuple[np.ndarray, ...] | None = None


@dataclass
class TaskResult:
    """What an item task returns: ``(group, key)`` of each list file it wrote, the home round's ``(block index,
    block rows, k-th distances)`` and its searches in whole-item units (:func:`memray.stats.exact_topk.answer`)."""

    written: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    kth: list[tuple[int, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    searches: float = 0.0
    flushes: int = 0


@dataclass(frozen=True)
class TopkLists:
    """Where a round left its lists: ``(prefix, block) -> (its index in the round, the query-workspace keys of its
    group's list files)``; ``items`` searched, ``searches`` (query, item, side) searches run, in whole-item units
    (without pruning: every query × every item × sides)."""

    keys: dict[tuple[str, int], tuple[int, tuple[str, ...]]]
    items: int
    searches: float

    def of(self, block: QueryBlock) -> tuple[int, tuple[str, ...]]:
        """``block``'s index in the round and the keys of the files holding its lists."""
        return self.keys.get((block.prefix, block.g), (-1, ()))


def topk_key(group: int, index: int, home: bool, flush: int) -> str:
    """Query-workspace key of item ``index``'s top-k lists for the blocks of ``group`` in the home or the far round
    (``flush``: the task's batch)."""
    return f"topk/group_{group:06d}/{'home' if home else 'far'}_{index:05d}_{flush:04d}"


def _flush(
    task: TopkTask, shards: list[TrainShard], bounds: tuple[ItemBounds, ItemBounds], pending: list, out: TaskResult
) -> None:
    """Search the pending parts ``(block index, block rows, z, cells, limit)`` as one batch, each query only where
    the item (``bounds[0]``: its rows as one group) and then a group and side (``bounds[1]``) can still beat its
    limit; write one list file per block group (arrays ``dist``, ``ids``, ``rows``, ``block``)."""
    if not pending:
        return
    whole, bounds = bounds
    z, cells, limit = (np.concatenate([p[i] for p in pending]) for i in (2, 3, 4))
    unit = None if task.cfg.metric == "l2" else unit_rows(z)
    near = ~(whole.lower(z, cells, unit).min(axis=(1, 2)) > limit)  # the item as one group: a cheap first filter
    dist, ids = np.full((len(z), task.k), np.inf), np.full((len(z), task.k), -1, dtype=np.int64)
    if near.any():
        z, cells, limit = z[near], cells[near], limit[near]
        unit = None if unit is None else unit[near]
        d, i, searches = answer(shards, bounds, z, cells, limit, task.k, task.cfg, bounds.lower(z, cells, unit))
        dist[near], ids[near] = d, i
        out.searches += searches
    rows = np.concatenate([p[1] for p in pending])
    block = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in pending])
    if task.limits is None:
        at = np.cumsum([0] + [len(p[1]) for p in pending])
        out.kth += [(p[0], p[1], dist[at[j] : at[j + 1], -1]) for j, p in enumerate(pending)]
    keep = (ids >= 0).any(axis=1)
    group = np.asarray(task.groups, np.int64)[block]
    for gid in np.unique(group[keep]).tolist():
        sel = np.flatnonzero(keep & (group == gid))
        key = topk_key(gid, task.index, task.limits is None, out.flushes)
        task.qws.put(key, dist=dist[sel], ids=ids[sel], rows=rows[sel], block=block[sel])
        out.written.append((gid, key))
    out.flushes += 1
    pending.clear()


def run_topk_task(task: TopkTask) -> TaskResult:
    """Load the item's training rows once, then answer the round's queries: its own cell's (home round) or, where
    its bounds can beat their ``limit``, the other cells' (far round); lists go to :func:`topk_key`."""
    z, rows = load_item(task.ws, task.item)
    labels = split_rows(z, task.cfg.metric)
    bounds = ItemBounds.build(z, task.cfg.metric, task.centroids, task.item.cell, labels)
    whole = ItemBounds.build(z, task.cfg.metric, task.centroids, task.item.cell)
    shards = [TrainShard.build(z[i], rows[i], task.cfg.metric) for i in (labels == g for g in range(bounds.groups))]
    del z, rows
    out, pending, held = TaskResult(), [], 0
    home = task.limits is None
    for bi, block in enumerate(task.blocks):
        if (task.item.cell in block.cells) if home else bool(set(block.cells) - {task.item.cell}):
            part = task.qws.get(block_key(block.prefix, block.g))  # every cell's rows, in one read
            cells = np.asarray(part["cells"], np.int64)
        else:
            continue
        pick = np.flatnonzero((cells == task.item.cell) if home else (cells != task.item.cell))
        local, qz = np.asarray(part["rows"], np.int64)[pick] - block.start, np.asarray(part["z"], np.float64)[pick]
        limit = np.full(len(local), np.inf) if home else task.limits[bi][local]
        pending.append((bi, local, qz, cells[pick], limit))
        held += len(local)
        if held >= TASK_ROWS:
            _flush(task, shards, (whole, bounds), pending, out)
            held = 0
    _flush(task, shards, (whole, bounds), pending, out)
    return out


def topk_round(
    ws: Workspace, fit: FitResult, qws: Workspace, blocks: list[QueryBlock], k: int, cfg: CTConfig,
    mapper: Mapper = map, groups: list[int] | None = None,
) -> TopkLists:  # fmt: skip
    """The home round, then the far round, of every search item (``fit.block_cells`` plans them) over the query
    ``blocks``: their lists go to the query workspace, where :func:`merged_topk` reads them. ``groups``: per block,
    the group of blocks one reader merges together (they share list files; default: one group per block)."""
    mapper = local_threads(mapper)  # in one process: FAISS and numpy on every core, one item per thread
    first = dict.fromkeys(zip(blocks, groups if groups is not None else range(len(blocks)), strict=True))
    blocks, grp = [b for b, _ in first], tuple(g for _, g in first)
    items = plan_search(fit.block_cells, cfg.search_rows)
    cent = np.asarray(fit.space.centroids)
    tasks = [TopkTask(ws, item, i, qws, tuple(blocks), grp, k, cfg, cent) for i, item in enumerate(items)]
    keys: dict[int, list[str]] = {g: [] for g in grp}
    limits = [np.full(b.stop - b.start, np.inf) for b in blocks]
    searches = 0.0
    queries = sum(b.stop - b.start for b in blocks)
    work = [item.rows(fit.block_cells) * queries for item in items]  # home and far alike
    for got in packed_map(mapper, run_topk_task, tasks, work):
        for bi, rows, kth in got.kth:
            limits[bi][rows] = np.minimum(limits[bi][rows], kth)
        for g, key in got.written:
            keys[g].append(key)
        searches += got.searches
    if len(items) > 1:
        far = [dataclasses.replace(t, limits=tuple(limits)) for t in tasks]
        for got in packed_map(mapper, run_topk_task, far, work):
            for g, key in got.written:
                keys[g].append(key)
            searches += got.searches
    log.debug("top-%d round: %d queries, %d items, %.1f item searches", k, queries, len(items), searches)
    lists = {(b.prefix, b.g): (bi, tuple(sorted(keys[grp[bi]]))) for bi, b in enumerate(blocks)}
    return TopkLists(lists, len(items), searches)


def merged_topk(
    qws: Workspace, block: QueryBlock, lists: TopkLists, k: int, cache: dict[str, dict] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A block's k nearest training rows over the whole training set: its lists merged (:func:`merge_topk`),
    ``(dist (q, k) float64, rows (q, k) int64)`` sorted by (distance, row), ``(inf, -1)`` pads. ``cache``: list files
    already read (a reader merging the blocks of one group reads each file once)."""
    q = block.stop - block.start
    dist, ids = np.full((q, k), np.inf), np.full((q, k), -1, dtype=np.int64)
    bi, keys = lists.of(block)
    for key in keys:
        if cache is None:
            part = qws.get(key)
        else:
            if key not in cache:
                cache[key] = qws.get(key)
            part = cache[key]
        sel = np.flatnonzero(part["block"] == bi)
        r = part["rows"][sel]
        dist[r], ids[r] = merge_topk([(dist[r], ids[r]), (part["dist"][sel], part["ids"][sel])], len(r), k)
    return dist, ids


def share_below(test_d1: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Share of test samples whose nearest-training distance (``test_d1``) is strictly below each ``d``."""
    ref = np.sort(np.asarray(test_d1, np.float64)[np.isfinite(test_d1)])
    if len(ref) == 0:
        return np.full(np.shape(d), np.nan)
    return np.searchsorted(ref, np.asarray(d, np.float64), side="left") / len(ref)
