"""The audit job driver: plan shards → embed (Ray Data, actor pool) → score per layer (Ray tasks) → tables.

Runs the same on a laptop (``ray.init()`` starts a local Ray) and on a cluster (``ray job submit``). Output
layout under ``cfg.output``::

    run.json                     config, digest, versions, counts, timings, nodes
    ct_scores.parquet  ct_cells.parquet  neighbors.parquet  errors.parquet  [fingerprints.parquet]
    embeddings/<set>/shard-NNNNN.{parquet,errors.parquet,done.json}
    layers/layer_<ℓ>/{ct_scores,ct_cells,neighbors}.parquet + done.json
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from memray import schema, storage
from memray.config import digest
from memray.curve_run import finish_fingerprints, plan_record, plan_subsets
from memray.curves import read_gallery
from memray.job_config import AuditConfig, result_dict
from memray.preflight import Preflight, gallery_comparable, preflight
from memray.ray.embed_stage import run_embedding, shard_url
from memray.ray.score_stage import run_scoring
from memray.ray.session import check_capacity, describe_nodes
from memray.results import memray_version, write_results
from memray.resume import CONFIG_FILE, ResumeMismatchError, claim_output, embed_key, stage_configs
from memray.shards import ShardPlan

log = logging.getLogger(__name__)
__all__ = ["CONFIG_FILE", "AuditResult", "ResumeMismatchError", "run_audit"]
STATUS_SKIPPED = "skipped"


@dataclass(frozen=True)
class AuditResult:
    """Where the results are, plus the score tables and the job's stats."""

    output: str
    ct_scores: pd.DataFrame
    stats: dict[str, Any]
    attribution: pd.DataFrame | None = None


def collect_errors(
    out: str, plans: list[ShardPlan], skipped: dict[str, list[tuple[str, str]]], so: dict | None
) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """All error rows (plus one ``skipped`` row per skipped file) and per-set counts from the shard markers.

    Checks rows read = embedded + reported for every set.
    """
    tables, counts = [], {}
    for plan in plans:
        stats = storage.read_json(shard_url(out, plan, ".done.json"), so)
        c = counts.setdefault(
            plan.set_name, {"rows_read": 0, "rows_embedded": 0, "rows_reported": 0, "files_skipped": 0}
        )
        for k in ("rows_read", "rows_embedded", "rows_reported"):
            c[k] += int(stats[k])
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", so) as fh:
            tables.append(pq.read_table(fh).cast(schema.ERRORS_SCHEMA))
    for name, entries in skipped.items():
        counts.setdefault(name, {"rows_read": 0, "rows_embedded": 0, "rows_reported": 0, "files_skipped": 0})
        counts[name]["files_skipped"] = len(entries)
        if entries:
            cols = {
                schema.SET: [name] * len(entries),
                schema.SAMPLE_ID: [u for u, _ in entries],
                schema.STATUS: [STATUS_SKIPPED] * len(entries),
                schema.ERROR: [why for _, why in entries],
            }
            tables.append(pa.table(cols, schema=schema.ERRORS_SCHEMA))
    for name, c in counts.items():
        if c["rows_read"] != c["rows_embedded"] + c["rows_reported"]:
            raise RuntimeError(f"set {name}: rows read {c['rows_read']} != embedded + reported {c}")
    return pa.concat_tables(tables).cast(schema.ERRORS_SCHEMA), counts


def _score_key(ekey: str, cfg: AuditConfig, plans: dict[str, list[ShardPlan]]) -> str:
    """Digest of what the layer tables depend on: embeddings, sets and their listings, scoring settings."""
    listings = {name: [p.listing_digest() for p in ps] for name, ps in plans.items()}
    return digest({"embed_key": ekey, "score": stage_configs(cfg)["score"], "listings": listings})


