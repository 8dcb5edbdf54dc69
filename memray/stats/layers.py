"""The one per-layer scoring loop, used by ``memray score`` (in process) and by the audit job (Ray tasks).

Per layer: take the layer's sets from a :class:`~memray.stats.layer_io.LayerSource` as row handles (training,
test and generated rows: workers read their own blocks of each, :class:`~memray.io.rows.ParquetRows` in a job,
in-memory :class:`~memray.io.rows.ArrayRows` in process), fit PCA + cells on the training rows, run ONE projection
and search round for the test set and every generated set, compute the result tables and hand them to a
:class:`~memray.stats.layer_io.LayerSink`. The per-sample tables are written by tasks as part files into the sink's
folder; the caller holds per query only its cell, distance and neighbour row. Where the work runs is the caller's
``mapper`` (builtin ``map`` in process, Ray tasks in a job); where the tables go and whether a finished layer is
skipped is the sink's. The statistic is therefore the same code, bit for bit, on a laptop and on a cluster.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from memray.io.features import FeatureSet
from memray.io.rows import ArrayRows
from memray.io.schema import PIXEL_LAYER
from memray.stats import Mapper, run_in_flight
from memray.stats.config import CTConfig, EvidenceConfig
from memray.stats.evidence import check_views, project_views
from memray.stats.layer_io import Extra, LayerSets, LayerSink, LayerSource, Piece
from memray.stats.parts import PartDir
from memray.stats.score import ScoreInputError, check_dims, fit_layer, partition_runs
from memray.stats.tables import ScoreResult, Sources, concat_pieces, layer_tables
from memray.stats.timing import EXTRA, StageTimes

log = logging.getLogger(__name__)
CT_TABLES = ("ct_scores", "ct_cells", "ct_stability", "fingerprints")
"""The tables of C_T and its curve: none for pixel space (:data:`memray.io.schema.PIXEL_LAYER`)."""


def score_one_layer(
    layer: int,
    source: LayerSource,
    parts: PartDir,
    cfg: CTConfig,
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
    extra: Extra | None = None,
    evidence: EvidenceConfig | None = None,
) -> tuple[dict[str, Piece], dict[str, Any]]:
    """Fit, one search round, partitions, the layer's tables (keyed by table name; per-sample ones as part files
    under ``parts``) and its stats, with the seconds of each stage (``stages``, :mod:`memray.stats.timing`). The
    sets' views (:mod:`memray.stats.evidence`) are projected after the round and searched with the copies' top-k
    round."""
    t0 = time.perf_counter()
    train, test, gens, views = source.sets(layer)
    check_dims(train.dim, {f"set {n!r}": rows for n, rows in {"test": test, **gens}.items()}, layer)
    check_views(views, {None: test, **gens}, layer)
    ws, qws = source.workspace(layer), source.query_workspace(layer)
    times = StageTimes()
    with times.stage("fit"):
        fitted = fit_layer(layer, train, None, test, cfg, mapper, ws=ws, qws=qws)
    try:
        xs = {n: gens[n] for n in sorted(gens)}
        with times.stage("statistic"):
            scored = fitted.score_sets(xs, mapper, {n: f"gen set {n!r}, layer {layer}" for n in xs})  # one round
        with times.stage("views"):
            under = project_views(fitted.engine, views, mapper) if cfg.top_k else {}
        runs = None
        if cfg.partitions > 1:
            with times.stage("partitions"):
                runs = partition_runs(layer, train, None, test, xs, cfg, mapper, source.partition_workspace(layer))
        tables = layer_tables(fitted, train.n, test, gens, scored, mapper, sources, train_name, runs, parts=parts,
                              views=under, evidence=evidence, times=times)  # fmt: skip
        if extra is not None:
            with times.stage(EXTRA):
                tables.update(extra(fitted, scored))
        if layer == PIXEL_LAYER:  # an evidence space, not a layer of the C_T curve: its C_T tables stay empty
            tables.update({k: v.iloc[0:0] for k, v in tables.items() if k in CT_TABLES})
    finally:
        fitted.close()
    stats = {"layer": layer, "seconds": time.perf_counter() - t0, "n_train": train.n, "stages": times.seconds}
    stats.update(space_dim=fitted.space.dim, train_rank=fitted.space.rank, degenerate=fitted.space.degenerate)
    log.info("score: layer %d, %d train / %d test, %.1f s", layer, train.n, test.n, stats["seconds"])
    return tables, stats


def score_layers(
    layers: list[int],
    source: LayerSource,
    sink: LayerSink,
    cfg: CTConfig,
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
    extra: Extra | None = None,
    evidence: EvidenceConfig | None = None,
    in_flight: int = 1,
) -> tuple[dict[str, list[Piece]], dict[int, dict[str, Any]]]:
    """Score every layer the sink has not finished, ``in_flight`` layers at once (:func:`memray.stats.run_in_flight`;
    layers are independent, so the tables do not depend on it); return every layer's tables (in layer order) and
    stats.

    ``sources``: ``(set name, sample ids) -> source strings`` for the copy evidence; ``extra``: further tables;
    ``evidence``: views and the replication test (``None``: the defaults).
    """

    def score(layer: int) -> None:
        parts = sink.part_dir(layer)
        done, layer_stats = score_one_layer(layer, source, parts, cfg, mapper, sources, train_name, extra, evidence)
        sink.write(layer, done, layer_stats)
        source.release(layer, cfg.partitions > 1)

    run_in_flight(score, [layer for layer in layers if not sink.done(layer)], in_flight)
    tables: dict[str, list[Piece]] = {}
    stats: dict[int, dict[str, Any]] = {}
    for layer in layers:
        done, stats[layer] = sink.read(layer)
        for name, df in done.items():
            tables.setdefault(name, []).append(df)
    return tables, stats


class ArraySource:
    """The sets of ``memray score``: features in memory; fits in temporary folders (removed with each fit)."""

    def __init__(
        self,
        train: FeatureSet,
        test: FeatureSet,
        gens: dict[str, FeatureSet],
        views: dict[str | None, dict[str, FeatureSet]] | None = None,
    ) -> None:
        self.train, self.test, self.gens, self.views = train, test, gens, views or {}

    def sets(self, layer: int) -> LayerSets:
        def rows(fs: FeatureSet) -> ArrayRows:
            return ArrayRows(fs.layers[layer], fs.ids)

        views = {n: {v: rows(fs) for v, fs in under.items()} for n, under in self.views.items()}
        return LayerSets(rows(self.train), rows(self.test), {k: rows(v) for k, v in self.gens.items()}, views)

    def workspace(self, layer: int) -> None:
        return None

    def query_workspace(self, layer: int) -> None:
        return None

    def partition_workspace(self, layer: int) -> None:
        return None

    def release(self, layer: int, partitions: bool) -> None:
        return None


class MemorySink:
    """Keeps every layer's tables in memory, their part files in a temporary folder (removed by :meth:`close`)."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[dict[str, Piece], dict[str, Any]]] = {}
        self.tmp: str | None = None

    def done(self, layer: int) -> bool:
        return layer in self.layers

    def part_dir(self, layer: int) -> PartDir:
        self.tmp = self.tmp or tempfile.mkdtemp(prefix="memray-parts-")
        return PartDir(f"{self.tmp}/layer_{layer}")

    def write(self, layer: int, tables: dict[str, Piece], stats: dict[str, Any]) -> None:
        self.layers[layer] = (tables, stats)

    def read(self, layer: int) -> tuple[dict[str, Piece], dict[str, Any]]:
        return self.layers[layer]

    def close(self) -> None:
        """Remove the part files (read the tables first)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


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
            check_dims(train.layers[layer].shape[1], {_name(fs, role): x}, layer)
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


def score_features(
    train: FeatureSet,
    test: FeatureSet,
    gens: dict[str, FeatureSet],
    cfg: CTConfig,
    mapper: Mapper = map,
    layers: list[int] | None = None,
    sink: LayerSink | None = None,
    views: dict[str | None, dict[str, FeatureSet]] | None = None,
    evidence: EvidenceConfig | None = None,
) -> ScoreResult:
    """C_T of every generated set at every layer (default: all layers of the training set), after
    :func:`check_inputs`. Per layer one fit (a temporary workspace) and one search round (:func:`score_layers`);
    ``sink``: where the layer tables go (default in memory; a folder sink makes a rerun skip finished layers).
    Every table of the result is a DataFrame. ``views``: set (``None``: the test set) -> view name -> the same rows
    under that view (:mod:`memray.stats.evidence`); ``evidence``: the replication test's settings.
    """
    layers = check_inputs(train, test, gens, cfg, layers)
    mine = MemorySink() if sink is None else None
    try:
        source = ArraySource(train, test, gens, views)
        tables, _ = score_layers(layers, source, sink or mine, cfg, mapper, evidence=evidence)
        res = ScoreResult.from_tables({name: concat_pieces(name, pieces) for name, pieces in tables.items()}, cfg)
        return res.materialized()
    finally:
        if mine is not None:
            mine.close()
