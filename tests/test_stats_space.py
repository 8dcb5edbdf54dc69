"""Layer space and the fit on the engine (:func:`memray.stats.fit.fit_space`): PCA against SVD, sign convention,
identity path, k-means cells, restarts and their tie rule, determinism, exact assignment, degenerate features."""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import pytest

from memray.io.rows import ArrayRows
from memray.stats.config import CTConfig
from memray.stats.fit import FitResult, fit_space
from memray.stats.kmeans import (
    LloydPartial,
    best_restart,
    canonical_order,
    lloyd,
    lloyd_stats,
    merge_lloyd,
)
from memray.stats.pca import ROW_BLOCK
from memray.stats.seeding import kmeans_pp, seed_restarts
from memray.stats.space import LayerSpace
from memray.stats.workspace import block_count, block_range, temporary_workspace


def blobs(seed: int, cells: int, n: int, d: int, scale: float = 8.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=scale, size=(cells, d))
    labels = rng.integers(0, cells, n)
    return centres[labels] + rng.normal(size=(n, d)), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True iff two labelings are equal up to renaming the labels."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def fit(x: np.ndarray, cfg: CTConfig, mapper=map, label: str = "") -> FitResult:
    with temporary_workspace() as ws:
        return fit_space(ArrayRows(x), cfg, ws, mapper, label)


def fit_z(x: np.ndarray, cfg: CTConfig) -> tuple[FitResult, list[np.ndarray]]:
    """The fit and the projected training rows it wrote, one array per block (``proj/block_g``)."""
    with temporary_workspace() as ws:
        got = fit_space(ArrayRows(x), cfg, ws)
        return got, [ws.get(f"proj/block_{g:06d}")["z"] for g in range(block_count(len(x), cfg.block_rows))]


def restarts(x: np.ndarray, cfg: CTConfig) -> tuple[FitResult, list[tuple[float, np.ndarray]]]:
    """The fit, and each restart's Lloyd run alone from its k-means++ init: [(exact objective, canonical centroids)]."""
    with temporary_workspace() as ws:
        got = fit_space(ArrayRows(x), cfg, ws)
        items = [(g, None) for g in range(block_count(len(x), cfg.block_rows))]
        z = np.concatenate([ws.get(f"proj/block_{g:06d}")["z"] for g, _ in items])
        init = seed_restarts(z, cfg.cells, cfg.seed, cfg.kmeans_nredo)  # every row seeds: n < kmeans_seed_sample
        runs = []
        for r in range(cfg.kmeans_nredo):
            final, obj = lloyd(ws, items, init[r : r + 1], cfg.kmeans_niter)
            runs.append((obj[0], canonical_order(final[0].astype(np.float32))))
    return got, runs


def test_pca_matches_svd_and_fixes_signs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 20)) * np.linspace(5, 0.5, 20)  # distinct variances
    space = fit(x, CTConfig(pca_dim=6, cells=3, block_rows=128)).space
    x32 = x.astype(np.float32).astype(np.float64)  # the engine reads float32 rows
    mean = x32.mean(0)
    _, s, vt = np.linalg.svd(x32 - mean, full_matrices=False)
    assert space.components.shape == (20, 6)
    np.testing.assert_allclose(space.mean, mean, atol=1e-12)
    np.testing.assert_allclose(space.explained_variance, s[:6] ** 2 / 499, rtol=1e-10)
    np.testing.assert_allclose(np.abs(space.components.T @ vt[:6].T), np.eye(6), atol=1e-8)  # same axes
    pivots = np.argmax(np.abs(space.components), axis=0)
    assert (space.components[pivots, np.arange(6)] > 0).all()  # largest-|loading| entry positive
    np.testing.assert_allclose(space.project(x), (x - mean) @ space.components, atol=1e-12)


def test_pca_dim_is_capped_by_rows_and_dims_and_applies_when_larger():
    rng = np.random.default_rng(1)
    assert fit(rng.normal(size=(30, 50)), CTConfig(pca_dim=64, cells=2)).space.dim == 30
    assert fit(rng.normal(size=(300, 50)), CTConfig(pca_dim=64, cells=2)).space.dim == 50
    assert fit(rng.normal(size=(300, 50)), CTConfig(pca_dim=8, cells=2)).space.dim == 8
    x = np.random.default_rng(3).normal(size=(200, 80))  # pca_only_if_larger and d > pca_dim: reduced
    assert fit(x, CTConfig(pca_dim=64, pca_only_if_larger=True, cells=3)).space.components.shape == (80, 64)


