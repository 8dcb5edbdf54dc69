"""The audit as named stages: plan → embed → collect → score → finish, run on a :class:`Engine` (where work runs).

Each stage takes what the one before it returned and gives the next O(config + results): the driver never holds
features. Where the work runs — embedding actors, block and search tasks, the probe-building task, the cluster's
capacity and nodes — is the engine's (:class:`memray.ray.runner.RayRunner`, or
:class:`memray.job.local.LocalEngine` in one process); this module imports no Ray.

- **plan**: capacity, probe sets, hub weights resolved, the output folder stamped, the job record (``meta``);
- **embed**: every image shard not yet done, per embedding root (the output, or the reference);
- **collect**: the shard markers → each set's feature files, counts and ``errors.parquet``;
- **score**: every layer not yet done (:func:`memray.job.score.run_scoring`), fingerprint subset curves;
- **finish**: ``run.json`` and the tables, fingerprints and the FID-nearest baseline, probes, ``report.html``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import pyarrow.parquet as pq

from memray import installed_version
from memray.fingerprint.curve_run import plan_subsets
from memray.io import schema, storage
from memray.io.shards import ShardPlan
from memray.job.claims import AuditClaims
from memray.job.collect import (
    Counts,
    Pieces,
    check_embedded,
    collect_all,
    embedded_layers,
    previous_stats,
    set_counts,
)
from memray.job.config import AuditConfig, result_dict
from memray.job.evidence import sources_for, write_report
from memray.job.finish import finish_fingerprints_and_probes, job_method
from memray.job.keys import embed_key, job_digest, score_key
from memray.job.markers import write_fit_marker
from memray.job.preflight import Preflight, check_gallery, preprocessing_record
from memray.job.probes import is_probe_set
from memray.job.reference import check_reference, claim_reference, embeddings_root, fit_roots
from memray.job.result import AuditResult, AuditRun
from memray.job.resume import claim_output, weights_pending
from memray.job.score import run_scoring
from memray.stats import Mapper
from memray.stats.results import write_results

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Where an audit's work runs (the stages call it; :class:`memray.ray.runner.RayRunner` is the Ray one,
    :class:`memray.job.local.LocalEngine` the in-process one)."""

    def check_capacity(self, cfg: AuditConfig) -> None: ...

    def add_probe_sets(self, cfg: AuditConfig, checked: Preflight) -> tuple[AuditConfig, Preflight, dict]: ...

    def resolve_weights(self, cfg: AuditConfig, planned: dict[str, Any]) -> dict[str, Any]: ...

    def embed(
        self,
        cfg: AuditConfig,
        plans: list[ShardPlan],
        root: str,
        meta: dict[str, Any],
        embed_key: str,
        before_writing: Callable[[], Any] | None,
        weights: dict[str, Any] | None,
    ) -> dict[str, Any]: ...  # fmt: skip

    def mapper(self, cfg: AuditConfig) -> Mapper: ...

    def describe_nodes(self, node_ids: set[str]) -> list[dict[str, Any]]: ...


Scored = tuple[Any, Any, "dict | None", list[int]]  # result tables, subset curves, subset plan, layers


def plan(cfg: AuditConfig, checked: Preflight, claims: AuditClaims, engine: Engine, allow_mismatch: bool) -> AuditRun:
    """Capacity, probe sets and weights resolved; the output stamped; the job record of every shard and table."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    engine.check_capacity(cfg)
    probe_params: dict[str, dict[str, Any]] = {}
    if cfg.probes is not None:  # transformed training images, scored as further generated sets
        cfg, checked, probe_params = engine.add_probe_sets(cfg, checked)
    if checked.plans and weights_pending(checked.weights):  # hub weights: what the actors will load
        checked = dataclasses.replace(checked, weights=engine.resolve_weights(cfg, checked.weights))
        check_gallery(cfg, preprocessing_record(cfg), allow_mismatch, cfg.storage, checked.weights)
        check_reference(cfg, checked)
    history = previous_stats(cfg.output, cfg.storage)
    claim = claim_output(cfg, cfg.storage, checked.weights)
    # the job record (memray.stats.results.JOB_KEYS): in every shard's and every result table's metadata
    meta = {
        "memray_version": installed_version(),
        "job_digest": job_digest(cfg),
        "job_config": result_dict(cfg),
    }
    meta.update(preprocessing=preprocessing_record(cfg), weights=checked.weights)
    claim_reference(cfg, checked)
    stats = {"t0": t0, "started_utc": started, "resumed": claim["resumed"], "history": history}
    return AuditRun(cfg, checked, claims, meta, embed_key(cfg, checked.weights), probe_params, stats)


def embed(run: AuditRun, engine: Engine) -> dict[str, list[ShardPlan]]:
    """Embed every image shard not yet done; returns the shards per embedding root (output or reference)."""
    cfg, checked = run.cfg, run.checked
    totals: dict[str, Any] = {"rows": 0, "seconds": 0.0, "nodes": []}
    groups: dict[str, list[ShardPlan]] = {}
    for plan_ in (p for s in cfg.sets for p in checked.plans.get(s.name, [])):
        groups.setdefault(embeddings_root(cfg, plan_.set_name), []).append(plan_)
    for root, group in groups.items():  # sets given as images; sets given as embeddings are read where they are
        write_reference = run.claims.claim_reference if cfg.reference and root == cfg.reference else None
        done = engine.embed(cfg, group, root, run.meta, run.ekey, write_reference, checked.weights)
        for key, value in done.items():  # counts and times add up; node ids are a union
            old = totals.get(key, [] if key == "nodes" else 0)
            totals[key] = sorted(set(old) | set(value)) if key == "nodes" else old + value
    run.stats["embed"] = totals
    return groups


def collect(run: AuditRun, groups: dict[str, list[ShardPlan]]) -> tuple[Counts, Pieces]:
    """Every set's counts and feature files; ``errors.parquet`` written; a set without a row refused."""
    cfg, storage_options = run.cfg, run.cfg.storage
    errors, counts, pieces = collect_all(groups, run.checked, storage_options)
    for name, fl in run.checked.files.items():  # sets given as embeddings
        n = sum(f.n for f in fl)
        counts[name] = set_counts(read=n, embedded=n)
        pieces[name] = [(f.url, f.n) for f in fl if f.n]
    with storage.open_output(storage.join(cfg.output, schema.ERRORS_FILE), storage_options) as fh:
        pq.write_table(errors, fh)
    for name, c in counts.items():
        log.info(
            "%s: rows read %d = rows embedded %d + rows reported %d%s",
            name, c["rows_read"], c["rows_embedded"], c["rows_reported"],
            f"; {c['files_skipped']} file(s) skipped (see {schema.ERRORS_FILE})" if c["files_skipped"] else "",
        )  # fmt: skip
    check_embedded(cfg, counts, pieces)
    run.stats["counts"] = counts
    return counts, pieces


