"""Evaluate attribution: protocols, baselines, accuracy with Wilson intervals, confusion, side-by-side table.

Protocols (every curve set is one :class:`~memray.fingerprint.match.Gallery`):

- ``split``: curves marked ``gallery`` form the gallery, curves marked ``query`` are attributed.
- ``leave-one-run-out``: every curve is a query against all curves of *other* runs (subsets of the query's own
  generated set are left out too, so no set is matched with itself).

A query counts as correct when the prediction equals its label; when its label has no curve in its gallery,
only ``unknown`` (open set) is correct. Baselines use the same protocol and 1-NN: **FID-nearest (scalar)**
(|ΔFID| between runs, the authors' baseline), **FID-nearest (features)** / **FID-nearest (layer ℓ)** (Fréchet
distance between the feature statistics of the query's and the gallery curve's images, at one layer) and
**single-layer C_T** (|ΔC_T| at one layer, NaN → 0 as for the curves). Their ``score`` is −distance.

Accuracy carries two 95% intervals: Wilson (queries as independent) and a cluster bootstrap over runs
(:mod:`memray.fingerprint.compare`; seeded, the seed and draws recorded); every method is compared with the
curve method on the same queries (paired bootstrap over runs, exact McNemar).

Files written by :func:`write_evaluation`: ``attribution.parquet`` (the curve method only,
:data:`~memray.io.schema.ATTRIBUTION_SCHEMA`), ``evaluation.parquet`` (every method: attribution columns, whose
``method`` names it, + ``correct``), ``accuracy.csv`` (the side-by-side table), ``comparison.csv`` (each method
vs the curve) and ``confusion.csv`` (curve method).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import norm

from memray.fingerprint.compare import RunBootstrap, compare_methods
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.fd_profile import CURVE, CURVE_FD, resolve_method
from memray.fingerprint.fid import fd_matrix
from memray.fingerprint.match import (
    UNKNOWN,
    Gallery,
    GalleryError,
    attribute,
    attribute_by_distance,
    method_name,
)
from memray.fingerprint.open_set import OpenSetCalibration, calibrate_open_set
from memray.io import schema
from memray.io.storage import join, open_output

PROTOCOLS: tuple[str, ...] = ("split", "leave-one-run-out")
METHOD = schema.METHOD
CORRECT = "correct"
EVALUATION_FILE = schema.EVALUATION_FILE
ACCURACY_FILE = schema.ACCURACY_FILE
CONFUSION_FILE = schema.CONFUSION_FILE
COMPARISON_FILE = schema.COMPARISON_FILE
OPEN_SET_FILE = schema.OPEN_SET_FILE
# ci_*: Wilson (queries independent); run_ci_*: cluster bootstrap over the query runs (the honest one)
SUMMARY_COLUMNS = (METHOD, "correct", "total", "accuracy", "ci_low", "ci_high", "runs", "run_ci_low", "run_ci_high")
N_BOOT = 2000


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate`: per-query rows, the accuracy table and the curve method's confusion matrix."""

    protocol: str
    attribution: pd.DataFrame  # curve method, ATTRIBUTION_SCHEMA columns
    rows: pd.DataFrame  # every method: method + ATTRIBUTION_SCHEMA + correct
    summary: pd.DataFrame  # SUMMARY_COLUMNS, one row per method
    confusion: pd.DataFrame  # true label (rows) × predicted label (columns), curve method
    comparison: pd.DataFrame | None = None  # compare.COMPARISON_COLUMNS: each method vs the curve method
    open_set: OpenSetCalibration | None = None  # the open set calibrated by leaving one family out
    bootstrap: dict[str, Any] | None = None  # {"unit": "run", "n": draws, "seed": seed}


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct/total`` (no continuity correction).

    ``center = (p̂ + z²/2n)/(1 + z²/n)``, ``half = z·sqrt(p̂(1−p̂)/n + z²/4n²)/(1 + z²/n)``; (nan, nan) if n = 0.
    """
    if total == 0:
        return float("nan"), float("nan")
    if not 0 <= correct <= total:
        raise ValueError(f"wilson_interval: need 0 <= correct <= total, got {correct}/{total}")
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p, n = correct / total, float(total)
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def protocol_masks(curves: Gallery, protocol: str, split: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Query rows (q,) and the (q, g) mask of the curves each query may be matched with."""
    if protocol == "split":
        if split is None:
            raise GalleryError("protocol 'split' needs a split column (gallery/query) in the curve file")
        split = np.asarray(split, dtype=object)
        queries = np.flatnonzero(split == "query")
        if queries.size == 0 or not (split == "gallery").any():
            raise GalleryError("protocol 'split' needs at least one 'gallery' and one 'query' curve")
        return queries, np.broadcast_to(split == "gallery", (queries.size, len(curves))).copy()
    if protocol == "leave-one-run-out":
        queries = np.arange(len(curves))
        return queries, curves.runs[:, None] != curves.runs[None, :]
    raise GalleryError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")


