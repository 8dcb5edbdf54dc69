"""Per-layer scoring on Ray: sharded exact FAISS searches as parallel tasks, C_T through the core engine.

For each layer the driver loads the embeddings of that layer only, fits PCA + cells on the training set, and
hands the engine a *mapper* that runs its (cell, shard) search items as Ray tasks: one exact FAISS index per
(layer, cell, shard), built and queried inside its task, results min-merged by the engine. The statistic is
therefore computed by exactly the same code as ``memray score``. Each finished layer is written under
``layers/layer_<ℓ>/`` with a completion marker holding the layer's score key (:mod:`memray.resume`), so a rerun
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

from memray import schema, storage
from memray.curve_run import compute_curves
from memray.features import FeatureSet, table_to_features
from memray.job_config import AuditConfig
from memray.score import ScoreResult, check_inputs, fit_layer, score_layer
from memray.shards import ShardPlan

log = logging.getLogger(__name__)
LAYER_STATS = ("seconds", "n_train", "space_dim", "train_rank", "degenerate")  # per layer, into run.json
TABLES = (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE)


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
        results = ray.get([self.remote.remote(fn_ref, item) for item in items])
        self.nodes.update(node for node, _ in results)
        return [r for _, r in results]


def load_layer(out: str, plans: list[ShardPlan], layer: int, so: dict | None) -> FeatureSet:
    """One layer of one set's embeddings, concatenated in shard order (row position = global int64 id)."""
    parts = []
    for plan in plans:
        url = storage.join(out, "embeddings", plan.set_name, plan.key + ".parquet")
        if not storage.exists(url, so):  # a shard whose images all failed has no feature file
            continue
        with storage.open_url(url, "rb", so) as fh:
            table = pq.read_table(fh, columns=[schema.SAMPLE_ID, schema.layer_column(layer)])
        parts.append(table_to_features(table, url))
    if not parts:
        raise ValueError(f"set {plans[0].set_name!r}: no image could be embedded; see errors.parquet")
    ids = np.concatenate([p.ids for p in parts])
    return FeatureSet(ids, {layer: np.concatenate([p.layers[layer] for p in parts])}, plans[0].set_name)


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
    plans: dict[str, list[ShardPlan]],
    layers: list[int],
    out: str,
    subsets: dict[str, list[np.ndarray]] | None = None,
    score_key: str = "",
) -> tuple[ScoreResult, pd.DataFrame | None, dict[str, Any]]:
    """Score every layer (skipping finished ones): tables, and per-subset curves when ``subsets`` is given.

    ``subsets``: the fingerprint subset plan (:func:`memray.curve_run.plan_subsets`), rows of each generated set.
    ``score_key``: digest of everything the layer tables depend on; a layer marked with another key is redone.
    """
    so = dict(cfg.storage_options) or None
    mapper = RayMapper(cfg.resources.index_task_num_cpus, 1.0 if cfg.resources.faiss_gpu else 0.0)
    fingerprints = cfg.fingerprint is not None and subsets is not None
    names = TABLES + ((schema.FINGERPRINTS_FILE,) if fingerprints else ())
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    labels = {g.name: g.label for g in cfg.generated}
    t0 = time.perf_counter()
    per_layer: dict[str, dict[str, Any]] = {}
    for layer in layers:
        layer_dir = storage.join(out, "layers", f"layer_{layer}")
        if not _layer_done(layer_dir, score_key, names, so):
            t1 = time.perf_counter()
            train = load_layer(out, plans[cfg.train.name], layer, so)
            test = load_layer(out, plans[cfg.test.name], layer, so)
            gens = {g.name: load_layer(out, plans[g.name], layer, so) for g in cfg.generated}
            check_inputs(train, test, gens, cfg.ct, [layer])
            fitted = fit_layer(layer, train.layers[layer], train.ids, test.layers[layer], cfg.ct, mapper, test.ids)
            res = score_layer(fitted, len(train), test, gens, mapper)
            if fingerprints:
                res["fingerprints"] = compute_curves({layer: fitted}, gens, labels, cfg.fingerprint, subsets, mapper)
            for name in names:
                with storage.open_output(storage.join(layer_dir, name), so) as fh:
                    res[name.removesuffix(".parquet")].to_parquet(fh, index=False)
            stats = {"layer": layer, "seconds": time.perf_counter() - t1, "n_train": len(train), "score_key": score_key}
            stats.update(space_dim=fitted.space.dim, train_rank=fitted.space.rank, degenerate=fitted.space.degenerate)
            storage.write_json(storage.join(layer_dir, "done.json"), stats, so)
            log.info("score: layer %d, %d train / %d test, %.1f s", layer, len(train), len(test), stats["seconds"])
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