@pytest.mark.parametrize(
    "cfg", [CTConfig(pca_dim=None, cells=2), CTConfig(pca_dim=64, pca_only_if_larger=True, cells=2)]
)
def test_no_pca_keeps_raw_vectors(cfg):
    x = np.random.default_rng(2).normal(loc=3.0, size=(100, 16)).astype(np.float32)
    got, z = fit_z(x, cfg)
    assert got.space.components is None and got.space.dim == 16
    assert np.array_equal(got.space.project(x), x.astype(np.float64))  # not centred, not rotated
    assert np.array_equal(np.concatenate(z), x.astype(np.float64))  # what the k-means ran on


@pytest.mark.parametrize("cells", [3, 10])
def test_kmeans_recovers_well_separated_clusters(cells):
    x, labels = blobs(4, cells, 2000, 40)
    got = fit(x, CTConfig(pca_dim=None, cells=cells, block_rows=700))
    assert same_partition(got.space.assign(got.space.project(x)), labels)
    assert got.space.kmeans_points == 2000
    assert sorted(got.train_counts.tolist()) == sorted(np.bincount(labels).tolist())


def test_kmeans_sample_is_seeded_and_recorded():
    x, labels = blobs(5, 4, 3000, 10)
    cfg = CTConfig(pca_dim=None, cells=4, kmeans_sample=500, seed=3, block_rows=1000)
    a, b = fit(x, cfg), fit(x, cfg)
    # the Lloyd sample: rows whose blake2b-64 hash h of "3\0<row id>" satisfies h * n < 500 * 2^64
    hashes = [
        int.from_bytes(hashlib.blake2b(f"3\0{i}".encode(), digest_size=8).digest(), "little") for i in range(3000)
    ]
    expected = sum(h * 3000 < 500 * 2**64 for h in hashes)
    assert a.space.kmeans_points == expected and abs(expected - 500) < 5 * math.sqrt(500)
    assert a.space.centroids.tobytes() == b.space.centroids.tobytes()
    assert same_partition(a.space.assign(x), labels)
    assert a.train_counts.sum() == 3000  # every training row is assigned, not only the sample


def test_fit_is_deterministic_and_seed_matters():
    x = np.random.default_rng(6).normal(size=(1000, 24))  # no cluster structure: the seed shows
    cfg = CTConfig(pca_dim=12, cells=10, seed=0, block_rows=300)
    a, b = fit(x, cfg).space, fit(x, cfg).space
    assert a.components.tobytes() == b.components.tobytes()
    assert a.centroids.tobytes() == b.centroids.tobytes()
    c = fit(x, CTConfig(pca_dim=12, cells=10, seed=1, block_rows=300)).space
    assert c.components.tobytes() == a.components.tobytes()  # the PCA has no randomness
    assert c.centroids.tobytes() != a.centroids.tobytes()


def test_assign_is_exact_nearest_centroid_and_batch_independent():
    x = np.random.default_rng(7).normal(size=(20000, 6))
    space = fit(x, CTConfig(pca_dim=None, cells=7, kmeans_nredo=2)).space
    z = space.project(x)
    full = space.assign(z)
    brute = np.argmin(((z[:, None, :] - space.centroids[None].astype(np.float64)) ** 2).sum(-1), axis=1)
    assert np.array_equal(full, brute)
    parts = np.concatenate([space.assign(chunk) for chunk in np.array_split(z[:300], 23)])
    assert np.array_equal(parts, full[:300])


def test_assign_ties_go_to_the_lower_cell():
    x = np.array([[-1.0, 0.0]] * 5 + [[1.0, 0.0]] * 5)
    space = fit(x, CTConfig(pca_dim=None, cells=2)).space
    assert sorted(space.centroids[:, 0].tolist()) == [-1.0, 1.0]
    assert space.assign(np.array([[0.0, 0.0], [0.0, 5.0]])).tolist() == [0, 0]  # equidistant from both