def _correct(att: pd.DataFrame, curves: Gallery, allowed: np.ndarray) -> np.ndarray:
    out = np.empty(len(att), dtype=bool)
    for i, (truth, pred) in enumerate(zip(att[schema.TRUE_LABEL], att[schema.PREDICTED], strict=True)):
        known = truth in set(curves.labels[allowed[i]].tolist())
        out[i] = pred == truth if known else pred == UNKNOWN
    return out


def evaluate(
    curves: Gallery,
    fcfg: FingerprintConfig,
    protocol: str = "leave-one-run-out",
    split: np.ndarray | None = None,
    fid: dict[str, float] | None = None,
    feature_stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    single_layer: bool = True,
    layer_stats: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
) -> Evaluation:
    """Attribute the protocol's queries with the curve method and the baselines, and score them.

    Args:
        curves: all labelled curves (gallery and queries).
        fcfg: the curve method (``method``, ``alpha``, ``matcher``, ``k``, ``open_set_threshold``); with
            ``method`` ``curve_fd`` (or ``auto`` on curves with an FD-to-test profile) the paper's C_T curve is
            scored beside it as a baseline.
        protocol: ``split`` (needs ``split``, (g,) of ``gallery``/``query``) or ``leave-one-run-out``.
        fid: run → scalar FID (FID-nearest baseline), e.g. from :func:`memray.fingerprint.fid.match_fid_runs`.
        feature_stats: curve name → ``(mu, sigma)`` of the curve's images' features (feature-FID baseline).
        single_layer: add one single-layer C_T baseline per layer.
        layer_stats: layer → curve name → ``(mu, sigma)`` of the curve's images at that layer: one
            ``FID-nearest (layer ℓ)`` baseline per layer given.
        n_boot, boot_seed: draws and seed of the cluster bootstrap over query runs.
    """
    unlabelled = [n for n, lab in zip(curves.names, curves.labels, strict=True) if lab is None]
    if unlabelled:
        raise GalleryError(f"evaluation needs a label on every curve; unlabelled: {unlabelled[:5]}")
    qrows, allowed = protocol_masks(curves, protocol, split)
    queries = curves.select(qrows)
    open_set = calibrate_open_set(curves, fcfg)  # reported beside; the methods below are closed set when calibrated
    if fcfg.open_set_threshold == "calibrated":
        fcfg = replace(fcfg, open_set_threshold=None)
    fcfg = resolve_method(fcfg, curves.fd_test is not None, "these curves")
    results: list[tuple[str, pd.DataFrame]] = [(method_name(fcfg), attribute(queries, curves, fcfg, allowed))]
    if fcfg.method == CURVE_FD:  # the paper's curve beside
        paper = replace(fcfg, method=CURVE)
        results.append((method_name(paper), attribute(queries, curves, paper, allowed)))
    results += _baselines(curves, qrows, queries, allowed, fid, feature_stats, single_layer, layer_stats)
    boot = RunBootstrap.draw(queries.runs, n_boot, boot_seed)
    frames, summary = [], []
    for name, att in results:
        ok = _correct(att, curves, allowed)
        frames.append(att.assign(**{METHOD: name, CORRECT: ok}))
        lo, hi = wilson_interval(int(ok.sum()), len(ok))
        rlo, rhi = boot.interval(queries.runs, ok)
        summary.append((name, int(ok.sum()), len(ok), float(ok.mean()), lo, hi, len(boot.runs), rlo, rhi))
    rows = pd.concat(frames, ignore_index=True)[[*(f.name for f in schema.ATTRIBUTION_SCHEMA), CORRECT]]
    comparison = compare_methods(rows, results[0][0], boot, dict(zip(queries.names, queries.runs, strict=True)))
    return Evaluation(
        protocol,
        results[0][1],
        rows,
        pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)),
        confusion_matrix(results[0][1]),
        comparison=comparison,
        open_set=open_set,
        bootstrap={"unit": "run", "n": n_boot, "seed": boot_seed},
    )


