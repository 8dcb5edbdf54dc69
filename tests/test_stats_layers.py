"""memray.stats.layers: the scoring loop reads query rows only inside mapper items and gets per-sample tables back
as part files; the result equals ``score_features`` (the same loop over in-memory rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memray.io.features import FeatureSet
from memray.io.rows import ArrayRows
from memray.stats import queries
from memray.stats.config import CTConfig
from memray.stats.layer_io import LayerSets
from memray.stats.layers import ArraySource, MemorySink, score_features, score_layers
from memray.stats.tables import ScoreResult, concat_pieces

INSIDE = [False]  # whether a mapper item is running


def mapper(fn, items):
    """Builtin map semantics, flagging the items' runs (in reverse order: results must not depend on it)."""
    items, out = list(items), []
    for item in reversed(items):
        INSIDE[0] = True
        try:
            out.append(fn(item))
        finally:
            INSIDE[0] = False
    return out[::-1]


class SpyRows:
    """Rows that record every read of rows or sample ids and whether a mapper item made it."""

    def __init__(self, rows: ArrayRows, log: list[tuple[str, bool, int]]) -> None:
        self.rows, self.log, self.n, self.dim = rows, log, rows.n, rows.dim

    def read(self, start: int, stop: int) -> np.ndarray:
        self.log.append(("read", INSIDE[0], stop - start))
        return self.rows.read(start, stop)

    def ids(self, rows: np.ndarray) -> np.ndarray:
        self.log.append(("ids", INSIDE[0], len(rows)))
        return self.rows.ids(rows)


class SpySource(ArraySource):
    def __init__(self, *args, log) -> None:
        super().__init__(*args)
        self.log = log

    def sets(self, layer: int) -> LayerSets:
        train, test, gens, _ = super().sets(layer)
        return LayerSets(train, SpyRows(test, self.log), {k: SpyRows(v, self.log) for k, v in gens.items()})


def feature_set(x: np.ndarray, prefix: str, rng: np.random.Generator) -> FeatureSet:
    ids = np.array([f"{prefix}{i}" for i in rng.permutation(len(x))], dtype=object)  # not in sorted order
    return FeatureSet(ids, {1: x, 2: np.tanh(x[:, ::-1])})


@pytest.mark.timeout(300)
def test_query_rows_are_read_only_by_tasks_and_tables_equal_score_features(monkeypatch):
    monkeypatch.setattr(queries, "QUERY_ROWS", 1024)  # several query blocks per set
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(5, 12))

    def draw(n: int) -> np.ndarray:
        return (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, 12))).astype(np.float32)

    train = draw(1500)
    sets = {"copy": train[rng.integers(0, 1500, 2300)] + 0.01, "fresh": draw(1100)}
    train_fs, test_fs = feature_set(train, "t", rng), feature_set(draw(1200), "p", rng)
    gens = {k: feature_set(v.astype(np.float32), k, rng) for k, v in sets.items()}
    cfg = CTConfig(mode="meehan", cells=4, pca_dim=6, kmeans_nredo=2, bootstrap=30, top_k=3, partitions=2)
    log: list[tuple[str, bool, int]] = []
    sink = MemorySink()
    try:
        tables, _ = score_layers([1, 2], SpySource(train_fs, test_fs, gens, log=log), sink, cfg, mapper)
        assert all(isinstance(p, list) for p in tables["neighbors"] + tables["copies"])  # part files, not frames
        got = ScoreResult.from_tables({k: concat_pieces(k, v) for k, v in tables.items()}, cfg).materialized()
    finally:
        sink.close()
    outside = [entry for entry in log if not entry[1]]
    assert log and not outside, f"query rows read by the caller: {outside[:5]}"
    assert max(n for kind, _, n in log if kind == "read") <= 1024  # block by block
    ref = score_features(train_fs, test_fs, gens, cfg)
    for name in ("ct_scores", "ct_cells", "neighbors", "copies", "ct_stability", "verdicts"):
        pd.testing.assert_frame_equal(got.table(name), ref.table(name), check_exact=True, obj=name)


def test_layers_in_flight_give_the_same_tables_as_one_at_a_time():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 10)).astype(np.float32)
    train_fs = FeatureSet(np.array([f"t{i}" for i in range(600)], dtype=object),
                          {layer: np.tanh(x[:600] * layer) for layer in (1, 2, 3, 4)})  # fmt: skip
    test_fs = FeatureSet(np.array([f"p{i}" for i in range(300)], dtype=object),
                         {layer: np.tanh(x[600:] * layer) for layer in (1, 2, 3, 4)})  # fmt: skip
    gen = FeatureSet(np.array([f"g{i}" for i in range(200)], dtype=object),
                     {layer: train_fs.layers[layer][:200] + 0.01 for layer in (1, 2, 3, 4)})  # fmt: skip
    cfg = CTConfig(mode="meehan", cells=3, pca_dim=5, kmeans_nredo=2, bootstrap=20, top_k=2)

    def threaded_map(fn, items):  # builtin map semantics, safe to call from several threads
        return [fn(item) for item in items]

    got = {}
    for width in (1, 3):
        sink = MemorySink()
        try:
            tables, _ = score_layers([1, 2, 3, 4], ArraySource(train_fs, test_fs, {"g": gen}), sink, cfg,
                                     threaded_map, in_flight=width)  # fmt: skip
            whole = {k: concat_pieces(k, v) for k, v in tables.items()}
            got[width] = ScoreResult.from_tables(whole, cfg).materialized()
        finally:
            sink.close()
    for name in ("ct_scores", "ct_cells", "neighbors", "copies", "verdicts"):
        pd.testing.assert_frame_equal(got[3].table(name), got[1].table(name), check_exact=True, obj=name)
    assert list(got[3].table("ct_scores")["layer"]) == [1, 2, 3, 4]
