"""memray.stats.queries: query sets projected by block tasks into a query workspace; rounds read them back there."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from memray.io.rows import ArrayRows
from memray.stats import ScoreInputError
from memray.stats.config import CTConfig
from memray.stats.engine import fit_layer_engine, score_sets
from memray.stats.queries import QUERY_ROWS, project_sets, read_block
from memray.stats.workspace import Workspace


def clusters(seed: int, n: int, d: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(scale=4.0, size=(4, d))
    return (centres[rng.integers(0, 4, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    cfg = CTConfig(mode="meehan", cells=4, pca_dim=6, kmeans_nredo=1, block_rows=128)
    ws = Workspace(str(tmp_path_factory.mktemp("ws")))
    return fit_layer_engine(1, ArrayRows(clusters(0, 700)), clusters(1, 230), cfg, ws)


@pytest.mark.parametrize("block_rows", [1024, 2048, QUERY_ROWS])
def test_blocks_write_their_rows_by_cell_and_read_back_in_order(tmp_path, engine, block_rows):
    x = clusters(2, 2600)
    qws = Workspace(str(tmp_path))
    (proj,) = project_sets(qws, engine.space, [("a", ArrayRows(x), "set a")], block_rows)
    z = engine.space.project(x)
    assert np.array_equal(proj.cells, engine.space.assign(z))  # the cells the caller keeps: 8 B per row
    blocks = proj.blocks()
    assert [(b.start, b.stop) for b in blocks] == [(s, min(s + block_rows, 2600)) for s in range(0, 2600, block_rows)]
    back = np.concatenate([read_block(qws, b) for b in blocks])
    assert back.tobytes() == z.tobytes()  # the very bits of the set projected whole
    keys = proj.keys_by_cell()
    assert sorted(keys) == sorted(set(proj.cells.tolist()))
    assert sum(len(qws.get(k)["rows"]) for ks in keys.values() for k in ks) == 2600


def test_a_bad_row_is_named_by_its_row_in_the_set_and_blocks_must_align(tmp_path, engine):
    x = clusters(3, 2100)
    x[1061, 2] = np.nan
    with pytest.raises(ScoreInputError, match=r"gen set 'g', layer 1: NaN/inf values in 1 row\(s\) \[1061\]"):
        project_sets(Workspace(str(tmp_path)), engine.space, [("g", ArrayRows(x), "gen set 'g', layer 1")], 1024)
    with pytest.raises(ValueError, match="multiple of 1024"):
        project_sets(Workspace(str(tmp_path)), engine.space, [("g", ArrayRows(x), "g")], 1000)


def test_round_results_do_not_depend_on_the_query_blocks(engine):
    gens = {"a": clusters(4, 3000), "b": clusters(5, 41)}
    got = {}
    for rows in (QUERY_ROWS, 1024, 2048):
        eng = dataclasses.replace(engine, test=None, projected={}, query_rows=rows, rounds=rows)
        res = score_sets(eng, gens)
        got[rows] = [eng.test, *res.values()]
    for rows in (1024, 2048):
        for a, b in zip(got[QUERY_ROWS], got[rows], strict=True):
            assert a.dist.tobytes() == b.dist.tobytes()
            assert np.array_equal(a.nn, b.nn) and np.array_equal(a.cell, b.cell)


def test_sets_for_the_topk_only_write_one_file_per_block(tmp_path, engine):
    """``by_cell=False`` (views, evidence): the whole block alone, the same bits; the in-cell search refuses it."""
    x = clusters(3, 2600)
    qws = Workspace(str(tmp_path))
    (proj,) = project_sets(qws, engine.space, [("v", ArrayRows(x), "view")], 1024, by_cell=False)
    files = sorted(p.name for p in (tmp_path / "v").iterdir())
    assert files == [f"all.block_{g:06d}.npz" for g in range(3)]
    back = np.concatenate([read_block(qws, b) for b in proj.blocks()])
    assert back.tobytes() == engine.space.project(x).tobytes()
    with pytest.raises(ValueError, match="without cell parts"):
        proj.keys_by_cell()
