"""Small work items share a task (packed_map), a one-block k-means runs every pass in one task: same results."""

import numpy as np

from memray.stats import kmeans, packed_map
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
