"""Saving and loading a layer's fit (:class:`memray.stats.fit.FitResult`) beside its workspace entries.

The fit is written under the workspace key ``fit`` *after* every ``proj/…`` and ``cells/…`` entry of
:func:`memray.stats.fit.fit_space`, so its presence means the workspace is complete: a later run (a resume after
a crash, or another audit reusing a reference) loads it and searches the partitioned rows without fitting again.
"""

from __future__ import annotations

import numpy as np

from memray.stats.fit import FitResult
from memray.stats.space import LayerSpace
from memray.stats.workspace import Workspace

FIT_KEY = "fit"


def save_fit(ws: Workspace, fit: FitResult) -> None:
    """Write ``fit`` (space, per-block cell counts, per-cell counts) to the workspace key ``fit``."""
    sp = fit.space
    ws.put(
        FIT_KEY,
        mean=sp.mean,
        components=np.zeros((0, 0)) if sp.components is None else sp.components,
        has_components=np.array(sp.components is not None),
        centroids=sp.centroids,
        explained_variance=np.zeros(0) if sp.explained_variance is None else sp.explained_variance,
        has_variance=np.array(sp.explained_variance is not None),
        kmeans_points=np.array(sp.kmeans_points, np.int64),
        rank=np.array(-1 if sp.rank is None else sp.rank, np.int64),
        block_cells=np.asarray(fit.block_cells, np.int64),
        train_counts=np.asarray(fit.train_counts, np.int64),
    )


def load_fit(ws: Workspace) -> FitResult | None:
    """The fit saved in the workspace, or ``None`` when it has none (or an unfinished one)."""
    if not ws.exists(FIT_KEY):
        return None
    a = ws.get(FIT_KEY)
    rank = int(a["rank"])
    space = LayerSpace(
        mean=a["mean"],
        components=a["components"] if bool(a["has_components"]) else None,
        centroids=a["centroids"],
        explained_variance=a["explained_variance"] if bool(a["has_variance"]) else None,
        kmeans_points=int(a["kmeans_points"]),
        rank=None if rank < 0 else rank,
    )
    return FitResult(space, a["block_cells"], a["train_counts"])
