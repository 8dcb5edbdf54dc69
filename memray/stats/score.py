"""C_T per layer and generated set: fit the space once per layer, then one search round for all query sets.

The authors refit PCA and k-means for every curve, unseeded; memray fits them once per layer on T (seeded),
so every generated set of a run is measured in the same cells against the same test distances — the same
statistic, reproducible. The work runs on the block engine (:mod:`memray.stats.engine`): the fit streams the
training rows block by block into a workspace, and one search round per layer answers the test set and every
generated set together. In process the training features are an :class:`~memray.io.rows.ArrayRows` and the
workspace a temporary local folder removed with the fit (:meth:`FittedLayer.close`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from memray.io.features import FeatureSet
from memray.io.rows import ArrayRows, Rows
from memray.stats import Mapper, ScoreInputError
from memray.stats.config import CTConfig
from memray.stats.copies import neighbour_ids
from memray.stats.ct import CellStats, cell_table, ct_from_cells
from memray.stats.engine import EngineLayer, Neighbours, fit_layer_engine, score_sets, search_test
from memray.stats.parts import PartDir, PartsTable
from memray.stats.queries import _finite
from memray.stats.space import LayerSpace
from memray.stats.tables import TABLES, ScoreResult, layer_tables
from memray.stats.workspace import Workspace

__all__ = ["TABLES", "FittedLayer", "GenScore", "ScoreInputError", "ScoreResult", "check_dims", "fit_layer",
           "layer_tables", "partition_runs", "score_layer"]  # fmt: skip

log = logging.getLogger(__name__)


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


@dataclass(eq=False)
class FittedLayer:
    """Everything about one layer that does not depend on the generated set.

    ``train``: the training rows (a handle; sample ids are resolved only for matched neighbours),
    ``train_counts`` (cells,) int64. The test set's ``test_cells``, ``test_dist`` and ``test_nn`` (n_P,) come from
    the first search round (:meth:`score_sets` includes the test set in it), run with ``mapper``. ``engine`` holds
    the workspaces of the fit and of the query sets; ``close`` removes a temporary one.
    """

    layer: int
    space: LayerSpace
    train: Rows
    train_counts: np.ndarray
    cfg: CTConfig
    engine: EngineLayer = field(repr=False)
    mapper: Mapper = field(default=map, repr=False)
    tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def test(self) -> Neighbours:
        """The test set's search result (searched now if no round has included it yet)."""
        return search_test(self.engine, self.mapper)

    @property
    def test_dist(self) -> np.ndarray:
        return self.test.dist

    @property
    def test_nn(self) -> np.ndarray:
        return self.test.nn

    @property
    def test_cells(self) -> np.ndarray:
        return self.test.cell

    def neighbour_ids(self, nn: np.ndarray) -> np.ndarray:
        """Sample ids (object array) of neighbour rows ``nn`` (int64), ``None`` where ``nn`` is -1."""
        return neighbour_ids(self.train, nn)

    def score_sets(
        self, gens: dict[str, np.ndarray | Rows], mapper: Mapper = map, labels: dict[str, str] | None = None
    ) -> dict[str, GenScore]:
        """C_T of several generated sets in ONE search round (with the test set if pending).

        ``gens``: name -> features (m_s, d), an array or a :class:`~memray.io.rows.Rows` handle (read by the
        round's tasks); ``labels``: set name -> how warnings and errors name it (default ``layer ℓ``).
        """
        labels = labels or {}
        what = {k: labels.get(k, f"generated features, layer {self.layer}") for k in gens}
        xs = {k: x if isinstance(x, Rows) else _finite(x, what[k]) for k, x in gens.items()}
        rounds = score_sets(self.engine, xs, mapper, what)
        test = self.test
        out = {}
        for name, r in rounds.items():
            stats = cell_table(test.dist, test.cell, r.dist, r.cell, self.train_counts, self.cfg.min_gen_per_cell)
            # no training variance (every row the same vector): distances say nothing; warned when the layer was fit
            ct = float("nan") if self.space.rank == 0 else ct_from_cells(stats, labels.get(name, f"layer {self.layer}"))
            out[name] = GenScore(ct=ct, cells=stats, dist=r.dist, nn=r.nn, cell=r.cell)
        return out

    def score(self, gen_x: np.ndarray, mapper: Mapper = map, label: str | None = None) -> GenScore:
        """C_T of generated features (m, d) of this layer; ``label`` names the set in warnings."""
        labels = {"": label} if label else None
        return self.score_sets({"": gen_x}, mapper, labels)[""]

    def close(self) -> None:
        """Remove the temporary workspace (if this fit made one); the layer cannot score afterwards."""
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def fit_layer(
    layer: int,
    train_x: np.ndarray | Rows,
    train_ids: np.ndarray | None,
    test_x: np.ndarray | Rows,
    cfg: CTConfig,
    mapper: Mapper = map,
    test_ids: np.ndarray | None = None,
    ws: Workspace | None = None,
    qws: Workspace | None = None,
) -> FittedLayer:
    """Fit PCA + cells on the training features (n_T, d) over global row blocks; the test set (n_P, d) is projected
    and searched by the first :meth:`FittedLayer.score_sets` round.

    ``train_x``: an array (with ``train_ids``, its sample ids) or a :class:`~memray.io.rows.Rows` handle
    (``train_ids`` ignored); likewise ``test_x`` (with ``test_ids``). ``ws``: the workspace the fit writes to (a
    :class:`~memray.stats.workspace.Workspace` every worker can read); default a temporary local folder, removed by
    :meth:`FittedLayer.close` or when the fit is garbage-collected. ``qws``: where the query sets' projected rows go
    (default ``ws``'s ``queries`` folder). ``mapper`` runs the fit's block items, the query projections and the
    search items (Ray tasks in a job). A layer whose training features are degenerate is logged (``space.rank``,
    ``space.degenerate``) and still scored, except a layer without any training variance, whose C_T is NaN.
    """
    if isinstance(train_x, Rows):
        train = train_x
    else:
        x = _finite(train_x, f"training features, layer {layer}")
        train = ArrayRows(x, None if train_ids is None else np.asarray(train_ids, dtype=object))
    if isinstance(test_x, Rows):
        test = test_x
    else:
        t = _finite(test_x, f"test features, layer {layer}")
        ids = np.arange(len(t)).astype(str) if test_ids is None else test_ids
        test = ArrayRows(t, np.asarray(ids, dtype=object))
    tmp = None
    if ws is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"memray-layer{layer}-")
        ws = Workspace(tmp.name)
    try:
        engine = fit_layer_engine(layer, train, test, cfg, ws, mapper, qws)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return FittedLayer(
        layer=int(layer),
        space=engine.space,
        train=train,
        train_counts=engine.train_counts,
        cfg=cfg,
        engine=engine,
        mapper=mapper,
        tmp=tmp,
    )


