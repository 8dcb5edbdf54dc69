"""Per-layer scoring on Ray: the block steps of :mod:`memray.stats` as Ray tasks, C_T through the core engine.

The driver coordinates: per layer it reads the test and generated sets (O(|P| + Σ|Q|)), and hands the engine a
*mapper* that runs every step over the training set as Ray tasks which read their own rows from the feature
files and write their outputs to the layer's workspace (``fit/layer_<ℓ>/``): per-block moments for the PCA,
Lloyd partial sums for the k-means restarts, the projection and cell partition, then (cell, block group) exact
search items answering every query set in one round; the driver merges small partial results in a fixed order.
The statistic is therefore computed by exactly the same code as ``memray score`` (builtin ``map``), bit for bit,
whatever the number of workers. Each finished layer is written under
``layers/layer_<ℓ>/`` with a completion marker holding the layer's score key (:mod:`memray.job.resume`), so a rerun
skips it only while the embeddings, sets and scoring settings it was made from are unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray

from memray.fingerprint.curve_run import curves_frame, subset_curves
from memray.io import schema, storage
from memray.io.features import FeatureSet
from memray.io.finite import check_finite
from memray.io.rows import ParquetRows
from memray.io.rows import pieces as make_pieces
from memray.job_config import AuditConfig
from memray.ray.errors import settle
from memray.stats.score import ScoreInputError, ScoreResult, fit_layer, layer_tables, partition_runs
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)
LAYER_STATS = ("seconds", "n_train", "space_dim", "train_rank", "degenerate")  # per layer, into run.json
TABLES = (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE, schema.COPIES_FILE, schema.STABILITY_FILE)


@ray.remote
def _run_item(fn: Callable[[Any], Any], item: Any) -> tuple[str, Any]:
    return ray.get_runtime_context().get_node_id(), fn(item)


class RayMapper:
    """``mapper(fn, items)`` with builtin ``map`` semantics, each item a Ray task; records the nodes used."""

    def __init__(self, num_cpus: float = 1.0, num_gpus: float = 0.0) -> None:
        self.remote = _run_item.options(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="SPREAD")
        self.nodes: set[str] = set()

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        fn_ref = ray.put(fn)
        refs = [self.remote.remote(fn_ref, item) for item in items]
        try:
            results = ray.get(refs)
        except Exception:
            settle(refs)  # the other items' failures are not printed as unhandled errors
            raise
        self.nodes.update(node for node, _ in results)
        return [r for _, r in results]


def set_rows(pieces: list[tuple[str, int]], layer: int, so: dict | None) -> ParquetRows:
    """A handle on one layer of a set's feature files (``(url, rows)`` in the set's global row order)."""
    return ParquetRows(make_pieces(pieces), layer, so)


def load_queries(name: str, pieces: list[tuple[str, int]], layer: int, so: dict | None) -> FeatureSet:
    """One layer of a test or generated set, read into the driver (these sets are the small ones)."""
    rows = set_rows(pieces, layer, so)
    x = rows.read(0, rows.n)
    return FeatureSet(rows.ids(np.arange(rows.n, dtype=np.int64)), {layer: x}, name)


def _check_dims(train: ParquetRows, sets: dict[str, FeatureSet], layer: int) -> None:
    for name, fs in sets.items():
        if fs.layers[layer].shape[1] != train.dim:
            raise ScoreInputError(
                f"set {name!r}: layer {layer} has dimension {fs.layers[layer].shape[1]} but the training set has "
                f"{train.dim}; all sets must come from the same encoder and layer"
            )


def _layer_done(layer_dir: str, score_key: str, names: tuple[str, ...], so: dict | None) -> bool:
    """Whether a layer's tables exist, are readable and were made with ``score_key``."""
    marker = storage.join(layer_dir, "done.json")
    if not storage.exists(marker, so):
        return False
    try:
        if storage.read_json(marker, so).get("score_key") != score_key:
            log.info("score: %s was made from other inputs or settings; scoring it again", layer_dir)
            return False
        for name in names:
            with storage.open_url(storage.join(layer_dir, name), "rb", so) as fh:
                pq.ParquetFile(fh)
    except Exception as exc:  # a damaged or missing table: score the layer again
        log.warning("score: %s is damaged (%s); scoring it again", layer_dir, exc)
        return False
    return True


