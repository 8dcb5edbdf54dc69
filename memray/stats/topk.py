"""Global top-k nearest training samples (over the WHOLE training set, not only the query's cell): copy evidence.

C_T measures each sample's nearest training neighbour *within its cell*; a person checking a suspected copy wants
the nearest training images overall. This search reuses the fit's cell-partitioned projected training rows
(:mod:`memray.stats.search`): every search item (one cell, a run of blocks) answers *every* query block (read from the
query workspace, :mod:`memray.stats.queries`) with its k best rows, written back there, and a task per query block
merges the items' lists (:func:`merged_topk`). Per item FAISS (flat, float32) proposes ``k + candidates`` rows
per query (for 1 − |cos| also for −q), re-ranked with exact float64 distances; a query whose list the float32
error bound does not prove complete (near-duplicate rows: the copies) is scanned exhaustively in float64. The merged
order is (distance, id), so the answer depends only on the data, not on how items are grouped or in which order a
mapper returns them.

``share_below(test_d1, d)`` (the ``test_quantile`` column): the share of test samples whose global
nearest-training distance is below ``d``, a calibrated per-image score (0.001 = "closer to the training set than
99.9% of fresh images").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray.stats import Mapper
from memray.stats.config import CTConfig
from memray.stats.faiss_backend import faiss_scope
from memray.stats.fit import FitResult
from memray.stats.index import TrainShard, _scores, _tolerance, prepare
from memray.stats.queries import QueryBlock, read_block
from memray.stats.search import SearchItem, load_item, plan_search
from memray.stats.workspace import Workspace

BATCH_BYTES = 128 * 1024**2  # memory bound of one query batch's candidate rows (float64)
EXHAUSTIVE_BYTES = 32 * 1024**2  # memory bound of one block of the exhaustive float64 scan


def _lex_topk(s: np.ndarray, tid: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest (score, id) pairs of (q, c) arrays, ordered by score then id."""
    order = np.lexsort((tid, s), axis=1)[:, :kk]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(tid, order, axis=1)


