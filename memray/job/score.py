"""The job's scoring stage: the core loop (:func:`memray.stats.layers.score_layers`) over the feature files.

The driver coordinates: per layer it reads the test and generated sets (O(|P| + Σ|Q|)) and hands the core a handle
on the training files; the fit's block steps and the search items run through the caller's *mapper* (Ray tasks in
a job, builtin ``map`` in a test) and read their own rows and write their outputs to the layer's workspace
(``fit/layer_<ℓ>/``, or the reference's). Each finished layer is written under ``layers/layer_<ℓ>/`` with a
completion marker ``done.json`` holding the layer's score key (:mod:`memray.job.resume`), so a rerun skips it only
while the embeddings, sets and scoring settings it was made from are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from memray.config import digest
from memray.fingerprint.curve_run import curves_frame, subset_curves
from memray.io import schema, storage
from memray.io.features import FeatureSet
from memray.io.finite import check_finite
from memray.io.rows import load_queries, set_rows
from memray.job.config import AuditConfig
from memray.stats import Mapper
from memray.stats.layers import Extra, LayerSets, score_layers
from memray.stats.score import ScoreResult
from memray.stats.tables import Sources
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)
LAYER_STATS = ("seconds", "n_train", "space_dim", "train_rank", "degenerate")  # per layer, into run.json
TABLES = (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE, schema.COPIES_FILE, schema.STABILITY_FILE)
MARKER = "done.json"


def features_key(ct: dict[str, Any], sets: dict[str, FeatureSet]) -> str:
    """Score key of ``memray score``: the C_T config and the content of every set (sample ids, every layer's bytes).

    Content, not file names: a file rewritten in place changes the key, so a rerun re-scores instead of reusing
    layers made from other features. Costs one SHA-256 pass over the features (~1 s per GB).
    """
    parts = {}
    for name, fs in sorted(sets.items()):
        h = hashlib.sha256("\0".join(map(str, fs.ids)).encode())
        for layer in sorted(fs.layers):
            x = np.ascontiguousarray(fs.layers[layer])
            h.update(f"|{layer}|{x.dtype.str}|{x.shape}|".encode())
            h.update(memoryview(x).cast("B"))
        parts[name] = h.hexdigest()
    return digest({"ct": ct, "sets": parts})


class FileSource:
    """A job's sets as feature files: ``pieces`` holds every set's ``(url, rows)`` in its global row order.

    ``fit_roots``: per layer the fit workspace URL and whether to keep it (a reference's) or remove it once the
    layer's tables are written (default ``<out>/fit/layer_<ℓ>``, removed). Further partition seeds are fit in
    ``<out>/fit/partitions_layer_<ℓ>/<seed>``, removed before (never reused) and after.
    """

    def __init__(
        self,
        cfg: AuditConfig,
        pieces: dict[str, list[tuple[str, int]]],
        out: str,
        fit_roots: dict[int, tuple[str, bool]] | None = None,
    ) -> None:
        self.cfg, self.pieces, self.out, self.so = cfg, pieces, out, cfg.storage
        self.fit_roots = fit_roots or {}

    def sets(self, layer: int) -> LayerSets:
        cfg = self.cfg
        train = set_rows(self.pieces[cfg.train.name], layer, self.so)  # a handle: the workers read their blocks
        test = load_queries(cfg.test.name, self.pieces[cfg.test.name], layer, self.so)
        gens = {g.name: load_queries(g.name, self.pieces[g.name], layer, self.so) for g in cfg.generated}
        return LayerSets(train, test, gens)

    def _fit_root(self, layer: int) -> tuple[str, bool]:
        return self.fit_roots.get(layer, (storage.join(self.out, "fit", f"layer_{layer}"), False))

    def _partition_root(self, layer: int) -> str:
        return storage.join(self.out, "fit", f"partitions_layer_{layer}")

    def workspace(self, layer: int) -> Workspace:
        return Workspace(self._fit_root(layer)[0], self.so)

    def partition_workspace(self, layer: int) -> Callable[[int], Workspace]:
        root = self._partition_root(layer)
        storage.remove(root, self.so, recursive=True)  # never reuse a partition fit of other settings
        return lambda seed: Workspace(storage.join(root, str(seed)), self.so)

    def release(self, layer: int, partitions: bool) -> None:
        url, keep = self._fit_root(layer)
        if not keep:
            storage.remove(url, self.so, recursive=True)  # the fit workspace, once the tables are made
        if partitions:
            storage.remove(self._partition_root(layer), self.so, recursive=True)


class FolderSink:
    """Layer tables as Parquet under ``<out>/layers/layer_<ℓ>/`` plus a ``done.json`` marker with the score key."""

    def __init__(self, out: str, score_key: str, names: tuple[str, ...], so: dict | None) -> None:
        self.out, self.score_key, self.names, self.so = out, score_key, names, so

    def layer_dir(self, layer: int) -> str:
        return storage.join(self.out, "layers", f"layer_{layer}")

    def done(self, layer: int) -> bool:
        """Whether the layer's tables exist, are readable and were made with this score key."""
        layer_dir = self.layer_dir(layer)
        marker = storage.join(layer_dir, MARKER)
        if not storage.exists(marker, self.so):
            return False
        try:
            if storage.read_json(marker, self.so).get("score_key") != self.score_key:
                log.info("score: %s was made from other inputs or settings; scoring it again", layer_dir)
                return False
            for name in self.names:
                with storage.open_url(storage.join(layer_dir, name), "rb", self.so) as fh:
                    pq.ParquetFile(fh)
        except Exception as exc:  # a damaged or missing table: score the layer again
            log.warning("score: %s is damaged (%s); scoring it again", layer_dir, exc)
            return False
        return True

    def write(self, layer: int, tables: dict[str, pd.DataFrame], stats: dict[str, Any]) -> None:
        layer_dir = self.layer_dir(layer)
        for name in self.names:
            with storage.open_output(storage.join(layer_dir, name), self.so) as fh:
                tables[name.removesuffix(".parquet")].to_parquet(fh, index=False)
        storage.write_json(storage.join(layer_dir, MARKER), {**stats, "score_key": self.score_key}, self.so)

    def read(self, layer: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        layer_dir, out = self.layer_dir(layer), {}
        for name in self.names:
            with storage.open_url(storage.join(layer_dir, name), "rb", self.so) as fh:
                out[name] = pd.read_parquet(fh)
        return out, storage.read_json(storage.join(layer_dir, MARKER), self.so)


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

        def extra(fitted: Any, scored: dict[str, Any]) -> dict[str, pd.DataFrame]:
            return {"fingerprints": curves_frame(subset_curves(fitted, scored, labels, subsets))}

    t0 = time.perf_counter()
    source = FileSource(cfg, pieces, cfg.output, fit_roots)
    sink = FolderSink(cfg.output, score_key, names, cfg.storage)
    todo = [layer for layer in layers if not sink.done(layer)]
    check_finite(pieces, todo, cfg.storage, mapper)  # NaN/inf in any set is refused before any layer is scored
    parts, done = score_layers(layers, source, sink, cfg.ct, mapper, sources, cfg.train.name, extra)
    dt = time.perf_counter() - t0
    log.info("score: %d layers, %.1f s, %.2f layers/s", len(layers), dt, len(layers) / dt if dt else 0.0)
    cat = {name: pd.concat(v, ignore_index=True) for name, v in parts.items()}
    curves = cat.pop(schema.FINGERPRINTS_FILE, None)
    if curves is not None:
        curves = curves.sort_values([schema.GEN_SET, schema.SUBSET, schema.LAYER], kind="stable", ignore_index=True)
    per_layer = {str(layer): {k: s.get(k) for k in LAYER_STATS} for layer, s in done.items()}
    stats = {"seconds": dt, "nodes": sorted(getattr(mapper, "nodes", ())), "layers": per_layer}
    return ScoreResult.from_tables(cat, cfg.ct), curves, stats
