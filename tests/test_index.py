"""Exact nearest neighbours: brute-force equality, bitwise independence of sharding/batching, tie rules."""

from __future__ import annotations

import pickle

import faiss
import numpy as np
import pytest
from reference_ct import dense_distances

from memray.stats.index import (
    TrainShard,
    distance,
    merge_min,
    prepare,
    search_prepared,
    search_shard,
)

METRICS = ["l2", "cosine", "cosine_abs"]


def brute_force(train, train_ids, queries, metric):
    """Exact float64 nearest neighbour by the definition, written independently of memray."""
    d = dense_distances(queries, train, metric)
    best = d.min(axis=1)
    ids = np.array(
        [train_ids[np.flatnonzero(np.isclose(d[r], best[r], rtol=0, atol=1e-12))].min() for r in range(len(d))]
    )
    return best, ids


def test_distance_hand_cases():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    b = np.array([[3.0, 4.0], [0.0, 1.0], [-1.0, 0.0], [-3.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert distance(a[:1], b[:1], "l2").tolist() == [5.0]
    cos = distance(a, b, "cosine")
    assert cos[1:4].tolist() == [1.0, 2.0, 2.0] and cos[4] == 1.0  # zero vector: cos = 0 by convention
    assert cos[5] == pytest.approx(1 - 1 / np.sqrt(2), abs=1e-15)
    assert distance(a[1:4], b[1:4], "cosine_abs").tolist() == [1.0, 0.0, 0.0]
    assert np.allclose(np.linalg.norm(prepare(b[1:], "cosine"), axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        distance(a, b, "manhattan")


@pytest.mark.parametrize("metric", METRICS)
def test_search_shard_equals_brute_force_with_duplicates_and_antipodes(metric):
    rng = np.random.default_rng(7)
    train = rng.normal(size=(600, 12))
    train = np.vstack([train, np.repeat(train[5:6], 15, axis=0)])  # 16 copies of row 5: more than candidates
    train[100] = 0.0  # a zero vector
    ids = np.arange(len(train), dtype=np.int64)[::-1].copy() * 3  # global ids, decreasing with the row
    queries = rng.normal(size=(200, 12))
    queries[0] = train[5]  # hits 16 exact duplicates: the smallest global id must win
    queries[1] = -2.5 * train[9]  # |cos| = 1 with row 9
    d, i = search_shard(train, ids, queries, metric, candidates=4)
    bd, bi = brute_force(train, ids, queries, metric)
    np.testing.assert_allclose(d, bd, rtol=0, atol=1e-12)
    assert np.array_equal(i, bi)
    assert i[0] == ids[np.r_[5, 600:615]].min() == ids[614]
    if metric == "cosine_abs":
        assert i[1] == ids[9] and d[1] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_despite_float32_near_ties(metric):
    # 30 training points at almost the same distance from the query (relative gaps 1e-11, far below float32
    # resolution); the true nearest is the last row. FAISS' float32 top-4 cannot tell them apart, the float64
    # re-check must.
    rng = np.random.default_rng(11)
    q = rng.normal(size=(1, 16))
    dirs = rng.normal(size=(30, 16))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    if metric == "l2":
        train = q + dirs * (1.0 + 1e-11 * np.arange(30, 0, -1))[:, None]
    else:  # equal angles to q: rotate q by nearly the same small angle along orthogonal directions
        dirs -= (dirs @ q.T) * q / (q @ q.T)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        angle = 0.3 + 1e-9 * np.arange(30, 0, -1)
        train = np.cos(angle)[:, None] * q / np.linalg.norm(q) + np.sin(angle)[:, None] * dirs
    d, i = search_shard(train, np.arange(30), q, metric, candidates=4)
    assert i[0] == 29
    assert d[0] == distance(q, train[29:30], metric)[0]


@pytest.mark.parametrize("metric", METRICS)
def test_query_batch_independence_bitwise(metric):
    rng = np.random.default_rng(1)
    train, queries = rng.normal(size=(800, 10)), rng.normal(size=(301, 10))
    ref = search_shard(train, np.arange(800), queries, metric, query_batch=4096)
    for qb in (1, 7, 64, 300):
        d, i = search_shard(train, np.arange(800), queries, metric, query_batch=qb)
        assert d.tobytes() == ref[0].tobytes() and np.array_equal(i, ref[1])


def test_empty_shard_and_merge_min():
    d, i = search_shard(np.zeros((0, 4)), np.zeros(0, np.int64), np.ones((3, 4)), "l2")
    assert np.isinf(d).all() and (i == -1).all()
    a = (np.array([1.0, 2.0, np.inf, 0.5]), np.array([4, 9, -1, 8]))
    b = (np.array([1.0, 3.0, np.inf, 0.7]), np.array([2, 1, -1, 3]))
    c = (np.array([np.inf, 2.0, 5.0, 0.5]), np.array([-1, 7, 6, 9]))
    d, i = merge_min([a, b, c])
    assert d.tolist() == [1.0, 2.0, 5.0, 0.5] and i.tolist() == [2, 7, 6, 8]
    for parts in ([c, b, a], [b, c, a]):  # order-independent
        d2, i2 = merge_min(parts)
        assert d2.tolist() == d.tolist() and i2.tolist() == i.tolist()
    d, i = merge_min([(np.array([np.inf]), np.array([-1]))])
    assert i.tolist() == [-1]


def _cells_fixture(metric_seed=5):
    rng = np.random.default_rng(metric_seed)
    train = rng.normal(size=(1500, 8))
    queries = rng.normal(size=(400, 8))
    train_cells = rng.integers(0, 4, 1500)  # cell 4 has no training row
    query_cells = rng.integers(0, 5, 400)
    return train, train_cells, queries, query_cells


class CountingIndex:
    """Wraps a FAISS index and records the number of queries of each search call."""

    def __init__(self, index):
        self.index, self.calls = index, []

    def search(self, xq, k):
        self.calls.append(len(xq))
        return self.index.search(xq, k)


def test_cosine_abs_searches_minus_q_only_where_the_negative_side_can_win(monkeypatch):
    # Training rows cluster around direction u. Queries near u: every row's −q side is provably far (bound from
    # the shard's mean direction), so −q is not searched; queries near −u are nearest on the −q side.
    rng = np.random.default_rng(12)
    u = rng.normal(size=10)
    train = u + 0.3 * rng.normal(size=(500, 10))
    queries = np.vstack([u + 0.3 * rng.normal(size=(90, 10)), -u + 0.3 * rng.normal(size=(30, 10))])
    ids = np.arange(500, dtype=np.int64)
    shard = TrainShard.build(train, ids, "cosine_abs")
    spy = CountingIndex(shard.index())
    monkeypatch.setattr(TrainShard, "index", lambda self: spy)  # the searches go through the shard's index()
    d, i = search_prepared(shard, queries, candidates=4)
    assert spy.calls == [120, 30]  # q for all, −q only for the 30 queries near −u
    bd, bi = brute_force(train, ids, queries, "cosine_abs")
    np.testing.assert_allclose(d, bd, rtol=0, atol=1e-12)
    assert np.array_equal(i, bi)
    cos = (queries[90:] @ train[i[90:]].T).diagonal()
    assert (cos < 0).all()  # their nearest rows are anti-aligned


def test_prepared_shard_pickles_without_its_index_and_searches_the_same(monkeypatch):
    built = []
    real = faiss.IndexFlatIP
    monkeypatch.setattr(faiss, "IndexFlatIP", lambda d: built.append(d) or real(d))
    rng = np.random.default_rng(13)
    shard = TrainShard.build(rng.normal(size=(300, 6)), np.arange(300) + 5, "cosine_abs")
    unsearched = len(pickle.dumps(shard))
    queries = rng.normal(size=(40, 6))
    first = search_prepared(shard, queries)
    search_prepared(shard, queries[:7])
    assert built == [6]  # built on first use, kept for the next query set
    assert len(pickle.dumps(shard)) == unsearched  # the FAISS index (300 x 6 float32) is not in the pickle
    copy = pickle.loads(pickle.dumps(shard))
    assert copy.radius == shard.radius
    again = search_prepared(copy, queries)
    assert built == [6, 6]  # the copy builds its own
    assert first[0].tobytes() == again[0].tobytes() and np.array_equal(first[1], again[1])


def test_rowdot_is_the_same_in_blocks_and_in_any_batch_shape(monkeypatch):
    """Each pair's value is fixed by its own entries: long inputs in blocks, one row alone, float32 kept float32."""
    from memray.stats import index

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1000, 13)), rng.standard_normal((1000, 13))
    whole = index._rowdot(a, b)
    monkeypatch.setattr(index, "ROWDOT_ROWS", 64)
    blocks = index._rowdot(a, b)
    np.testing.assert_array_equal(blocks, whole)
    assert index._rowdot(a[7:8], b[7:8])[0] == whole[7]
    pairs = index._rowdot(a[:, None, :], b[None, :3, :])  # (1000, 3): every row of a with rows 0-2 of b
    np.testing.assert_array_equal(pairs[:3, 0], index._rowdot(a[:3], b[:1].repeat(3, 0)))
    np.testing.assert_allclose(whole, np.einsum("ij,ij->i", a, b), rtol=1e-12)
    assert index._rowdot(a.astype(np.float32), b.astype(np.float32)).dtype == np.float32


def test_l2_nearest_ties_on_the_reported_distance_go_to_the_smaller_id():
    """Squared distances one ulp apart with the same square root: a tie as reported, so the smaller id wins, in the
    float32 proposal's re-rank and in the exhaustive float64 scan alike."""
    q = np.array([[0.1257302210933933, -0.1321048632913019, 0.6404226504432821, 0.10490011715303971]])
    lo = [-0.5356693731611111, 0.3615950549094847, 1.3040000451301372, 0.947080963129242]
    hi = [-0.535669373161111, 0.36159505490948474, 1.3040000451301372, 0.9470809631292422]
    train = np.array([lo, hi, q[0] + 5])
    d = distance(np.repeat(q, 3, 0), train, "l2")
    assert d[0] == d[1]
    for candidates in (1, 3):  # 1: the exhaustive scan decides; 3: every row is a candidate
        dist, ids = search_shard(train, np.array([1, 0, 2]), q, "l2", candidates=candidates)
        assert ids.tolist() == [0] and dist[0] == d[0]