def _exhaustive_topk(shard: TrainShard, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 top-kk search scores of a few queries over all of a shard's rows (blocks of rows)."""
    n, dim = shard.train.shape
    best_s = np.full((len(queries), 0), np.inf)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    step = max(1, EXHAUSTIVE_BYTES // max(1, 8 * dim * len(queries)))
    for lo in range(0, n, step):
        t = shard.train[lo : lo + step]
        s = _scores(queries[:, None, :], t[None, :, :], shard.metric, shard.norms[lo : lo + step][None, :])
        ids = np.broadcast_to(shard.train_ids[lo : lo + step], s.shape)
        best_s, best_i = _lex_topk(np.hstack([best_s, s]), np.hstack([best_i, ids]), kk)
    return best_s, best_i


def _item_topk(z: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int, cfg: CTConfig):
    """(dist (q, kk), ids (q, kk)) of one item's rows, kk = min(k, rows): exact float64 distances."""
    return _shard_topk(TrainShard.build(z, rows, cfg.metric), queries, k, cfg)


def _shard_topk(shard: TrainShard, queries: np.ndarray, k: int, cfg: CTConfig):
    """:func:`_item_topk` on a prepared shard.

    FAISS (float32) proposes candidates; each query's k-th exact score is compared with the bound every
    non-candidate row must exceed (the last candidate's float32 score minus the float32 error bound of
    :func:`memray.stats.index._tolerance`); queries where it does not prove the list complete (near-duplicate
    training rows, large norms) are searched exhaustively in float64.
    """
    n, q = len(shard.train_ids), len(queries)
    kk = min(k, n)
    dist = np.full((q, kk), np.inf)
    ids = np.full((q, kk), -1, dtype=np.int64)
    if kk == 0 or q == 0:
        return dist, ids
    c = min(k + cfg.candidates, n)
    batch = int(max(1, min(4096, BATCH_BYTES // (2 * c * 8 * 4))))
    doubtful: list[np.ndarray] = []
    with faiss_scope():
        for start in range(0, q, batch):
            qb = queries[start : start + batch]
            xq = prepare(qb, cfg.metric)
            raw, cand = shard.index().search(xq, c)
            raw = raw.astype(np.float64)
            if cfg.metric == "l2":
                approx, bound = raw, raw[:, -1]  # squared L2: every non-candidate row scores at least bound
            elif cfg.metric == "cosine":
                approx, bound = 1.0 - raw, 1.0 - raw[:, -1]
            else:  # 1 − |cos|: candidates of q and of −q (PCA-centred rows: both signs occur)
                raw2, cand2 = shard.index().search(-xq, c)
                raw = np.hstack([raw, raw2.astype(np.float64)])
                approx, bound = 1.0 - np.abs(raw), 1.0 - np.maximum(raw[:, c - 1], raw[:, -1])
                cand = np.hstack([cand, cand2])  # |q̂·t̂| is the same in both lists
            tol = _tolerance(qb, shard.sqnorm_max, cfg.metric)
            first = _first_seen(cand)  # a row found for q and for −q counts once
            approx = np.where(first, approx, np.inf)
            kth = np.partition(approx, kk - 1, axis=1)[:, kk - 1]
            # only candidates within 2·tol of the k-th float32 score can make the exact top k: re-rank those
            rr, cc = np.nonzero(first & (approx <= (kth + 2.0 * tol)[:, None]))
            t = cand[rr, cc]
            exact = np.full(cand.shape, np.inf)
            exact[rr, cc] = _scores(qb[rr], shard.train[t], cfg.metric, shard.norms[t])
            bs, bi = _lex_topk(exact, shard.train_ids[cand], kk)
            dist[start : start + len(qb)], ids[start : start + len(qb)] = bs, bi
            if c < n:
                doubtful.append(start + np.flatnonzero(~(bs[:, -1] < bound - tol)))
    todo = np.concatenate(doubtful) if doubtful else np.zeros(0, dtype=np.int64)
    for lo in range(0, len(todo), 256):
        sel = todo[lo : lo + 256]
        dist[sel], ids[sel] = _exhaustive_topk(shard, queries[sel], kk)
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


@dataclass(frozen=True)
class TopkTask:
    """One item's top-k work: the item (its index names its results) and the query blocks it answers."""

    ws: Any
    item: SearchItem
    index: int
    qws: Any
    blocks: tuple[QueryBlock, ...]
    k: int
    cfg: CTConfig


def topk_key(block: QueryBlock, index: int) -> str:
    """Query-workspace key of item ``index``'s top-k lists for ``block``."""
    return f"topk/{block.prefix}/block_{block.g:06d}/item_{index:05d}"


def run_topk_task(task: TopkTask) -> int:
    """Load the item's training rows once, then answer each query block (read from the query workspace) with its
    k best rows, written to :func:`topk_key`; returns the number of queries answered."""
    z, rows = load_item(task.ws, task.item)
    shard = TrainShard.build(z, rows, task.cfg.metric)
    del z, rows
    done = 0
    for block in task.blocks:
        queries = read_block(task.qws, block)
        dist, ids = _shard_topk(shard, queries, task.k, task.cfg)
        task.qws.put(topk_key(block, task.index), dist=dist, ids=ids)
        done += len(queries)
    return done


def topk_round(
    ws: Workspace, fit: FitResult, qws: Workspace, blocks: list[QueryBlock], k: int, cfg: CTConfig, mapper: Mapper = map
) -> int:
    """Every search item (``fit.block_cells`` plans them) answers every query block: its lists go to the query
    workspace (:func:`merged_topk` reads them). Returns the number of items."""
    items = plan_search(fit.block_cells, cfg.search_rows)
    tasks = [TopkTask(ws, item, i, qws, tuple(blocks), k, cfg) for i, item in enumerate(items)]
    list(mapper(run_topk_task, tasks))
    return len(items)


def merged_topk(qws: Workspace, block: QueryBlock, items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's k nearest training rows over the whole training set: its ``items`` lists merged (:func:`merge_topk`),
    ``(dist (q, k) float64, rows (q, k) int64)`` sorted by (distance, row), ``(inf, -1)`` pads."""
    parts = (qws.get(topk_key(block, i)) for i in range(items))
    return merge_topk(((p["dist"], p["ids"]) for p in parts), block.stop - block.start, k)


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


def share_below(test_d1: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Share of test samples whose nearest-training distance (``test_d1``) is strictly below each ``d``."""
    ref = np.sort(np.asarray(test_d1, np.float64)[np.isfinite(test_d1)])
    if len(ref) == 0:
        return np.full(np.shape(d), np.nan)
    return np.searchsorted(ref, np.asarray(d, np.float64), side="left") / len(ref)
