"""Settings of C_T-layer fingerprints and their attribution (:class:`FingerprintConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from memray.config import NON_EMPTY, ConfigError, at_least, rule, validate


@dataclass(frozen=True)
class FingerprintConfig:
    """Settings of C_T-layer fingerprints and their attribution.

    ``subset_size``: images per curve (the paper's 500). ``subsets``: ``"disjoint"`` splits each generated set into
    ``n_subsets`` disjoint chunks; ``"bootstrap"`` draws ``n_subsets`` seeded samples with replacement.
    ``alpha``: weight of cosine in the similarity ``α·cos + (1−α)/(1+‖a−b‖)``. ``open_set_threshold``: queries
    whose best similarity is below it are attributed to ``unknown`` (``None`` = closed set; ``"calibrated"`` =
    calibrated on the gallery by leaving one family out, :mod:`memray.fingerprint.open_set`). ``gallery``: URL
    of a saved gallery (``gallery.parquet`` of an earlier run) to attribute against; ``None`` = the labelled
    generated sets of this run. ``fid_layers``: the layers of the FID-nearest baselines in the evaluation
    (``last``, ``all`` or ``none``). ``method``: ``curve`` (the paper's C_T-layer curve), ``curve_fd`` (the curve and
    the FD-to-test profile, :mod:`memray.fingerprint.fd_profile`; needs features) or ``auto`` (``curve_fd`` where every
    curve carries a profile and no open set is asked for, else ``curve``; a saved gallery decides by how it was built).
    """

    SECTION = "fingerprint"

    subset_size: int = field(default=500, metadata=at_least(1))
    subsets: Literal["disjoint", "bootstrap"] = "disjoint"
    n_subsets: int | None = field(default=None, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))
    alpha: float = field(default=0.5, metadata=rule("in [0, 1]", lambda v: 0.0 <= v <= 1.0))
    matcher: Literal["1nn", "knn", "centroid"] = "1nn"
    k: int = field(default=3, metadata=at_least(1))
    open_set_threshold: float | Literal["calibrated"] | None = None
    gallery: str | None = field(default=None, metadata=NON_EMPTY)
    fid_layers: Literal["last", "all", "none"] = "last"
    method: Literal["auto", "curve", "curve_fd"] = "auto"

    def __post_init__(self) -> None:
        validate(self)
        if self.method == "curve_fd" and self.open_set_threshold is not None:
            raise ConfigError(
                "fingerprint.open_set_threshold is a C_T-curve similarity: use it with fingerprint.method: curve "
                "(or auto), not curve_fd"
            )
