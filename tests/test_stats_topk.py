"""Global top-k copy evidence against a dense brute-force search in the fitted space; test_quantile by hand."""

import numpy as np
import pytest

from memray.io import schema
from memray.stats.config import CTConfig
from memray.stats.copies import copies_frame, global_neighbours
from memray.stats.index import distance
from memray.stats.score import fit_layer
from memray.stats.topk import merge_topk, share_below


def _data(seed=0, n=600, d=12):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n, d)).astype(np.float32)
    test = rng.normal(size=(150, d)).astype(np.float32)
    gen = np.concatenate([train[:20] + 0.01 * rng.normal(size=(20, d)), rng.normal(size=(40, d))]).astype(np.float32)
    return train, test, gen


@pytest.mark.parametrize("metric", ["l2", "cosine_abs", "cosine"])
def test_global_topk_matches_brute_force(metric):
    train, test, gen = _data()
    cfg = CTConfig(mode="meehan", metric=metric, cells=4, pca_dim=8, kmeans_nredo=1, search_rows=97)  # many items
    ids = np.array([f"t{i}" for i in range(len(train))], dtype=object)
    fitted = fit_layer(1, train, ids, test, cfg)
    try:
        test_d1, found = global_neighbours(fitted, {"g": gen}, 5, map)
        tz, gz = fitted.space.project(test), fitted.space.project(gen)  # the queries as the tasks project them
        all_z = fitted.space.project(train)
        for q, (dist, rows) in ((gz, found["g"]), (tz, (test_d1[:, None], None))):
            dense = np.stack([distance(np.repeat(q[i : i + 1], len(all_z), 0), all_z, metric) for i in range(len(q))])
            order = np.argsort(dense, axis=1, kind="stable")
            np.testing.assert_allclose(
                dist, np.take_along_axis(dense, order, 1)[:, : dist.shape[1]], rtol=1e-9, atol=1e-12
            )
            if rows is not None:
                np.testing.assert_array_equal(rows, order[:, :5])
        frame = copies_frame(fitted, {"g": np.array([f"g{i}" for i in range(len(gen))])}, found, test_d1)
        assert list(frame.columns) == schema.COPIES_SCHEMA.names
        assert len(frame) == len(gen) * 5
        first = frame[frame[schema.RANK] == 1]
        assert (first[schema.TRAIN_ID].iloc[:20].to_numpy() == ids[:20]).all()  # the near-copies find their source
        assert (first[schema.TEST_QUANTILE].iloc[:20] == 0).all()  # closer than every test sample
    finally:
        fitted.close()


def test_topk_pads_when_train_is_small():
    d, i = merge_topk([(np.array([[0.5, 0.2]]), np.array([[7, 3]]))], 1, 3)
    np.testing.assert_array_equal(i, [[3, 7, -1]])
    assert d[0, 2] == np.inf


