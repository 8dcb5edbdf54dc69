"""memray.stats.device: the block arithmetic in torch float64 agrees with the numpy path (moments, projection, Lloyd
partials, cells: ties to the lower cell), the whole fit gives the same cells and C_T, and the device is chosen,
refused and recorded as configured. Torch runs on the CPU here; the ``gpu`` tests repeat the checks on CUDA."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from memray.config import ConfigError
from memray.stats import device
from memray.stats.config import CTConfig
from memray.stats.device import DeviceMapper, TorchBackend, resolve, task_device
from memray.stats.kmeans import lloyd_stats
from memray.stats.pca import moments_of
from memray.stats.score import fit_layer
from memray.stats.space import LayerSpace

RTOL = 1e-12  # float64 sums in another order (the README's stated tolerance)
CT_TOL = 1e-9


def blobs(seed: int, n: int, d: int, cells: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(cells, d))
    return (centres[rng.integers(0, cells, n)] + rng.normal(size=(n, d))).astype(np.float32)


class Counting(TorchBackend):
    """A torch backend that counts its calls: the checks below see that the torch path ran, not numpy's."""

    def __init__(self, dev: str) -> None:
        super().__init__(dev)
        self.calls: Counter[str] = Counter()

    def moments(self, x):
        self.calls["moments"] += 1
        return super().moments(x)

    def project(self, x, mean, components):
        self.calls["project"] += 1
        return super().project(x, mean, components)

    def assign(self, z, centroids):
        self.calls["assign"] += 1
        return super().assign(z, centroids)

    def lloyd(self, z, centroids, sums, objective):
        self.calls["lloyd"] += 1
        return super().lloyd(z, centroids, sums, objective)


@contextmanager
def on(dev: str, *used: str) -> Iterator[Counting]:
    """Torch on ``dev`` for the block arithmetic of the ``with`` block, which must call each of ``used``."""
    backend = Counting(dev)
    with device.use(backend):
        yield backend
    assert set(used) <= set(backend.calls), (used, backend.calls)


def check_moments(dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "TORCH_ROWS", 700)  # several chunks, the last one padded
    x = blobs(0, 2500, 24) + 50.0  # far from the origin: the centring matters
    ref = moments_of(x)
    with on(dev, "moments"):
        got = moments_of(x)
    assert got.n == ref.n and got.mean.dtype == got.m2.dtype == np.float64 and got.m2.shape == ref.m2.shape
    np.testing.assert_allclose(got.mean, ref.mean, rtol=RTOL)
    np.testing.assert_allclose(got.m2, ref.m2, rtol=RTOL, atol=RTOL * np.abs(ref.m2).max())
    assert np.array_equal(got.m2, got.m2.T)  # exactly symmetric, as the numpy path's


def check_projection(dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "TORCH_ROWS", 512)
    rng = np.random.default_rng(1)
    x = blobs(1, 1500, 20)
    comps = np.linalg.qr(rng.normal(size=(20, 6)))[0]
    space = LayerSpace(x.mean(axis=0, dtype=np.float64), comps, np.zeros((3, 6), np.float32))
    ref = space.project(x)
    with on(dev, "project"):
        got = space.project(x)
        first = space.project(x[:1024])  # blocks aligned to the chunk rows: the same bits as the whole
    assert got.dtype == np.float64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())
    assert np.array_equal(first, got[:1024])


def check_lloyd(dev: str) -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 8))
    z[:500] = np.round(z[:500])  # integer rows against integer centroids below: exact ties
    centroids = rng.normal(size=(3, 5, 8))
    centroids[0, 1] = centroids[0, 3]  # a duplicated centroid: its rows go to the lower cell, 1
    centroids[1] = np.round(centroids[1] * 2)
    centroids[1, 2], centroids[1, 4] = -np.ones(8), np.ones(8)
    z[:50] = 0.0  # equidistant from cells 2 and 4 of restart 1
    ref = lloyd_stats(z, centroids)
    with on(dev, "lloyd", "assign"):
        got = lloyd_stats(z, centroids)
        counts_only = lloyd_stats(z, centroids, sums=False, objective=False)
    assert np.array_equal(got.counts, ref.counts) and got.counts.dtype == np.int64
    assert got.sums.dtype == np.float64 and got.sums.shape == ref.sums.shape
    np.testing.assert_allclose(got.sums, ref.sums, rtol=RTOL, atol=RTOL * np.abs(ref.sums).max())
    assert [math.fsum(p) for p in got.objective] == [math.fsum(p) for p in ref.objective]  # the same bits
    assert ref.counts[0, 3] == 0 and ref.counts[0, 1] > 0  # the duplicate: every row to the lower cell
    assert np.array_equal(counts_only.counts, ref.counts) and not counts_only.sums.any() and not counts_only.objective


