"""memray.stats.fit / workspace: fit_space over global row blocks — identical bits whatever the mapper or the Rows
piece layout, the cells/… blocks it writes, small picklable items, warnings, the Workspace and the new fields."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from memray.config import FieldError
from memray.io.rows import ArrayRows
from memray.stats.config import CTConfig
from memray.stats.fit import FitResult, fit_space
from memray.stats.kmeans import canonical_order
from memray.stats.pca import fit_pca
from memray.stats.results import method_record
from memray.stats.workspace import Workspace, temporary_workspace
from tests.test_stats_pca import ChunkedRows


def blobs(seed: int, cells: int, n: int, d: int, scale: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=scale, size=(cells, d))
    return (centres[rng.integers(0, cells, n)] + rng.normal(size=(n, d)) * np.linspace(2, 0.5, d)).astype(np.float32)


class NpyRows:
    """A cheap handle (a path and counts): rows read from an .npy file by memory map, like a storage-backed Rows."""

    def __init__(self, path: str, n: int, dim: int) -> None:
        self.path, self.n, self.dim = path, n, dim

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(np.load(self.path, mmap_mode="r")[start:stop], dtype=np.float32)

    def ids(self, rows: np.ndarray) -> np.ndarray:
        return np.array([str(r) for r in np.asarray(rows).tolist()], dtype=object)


def reversed_mapper(fn, items):
    """Runs the items last to first, returns the results in item order (builtin map semantics)."""
    items = list(items)
    return list(reversed([fn(x) for x in reversed(items)]))


def shuffled_mapper(fn, items):
    items = list(items)
    order = np.random.default_rng(len(items)).permutation(len(items))
    out = [None] * len(items)
    for i in order.tolist():
        out[i] = fn(items[i])
    return out


def snapshot(fit: FitResult, ws: Workspace) -> dict[str, bytes]:
    """Every array of the result and every workspace file's arrays, as bytes."""
    sp = fit.space
    out = {"centroids": sp.centroids.tobytes(), "mean": sp.mean.tobytes(), "block_cells": fit.block_cells.tobytes(),
           "meta": repr((sp.rank, sp.kmeans_points, fit.train_counts.tolist())).encode()}  # fmt: skip
    if sp.components is not None:
        out["components"] = sp.components.tobytes() + sp.explained_variance.tobytes()
    for f in sorted(Path(ws.root).rglob("*.npz")):
        key = f.relative_to(ws.root).as_posix()[: -len(".npz")]
        out[key] = b"".join(a.tobytes() for a in ws.get(key).values())
    return out


def run(rows, cfg: CTConfig, mapper=map) -> dict[str, bytes]:
    with temporary_workspace() as ws:
        return snapshot(fit_space(rows, cfg, ws, mapper), ws)


CFG = CTConfig(pca_dim=8, cells=4, kmeans_nredo=3, kmeans_niter=10, block_rows=700, kmeans_seed_sample=900)


@pytest.mark.parametrize("cfg", [CFG, CTConfig(pca_dim=None, cells=3, kmeans_nredo=2, block_rows=512,
                                               kmeans_seed_sample=600, kmeans_sample=1500)])  # fmt: skip