def run_scoring(
    cfg: AuditConfig,
    pieces: dict[str, list[tuple[str, int]]],
    layers: list[int],
    out: str,
    subsets: dict[str, list[np.ndarray]] | None = None,
    score_key: str = "",
    fit_roots: dict[int, tuple[str, bool]] | None = None,
    sources: Callable[[str, np.ndarray], list[str | None]] | None = None,
) -> tuple[ScoreResult, pd.DataFrame | None, dict[str, Any]]:
    """Score every layer (skipping finished ones): tables, and per-subset curves when ``subsets`` is given.

    ``pieces``: every set's feature files ``(url, rows)`` in its global row order; first, every layer still to score
    is checked for NaN/inf values in every set (:func:`memray.io.finite.check_finite`). Per layer the driver reads the
    test and generated sets (small) and hands the workers a handle on the training files: the fit's block steps
    and the search items read their rows themselves (:mod:`memray.stats`); one search round answers every set.
    ``subsets``: the fingerprint subset plan (:func:`memray.fingerprint.curve_run.plan_subsets`), rows of each
    generated set.
    ``score_key``: digest of everything the layer tables depend on; a layer marked with another key is redone.
    ``fit_roots``: per layer, the fit workspace URL and whether to keep it (a reference) or remove it once the
    layer's tables are written (default ``<out>/fit/layer_<ℓ>``, removed).
    ``sources``: ``(set name, sample ids) -> source strings`` for the copy evidence (:class:`memray.io.fetch.Locator`).
    With ``ct.partitions > 1`` each further partition seed is fit in ``<out>/fit/partitions_layer_<ℓ>/<seed>``
    (removed once scored).
    """
    so = dict(cfg.storage_options) or None
    mapper = RayMapper(cfg.resources.index_task_num_cpus, 1.0 if cfg.resources.faiss_gpu else 0.0)
    fingerprints = cfg.fingerprint is not None and subsets is not None
    names = TABLES + ((schema.FINGERPRINTS_FILE,) if fingerprints else ())
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    labels = {g.name: g.label for g in cfg.generated}
    t0 = time.perf_counter()
    per_layer: dict[str, dict[str, Any]] = {}
    todo = [x for x in layers if not _layer_done(storage.join(out, "layers", f"layer_{x}"), score_key, names, so)]
    check_finite(pieces, todo, so, mapper)  # NaN/inf in any set is refused before any layer is scored
    for layer in layers:
        layer_dir = storage.join(out, "layers", f"layer_{layer}")
        if layer in todo:
            t1 = time.perf_counter()
            train = set_rows(pieces[cfg.train.name], layer, so)  # a handle: the workers read their blocks
            test = load_queries(cfg.test.name, pieces[cfg.test.name], layer, so)
            gens = {g.name: load_queries(g.name, pieces[g.name], layer, so) for g in cfg.generated}
            _check_dims(train, {cfg.test.name: test, **gens}, layer)
            ws_url, keep = (fit_roots or {}).get(layer, (storage.join(out, "fit", f"layer_{layer}"), False))
            ws = Workspace(ws_url, so)
            fitted = fit_layer(layer, train, None, test.layers[layer], cfg.ct, mapper, test.ids, ws=ws)
            warn = {name: f"gen set {name!r}, layer {layer}" for name in gens}
            xs = {n: gens[n].layers[layer] for n in sorted(gens)}
            scored = fitted.score_sets(xs, mapper, warn)  # one round
            runs = None
            if cfg.ct.partitions > 1:
                part_root = storage.join(out, "fit", f"partitions_layer_{layer}")

                def part_ws(seed: int, root: str = part_root) -> Workspace:
                    return Workspace(storage.join(root, str(seed)), so)

                storage.remove(part_root, so, recursive=True)  # never reuse a partition fit of other settings
                runs = partition_runs(layer, train, None, test.layers[layer], xs, cfg.ct, mapper, part_ws)
                storage.remove(part_root, so, recursive=True)
            res = layer_tables(fitted, train.n, test, gens, scored, mapper, sources, cfg.train.name, runs)
            if fingerprints:
                rows = subset_curves(fitted, scored, labels, subsets)
                res["fingerprints"] = curves_frame(rows)
            for name in names:
                with storage.open_output(storage.join(layer_dir, name), so) as fh:
                    res[name.removesuffix(".parquet")].to_parquet(fh, index=False)
            if not keep:
                storage.remove(ws_url, so, recursive=True)  # the fit workspace, once the tables are written
            stats = {"layer": layer, "seconds": time.perf_counter() - t1, "n_train": train.n, "score_key": score_key}
            stats.update(space_dim=fitted.space.dim, train_rank=fitted.space.rank, degenerate=fitted.space.degenerate)
            storage.write_json(storage.join(layer_dir, "done.json"), stats, so)
            log.info("score: layer %d, %d train / %d test, %.1f s", layer, train.n, len(test), stats["seconds"])
        for name in names:
            with storage.open_url(storage.join(layer_dir, name), "rb", so) as fh:
                tables[name].append(pd.read_parquet(fh))
        done = storage.read_json(storage.join(layer_dir, "done.json"), so)
        per_layer[str(layer)] = {k: done.get(k) for k in LAYER_STATS}
    dt = time.perf_counter() - t0
    log.info("score: %d layers, %.1f s, %.2f layers/s", len(layers), dt, len(layers) / dt if dt else 0.0)
    cat = {name: pd.concat(v, ignore_index=True) for name, v in tables.items()}
    curves = cat.pop(schema.FINGERPRINTS_FILE, None)
    if curves is not None:
        curves = curves.sort_values([schema.GEN_SET, schema.SUBSET, schema.LAYER], kind="stable", ignore_index=True)
    stats = {"seconds": dt, "nodes": sorted(mapper.nodes), "layers": per_layer}
    return ScoreResult.from_tables(cat, cfg.ct), curves, stats
