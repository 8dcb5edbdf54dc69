"""Settings of the C_T statistic (:class:`CTConfig`) and its presets (``ct.mode``).

Every field is checked when a config is made (:mod:`memray.config`); a bad value raises one line naming the dotted
field (``ct.cells=0: must be an integer >= 1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from memray.config import at_least, describe, fail, rule, validate

Metric = Literal["cosine_abs", "cosine", "l2"]

Mode = Literal["paper", "meehan", "dgm-eval"]

METRICS: tuple[str, ...] = get_args(Metric)

MODES: tuple[str, ...] = get_args(Mode)


class _FromMode:
    """Default of a mode-governed :class:`CTConfig` field: the value of the mode's preset."""

    def __repr__(self) -> str:
        return "FROM_MODE"


FROM_MODE: Any = _FromMode()

# The presets (``ct.mode``) and the fields they govern. ``kmeans_nredo`` is the number of k-means++ restarts
# (sklearn's ``n_init``, FAISS' ``nredo``): every reference implementation fits its cells with
# ``KMeans(n_init=10)``.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"metric": "cosine_abs", "cells": 10, "pca_dim": 64, "pca_only_if_larger": False, "kmeans_nredo": 10},
    "meehan": {"metric": "l2", "cells": 10, "pca_dim": 64, "pca_only_if_larger": False, "kmeans_nredo": 10},
    "dgm-eval": {"metric": "l2", "cells": 3, "pca_dim": 64, "pca_only_if_larger": True, "kmeans_nredo": 10},
}

MODE_FIELDS: tuple[str, ...] = tuple(PRESETS["paper"])


@dataclass(frozen=True)
class CTConfig:
    """Settings of the C_T statistic (Meehan et al. 2020 as used by He et al. 2024).

    ``mode`` names a preset (:data:`PRESETS`) of the fields in :data:`MODE_FIELDS` (metric, cells, PCA,
    k-means restarts); a field left at its default takes the preset's value, a field given explicitly overrides
    it (:meth:`overrides` lists them). ``CTConfig(mode="meehan")``, ``CTConfig.preset("meehan")`` and YAML
    ``{mode: meehan}`` are the same config.

    ``min_gen_per_cell``: a cell is kept iff it holds *more than* this many generated samples; with m generated
    samples this is τ·m for the paper's τ = 20/m. ``kmeans_nredo``: k-means++ restarts, the lowest objective
    kept (ties: the first). ``candidates``: FAISS top-k per shard that are re-ranked with exact float64
    distances, so results do not depend on sharding or batching (the global top-k search pools ``top_k +
    candidates`` per query and item).

    The fit and the search run over global row blocks of the training set (:mod:`memray.stats`): ``block_rows``
    rows per block (results depend on it, never on how the rows are split into files or how many workers run);
    ``kmeans_seed_sample``: about how many training rows (a stable hash sample of the sample ids) seed the
    k-means++ restarts (all rows when there are fewer); ``search_rows``: at most this many training rows per
    search item (memory of a search task, not results).

    Uncertainty and evidence: ``alpha``: level of the verdicts (one Holm family per set over its C_T, cell,
    replication and concentration tests at every layer); ``bootstrap``: resamples of the seeded bootstrap 95%
    interval of C_T (0 = none);
    ``partitions``: C_T is also computed under this many seeded k-means partitions (seeds ``seed`` …
    ``seed + partitions − 1``) and its range reported (1 = the paper's single partition); ``top_k``: nearest
    training samples over the whole training set per generated sample and layer in ``copies.parquet`` (0 = none).
    """

    SECTION = "ct"

    mode: Mode = "paper"
    metric: Metric = FROM_MODE
    cells: int = field(default=FROM_MODE, metadata=at_least(1))
    pca_dim: int | None = field(default=FROM_MODE, metadata=at_least(1))
    pca_only_if_larger: bool = FROM_MODE
    min_gen_per_cell: int = field(default=20, metadata=at_least(0))
    seed: int = field(default=0, metadata=at_least(0))
    kmeans_niter: int = field(default=20, metadata=at_least(1))
    kmeans_nredo: int = field(default=FROM_MODE, metadata=at_least(1))
    kmeans_sample: int | None = field(default=None, metadata=at_least(1))
    query_batch: int = field(default=4096, metadata=at_least(1))
    candidates: int = field(default=8, metadata=at_least(1))
    block_rows: int = field(default=65536, metadata=at_least(1))
    kmeans_seed_sample: int = field(default=100_000, metadata=at_least(1))
    search_rows: int = field(default=262144, metadata=at_least(1))
    alpha: float = field(default=0.05, metadata=rule("(0 < alpha < 1)", lambda v: 0 < v < 1))
    bootstrap: int = field(default=1000, metadata=at_least(0))
    partitions: int = field(default=1, metadata=at_least(1))
    top_k: int = field(default=5, metadata=at_least(0))

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in PRESETS:
            raise fail(self, "mode", describe(Mode))
        for name, value in PRESETS[self.mode].items():
            if getattr(self, name) is FROM_MODE:
                object.__setattr__(self, name, value)
        validate(self)
        if self.kmeans_sample is not None and self.kmeans_sample < self.cells:
            raise fail(self, "kmeans_sample", f"null (all points) or an integer >= ct.cells ({self.cells})")
        if self.kmeans_seed_sample < self.cells:
            raise fail(self, "kmeans_seed_sample", f"an integer >= ct.cells ({self.cells})")

    @classmethod
    def preset(cls, mode: str = "paper", **overrides: Any) -> CTConfig:
        """The ``mode`` preset with the non-``None`` ``overrides`` applied (same as ``CTConfig(mode=mode, ...)``)."""
        return cls(mode=mode, **{k: v for k, v in overrides.items() if v is not None})

    def overrides(self) -> dict[str, Any]:
        """The mode-governed fields whose value differs from the mode's preset: ``{"cells": 3}``."""
        return {k: getattr(self, k) for k, v in PRESETS[self.mode].items() if getattr(self, k) != v}


