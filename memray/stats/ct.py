"""The C_T statistic (Meehan, Chaudhuri, Dasgupta 2020) from nearest-training-neighbour distances, pure numpy.

Per cell π with n test and m generated distances: U = rank-sum of the generated distances in the pooled sample
minus m(m+1)/2 (ties get average ranks); ``Z = (U − (n·m/2 − 0.5)) / sqrt(n·m·(n+m+1)/12)`` (continuity term
0.5, no tie correction in the variance — the reference's exact formula). A cell is kept iff it holds more than
``min_gen_per_cell`` generated samples (τ·m with τ = 20/m) and has test and training samples.
``C_T = Σ_kept P(π)·Z(π) / Σ_kept P(π)`` with P(π) the share of test samples in π. C_T ≪ 0: generated samples
sit closer to the training set than fresh data does (copying); C_T ≫ 0: farther (underfitting).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from memray.io import schema

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CellStats:
    """Per-cell statistics, arrays of length ``cells`` indexed by cell number.

    ``z`` is NaN where undefined (no test or no training sample) and 0 where a cell has no generated sample.
    ``status`` holds ``schema.CELL_OK``/``CELL_FEW_GEN``/``CELL_NO_TEST``/``CELL_NO_TRAIN``.
    """

    z: np.ndarray
    n_train: np.ndarray
    n_test: np.ndarray
    n_gen: np.ndarray
    kept: np.ndarray
    status: np.ndarray
    min_gen_per_cell: int

    @property
    def cells(self) -> int:
        """Number of cells."""
        return len(self.z)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (n,) with ties sharing the average of their ranks, float64."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 … ends
    ranks = np.empty(len(xs))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def u_to_z(u, n: int, m: int):
    """``(U − (n·m/2 − 0.5)) / sqrt(n·m·(n+m+1)/12)``: the reference's z of U (a float or an array of them)."""
    return (u - (n * m / 2.0 - 0.5)) / math.sqrt(n * m * (n + m + 1) / 12.0)


def mann_whitney_z(gen_d: np.ndarray, test_d: np.ndarray) -> float:
    """Z of the Mann-Whitney U of generated vs test distances; negative when generated samples are closer.

    Returns 0.0 when there is no generated sample (the reference's value) and NaN when there is no test sample.
    """
    gen_d = np.asarray(gen_d, dtype=np.float64).ravel()
    test_d = np.asarray(test_d, dtype=np.float64).ravel()
    m, n = len(gen_d), len(test_d)
    if m == 0:
        return 0.0
    if n == 0:
        return math.nan
    ranks = average_ranks(np.concatenate([test_d, gen_d]))
    u = float(ranks[n:].sum()) - m * (m + 1) / 2.0
    return u_to_z(u, n, m)


def cell_table(
    test_d: np.ndarray,
    test_cells: np.ndarray,
    gen_d: np.ndarray,
    gen_cells: np.ndarray,
    train_counts: np.ndarray,
    min_gen_per_cell: int,
) -> CellStats:
    """Per-cell Z, counts, keep flag and status.

    Args:
        test_d, test_cells: (n,) nearest-training distances and cells of the test samples.
        gen_d, gen_cells: (m,) the same for the generated samples.
        train_counts: (cells,) training samples per cell; its length fixes the number of cells.
        min_gen_per_cell: a cell is kept iff it has more generated samples than this.
    """
    train_counts = np.asarray(train_counts, dtype=np.int64)
    cells = len(train_counts)
    test_cells, gen_cells = np.asarray(test_cells, np.int64), np.asarray(gen_cells, np.int64)
    test_d, gen_d = np.asarray(test_d, np.float64), np.asarray(gen_d, np.float64)
    n_test = np.bincount(test_cells, minlength=cells).astype(np.int64)
    n_gen = np.bincount(gen_cells, minlength=cells).astype(np.int64)
    if len(n_test) > cells or len(n_gen) > cells:
        raise ValueError(f"cell numbers must lie in [0, {cells}); got up to {max(len(n_test), len(n_gen)) - 1}")
    z = np.full(cells, np.nan)
    status = np.empty(cells, dtype=object)
    for c in range(cells):
        if train_counts[c] == 0:
            status[c] = schema.CELL_NO_TRAIN
        elif n_test[c] == 0:
            status[c] = schema.CELL_NO_TEST
        else:
            z[c] = mann_whitney_z(gen_d[gen_cells == c], test_d[test_cells == c])
            status[c] = schema.CELL_OK if n_gen[c] > min_gen_per_cell else schema.CELL_FEW_GEN
    kept = status == schema.CELL_OK
    return CellStats(z, train_counts, n_test, n_gen, kept.astype(bool), status, int(min_gen_per_cell))


def ct_from_cells(stats: CellStats, label: str | None = None) -> float:
    """Test-share-weighted mean of the kept cells' Z; NaN (with a warning naming ``label``) if none is kept."""
    if not stats.kept.any():
        if label is not None:
            log.warning("%s: C_T is NaN: %s", label, needed_samples_hint(stats))
        return math.nan
    share = stats.n_test / stats.n_test.sum()
    w = share[stats.kept]
    return float(np.sum(w * stats.z[stats.kept]) / np.sum(w))


def needed_samples_hint(stats: CellStats) -> str:
    """Why no cell was kept and about how many generated samples would keep one."""
    m = int(stats.n_gen.sum())
    usable = np.isin(stats.status, [schema.CELL_OK, schema.CELL_FEW_GEN])
    if m == 0 or not usable.any():
        return "no cell has both test and training samples" if m else "the generated set is empty"
    top = int(stats.n_gen[usable].max())
    need = stats.min_gen_per_cell + 1
    if top == 0:
        return f"no generated sample falls in a cell with test and training samples; a cell needs more than {need - 1}"
    estimate = math.ceil(need * m / top)
    return (
        f"no cell holds more than {need - 1} of the {m} generated samples (the fullest usable cell has {top}); "
        f"at this spread about {estimate} generated samples would keep one cell"
    )