def check_dims(train_dim: int, sets: dict[str, np.ndarray | Rows], layer: int) -> None:
    """Refuse features (label -> (n, d) array or rows of layer ``layer``) not ``train_dim`` wide, naming them."""
    for label, x in sets.items():
        dim = x.dim if isinstance(x, Rows) else x.shape[1]
        if dim != train_dim:
            raise ScoreInputError(
                f"{label}: layer {layer} has dimension {dim} but the training features have {train_dim}; "
                "all sets must come from the same encoder and layer"
            )


def score_layer(
    fitted: FittedLayer, n_train: int, test: FeatureSet, gens: dict[str, FeatureSet], mapper: Mapper = map
) -> dict[str, pd.DataFrame]:
    """The result tables of one fitted layer, as frames (the per-sample ones read back from their part files).

    One search round answers the test set (if not yet searched) and every generated set.
    """
    layer = fitted.layer
    labels = {name: f"gen set {name!r}, layer {layer}" for name in gens}
    rows = {name: ArrayRows(fs.layers[layer], fs.ids) for name, fs in gens.items()}
    scored = fitted.score_sets({name: rows[name] for name in sorted(rows)}, mapper, labels)
    test_rows = ArrayRows(test.layers[layer], test.ids)
    with tempfile.TemporaryDirectory(prefix="memray-parts-") as tmp:
        tables = layer_tables(fitted, n_train, test_rows, rows, scored, mapper, parts=PartDir(tmp))
        return {k: PartsTable(k, tuple(v)).frame() if isinstance(v, list) else v for k, v in tables.items()}


def partition_runs(
    layer: int,
    train: np.ndarray | Rows,
    train_ids: np.ndarray | None,
    test_x: np.ndarray | Rows,
    gens: dict[str, np.ndarray | Rows],
    cfg: CTConfig,
    mapper: Mapper = map,
    workspace: Callable[[int], Any] | None = None,
) -> dict[str, list[tuple[int, float]]]:
    """C_T of each generated set under the partitions of seeds ``cfg.seed + 1 … cfg.seed + cfg.partitions − 1``.

    Each seed refits the cells (same PCA, other k-means++ draws) and runs one in-cell search round; ``workspace(seed)``
    gives the fit's workspace (default: a temporary folder), removed afterwards by the caller or here.
    """
    out: dict[str, list[tuple[int, float]]] = {name: [] for name in gens}
    for seed in range(cfg.seed + 1, cfg.seed + cfg.partitions):
        sub = dataclasses.replace(cfg, seed=seed, partitions=1, bootstrap=0, top_k=0)
        ws = workspace(seed) if workspace is not None else None
        fitted = fit_layer(layer, train, train_ids, test_x, sub, mapper, ws=ws)
        try:
            scored = fitted.score_sets(gens, mapper, {n: f"gen set {n!r}, layer {layer}, seed {seed}" for n in gens})
            for name, g in scored.items():
                out[name].append((seed, g.ct))
        finally:
            fitted.close()
    return out