def test_kmeans_pp_picks_distinct_clusters():
    x, labels = blobs(8, 6, 600, 5, scale=50.0)
    init = kmeans_pp(x.astype(np.float32), 6, np.random.default_rng(0))
    nearest = np.argmin(((x[:, None, :] - init[None]) ** 2).sum(-1), axis=1)
    assert same_partition(nearest, labels)


def test_project_rejects_another_dimension():
    space = fit(np.random.default_rng(0).normal(size=(50, 4)), CTConfig(cells=2)).space
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


def test_the_kmeans_runs_on_exactly_the_projection_of_train():
    x = np.random.default_rng(10).normal(size=(700, 30)).astype(np.float32)
    cfg = CTConfig(pca_dim=12, cells=4, block_rows=256)
    got, z = fit_z(x, cfg)
    for g, block in enumerate(z):
        lo, hi = block_range(g, cfg.block_rows, len(x))
        assert block.dtype == np.float64 and block.tobytes() == got.space.project(x[lo:hi]).tobytes()


def test_blockwise_pca_and_projection_match_svd_over_many_blocks():
    # More rows than several fit blocks and covariance/projection sub-blocks, float32 far from the origin (the
    # centring matters), fit blocks not aligned with the sub-blocks.
    rng = np.random.default_rng(11)
    n = 3 * ROW_BLOCK + 37
    x = (50.0 + rng.normal(size=(n, 24)) * np.linspace(4, 0.5, 24)).astype(np.float32)
    got, blocks = fit_z(x, CTConfig(pca_dim=8, cells=3, block_rows=1000))
    space, z = got.space, np.concatenate(blocks)
    x64 = x.astype(np.float64)
    mean = x64.mean(0)
    _, s, vt = np.linalg.svd(x64 - mean, full_matrices=False)
    assert len(blocks) == 4
    np.testing.assert_allclose(space.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(space.explained_variance, s[:8] ** 2 / (n - 1), rtol=1e-10)
    np.testing.assert_allclose(np.abs(space.components.T @ vt[:8].T), np.eye(8), atol=1e-9)
    np.testing.assert_allclose(z, (x64 - mean) @ space.components, rtol=0, atol=1e-11)


def exact_objective(z: np.ndarray, centroids: np.ndarray) -> float:
    """The engine's exact k-means objective of centroids (cells, k) on rows z (n, k)."""
    return math.fsum(lloyd_stats(np.asarray(z, np.float64), np.asarray(centroids, np.float64)[None]).objective[0])


def test_kmeans_objective_is_brute_force_and_order_and_block_independent():
    rng = np.random.default_rng(12)
    x, c = rng.normal(size=(9000, 7)), rng.normal(size=(5, 7)).astype(np.float32)
    brute = ((x[:, None, :] - c[None].astype(np.float64)) ** 2).sum(-1).min(1).sum()
    assert exact_objective(x, c) == pytest.approx(brute, rel=1e-12)
    assert exact_objective(x, c[::-1]) == exact_objective(x, c)  # exactly: same set of centroids
    c3 = c.astype(np.float64)[None]
    merged = LloydPartial(np.zeros((1, 5, 7)), np.zeros((1, 5), np.int64), ((),))
    for part in np.array_split(x, 7):  # block partials merged exactly
        merged = merge_lloyd(merged, lloyd_stats(part, c3))
    assert math.fsum(merged.objective[0]) == exact_objective(x, c)


def test_best_restart_wins_and_ties_go_to_the_lowest_restart():
    x, _ = blobs(13, 8, 1500, 6, scale=1.5)  # overlapping clusters: restarts end in different optima
    got, runs = restarts(x, CTConfig(pca_dim=None, cells=8, kmeans_nredo=6, block_rows=400))
    assert len({obj for obj, _ in runs}) > 1
    best = int(np.argmin([obj for obj, _ in runs]))
    assert got.space.kmeans_points == 1500 and got.space.centroids.tobytes() == runs[best][1].tobytes()
    assert exact_objective(x, got.space.centroids) <= min(exact_objective(x, c) for _, c in runs)
    # separated clusters: every restart finds the same partition and, cells in canonical order, the same array
    y, _ = blobs(14, 4, 800, 5, scale=40.0)
    _, runs = restarts(y, CTConfig(pca_dim=None, cells=4, kmeans_nredo=5, block_rows=300))
    assert len({obj for obj, _ in runs}) == 1 and len({c.tobytes() for _, c in runs}) == 1


def test_equal_objectives_go_to_the_lowest_restart():
    # the corners of a square, 2 cells: left|right and top|bottom are different optima with the same objective
    x = np.repeat(np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]), 50, axis=0)
    cfg = CTConfig(pca_dim=None, cells=2, kmeans_nredo=8, block_rows=64)
    got, runs = restarts(x, cfg)
    objs = [obj for obj, _ in runs]
    tied = [r for r in range(8) if objs[r] == min(objs)]
    assert min(objs) == 200.0 and len({runs[r][1].tobytes() for r in tied}) == 2  # two different tied optima
    assert best_restart(objs) == tied[0]
    assert got.space.centroids.tobytes() == runs[tied[0]][1].tobytes()
    backwards = fit(x, cfg, lambda fn, items: reversed([fn(i) for i in reversed(list(items))]))  # results reversed too
    assert backwards.space.centroids.tobytes() == runs[tied[0]][1].tobytes()