def _previous_stats(out: str, so: dict | None) -> list[dict[str, Any]]:
    """The runs recorded in an earlier ``run.json`` of this folder (oldest first), for the resume history."""
    url = storage.join(out, schema.RUN_FILE)
    if not storage.exists(url, so):
        return []
    try:
        old = storage.read_json(url, so).get("stats", {})
    except (OSError, ValueError):
        return []
    history = list(old.get("history", []))
    if old:
        history.append({k: old[k] for k in ("started_utc", "seconds", "embed", "score", "nodes") if k in old})
    return history


def run_audit(
    cfg: AuditConfig,
    prepare: Any | None = None,
    checked: Preflight | None = None,
    allow_gallery_mismatch: bool = False,
) -> AuditResult:
    """Run (or resume) the whole audit on the connected Ray cluster; ``ray.init`` must have been called.

    ``checked``: the result of :func:`memray.preflight.preflight` when the caller already ran it (the CLI runs it
    before starting Ray); otherwise it runs here. Nothing is written before every check passed.
    """
    if not ray.is_initialized():
        raise RuntimeError("call ray.init() first (jobs/audit.py does this for you)")
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    so = dict(cfg.storage_options) or None
    checked = checked or preflight(cfg, allow_gallery_mismatch)
    check_capacity(cfg.resources)
    history = _previous_stats(cfg.output, so)
    claim = claim_output(cfg, so)
    run_digest = digest(result_dict(cfg))
    from memray.embed import describe_preprocessing, make_prepare

    prepare = prepare or make_prepare(cfg.embed)
    # the job record (memray.results.JOB_KEYS): in every shard's and every result table's metadata
    meta = {"memray_version": memray_version(), "job_digest": run_digest, "job_config": result_dict(cfg)}
    meta["preprocessing"] = describe_preprocessing(cfg.embed)
    specs = [cfg.train, cfg.test, *cfg.generated]
    plans = checked.plans
    all_plans = [p for s in specs for p in plans[s.name]]
    ekey = embed_key(cfg)
    embed_stats = run_embedding(cfg, all_plans, cfg.output, meta, prepare, ekey)
    errors, counts = collect_errors(cfg.output, all_plans, checked.skipped, so)
    with storage.open_output(storage.join(cfg.output, schema.ERRORS_FILE), so) as fh:
        pq.write_table(errors, fh)
    for name, c in counts.items():
        log.info(
            "%s: rows read %d = rows embedded %d + rows reported %d%s",
            name, c["rows_read"], c["rows_embedded"], c["rows_reported"],
            f"; {c['files_skipped']} file(s) skipped (see {schema.ERRORS_FILE})" if c["files_skipped"] else "",
        )  # fmt: skip
    layers = _embedded_layers(cfg, plans, so)
    sizes = {g.name: counts[g.name]["rows_embedded"] for g in cfg.generated}
    subsets = plan_subsets(sizes, cfg.fingerprint) if cfg.fingerprint else None
    skey = _score_key(ekey, cfg, plans)
    result, curves, score_stats = run_scoring(cfg, plans, layers, cfg.output, subsets, skey)
    stats = {
        "started_utc": started,
        "counts": counts,
        "layers": layers,
        "embed": embed_stats,
        "score": score_stats,
        "seconds": time.perf_counter() - t0,
        "nodes": describe_nodes(set(embed_stats["nodes"]) | set(score_stats["nodes"])),
        "resumed": claim["resumed"],
        "history": history,
    }
    run_meta = {**meta, "stats": stats, "inputs": {s.name: list(s.urls) for s in specs}}
    run_meta["labels"] = {g.name: g.label for g in cfg.generated}
    run_meta.pop("memray_version")  # write_results records it once
    write_results(cfg.output, result, run_meta, so)
    attribution = None
    if curves is not None and cfg.fingerprint is not None and subsets is not None:
        fp = cfg.fingerprint
        gallery = read_gallery(fp.gallery) if fp.gallery else None
        record = plan_record(subsets, sizes)
        job = gallery_comparable(cfg, meta["preprocessing"])
        out = finish_fingerprints(curves, record, fp, cfg.ct, cfg.output, gallery, job)
        attribution = out.get("attribution")
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