def test_identical_bits_whatever_the_mapper_and_the_piece_layout(cfg):
    x = blobs(0, 4, 3000, 12)
    ref = run(ArrayRows(x), cfg)
    blocks = -(-3000 // cfg.block_rows)
    assert sum(k.startswith("cells/") for k in ref) > 4 and sum(k.startswith("proj/") for k in ref) == blocks
    assert run(ArrayRows(x), cfg, reversed_mapper) == ref
    assert run(ArrayRows(x), cfg, shuffled_mapper) == ref
    assert run(ChunkedRows(x, [1, 699, 700, 701, 1999]), cfg) == ref
    assert run(ChunkedRows(x, list(range(123, 3000, 123))), cfg, reversed_mapper) == ref


@pytest.mark.timeout(180)
def test_separate_processes_give_the_same_bits_and_items_are_small(tmp_path):
    x = blobs(1, 4, 2500, 10)
    np.save(tmp_path / "x.npy", x)
    rows = NpyRows(str(tmp_path / "x.npy"), *x.shape)
    cfg = CTConfig(pca_dim=6, cells=4, kmeans_nredo=2, kmeans_niter=4, block_rows=600)
    sizes: list[int] = []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:

        def mapper(fn, items):
            items = list(items)
            sizes.extend(len(pickle.dumps(fn)) + len(pickle.dumps(i)) for i in items)
            return pool.map(fn, items)

        got = run(rows, cfg, mapper)
    assert got == run(ArrayRows(x), cfg)
    assert max(sizes) < 16_000  # handles + mean/components/centroids; never the rows (600 x 10 floats = 24 kB)


def test_cells_blocks_hold_each_blocks_rows_of_each_cell_in_global_order():
    x = blobs(2, 5, 2600, 9)
    cfg = CTConfig(pca_dim=5, cells=5, kmeans_nredo=2, block_rows=1024)
    with temporary_workspace() as ws:
        fit = fit_space(ArrayRows(x), cfg, ws)
        z = fit.space.project(x)
        labels = fit.space.assign(z)
        assert fit.block_cells.shape == (3, 5) and fit.block_cells.dtype == np.int64
        assert fit.train_counts.tolist() == np.bincount(labels, minlength=5).tolist()
        for g in range(3):
            lo, hi = g * 1024, min((g + 1) * 1024, len(x))
            proj = ws.get(f"proj/block_{g:06d}")["z"]
            assert proj.dtype == np.float64 and proj.shape == (hi - lo, 5)
            np.testing.assert_allclose(proj, z[lo:hi], rtol=0, atol=1e-12)
            for c in range(5):
                key = f"cells/cell_{c:04d}/block_{g:06d}"
                want = lo + np.flatnonzero(labels[lo:hi] == c)
                assert fit.block_cells[g, c] == len(want) and ws.exists(key) == (len(want) > 0)
                if len(want):
                    got = ws.get(key)
                    assert got["rows"].dtype == np.int64 and got["rows"].tolist() == want.tolist()
                    assert got["z"].tobytes() == proj[want - lo].tobytes()


def test_separated_clusters_give_the_exact_pca_and_the_true_cells():
    x = blobs(3, 6, 4000, 16, scale=10.0)
    rng = np.random.default_rng(3)  # blobs' draws again: the centres, then each row's cluster
    rng.normal(size=(6, 16))
    labels = rng.integers(0, 6, 4000)
    cfg = CTConfig(pca_dim=8, cells=6, block_rows=1500)
    with temporary_workspace() as ws:
        fit = fit_space(ArrayRows(x), cfg, ws)
    mean, comps, _ = fit_pca(x, 8)  # the exact single-array PCA
    cos = np.abs(np.sum(fit.space.components * comps, axis=0))
    assert np.max(1 - cos) < 1e-12 and fit.space.rank == 8 and fit.space.kmeans_points == 4000
    # the cells are the true clusters: centroid = mean of a cluster's projected rows, in canonical order
    z = (x.astype(np.float64) - mean) @ comps
    true = np.stack([z[labels == c].mean(axis=0) for c in range(6)]).astype(np.float32)
    order = np.lexsort(true.T[::-1])
    assert canonical_order(true).tobytes() == true[order].tobytes()
    np.testing.assert_allclose(fit.space.centroids, true[order], rtol=0, atol=1e-4)
    assert fit.train_counts.tolist() == np.bincount(labels, minlength=6)[order].tolist()


def test_rank_and_degenerate_warnings_name_the_layer(caplog):
    rng = np.random.default_rng(4)
    low = (rng.normal(size=(900, 3)) @ rng.normal(size=(3, 20))).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="memray.stats.fit"), temporary_workspace() as ws:
        fit = fit_space(ArrayRows(low), CTConfig(pca_dim=8, cells=2, block_rows=256), ws, label="layer 3")
    assert fit.space.rank == 3 and fit.space.degenerate
    assert "layer 3: the training features have numerical rank 3, below the 8 PCA components" in caplog.text
    for pca_dim in (4, None):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="memray.stats.fit"), temporary_workspace() as ws:
            fit = fit_space(ArrayRows(np.full((300, 6), 0.1, np.float32)), CTConfig(pca_dim=pca_dim, cells=2,
                            block_rows=128), ws, label="layer 2")  # fmt: skip
        assert fit.space.rank == 0 and "layer 2: the training features have no variance (rank 0" in caplog.text
    almost = np.full((300, 6), 0.1, np.float32)
    almost[299, 0] = 0.2  # one different row, in the last block: not constant
    with temporary_workspace() as ws:
        assert fit_space(ArrayRows(almost), CTConfig(pca_dim=None, cells=2, block_rows=128), ws).space.rank is None


