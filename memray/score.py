"""C_T per layer and generated set: fit the space and the test distances once per layer, score many sets.

The authors refit PCA and k-means for every curve, unseeded; memray fits them once per layer on T (seeded),
so every generated set of a run is measured in the same cells against the same test distances — the same
statistic, reproducible, and ~the cost of one nearest-neighbour search per generated set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memray import schema
from memray.config import CTConfig
from memray.ct import CellStats, cell_table, ct_from_cells
from memray.features import FeatureSet
from memray.index import TrainShard, build_shards, nearest_in_cells
from memray.reduce import LayerSpace, fit_and_project

log = logging.getLogger(__name__)

Mapper = Callable[[Callable, Iterable], Iterable]


@dataclass
class GenScore:
    """C_T of one generated set at one layer, with the per-sample evidence (m = #generated samples).

    ``dist`` (m,) float64 nearest-training distance in the sample's cell (inf if the cell has no training row);
    ``nn`` (m,) int64 row of that neighbour in the training set (-1 if none); ``cell`` (m,) int64.
    """

    ct: float
    cells: CellStats
    dist: np.ndarray
    nn: np.ndarray
    cell: np.ndarray


@dataclass
class FittedLayer:
    """Everything about one layer that does not depend on the generated set.

    ``train_z`` (n_T, k) float64 projected training rows, ``train_cells`` (n_T,) int64, ``train_counts``
    (cells,) int64; ``test_dist`` (n_P,) float64, ``test_nn`` (n_P,) int64 row into the training set,
    ``test_cells`` (n_P,) int64. ``shards``: the prepared per-cell search shards (built on first use if None).
    """

    layer: int
    space: LayerSpace
    train_ids: np.ndarray
    train_z: np.ndarray
    train_cells: np.ndarray
    train_counts: np.ndarray
    test_ids: np.ndarray
    test_dist: np.ndarray
    test_nn: np.ndarray
    test_cells: np.ndarray
    cfg: CTConfig
    shards: dict[int, list[TrainShard]] | None = field(default=None, repr=False)

    def score(self, gen_x: np.ndarray, mapper: Mapper = map, label: str | None = None) -> GenScore:
        """C_T of generated features (m, d) of this layer; ``label`` names the set in warnings."""
        z = self.space.project(_finite(gen_x, label or f"generated features, layer {self.layer}"))
        cell = self.space.assign(z)
        rows = np.arange(len(self.train_z), dtype=np.int64)
        if self.shards is None:  # prepared once, reused by every generated set
            self.shards = build_shards(self.train_z, self.train_cells, rows, self.cfg)
        dist, nn = nearest_in_cells(self.train_z, self.train_cells, rows, z, cell, self.cfg, mapper, self.shards)
        stats = cell_table(self.test_dist, self.test_cells, dist, cell, self.train_counts, self.cfg.min_gen_per_cell)
        # no training variance (every row the same vector): distances say nothing; warned when the layer was fit
        ct = float("nan") if self.space.rank == 0 else ct_from_cells(stats, label or f"layer {self.layer}")
        return GenScore(ct=ct, cells=stats, dist=dist, nn=nn, cell=cell)


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as float32 (n, d), refusing NaN/inf rows with a message naming them."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if x.ndim != 2 or np.isfinite(x.sum()):  # a finite sum has no NaN/inf term (on overflow: the row check)
            return x
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise ScoreInputError(f"{what}: NaN/inf values in {len(bad)} row(s) {bad[:10].tolist()}; drop or fix them")
    return x


def fit_layer(
    layer: int,
    train_x: np.ndarray,
    train_ids: np.ndarray,
    test_x: np.ndarray,
    cfg: CTConfig,
    mapper: Mapper = map,
    test_ids: np.ndarray | None = None,
) -> FittedLayer:
    """Fit PCA + cells on the training features (n_T, d), then each test sample's nearest training row.

    ``mapper`` runs the k-means restarts and the (cell, shard) searches (Ray tasks in a job). A layer whose
    training features are degenerate is logged (``space.rank``, ``space.degenerate``) and still scored, except
    a layer without any training variance, whose C_T is NaN.
    """
    t0 = time.perf_counter()
    train_x = _finite(train_x, f"training features, layer {layer}")
    space, train_z = fit_and_project(train_x, cfg, mapper, label=f"layer {layer}")
    train_cells = space.assign(train_z)
    test_z = space.project(_finite(test_x, f"test features, layer {layer}"))
    test_cells = space.assign(test_z)
    rows = np.arange(len(train_z), dtype=np.int64)
    shards = build_shards(train_z, train_cells, rows, cfg)
    test_dist, test_nn = nearest_in_cells(train_z, train_cells, rows, test_z, test_cells, cfg, mapper, shards)
    log.info(
        "layer %d: %d train -> %d dims, %d cells; %d test neighbours; %.2f s",
        layer, len(train_z), space.dim, cfg.cells, len(test_z), time.perf_counter() - t0,
    )  # fmt: skip
    return FittedLayer(
        layer=int(layer),
        space=space,
        train_ids=np.asarray(train_ids, dtype=object),
        train_z=train_z,
        train_cells=train_cells,
        train_counts=np.bincount(train_cells, minlength=cfg.cells).astype(np.int64),
        test_ids=np.asarray(test_ids if test_ids is not None else np.arange(len(test_z)).astype(str), dtype=object),
        test_dist=test_dist,
        test_nn=test_nn,
        test_cells=test_cells,
        cfg=cfg,
        shards=shards,
    )


class ScoreInputError(ValueError):
    """Feature sets that cannot be scored; the message names the file and what to do."""


def _name(fs: FeatureSet, role: str) -> str:
    return f"{role} features {fs.source!r}" if fs.source else f"{role} features"


def check_inputs(
    train: FeatureSet, test: FeatureSet, gens: dict[str, FeatureSet], cfg: CTConfig, layers: list[int] | None
) -> list[int]:
    """Validate the sets (non-empty, same layers and dims, finite values, enough training rows) -> layers."""
    if not gens:
        raise ScoreInputError("no generated set given; pass at least one (e.g. --gen NAME=FILE)")
    sets = [("train", train), ("test", test)] + [(f"generated set {k!r}", v) for k, v in gens.items()]
    layers = sorted(train.layers) if layers is None else sorted({int(x) for x in layers})
    if not layers:
        raise ScoreInputError(f"{_name(train, 'train')}: no layer to score")
    for role, fs in sets:
        if len(fs) == 0:
            raise ScoreInputError(f"{_name(fs, role)}: the set is empty; give a file with at least one sample")
        missing = [x for x in layers if x not in fs.layers]
        if missing:
            raise ScoreInputError(
                f"{_name(fs, role)}: layer(s) {missing} missing (it has {sorted(fs.layers)}); every set must hold "
                f"the layers being scored {layers}"
            )
        for layer in layers:
            x = fs.layers[layer]
            if x.shape[1] != train.layers[layer].shape[1]:
                raise ScoreInputError(
                    f"{_name(fs, role)}: layer {layer} has dimension {x.shape[1]} but the training features have "
                    f"{train.layers[layer].shape[1]}; all sets must come from the same encoder and layer"
                )
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if len(bad):
                shown = ", ".join(str(fs.ids[i]) for i in bad[:10]) + (", …" if len(bad) > 10 else "")
                raise ScoreInputError(
                    f"{_name(fs, role)}: layer {layer} has NaN/inf values in {len(bad)} row(s) (sample ids: {shown}); "
                    "drop or fix these rows and rerun"
                )
    if len(train) < cfg.cells:
        raise ScoreInputError(
            f"{_name(train, 'train')}: {len(train)} training samples cannot make ct.cells={cfg.cells} cells; "
            "lower --cells or give more training samples"
        )
    return layers


# table name -> (file name, sort keys); rows keep their input order within equal keys
TABLES: dict[str, tuple[str, list[str]]] = {
    "ct_scores": (schema.CT_SCORES_FILE, [schema.GEN_SET, schema.LAYER]),
    "ct_cells": (schema.CT_CELLS_FILE, [schema.GEN_SET, schema.LAYER, schema.CELL]),
    "neighbors": (schema.NEIGHBORS_FILE, [schema.ROLE, schema.GEN_SET, schema.LAYER]),
}


@dataclass
class ScoreResult:
    """Tidy result tables (sorted deterministically) and the config that produced them.

    ``ct_scores``: one row per (gen_set, layer); ``ct_cells``: per (gen_set, layer, cell); ``neighbors``: per
    (role, gen_set, layer, sample) in input order, ``gen_set`` null for test rows.
    """

    ct_scores: pd.DataFrame
    ct_cells: pd.DataFrame
    neighbors: pd.DataFrame
    config: CTConfig | None
    layers: list[int]
    gen_sets: list[str]

    def table(self, name: str) -> pd.DataFrame:
        """A table by name (``ct_scores``) or file name (``ct_scores.parquet``)."""
        key = name.removesuffix(".parquet")
        if key not in TABLES:
            raise KeyError(f"unknown table {name!r}; one of {sorted(TABLES)}")
        return getattr(self, key)

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame], config: CTConfig | None = None) -> ScoreResult:
        """Assemble (e.g. per-layer pieces concatenated) tables keyed by name or file name, sorting the rows."""
        frames = {}
        for key, (file, order) in TABLES.items():
            df = tables.get(key, tables.get(file))
            if df is None:
                raise KeyError(f"table {key!r} missing; got {sorted(tables)}")
            frames[key] = df.sort_values(order, kind="stable", na_position="first", ignore_index=True)
        scores = frames["ct_scores"]
        layers = sorted(int(x) for x in scores[schema.LAYER].unique())
        return cls(**frames, config=config, layers=layers, gen_sets=sorted(scores[schema.GEN_SET].unique()))


def _neighbor_frame(role: str, gen_set: str | None, layer: int, ids, cell, nn, dist, train_ids) -> pd.DataFrame:
    nn_ids = np.where(nn >= 0, train_ids[np.maximum(nn, 0)], None)
    return pd.DataFrame(
        {
            schema.ROLE: role,
            schema.GEN_SET: pd.Series([gen_set] * len(ids), dtype=object),
            schema.SAMPLE_ID: np.asarray(ids, dtype=object).astype(str),
            schema.LAYER: np.int32(layer),
            schema.CELL: cell.astype(np.int32),
            schema.NN_TRAIN_ID: nn_ids,
            schema.NN_DISTANCE: dist,
        }
    )


def score_layer(
    fitted: FittedLayer, n_train: int, test: FeatureSet, gens: dict[str, FeatureSet], mapper: Mapper = map
) -> dict[str, pd.DataFrame]:
    """The three result tables of one fitted layer (unsorted pieces; :meth:`ScoreResult.from_tables` sorts)."""
    layer, train_ids = fitted.layer, fitted.train_ids
    scores, cells = [], []
    nbrs = [
        _neighbor_frame(
            schema.ROLE_TEST, None, layer, test.ids, fitted.test_cells, fitted.test_nn, fitted.test_dist, train_ids
        )
    ]
    for name in sorted(gens):
        g = fitted.score(gens[name].layers[layer], mapper, label=f"gen set {name!r}, layer {layer}")
        st = g.cells
        scores.append((name, layer, g.ct, n_train, len(test), len(gens[name]), int(st.kept.sum()), st.cells))
        for c in range(st.cells):
            cells.append((name, layer, c, st.z[c], st.n_train[c], st.n_test[c], st.n_gen[c], st.kept[c],
                          st.status[c]))  # fmt: skip
        nbrs.append(_neighbor_frame(schema.ROLE_GEN, name, layer, gens[name].ids, g.cell, g.nn, g.dist, train_ids))
        log.info("gen set %r, layer %d: C_T = %.3f (%d cells kept)", name, layer, g.ct, int(st.kept.sum()))
    return {
        "ct_scores": pd.DataFrame(scores, columns=schema.CT_SCORES_SCHEMA.names),
        "ct_cells": pd.DataFrame(cells, columns=schema.CT_CELLS_SCHEMA.names),
        "neighbors": pd.concat(nbrs, ignore_index=True),
    }


def score_features(
    train: FeatureSet,
    test: FeatureSet,
    gens: dict[str, FeatureSet],
    cfg: CTConfig,
    mapper: Mapper = map,
    layers: list[int] | None = None,
) -> ScoreResult:
    """C_T of every generated set at every layer (default: all layers of the training set)."""
    layers = check_inputs(train, test, gens, cfg, layers)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for layer in layers:
        fitted = fit_layer(layer, train.layers[layer], train.ids, test.layers[layer], cfg, mapper, test.ids)
        for name, df in score_layer(fitted, len(train), test, gens, mapper).items():
            parts[name].append(df)
    return ScoreResult.from_tables({name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}, cfg)
