"""memray.stats.pca / workspace.reduce_ordered: block moments merged in block order vs reduce.fit_pca, the fixed
reduction tree, and bit-identity across Rows piece layouts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from threadpoolctl import threadpool_limits

from memray.io.rows import ArrayRows
from memray.stats.pca import (
    Moments,
    block_moments,
    fit_pca,
    merge_moments,
    moments_of,
    pca_from_moments,
    top_components,
)
from memray.stats.workspace import block_count, block_range, reduce_ordered


class ChunkedRows:
    """Rows held as several arrays of uneven sizes; a read is assembled from the chunks it overlaps (another
    piece layout of the same rows)."""

    def __init__(self, x: np.ndarray, cuts: list[int]) -> None:
        self.chunks = np.split(np.asarray(x), cuts)
        self.offsets = np.cumsum([0] + [len(c) for c in self.chunks])
        self.n, self.dim = len(x), int(x.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for c, lo in zip(self.chunks, self.offsets[:-1], strict=True):
            a, b = max(start, lo), min(stop, lo + len(c))
            if b > a:
                parts.append(np.asarray(c[a - lo : b - lo], dtype=np.float32))
        return np.ascontiguousarray(np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32))

    def ids(self, rows: np.ndarray) -> np.ndarray:
        return np.array([str(r) for r in np.asarray(rows).tolist()], dtype=object)


def tree(items: list, merge):
    """The documented association, written recursively: the largest power of two below len(items) goes left."""
    if len(items) == 1:
        return items[0]
    half = 1 << ((len(items) - 1).bit_length() - 1)
    return merge(tree(items[:half], merge), tree(items[half:], merge))


def data(seed: int = 0, n: int = 5000, d: int = 30, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(6.0, 0.2, d) + offset).astype(np.float32)  # distinct variances


def blockwise(rows, block_rows: int) -> Moments:
    return reduce_ordered(
        (block_moments(rows, *block_range(g, block_rows, rows.n)) for g in range(block_count(rows.n, block_rows))),
        merge_moments,
    )


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 12, 17, 33])
def test_reduce_ordered_uses_the_fixed_tree(n):
    items = [str(i) for i in range(n)]
    paren = lambda a, b: f"({a} {b})"  # noqa: E731  (not associative: the string shows the tree)
    assert reduce_ordered(iter(items), paren) == tree(items, paren)
    if n == 7:
        assert reduce_ordered(items, paren) == "(((0 1) (2 3)) ((4 5) 6))"


def test_reduce_ordered_streams_with_logarithmic_memory():
    live = {"now": 0, "max": 0}

    def gen(n):
        for i in range(n):
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
            yield i

    def merge(a, b):
        live["now"] -= 1
        return a + b

    assert reduce_ordered(gen(1000), merge) == sum(range(1000))
    assert live["max"] <= (1000).bit_length() + 1  # log2(n) + 1 partials, never all 1000
    with pytest.raises(ValueError, match="nothing to reduce"):
        reduce_ordered([], merge)


def test_merge_moments_is_the_moments_of_the_union():
    x = data(1, 900, 7).astype(np.float64)
    a, b = moments_of(x[:300]), moments_of(x[300:])
    m = merge_moments(a, b)
    centred = x - x.mean(axis=0)
    assert m.n == 900
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(m.m2, centred.T @ centred, rtol=1e-12)
    assert np.array_equal(m.m2, m.m2.T)  # exactly symmetric
    empty = Moments(0, np.zeros(7), np.zeros((7, 7)))
    assert merge_moments(empty, a) is a and merge_moments(a, empty) is a


@pytest.mark.parametrize("block_rows", [700, 1024, 4999])
def test_block_pca_equals_fit_pca(block_rows):
    x = data(2, offset=3.0)
    mean, comps, var = pca_from_moments(blockwise(ArrayRows(x), block_rows), 10)
    ref_mean, ref_comps, ref_var = fit_pca(x, 10)
    cos = np.abs(np.sum(comps * ref_comps, axis=0))
    assert np.max(np.abs(1.0 - cos)) < 1e-12
    assert np.max(np.abs(var / ref_var - 1.0)) < 1e-10
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-12)
    assert np.all(comps[np.argmax(np.abs(comps), axis=0), np.arange(10)] > 0)  # fit_pca's sign rule
    assert np.all(np.diff(var) <= 0)


def test_one_block_is_bit_identical_to_fit_pca():
    x = data(3, 3000, 20)
    got = pca_from_moments(blockwise(ArrayRows(x), 3000), 6)
    ref = fit_pca(x, 6)
    for a, b in zip(got, ref, strict=True):
        assert a.tobytes() == b.tobytes()


def test_moments_are_bit_identical_across_piece_layouts():
    x = data(4, 5000, 12)
    ref = blockwise(ArrayRows(x), 1000)
    for cuts in ([1, 999, 1000, 1001, 4321], [2500], list(range(37, 5000, 37))):
        got = blockwise(ChunkedRows(x, cuts), 1000)
        assert got.n == ref.n and got.mean.tobytes() == ref.mean.tobytes() and got.m2.tobytes() == ref.m2.tobytes()
    pca = [a.tobytes() for a in pca_from_moments(ref, 5)]
    assert [a.tobytes() for a in pca_from_moments(blockwise(ChunkedRows(x, [7, 4000]), 1000), 5)] == pca


def test_pca_from_moments_rejects_bad_requests():
    m = moments_of(data(5, 10, 4))
    with pytest.raises(ValueError, match="k=5 components of a 4-dimensional space"):
        pca_from_moments(m, 5)
    with pytest.raises(ValueError, match="no rows"):
        pca_from_moments(Moments(0, np.zeros(4), np.zeros((4, 4))), 2)


def test_components_do_not_depend_on_the_blas_thread_count():
    """LAPACK's dsyevr gives other bits on other BLAS thread counts for d ≥ 384 (1 vs 2 threads here): the
    components are the same whatever the caller's thread limit, and equal the one-thread solve."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2000, 768))
    cov = a.T @ a
    got = []
    for limit in (1, 2, None):
        with threadpool_limits(limit, user_api="blas"):
            got.append(top_components(cov, 64))
    for comps, var in got[1:]:
        assert comps.tobytes() == got[0][0].tobytes() and var.tobytes() == got[0][1].tobytes()
    with threadpool_limits(1, user_api="blas"):
        evals, _ = scipy.linalg.eigh(cov, lower=False, subset_by_index=[768 - 64, 767], driver="evr")
    assert got[0][1].tobytes() == np.maximum(evals[::-1], 0.0).tobytes()
