"""The audit job driver: plan shards → embed (Ray Data, actor pool) → score per layer (Ray tasks) → tables.

Runs the same on a laptop (``ray.init()`` starts a local Ray) and on a cluster (``ray job submit``). Output
layout under ``cfg.output``::

    run.json                     config, digest, versions, counts, timings, nodes
    ct_scores.parquet  ct_cells.parquet  verdicts.parquet  neighbors.parquet  copies.parquet  errors.parquet
    ct_stability.parquet  [fingerprints.parquet  attribution.parquet  attribution_fid.parquet  gallery.parquet]
    report.html                  the evidence page (memray report RUN_DIR rebuilds it)
    embeddings/<set>/shard-NNNNN.{parquet,errors.parquet,done.json}
    layers/layer_<ℓ>/{ct_scores,ct_cells,ct_stability}.parquet + parts/{neighbors,copies}/ + done.json
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from memray import installed_version
from memray.config import digest
from memray.fingerprint.curve_run import finish_fingerprints, plan_record, plan_subsets
from memray.fingerprint.curves import read_gallery
from memray.io import schema, storage
from memray.io.images import STATUS_SKIPPED
from memray.io.shards import ShardPlan
from memray.job.evidence import fid_from_stats, set_feature_stats, sources_for, write_fid_attribution, write_report
from memray.job.preflight import Preflight, gallery_comparable, preflight, preprocessing_record
from memray.job.probes import finish_probes, is_probe_set
from memray.job.reference import claim_reference, embeddings_root, fit_roots
from memray.job.resume import CONFIG_FILE, ResumeMismatchError, claim_output, embed_key, stage_configs
from memray.job.score import run_scoring
from memray.job_config import AuditConfig, result_dict
from memray.ray.embed_stage import run_embedding, shard_url
from memray.ray.probe_stage import add_probe_sets
from memray.ray.score_stage import RayMapper
from memray.ray.session import check_capacity, describe_nodes
from memray.stats.results import write_results

log = logging.getLogger(__name__)
__all__ = ["CONFIG_FILE", "AuditResult", "ResumeMismatchError", "run_audit"]


@dataclass(frozen=True)
class AuditResult:
    """Where the results are, the main tables, the verdicts and the job's stats.

    ``verdicts``: one row per generated set (``copying`` / ``localized_copying`` / ``no_evidence`` /
    ``undefined``, Holm p, layers, advice); ``report``: URL of ``report.html`` (``None`` if it failed);
    :meth:`table` reads any other table of the run (``copies``, ``ct_cells``, ``neighbors``, ``errors``, …).
    """

    output: str
    ct_scores: pd.DataFrame
    stats: dict[str, Any]
    attribution: pd.DataFrame | None = None
    verdicts: pd.DataFrame | None = None
    report: str | None = None
    storage_options: dict[str, Any] | None = None

    def table(self, name: str) -> pd.DataFrame:
        """A table of the run folder by name (``copies``) or file name (``copies.parquet``)."""
        file = name if name.endswith(".parquet") else f"{name}.parquet"
        with storage.open_url(storage.join(self.output, file), "rb", self.storage_options) as fh:
            return pd.read_parquet(fh)


def set_counts(read: int = 0, embedded: int = 0, reported: int = 0, skipped: int = 0) -> dict[str, int]:
    """One set's counts as recorded in ``run.json`` (rows read = rows embedded + rows reported)."""
    return {"rows_read": read, "rows_embedded": embedded, "rows_reported": reported, "files_skipped": skipped}


