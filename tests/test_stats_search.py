"""memray.stats.search: plans of search items, exact in-cell search over workspace blocks vs brute force."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from reference_ct import dense_distances

from memray.io.rows import ArrayRows
from memray.stats.config import CTConfig
from memray.stats.fit import cell_key, fit_space
from memray.stats.search import SearchItem, plan_search, run_search, search_all
from memray.stats.workspace import Workspace, temporary_workspace

METRICS = ["l2", "cosine", "cosine_abs"]


@dataclasses.dataclass
class Fit:
    block_cells: np.ndarray


def write_cells(ws: Workspace, z: np.ndarray, cells: np.ndarray, n_cells: int, block: int) -> Fit:
    """Write ``cells/cell_c/block_g`` entries (rows of block g in cell c, global order) -> per-block counts."""
    n_blocks = -(-len(z) // block)
    counts = np.zeros((n_blocks, n_cells), np.int64)
    for g in range(n_blocks):
        rows = np.arange(g * block, min((g + 1) * block, len(z)), dtype=np.int64)
        for c in range(n_cells):
            mine = rows[cells[rows] == c]
            counts[g, c] = len(mine)
            if len(mine):
                ws.put(cell_key(c, g), z=z[mine], rows=mine)
    return Fit(counts)


def brute_force(train, train_cells, queries, query_cells, metric):
    """Dense float64 distances to every training row of the query's cell; ties -> smallest id; none -> (inf, -1)."""
    d = dense_distances(queries, train, metric)
    d = np.where(query_cells[:, None] == train_cells[None, :], d, np.inf)
    best = d.min(axis=1)
    ids = np.array(
        [np.flatnonzero(np.isclose(d[r], best[r], rtol=0, atol=1e-12)).min() if np.isfinite(best[r]) else -1
         for r in range(len(d))]
    )  # fmt: skip
    return best, ids


@pytest.fixture(scope="module")
def data():
    """Clustered 12-d features, PCA to 6 dims + 4 cells by today's fit; duplicated rows make exact ties."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=6.0, size=(4, 12))
    train = (centers[rng.integers(0, 4, 700)] + rng.normal(size=(700, 12))).astype(np.float32)
    cfg = CTConfig(mode="meehan", cells=4, pca_dim=6, kmeans_nredo=2)
    with temporary_workspace() as ws:
        space = fit_space(ArrayRows(train), cfg, ws).space
    z = space.project(train)
    z[650:] = z[[3, 100, 250, 400, 555] * 10]  # exact duplicates in later blocks: ties go to the smaller row
    cells = space.assign(z)
    q = space.project((centers[rng.integers(0, 4, 300)] + rng.normal(size=(300, 12))).astype(np.float32))
    q[:20] = z[rng.integers(0, 700, 20)]  # queries on training rows (distance 0)
    q[20:25] = z[[3, 100, 250, 400, 555]]  # on a duplicated row
    q[25] = 0.0  # a zero vector (cosine: distance 1 to everything)
    q_cells = space.assign(q)
    q_cells[26:30] = 4  # a cell without training rows
    return z, cells, q, q_cells


def test_plan_search_groups_consecutive_blocks_per_cell():
    counts = np.array([[3, 0], [2, 5], [0, 1], [4, 0], [9, 2]])
    assert plan_search(counts, 5) == [
        SearchItem(0, (0, 1)), SearchItem(0, (3,)), SearchItem(0, (4,)), SearchItem(1, (1,)), SearchItem(1, (2, 4)),
    ]  # fmt: skip
    assert plan_search(counts, 100) == [SearchItem(0, (0, 1, 3, 4)), SearchItem(1, (1, 2, 4))]
    assert plan_search(counts, 1) == [SearchItem(c, (g,)) for c in (0, 1) for g in np.flatnonzero(counts[:, c])]
    assert plan_search(np.zeros((3, 2), np.int64), 10) == []
    with pytest.raises(ValueError):
        plan_search(counts, 0)
    item = SearchItem(1, (2, 4))
    assert pickle.loads(pickle.dumps(item)) == item


@pytest.mark.parametrize("metric", METRICS)
def test_search_all_equals_brute_force_for_any_grouping_and_order(tmp_path, data, metric):
    z, cells, q, q_cells = data
    ref_d, ref_i = brute_force(z, cells, q, q_cells, metric)
    cfg = CTConfig(mode="meehan", metric=metric, cells=4, candidates=2, query_batch=37)
    results = []
    for block in (64, 250):
        ws = Workspace(str(tmp_path / f"b{block}"))
        fit = write_cells(ws, z, cells, 4, block)
        for rows in (1, 100, 10**6):
            for mapper in (map, lambda f, xs: reversed([f(x) for x in reversed(list(xs))])):
                results.append(search_all(ws, fit, q, q_cells, dataclasses.replace(cfg, search_rows=rows), mapper))
    d, i = results[0]
    np.testing.assert_allclose(d, ref_d, rtol=0, atol=1e-10)
    assert np.array_equal(i, ref_i)
    assert np.isinf(d[26:30]).all() and (i[26:30] == -1).all()
    assert (d[:25] <= 1e-12).all() and set(i[20:25].tolist()) == {3, 100, 250, 400, 555}
    for d2, i2 in results[1:]:  # bit-identical whatever the blocks, their grouping and the result order
        assert d2.tobytes() == d.tobytes() and np.array_equal(i2, i)


def test_run_search_one_item_returns_its_query_rows(tmp_path, data):
    z, cells, q, q_cells = data
    ws = Workspace(str(tmp_path))
    fit = write_cells(ws, z, cells, 4, 100)
    item = plan_search(fit.block_cells, 150)[1]
    mine = np.flatnonzero(q_cells == item.cell)
    rows, d, i = run_search(ws, item, q[mine], mine, CTConfig(mode="meehan", cells=4))
    train = np.concatenate([np.arange(g * 100, (g + 1) * 100) for g in item.blocks])
    train = train[cells[train] == item.cell]
    ref_d, ref_j = brute_force(z[train], cells[train], q[mine], q_cells[mine], "l2")
    assert np.array_equal(rows, mine) and np.array_equal(i, train[ref_j])
    np.testing.assert_allclose(d, ref_d, rtol=0, atol=1e-10)