@pytest.mark.parametrize("metric", ["l2", "cosine_abs", "cosine"])
def test_item_smaller_than_k_lists_each_row_once(metric):
    """Three rows, k = 5: every row is a candidate of both signs' searches (1 − |cos|) but is listed once."""
    from memray.stats.exact_topk import item_topk

    train = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    queries = np.array([[1.0, 0.2], [-0.5, 1.0]])
    cfg = CTConfig(mode="meehan", metric=metric)
    dist, ids = item_topk(train, np.array([10, 11, 12]), queries, 5, cfg)
    dense = np.stack([distance(np.repeat(q[None], 3, 0), train, metric) for q in queries])
    order = np.lexsort((np.broadcast_to([10, 11, 12], dense.shape), dense), axis=1)
    np.testing.assert_array_equal(ids[:, :3], np.array([10, 11, 12])[order])
    np.testing.assert_array_equal(dist[:, :3], np.take_along_axis(dense, order, 1))
    assert (ids[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all()


def test_l2_ties_are_broken_on_the_reported_distance():
    """Two rows whose squared distances differ by one ulp but share their square root: the reported distances tie,
    so the smaller id comes first, as in the brute-force order (the exhaustive float64 scan ranks after the root)."""
    from memray.stats.exact_topk import item_topk

    q = np.array([[0.1257302210933933, -0.1321048632913019, 0.6404226504432821, 0.10490011715303971]])
    lo = [-0.5356693731611111, 0.3615950549094847, 1.3040000451301372, 0.947080963129242]
    hi = [-0.535669373161111, 0.36159505490948474, 1.3040000451301372, 0.9470809631292422]
    train = np.array([lo, hi, q[0] + 5])
    d = distance(np.repeat(q, 3, 0), train, "l2")
    assert d[0] == d[1]  # the case: equal reported distances
    for k in (1, 2):
        dist, ids = item_topk(train, np.array([1, 0, 2]), q, k, CTConfig(mode="meehan", metric="l2", candidates=1))
        assert ids[0].tolist() == [0, 1][:k] and dist[0, 0] == d[0]


def test_l2_beyond_float32_range_is_scanned_in_float64():
    """Squared distances above float32's range: FAISS returns no row for them; the search still lists each row once,
    in the exact order (one group and two groups)."""
    from memray.stats.bounds import ItemBounds
    from memray.stats.exact_topk import answer, item_topk
    from memray.stats.index import TrainShard

    train = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 3.0]]) * 1e20
    rows = np.array([10, 11, 12, 13])
    q = np.array([[-1.0, -1.0]]) * 1e20
    cfg = CTConfig(mode="meehan", metric="l2")
    dense = distance(np.repeat(q, 4, 0), train, "l2")
    want = rows[np.lexsort((rows, dense))][:3].tolist()
    assert item_topk(train, rows, q, 3, cfg)[1][0].tolist() == want
    lab = np.array([0, 0, 1, 1])
    shards = [TrainShard.build(train[lab == g], rows[lab == g], "l2") for g in (0, 1)]
    bounds = ItemBounds.build(train, "l2", train.mean(axis=0, keepdims=True), 0, lab)
    dist, ids, _ = answer(shards, bounds, q, np.zeros(1, np.int64), np.full(1, np.inf), 3, cfg)
    assert ids[0].tolist() == want
    np.testing.assert_array_equal(dist[0], np.sort(dense)[:3])


def test_merge_topk_ties_go_to_the_smaller_id_in_any_order():
    a = (np.array([[1.0, 2.0]]), np.array([[9, 4]]))
    b = (np.array([[1.0, 0.5]]), np.array([[2, 8]]))
    assert merge_topk([a, b], 1, 3)[1].tolist() == merge_topk([b, a], 1, 3)[1].tolist() == [[8, 2, 9]]


def test_test_quantile_by_hand():
    test_d1 = np.array([0.1, 0.2, 0.3, 0.4, np.inf])  # a test sample without a neighbour is left out
    np.testing.assert_allclose(share_below(test_d1, np.array([0.05, 0.2, 0.35, 1.0])), [0.0, 0.25, 0.75, 1.0])


@pytest.mark.parametrize("metric", ["l2", "cosine_abs", "cosine"])
def test_near_duplicate_training_rows_are_ranked_exactly(metric):
    """Many near-copies of one image at a large scale: float32 cannot order them; the exact fallback must."""
    from memray.stats.exact_topk import item_topk

    rng = np.random.default_rng(1)
    base = 30 * rng.normal(size=(5000, 16))
    dupes = base[0] + 1e-3 * rng.normal(size=(60, 16))
    train = np.concatenate([base, dupes])
    rows = np.arange(len(train), dtype=np.int64)[::-1].copy()  # ids need not follow positions
    queries = base[0] + 1e-3 * rng.normal(size=(50, 16))
    cfg = CTConfig(mode="meehan", metric=metric)
    dense = np.stack([distance(np.repeat(q[None], len(train), 0), train, metric) for q in queries])
    order = np.lexsort((np.broadcast_to(rows, dense.shape), dense), axis=1)[:, :5]
    dist, ids = item_topk(train, rows, queries, 5, cfg)
    np.testing.assert_array_equal(ids, rows[order])
    np.testing.assert_allclose(dist, np.take_along_axis(dense, order, 1), rtol=1e-9, atol=1e-15)
    halves = [item_topk(train[s], rows[s], queries, 5, cfg) for s in (slice(0, 2600), slice(2600, None))]
    assert merge_topk(halves, len(queries), 5)[1].tolist() == ids.tolist()  # the grouping into items does not matter