def collect_errors(
    out: str, plans: list[ShardPlan], skipped: dict[str, list[tuple[str, str]]], so: dict | None
) -> tuple[pa.Table, dict[str, dict[str, int]], dict[str, list[tuple[str, int]]]]:
    """All error rows (plus one ``skipped`` row per skipped file), per-set counts and feature files.

    Reads the shard markers only (small JSON); checks rows read = embedded + reported for every set. The feature
    files are ``(url, rows)`` per set in shard order: the set's global row order.
    """
    tables, counts, pieces = [], {}, {}
    for plan in plans:
        stats = storage.read_json(shard_url(out, plan, ".done.json"), so)
        if int(stats["rows_embedded"]):
            pieces.setdefault(plan.set_name, []).append((shard_url(out, plan, ".parquet"), int(stats["rows_embedded"])))
        c = counts.setdefault(plan.set_name, set_counts())
        for k in ("rows_read", "rows_embedded", "rows_reported"):
            c[k] += int(stats[k])
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", so) as fh:
            tables.append(pq.read_table(fh).cast(schema.ERRORS_SCHEMA))
    for name, entries in skipped.items():
        counts.setdefault(name, set_counts())
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
    errors = pa.concat_tables(tables).cast(schema.ERRORS_SCHEMA) if tables else schema.ERRORS_SCHEMA.empty_table()
    return errors, counts, pieces


def _collect(
    groups: dict[str, list[ShardPlan]], checked: Preflight, so: dict | None
) -> tuple[pa.Table, dict[str, dict[str, int]], dict[str, list[tuple[str, int]]]]:
    """:func:`collect_errors` over every embedding root (the output, and the reference when there is one)."""
    tables, counts, pieces = [], {}, {}
    for root, group in groups.items():
        names = {plan.set_name for plan in group}
        skipped = {k: v for k, v in checked.skipped.items() if k in names}  # each set's skipped files once
        t, c, p = collect_errors(root, group, skipped, so)
        tables.append(t)
        counts.update(c)
        pieces.update(p)
    if not tables:  # every set given as embeddings
        tables = [schema.ERRORS_SCHEMA.empty_table()]
    return pa.concat_tables(tables), counts, pieces


