"""PCA + k-means cells: exactness against SVD, sign convention, identity path, determinism, assignment, restarts,
degenerate features."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from memray.config import CTConfig
from memray.stats.reduce import (
    ROW_BLOCK,
    LayerSpace,
    fit_and_project,
    fit_kmeans,
    fit_layer_space,
    kmeans_objective,
    kmeans_pp,
    kmeans_restart,
)


def blobs(seed: int, cells: int, n: int, d: int, scale: float = 8.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=scale, size=(cells, d))
    labels = rng.integers(0, cells, n)
    return centres[labels] + rng.normal(size=(n, d)), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True iff two labelings are equal up to renaming the labels."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_pca_matches_svd_and_fixes_signs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 20)) * np.linspace(5, 0.5, 20)  # distinct variances
    space = fit_layer_space(x, CTConfig(pca_dim=6, cells=3))
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    assert space.components.shape == (20, 6)
    np.testing.assert_allclose(space.mean, mean, atol=1e-12)
    np.testing.assert_allclose(space.explained_variance, s[:6] ** 2 / 499, rtol=1e-10)
    np.testing.assert_allclose(np.abs(space.components.T @ vt[:6].T), np.eye(6), atol=1e-8)  # same axes
    pivots = np.argmax(np.abs(space.components), axis=0)
    assert (space.components[pivots, np.arange(6)] > 0).all()  # largest-|loading| entry positive
    np.testing.assert_allclose(space.project(x), (x - mean) @ space.components, atol=1e-12)


def test_pca_dim_is_capped_by_rows_and_dims():
    rng = np.random.default_rng(1)
    assert fit_layer_space(rng.normal(size=(30, 50)), CTConfig(pca_dim=64, cells=2)).dim == 30
    assert fit_layer_space(rng.normal(size=(300, 50)), CTConfig(pca_dim=64, cells=2)).dim == 50
    assert fit_layer_space(rng.normal(size=(300, 50)), CTConfig(pca_dim=8, cells=2)).dim == 8


@pytest.mark.parametrize(
    "cfg", [CTConfig(pca_dim=None, cells=2), CTConfig(pca_dim=64, pca_only_if_larger=True, cells=2)]
)
def test_no_pca_keeps_raw_vectors(cfg):
    x = np.random.default_rng(2).normal(loc=3.0, size=(100, 16)).astype(np.float32)
    space = fit_layer_space(x, cfg)
    assert space.components is None and space.dim == 16
    assert np.array_equal(space.project(x), x.astype(np.float64))  # not centred, not rotated


def test_pca_only_if_larger_reduces_when_larger():
    x = np.random.default_rng(3).normal(size=(200, 80))
    assert fit_layer_space(x, CTConfig(pca_dim=64, pca_only_if_larger=True, cells=3)).dim == 64


@pytest.mark.parametrize("cells", [3, 10])
def test_kmeans_recovers_well_separated_clusters(cells):
    x, labels = blobs(4, cells, 2000, 40)
    space, z = fit_and_project(x, CTConfig(pca_dim=None, cells=cells))
    assert same_partition(space.assign(z), labels)
    assert space.kmeans_points == 2000


def test_kmeans_sample_is_seeded_and_recorded():
    x, labels = blobs(5, 4, 3000, 10)
    cfg = CTConfig(pca_dim=None, cells=4, kmeans_sample=500, seed=3)
    a, b = fit_layer_space(x, cfg), fit_layer_space(x, cfg)
    assert a.kmeans_points == 500
    assert a.centroids.tobytes() == b.centroids.tobytes()
    assert same_partition(a.assign(x), labels)


def test_fit_is_deterministic_and_seed_matters():
    x = np.random.default_rng(6).normal(size=(1000, 24))  # no cluster structure: the seed shows
    cfg = CTConfig(pca_dim=12, cells=10, seed=0)
    a, b = fit_layer_space(x, cfg), fit_layer_space(x, cfg)
    assert a.components.tobytes() == b.components.tobytes()
    assert a.centroids.tobytes() == b.centroids.tobytes()
    c = fit_layer_space(x, CTConfig(pca_dim=12, cells=10, seed=1))
    assert c.centroids.tobytes() != a.centroids.tobytes()


def test_assign_is_exact_nearest_centroid_and_batch_independent():
    x = np.random.default_rng(7).normal(size=(20000, 6))
    space = fit_layer_space(x, CTConfig(pca_dim=None, cells=7))
    z = space.project(x)
    full = space.assign(z)
    brute = np.argmin(((z[:, None, :] - space.centroids[None].astype(np.float64)) ** 2).sum(-1), axis=1)
    assert np.array_equal(full, brute)
    parts = np.concatenate([space.assign(chunk) for chunk in np.array_split(z[:300], 23)])
    assert np.array_equal(parts, full[:300])


def test_assign_ties_go_to_the_lower_cell():
    x = np.array([[-1.0, 0.0]] * 5 + [[1.0, 0.0]] * 5)
    space = fit_layer_space(x, CTConfig(pca_dim=None, cells=2))
    assert sorted(space.centroids[:, 0].tolist()) == [-1.0, 1.0]
    assert space.assign(np.array([[0.0, 0.0], [0.0, 5.0]])).tolist() == [0, 0]  # equidistant from both


def test_kmeans_pp_picks_distinct_clusters():
    x, labels = blobs(8, 6, 600, 5, scale=50.0)
    init = kmeans_pp(x.astype(np.float32), 6, np.random.default_rng(0))
    nearest = np.argmin(((x[:, None, :] - init[None]) ** 2).sum(-1), axis=1)
    assert same_partition(nearest, labels)


def test_bad_inputs():
    with pytest.raises(ValueError, match="cannot make 10 cells"):
        fit_layer_space(np.ones((5, 3)), CTConfig(cells=10))
    with pytest.raises(ValueError, match="non-empty"):
        fit_layer_space(np.ones((0, 3)), CTConfig(cells=1))
    space = fit_layer_space(np.random.default_rng(0).normal(size=(50, 4)), CTConfig(cells=2))
    with pytest.raises(ValueError, match="do not match"):
        space.project(np.ones((3, 5)))


def test_assign_exact_where_the_fast_expansion_cancels():
    # Far from the origin, ‖z‖² − 2z·c + ‖c‖² loses the small differences between centroids; the re-check
    # with the direct Σ(z − c)² must still return the true nearest centroid.
    rng = np.random.default_rng(9)
    centroids = (1e6 + rng.integers(0, 4, size=(6, 8)) * 0.0625).astype(np.float32)  # exact in float32
    space = LayerSpace(mean=np.zeros(8), components=None, centroids=centroids)
    z = 1e6 + rng.normal(scale=0.05, size=(4000, 8))
    direct = np.argmin(((z[:, None, :] - centroids[None].astype(np.float64)) ** 2).sum(-1), axis=1)
    fast = np.argmin(
        (z**2).sum(1)[:, None] - 2 * z @ centroids.T.astype(np.float64) + (centroids.astype(np.float64) ** 2).sum(1),
        axis=1,
    )
    assert (fast != direct).any()  # the naive expansion is wrong here
    assert np.array_equal(space.assign(z), direct)


def test_fit_and_project_returns_exactly_the_projection_of_train():
    x = np.random.default_rng(10).normal(size=(700, 30)).astype(np.float32)
    space, z = fit_and_project(x, CTConfig(pca_dim=12, cells=4))
    assert z.dtype == np.float64 and z.tobytes() == space.project(x).tobytes()


def test_blockwise_pca_and_projection_match_svd_over_many_blocks():
    # More rows than several covariance/projection blocks, float32 far from the origin (the centring matters).
    rng = np.random.default_rng(11)
    n = 3 * ROW_BLOCK + 37
    x = (50.0 + rng.normal(size=(n, 24)) * np.linspace(4, 0.5, 24)).astype(np.float32)
    space, z = fit_and_project(x, CTConfig(pca_dim=8, cells=3))
    x64 = x.astype(np.float64)
    mean = x64.mean(0)
    _, s, vt = np.linalg.svd(x64 - mean, full_matrices=False)
    np.testing.assert_allclose(space.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(space.explained_variance, s[:8] ** 2 / (n - 1), rtol=1e-10)
    np.testing.assert_allclose(np.abs(space.components.T @ vt[:8].T), np.eye(8), atol=1e-9)
    np.testing.assert_allclose(z, (x64 - mean) @ space.components, rtol=0, atol=1e-11)
    assert z.tobytes() == space.project(x).tobytes()


def _reversed_mapper(fn, items):
    """Runs the items last to first and returns the results in item order (builtin ``map`` semantics)."""
    items = list(items)
    return list(reversed([fn(x) for x in reversed(items)]))


def _process_mapper(fn, items):
    """The items in two fresh single-threaded processes, like Ray workers (one CPU each, pickled function)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update(dict.fromkeys(saved, "1"))  # read by the children's numpy and FAISS at import
    try:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(fn, items))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_kmeans_objective_is_brute_force_and_order_independent():
    rng = np.random.default_rng(12)
    x, c = rng.normal(size=(9000, 7)), rng.normal(size=(5, 7)).astype(np.float32)
    brute = ((x[:, None, :] - c[None].astype(np.float64)) ** 2).sum(-1).min(1).sum()
    assert kmeans_objective(x, c) == pytest.approx(brute, rel=1e-12)
    assert kmeans_objective(x, c[::-1]) == kmeans_objective(x, c)  # exactly: same set of centroids