@pytest.mark.parametrize("metric", ["l2", "cosine_abs", "cosine"])
def test_near_duplicates_in_groups_smaller_than_the_candidate_lists(metric):
    """Every row of a group is a candidate (no group bounds its non-candidates): the near-copies pushed out of a
    query's pool of float32 candidates must still stop the float32 list from being taken as exact."""
    from memray.stats.bounds import ItemBounds
    from memray.stats.exact_topk import answer
    from memray.stats.index import TrainShard

    rng = np.random.default_rng(2)
    base = 30 * rng.normal(size=(600, 16))
    train = np.concatenate([base, base[0] + 1e-3 * rng.normal(size=(60, 16))])
    rows = rng.permutation(len(train)).astype(np.int64)
    queries = base[0] + 1e-3 * rng.normal(size=(20, 16))
    cfg = CTConfig(mode="meehan", metric=metric)
    labels = rng.permutation(len(train)) // 10  # groups of 10 rows, the near-copies spread over many of them
    shards = [TrainShard.build(train[labels == g], rows[labels == g], metric) for g in range(labels.max() + 1)]
    bounds = ItemBounds.build(train, metric, train.mean(axis=0, keepdims=True), 0, labels)
    cells, limit = np.zeros(len(queries), np.int64), np.full(len(queries), np.inf)
    dist, ids, _ = answer(shards, bounds, queries, cells, limit, 5, cfg)
    dense = np.stack([distance(np.repeat(q[None], len(train), 0), train, metric) for q in queries])
    order = np.lexsort((np.broadcast_to(rows, dense.shape), dense), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, rows[order])
    np.testing.assert_array_equal(dist, np.take_along_axis(dense, order, 1))


def _clustered(seed=3, d=8):
    """Separated clusters with exact ties (duplicate, doubled and negated training rows, a zero row) and queries
    far from their cell (between clusters, far out, a zero query, copies of training rows)."""
    rng = np.random.default_rng(seed)
    centres = 20 * rng.normal(size=(6, d))
    base = centres[rng.integers(0, 6, 500)] + rng.normal(size=(500, d))
    train = np.concatenate([base, base[:40], 2 * base[40:70], -base[70:100], np.zeros((1, d))]).astype(np.float32)
    between = (centres[rng.integers(0, 6, 40)] + centres[rng.integers(0, 6, 40)]) / 2 + rng.normal(size=(40, d))
    far = 5 * centres[rng.integers(0, 6, 20)] + 30 * rng.normal(size=(20, d))
    gen = np.concatenate([between, far, np.zeros((1, d)), base[:30], -base[100:110]]).astype(np.float32)
    test = (centres[rng.integers(0, 6, 120)] + rng.normal(size=(120, d))).astype(np.float32)
    return train, test, gen