def seed_word(layer: int) -> int:
    """A layer number as a seed word: itself for the encoder's layers, ``2³² − 1`` for pixel space (−1)."""
    return int(layer) % 2**32


_VIEW_SPEC = re.compile(r"^(identity|hflip|shift:([1-9]|1[0-6])|crop:0?\.\d+)$")
DEFAULT_VIEWS: tuple[str, ...] = ("identity", "hflip", "shift:1", "crop:0.9")
"""``evidence.views`` by default: identity, the mirror, the four 1-pixel shifts and a 0.9 centre crop (7 views)."""
STATISTICS = ("relative", "distance")
DEFAULT_STATISTIC = "relative"  # the evidence score unless the config says otherwise
"""The evidence scores of :func:`memray.stats.copies.evidence_score`."""


def _views_ok(views: object) -> bool:
    return (
        isinstance(views, tuple)
        and all(isinstance(v, str) and _VIEW_SPEC.match(v) for v in views)
        and all(0.5 <= float(v[5:]) < 1 for v in views if v.startswith("crop:"))
    )


@dataclass(frozen=True)
class EvidenceConfig:
    """Per-sample evidence beside C_T: views, the replication test (:mod:`memray.stats.replication`).

    ``views``: the transforms every test and generated image is also embedded under (source pixels, before the
    encoder's resize; :mod:`memray.embedding.views`): ``identity``, ``hflip``, ``shift:<k>`` (the four k-pixel
    shifts, edge-replicated), ``crop:<s>`` (the centred s-crop, zoomed back by the encoder's resize). A sample's
    evidence score is its smallest over the views its set and the test set both have; C_T uses identity only.
    ``["identity"]`` turns views off. ``pixels``: pixel space (:mod:`memray.embedding.pixels`) at this size (grey
    ``pixels × pixels`` of the prepared image) as a further evidence space beside the layers, no C_T; 0 = off.
    ``statistic``: a sample's evidence score from its top-k list in a view (:func:`memray.stats.copies.evidence_score`):
    ``relative`` (default) ``d_1 / d_k``, the nearest training sample's distance over the k-th's (``ct.top_k``):
    about 1 for a sample that sits among many training images alike ("hub" images, dense regions, mode collapse),
    near 0 for one that sits on ONE training image (a copy); ``distance``: ``d_1`` itself.
    ``q``: the test quantile below which a sample counts as a replica (the
    threshold of ``share_below``); ``r0``: the replication rate the test must exceed (its null is ``rate ≤ r0``;
    keep ``r0 ≈ q/2``).
    """

    SECTION = "evidence"

    views: tuple[str, ...] = field(
        default=DEFAULT_VIEWS,
        metadata=rule("(a list of identity, hflip, shift:<1..16>, crop:<0.5 ≤ s < 1>)", _views_ok),
    )
    statistic: str = field(
        default=DEFAULT_STATISTIC, metadata=rule("(relative or distance)", lambda v: v in STATISTICS)
    )
    pixels: int = field(default=16, metadata=rule("(0 = off, or 4 to 64)", lambda v: v == 0 or 4 <= v <= 64))
    q: float = field(default=0.01, metadata=rule("(0 < q < 0.5)", lambda v: 0 < v < 0.5))
    r0: float = field(default=0.005, metadata=rule("(0 ≤ r0 < q)", lambda v: 0 <= v < 0.5))

    def __post_init__(self) -> None:
        validate(self)
        if self.r0 >= self.q:
            raise fail(self, "r0", f"a rate >= 0 below evidence.q ({self.q})")
