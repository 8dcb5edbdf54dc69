"""Exact top-k of queries over one search item's training rows (FAISS float32 proposes, float64 decides once).

An item's rows are split into groups of nearby rows (:func:`memray.stats.bounds.split_rows`); a *unit* is a group
searched on one side (for 1 − |cos| the two signs are separate cosine searches of q and −q, rows with q̂·t̂ ≥ 0
from the first and < 0 from the second). :func:`answer` searches a unit only where its lower bound
(:class:`memray.stats.bounds.ItemBounds`) can beat the query's current k-th distance (``limit``).

Each unit's FAISS candidates (``k + candidates`` per query, float32 scores) go into one pool per query (the best
``k + candidates`` distinct rows); the pool's k-th float32 score plus the error bound τ of
:func:`memray.stats.index._tolerance` bounds the k-th exact distance from above and tightens ``limit``. Every row not
in the pool (a unit's non-candidates, rows pushed out of the pool) scores at least the query's ``floor`` (the lowest
such float32 score) − τ. At the end the pool's rows within 2τ of its k-th score are re-ranked once in float64; where
the exact k-th is not below ``floor − τ`` (near-duplicate rows: the copies) the item is scanned exhaustively in
float64. Lists are ordered by (distance, id), so merged lists (:func:`merge_topk`) depend only on the data, not on
the groups, the bounds or the order in which units were searched: a row left out is provably farther than k rows
found or than ``limit``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from memray.stats.bounds import ItemBounds
from memray.stats.config import CTConfig
from memray.stats.faiss_backend import faiss_scope
from memray.stats.index import (
    TrainShard,
    _lex_topk,
    _rowdot,
    _scores,
    _tolerance,
    exhaustive_topk,
    prepare,
    search_chunked,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)
RERANK_PAIRS = 4096  # (query, row) pairs re-ranked per block (speed only)
FIRST_RANKS = 1  # each query's most promising units searched first, one rank at a time


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


class _Pool:
    """Per query the best ``width`` distinct rows seen so far by float32 score (``score`` (m, width), ``pos``
    (m, width) positions in the item, −1 = empty) and ``floor`` (m,): the lowest float32 score of any searched row
    not in the pool (a unit's non-candidates, rows pushed out)."""

    def __init__(self, m: int, width: int, dedup: bool) -> None:
        self.score = np.full((m, width), np.inf)
        self.pos = np.full((m, width), -1, dtype=np.int64)
        self.floor = np.full(m, np.inf)
        self.broken = np.zeros(m, dtype=bool)  # a search returned rows without a float32 score
        self.dedup = dedup  # 1 − |cos|: a row may come back from both signs' searches

    def add(self, sel: np.ndarray, score: np.ndarray, pos: np.ndarray, unit_floor: np.ndarray) -> None:
        """Merge one unit's candidates (len(sel), c) into the pools of queries ``sel``."""
        old_s, old_p = self.score[sel], self.pos[sel]
        if self.dedup:
            r, j, i = np.nonzero(pos[:, :, None] == old_p[:, None, :])
            if len(r):  # keep the lower score of the two signs' (the same row's) once
                np.minimum.at(old_s, (r, i), score[r, j])
                score, pos = score.copy(), pos.copy()
                score[r, j], pos[r, j] = np.inf, -1
        both_s, both_p = np.hstack([old_s, score]), np.hstack([old_p, pos])
        width = old_s.shape[1]
        part = np.argpartition(both_s, width - 1, axis=1)
        keep, drop = part[:, :width], part[:, width:]
        self.score[sel] = np.take_along_axis(both_s, keep, axis=1)
        self.pos[sel] = np.take_along_axis(both_p, keep, axis=1)
        out = np.take_along_axis(both_s, drop, axis=1).min(axis=1, initial=np.inf)
        self.floor[sel] = np.minimum(self.floor[sel], np.minimum(unit_floor, out))

    def kth(self, k: int, sel: np.ndarray | None = None) -> np.ndarray:
        """The k-th lowest float32 score in the pools of queries ``sel`` (``None``: all)."""
        return np.partition(self.score if sel is None else self.score[sel], k - 1, axis=1)[:, k - 1]


def _upper(kth32: np.ndarray, tol: np.ndarray, metric: str) -> np.ndarray:
    """An upper bound on the reported k-th exact distance from the k-th float32 score: ``kth32 + τ`` (its square
    root for ``l2``: FAISS scores squared distances)."""
    up = kth32 + tol
    return np.sqrt(up) if metric == "l2" else up


def answer(
    shards: list[TrainShard], bounds: ItemBounds, queries: np.ndarray, cells: np.ndarray, limit: np.ndarray, k: int,
    cfg: CTConfig, lower: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """The k best rows of an item's groups (``shards[g]``: group g's rows) for queries (m, k) of cells ``cells``
    (m,), each unit searched only where its bound can reach the query's k-th distance so far (``limit`` (m,),
    inf = none): ``(dist (m, k), ids (m, k), searches)``, ``searches`` in whole-item units (a query searching
    a group of a tenth of the item's rows on one side counts 0.1). ``lower``: ``bounds.lower(queries, cells)``.

    Each query first searches its :data:`FIRST_RANKS` most promising units, one rank at a time; then every other
    unit, in the order of its mean bound, answers the queries its bound can still serve, the limits tightening
    after each. Every row left out is farther than ``limit`` or than k rows of the lists.
    """
    m, sides, metric = len(queries), bounds.sides(), cfg.metric
    if m == 0 or k == 0:
        return np.full((m, k), np.inf), np.full((m, k), -1, dtype=np.int64), 0.0
    low = (bounds.lower(queries, cells) if lower is None else lower).reshape(m, -1)  # (m, G·sides), unit g·S + s
    units = low.shape[1]
    sizes = np.array([len(s.train_ids) for s in shards], np.float64)
    share = np.repeat(sizes / max(sizes.sum(), 1.0), len(sides))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    done = np.zeros((m, units), dtype=bool)
    limit = np.asarray(limit, np.float64).copy()
    tol = _tolerance(queries, max(s.sqnorm_max for s in shards), metric)
    xq = prepare(queries, metric)
    pool = _Pool(m, k + cfg.candidates, dedup=metric == "cosine_abs")
    searches = 0.0

    def run(u: int, sel: np.ndarray) -> None:
        nonlocal searches
        g, s = divmod(u, len(sides))
        shard = shards[g]
        n = len(shard.train_ids)
        c = min(k + cfg.candidates, n)
        raw, cand = search_chunked(shard.index(), xq[sel] if sides[s] == 1 else -xq[sel], c)
        score = raw.astype(np.float64) if metric == "l2" else 1.0 - raw.astype(np.float64)
        unit_floor = score[:, -1] if c < n else np.full(len(sel), np.inf)  # every non-candidate scores ≥ this
        miss = (cand < 0) | ~(np.abs(raw) < FLOAT32_MAX)  # float32 overflow (l2 beyond ~1.8e19): no score
        if miss.any():
            score, cand = np.where(miss, np.inf, score), np.where(miss, -1, cand)
            pool.broken[sel] |= miss.any(axis=1)  # scanned in float64 at the end
        pool.add(sel, score, np.where(cand >= 0, cand + offsets[g], -1), unit_floor)
        done[sel, u] = True
        limit[sel] = np.minimum(limit[sel], _upper(pool.kth(k, sel), tol[sel], metric))
        searches += len(sel) * share[u]

    with faiss_scope():
        order = np.argsort(low, axis=1, kind="stable")
        for rank in range(min(FIRST_RANKS, units)):
            best = order[:, rank]
            ok = ~(low[np.arange(m), best] > limit)
            for u in np.unique(best[ok]).tolist():
                run(u, np.flatnonzero(ok & (best == u)))
        for u in np.argsort(np.where(np.isfinite(low), low, 0.0).mean(axis=0), kind="stable").tolist():
            sel = np.flatnonzero(~done[:, u] & ~(low[:, u] > limit))
            if len(sel):
                run(u, sel)
    dist, ids = _rerank(shards, queries, pool, tol, k, metric)
    return dist, ids, searches


def _rerank(
    shards: list[TrainShard], queries: np.ndarray, pool: _Pool, tol: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The pools' exact lists (m, k): rows within 2τ of the k-th float32 score re-ranked in float64, ordered by
    (distance, id); queries whose exact k-th score is not below ``floor − τ`` scanned exhaustively."""
    train = np.concatenate([s.train for s in shards])
    norms = np.concatenate([s.norms for s in shards])
    train_ids = np.concatenate([s.train_ids for s in shards])
    kth = pool.kth(k)
    rr, cc = np.nonzero((pool.pos >= 0) & np.isfinite(pool.score) & (pool.score <= (kth + 2.0 * tol)[:, None]))
    t = pool.pos[rr, cc]
    exact = np.full(pool.score.shape, np.inf)
    qn = None if metric == "l2" else np.sqrt(_rowdot(queries, queries))
    for lo in range(0, len(rr), RERANK_PAIRS):  # blocks of pairs: the gathered rows stay in the cache
        r, c, tt = rr[lo : lo + RERANK_PAIRS], cc[lo : lo + RERANK_PAIRS], t[lo : lo + RERANK_PAIRS]
        exact[r, c] = _scores(queries[r], train[tt], metric, norms[tt], None if qn is None else qn[r])
    kth_exact = np.partition(exact, k - 1, axis=1)[:, k - 1]
    doubtful = np.flatnonzero((np.isfinite(pool.floor) & ~(kth_exact < pool.floor - tol)) | pool.broken)
    ids = np.where(pool.pos >= 0, train_ids[np.maximum(pool.pos, 0)], -1)
    dist, ids = _lex_topk(np.sqrt(exact) if metric == "l2" else exact, ids, k)  # ordered as reported
    for lo in range(0, len(doubtful), 256):
        sel = doubtful[lo : lo + 256]
        parts = [exhaustive_topk(shard, queries[sel], min(k, len(shard.train_ids))) for shard in shards]
        dist[sel], ids[sel] = merge_topk(parts, len(sel), k)
    return dist, np.where(np.isinf(dist), -1, ids)


def item_topk(z: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int, cfg: CTConfig):
    """(dist (q, k), ids (q, k)) of one item's rows ``z`` (global ids ``rows``) as one group, exact float64."""
    z = np.asarray(z, np.float64)
    queries = np.asarray(queries, np.float64)
    if len(z) == 0:
        return np.full((len(queries), k), np.inf), np.full((len(queries), k), -1, dtype=np.int64)
    shard = TrainShard.build(z, rows, cfg.metric)
    bounds = ItemBounds.build(z, cfg.metric, z.mean(axis=0, keepdims=True), 0)
    cells = np.zeros(len(queries), dtype=np.int64)
    dist, ids, _ = answer([shard], bounds, queries, cells, np.full(len(queries), np.inf), k, cfg)
    return dist, ids
