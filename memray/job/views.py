"""Which sets of an audit are embedded under which views (:mod:`memray.embedding.views`, ``evidence.views``).

The training set is embedded once, identity only; the test set and every generated set (probe sets included) also
under each further view, in the same read and actor pass (feature columns ``layer_<ℓ>@<view>``). A set given as
embeddings has the views its files hold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from memray.embedding.views import ViewPrepare, extra_views
from memray.job.config import AuditConfig


def extra_view_names(cfg: AuditConfig) -> tuple[str, ...]:
    """The names of the further views (identity left out), in order; ``()`` when views are off."""
    return tuple(v.name for v in extra_views(cfg.evidence.views))


def set_views(cfg: AuditConfig) -> dict[str, tuple[str, ...]]:
    """Set name -> the further views its images are embedded under (the training set: none)."""
    names = extra_view_names(cfg)
    return {s.name: (names if s.name != cfg.train.name else ()) for s in cfg.sets}


def pixel_size(cfg: AuditConfig) -> int:
    """The side of pixel space every image set is embedded with (``evidence.pixels``; 0: none)."""
    return int(cfg.evidence.pixels)


def view_prepares(cfg: AuditConfig, prepare: Callable[[np.ndarray], np.ndarray]) -> dict[str, ViewPrepare] | None:
    """Set name -> its views' preparation (:class:`ViewPrepare`) for the read tasks; ``None`` when views are off
    (rows then carry no ``views`` column, as before views existed)."""
    views = extra_views(cfg.evidence.views)
    if not views:
        return None
    return {name: ViewPrepare(prepare, views if names else ()) for name, names in set_views(cfg).items()}
