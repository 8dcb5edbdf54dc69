"""The finish stage's evidence beside the tables: fingerprint attribution with its FID-nearest baseline, probes."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from memray.fingerprint.curve_run import curve_names, finish_fingerprints, plan_record, with_profiles
from memray.fingerprint.curves import read_gallery
from memray.fingerprint.fd_profile import CURVE_FD, planned_method, profiles
from memray.io.rows import set_rows
from memray.job.config import AuditConfig
from memray.job.evidence import fid_from_stats, set_feature_stats, subset_feature_stats, write_fid_attribution
from memray.job.preflight import gallery_comparable, gallery_method
from memray.job.probes import finish_probes, is_probe_set
from memray.job.result import AuditRun
from memray.stats import Mapper
from memray.stats.tables import ScoreResult

log = logging.getLogger(__name__)


def finish_fingerprints_and_probes(
    run: AuditRun,
    result: ScoreResult,
    curves: pd.DataFrame | None,
    subsets: dict[str, list[np.ndarray]] | None,
    layers: list[int],
    pieces: dict[str, list[tuple[str, int]]],
    mapper: Mapper,
) -> pd.DataFrame | None:
    """Attribute the unlabelled sets' curves (and, without a saved gallery, the FID-nearest baseline beside them);
    write the probe tables. Returns the attribution table (``None`` without fingerprints)."""
    cfg, attribution = run.cfg, None
    if curves is not None and cfg.fingerprint is not None and subsets is not None:
        fp = cfg.fingerprint
        gallery = read_gallery(fp.gallery) if fp.gallery else None
        job = gallery_comparable(cfg, run.meta["preprocessing"], run.checked.weights)
        stats = _curve_stats(run, subsets, layers, pieces, mapper)
        if job_method(cfg) == CURVE_FD:
            curves = with_profiles(curves, _profiles(run, subsets, layers, pieces, mapper))
        record = plan_record(subsets, run.sizes)
        out = finish_fingerprints(curves, record, fp, cfg.ct, cfg.output, gallery, job, stats)
        attribution = out.get("attribution")
        if gallery is None:  # the FID-nearest baseline needs the gallery sets' features: this run's labelled sets
            _fid_baseline(run, layers[-1], pieces, mapper)
    finish_probes(cfg, result.ct_scores, run.probe_params, {k: run.meta[k] for k in ("job_digest", "preprocessing")})
    return attribution


def _curve_stats(
    run: AuditRun,
    subsets: dict[str, list[np.ndarray]],
    layers: list[int],
    pieces: dict[str, list[tuple[str, int]]],
    mapper: Mapper,
) -> dict[int, dict[str, Any]] | None:
    """Per labelled curve, its images' feature statistics at ``fingerprint.fid_layers`` (the evaluation's FID-nearest
    baselines), one task per set and layer; ``None`` when there is no evaluation (< 2 labels or no label with 2
    runs) or ``fid_layers: none``."""
    cfg = run.cfg
    fp = cfg.fingerprint
    sets = [g for g in cfg.generated if g.label and not is_probe_set(g.name) and g.name in subsets]
    runs = pd.Series([g.label for g in sets]).value_counts()
    if fp is None or fp.fid_layers == "none" or len(runs) < 2 or not (runs >= 2).any():
        return None
    chosen = [layers[-1]] if fp.fid_layers == "last" else list(layers)
    jobs = [(g.name, layer) for layer in chosen for g in sets]
    names = curve_names({g.name: subsets[g.name] for g in sets})
    task = partial(_subset_stats, storage_options=cfg.storage)
    out: dict[int, dict[str, Any]] = {layer: {} for layer in chosen}
    try:  # a baseline beside the result: a subset too small for a covariance is logged, not fatal
        results = mapper(task, [(pieces[name], layer, subsets[name]) for name, layer in jobs])
        for (name, layer), stats in zip(jobs, results, strict=True):
            out[layer].update(zip(names[name], stats, strict=True))
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("FID-nearest baselines of the evaluation not computed: %s", exc)
        return None
    return out


def job_method(cfg: AuditConfig) -> str | None:
    """The fingerprint method this job uses (``None`` without fingerprints): ``fingerprint.method``, where ``auto`` is
    the saved gallery's method, else ``curve_fd`` (``curve`` with an open-set threshold)."""
    fp = cfg.fingerprint
    if fp is None:
        return None
    return planned_method(fp, gallery_method(fp.gallery) if fp.gallery else None)


def _profiles(
    run: AuditRun,
    subsets: dict[str, list[np.ndarray]],
    layers: list[int],
    pieces: dict[str, list[tuple[str, int]]],
    mapper: Mapper,
) -> dict[tuple[str, int], list[float]]:
    """Every curve's FD-to-test profile: (set, layer) → log FD(subset, test) per subset. One task per layer reads the
    test set's features and returns their mean and covariance; one task per set and layer reads the set's features
    and returns its subsets' log FDs (floats), so no feature and no set's covariance reaches the driver."""
    cfg = run.cfg
    test_files = [(pieces[cfg.test.name], layer) for layer in layers]
    test_stats = dict(zip(layers, mapper(partial(_layer_stats, storage_options=cfg.storage), test_files), strict=True))
    jobs = [(name, layer) for layer in layers for name in subsets]
    task = partial(_set_profiles, storage_options=cfg.storage)
    results = mapper(task, [(pieces[name], layer, subsets[name], test_stats[layer]) for name, layer in jobs])
    return dict(zip(jobs, results, strict=True))


def _layer_stats(item: tuple[list[tuple[str, int]], int], storage_options: dict | None) -> tuple:
    """A task: mean and covariance of one layer of a set's feature files."""
    return set_feature_stats(*item, storage_options)


def _set_profiles(item: tuple, storage_options: dict | None) -> list[float]:
    """A task: log FD to the test set of each subset of one set's layer (``item``: files, layer, subsets, test
    stats)."""
    files, layer, subs, test_stats = item
    rows = set_rows(files, layer, storage_options)
    return profiles(rows.read(0, rows.n), subs, test_stats)


def _subset_stats(item: tuple[list[tuple[str, int]], int, list[np.ndarray]], storage_options: dict | None) -> list:
    """A task: :func:`subset_feature_stats` of one set's layer (``item`` = its files, the layer, its subsets)."""
    return subset_feature_stats(*item, storage_options)


def _fid_baseline(run: AuditRun, last: int, pieces: dict[str, list[tuple[str, int]]], mapper: Mapper) -> None:
    """FID-nearest attribution of the unlabelled sets from per-set feature statistics, each computed by a task that
    reads the set's files (no feature reaches the driver)."""
    cfg, storage_options = run.cfg, run.cfg.storage
    gens = [g for g in cfg.generated if not is_probe_set(g.name)]
    set_stats = partial(set_feature_stats, layer=last, storage_options=storage_options)

    def stats_of(names: list[str]) -> dict[str, Any]:
        return dict(zip(names, mapper(set_stats, [pieces[n] for n in names]), strict=True))

    try:  # a baseline beside the result: its failure (a set too small for a covariance) is logged
        fid = fid_from_stats(stats_of, {g.name: g.label for g in gens}, f"FID-nearest (layer {last})")
        if fid is not None:
            write_fid_attribution(cfg.output, fid, last, storage_options)
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("FID-nearest baseline not computed: %s", exc)
