"""Small work items share a task (packed_map), a one-block k-means runs every pass in one task: same results;
run_in_flight runs items at once, raises the first failure in item order and cancels what had not started."""

import threading

import numpy as np
import pytest

from memray.stats import kmeans, local_threads, packed_map, run_in_flight
from memray.stats.config import CTConfig
from memray.stats.score import fit_layer


class Recorder:
    """Builtin ``map`` semantics (items run in reverse), recording how many items each call got."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.fns: list[object] = []

    def __call__(self, fn, items):
        items = list(items)
        self.sizes.append(len(items))
        self.fns.append(getattr(fn, "func", fn))
        return [fn(x) for x in items[::-1]][::-1]


def test_packed_map_keeps_order_and_packs_only_small_items():
    rec = Recorder()
    got = packed_map(rec, lambda x: x * 10, [1, 2, 3, 4, 5], work=[1, 1, 5, 1, 1], least=2)
    assert got == [10, 20, 30, 40, 50]
    assert rec.sizes == [3]  # chunks [1, 2], [3], [4, 5]: three tasks for five items
    rec = Recorder()
    assert packed_map(rec, str, [7, 8], work=[9, 9], least=2) == ["7", "8"]
    assert rec.sizes == [2]  # every item big enough: one task each, no packing
    assert packed_map(rec, str, [], work=[], least=2) == []


def test_one_block_kmeans_runs_in_one_task_with_the_same_fit():
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(400, 8)) + 4 * rng.integers(0, 3, (400, 1))).astype(np.float32)
    test = rng.normal(size=(100, 8)).astype(np.float32)
    cfg = CTConfig(mode="meehan", cells=3, pca_dim=4, kmeans_nredo=3)
    rec = Recorder()
    packed, inline = fit_layer(1, train, None, test, cfg, rec), fit_layer(1, train, None, test, cfg)
    try:
        np.testing.assert_array_equal(packed.space.centroids, inline.space.centroids)
        np.testing.assert_array_equal(packed.train_counts, inline.train_counts)
        assert kmeans._lloyd_item not in rec.fns  # no call per Lloyd pass…
        assert rec.fns.count(kmeans._lloyd_one) == 1  # …but one task for all of them
    finally:
        packed.close()
        inline.close()


def test_run_in_flight_overlaps_items_and_raises_the_first_failure_in_item_order():
    both = threading.Barrier(2, timeout=30)  # broken (and the test failed) unless two items run at once
    seen: list[int] = []

    def fn(x: int) -> None:
        if x < 2:
            both.wait()
        seen.append(x)

    run_in_flight(fn, [0, 1, 2, 3], width=2)
    assert sorted(seen) == [0, 1, 2, 3]

    started: list[int] = []
    gate = threading.Event()

    def failing(x: int) -> None:
        started.append(x)
        if x == 1:  # item 1 fails only after item 0 has failed: item order, not time order, picks the error
            gate.wait(30)
            raise KeyError(x)
        if x == 0:
            gate.set()
            raise ValueError(x)

    with pytest.raises(ValueError):
        run_in_flight(failing, [0, 1, 2, 3, 4, 5], width=2)
    assert sorted(started)[:2] == [0, 1] and len(started) < 6  # the items behind the failures were cancelled
    seen.clear()
    run_in_flight(seen.append, [5, 6, 7], width=1)
    assert seen == [5, 6, 7]  # width 1: in order, in this thread


def test_local_threads_runs_items_together_in_order_and_leaves_other_mappers_alone():
    rec = Recorder()
    assert local_threads(rec) is rec  # a job's mapper (Ray tasks) is used as given
    assert local_threads(map, width=1) is map
    from memray.stats.device import DeviceMapper

    wrapped = DeviceMapper(rec, "cpu")
    assert local_threads(wrapped, width=2) is wrapped  # a wrapped job mapper stays
    barrier = threading.Barrier(2, timeout=10)  # breaks unless two items run at once

    def item(x):
        barrier.wait()
        return x * 2

    assert local_threads(map, width=2)(item, [3, 1, 4, 1]) == [6, 2, 8, 2]
    assert local_threads(DeviceMapper(map, "cpu"), width=2)(item, [5, 2]) == [10, 4]  # `memray score`: in process
    from threadpoolctl import threadpool_info

    def numpy_blas_threads(_):  # numpy's own BLAS (FAISS' follows OpenMP, set per thread by faiss_scope)
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    assert numpy_blas_threads(0)  # numpy's BLAS is there to be limited
    assert local_threads(map, width=2)(numpy_blas_threads, [0, 1]) == [[1], [1]]  # the threads are the parallelism
    with pytest.raises(ZeroDivisionError):
        local_threads(map, width=2)(lambda x: 1 // x, [1, 0, 2])