def _round(metric, search_rows, cells=4):
    from memray.stats.engine import as_rows, project
    from memray.stats.search import load_item, plan_search
    from memray.stats.topk import merged_topk, topk_round

    train, test, gen = _clustered()
    cfg = CTConfig(mode="meehan", metric=metric, cells=cells, pca_dim=None, kmeans_nredo=1, search_rows=search_rows)
    fitted = fit_layer(1, train, None, test, cfg)
    eng = fitted.engine
    project(eng, [(None, eng.test_rows, "test"), ("g", as_rows(gen), "g")])
    blocks = eng.projected[None].blocks() + eng.projected["g"].blocks()
    lists = topk_round(eng.ws, eng.fit, eng.qws, blocks, 5, cfg)
    found = [merged_topk(eng.qws, b, lists, 5) for b in blocks]
    parts = [load_item(eng.ws, item) for item in plan_search(eng.fit.block_cells, cfg.search_rows)]
    tz, rows = np.concatenate([z for z, _ in parts]), np.concatenate([r for _, r in parts])
    queries = np.concatenate([test, gen]).astype(np.float64)  # no PCA: the projected rows are the features
    fitted.close()
    return lists, found, queries, tz, rows


@pytest.mark.parametrize("metric", ["l2", "cosine_abs", "cosine"])
@pytest.mark.parametrize("search_rows,group_rows", [(10_000, 512), (97, 512), (10_000, 12)])
def test_pruned_round_equals_brute_force_float64(metric, search_rows, group_rows, monkeypatch):
    """Far queries, exact ties (ordered by training row), zero rows, items of one or many groups: the pruned lists
    are the dense float64 ones."""
    monkeypatch.setattr("memray.stats.bounds.GROUP_ROWS", group_rows)
    _, found, queries, tz, rows = _round(metric, search_rows)
    dist = np.concatenate([d for d, _ in found])
    ids = np.concatenate([i for _, i in found])
    dense = np.stack([distance(np.repeat(q[None], len(tz), 0), tz, metric) for q in queries])
    order = np.lexsort((np.broadcast_to(rows, dense.shape), dense), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, rows[order])
    np.testing.assert_array_equal(dist, np.take_along_axis(dense, order, 1))  # the same float64 values, bit for bit
    assert (dist[:, 0] == dist[:, 1]).sum() >= 30  # the ties were there to be ordered


@pytest.mark.parametrize("metric", ["l2", "cosine_abs"])
def test_round_skips_items_that_cannot_beat_the_kth_distance(metric):
    lists, _, queries, _, _ = _round(metric, 10_000, cells=6)
    full = len(queries) * lists.items * (2 if metric == "cosine_abs" else 1)
    assert lists.items == 6
    assert lists.searches < 0.6 * full  # separated clusters: most (query, item) pairs are provably too far


@pytest.mark.parametrize("metric", ["l2", "cosine_abs"])
def test_groups_within_an_item_prune_more_rows(metric, monkeypatch):
    """Splitting each item into groups of nearby rows leaves out more of the item's rows: the same lists, less work."""
    whole, found, _, _, _ = _round(metric, 10_000, cells=2)
    monkeypatch.setattr("memray.stats.bounds.GROUP_ROWS", 12)
    split, found_split, _, _, _ = _round(metric, 10_000, cells=2)
    assert split.searches < 0.5 * whole.searches
    for (d, i), (d2, i2) in zip(found, found_split, strict=True):
        np.testing.assert_array_equal(i, i2)
        np.testing.assert_array_equal(d, d2)


def test_split_rows_groups_nearby_rows_deterministically():
    from memray.stats.bounds import split_rows

    rng = np.random.default_rng(0)
    centres = 10 * rng.normal(size=(4, 6))
    pick = rng.integers(0, 4, 400)
    z = centres[pick] + 0.1 * rng.normal(size=(400, 6))
    lab = split_rows(z, "l2", target=100)
    assert lab.tolist() == split_rows(z, "l2", target=100).tolist() and lab.max() < 4
    spread = sum(((z[lab == g] - z[lab == g].mean(0)) ** 2).sum() for g in np.unique(lab))
    assert spread < 0.5 * ((z - z.mean(0)) ** 2).sum()  # groups of nearby rows, not a split by position
    assert split_rows(z, "cosine", target=1000).tolist() == [0] * 400
