"""A layer's evidence beside C_T: the query sets under their views, and the replication-rate test per set.

Views (:mod:`memray.embedding.views`) reach the scoring loop as further row handles of the test set and of each
generated set (the same rows, in the same order, embedded under a transform: feature columns
``layer_<ℓ>@<view>``). They are projected into the layer's space in one round of tasks and searched in the top-k
round with the identity rows; a sample's **evidence distance** is its nearest training sample over the whole
training set, the smallest over identity and the views its set shares with the test set, computed the same way for
test samples (:mod:`memray.stats.samples`). C_T, its cells and ``neighbors.parquet`` use identity only: the paper's
statistic does not move.

:func:`replication_frame`: per generated set, the replication test of :mod:`memray.stats.replication` on the
evidence distances, stratified by the samples' identity cells (cells are fit on T only, so test and generated
samples of a cell stay exchangeable under the null whatever the views).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memray.io import schema
from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.config import EvidenceConfig
from memray.stats.engine import EngineLayer, project
from memray.stats.replication import replication_from_thresholds, thresholds
from memray.stats.samples import Evidence

#: set (``None``: the test set) -> view name -> the set's rows under that view
ViewSets = dict[str | None, dict[str, Rows]]


def check_views(views: ViewSets, sets: dict[str | None, Rows], layer: int) -> None:
    """Refuse a view whose rows do not match its set's (count): the evidence pairs rows by position.

    Raises:
        ValueError: one line naming the set, view and both counts.
    """
    for name, under in views.items():
        for view, rows in under.items():
            if name not in sets:
                raise ValueError(f"layer {layer}: view {view!r} of set {name!r}, which is not scored")
            if rows.n != sets[name].n:
                what = "the test set" if name is None else f"set {name!r}"
                raise ValueError(
                    f"layer {layer}: {what} has {sets[name].n} rows but {rows.n} under view {view!r}; "
                    "embed the set again (its feature files are from different runs)"
                )


def project_views(engine: EngineLayer, views: ViewSets, mapper: Mapper = map) -> dict[str | None, tuple[str, ...]]:
    """Project every set's view rows in one round of tasks (``engine.projected[(set, view)]``); returns
    set -> its view names in order."""
    specs = [((name, view), rows, f"{'test' if name is None else repr(name)} under view {view}, layer {engine.layer}")
             for name, under in views.items() for view, rows in under.items()]  # fmt: skip
    if specs:
        project(engine, specs, mapper)
    return {name: tuple(under) for name, under in views.items()}


def replication_frame(
    layer: int,
    evidence: Evidence | None,
    test_cells: np.ndarray,
    gen_cells: dict[str, np.ndarray],
    n_cells: int,
    cfg: EvidenceConfig,
    alpha: float,
) -> pd.DataFrame:
    """``replication.parquet`` rows of one layer (:data:`memray.io.schema.REPLICATION_SCHEMA`): per generated set,
    the share of its samples whose evidence distance is below their cell's test ``q``-quantile, the replication
    rate (excess over the null share) with its exact interval at ``alpha`` and the p-value of ``rate ≤ r0``.
    Empty without evidence (``ct.top_k = 0``)."""
    rows = []
    for name in sorted(evidence.gens if evidence is not None else []):
        thr = thresholds(evidence.test_d1(name), test_cells, n_cells, cfg.q)
        r = replication_from_thresholds(thr, evidence.gens[name], gen_cells[name], cfg.r0, alpha)
        used = ",".join(("identity", *evidence.views[name]))
        rows.append((name, layer, used, r.m, r.n, r.k_obs, r.share_below, r.expected_share, r.rate, r.ci_low,
                     r.ci_high, r.p_value, r.q, r.r0, r.cells, r.m_dropped))  # fmt: skip
    return pd.DataFrame(rows, columns=schema.REPLICATION_SCHEMA.names)