def test_few_points_per_cell_warning_and_errors(caplog):
    x = blobs(5, 3, 100, 4)
    with caplog.at_level(logging.WARNING, logger="memray.stats.fit"), temporary_workspace() as ws:
        fit_space(ArrayRows(x), CTConfig(pca_dim=None, cells=3), ws, label="layer 7")
        assert [r.getMessage() for r in caplog.records] == [
            "layer 7: k-means fits 3 cells on 100 training points, fewer than 39 per cell (117); "
            "the cells may be unstable"
        ]
        with pytest.raises(ValueError, match="5 training samples cannot make 10 cells"):
            fit_space(ArrayRows(x[:5]), CTConfig(cells=10), ws)
        with pytest.raises(ValueError, match="non-empty"):
            fit_space(ArrayRows(x[:0]), CTConfig(cells=1), ws)


def test_workspace_round_trip_atomic_and_picklable(tmp_path):
    ws = Workspace(str(tmp_path / "ws"))
    assert not ws.exists("cells/cell_0000/block_000000")
    ws.put("cells/cell_0000/block_000000", z=np.arange(6.0).reshape(3, 2), rows=np.array([4, 5, 9]))
    got = ws.get("cells/cell_0000/block_000000")
    assert got["z"].tolist() == [[0, 1], [2, 3], [4, 5]] and got["rows"].dtype == np.int64
    assert ws.exists("cells/cell_0000/block_000000")
    assert (tmp_path / "ws/cells/cell_0000/block_000000.npz").is_file()
    assert [p.name for p in (tmp_path / "ws/cells/cell_0000").iterdir()] == ["block_000000.npz"]  # no temp files
    assert pickle.loads(pickle.dumps(ws)) == ws and len(pickle.dumps(ws)) < 500
    assert ws.child("layer_3").root == f"{ws.root}/layer_3"
    with pytest.raises(FileNotFoundError):
        ws.get("proj/block_000001")
    with pytest.raises(ValueError, match="invalid workspace key"):
        ws.put("../escape", z=np.zeros(1))


@pytest.mark.timeout(120)
def test_fit_space_writes_its_workspace_to_s3(s3_bucket):
    x = blobs(6, 3, 900, 5)
    cfg = CTConfig(pca_dim=3, cells=3, kmeans_nredo=2, kmeans_niter=5, block_rows=400)
    ws = Workspace(f"s3://{s3_bucket}/fit/layer_1")
    fit = fit_space(ArrayRows(x), cfg, ws)
    with temporary_workspace() as local:
        ref = fit_space(ArrayRows(x), cfg, local)
        assert fit.space.centroids.tobytes() == ref.space.centroids.tobytes()
        for g, c in zip(*np.nonzero(fit.block_cells), strict=True):
            key = f"cells/cell_{c:04d}/block_{g:06d}"
            assert ws.get(key)["rows"].tolist() == local.get(key)["rows"].tolist()


def test_new_config_fields_are_checked_and_recorded():
    cfg = CTConfig()
    assert (cfg.block_rows, cfg.kmeans_seed_sample, cfg.search_rows) == (65536, 100_000, 262144)
    for name in ("block_rows", "kmeans_seed_sample", "search_rows"):
        with pytest.raises(FieldError, match=f"ct.{name}=0: must be an integer >= 1"):
            CTConfig(**{name: 0})
    with pytest.raises(FieldError, match=r"ct.kmeans_seed_sample=5: must be an integer >= ct.cells \(10\)"):
        CTConfig(kmeans_seed_sample=5)
    method = method_record(CTConfig(block_rows=4096, kmeans_seed_sample=5000))
    assert "hash sample of ~5000" in method["cells"] and "row blocks of 4096" in method["cells"]
    assert method["kmeans_points"] == "all training samples, in row blocks of 4096"
    sampled = method_record(CTConfig(kmeans_sample=700))
    assert "hash sample of ~700" in sampled["kmeans_points"] and "hash sample of ~700" in sampled["cells"]
