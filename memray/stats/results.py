"""Write a :class:`~memray.stats.score.ScoreResult` as Parquet tables plus ``run.json``, atomically and reproducibly.

Every table carries, under ``schema.META_KEY`` in its Parquet schema metadata, the CT config, its digest, the
memray version and the statistical choices (see :func:`method_record`). Nothing time-dependent goes into the
Parquet files, so the same inputs and config give bitwise-identical files; ``run.json`` holds the caller's run
metadata (inputs, timestamp…) and per-table row counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from memray import installed_version
from memray.config import digest, to_dict
from memray.io import schema
from memray.io.storage import join, open_output, write_json
from memray.stats import Mapper
from memray.stats.catalog import to_table
from memray.stats.config import CTConfig
from memray.stats.parts import PartsTable
from memray.stats.tables import ScoreResult

__all__ = ["JOB_KEYS", "method_record", "table_metadata", "to_table", "write_results"]


def _cells_text(cfg: CTConfig) -> str:
    """How the cells are fitted: seeding sample, Lloyd iterations, restarts and numbering."""
    seeding = cfg.kmeans_seed_sample if cfg.kmeans_sample is None else min(cfg.kmeans_seed_sample, cfg.kmeans_sample)
    return (
        f"greedy k-means++ seeding on a hash sample of ~{seeding} training samples "
        "(blake2b-64 of 'seed\\0sample_id' below that share of n; all when fewer), then float64 Lloyd over "
        f"row blocks of {cfg.block_rows}, k={cfg.cells}, seed={cfg.seed}, niter={cfg.kmeans_niter}, "
        f"restarts={cfg.kmeans_nredo} (restart r seeded by default_rng([seed, r]); an empty cell keeps its "
        "centroid; lowest exact float64 objective kept, ties to the lowest r; cells numbered in the "
        "lexicographic order of their centroids)"
    )


def _kmeans_points_text(cfg: CTConfig) -> str:
    """Which training samples the k-means fit reads."""
    if cfg.kmeans_sample is None:
        return f"all training samples, in row blocks of {cfg.block_rows}"
    return f"hash sample of ~{cfg.kmeans_sample} (blake2b-64 of 'seed\\0sample_id'), row blocks of {cfg.block_rows}"


def _bootstrap_text(cfg: CTConfig) -> str:
    """The bootstrap interval's resampling and seeding (``"none"`` when off)."""
    if not cfg.bootstrap:
        return "none"
    return (
        f"{cfg.bootstrap} resamples of generated and test samples with replacement within cells (partition "
        "fixed), percentile 95% interval; per layer seed word s = SeedSequence([seed, layer]); test resamples of "
        "cell c from default_rng([s, 0, c]), a set's from default_rng([s, 1, crc32(gen_set), c])"
    )


def _copies_text(cfg: CTConfig) -> str:
    """The nearest-copies search (``"none"`` when ``top_k`` is 0)."""
    if not cfg.top_k:
        return "none"
    return (
        f"top {cfg.top_k} nearest training samples over the whole training set (projected space, same metric; "
        "exact float64: FAISS float32 candidates re-ranked, exhaustive where the float32 bound does not prove "
        "the list; ties to the smaller training row); test_quantile = share of test samples whose nearest "
        "training distance is below"
    )


def method_record(cfg: CTConfig) -> dict[str, Any]:
    """The statistical choices behind a C_T result, spelled out beside the numbers.

    ``preset`` names the mode and every mode-governed field set otherwise: ``"meehan; overridden: cells=3"``.
    """
    overridden = ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.overrides().items())
    return {
        "preset": cfg.mode + (f"; overridden: {overridden}" if overridden else ""),
        "distance": {
            "cosine_abs": "1 - |cos| in the projected space",
            "cosine": "1 - cos in the projected space",
            "l2": "Euclidean in the projected space",
        }[cfg.metric],
        "pca": "none (raw vectors)" if cfg.pca_dim is None else "exact covariance eigh on train, float64",
        "pca_only_if_larger": cfg.pca_only_if_larger,
        "cells": _cells_text(cfg),
        "kmeans_points": _kmeans_points_text(cfg),
        "cell_assignment": "nearest centroid, exact float64 L2, ties to the lower cell",
        "nearest_neighbour": "exact: float64 re-rank, exhaustive on near-ties; ties to the smallest train row",
        "u_statistic": "rank-sum of generated distances minus m(m+1)/2, average ranks for ties",
        "z": "(U - (n*m/2 - 0.5)) / sqrt(n*m*(n+m+1)/12), no tie correction",
        "keep_cell": f"n_gen > {cfg.min_gen_per_cell} and n_test > 0 and n_train > 0",
        "ct": "sum over kept cells of P(cell)*Z / sum of P(cell), P = share of test samples",
        "p_value": "one-sided Phi(C_T / sd), sd = sqrt(sum w^2) / sum w over kept cells (Z_c iid N(0,1) under "
        "no copying); a cell's p = Phi(Z_c)",
        "bootstrap": _bootstrap_text(cfg),
        "verdict": (
            f"copying iff the Holm-adjusted (over the set's layers) C_T p < alpha={cfg.alpha}; localized copying "
            "iff not, but a cell's Holm-adjusted (over kept cells x layers) p < alpha"
        ),
        "partitions": (
            f"C_T also under k-means seeds {cfg.seed + 1}..{cfg.seed + cfg.partitions - 1} (range reported)"
            if cfg.partitions > 1
            else "one partition (seed above)"
        ),
        "copies": _copies_text(cfg),
        "seed": cfg.seed,
    }