def score(run: AuditRun, engine: Engine, pieces: Pieces) -> Scored:
    """Every layer not yet scored; returns the result tables, the subset curves, the subset plan and the layers."""
    cfg, checked, counts = run.cfg, run.checked, run.stats["counts"]
    layers = sorted(checked.layers) if cfg.train.is_embeddings else embedded_layers(pieces[cfg.train.name], cfg.storage)
    run.sizes = {g.name: counts[g.name]["rows_embedded"] for g in cfg.generated if not is_probe_set(g.name)}
    subsets = plan_subsets(run.sizes, cfg.fingerprint) if cfg.fingerprint else None
    if run.mapper is None:  # one per run: the score and finish stages' tasks
        run.mapper = engine.mapper(cfg)
    skey, roots = score_key(run.ekey, cfg, checked), fit_roots(cfg, checked, layers)
    result, curves, run.stats["score"] = run_scoring(
        cfg, pieces, layers, run.mapper, subsets, skey, roots, sources_for(checked.plans)
    )
    run.claims.check()
    if run.claims.reference is not None and run.claims.fit_key is not None:  # built here: later audits only read it
        write_fit_marker(str(cfg.reference), run.claims.fit_key, layers, cfg.storage)
    run.stats["layers"] = layers
    return result, curves, subsets, layers


def finish(
    run: AuditRun, engine: Engine, pieces: Pieces, scored: tuple[Any, Any, dict | None, list[int]]
) -> AuditResult:
    """``run.json`` and the tables, fingerprints and their baseline, the probes, ``report.html``."""
    cfg, storage_options = run.cfg, run.cfg.storage
    result, curves, subsets, layers = scored
    s = run.stats
    stats = {k: s[k] for k in ("started_utc", "counts", "layers", "embed", "score")}
    stats["seconds"] = time.perf_counter() - s["t0"]
    stats["nodes"] = engine.describe_nodes(set(s["embed"]["nodes"]) | set(s["score"]["nodes"]))
    stats.update(resumed=s["resumed"], history=s["history"], claims=run.claims.record())
    run_meta = {**run.meta, "stats": stats, "inputs": {s.name: list(s.urls or s.embeddings) for s in cfg.sets}}
    run_meta["labels"] = {g.name: g.label for g in cfg.generated}
    if cfg.fingerprint is not None:
        run_meta["fingerprint_method"] = job_method(cfg)
    run_meta.pop("memray_version")  # write_results records it once
    mapper = run.mapper or engine.mapper(cfg)
    write_results(cfg.output, result, run_meta, storage_options, mapper)  # the per-sample tables are assembled by tasks
    attribution = finish_fingerprints_and_probes(run, result, curves, subsets, layers, pieces, mapper)
    report = next(
        iter(mapper(partial(write_report, storage_options=storage_options), [cfg.output]))
    )  # a task: it reads per-sample tables
    log.info("audit done in %.1f s; results in %s", stats["seconds"], cfg.output)
    return AuditResult(cfg.output, result.ct_scores, stats, attribution, result.verdicts, report, storage_options)


def run_stages(
    cfg: AuditConfig, checked: Preflight, claims: AuditClaims, engine: Engine, allow_gallery_mismatch: bool = False
) -> AuditResult:
    """The whole audit (or its resume) once the checks passed and the claims are held: the five stages in order."""
    run = plan(cfg, checked, claims, engine, allow_gallery_mismatch)
    groups = embed(run, engine)
    _, pieces = collect(run, groups)
    scored = score(run, engine, pieces)
    return finish(run, engine, pieces, scored)
