"""What an audit adds beside the score tables: sources of samples, the FID-nearest baseline, the report.

- :func:`sources_for`: ``(set name, sample ids) -> source strings`` from the sets' listings (the driver holds the
  listing only, O(units)), so ``copies.parquet`` names the file or archive member a user can open.
- :func:`fid_attribution`: the FID-nearest baseline beside the C_T-curve attribution: each unlabelled generated
  set is given the label of the labelled set at the smallest Fréchet distance of their last-layer features (in a
  job each set's mean and covariance come from a task reading its feature files, :func:`set_feature_stats`; the
  driver holds d × d per set). On small zoos of trained generators FID-nearest can beat the curves; the report
  shows both and flags disagreements.
- :func:`write_report`: ``report.html`` (:mod:`memray.report`), never failing the finished job (a job builds it in a
  task: it reads the per-sample tables).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from memray.fingerprint.evaluate import write_attribution
from memray.fingerprint.fid import fd_matrix, feature_stats
from memray.io import schema, storage
from memray.io.fetch import Locator
from memray.io.rows import set_rows
from memray.io.shards import ShardPlan

log = logging.getLogger(__name__)
FID_ATTRIBUTION_FILE = schema.ATTRIBUTION_FID_FILE


def sources_for(plans: dict[str, list[ShardPlan]]) -> Callable[[str, np.ndarray], list[str | None]]:
    """A ``sources(set_name, ids)`` callable over the sets given as images (``None`` for other sets)."""
    locators = {name: Locator(u for plan in group for u in plan.units) for name, group in plans.items()}

    def sources(name: str, ids: np.ndarray) -> list[str | None]:
        loc = locators.get(name)
        return loc.sources(ids) if loc is not None else [None] * len(ids)

    return sources


def set_feature_stats(
    files: list[tuple[str, int]], layer: int, storage_options: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of one layer of a set's feature files (``(url, rows)`` in order)."""
    rows = set_rows(files, layer, storage_options)
    return feature_stats(rows.read(0, rows.n))


def subset_feature_stats(
    files: list[tuple[str, int]], layer: int, subsets: list[np.ndarray], storage_options: dict | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mean (d,) and covariance (d, d) of one layer of each subset's rows (``subsets``: row indices into the set's
    global row order, as the fingerprint plan gives them): the images each curve was computed on."""
    rows = set_rows(files, layer, storage_options)
    x = rows.read(0, rows.n)
    return [feature_stats(x[idx]) for idx in subsets]


def fid_attribution(
    features: dict[str, np.ndarray], labels: dict[str, str | None], method: str = "FID-nearest"
) -> pd.DataFrame | None:
    """FID-nearest attribution of the unlabelled sets among the labelled ones (schema.ATTRIBUTION_SCHEMA), from each
    set's features (n, d); see :func:`fid_from_stats`."""
    sets = {n: labels.get(n) for n in features}
    return fid_from_stats(lambda names: {n: feature_stats(features[n]) for n in names}, sets, method)


def fid_from_stats(
    stats_of: Callable[[list[str]], dict[str, tuple[np.ndarray, np.ndarray]]],
    labels: dict[str, str | None],
    method: str = "FID-nearest",
) -> pd.DataFrame | None:
    """FID-nearest attribution of the unlabelled sets among the labelled ones (schema.ATTRIBUTION_SCHEMA).

    ``labels``: every set's label (``None``: unlabelled); ``stats_of(names)``: each named set's feature mean and
    covariance; ``method`` fills the ``method`` column. ``score`` is the Fréchet distance to the
    predicted label's nearest set (lower = closer), ``margin`` the runner-up label's distance minus it. ``None``
    when there is no labelled or no unlabelled set.
    """
    known = sorted(n for n in labels if labels.get(n))
    queries = sorted(n for n in labels if not labels.get(n))
    if not known or not queries or len({labels[n] for n in known}) < 1:
        return None
    stats = stats_of(known + queries)
    dist = fd_matrix([stats[q] for q in queries], [stats[g] for g in known])
    rows = []
    for qi, q in enumerate(queries):
        best: dict[str, float] = {}
        for gi, g in enumerate(known):
            lab = str(labels[g])
            best[lab] = min(best.get(lab, np.inf), float(dist[qi, gi]))
        ranked = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
        runner = ranked[1] if len(ranked) > 1 else (None, np.nan)
        rows.append((method, q, None, ranked[0][0], ranked[0][1], runner[0], runner[1] - ranked[0][1]))
    return pd.DataFrame(rows, columns=schema.ATTRIBUTION_SCHEMA.names)


def write_fid_attribution(out: str, df: pd.DataFrame, layer: int, storage_options: dict | None) -> str:
    """Write the FID-nearest attribution (its layer and rule in the metadata) and return its URL."""
    meta = {"method": "FID-nearest: smallest Frechet distance of last-layer features to a labelled set", "layer": layer}
    url = storage.join(out, FID_ATTRIBUTION_FILE)
    write_attribution(url, df, meta, storage_options)
    return url


def write_report(out: str, storage_options: dict | None) -> str | None:
    """Build ``report.html`` in the run folder; a failure is logged (the tables are already written), not raised."""
    try:
        from memray.report import build_report

        return build_report(out, storage_options)
    except Exception:  # the report must not lose a finished audit
        log.exception("could not write %s in %s; rebuild it with: memray report %s", schema.REPORT_FILE, out, out)
        return None
