"""The job's scoring stage: the core loop (:func:`memray.stats.layers.score_layers`) over the feature files.

The driver coordinates: per layer it hands the core handles on the training, test and generated feature files;
the fit's block steps, the query projections, the search items and the per-sample table writers run through the
caller's *mapper* (Ray tasks in a job, builtin ``map`` in a test), read their own rows and write their outputs to the
layer's workspaces (``fit/layer_<ℓ>/``, or the reference's, and ``fit/queries_layer_<ℓ>/``). The driver holds per
generated sample only its cell, distance and neighbour row. Each finished layer is written under
``layers/layer_<ℓ>/`` (small tables as files, the per-sample tables as ``parts/``) with a completion marker
``done.json`` (:mod:`memray.job.markers`) holding the layer's score key (:mod:`memray.job.keys`) and its part files,
so a rerun skips it only while the embeddings, sets and scoring settings it was made from are unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from memray.fingerprint.curve_run import curves_frame, subset_curves
from memray.io import schema, storage
from memray.io.finite import check_finite
from memray.io.rows import set_rows
from memray.job.config import AuditConfig
from memray.job.markers import clear_layer_marker, layer_done, read_layer_marker, write_layer_marker
from memray.job.views import set_views
from memray.stats import Mapper
from memray.stats.device import DeviceMapper
from memray.stats.engine import Fitted
from memray.stats.layer_io import Extra, LayerSets, Piece
from memray.stats.layers import score_layers
from memray.stats.parts import Part, PartDir
from memray.stats.score import ScoreResult
from memray.stats.tables import Sources, concat_pieces
from memray.stats.timing import stage_totals
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)
LAYER_STATS = ("seconds", "stages", "n_train", "space_dim", "train_rank", "degenerate")  # per layer, into run.json
TABLES = (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE, schema.COPIES_FILE, schema.STABILITY_FILE,
          schema.REPLICATION_FILE, schema.MEMORIZED_FILE)  # fmt: skip


class FileSource:
    """A job's sets as feature files: ``pieces`` holds every set's ``(url, rows)`` in its global row order.

    ``fit_roots``: per layer the fit workspace URL and whether to keep it (a reference's) or remove it once the
    layer's tables are written (default ``<out>/fit/layer_<ℓ>``, removed). The query sets' projections go to
    ``<out>/fit/queries_layer_<ℓ>`` and further partition seeds are fit in ``<out>/fit/partitions_layer_<ℓ>/<seed>``,
    both removed before (never reused) and after.
    """

    def __init__(
        self,
        cfg: AuditConfig,
        pieces: dict[str, list[tuple[str, int]]],
        out: str,
        fit_roots: dict[int, tuple[str, bool]] | None = None,
    ) -> None:
        self.cfg, self.pieces, self.out, self.storage_options = cfg, pieces, out, cfg.storage
        self.fit_roots = fit_roots or {}
        # the further views each set's files hold: sets embedded by the job (images) have the configured ones
        embedded = set_views(cfg)
        self.views = tuple(() if s.is_embeddings else embedded[s.name] for s in cfg.sets)

    def sets(self, layer: int) -> LayerSets:
        cfg = self.cfg
        rows = {
            spec.name: set_rows(self.pieces[spec.name], layer, self.storage_options) for spec in cfg.sets
        }  # handles only
        under = {s.name: names for s, names in zip(cfg.sets, self.views, strict=True) if names and self.pieces[s.name]}
        views = {
            None if name == cfg.test.name else name: {
                v: set_rows(self.pieces[name], layer, self.storage_options, v) for v in names
            }
            for name, names in under.items()
        }
        gens = {g.name: rows[g.name] for g in cfg.generated}
        return LayerSets(rows[cfg.train.name], rows[cfg.test.name], gens, views)

    def _fit_root(self, layer: int) -> tuple[str, bool]:
        return self.fit_roots.get(layer, (storage.join(self.out, "fit", f"layer_{layer}"), False))

    def _scratch(self, kind: str, layer: int) -> str:
        return storage.join(self.out, "fit", f"{kind}_layer_{layer}")

    def workspace(self, layer: int) -> Workspace:
        return Workspace(self._fit_root(layer)[0], self.storage_options)

    def query_workspace(self, layer: int) -> Workspace:
        root = self._scratch("queries", layer)
        storage.remove(root, self.storage_options, recursive=True)  # never read another run's projections
        return Workspace(root, self.storage_options)

    def partition_workspace(self, layer: int) -> Callable[[int], Workspace]:
        root = self._scratch("partitions", layer)
        storage.remove(root, self.storage_options, recursive=True)  # never reuse a partition fit of other settings
        return lambda seed: Workspace(storage.join(root, str(seed)), self.storage_options)

    def release(self, layer: int, partitions: bool) -> None:
        url, keep = self._fit_root(layer)
        if not keep:
            storage.remove(url, self.storage_options, recursive=True)  # the fit workspace, once the tables are made
        storage.remove(self._scratch("queries", layer), self.storage_options, recursive=True)
        if partitions:
            storage.remove(self._scratch("partitions", layer), self.storage_options, recursive=True)


class FolderSink:
    """Layer tables under ``<out>/layers/layer_<ℓ>/``: small tables as Parquet files, per-sample tables as the part
    files tasks wrote under ``parts/``, and a ``done.json`` marker with the score key and the parts' list.

    A layer is checked once per run (its marker read, every file's footer opened): the answer is kept, and only this
    sink changes the folder afterwards (the run holds the output's claim)."""

    def __init__(self, out: str, score_key: str, names: tuple[str, ...], storage_options: dict | None) -> None:
        self.out, self.score_key, self.names, self.storage_options = out, score_key, names, storage_options
        self._done: dict[int, bool] = {}
        self.stats: dict[int, dict[str, Any]] = {}  # every layer read back: its stats (for score_stats)

    def layer_dir(self, layer: int) -> str:
        return storage.join(self.out, "layers", f"layer_{layer}")

    def done(self, layer: int) -> bool:
        """Whether the layer's tables exist, are readable and were made with this score key."""
        if layer not in self._done:
            self._done[layer] = self._check(layer)
        return self._done[layer]

    def _check(self, layer: int) -> bool:
        return layer_done(
            self.layer_dir(layer), self.score_key, lambda record: self._files(layer, record), self.storage_options
        )

    def part_dir(self, layer: int) -> PartDir:
        layer_dir = self.layer_dir(layer)
        clear_layer_marker(layer_dir, self.storage_options)  # the layer is unfinished from here on
        self._done[layer] = False
        storage.remove(storage.join(layer_dir, "parts"), self.storage_options, recursive=True)
        return PartDir(storage.join(layer_dir, "parts"), self.storage_options)

    def _parts(self, layer: int, listed: list[list[Any]]) -> list[Part]:
        return [Part(storage.join(self.layer_dir(layer), rel), int(n), tuple(g)) for rel, n, g in listed]

    def _files(self, layer: int, record: dict[str, Any]) -> list[str]:
        """Every Parquet file a finished layer's record names: its table files and part files."""
        parts, out = record.get("parts", {}), []
        for name in self.names:
            listed = parts.get(name)
            out += (
                [storage.join(self.layer_dir(layer), name)]
                if listed is None
                else [p.url for p in self._parts(layer, listed)]
            )
        return out

    def write(self, layer: int, tables: dict[str, Piece], stats: dict[str, Any]) -> None:
        layer_dir = self.layer_dir(layer)
        parts = {}
        for name in self.names:
            table = tables[name.removesuffix(".parquet")]
            url = storage.join(layer_dir, name)
            if isinstance(table, list):  # part files the tasks wrote under parts/, listed relative to the layer
                parts[name] = [[p.url.removeprefix(layer_dir + "/"), p.rows, list(p.group)] for p in table]
                storage.remove(url, self.storage_options)  # a whole-table file of an earlier layout
                continue
            with storage.open_output(url, self.storage_options) as fh:
                table.to_parquet(fh, index=False)
        write_layer_marker(layer_dir, stats, self.score_key, parts, self.storage_options)
        self._done[layer] = True

    def read(self, layer: int) -> tuple[dict[str, Piece], dict[str, Any]]:
        layer_dir, out = self.layer_dir(layer), {}
        record = read_layer_marker(layer_dir, self.storage_options)
        parts = record.get("parts", {})
        for name in self.names:
            if name in parts:
                out[name] = self._parts(layer, parts[name])
                continue
            with storage.open_url(storage.join(layer_dir, name), "rb", self.storage_options) as fh:
                out[name] = pd.read_parquet(fh)
        self.stats[layer] = record
        return out, record


def run_scoring(
    cfg: AuditConfig,
    pieces: dict[str, list[tuple[str, int]]],
    layers: list[int],
    mapper: Mapper,
    subsets: dict[str, list[np.ndarray]] | None = None,
    score_key: str = "",
    fit_roots: dict[int, tuple[str, bool]] | None = None,
    sources: Sources | None = None,
) -> tuple[ScoreResult, pd.DataFrame | None, dict[str, Any]]:
    """Score every layer into ``cfg.output`` (skipping finished ones): tables, and per-subset curves with ``subsets``.

    ``subsets``: the fingerprint subset plan (:func:`memray.fingerprint.curve_run.plan_subsets`), rows of each
    generated set; first, every layer still to score is checked for NaN/inf values in every set
    (:func:`memray.io.finite.check_finite`). ``score_key``: digest of everything the layer tables depend on; a
    layer marked with another key is redone. ``sources``: ``(set name, sample ids) -> source strings`` for the copy
    evidence.
    """
    fingerprints = cfg.fingerprint is not None and subsets is not None
    names = TABLES + ((schema.FINGERPRINTS_FILE,) if fingerprints else ())
    extra: Extra | None = None
    if fingerprints:
        labels = {g.name: g.label for g in cfg.generated}

        def extra(fitted: Fitted, scored: dict[str, Any]) -> dict[str, pd.DataFrame]:
            return {"fingerprints": curves_frame(subset_curves(fitted, scored, labels, subsets))}

    t0 = time.perf_counter()
    in_flight = 1 if mapper is map else cfg.resources.layers_in_flight  # in process: one layer at a time (BLAS threads)
    mapper = DeviceMapper(mapper, cfg.resources.score_device)  # the block arithmetic on the configured device
    source = FileSource(cfg, pieces, cfg.output, fit_roots)
    sink = FolderSink(cfg.output, score_key, names, cfg.storage)
    todo = [layer for layer in layers if not sink.done(layer)]
    check_finite(pieces, todo, cfg.storage, mapper)  # NaN/inf in any set is refused before any layer is scored
    parts, done = score_layers(
        layers, source, sink, cfg.ct, mapper, sources, cfg.train.name, extra, cfg.evidence, in_flight
    )
    dt = time.perf_counter() - t0
    log.info("score: %d layers, %.1f s, %.2f layers/s", len(layers), dt, len(layers) / dt if dt else 0.0)
    cat = {name: concat_pieces(name, v, cfg.storage) for name, v in parts.items()}
    curves = cat.pop(schema.FINGERPRINTS_FILE, None)
    if curves is not None:
        curves = curves.sort_values([schema.GEN_SET, schema.SUBSET, schema.LAYER], kind="stable", ignore_index=True)
    stats = {**score_stats(done, dt), "nodes": sorted(mapper.nodes), "score_devices": sorted(mapper.devices)}
    return ScoreResult.from_tables(cat, cfg.ct), curves, stats


def score_stats(done: dict[int, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The scoring's record for ``run.json``: its ``seconds``, per layer :data:`LAYER_STATS` (the seconds of each
    stage under ``stages``, :mod:`memray.stats.timing`) and per stage the seconds summed over the layers.

    A layer read back from an earlier run keeps the seconds it took then; with ``resources.layers_in_flight`` > 1
    the layers' seconds overlap, so their sum can exceed the stage's."""
    per_layer = {str(layer): {k: s.get(k) for k in LAYER_STATS} for layer, s in done.items()}
    return {"seconds": seconds, "stages": stage_totals(done.values()), "layers": per_layer}