# Keys of a job's run record that are copied into every table's metadata: the encoder, layers and
# preprocessing that made the features, so a table copied on its own still says how it was made.
JOB_KEYS = ("job_config", "job_digest", "preprocessing")


def table_metadata(cfg: CTConfig, table: str, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON stored in each table's schema metadata (C_T config and method, plus ``job`` when given)."""
    meta = {
        "table": table,
        "config": to_dict(cfg),
        "config_digest": digest(cfg),
        "memray_version": installed_version(),
        "method": method_record(cfg),
    }
    if job:
        meta["job"] = job
    return meta


@dataclass(frozen=True)
class PartsWrite:
    """One per-sample table to assemble from its part files into ``url`` (a mapper item)."""

    table: PartsTable
    url: str
    meta: dict[str, Any]
    storage_options: dict[str, Any] | None = None


def write_parts(item: PartsWrite) -> int:
    """:meth:`PartsTable.write` of one item; returns the table's rows."""
    return item.table.write(item.url, item.meta, item.storage_options)


def write_results(
    out_url: str,
    result: ScoreResult,
    run_meta: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
    mapper: Mapper = map,
) -> dict[str, str]:
    """Write the result tables (ct_scores, ct_cells, neighbors, copies, ct_stability, verdicts) and ``run.json``.

    A table held as part files (the per-sample tables of a job) is streamed into its file by a ``mapper`` item (a
    Ray task in a job), so the caller never holds it; the bytes are those of the same table written whole.

    Returns:
        {table name: URL} for every table and ``run``.
    """
    if result.config is None:
        raise ValueError("this ScoreResult has no config; build it with ScoreResult.from_tables(tables, config=...)")
    tables = {
        "ct_scores": (result.ct_scores, schema.CT_SCORES_SCHEMA, schema.CT_SCORES_FILE),
        "ct_cells": (result.ct_cells, schema.CT_CELLS_SCHEMA, schema.CT_CELLS_FILE),
        "neighbors": (result.neighbors, schema.NEIGHBORS_SCHEMA, schema.NEIGHBORS_FILE),
        "copies": (result.copies, schema.COPIES_SCHEMA, schema.COPIES_FILE),
        "ct_stability": (result.ct_stability, schema.STABILITY_SCHEMA, schema.STABILITY_FILE),
        "replication": (result.replication, schema.REPLICATION_SCHEMA, schema.REPLICATION_FILE),
        "memorized": (result.memorized, schema.MEMORIZED_SCHEMA, schema.MEMORIZED_FILE),
        "verdicts": (result.verdicts, schema.VERDICTS_SCHEMA, schema.VERDICTS_FILE),
    }
    tables = {k: v for k, v in tables.items() if v[0] is not None}
    paths: dict[str, str] = {name: join(out_url, file) for name, (_, _, file) in tables.items()}
    rows: dict[str, int] = {}
    job = {k: run_meta[k] for k in JOB_KEYS if k in run_meta}
    streamed = []
    for name, (df, sch, _) in tables.items():
        meta = table_metadata(result.config, name, job)
        if isinstance(df, PartsTable):
            streamed.append((name, PartsWrite(df, paths[name], meta, storage_options)))
            continue
        table = to_table(df, sch, meta)
        with open_output(paths[name], storage_options) as fh:
            pq.write_table(table, fh, compression="zstd", write_statistics=True)
        rows[name] = table.num_rows
    for (name, _), n in zip(streamed, mapper(write_parts, [item for _, item in streamed]), strict=True):
        rows[name] = int(n)
    run = {
        **run_meta,
        "config": to_dict(result.config),
        "config_digest": digest(result.config),
        "memray_version": installed_version(),
        "method": method_record(result.config),
        "layers": result.layers,
        "gen_sets": result.gen_sets,
        "tables": {name: {"file": tables[name][2], "rows": rows[name]} for name in tables},
    }
    paths["run"] = join(out_url, schema.RUN_FILE)
    write_json(paths["run"], run, storage_options)
    return paths