def test_best_restart_wins_and_ties_go_to_the_lowest_restart():
    x, _ = blobs(13, 8, 1500, 6, scale=1.5)  # overlapping clusters: restarts end in different optima
    cfg = CTConfig(pca_dim=None, cells=8, kmeans_nredo=6)
    data = np.ascontiguousarray(x, dtype=np.float32)
    runs = [kmeans_restart(data, cfg, r) for r in range(6)]
    assert len({obj for obj, _ in runs}) > 1
    best = int(np.argmin([obj for obj, _ in runs]))
    centroids, used = fit_kmeans(x, cfg)
    assert used == 1500 and centroids.tobytes() == runs[best][1].tobytes()
    # separated clusters: every restart finds the same partition and, cells in canonical order, the same array
    y, _ = blobs(14, 4, 800, 5, scale=40.0)
    cfg = CTConfig(pca_dim=None, cells=4, kmeans_nredo=5)
    runs = [kmeans_restart(np.ascontiguousarray(y, dtype=np.float32), cfg, r) for r in range(5)]
    assert len({obj for obj, _ in runs}) == 1 and len({c.tobytes() for _, c in runs}) == 1


def test_equal_objectives_go_to_the_lowest_restart():
    # the corners of a square, 2 cells: left|right and top|bottom are different optima with the same objective
    x = np.repeat(np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]), 50, axis=0)
    cfg = CTConfig(pca_dim=None, cells=2, kmeans_nredo=8)
    runs = [kmeans_restart(x.astype(np.float32), cfg, r) for r in range(8)]
    objs = [obj for obj, _ in runs]
    tied = [r for r in range(8) if objs[r] == min(objs)]
    assert min(objs) == 200.0 and len({runs[r][1].tobytes() for r in tied}) == 2  # two different tied optima
    assert fit_kmeans(x, cfg)[0].tobytes() == runs[tied[0]][1].tobytes()
    assert fit_kmeans(x, cfg, _reversed_mapper)[0].tobytes() == runs[tied[0]][1].tobytes()