def check_assign(dev: str) -> None:
    rng = np.random.default_rng(3)
    c = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [1.0, 0.0]], dtype=np.float32)  # cells 0 and 3 coincide
    z = np.concatenate([np.zeros((7, 2)), rng.normal(size=(2000, 2)), [[0.0, 1.5]]])  # ties: 0 vs 1, 0 vs 3
    space = LayerSpace(np.zeros(2), None, c)
    ref = space.assign(z)
    with on(dev, "assign"):
        got = space.assign(z)
    assert got.dtype == np.int64 and np.array_equal(got, ref)
    assert (ref[:7] == 0).all() and 3 not in ref.tolist()


def check_fit(dev: str) -> None:
    cfg = CTConfig(mode="meehan", cells=4, pca_dim=8, kmeans_nredo=3, block_rows=700, bootstrap=0, top_k=0)
    x = blobs(4, 4000, 32)
    train, test = x[:2600], x[2600:3500]
    gens = {"copy": train[:400] + 0.01, "fresh": x[3500:]}
    ids = np.arange(len(train)).astype(str)
    ref = fit_layer(1, train, ids, test, cfg)
    with on(dev, "moments", "project", "lloyd", "assign"):
        got = fit_layer(1, train, ids, test, cfg)
        got_sets = got.score_sets(gens)
    ref_sets = ref.score_sets(gens)
    try:
        np.testing.assert_allclose(got.space.centroids, ref.space.centroids, rtol=1e-6)  # float32, as stored
        assert np.array_equal(got.train_counts, ref.train_counts) and np.array_equal(got.test_cells, ref.test_cells)
        for name in gens:
            assert np.array_equal(got_sets[name].cell, ref_sets[name].cell)
            assert np.array_equal(got_sets[name].nn, ref_sets[name].nn)
            assert abs(got_sets[name].ct - ref_sets[name].ct) <= CT_TOL
            np.testing.assert_allclose(got_sets[name].dist, ref_sets[name].dist, rtol=1e-9)
    finally:
        got.close()
        ref.close()


@pytest.mark.parametrize("check", [check_moments, check_projection])
def test_torch_block_arithmetic_matches_numpy(check, monkeypatch: pytest.MonkeyPatch) -> None:
    check("cpu", monkeypatch)


@pytest.mark.parametrize("check", [check_lloyd, check_assign, check_fit])
def test_torch_cells_and_ct_match_numpy(check) -> None:
    check("cpu")


@pytest.mark.gpu
def test_cuda_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    check_moments("cuda", monkeypatch)
    check_projection("cuda", monkeypatch)
    for check in (check_lloyd, check_assign, check_fit):
        check("cuda")
    with device.use(resolve("auto")):
        assert device.current() is not None and device.current().name == "cuda"


def test_device_choice_is_resolved_refused_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert resolve("cpu") is None and resolve("auto") is None
    with pytest.raises(ConfigError) as info:
        resolve("cuda")
    assert "\n" not in str(info.value) and str(info.value).startswith("resources.score_device=cuda: this task sees no")

    calls = []

    def square(v: int) -> int:
        calls.append(device.current())
        return v * v

    mapper = DeviceMapper(map, "auto")
    assert list(mapper(square, [1, 2, 3])) == [1, 4, 9] and mapper.devices == {"cpu"} and calls == [None] * 3
    with pytest.raises(ConfigError, match="score_device=cuda"):
        list(DeviceMapper(map, "cuda")(square, [1]))

    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(device, "TorchBackend", lambda dev="cuda": TorchBackend("cpu"))  # torch on the CPU stands in
    mapper = DeviceMapper(lambda fn, items: [fn(x) for x in items], "auto")
    assert mapper(square, [4]) == [16] and mapper.devices == {"torch-cpu"} and calls[-1].name == "torch-cpu"

    class NoGpuTasks:  # a Ray mapper whose tasks are given no GPU: auto stays on the CPU
        def __init__(self) -> None:
            self.num_gpus, self.nodes = 0.0, {"n1"}

        def __call__(self, fn, items):
            return [fn(x) for x in items]

    assert task_device("auto", NoGpuTasks()) == "cpu" and task_device("cuda", NoGpuTasks()) == "cuda"
    assert task_device("auto", map) == "auto"
    mapper = DeviceMapper(NoGpuTasks(), "auto")
    assert mapper(square, [5]) == [25] and mapper.devices == {"cpu"} and mapper.nodes == {"n1"}
