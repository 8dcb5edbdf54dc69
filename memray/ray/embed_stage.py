"""Ray Data stage: read + decode + prepare on CPU tasks → per-layer embeddings in an actor pool → shard files.

The driver streams the actor outputs and writes each shard once all its rows arrived: the shard's feature
Parquet (``embeddings/<set>/shard-NNNNN.parquet``), its error rows (``…errors.parquet``) and, last, a small
JSON completion marker (``…done.json``) holding the shard's counts, the embed key and the shard's input listing
(names, sizes, mtimes/ETags). A rerun skips a shard only when its marker exists, both keys still match and its
feature file is readable with the recorded row count; any other shard is embedded again.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from memray import schema, storage
from memray.config import EmbedConfig, to_dict
from memray.features import FeatureSet, features_to_table
from memray.job_config import AuditConfig
from memray.ray.session import started_local
from memray.shards import IMAGE, ROW, SHARD, SHARD_ROWS, STATUS_OK, ShardPlan, read_shard

log = logging.getLogger(__name__)
NODE = "node_id"


class EmbedActor:
    """Loads the encoder once per actor; maps a batch of prepared uint8 images to per-layer embeddings."""

    def __init__(
        self, embed_cfg: dict[str, Any], num_threads: int | None, storage_options: dict[str, Any] | None = None
    ) -> None:
        from memray.config import from_dict
        from memray.embed import LayerEmbedder

        cfg = from_dict(EmbedConfig, embed_cfg, "embed")
        self.embedder = LayerEmbedder(cfg, num_threads=num_threads, storage_options=storage_options)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch[schema.STATUS] == STATUS_OK
        out = {k: v for k, v in batch.items() if k != IMAGE}
        out[NODE] = np.array([self.node] * len(ok), dtype=object)
        feats = self.embedder.embed_prepared(batch[IMAGE][ok]) if ok.any() else None
        for layer in self.embedder.resolved_layers:
            dim = self.embedder.dims[layer]
            full = np.zeros((len(ok), dim), dtype=self.embedder.out_dtype)
            if feats is not None:
                full[ok] = feats[layer]
            out[schema.layer_column(layer)] = full
        return out


def _read_fn(prepare: Any, max_pixels: int, storage_options: dict[str, Any] | None):
    def read(item: dict[str, Any]) -> list[dict[str, Any]]:
        return read_shard(ShardPlan.from_json(item["plan"]), prepare, max_pixels, storage_options)

    return read


def shard_url(out: str, plan: ShardPlan, suffix: str) -> str:
    """URL of one of a shard's outputs (``.parquet``, ``.errors.parquet``, ``.done.json``)."""
    return storage.join(out, "embeddings", plan.set_name, plan.key + suffix)


def shard_done(out: str, plan: ShardPlan, embed_key: str, so: dict | None) -> bool:
    """Whether a shard's outputs are complete and were made from its current listing with this embed config."""
    marker = shard_url(out, plan, ".done.json")
    if not storage.exists(marker, so):
        return False
    try:
        stats = storage.read_json(marker, so)
    except (OSError, ValueError) as exc:
        log.warning("set %s %s: unreadable marker (%s); embedding it again", plan.set_name, plan.key, exc)
        return False
    if stats.get("embed_key") != embed_key or stats.get("listing_digest") != plan.listing_digest():
        log.info(
            "set %s %s: its input files changed since it was embedded; embedding it again", plan.set_name, plan.key
        )
        return False
    if int(stats.get("rows_embedded", 0)) == 0:
        return True
    try:
        with storage.open_url(shard_url(out, plan, ".parquet"), "rb", so) as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", so) as fh:
            pq.ParquetFile(fh)
    except Exception as exc:  # truncated or overwritten by hand: redo rather than fail later
        log.warning("set %s %s: damaged shard files (%s); embedding it again", plan.set_name, plan.key, exc)
        return False
    if rows != int(stats["rows_embedded"]):
        log.warning("set %s %s: %d rows on disk, marker says %s; embedding it again", plan.set_name, plan.key, rows,
                    stats["rows_embedded"])  # fmt: skip
        return False
    return True


class _Progress:
    """One log line per finished shard: shards and rows done, rows/s, and the ETA of the remaining shards."""

    def __init__(self, todo: list[ShardPlan]) -> None:
        self.total, self.done, self.rows, self.t0 = len(todo), 0, 0, time.perf_counter()

    def shard(self, plan: ShardPlan, rows: int) -> None:
        self.done, self.rows = self.done + 1, self.rows + rows
        dt = time.perf_counter() - self.t0
        eta = dt / self.done * (self.total - self.done)
        log.info(
            "embed: %d/%d shards (%s %s, %d rows); %d rows in %.0f s, %.1f rows/s, ETA %.0f s",
            self.done, self.total, plan.set_name, plan.key, rows, self.rows, dt, self.rows / dt if dt else 0.0, eta,
        )  # fmt: skip