def test_cells_are_numbered_in_the_lexicographic_order_of_their_centroids():
    x, _ = blobs(20, 5, 1000, 3, scale=20.0)
    c = fit_layer_space(x, CTConfig(pca_dim=None, cells=5)).centroids
    assert [tuple(r) for r in c.tolist()] == sorted(tuple(r) for r in c.tolist())


@pytest.mark.timeout(120)
def test_restarts_give_the_same_centroids_whatever_the_mapper():
    x, _ = blobs(15, 6, 2000, 16, scale=1.2)
    cfg = CTConfig(pca_dim=8, cells=6, kmeans_nredo=4)
    ref = fit_layer_space(x, cfg)
    assert fit_layer_space(x, cfg, _reversed_mapper).centroids.tobytes() == ref.centroids.tobytes()
    assert fit_layer_space(x, cfg, _process_mapper).centroids.tobytes() == ref.centroids.tobytes()


def test_restart_streams_differ_by_seed():
    x = np.random.default_rng(16).normal(size=(600, 6))
    cfg = CTConfig(pca_dim=None, cells=5)
    a, b = kmeans_restart(x.astype(np.float32), cfg, 1), kmeans_restart(x.astype(np.float32), replace(cfg, seed=1), 0)
    assert a[1].tobytes() != b[1].tobytes()  # (seed 0, restart 1) is not (seed 1, restart 0)


def test_too_few_points_per_cell_is_one_memray_warning_and_no_faiss_output(capfd, caplog):
    x, _ = blobs(17, 10, 300, 8)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="memray.stats.reduce"):
        fit_layer_space(x, CTConfig(pca_dim=None, cells=10), label="layer 7")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["layer 7: k-means fits 10 cells on 300 training points, fewer than 39 per cell (390); "
                    "the cells may be unstable"]  # fmt: skip
    out = capfd.readouterr()
    assert "WARNING" not in out.err and "clustering" not in out.err and out.out == ""


def test_rank_deficient_training_features_are_recorded_and_warned(caplog):
    rng = np.random.default_rng(18)
    x = (rng.normal(size=(500, 5)) @ rng.normal(size=(5, 40))).astype(np.float32)  # a 5-dim subspace of R^40
    with caplog.at_level(logging.WARNING, logger="memray.stats.reduce"):
        space = fit_layer_space(x, CTConfig(pca_dim=16, cells=3), label="layer 3")
    assert space.dim == 16 and space.rank == 5 and space.degenerate
    assert "layer 3" in caplog.text and "numerical rank 5, below the 16 PCA components" in caplog.text
    caplog.clear()
    full = fit_layer_space(rng.normal(size=(500, 40)), CTConfig(pca_dim=16, cells=3))
    assert full.rank == 16 and not full.degenerate and not caplog.records


@pytest.mark.parametrize("pca_dim", [8, None])
def test_constant_training_features_have_rank_zero(pca_dim, caplog):
    x = np.full((200, 12), 0.1, dtype=np.float32)  # its float64 mean is not exactly 0.1f: the check is exact
    with caplog.at_level(logging.WARNING, logger="memray.stats.reduce"):
        space = fit_layer_space(x, CTConfig(pca_dim=pca_dim, cells=2), label="layer 2")
    assert space.rank == 0 and space.degenerate
    assert "layer 2: the training features have no variance (rank 0" in caplog.text
    varied = fit_layer_space(np.random.default_rng(19).normal(size=(200, 12)), CTConfig(pca_dim=None, cells=2))
    assert varied.rank is None and not varied.degenerate  # without PCA only rank 0 is detected