def _baselines(
    curves: Gallery,
    qrows: np.ndarray,
    queries: Gallery,
    allowed: np.ndarray,
    fid: dict[str, float] | None,
    feature_stats: dict[str, tuple[np.ndarray, np.ndarray]] | None,
    single_layer: bool,
    layer_stats: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] | None,
) -> list[tuple[str, pd.DataFrame]]:
    """(method name, attribution) of every baseline asked for, in table order."""
    results: list[tuple[str, pd.DataFrame]] = []
    if fid is not None:
        missing = sorted({r for r in curves.runs if r not in fid})
        if missing:
            raise GalleryError(f"no FID for runs {missing[:5]}; add them to the FID file or map names (curve_run)")
        f = np.array([fid[r] for r in curves.runs])
        name = "FID-nearest (scalar)"
        results.append((name, attribute_by_distance(queries, curves, np.abs(f[qrows, None] - f), allowed, name)))
    by_name = [("FID-nearest (features)", feature_stats)] if feature_stats is not None else []
    by_name += [(f"FID-nearest (layer {ly})", st) for ly, st in sorted((layer_stats or {}).items())]
    for name, st in by_name:
        missing = [n for n in curves.names if n not in st]
        if missing:
            raise GalleryError(f"{name}: no feature statistics for curves {missing[:5]}")
        stats = [st[n] for n in curves.names]
        dist = fd_matrix([stats[i] for i in qrows], stats)
        results.append((name, attribute_by_distance(queries, curves, dist, allowed, name)))
    if single_layer and len(curves.layers) > 1:
        x = np.nan_to_num(curves.curves, nan=0.0)
        for j, layer in enumerate(curves.layers):
            dist = np.abs(x[qrows, j][:, None] - x[None, :, j])
            name = f"single-layer C_T (layer {layer})"
            results.append((name, attribute_by_distance(queries, curves, dist, allowed, name)))
    return results


def confusion_matrix(att: pd.DataFrame) -> pd.DataFrame:
    """Counts of true label (rows) × predicted label (columns), square over all labels seen (plus ``unknown``)."""
    labels = sorted(set(att[schema.TRUE_LABEL].tolist()) | set(att[schema.PREDICTED].tolist()) - {UNKNOWN})
    cols = labels + ([UNKNOWN] if (att[schema.PREDICTED] == UNKNOWN).any() else [])
    table = pd.crosstab(att[schema.TRUE_LABEL], att[schema.PREDICTED])
    return table.reindex(index=labels, columns=cols, fill_value=0).rename_axis(
        index=schema.TRUE_LABEL, columns=schema.PREDICTED
    )


def format_table(summary: pd.DataFrame) -> str:
    """The accuracy table as aligned text: method, correct/total, accuracy, 95% Wilson CI, 95% CI over runs."""
    width = max(len("method"), *(len(m) for m in summary[METHOD]))
    lines = [f"{'method':<{width}}  correct   accuracy  95% CI (Wilson)   95% CI (runs resampled)"]
    for r in summary.itertuples(index=False):
        frac = f"{r.correct}/{r.total}"
        runs = f"[{r.run_ci_low:.3f}, {r.run_ci_high:.3f}]" if hasattr(r, "run_ci_low") else ""
        lines.append(f"{r.method:<{width}}  {frac:>7}   {r.accuracy:8.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {runs}")
    return "\n".join(lines)


def write_attribution(
    url: str, att: pd.DataFrame, metadata: dict[str, Any] | None = None, storage_options: dict[str, Any] | None = None
) -> None:
    """Write an attribution table with :data:`~memray.io.schema.ATTRIBUTION_SCHEMA` and JSON metadata."""
    sch = schema.ATTRIBUTION_SCHEMA
    if metadata is not None:
        sch = sch.with_metadata({schema.META_KEY: json.dumps(metadata, sort_keys=True, default=str).encode()})
    table = pa.Table.from_pandas(att[[f.name for f in schema.ATTRIBUTION_SCHEMA]], schema=sch, preserve_index=False)
    with open_output(url, storage_options) as fh:
        pq.write_table(table, fh)


def write_evaluation(out_url: str, ev: Evaluation, metadata: dict[str, Any] | None = None) -> None:
    """Write attribution.parquet, evaluation.parquet, accuracy.csv and confusion.csv under ``out_url``."""
    meta = {**(metadata or {}), "protocol": ev.protocol, "accuracy": ev.summary.to_dict(orient="records")}
    meta["bootstrap"] = ev.bootstrap
    if ev.open_set is not None:
        meta["open_set"] = {"threshold": ev.open_set.threshold, "table": ev.open_set.table.to_dict(orient="records")}
    write_attribution(join(out_url, schema.ATTRIBUTION_FILE), ev.attribution, meta)
    rows = pa.Table.from_pandas(ev.rows, preserve_index=False)
    rows = rows.replace_schema_metadata({schema.META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    with open_output(join(out_url, EVALUATION_FILE)) as fh:
        pq.write_table(rows, fh)
    tables = [(ACCURACY_FILE, ev.summary, False), (CONFUSION_FILE, ev.confusion, True)]
    if ev.comparison is not None:
        tables.append((COMPARISON_FILE, ev.comparison, False))
    if ev.open_set is not None:
        tables.append((OPEN_SET_FILE, ev.open_set.table, False))
    for name, df, index in tables:
        with open_output(join(out_url, name)) as fh:
            fh.write(df.to_csv(index=index).encode())
