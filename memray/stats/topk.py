"""Global top-k nearest training samples (over the WHOLE training set, not only the query's cell): copy evidence.

C_T measures each sample's nearest training neighbour *within its cell*; a person checking a suspected copy wants
the nearest training images overall. This search reuses the fit's cell-partitioned projected training rows
(:mod:`memray.stats.search`): every search item (one cell, a run of blocks) answers *every* query with its k
best rows, and the caller merges the items' lists. Per item FAISS (flat, float32) proposes ``k + candidates`` rows
per query (for 1 − |cos| also for −q), re-ranked with exact float64 distances; the merged order is (distance, id),
so the answer depends only on the data, not on how items are grouped or in which order a mapper returns them.

``share_below(test_d1, d)`` (the ``test_quantile`` column): the share of test samples whose global
nearest-training distance is below ``d``, a calibrated per-image score (0.001 = "closer to the training set than
99.9% of fresh images").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray.config import CTConfig
from memray.stats.faiss_backend import faiss_scope
from memray.stats.index import TrainShard, _scores, prepare
from memray.stats.search import SearchItem, load_item, plan_search

Mapper = Callable[[Callable, Iterable], Iterable]


@dataclass(frozen=True)
class TopkTask:
    """A picklable work item: every query against one search item's training rows."""

    ws: Any
    item: SearchItem
    queries: np.ndarray  # (q, k) float64 projected queries (all of the round)
    k: int
    cfg: CTConfig


def _item_topk(z: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int, cfg: CTConfig, batch: int = 4096):
    """(dist (q, kk), ids (q, kk)) of one item's rows, kk = min(k, rows); exact float64 among FAISS's candidates."""
    shard = TrainShard.build(z, rows, cfg.metric)
    n, q = len(rows), len(queries)
    kk = min(k, n)
    dist = np.full((q, kk), np.inf)
    ids = np.full((q, kk), -1, dtype=np.int64)
    if kk == 0 or q == 0:
        return dist, ids
    c = min(k + cfg.candidates, n)
    with faiss_scope():
        for start in range(0, q, batch):
            qb = queries[start : start + batch]
            xq = prepare(qb, cfg.metric)
            cand = shard.index().search(xq, c)[1]
            if cfg.metric == "cosine_abs":
                cand = np.hstack([cand, shard.index().search(-xq, c)[1]])
            s = _scores(qb[:, None, :], shard.train[cand], cfg.metric, shard.norms[cand])
            tid = shard.train_ids[cand]
            s = np.where(_first_seen(cand), s, np.inf)  # a row found for q and for −q counts once
            order = np.lexsort((tid, s), axis=1)[:, :kk]
            dist[start : start + len(qb)] = np.take_along_axis(s, order, axis=1)
            ids[start : start + len(qb)] = np.take_along_axis(tid, order, axis=1)
    if cfg.metric == "l2":
        dist = np.sqrt(dist)
    return dist, np.where(np.isinf(dist), -1, ids)


def _first_seen(cand: np.ndarray) -> np.ndarray:
    """(q, c) bool: True at the first occurrence of each value in its row."""
    order = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, order, axis=1)
    first = np.ones_like(srt, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    out = np.empty_like(first)
    np.put_along_axis(out, order, first, axis=1)
    return out


def run_topk_task(task: TopkTask) -> tuple[np.ndarray, np.ndarray]:
    """One item's top-k lists for every query of the round."""
    z, rows = load_item(task.ws, task.item)
    return _item_topk(z, rows, np.asarray(task.queries, np.float64), task.k, task.cfg)


def merge_topk(parts: Iterable[tuple[np.ndarray, np.ndarray]], q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-item lists into the k best per query, ordered by (distance, id); pads with (inf, -1)."""
    dist = np.full((q, k), np.inf)
    ids = np.full((q, k), -1, dtype=np.int64)
    for d, i in parts:
        d2, i2 = np.hstack([dist, d]), np.hstack([ids, i])
        key_id = np.where(i2 < 0, np.iinfo(np.int64).max, i2)
        order = np.lexsort((key_id, d2), axis=1)[:, :k]
        dist, ids = np.take_along_axis(d2, order, axis=1), np.take_along_axis(i2, order, axis=1)
    return dist, ids


def search_topk(
    ws: Any, fit: Any, queries_z: np.ndarray, k: int, cfg: CTConfig, mapper: Mapper = map
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest training rows over the whole training set for each projected query (q, dim).

    Returns ``(dist (q, k) float64, rows (q, k) int64)`` sorted by (distance, row); ``(inf, -1)`` pads when the
    training set has fewer than k rows. ``fit.block_cells`` plans the items (as :func:`search.plan_search`).
    """
    queries_z = np.ascontiguousarray(queries_z, np.float64)
    tasks = [TopkTask(ws, item, queries_z, k, cfg) for item in plan_search(fit.block_cells, cfg.search_rows)]
    return merge_topk(mapper(run_topk_task, tasks), len(queries_z), k)


def share_below(test_d1: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Share of test samples whose nearest-training distance (``test_d1``) is strictly below each ``d``."""
    ref = np.sort(np.asarray(test_d1, np.float64)[np.isfinite(test_d1)])
    if len(ref) == 0:
        return np.full(np.shape(d), np.nan)
    return np.searchsorted(ref, np.asarray(d, np.float64), side="left") / len(ref)
