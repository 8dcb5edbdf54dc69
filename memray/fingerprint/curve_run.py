"""Computing C_T-layer fingerprints from features: subset plans, per-subset curves, the fingerprint run.

The per-layer fits (PCA, cells, test distances) are made once on the training set
(:func:`memray.stats.score.fit_layer`); one search round per layer scores every generated set, and every subset's C_T
comes from those distances.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from memray.config import ConfigError, to_dict
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.curves import normalize_curves, to_gallery, write_fingerprints, write_gallery
from memray.fingerprint.evaluate import evaluate, write_attribution, write_evaluation
from memray.fingerprint.fd_profile import (
    CURVE_FD,
    FD_TEST,
    check_gallery_method,
    planned_method,
    profiles,
    resolve_method,
)
from memray.fingerprint.fid import feature_stats
from memray.fingerprint.match import Gallery, attribute
from memray.fingerprint.open_set import resolve_open_set
from memray.io import schema
from memray.io.features import FeatureSet
from memray.io.storage import join
from memray.stats.config import CTConfig
from memray.stats.ct import cell_table, ct_from_cells
from memray.stats.score import FittedLayer, GenScore, Mapper

log = logging.getLogger(__name__)
GALLERY_FILE = schema.GALLERY_FILE
EVALUATION_DIR = schema.EVALUATION_DIR


def plan_subsets(gens: dict[str, int], fcfg: FingerprintConfig) -> dict[str, list[np.ndarray]]:
    """Row indices of each curve's subset, per generated set (``gens``: set name → its number of samples).

    ``disjoint``: a seeded permutation cut into consecutive chunks of ``subset_size``; the leftover
    (< ``subset_size``) is dropped and logged; ``n_subsets`` (if set) keeps the first chunks. ``bootstrap``:
    ``n_subsets`` seeded draws of ``subset_size`` rows with replacement. The generator of set ``s`` is
    ``default_rng([seed, crc32(s)])``, so a set's subsets do not depend on which other sets are scored.
    """
    m = fcfg.subset_size
    plan: dict[str, list[np.ndarray]] = {}
    for name, n in gens.items():
        rng = np.random.default_rng([fcfg.seed, zlib.crc32(name.encode())])
        if fcfg.subsets == "bootstrap":
            if fcfg.n_subsets is None:
                raise ConfigError("fingerprint.subsets=bootstrap needs fingerprint.n_subsets (number of draws)")
            plan[name] = [np.sort(rng.integers(0, n, size=m)) for _ in range(fcfg.n_subsets)]
            continue
        chunks = n // m
        if chunks == 0:
            raise ValueError(f"generated set {name!r} has {n} samples, fewer than fingerprint.subset_size={m}")
        if fcfg.n_subsets is not None and fcfg.n_subsets > chunks:
            raise ValueError(
                f"generated set {name!r}: {n} samples give {chunks} disjoint subsets of {m}, "
                f"fewer than fingerprint.n_subsets={fcfg.n_subsets}"
            )
        keep = chunks if fcfg.n_subsets is None else fcfg.n_subsets
        perm = rng.permutation(n)
        if n - keep * m:
            log.info(
                "generated set %s: %d of %d samples unused by %d disjoint subsets of %d", name, n - keep * m, n, keep, m
            )
        plan[name] = [np.sort(perm[i * m : (i + 1) * m]) for i in range(keep)]
    return plan


def compute_curves(
    fitted: dict[int, FittedLayer],
    gens: dict[str, FeatureSet],
    labels: dict[str, str | None],
    fcfg: FingerprintConfig,
    plan: dict[str, list[np.ndarray]] | None = None,
    mapper: Mapper = map,
) -> pd.DataFrame:
    """One C_T-layer curve per subset of every generated set, reusing the per-layer fits on the training set.

    Per layer, ONE search round answers every generated set together (:meth:`FittedLayer.score_sets`: the
    nearest-train distance and cell of every sample); a subset's C_T is then the statistic on its rows only
    (τ = ``min_gen_per_cell`` of the layer's config), with no further search.

    Returns:
        Tidy DataFrame ``gen_set, label, subset, layer, ct`` (:data:`~memray.io.schema.FINGERPRINTS_SCHEMA`).
    """
    plan = plan if plan is not None else plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    for name, fs in gens.items():
        missing = sorted(set(fitted) - set(fs.layers))
        if missing:
            raise ValueError(f"generated set {name!r} ({fs.source or 'in memory'}) lacks layers {missing}")
    rows = []
    for layer, fit in sorted(fitted.items()):
        names = {name: f"gen set {name!r}, layer {layer}" for name in gens}
        scored = fit.score_sets({name: fs.layers[layer] for name, fs in gens.items()}, mapper, names)
        rows += subset_curves(fit, scored, labels, plan)
    return curves_frame(rows)


def curves_frame(rows: list[tuple[str, str | None, int, int, float]]) -> pd.DataFrame:
    """:func:`subset_curves` rows as the tidy, sorted fingerprints table (``FINGERPRINTS_SCHEMA``)."""
    df = pd.DataFrame(rows, columns=[f.name for f in schema.FINGERPRINTS_SCHEMA])
    df[schema.SUBSET] = df[schema.SUBSET].astype(np.int32)
    df[schema.LAYER] = df[schema.LAYER].astype(np.int32)
    return df.sort_values([schema.GEN_SET, schema.SUBSET, schema.LAYER], kind="stable").reset_index(drop=True)


def subset_curves(
    fit: FittedLayer,
    scored: dict[str, GenScore],
    labels: dict[str, str | None],
    plan: dict[str, list[np.ndarray]],
) -> list[tuple[str, str | None, int, int, float]]:
    """``(gen_set, label, subset, layer, ct)`` of every planned subset of the scored sets at ``fit``'s layer.

    ``scored``: the sets' per-sample results of one search round (name -> :class:`~memray.stats.score.GenScore`);
    sets without a plan (probe sets) make no curve.
    """
    test = fit.test
    rows = []
    for name, g in scored.items():
        for s, idx in enumerate(plan.get(name, [])):
            tau = fit.cfg.min_gen_per_cell
            stats = cell_table(test.dist, test.cell, g.dist[idx], g.cell[idx], fit.train_counts, tau)
            ct = ct_from_cells(stats, f"gen set {name!r} subset {s}, layer {fit.layer}")
            rows.append((name, labels.get(name), s, fit.layer, float(ct)))
    return rows


def curves_to_gallery(fingerprints: pd.DataFrame) -> Gallery:
    """A fingerprints table (``gen_set, label, subset, layer, ct``) as a Gallery (runs = generated sets)."""
    gallery, _ = to_gallery(normalize_curves(fingerprints, "fingerprints"), "fingerprints")
    return gallery


def fingerprint_run(
    fitted: dict[int, FittedLayer],
    gens: dict[str, FeatureSet],
    labels: dict[str, str | None],
    fcfg: FingerprintConfig,
    out_url: str,
    gallery: Gallery | None = None,
    mapper: Mapper = map,
    test: FeatureSet | None = None,
) -> dict[str, pd.DataFrame]:
    """Compute and write the curves of every generated set, then attribute or evaluate them.

    ``test``: the test set's features; with it, and when the method (:func:`planned_method`) is ``curve_fd``, every
    curve gets its FD-to-test profile. See :func:`finish_fingerprints` for what is written.
    """
    plan = plan_subsets({k: len(v) for k, v in gens.items()}, fcfg)
    curves = compute_curves(fitted, gens, labels, fcfg, plan, mapper)
    if test is not None and planned_method(fcfg, None if gallery is None else gallery.method) == CURVE_FD:
        found = {}
        for layer in sorted(fitted):
            test_stats = feature_stats(test.layers[layer])
            found.update({(n, layer): profiles(fs.layers[layer], plan[n], test_stats) for n, fs in gens.items()})
        curves = with_profiles(curves, found)
    ct_cfg = next(iter(fitted.values())).cfg if fitted else None
    return finish_fingerprints(
        curves, plan_record(plan, {k: len(v) for k, v in gens.items()}), fcfg, ct_cfg, out_url, gallery
    )


def with_profiles(curves: pd.DataFrame, found: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """``curves`` with an ``fd_test`` column: ``found[(gen_set, layer)][subset]`` (every curve's log FD to test)."""
    missing = sorted(
        {(g, int(ly)) for g, ly in zip(curves[schema.GEN_SET], curves[schema.LAYER], strict=True)} - set(found)
    )
    if missing:
        raise ValueError(f"no FD-to-test profile for (set, layer) {missing[:4]}")
    keys = zip(curves[schema.GEN_SET], curves[schema.LAYER], curves[schema.SUBSET], strict=True)
    return curves.assign(**{FD_TEST: np.array([found[(g, int(ly))][int(s)] for g, ly, s in keys], np.float64)})


def curve_names(plan: dict[str, list[np.ndarray]]) -> dict[str, list[str]]:
    """Each set's curve names in subset order, as :func:`curves_to_gallery` names them (``set`` or ``set#i``)."""
    return {k: [k] if len(v) == 1 else [f"{k}#{i}" for i in range(len(v))] for k, v in plan.items()}


def plan_record(plan: dict[str, list[np.ndarray]], sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """What the subset plan used of each set, recorded beside the curves."""
    return {k: {"n": sizes[k], "curves": len(v), "rows_used": int(sum(len(i) for i in v))} for k, v in plan.items()}


def finish_fingerprints(
    curves: pd.DataFrame,
    subsets: dict[str, dict[str, int]],
    fcfg: FingerprintConfig,
    ct_cfg: CTConfig | None,
    out_url: str,
    gallery: Gallery | None = None,
    job: dict[str, Any] | None = None,
    layer_stats: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Write ``fingerprints.parquet`` and attribute (with a gallery) or evaluate (labelled curves) them.

    ``curves`` may carry an ``fd_test`` column (the FD-to-test profile); ``fingerprint.method`` is resolved against it
    and the gallery (:func:`~memray.fingerprint.fd_profile.resolve_method`; a saved gallery queried with another
    explicit method is refused, :func:`~memray.fingerprint.fd_profile.check_gallery_method`) and recorded resolved.

    Writes ``fingerprints.parquet`` (config, C_T config and subset plan in the metadata) and the labelled
    curves as ``gallery.parquet``. Attribution (``attribution.parquet``): with ``gallery`` every curve is
    attributed against it; without one, unlabelled curves are attributed against the labelled ones. When at
    least two labels are known and one has two runs, the labelled curves are also evaluated leave-one-run-out
    under ``evaluation/`` (see :func:`memray.fingerprint.evaluate.write_evaluation`).

    ``job``: the encoder, preprocessing and C_T/subset settings the curves depend on
    (:func:`memray.job.preflight.gallery_comparable`), recorded so a later run can check a gallery is comparable.
    ``layer_stats``: layer → labelled curve name → ``(mu, sigma)`` of its images' features, for the evaluation's
    FID-nearest baselines (:func:`memray.fingerprint.evaluate.evaluate`). ``open_set_threshold: calibrated`` is
    resolved against the gallery (:func:`memray.fingerprint.open_set.resolve_open_set`) and recorded.

    Returns:
        ``{"fingerprints", "attribution", "evaluation", "accuracy"}`` (each only when computed).
    """
    found = curves_to_gallery(curves)
    if gallery is not None:  # a saved gallery decides the method; an explicit other one is refused
        check_gallery_method(fcfg.method, gallery.method, fcfg.gallery or "(in memory)")
        fcfg = replace(fcfg, method=gallery.method)
    fcfg = resolve_method(fcfg, found.fd_test is not None, "this run's curves")
    meta = {
        "fingerprint": to_dict(fcfg),
        "ct": to_dict(ct_cfg) if ct_cfg is not None else None,
        "layers": sorted(int(x) for x in curves[schema.LAYER].unique()),
        "subsets": subsets,
        "seed_rule": "default_rng([fingerprint.seed, crc32(gen_set)])",
    }
    if job is not None:
        meta["job"] = job
    write_fingerprints(join(out_url, schema.FINGERPRINTS_FILE), curves, meta)
    out = {"fingerprints": curves}
    known = np.array([isinstance(lab, str) for lab in found.labels], dtype=bool)
    if known.any():  # the labelled curves, reusable as a gallery against other runs
        write_gallery(join(out_url, GALLERY_FILE), found.select(known), meta)
    queries = found
    if gallery is None and known.any() and not known.all():
        gallery, queries = found.select(known), found.select(~known)
    if gallery is not None:
        used, record = resolve_open_set(fcfg, gallery)
        att = attribute(queries, gallery, used)
        meta_att = {**meta, "gallery_size": len(gallery), **record}
        write_attribution(join(out_url, schema.ATTRIBUTION_FILE), att, meta_att)
        out["attribution"] = att
    labelled = found.select(known)
    runs = pd.Series(labelled.runs).groupby(pd.Series(labelled.labels)).nunique()
    if len(runs) >= 2 and (runs >= 2).any():  # leave-one-run-out needs a second run of some label
        ev = evaluate(labelled, fcfg, protocol="leave-one-run-out", layer_stats=layer_stats)
        write_evaluation(join(out_url, EVALUATION_DIR), ev, meta)
        out["evaluation"], out["accuracy"] = ev.attribution, ev.summary
    return out
