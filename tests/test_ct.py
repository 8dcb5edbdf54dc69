"""The C_T statistic: U/Z on hand-computed cases, per-cell table and the weighted mean."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from memray.io import schema
from memray.stats.ct import CellStats, average_ranks, cell_table, ct_from_cells, mann_whitney_z


def test_average_ranks_hand_case():
    # values 5, 1, 3, 3, 3, 9 -> sorted 1 | 3 3 3 | 5 | 9: ranks 1 | (2+3+4)/3=3 | 5 | 6
    assert average_ranks(np.array([5.0, 1.0, 3.0, 3.0, 3.0, 9.0])).tolist() == [5.0, 1.0, 3.0, 3.0, 3.0, 6.0]


def test_mann_whitney_z_ties_hand_computed():
    # gen = [1, 2, 2], test = [2, 3]. Pooled sorted: 1(g) 2(t) 2(g) 2(g) 3(t).
    # Ranks: 1 -> 1; the three 2s share ranks 2, 3, 4 -> 3 each; 3 -> 5.
    # Rank-sum of gen = 1 + 3 + 3 = 7; m = 3, n = 2; U = 7 - 3*4/2 = 1.
    # (Pair count check: g=1 beats nothing, each g=2 ties the t=2 -> 0.5 + 0.5 = 1.)
    # mean = n*m/2 - 0.5 = 2.5; var = n*m*(n+m+1)/12 = 2*3*6/12 = 3; Z = (1 - 2.5)/sqrt(3) = -0.8660254...
    z = mann_whitney_z(np.array([1.0, 2.0, 2.0]), np.array([2.0, 3.0]))
    assert z == pytest.approx(-1.5 / math.sqrt(3.0), abs=1e-15)
    assert z == pytest.approx(-0.8660254037844386, abs=1e-15)


def test_mann_whitney_z_matches_scipy_u_with_many_ties():
    rng = np.random.default_rng(3)
    gen, test = rng.integers(0, 6, 57).astype(float), rng.integers(0, 6, 83).astype(float)
    u = mannwhitneyu(gen, test).statistic  # U of the first sample
    n, m = len(test), len(gen)
    expected = (u - (n * m / 2 - 0.5)) / math.sqrt(n * m * (n + m + 1) / 12)
    assert mann_whitney_z(gen, test) == pytest.approx(expected, abs=1e-12)


def test_mann_whitney_sign_convention_and_edge_cases():
    close, far = np.linspace(0.0, 0.1, 40), np.linspace(1.0, 2.0, 50)
    assert mann_whitney_z(close, far) < -5  # generated closer than test -> copying -> negative
    assert mann_whitney_z(far, close) > 5
    assert mann_whitney_z(np.zeros(0), far) == 0.0  # reference: no generated sample -> Z = 0
    assert math.isnan(mann_whitney_z(close, np.zeros(0)))


def test_cell_table_statuses_and_counts():
    # 4 cells: 0 ok, 1 few generated, 2 no test sample, 3 no training sample
    test_d = np.array([1.0, 2.0, 3.0, 1.5, 2.5])
    test_cells = np.array([0, 0, 0, 1, 1])
    gen_d = np.array([0.5, 0.7, 0.9, 1.1, 0.2, 9.0])
    gen_cells = np.array([0, 0, 0, 1, 2, 2])
    stats = cell_table(test_d, test_cells, gen_d, gen_cells, np.array([5, 4, 3, 0]), min_gen_per_cell=2)
    assert stats.status.tolist() == [schema.CELL_OK, schema.CELL_FEW_GEN, schema.CELL_NO_TEST, schema.CELL_NO_TRAIN]
    assert stats.kept.tolist() == [True, False, False, False]
    assert stats.n_test.tolist() == [3, 2, 0, 0] and stats.n_gen.tolist() == [3, 1, 2, 0]
    assert stats.n_train.tolist() == [5, 4, 3, 0]
    assert stats.z[0] == pytest.approx(mann_whitney_z(gen_d[:3], test_d[:3]))
    assert stats.z[1] == pytest.approx(mann_whitney_z(gen_d[3:4], test_d[3:]))
    assert np.isnan(stats.z[2]) and np.isnan(stats.z[3])


def test_cell_table_keep_rule_is_strictly_more_than():
    test_cells, gen_cells = np.zeros(5, int), np.zeros(20, int)
    stats = cell_table(np.ones(5), test_cells, np.ones(20), gen_cells, np.array([3]), min_gen_per_cell=20)
    assert not stats.kept[0] and stats.status[0] == schema.CELL_FEW_GEN
    stats = cell_table(np.ones(5), test_cells, np.ones(20), gen_cells, np.array([3]), min_gen_per_cell=19)
    assert stats.kept[0]


def test_ct_is_test_share_weighted_mean_of_kept_cells():
    # cells with z = -2, 1, 7 and 30, 10, 60 test samples; cell 2 is not kept (too few generated samples).
    # P = 0.3, 0.1, 0.6; C_T = (0.3*-2 + 0.1*1) / (0.3 + 0.1) = -0.5/0.4 = -1.25
    stats = CellStats(
        z=np.array([-2.0, 1.0, 7.0]),
        n_train=np.array([9, 9, 9]),
        n_test=np.array([30, 10, 60]),
        n_gen=np.array([25, 25, 3]),
        kept=np.array([True, True, False]),
        status=np.array([schema.CELL_OK, schema.CELL_OK, schema.CELL_FEW_GEN], dtype=object),
        min_gen_per_cell=20,
    )
    assert ct_from_cells(stats) == pytest.approx(-1.25, abs=1e-15)


def test_ct_nan_when_no_cell_kept_warns_with_hint(caplog):
    stats = cell_table(np.ones(50), np.repeat([0, 1], 25), np.ones(30), np.repeat([0, 1], 15), np.array([5, 5]), 20)
    with caplog.at_level(logging.WARNING, logger="memray.stats.ct"):
        assert math.isnan(ct_from_cells(stats, "gen set 'tiny', layer 3"))
    msg = caplog.text
    assert "gen set 'tiny', layer 3" in msg
    assert "fullest usable cell has 15" in msg and "about 42 generated samples" in msg  # ceil(21*30/15)


def test_cell_table_rejects_cells_out_of_range():
    with pytest.raises(ValueError, match="cell numbers"):
        cell_table(np.ones(2), np.array([0, 3]), np.ones(1), np.array([0]), np.array([1, 1]), 0)
