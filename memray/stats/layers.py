"""The one per-layer scoring loop, used by ``memray score`` (in process) and by the audit job (Ray tasks).

Per layer: read the layer's sets from a :class:`LayerSource` (a handle on the training rows — workers read their
own blocks — and the test and generated sets), fit PCA + cells on the training rows, run ONE search round for the
test set and every generated set, compute the result tables and hand them to a :class:`LayerSink`. Where the work
runs is the caller's ``mapper`` (builtin ``map`` in process, Ray tasks in a job); where the tables go and whether a
finished layer is skipped is the sink's. The statistic is therefore the same code, bit for bit, on a laptop and
on a cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from memray.io.features import FeatureSet
from memray.io.rows import ArrayRows, Rows
from memray.stats import Mapper
from memray.stats.config import CTConfig
from memray.stats.score import (
    FittedLayer,
    GenScore,
    ScoreInputError,
    check_dims,
    fit_layer,
    partition_runs,
)
from memray.stats.tables import ScoreResult, Sources, layer_tables

log = logging.getLogger(__name__)

#: ``extra(fitted, scored) -> {table name: DataFrame}``: further per-layer tables (the fingerprint subset curves).
Extra = Callable[[FittedLayer, dict[str, GenScore]], dict[str, pd.DataFrame]]


class LayerSets(NamedTuple):
    """One layer's inputs: ``train`` a row handle (never read whole), ``test`` and ``gens`` read in (one layer)."""

    train: Rows
    test: FeatureSet
    gens: dict[str, FeatureSet]


class LayerSource(Protocol):
    """Where a layer's sets and its fit workspaces come from."""

    def sets(self, layer: int) -> LayerSets:
        """The layer's training handle, test set and generated sets."""
        ...

    def workspace(self, layer: int) -> Any | None:
        """The fit's workspace (``None``: a temporary local folder, removed with the fit)."""
        ...

    def partition_workspace(self, layer: int) -> Callable[[int], Any] | None:
        """``seed -> workspace`` of the further partition fits (``None``: temporary folders)."""
        ...

    def release(self, layer: int, partitions: bool) -> None:
        """Called once the layer's tables are written: remove what the layer's fits left that is not kept."""
        ...


class LayerSink(Protocol):
    """Where a layer's tables go; a finished layer is read back instead of scored again."""

    def done(self, layer: int) -> bool:
        """Whether the layer's tables exist and were made from the same inputs and settings."""
        ...

    def write(self, layer: int, tables: dict[str, pd.DataFrame], stats: dict[str, Any]) -> None:
        """Keep the layer's tables (file names as keys) and its stats."""
        ...

    def read(self, layer: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        """The tables and stats of a finished layer."""
        ...


def score_one_layer(
    layer: int,
    source: LayerSource,
    cfg: CTConfig,
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
    extra: Extra | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Fit, one search round, partitions, the layer's tables (keyed by table name) and its stats."""
    t0 = time.perf_counter()
    train, test, gens = source.sets(layer)
    check_dims(
        train.dim, {f"set {(fs.source or n)!r}": fs.layers[layer] for n, fs in {"test": test, **gens}.items()}, layer
    )
    fitted = fit_layer(layer, train, None, test.layers[layer], cfg, mapper, test.ids, ws=source.workspace(layer))
    try:
        xs = {n: gens[n].layers[layer] for n in sorted(gens)}
        scored = fitted.score_sets(xs, mapper, {n: f"gen set {n!r}, layer {layer}" for n in xs})  # one round
        runs = None
        if cfg.partitions > 1:
            part_ws = source.partition_workspace(layer)
            runs = partition_runs(layer, train, None, test.layers[layer], xs, cfg, mapper, part_ws)
        tables = layer_tables(fitted, train.n, test, gens, scored, mapper, sources, train_name, runs)
        if extra is not None:
            tables.update(extra(fitted, scored))
    finally:
        fitted.close()
    stats = {"layer": layer, "seconds": time.perf_counter() - t0, "n_train": train.n}
    stats.update(space_dim=fitted.space.dim, train_rank=fitted.space.rank, degenerate=fitted.space.degenerate)
    log.info("score: layer %d, %d train / %d test, %.1f s", layer, train.n, len(test), stats["seconds"])
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
) -> tuple[dict[str, list[pd.DataFrame]], dict[int, dict[str, Any]]]:
    """Score every layer the sink has not finished; return every layer's tables (in layer order) and stats.

    ``sources``: ``(set name, sample ids) -> source strings`` for the copy evidence; ``extra``: further tables.
    """
    tables: dict[str, list[pd.DataFrame]] = {}
    stats: dict[int, dict[str, Any]] = {}
    for layer in layers:
        if not sink.done(layer):
            done, layer_stats = score_one_layer(layer, source, cfg, mapper, sources, train_name, extra)
            sink.write(layer, done, layer_stats)
            source.release(layer, cfg.partitions > 1)
        done, stats[layer] = sink.read(layer)
        for name, df in done.items():
            tables.setdefault(name, []).append(df)
    return tables, stats


class ArraySource:
    """The sets of ``memray score``: features in memory; fits in temporary folders (removed with each fit)."""

    def __init__(self, train: FeatureSet, test: FeatureSet, gens: dict[str, FeatureSet]) -> None:
        self.train, self.test, self.gens = train, test, gens

    def sets(self, layer: int) -> LayerSets:
        return LayerSets(ArrayRows(self.train.layers[layer], self.train.ids), self.test, self.gens)

    def workspace(self, layer: int) -> None:
        return None

    def partition_workspace(self, layer: int) -> None:
        return None

    def release(self, layer: int, partitions: bool) -> None:
        return None


class MemorySink:
    """Keeps every layer's tables in memory (nothing is ever finished before the run)."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[dict[str, pd.DataFrame], dict[str, Any]]] = {}

    def done(self, layer: int) -> bool:
        return layer in self.layers

    def write(self, layer: int, tables: dict[str, pd.DataFrame], stats: dict[str, Any]) -> None:
        self.layers[layer] = (tables, stats)

    def read(self, layer: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        return self.layers[layer]


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
) -> ScoreResult:
    """C_T of every generated set at every layer (default: all layers of the training set), after
    :func:`check_inputs`. Per layer one fit (a temporary workspace) and one search round (:func:`score_layers`);
    ``sink``: where the layer tables go (default in memory; a folder sink makes a rerun skip finished layers).
    """
    layers = check_inputs(train, test, gens, cfg, layers)
    tables, _ = score_layers(layers, ArraySource(train, test, gens), sink or MemorySink(), cfg, mapper)
    return ScoreResult.from_tables({name: pd.concat(dfs, ignore_index=True) for name, dfs in tables.items()}, cfg)
