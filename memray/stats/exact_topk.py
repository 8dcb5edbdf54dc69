"""Exact top-k of queries over one search item's training rows (FAISS float32 proposes, float64 decides).

Per item FAISS (flat, float32) proposes ``k + candidates`` rows per query (for 1 − |cos| also for −q), re-ranked with
exact float64 distances; a query whose list the float32 error bound does not prove complete (near-duplicate rows:
the copies) is scanned exhaustively in float64. Lists are ordered by (distance, id), so merged lists
(:func:`merge_topk`) depend only on the data, not on how rows are grouped into items.

:func:`answer` searches only where an item's lower bounds (:class:`memray.stats.bounds.ItemBounds`) can beat a
query's current k-th distance (``limit``): a row it leaves out is provably farther than k rows already found, so
the merged lists are those of the unpruned search, bit for bit. An item's rows are split into groups of nearby rows
(:func:`memray.stats.bounds.split_rows`), each with its own bounds. For 1 − |cos| the two signs are searched as
separate cosine searches of q and −q (rows with q̂·t̂ ≥ 0 from the first, < 0 from the second: their cosine distance
is then exactly their 1 − |cos|), each only where its own bound can win.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from memray.stats.bounds import ItemBounds
from memray.stats.config import CTConfig
from memray.stats.faiss_backend import faiss_scope
from memray.stats.index import TrainShard, _rowdot, _scores, _tolerance, prepare, search_chunked

BATCH_BYTES = 128 * 1024**2  # memory bound of one query batch's candidate rows (float64)
EXHAUSTIVE_BYTES = 32 * 1024**2  # memory bound of one block of the exhaustive float64 scan


def _lex_topk(s: np.ndarray, tid: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest (score, id) pairs of (q, c) arrays, ordered by score then id."""
    order = np.lexsort((tid, s), axis=1)[:, :kk]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(tid, order, axis=1)


