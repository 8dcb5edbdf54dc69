"""memray.stats.kmeans: the hash seeding sample, exact objective parts, the empty-cell rule, and fit_space's
k-means against a straightforward single-array float64 Lloyd written here (same sample, same k-means++ init)."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile

import numpy as np
import pytest

from memray.io.rows import ArrayRows
from memray.stats import inner_threads, local_threads
from memray.stats.config import CTConfig
from memray.stats.fit import fit_space
from memray.stats.kmeans import (
    LloydPartial,
    assign_all,
    best_restart,
    canonical_order,
    exact_parts,
    lloyd,
    lloyd_stats,
    lloyd_update,
)
from memray.stats.seeding import kmeans_pp, restart_rng, seed_restarts
from memray.stats.space import LayerSpace
from memray.stats.workspace import Workspace
from tests.test_stats_pca import tree


def blobs(seed: int, cells: int, n: int, d: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=scale, size=(cells, d))
    return (centres[rng.integers(0, cells, n)] + rng.normal(size=(n, d))).astype(np.float32)


def in_sample(ids, seed: int, size: int | None) -> np.ndarray:
    """Rows whose blake2b-64 hash h satisfies h·n < size·2^64, in Python integers (all rows when size >= n)."""
    n = len(ids)
    if size is None or size >= n:
        return np.ones(n, bool)
    h = [int.from_bytes(hashlib.blake2b(f"{seed}\0{s}".encode(), digest_size=8).digest(), "little") for s in ids]
    return np.array([v * n < size * 2**64 for v in h])


def reference_kmeans(x: np.ndarray, ids, cfg: CTConfig, block_rows: int, full: bool = False):
    """Float64 Lloyd on one array: brute-force nearest centroid (direct Σ(z−c)², ties -> lower cell), per-cell sums
    row by row within each block of ``block_rows`` global rows and blocks added in the documented tree, empty
    cells kept, objective = fsum of each row's left-to-right Σ.

    Returns (best centroids float32 canonical, points) or, with ``full``, also (initial centroids (R, cells, k),
    final float64 centroids (R, cells, k), objectives (R,), global rows used)."""
    z = np.asarray(x, dtype=np.float64)
    seed_size = cfg.kmeans_seed_sample if cfg.kmeans_sample is None else min(cfg.kmeans_seed_sample, cfg.kmeans_sample)
    sample = z[in_sample(ids, cfg.seed, seed_size)]
    used = np.flatnonzero(in_sample(ids, cfg.seed, cfg.kmeans_sample))
    data, block = z[used], used // block_rows

    def labels_of(c):
        return np.argmin(np.sum((data[:, None, :] - c[None]) ** 2, axis=-1), axis=1)

    def objective(c):
        diff = data - c[labels_of(c)]
        per_row = diff[:, 0] * diff[:, 0]
        for j in range(1, diff.shape[1]):
            per_row = per_row + diff[:, j] * diff[:, j]
        return math.fsum(per_row.tolist())

    inits, finals, objs = [], [], []
    for r in range(cfg.kmeans_nredo):
        c = kmeans_pp(sample, cfg.cells, restart_rng(cfg.seed, r)).astype(np.float64)
        inits.append(c)
        for _ in range(cfg.kmeans_niter):
            lab = labels_of(c)
            per_block = []
            for g in range(-(-len(z) // block_rows)):  # every block, those without a row of the sample too
                s = np.zeros_like(c)
                np.add.at(s, lab[block == g], data[block == g])  # row by row, in order
                per_block.append(s)
            sums = tree(per_block, np.add)
            counts = np.bincount(lab, minlength=cfg.cells)[:, None]
            new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
            if np.array_equal(new, c):
                break
            c = new
        finals.append(c)
        objs.append(objective(c))
    best = min(range(len(objs)), key=lambda i: (objs[i], i))
    out = canonical_order(finals[best].astype(np.float32))
    return (out, len(used), np.stack(inits), np.stack(finals), objs, used) if full else (out, len(used))


def fit(x: np.ndarray, cfg: CTConfig, mapper=map):
    with tempfile.TemporaryDirectory() as tmp:
        return fit_space(ArrayRows(x), cfg, Workspace(tmp), mapper)


def test_exact_parts_sum_exactly():
    rng = np.random.default_rng(0)
    v = [*(rng.normal(size=5000) * 10.0 ** rng.integers(-20, 20, 5000)).tolist(), 1e100, 1.0, -1e100]
    parts = exact_parts(v)
    assert math.fsum(parts) == math.fsum(v)
    a, b = exact_parts(v[:1234]), exact_parts(v[1234:])
    assert math.fsum(exact_parts(a + b)) == math.fsum(v)
    assert exact_parts([]) == () and exact_parts([1.0, -1.0]) == ()


def test_assign_all_is_layer_space_assign_per_restart_including_ties():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(20000, 5))
    c = rng.normal(size=(3, 4, 5))
    c[1, 3] = c[1, 0]  # coincident centroids: every row of those two is an exact tie -> the lower cell
    c[2] = np.array([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0, -1.0, 0, 0, 0]])
    z[:500, :2] = 0.0  # equidistant from all four centroids of restart 2
    got = assign_all(z, c)
    brute = np.argmin(np.sum((z[:, None, None, :] - c[None]) ** 2, axis=-1), axis=2)  # first minimum per restart
    for r in range(3):
        assert got[:, r].tolist() == LayerSpace(np.zeros(5), None, c[r]).assign(z).tolist() == brute[:, r].tolist()
    assert not np.any(got[:, 1] == 3) and np.all(got[:500, 2] == 0)


def test_pieces_in_threads_give_the_bits_of_one_thread():
    """The assignment's row chunks, the restarts' sums and objectives, and the k-means++ restarts run in threads in
    one process: the same bits as one after another (each piece owns its arithmetic and its output)."""
    rng = np.random.default_rng(9)
    z = np.repeat(rng.normal(size=(9000, 6)) * 10 ** rng.uniform(-3, 3, size=(9000, 1)), 3, axis=0)  # 3 chunks+
    c = rng.normal(size=(7, 5, 6))
    c[2, 4] = c[2, 1]  # exact ties in one restart
    threads = local_threads(map, 3)
    assert threads is not map
    assert np.array_equal(assign_all(z, c, threads), assign_all(z, c))
    one, many = lloyd_stats(z, c), lloyd_stats(z, c, inner=threads)
    assert np.array_equal(one.sums, many.sums) and np.array_equal(one.counts, many.counts)
    assert one.objective == many.objective and len(one.objective) == 7
    assert np.array_equal(seed_restarts(z, 5, 3, 6, threads), seed_restarts(z, 5, 3, 6))
    sums_off = lloyd_stats(z, c, sums=False, objective=False, inner=threads)
    assert not sums_off.sums.any() and sums_off.objective == () and np.array_equal(sums_off.counts, one.counts)


def test_inner_pieces_run_in_threads_only_beside_an_in_process_mapper():
    def ray_like(fn, items):  # a mapper that sends items elsewhere
        return map(fn, items)

    assert inner_threads(ray_like) is map
    threads = inner_threads(map)
    assert (threads is map) == (len(os.sched_getaffinity(0)) <= 1)
    assert list(threads(math.sqrt, [4.0, 9.0, 16.0])) == [2.0, 3.0, 4.0]


def test_assign_all_of_no_rows_and_of_overflowing_norms():
    """No rows: an empty (0, R) assignment. Norms whose squares overflow (the expansion holds ∞ − ∞ = NaN): the
    nearest centroid still, as LayerSpace.assign and the direct distances say."""
    c = np.random.default_rng(1).normal(size=(3, 4, 2))
    for inner in (map, local_threads(map, 2)):
        assert assign_all(np.zeros((0, 2)), c, inner).shape == (0, 3)
    z = np.array([[1e160, 0.0], [-1e160, 0.0], [3.0, 1.0], [1e200, 1e200]])
    c = np.array([[[-1e160, 0.0], [1e160, 0.0]], [[0.0, 0.0], [1e155, 0.0]]])
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        got = assign_all(z, c)
        spaces = [LayerSpace(np.zeros(2), None, c[r]).assign(z) for r in range(2)]
    for r in range(2):
        assert got[:, r].tolist() == spaces[r].tolist()
    assert got[:2, 0].tolist() == [1, 0] and got[2, 1] == 0


def test_a_fit_beside_other_layers_keeps_its_pieces_in_order(monkeypatch):
    """With a mapper that sends items elsewhere (a Ray job, whose driver fits layers side by side), the seeding and
    Lloyd's pieces run with builtin map: no thread pool, and no process-wide BLAS limit set under another layer's
    eigensolver. In one process they run in threads."""
    import memray.stats.fit as fit_module

    seen = []
    real_seed, real_lloyd = fit_module.seed_restarts, fit_module.lloyd
    monkeypatch.setattr(fit_module, "seed_restarts", lambda *a: seen.append(("seed", a[-1])) or real_seed(*a))
    monkeypatch.setattr(fit_module, "lloyd", lambda *a: seen.append(("lloyd", a[-1])) or real_lloyd(*a))

    def elsewhere(fn, items):
        return list(map(fn, items))

    x = blobs(2, 3, 600, 5, scale=5.0)
    cfg = CTConfig(pca_dim=4, cells=3, kmeans_nredo=2, block_rows=200)
    assert fit(x, cfg, elsewhere).space.centroids.tobytes() == fit(x, cfg).space.centroids.tobytes()
    assert [s[1] is map for s in seen[:2]] == [True, True]
    assert [s[1] is map for s in seen[2:]] == [len(os.sched_getaffinity(0)) <= 1] * 2


def test_best_restart_ties_to_the_lowest_index():
    assert best_restart([2.0, 1.0, 1.0, 3.0]) == 1


def test_an_empty_cell_keeps_its_previous_centroid():
    prev = np.array([[[0.0], [10.0], [100.0]]])
    total = LloydPartial(np.array([[[1.0], [21.0], [0.0]]]), np.array([[2, 2, 0]]), ((1.0,),))
    assert lloyd_update(prev, total).tolist() == [[[0.5], [10.5], [100.0]]]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(tmp)
        ws.put("proj/block_000000", z=np.array([[0.0], [1.0], [10.0], [11.0]]))
        final, obj = lloyd(ws, [(0, None)], prev, niter=5)
    assert final.tolist() == [[[0.5], [10.5], [100.0]]] and obj == [1.0]  # 4 rows at 0.5 from their centre


@pytest.mark.parametrize(
    "block_rows, seed_sample, kmeans_sample",
    [(3000, 800, None), (700, 800, None), (512, 5000, None), (700, 800, 1500), (1000, 2000, 600), (50, 800, 60)],
)  # (50, 800, 60): most blocks hold no row of the Lloyd sample
def test_kmeans_equals_a_single_array_lloyd(block_rows, seed_sample, kmeans_sample):
    x = blobs(1, 5, 3000, 8, scale=2.5)
    cfg = CTConfig(pca_dim=6, cells=5, kmeans_nredo=4, kmeans_niter=15, block_rows=block_rows,
                   kmeans_seed_sample=seed_sample, kmeans_sample=kmeans_sample, seed=7)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(tmp)
        got = fit_space(ArrayRows(x), cfg, ws)
        nb = -(-len(x) // block_rows)
        z = np.concatenate([ws.get(f"proj/block_{g:06d}")["z"] for g in range(nb)])  # float64 PCA rows
        ids = [str(i) for i in range(len(x))]
        ref, used, init, finals, objs, rows = reference_kmeans(z, ids, cfg, block_rows, True)
        # the float64 Lloyd itself, every restart, on the blocks fit_space wrote (not hidden by the float32 cast)
        items = [(g, None if kmeans_sample is None else rows[rows // block_rows == g] - g * block_rows)
                 for g in range(nb)]  # fmt: skip
        final, obj = lloyd(ws, items, init, cfg.kmeans_niter)
    assert final.tobytes() == finals.tobytes() and obj == objs
    assert got.space.centroids.tobytes() == ref.tobytes()
    assert got.space.kmeans_points == used
    if kmeans_sample is not None:
        assert abs(used - kmeans_sample) < 5 * math.sqrt(kmeans_sample) and used < len(x)


def test_duplicate_seeds_give_an_empty_cell_that_keeps_its_centroid():
    x = np.repeat(np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]], np.float32), [40, 30, 30], axis=0)
    cfg = CTConfig(pca_dim=None, cells=4, kmeans_nredo=2, kmeans_niter=5, block_rows=33)
    ref, _ = reference_kmeans(x, [str(i) for i in range(len(x))], cfg, 33)
    got = fit(x, cfg)
    assert got.space.centroids.tobytes() == ref.tobytes()
    assert len({tuple(c) for c in got.space.centroids.tolist()}) == 3  # a coincident centroid kept its place
    assert sorted(got.train_counts.tolist()) == [0, 30, 30, 40]


def test_the_seeding_sample_follows_the_sample_ids_not_the_positions():
    x = blobs(2, 3, 2000, 4, scale=4.0)
    perm = np.random.default_rng(3).permutation(len(x))
    ids = np.array([f"s{i}" for i in range(len(x))], dtype=object)
    cfg = CTConfig(pca_dim=None, cells=3, kmeans_nredo=2, kmeans_seed_sample=300, block_rows=256)
    with tempfile.TemporaryDirectory() as tmp:
        a = fit_space(ArrayRows(x, ids), cfg, Workspace(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        b = fit_space(ArrayRows(x[perm], ids[perm]), cfg, Workspace(tmp))
    ref_a, _ = reference_kmeans(x, list(ids), cfg, 256)
    assert a.space.centroids.tobytes() == ref_a.tobytes()
    np.testing.assert_allclose(a.space.centroids, b.space.centroids, rtol=1e-5, atol=1e-5)  # same partition


def test_lloyd_stops_early_only_when_no_restart_moves():
    calls: list[str] = []

    def counting(fn, items):
        calls.append(getattr(getattr(fn, "func", fn), "__name__", ""))
        return map(fn, items)

    x = blobs(4, 3, 600, 3, scale=30.0)  # far apart: converges in a few iterations
    fit(x, CTConfig(pca_dim=None, cells=3, kmeans_nredo=3, kmeans_niter=50, block_rows=200), counting)
    assert 2 <= calls.count("_lloyd_item") < 50 and calls.count("_objective_item") == 1
    calls.clear()
    fit(x, CTConfig(pca_dim=None, cells=3, kmeans_nredo=3, kmeans_niter=1, block_rows=200), counting)
    assert calls.count("_lloyd_item") == 1 and calls.count("_objective_item") == 1  # update, then objective


def test_lloyd_passes_carry_only_the_restarts_still_moving():
    """A restart whose centroids stopped changing is left out of later passes; the result is unchanged (the
    reference Lloyd updates every restart every pass)."""
    restarts: list[int] = []

    def spying(fn, items):
        if getattr(getattr(fn, "func", fn), "__name__", "") == "_lloyd_item":
            restarts.append(len(fn.args[1]))  # the centroids (R', cells, k) the pass assigns to
        return map(fn, items)

    x = blobs(6, 4, 3000, 8, scale=1.2)  # overlapping clusters: restarts converge at different iterations
    cfg = CTConfig(pca_dim=6, cells=6, kmeans_nredo=6, kmeans_niter=40, block_rows=700, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        got = fit_space(ArrayRows(x), cfg, Workspace(tmp), spying)
        z = np.concatenate([Workspace(tmp).get(f"proj/block_{g:06d}")["z"] for g in range(5)])
    ref, *_ = reference_kmeans(z, [str(i) for i in range(len(x))], cfg, 700, True)
    assert got.space.centroids.tobytes() == ref.tobytes()
    assert restarts[0] == 6 and restarts == sorted(restarts, reverse=True) and restarts[-1] < 6, restarts


def test_same_config_gives_the_same_centroids_another_seed_other_ones():
    x = blobs(5, 4, 800, 3, scale=1.0)
    cfg = CTConfig(pca_dim=None, cells=4, kmeans_nredo=1, block_rows=300)
    assert fit(x, cfg).space.centroids.tobytes() == fit(x, cfg).space.centroids.tobytes()
    other = fit(x, CTConfig(pca_dim=None, cells=4, kmeans_nredo=1, block_rows=300, seed=1)).space.centroids
    assert other.tobytes() != fit(x, cfg).space.centroids.tobytes()
