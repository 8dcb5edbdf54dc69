"""Exact nearest training neighbour within a cell: flat FAISS shards, float64 re-rank, element-wise min merge.

Each (cell, shard) work item builds a flat FAISS index over a contiguous row range of the cell's training
rows, takes each query's top ``candidates`` in float32, and re-ranks them with exact float64 distances. A
query whose float64 winner is not provably better than every non-candidate (the float32 scores carry a known
error bound, see :func:`_tolerance`) is searched exhaustively in float64. Ties go to the smallest global id.
Results therefore depend only on the data: not on sharding, batching, FAISS' BLAS path or thread count.

Metrics (reported distances): ``l2`` = Euclidean (not squared); ``cosine`` = 1 − cos; ``cosine_abs`` = 1 − |cos|
(He et al.). A zero vector has cos = 0 with everything (distance 1). For ``cosine_abs`` the top |cos| is the
union of the top cos for q and for −q; the −q search is skipped for queries whose best candidate is provably
closer than every row can be on the negative side (bound from the shard's mean direction, see :class:`TrainShard`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from memray.stats.config import METRICS
from memray.stats.faiss_backend import faiss, faiss_scope, to_gpu

log = logging.getLogger(__name__)

EPS32 = float(np.finfo(np.float32).eps)
EXHAUSTIVE_BYTES = 32 * 1024**2  # memory bound of one block of the exhaustive float64 scan


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Float32 C-contiguous vectors for FAISS; unit-normalised (in float64) for the cosine metrics."""
    _check_metric(metric)
    x = np.asarray(x, dtype=np.float64)
    if metric != "l2":
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        x = x / np.where(norms > 0, norms, 1.0)[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


ROWDOT_ROWS = 4096  # rows per block of a long (n, k) row-dot: its temporaries stay in the cache (speed only)
SEARCH_PAIRS = 65536  # (query, row) scores per FAISS call: its score block stays in the L2 cache (speed only)


def search_chunked(index, xq: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(xq, c)`` in chunks of at most :data:`SEARCH_PAIRS` / ``index.ntotal`` queries (at least 32).

    The same results as one call (each query's list depends only on that query); FAISS' BLAS path is about twice
    as fast per score when its block of scores fits the cache (a few hundred rows: the groups of
    :func:`memray.stats.bounds.split_rows`).
    """
    step = max(32, SEARCH_PAIRS // max(1, int(getattr(index, "ntotal", 1))))
    if len(xq) <= step:
        return index.search(xq, c)
    raw, cand = np.empty((len(xq), c), np.float32), np.empty((len(xq), c), np.int64)
    for lo in range(0, len(xq), step):
        raw[lo : lo + step], cand[lo : lo + step] = index.search(xq[lo : lo + step], c)
    return raw, cand


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_i a[..., i]·b[..., i] by a fixed pairwise tree (halves added elementwise, zero-padded to a power of two), so
    each pair's value is the same in any batch shape (long (n, k) inputs go in blocks of :data:`ROWDOT_ROWS` rows;
    ``np.einsum``/``np.sum`` are faster but may pick their summation order from the array strides)."""
    if a.ndim == 2 and a.shape == b.shape and len(a) > ROWDOT_ROWS:
        out = np.empty(len(a), np.result_type(a, b))
        for lo in range(0, len(a), ROWDOT_ROWS):
            out[lo : lo + ROWDOT_ROWS] = _rowdot(a[lo : lo + ROWDOT_ROWS], b[lo : lo + ROWDOT_ROWS])
        return out
    p = a * b
    width = p.shape[-1]
    if width == 0:
        return np.zeros(p.shape[:-1])
    full = 1 << (width - 1).bit_length()
    if full != width:  # adding 0.0 is exact: the padded tree sums the same terms in the same order
        p = np.concatenate([p, np.zeros((*p.shape[:-1], full - width))], axis=-1)
    while full > 1:
        full //= 2
        p = p[..., :full] + p[..., full:]
    return p[..., 0]


def _scores(
    q: np.ndarray, t: np.ndarray, metric: str, t_norm: np.ndarray | None = None, q_norm: np.ndarray | None = None
) -> np.ndarray:
    """Exact float64 search scores of broadcastable (..., k) rows: squared L2, 1 − cos or 1 − |cos|.

    ``t_norm`` / ``q_norm``: ``sqrt(_rowdot(t, t))`` / ``sqrt(_rowdot(q, q))`` when already known (the same values,
    computed once per shard or query batch).
    """
    if metric == "l2":
        diff = q - t
        return _rowdot(diff, diff)
    qn = np.sqrt(_rowdot(q, q)) if q_norm is None else q_norm
    den = qn * (np.sqrt(_rowdot(t, t)) if t_norm is None else t_norm)
    cos = np.clip(np.divide(_rowdot(q, t), den, out=np.zeros_like(den), where=den > 0), -1.0, 1.0)
    return 1.0 - (np.abs(cos) if metric == "cosine_abs" else cos)


def distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise exact float64 distance between (n, k) arrays (Euclidean, 1 − cos or 1 − |cos|) -> (n,)."""
    _check_metric(metric)
    s = _scores(np.asarray(a, np.float64), np.asarray(b, np.float64), metric)
    return np.sqrt(s) if metric == "l2" else s


def _tolerance(q: np.ndarray, t_sqnorm_max: float, metric: str) -> np.ndarray:
    """Bound on |FAISS float32 score − exact float64 score| per query, with a factor 2 of slack.

    Inputs are rounded to float32 (relative eps/2 per entry) and a k-term float32 dot product errs by at most
    k·eps·Σ|a_i b_i|; for L2 FAISS evaluates ‖q‖² + ‖t‖² − 2 q·t, so the bound scales with ‖q‖² + ‖t‖².
    """
    k = q.shape[1]
    if metric == "l2":
        return 2.0 * (2 * k + 8) * EPS32 * (np.einsum("ij,ij->i", q, q) + t_sqnorm_max)
    return np.full(len(q), 2.0 * (k + 4) * EPS32)


def _lex_topk(s: np.ndarray, tid: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest (score, id) pairs of (q, c) arrays, ordered by score then id."""
    order = np.lexsort((tid, s), axis=1)[:, :kk]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(tid, order, axis=1)


def exhaustive_topk(shard: TrainShard, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 scan of a shard's rows for a few queries -> top-kk (reported distance, id) lists, ranked as
    reported (``l2``: after the square root, distinct squares can share a root), ties to the smaller id."""
    n, dim = shard.train.shape
    best_s, best_i = np.full((len(queries), 0), np.inf), np.zeros((len(queries), 0), dtype=np.int64)
    step = max(1, EXHAUSTIVE_BYTES // max(1, 8 * dim * len(queries)))
    for lo in range(0, n, step):
        t = shard.train[lo : lo + step]
        s = _scores(queries[:, None, :], t[None, :, :], shard.metric, shard.norms[lo : lo + step][None, :])
        s = np.sqrt(s) if shard.metric == "l2" else s
        ids = np.broadcast_to(shard.train_ids[lo : lo + step], s.shape)
        best_s, best_i = _lex_topk(np.hstack([best_s, s]), np.hstack([best_i, ids]), kk)
    return best_s, np.where(np.isinf(best_s), -1, best_i)


@dataclass(frozen=True, eq=False)
class TrainShard:
    """One (cell, shard) row range of the projected training set, prepared once and searched many times.

    ``train`` (n_s, k) float64 rows, ``train_ids`` (n_s,) int64 global ids, ``vectors`` (n_s, k) float32 as
    FAISS sees them (:func:`prepare`), ``norms`` (n_s,) float64 exact row norms, ``sqnorm_max`` the largest
    squared row norm (error bound of the L2 search). Cosine metrics: ``center`` (k,) float64 mean of the unit
    rows and ``radius`` the largest distance of a unit row from it, so −q̂·t̂ ≤ −q̂·center + radius for every
    row (Cauchy-Schwarz). The FAISS index is built on first use and kept, but never pickled.
    """

    cell: int
    shard: int
    metric: str
    train: np.ndarray
    train_ids: np.ndarray
    vectors: np.ndarray
    norms: np.ndarray
    sqnorm_max: float
    center: np.ndarray | None = None
    radius: float = np.inf
    _index: list = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, train: np.ndarray, train_ids: np.ndarray, metric: str, cell: int = -1, shard: int = 0):
        """Prepare a shard from float64 rows (n_s, k) and their global int64 ids."""
        _check_metric(metric)
        train = np.ascontiguousarray(train, np.float64)
        sq = _rowdot(train, train) if len(train) else np.zeros(0)
        ids, norms = np.asarray(train_ids, np.int64), np.sqrt(sq)
        center, radius, vectors = None, np.inf, prepare(train, metric)
        if metric != "l2" and len(train):
            center = vectors.mean(axis=0, dtype=np.float64)  # of the unit rows as rounded to float32
            off = vectors - center
            radius = float(np.sqrt(np.einsum("ij,ij->i", off, off).max())) + 4.0 * EPS32  # + that rounding
        return cls(cell, shard, metric, train, ids, vectors, norms, float(sq.max(initial=0.0)), center, radius)

    def index(self):
        """The flat FAISS index over ``vectors`` (L2 or inner product), built once per process (GPU if present)."""
        if not self._index:
            index = (
                faiss.IndexFlatL2(self.train.shape[1])
                if self.metric == "l2"
                else faiss.IndexFlatIP(self.train.shape[1])
            )
            index = to_gpu(index)  # on the task's GPU when it has one (faiss-gpu); CPU otherwise
            index.add(self.vectors)
            self._index.append(index)
        return self._index[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": []}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def search_shard(
    train: np.ndarray,
    train_ids: np.ndarray,
    queries: np.ndarray,
    metric: str,
    candidates: int = 8,
    query_batch: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbour of each query among one shard's training rows.

    Args:
        train: (n, k) float64 projected training rows of one cell shard.
        train_ids: (n,) int64 global ids of those rows.
        queries: (q, k) float64 projected queries.
        metric: ``l2``, ``cosine`` or ``cosine_abs``.
        candidates: FAISS top-k per query re-ranked in float64.
        query_batch: queries per FAISS search call (memory only; results do not depend on it).

    Returns:
        (distance float64 (q,), global id int64 (q,)); ``(inf, -1)`` for every query if the shard is empty.
    """
    return search_prepared(TrainShard.build(train, train_ids, metric), queries, candidates, query_batch)


def search_prepared(
    shard: TrainShard, queries: np.ndarray, candidates: int = 8, query_batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search_shard` on a prepared :class:`TrainShard`."""
    queries = np.asarray(queries, np.float64)
    dist = np.full(len(queries), np.inf)
    ids = np.full(len(queries), -1, dtype=np.int64)
    if len(shard.train) == 0 or len(queries) == 0:
        return dist, ids
    uncertain: list[np.ndarray] = []
    with faiss_scope():
        for start in range(0, len(queries), query_batch):
            stop = min(start + query_batch, len(queries))
            dist[start:stop], ids[start:stop], doubt = _search_batch(shard, queries[start:stop], candidates)
            uncertain.append(start + np.flatnonzero(doubt))
    todo = np.concatenate(uncertain)
    dist = np.sqrt(dist) if shard.metric == "l2" else dist
    if len(todo):
        log.debug("exhaustive float64 re-check of %d/%d queries (near-ties)", len(todo), len(queries))
        d, i = exhaustive_topk(shard, queries[todo], 1)
        dist[todo], ids[todo] = d[:, 0], i[:, 0]
    return dist, ids


def _search_batch(shard: TrainShard, qb: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS top candidates of a query batch (q, k), exact re-rank -> (score, id, doubt) per query.

    Scores are search scores (squared L2, 1 − cos, 1 − |cos|); ``doubt`` flags queries whose winner is not proven
    better than every non-candidate row. Only candidates whose float32 score lies within 2·tol of the best one
    can win (|float32 − exact| ≤ tol), so only those are re-ranked.
    """
    metric, n = shard.metric, len(shard.train)
    c = min(candidates, n)
    xq = prepare(qb, metric)
    tol = _tolerance(qb, shard.sqnorm_max, metric)
    raw, cand = search_chunked(shard.index(), xq, c)
    raw = raw.astype(np.float64)
    bound = raw[:, -1] if metric == "l2" else 1.0 - raw[:, -1]  # no non-candidate scores below bound − tol
    approx = raw if metric == "l2" else 1.0 - (np.abs(raw) if metric == "cosine_abs" else raw)
    if metric == "cosine_abs" and c < n:
        # rows on the −q side score 1 − (−q̂·t̂) ≥ 1 + q̂·center − radius: search −q only where that could win
        qn = np.sqrt(np.einsum("ij,ij->i", qb, qb))
        floor = 1.0 + np.einsum("ij,j->i", qb / np.where(qn > 0, qn, 1.0)[:, None], shard.center) - shard.radius
        need = np.flatnonzero(~(approx.min(axis=1) + 2.0 * tol < floor))
        if len(need):
            raw2, cand2 = search_chunked(shard.index(), -xq[need], c)
            extra = np.full((len(qb), c), np.inf)
            extra[need] = 1.0 - np.abs(raw2.astype(np.float64))
            bound[need] = np.minimum(bound[need], 1.0 - raw2[:, -1].astype(np.float64))
            approx, cand = np.hstack([approx, extra]), np.hstack([cand, np.zeros_like(cand)])
            cand[need, c:] = cand2
    rows, cols = np.nonzero(approx <= approx.min(axis=1, keepdims=True) + 2.0 * tol[:, None])
    t = cand[rows, cols]
    s, tid = _scores(qb[rows], shard.train[t], metric, shard.norms[t]), shard.train_ids[t]
    key = np.sqrt(s) if metric == "l2" else s  # ranked as reported: distinct squares can share a root
    order = np.lexsort((tid, key, rows))  # per query: smallest distance, then smallest id
    head = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
    best, best_id = s[head], tid[head]
    doubt = ~(best < bound - tol) if c < n else np.zeros(len(qb), dtype=bool)
    return best, best_id, doubt


def merge_min(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise minimum over shard results; ties -> smallest id (independent of the order of ``parts``)."""
    if not parts:
        raise ValueError("merge_min needs at least one (distance, id) pair")
    d = np.stack([p[0] for p in parts], axis=1)
    i = np.stack([np.asarray(p[1], np.int64) for p in parts], axis=1)
    best, best_id = (a[:, 0] for a in _lex_topk(d, i, 1))
    return best, np.where(np.isinf(best), -1, best_id)
