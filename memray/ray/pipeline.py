"""The audit job driver: plan shards → embed (Ray Data, actor pool) → score per layer (Ray tasks) → tables.

Runs the same on a laptop (``ray.init()`` starts a local Ray) and on a cluster (``ray job submit``). Output
layout under ``cfg.output``::

    run.json                     config, digest, versions, counts, timings, nodes
    ct_scores.parquet  ct_cells.parquet  neighbors.parquet  errors.parquet  [fingerprints.parquet]
    embeddings/<set>/shard-NNNNN.{parquet,errors.parquet,done.json}
    layers/layer_<ℓ>/{ct_scores,ct_cells,neighbors}.parquet + done.json
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from memray import __version__, schema, storage
from memray.config import digest
from memray.curve_run import finish_fingerprints, plan_record, plan_subsets
from memray.curves import read_gallery
from memray.job_config import AuditConfig, result_dict
from memray.ray.embed_stage import run_embedding, shard_url
from memray.ray.score_stage import run_scoring
from memray.results import write_results
from memray.shards import ShardPlan, plan_shards

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


class ResumeMismatchError(RuntimeError):
    """The output folder holds a run made with a different config."""


@dataclass(frozen=True)
class AuditResult:
    """Where the results are, plus the score tables and the job's stats."""

    output: str
    ct_scores: pd.DataFrame
    stats: dict[str, Any]
    attribution: pd.DataFrame | None = None


def check_resume(cfg: AuditConfig, so: dict | None) -> str:
    """Write (or compare) the config stamp of the output folder; refuse a different config."""
    stamp = {"digest": digest(result_dict(cfg)), "config": result_dict(cfg)}
    url = storage.join(cfg.output, CONFIG_FILE)
    if storage.exists(url, so):
        old = storage.read_json(url, so)
        if old.get("digest") != stamp["digest"]:
            raise ResumeMismatchError(
                f"{cfg.output} holds a run with config digest {old.get('digest')}, this config is {stamp['digest']}: "
                "choose a new output folder, or delete the old one to start over"
            )
        log.info("resuming into %s (config digest %s)", cfg.output, stamp["digest"])
    else:
        storage.write_json(url, stamp, so)
    return stamp["digest"]


def collect_errors(out: str, plans: list[ShardPlan], so: dict | None) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """All error rows plus per-set counts from the shard markers; checks rows read = embedded + reported."""
    tables, counts = [], {}
    for plan in plans:
        stats = storage.read_json(shard_url(out, plan, ".done.json"), so)
        c = counts.setdefault(plan.set_name, {"rows_read": 0, "rows_embedded": 0, "rows_reported": 0})
        for k in c:
            c[k] += int(stats[k])
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", so) as fh:
            tables.append(pq.read_table(fh))
    for name, c in counts.items():
        if c["rows_read"] != c["rows_embedded"] + c["rows_reported"]:
            raise RuntimeError(f"set {name}: rows read {c['rows_read']} != embedded + reported {c}")
    return pa.concat_tables(tables).cast(schema.ERRORS_SCHEMA), counts


def run_audit(cfg: AuditConfig, prepare: Any | None = None) -> AuditResult:
    """Run (or resume) the whole audit on the connected Ray cluster; ``ray.init`` must have been called."""
    if not ray.is_initialized():
        raise RuntimeError("call ray.init() first (jobs/audit.py does this for you)")
    t0 = time.perf_counter()
    so = dict(cfg.storage_options) or None
    run_digest = check_resume(cfg, so)
    from memray.embed import describe_preprocessing, make_prepare

    prepare = prepare or make_prepare(cfg.embed)
    # the job record (memray.results.JOB_KEYS): in every shard's and every result table's metadata
    meta = {"memray": __version__, "job_digest": run_digest, "job_config": result_dict(cfg)}
    meta["preprocessing"] = describe_preprocessing(cfg.embed)
    specs = [cfg.train, cfg.test, *cfg.generated]
    plans = {s.name: plan_shards(s, cfg.resources.shard_rows, so) for s in specs}
    all_plans = [p for s in specs for p in plans[s.name]]
    log.info("plan: %s", ", ".join(f"{s.name} {len(plans[s.name])} shard(s)" for s in specs))
    embed_stats = run_embedding(cfg, all_plans, cfg.output, meta, prepare)
    errors, counts = collect_errors(cfg.output, all_plans, so)
    with storage.open_output(storage.join(cfg.output, schema.ERRORS_FILE), so) as fh:
        pq.write_table(errors, fh)
    for name, c in counts.items():
        log.info(
            "%s: rows read %d = rows embedded %d + rows reported %d",
            name,
            c["rows_read"],
            c["rows_embedded"],
            c["rows_reported"],
        )
    layers = _embedded_layers(cfg, plans, so)
    sizes = {g.name: counts[g.name]["rows_embedded"] for g in cfg.generated}
    subsets = plan_subsets(sizes, cfg.fingerprint) if cfg.fingerprint else None
    result, curves, score_stats = run_scoring(cfg, plans, layers, cfg.output, subsets)
    stats = {
        "counts": counts,
        "layers": layers,
        "embed": embed_stats,
        "score": score_stats,
        "seconds": time.perf_counter() - t0,
    }
    run_meta = {**meta, "stats": stats, "inputs": {s.name: list(s.urls) for s in specs}}
    run_meta["labels"] = {g.name: g.label for g in cfg.generated}
    write_results(cfg.output, result, run_meta, so)
    attribution = None
    if curves is not None and cfg.fingerprint is not None and subsets is not None:
        fp = cfg.fingerprint
        gallery = read_gallery(fp.gallery) if fp.gallery else None
        record = plan_record(subsets, sizes)
        attribution = finish_fingerprints(curves, record, fp, cfg.ct, cfg.output, gallery).get("attribution")
    log.info("audit done in %.1f s; results in %s", stats["seconds"], cfg.output)
    return AuditResult(cfg.output, result.ct_scores, stats, attribution)


def _embedded_layers(cfg: AuditConfig, plans: dict[str, list[ShardPlan]], so: dict | None) -> list[int]:
    """Layer numbers present in the training embeddings (from the first shard with features)."""
    for plan in plans[cfg.train.name]:
        url = shard_url(cfg.output, plan, ".parquet")
        if storage.exists(url, so):
            with storage.open_url(url, "rb", so) as fh:
                names = pq.read_schema(fh).names
            return sorted(x for x in (schema.parse_layer_column(n) for n in names) if x is not None)
    raise ValueError(f"set {cfg.train.name!r}: no training image could be embedded; see errors.parquet")