def _score_key(ekey: str, cfg: AuditConfig, checked: Preflight) -> str:
    """Digest of what the layer tables depend on: embeddings, sets and their listings, scoring settings."""
    listings = {spec.name: checked.listing(spec.name) for spec in cfg.sets}
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

    ``checked``: the result of :func:`memray.job.preflight.preflight` when the caller already ran it (the CLI runs it
    before starting Ray); otherwise it runs here. Nothing is written before every check passed.
    """
    if not ray.is_initialized():
        raise RuntimeError("call ray.init() first (jobs/audit.py does this for you)")
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    so = dict(cfg.storage_options) or None
    checked = checked or preflight(cfg, allow_gallery_mismatch)
    check_capacity(cfg.resources)
    probe_params: dict[str, dict[str, Any]] = {}
    if cfg.probes is not None:  # transformed training images, scored as further generated sets
        cfg, checked, probe_params = add_probe_sets(cfg, checked)
    history = _previous_stats(cfg.output, so)
    claim = claim_output(cfg, so)
    run_digest = digest(result_dict(cfg))
    # the job record (memray.stats.results.JOB_KEYS): in every shard's and every result table's metadata
    meta = {"memray_version": installed_version(), "job_digest": run_digest, "job_config": result_dict(cfg)}
    meta["preprocessing"] = preprocessing_record(cfg)
    plans = checked.plans
    all_plans = [p for s in cfg.sets for p in plans.get(s.name, [])]
    ekey = embed_key(cfg)
    claim_reference(cfg, checked)
    embed_stats = {"rows": 0, "seconds": 0.0, "nodes": []}
    groups: dict[str, list[ShardPlan]] = {}  # embedding root (the output, or the reference) -> its shards
    for plan in all_plans:
        groups.setdefault(embeddings_root(cfg, plan.set_name), []).append(plan)
    for root, group in groups.items():  # sets given as images; sets given as embeddings are read where they are
        from memray.embedding.embed import make_prepare

        prepare = prepare or make_prepare(cfg.embed)
        done = run_embedding(cfg, group, root, meta, prepare, ekey)
        for key, value in done.items():  # counts and times add up; node ids are a union
            old = embed_stats.get(key, [] if key == "nodes" else 0)
            embed_stats[key] = sorted(set(old) | set(value)) if key == "nodes" else old + value
    errors, counts, pieces = _collect(groups, checked, so)
    for name, fl in checked.files.items():
        n = sum(f.n for f in fl)
        counts[name] = set_counts(read=n, embedded=n)
        pieces[name] = [(f.url, f.n) for f in fl if f.n]
    with storage.open_output(storage.join(cfg.output, schema.ERRORS_FILE), so) as fh:
        pq.write_table(errors, fh)
    for name, c in counts.items():
        log.info(
            "%s: rows read %d = rows embedded %d + rows reported %d%s",
            name, c["rows_read"], c["rows_embedded"], c["rows_reported"],
            f"; {c['files_skipped']} file(s) skipped (see {schema.ERRORS_FILE})" if c["files_skipped"] else "",
        )  # fmt: skip
    for spec in cfg.sets:
        if not pieces.get(spec.name):
            raise ValueError(f"set {spec.name!r}: no image could be embedded; see {schema.ERRORS_FILE}")
    layers = sorted(checked.layers) if cfg.train.is_embeddings else _embedded_layers(pieces[cfg.train.name], so)
    sizes = {g.name: counts[g.name]["rows_embedded"] for g in cfg.generated if not is_probe_set(g.name)}
    subsets = plan_subsets(sizes, cfg.fingerprint) if cfg.fingerprint else None
    skey = _score_key(ekey, cfg, checked)
    roots = fit_roots(cfg, checked, layers)
    sources = sources_for(plans)
    mapper = RayMapper(cfg.resources.index_task_num_cpus, 1.0 if cfg.resources.faiss_gpu else 0.0)
    result, curves, score_stats = run_scoring(cfg, pieces, layers, mapper, subsets, skey, roots, sources)
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
    run_meta = {**meta, "stats": stats, "inputs": {s.name: list(s.urls or s.embeddings) for s in cfg.sets}}
    run_meta["labels"] = {g.name: g.label for g in cfg.generated}
    run_meta.pop("memray_version")  # write_results records it once
    write_results(cfg.output, result, run_meta, so, mapper)  # the per-sample tables are assembled by tasks
    attribution = None
    if curves is not None and cfg.fingerprint is not None and subsets is not None:
        fp = cfg.fingerprint
        gallery = read_gallery(fp.gallery) if fp.gallery else None
        record = plan_record(subsets, sizes)
        job = gallery_comparable(cfg, meta["preprocessing"])
        out = finish_fingerprints(curves, record, fp, cfg.ct, cfg.output, gallery, job)
        attribution = out.get("attribution")
        if gallery is None:  # the FID-nearest baseline needs the gallery sets' features: this run's labelled sets
            last = layers[-1]
            gens = [g for g in cfg.generated if not is_probe_set(g.name)]
            set_stats = partial(set_feature_stats, layer=last, so=so)  # a task per set reads its features

            def stats_of(names: list[str]) -> dict[str, Any]:
                return dict(zip(names, mapper(set_stats, [pieces[n] for n in names]), strict=True))

            try:  # a baseline beside the result: its failure (a set too small for a covariance) is logged
                fid = fid_from_stats(stats_of, {g.name: g.label for g in gens})
                if fid is not None:
                    write_fid_attribution(cfg.output, fid, last, so)
            except (ValueError, np.linalg.LinAlgError) as exc:
                log.warning("FID-nearest baseline not computed: %s", exc)
    finish_probes(cfg, result.ct_scores, probe_params, {k: meta[k] for k in ("job_digest", "preprocessing")})
    report = next(iter(mapper(partial(write_report, so=so), [cfg.output])))  # a task: it reads per-sample tables
    log.info("audit done in %.1f s; results in %s", stats["seconds"], cfg.output)
    return AuditResult(cfg.output, result.ct_scores, stats, attribution, result.verdicts, report, so)


def _embedded_layers(pieces: list[tuple[str, int]], so: dict | None) -> list[int]:
    """Layer numbers present in a set's embeddings (from its first feature file's schema)."""
    with storage.open_url(pieces[0][0], "rb", so) as fh:
        names = pq.read_schema(fh).names
    return sorted(x for x in (schema.parse_layer_column(n) for n in names) if x is not None)