def _exhaustive_topk(shard: TrainShard, queries: np.ndarray, kk: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 top-kk search scores of a few queries over all of a shard's rows (blocks of rows)."""
    n, dim = shard.train.shape
    best_s = np.full((len(queries), 0), np.inf)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    step = max(1, EXHAUSTIVE_BYTES // max(1, 8 * dim * len(queries)))
    for lo in range(0, n, step):
        t = shard.train[lo : lo + step]
        s = _scores(queries[:, None, :], t[None, :, :], metric, shard.norms[lo : lo + step][None, :])
        ids = np.broadcast_to(shard.train_ids[lo : lo + step], s.shape)
        best_s, best_i = _lex_topk(np.hstack([best_s, s]), np.hstack([best_i, ids]), kk)
    return best_s, best_i


def _item_topk(z: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int, cfg: CTConfig):
    """(dist (q, kk), ids (q, kk)) of one item's rows, kk = min(k, rows): exact float64 distances."""
    return _shard_topk(TrainShard.build(z, rows, cfg.metric), queries, k, cfg)


def _shard_topk(shard: TrainShard, queries: np.ndarray, k: int, cfg: CTConfig, metric: str | None = None):
    """:func:`_item_topk` on a prepared shard (``metric``: ``cfg.metric`` unless given; the shard's vectors serve
    ``cosine`` and ``cosine_abs`` alike).

    FAISS (float32) proposes candidates; each query's k-th exact score is compared with the bound every
    non-candidate row must exceed (the last candidate's float32 score minus the float32 error bound of
    :func:`memray.stats.index._tolerance`); queries where it does not prove the list complete (near-duplicate
    training rows, large norms) are searched exhaustively in float64.
    """
    metric = metric or cfg.metric
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
            xq = prepare(qb, metric)
            raw, cand = search_chunked(shard.index(), xq, c)
            raw = raw.astype(np.float64)
            if metric == "l2":
                approx, bound = raw, raw[:, -1]  # squared L2: every non-candidate row scores at least bound
            elif metric == "cosine":
                approx, bound = 1.0 - raw, 1.0 - raw[:, -1]
            else:  # 1 − |cos|: candidates of q and of −q (PCA-centred rows: both signs occur)
                raw2, cand2 = search_chunked(shard.index(), -xq, c)
                raw = np.hstack([raw, raw2.astype(np.float64)])
                approx, bound = 1.0 - np.abs(raw), 1.0 - np.maximum(raw[:, c - 1], raw[:, -1])
                cand = np.hstack([cand, cand2])  # |q̂·t̂| is the same in both lists
            tol = _tolerance(qb, shard.sqnorm_max, metric)
            # a row found for q and for −q counts once (one search: FAISS lists each row at most once)
            first = _first_seen(cand) if metric == "cosine_abs" else cand >= 0
            approx = np.where(first, approx, np.inf)
            kth = np.partition(approx, kk - 1, axis=1)[:, kk - 1]
            # only candidates within 2·tol of the k-th float32 score can make the exact top k: re-rank those
            rr, cc = np.nonzero(first & (approx <= (kth + 2.0 * tol)[:, None]))
            t = cand[rr, cc]
            exact = np.full(cand.shape, np.inf)
            qn = None if metric == "l2" else np.sqrt(_rowdot(qb, qb))[rr]  # once per query, not per candidate
            exact[rr, cc] = _scores(qb[rr], shard.train[t], metric, shard.norms[t], qn)
            bs, bi = _lex_topk(exact, shard.train_ids[cand], kk)
            dist[start : start + len(qb)], ids[start : start + len(qb)] = bs, bi
            if c < n:
                doubtful.append(start + np.flatnonzero(~(bs[:, -1] < bound - tol)))
    todo = np.concatenate(doubtful) if doubtful else np.zeros(0, dtype=np.int64)
    for lo in range(0, len(todo), 256):
        sel = todo[lo : lo + 256]
        dist[sel], ids[sel] = _exhaustive_topk(shard, queries[sel], kk, metric)
    if metric == "l2":
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


def _side_topk(shard: TrainShard, queries: np.ndarray, side: int, k: int, cfg: CTConfig):
    """Top-k of ``side``·q (side ±1): for 1 − |cos| a cosine search whose rows on the other side (q̂·t̂ < 0 for
    side 1, ≥ 0 for side −1) are dropped ((inf, −1)); the kept distances equal their 1 − |cos| bit for bit."""
    if cfg.metric != "cosine_abs":
        return _shard_topk(shard, queries, k, cfg)
    dist, ids = _shard_topk(shard, side * queries, k, cfg, metric="cosine")
    other = dist > 1.0 if side == 1 else dist >= 1.0
    return np.where(other, np.inf, dist), np.where(other, -1, ids)


FIRST_RANKS = 1  # each query's most promising (group, side) units searched first, one rank at a time


def answer(
    shards: list[TrainShard], bounds: ItemBounds, queries: np.ndarray, cells: np.ndarray, limit: np.ndarray, k: int,
    cfg: CTConfig, lower: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """The k best rows of an item's groups (``shards[g]``: group g's rows) for queries (m, k) of cells ``cells``
    (m,), each group and side searched only where its bound can reach the query's k-th distance so far (``limit``
    (m,), inf = none): ``(dist (m, k), ids (m, k), searches)``, ``searches`` in whole-item units (a query searching
    a group of a tenth of the item's rows on one side counts 0.1). ``lower``: ``bounds.lower(queries, cells)``.

    A unit is a (group, side). Each query first searches its :data:`FIRST_RANKS` most promising units, one rank at
    a time; then every other unit, in the order of its mean bound, answers the queries its bound can still serve,
    the limits tightening after each. Every row left out is farther than ``limit`` or than k rows of the lists.
    """
    m, sides = len(queries), bounds.sides()
    dist, ids = np.full((m, k), np.inf), np.full((m, k), -1, dtype=np.int64)
    low = (bounds.lower(queries, cells) if lower is None else lower).reshape(m, -1)  # (m, G·sides), unit g·S + s
    units = low.shape[1]
    sizes = np.array([len(s.train_ids) for s in shards], np.float64)
    share = np.repeat(sizes / max(sizes.sum(), 1.0), len(sides))
    done = np.zeros((m, units), dtype=bool)
    limit = np.asarray(limit, np.float64).copy()
    searches = 0.0

    def run(u: int, sel: np.ndarray) -> None:
        nonlocal searches
        g, s = divmod(u, len(sides))
        d, i = _side_topk(shards[g], queries[sel], sides[s], k, cfg)
        dist[sel], ids[sel] = merge_topk([(dist[sel], ids[sel]), (d, i)], len(sel), k)
        done[sel, u] = True
        limit[sel] = np.minimum(limit[sel], dist[sel, -1])
        searches += len(sel) * share[u]

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
    return dist, ids, searches