def test_cells_are_numbered_in_the_lexicographic_order_of_their_centroids():
    x, _ = blobs(20, 5, 1000, 3, scale=20.0)
    c = fit(x, CTConfig(pca_dim=None, cells=5)).space.centroids
    assert [tuple(r) for r in c.tolist()] == sorted(tuple(r) for r in c.tolist())


def test_restart_streams_differ_by_seed():
    x = np.random.default_rng(16).normal(size=(600, 6))
    with temporary_workspace() as ws:
        ws.put("proj/block_000000", z=x)
        a = seed_restarts(x, 5, 0, 2)[1:]  # (seed 0, restart 1)
        b = seed_restarts(x, 5, 1, 1)  # (seed 1, restart 0)
        assert a.tobytes() != b.tobytes()
        fa, fb = lloyd(ws, [(0, None)], a, 20)[0], lloyd(ws, [(0, None)], b, 20)[0]
    assert fa.tobytes() != fb.tobytes()  # no shared restart: different cells on unstructured data


def test_too_few_points_per_cell_is_one_memray_warning_and_no_faiss_output(capfd, caplog):
    x, _ = blobs(17, 10, 300, 8)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="memray"):
        fit(x, CTConfig(pca_dim=None, cells=10), label="layer 7")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["layer 7: k-means fits 10 cells on 300 training points, fewer than 39 per cell (390); "
                    "the cells may be unstable"]  # fmt: skip
    out = capfd.readouterr()
    assert "WARNING" not in out.err and "clustering" not in out.err and out.out == ""


def test_rank_deficient_training_features_are_recorded_and_warned(caplog):
    rng = np.random.default_rng(18)
    x = (rng.normal(size=(500, 5)) @ rng.normal(size=(5, 40))).astype(np.float32)  # a 5-dim subspace of R^40
    with caplog.at_level(logging.WARNING, logger="memray"):
        space = fit(x, CTConfig(pca_dim=16, cells=3, block_rows=128), label="layer 3").space
    assert space.dim == 16 and space.rank == 5 and space.degenerate
    assert "layer 3" in caplog.text and "numerical rank 5, below the 16 PCA components" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memray"):
        full = fit(rng.normal(size=(500, 40)), CTConfig(pca_dim=16, cells=3)).space
    assert full.rank == 16 and not full.degenerate and not caplog.records


@pytest.mark.parametrize("pca_dim", [8, None])
def test_constant_training_features_have_rank_zero(pca_dim, caplog):
    x = np.full((200, 12), 0.1, dtype=np.float32)  # its float64 mean is not exactly 0.1f: the check is exact
    with caplog.at_level(logging.WARNING, logger="memray"):
        space = fit(x, CTConfig(pca_dim=pca_dim, cells=2, block_rows=64), label="layer 2").space
    assert space.rank == 0 and space.degenerate
    assert "layer 2: the training features have no variance (rank 0" in caplog.text
    varied = fit(np.random.default_rng(19).normal(size=(200, 12)), CTConfig(pca_dim=None, cells=2)).space
    assert varied.rank is None and not varied.degenerate  # without PCA only rank 0 is detected
