"""Significance of C_T: one-sided p-values, Holm's correction and a seeded within-cell bootstrap interval.

C_T is a test of a generated SET, not a per-image detector: it asks whether the set as a whole sits closer to
the training data than fresh data does, and a small p says "this set shows copying", never "this image is a
copy" (the per-sample nearest-neighbour distances are the evidence to look at for that).

Null hypothesis (no copying): within every cell, generated and test distances come from the same distribution.
Then each kept cell's Z is approximately N(0, 1) and the cells are independent, so ``C_T = Σ w_c Z_c / Σ w_c``
(w_c = the cell's share of test samples) is ``N(0, Σ w_c² / (Σ w_c)²)`` and its one-sided p is ``Φ(C_T / sd)``
— small when C_T ≪ 0. A cell's own p is ``Φ(Z_c)``. The continuity term in Z makes both slightly conservative.

The bootstrap keeps the partition fixed (cells, kept flags and weights do not change) and resamples generated
and test samples with replacement within each cell; U is counted against the sorted resampled test distances
(ties count one half), so the identity "resample" reproduces :func:`memray.stats.ct.ct_from_cells` exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np
from scipy.special import ndtr

from memray.stats.ct import CellStats, cell_table, u_to_z

# (rng, n, reps) -> (reps, n) int indices into n samples: one resample per row
Draw = Callable[[np.random.Generator, int, int], np.ndarray]

_CHUNK_CELLS = 1 << 22  # bound on reps × test samples handled at once (memory of one chunk: a few × 32 MB)
_SET_CHUNK = 1 << 20  # bound on reps × generated samples of one set and cell drawn at once (a few × 8 MB)


def ct_p_value(z: np.ndarray, weights: np.ndarray) -> float:
    """One-sided p of C_T from the kept cells' Z (k,) and weights (k,) (any positive scale); NaN if none/NaN."""
    z = np.asarray(z, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(z) != len(w):
        raise ValueError(f"z has {len(z)} cells but weights has {len(w)}")
    total = float(np.sum(w))
    if len(z) == 0 or not np.isfinite(z).all() or not np.isfinite(w).all() or total <= 0:
        return math.nan
    ct = float(np.sum(w * z)) / total
    sd = math.sqrt(float(np.sum(w * w))) / total
    return float(ndtr(ct / sd))


def ct_p_value_from_cells(stats: CellStats) -> float:
    """:func:`ct_p_value` of a cell table's kept cells, weighted by their test counts; NaN when none is kept."""
    kept = stats.kept
    return ct_p_value(stats.z[kept], stats.n_test[kept])


def cell_p_values(stats: CellStats) -> np.ndarray:
    """(cells,) one-sided p ``Φ(Z_c)`` of each kept cell, NaN for the cells that are not kept."""
    out = np.full(stats.cells, np.nan)
    out[stats.kept] = ndtr(stats.z[stats.kept])
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (same shape); NaN entries are ignored and stay NaN.

    With the k non-NaN p sorted ascending, ``adj_(i) = min(1, max_{j<=i} (k − j + 1)·p_(j))`` (1-based), so the
    adjusted values keep the order of the raw ones; reject ``adj < alpha`` to control the family-wise error.
    """
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    if np.any((flat < 0) | (flat > 1)):
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    out = np.full(flat.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(flat))
    k = len(idx)
    if k:
        order = idx[np.argsort(flat[idx], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * flat[order]))
    return out.reshape(p.shape)


def _uniform_draw(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    return rng.integers(0, n, size=(reps, n))


def _set_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def bootstrap_replicates(
    test_d: np.ndarray,
    test_cells: np.ndarray,
    gens: dict[str, tuple[np.ndarray, np.ndarray]],
    train_counts: np.ndarray,
    min_gen_per_cell: int,
    reps: int,
    seed: int,
    draw: Draw = _uniform_draw,
) -> dict[str, np.ndarray]:
    """(reps,) bootstrap replicates of C_T per generated set; all NaN for a set without a kept cell.

    Args:
        test_d, test_cells: (n,) nearest-training distances and cells of the test samples.
        gens: set name -> (gen_d (m,), gen_cells (m,)); every set is measured against the same test set.
        train_counts, min_gen_per_cell: as :func:`memray.stats.ct.cell_table` (they fix the kept cells).
        reps, seed: number of resamples; the test resample of cell c comes from ``default_rng([seed, 0, c])``
            and a set's from ``default_rng([seed, 1, crc32(name), c])``, so a set's replicates depend only on
            the test set, its own samples and the seed (not on the other sets in the call).
        draw: ``(rng, n, reps) -> (reps, n)`` indices of each resample (default: uniform with replacement).
    """
    test_d, test_cells = np.asarray(test_d, np.float64), np.asarray(test_cells, np.int64)
    stats, gd = {}, {}
    for name, (d, c) in gens.items():
        d, c = np.asarray(d, np.float64), np.asarray(c, np.int64)
        stats[name] = cell_table(test_d, test_cells, d, c, train_counts, min_gen_per_cell)
        gd[name] = (d, c)
    zs = {name: np.zeros((reps, int(st.kept.sum()))) for name, st in stats.items()}
    col = {name: np.cumsum(st.kept) - 1 for name, st in stats.items()}  # cell -> column among the kept cells
    for c in range(len(np.asarray(train_counts))):
        users = [name for name, st in stats.items() if st.kept[c]]
        if not users:
            continue
        cell_d = {name: gd[name][0][gd[name][1] == c] for name in users}
        for name, z in _cell_z(test_d[test_cells == c], cell_d, c, reps, seed, draw).items():
            zs[name][:, col[name][c]] = z
    return {name: _weighted_ct(st, zs[name], reps) for name, st in stats.items()}


def _cell_z(
    test_d: np.ndarray, gen_d: dict[str, np.ndarray], c: int, reps: int, seed: int, draw: Draw
) -> dict[str, np.ndarray]:
    """(reps,) bootstrap Z of cell ``c`` per set, from its test distances (n,) and each set's distances there.

    The test resamples come from ``default_rng([seed, 0, c])`` and are shared by the sets; they are drawn in chunks
    of at most ``_CHUNK_CELLS`` entries (the generator's stream runs on across the chunks).
    """
    ut, tinv = np.unique(test_d, return_inverse=True)
    n, k = len(tinv), len(ut)
    sets = []
    for name, g in gen_d.items():
        pos = np.searchsorted(ut, g, side="left")
        eq = (pos < k) & (ut[np.minimum(pos, k - 1)] == g)
        sets.append((name, len(g), pos, eq.astype(np.int64), np.random.default_rng([seed, 1, _set_key(name), c])))
    out = {name: np.zeros(reps) for name in gen_d}
    rng_t = np.random.default_rng([seed, 0, c])
    chunk = max(1, _CHUNK_CELLS // max(n, k + 1))
    for r0 in range(0, reps, chunk):
        b = min(chunk, reps - r0)
        base = (np.arange(b, dtype=np.int64) * (k + 1))[:, None]
        # h[r, v]: copies of the v-th distinct test distance in resample r (column k: none, for "above all")
        h = np.bincount((tinv[draw(rng_t, n, b)] + base).ravel(), minlength=b * (k + 1))
        less = (np.cumsum(h.reshape(b, k + 1), axis=1) - h.reshape(b, k + 1)).ravel()
        for name, m, pos, eq, rng_g in sets:
            u2 = _set_u2(draw, rng_g, m, b, pos, eq, less, h, k)
            out[name][r0 : r0 + b] = u_to_z(u2 / 2.0, n, m)
    return out


def _weighted_ct(stats: CellStats, z: np.ndarray, reps: int) -> np.ndarray:
    """(reps,) C_T replicates from the kept cells' bootstrap Z (reps, kept), weighted by test share; NaN if none."""
    if not stats.kept.any():
        return np.full(reps, np.nan)
    share = stats.n_test / stats.n_test.sum()
    w = share[stats.kept]
    return np.sum(w * z, axis=1) / np.sum(w)


def _set_u2(
    draw: Draw, rng: np.random.Generator, m: int, b: int, pos: np.ndarray, eq: np.ndarray, less: np.ndarray,
    h: np.ndarray, k: int,
) -> np.ndarray:  # fmt: skip
    """2·U (b,) of ``b`` resamples of one set's ``m`` distances in a cell against the test resamples' counts.

    ``pos``/``eq`` (m,): each distance's place among the k distinct test distances and whether it equals one;
    ``less``/``h`` (b·(k+1),): per resample, test copies below / at each place. The resamples are drawn in rows of
    at most ``_SET_CHUNK`` entries (memory O(_SET_CHUNK), not O(b·m)); the generator's stream runs on across the
    calls, so the draws, and the result, are those of one ``draw(rng, m, b)``.
    """
    out = np.empty(b, dtype=np.int64)
    step = max(1, _SET_CHUNK // max(m, 1))
    for r in range(0, b, step):
        j = draw(rng, m, min(step, b - r))
        at = pos[j] + (np.arange(r, r + len(j), dtype=np.int64) * (k + 1))[:, None]
        out[r : r + len(j)] = (2 * less[at] + h[at] * eq[j]).sum(axis=1)  # 2·U, exact integers
    return out


def bootstrap_ct(
    test_d: np.ndarray,
    test_cells: np.ndarray,
    gens: dict[str, tuple[np.ndarray, np.ndarray]],
    train_counts: np.ndarray,
    min_gen_per_cell: int,
    reps: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Seeded percentile ``level`` interval ``(low, high)`` of C_T per generated set (see :func:`bootstrap_replicates`).

    ``(NaN, NaN)`` when ``reps`` is 0 or the set keeps no cell.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if reps <= 0:
        return {name: (math.nan, math.nan) for name in gens}
    reps_ct = bootstrap_replicates(test_d, test_cells, gens, train_counts, min_gen_per_cell, reps, seed)
    tail = 100 * (1 - level) / 2
    out = {}
    for name, x in reps_ct.items():
        if np.isnan(x).any():
            out[name] = (math.nan, math.nan)
        else:
            low, high = np.percentile(x, [tail, 100 - tail])
            out[name] = (float(low), float(high))
    return out