def run_embedding(
    cfg: AuditConfig, plans: list[ShardPlan], out: str, meta: dict[str, Any], prepare: Any, embed_key: str = ""
) -> dict[str, Any]:
    """Embed every shard of ``plans`` not already done (:func:`shard_done`); returns rows, time and node ids."""
    so = dict(cfg.storage_options) or None
    todo = [p for p in plans if not shard_done(out, p, embed_key, so)]
    log.info("embed: %d of %d shards to do (%d already done)", len(todo), len(plans), len(plans) - len(todo))
    nodes: set[str] = set()
    t0 = time.perf_counter()
    n_rows = 0
    progress = _Progress(todo)
    marker = {"embed_key": embed_key}
    if todo:
        res = cfg.resources
        ds = ray.data.from_items([{"plan": p.to_json()} for p in todo], override_num_blocks=len(todo))
        ds = ds.flat_map(_read_fn(prepare, cfg.max_image_pixels, so), num_cpus=res.read_num_cpus)
        with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60 (only **ray_remote_args)
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "embed_cfg": to_dict(cfg.embed),
                    "num_threads": res.torch_threads,
                    "storage_options": so,
                },
                compute=ray.data.ActorPoolStrategy(size=res.actors),
                num_cpus=res.actor_num_cpus,
                num_gpus=res.actor_num_gpus,
                resources=dict(res.actor_resources) or None,
                batch_size=res.embed_batch_size,
                batch_format="numpy",
                # A Ray we started ourselves is this machine: a crashed actor is resumed by a rerun. On a cluster,
                # lost nodes are replaced in the run (Ray then logs that restarts need the actor's arguments).
                max_restarts=0 if started_local() else -1,
            )
        pending: dict[tuple[str, int], list[dict[str, np.ndarray]]] = defaultdict(list)
        seen: dict[tuple[str, int], int] = defaultdict(int)
        by_key = {(p.set_name, p.shard): p for p in todo}
        written: set[tuple[str, int]] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            nodes.update(str(n) for n in batch[NODE])
            for key in sorted({(str(s), int(h)) for s, h in zip(batch[schema.SET], batch[SHARD], strict=True)}):
                sel = (batch[schema.SET] == key[0]) & (batch[SHARD] == key[1])
                part = {k: v[sel] for k, v in batch.items()}
                pending[key].append(part)
                seen[key] += int(sel.sum())
                if seen[key] == int(part[SHARD_ROWS][0]):
                    n_rows += seen[key]
                    _write_shard(out, by_key[key], pending.pop(key), meta, so, marker)
                    written.add(key)
                    progress.shard(by_key[key], seen[key])
        for key, plan in by_key.items():
            if key in pending:
                raise RuntimeError(f"set {key[0]} {plan.key}: got {seen[key]} rows, expected more; rerun to resume")
            if key not in written:  # a shard with no image at all
                _write_shard(out, plan, [], meta, so, marker)
    dt = time.perf_counter() - t0
    log.info("embed: %d rows, %.1f s, %.1f rows/s", n_rows, dt, n_rows / dt if dt > 0 else 0.0)
    return {"rows": n_rows, "seconds": dt, "nodes": sorted(nodes)}


def _write_shard(
    out: str,
    plan: ShardPlan,
    parts: list[dict[str, np.ndarray]],
    meta: dict[str, Any],
    so: dict | None,
    marker: dict[str, Any],
) -> None:
    """Write one finished shard: features (ok rows), error rows, then the completion marker."""
    if parts:
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(cols[ROW], kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
    else:
        cols = {ROW: np.zeros(0, np.int64), schema.STATUS: np.zeros(0, object)}
    ok = cols[schema.STATUS] == STATUS_OK
    layers = {schema.parse_layer_column(k): v[ok] for k, v in cols.items() if schema.parse_layer_column(k) is not None}
    ids = cols.get(schema.SAMPLE_ID, np.zeros(0, object))
    if len(set(ids.tolist())) != len(ids):
        raise ValueError(f"set {plan.set_name} {plan.key}: duplicate sample ids; make file names/keys unique")
    if layers:
        table = features_to_table(FeatureSet(ids[ok], layers, plan.key), meta)
        with storage.open_output(shard_url(out, plan, ".parquet"), so) as fh:
            pq.write_table(table, fh)
    bad = ~ok
    errors = pa.table(
        {
            schema.SET: pa.array([plan.set_name] * int(bad.sum()), pa.string()),
            schema.SAMPLE_ID: pa.array([str(x) for x in ids[bad]], pa.string()),
            schema.STATUS: pa.array([str(x) for x in cols[schema.STATUS][bad]], pa.string()),
            schema.ERROR: pa.array([str(x) for x in cols.get(schema.ERROR, np.zeros(0, object))[bad]], pa.string()),
        },
        schema=schema.ERRORS_SCHEMA,
    )
    with storage.open_output(shard_url(out, plan, ".errors.parquet"), so) as fh:
        pq.write_table(errors, fh)
    stats = {"rows_read": len(ok), "rows_embedded": int(ok.sum()), "rows_reported": int(bad.sum()), **marker}
    stats.update(listing_digest=plan.listing_digest(), listing=plan.listing())
    storage.write_json(shard_url(out, plan, ".done.json"), stats, so)
