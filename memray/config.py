"""Frozen, typed configuration for every stage, with YAML/dict round trips and a stable digest.

Every result memray writes carries the config that made it (Parquet schema metadata and ``run.json``), so a
number can always be traced to its statistical choices: cells, metric, PCA dims, seeds, τ, model, layers,
preprocessing.

Every field is checked when a config is made (directly, by ``dataclasses.replace`` or from YAML through
:func:`from_dict`): its type against the annotation (``int``, ``float``, ``bool``, ``str``, ``Literal``,
``X | None``, tuples, nested configs; ``bool`` is not an int, an int is fine for a float, a list becomes a tuple, a
mapping of names becomes sorted pairs) and its range against the field's rule (``field(metadata=at_least(1))``).
A bad value raises :class:`FieldError` with one line naming the dotted field: ``resources.actors=1.5: must be an
integer >= 1``.

The generic machinery (field rules, :func:`validate`, :func:`from_dict`, :class:`FieldError`) lives in
:mod:`memray.config_check` and is re-exported here; this module holds the stage configs, their presets and the
dict/digest round trips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from memray.config_check import (
    NON_EMPTY,
    ConfigError,
    FieldError,
    T,
    above,
    at_least,
    describe,
    fail,
    from_dict,
    rule,
    validate,
)

Metric = Literal["cosine_abs", "cosine", "l2"]
Mode = Literal["paper", "meehan", "dgm-eval"]
METRICS: tuple[str, ...] = get_args(Metric)
MODES: tuple[str, ...] = get_args(Mode)
POOLINGS: tuple[str, ...] = ("cls", "mean", "auto")
Preprocess = Literal["paper", "model"]
PREPROCESS_PRESETS: tuple[str, ...] = get_args(Preprocess)


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
    distances, so results do not depend on sharding or batching.

    The fit and the search run over global row blocks of the training set (:mod:`memray.stats`): ``block_rows``
    rows per block (results depend on it, never on how the rows are split into files or how many workers run);
    ``kmeans_seed_sample``: about how many training rows (a stable hash sample of the sample ids) seed the
    k-means++ restarts (all rows when there are fewer); ``search_rows``: at most this many training rows per
    search item (memory of a search task, not results).

    Uncertainty and evidence: ``alpha``: level of the verdicts (Holm-corrected over layers, and over cells × layers
    for localized copying); ``bootstrap``: resamples of the seeded bootstrap 95% interval of C_T (0 = none);
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


def _layers_ok(v: Any) -> bool:
    return v == "all" or (len(v) > 0 and min(v) >= 0 and len(set(v)) == len(v))


def _pooling_ok(v: tuple[str, ...]) -> bool:
    return len(v) > 0 and set(v) <= set(POOLINGS) and len(set(v)) == len(v)


def _std_ok(v: tuple[float, ...]) -> bool:
    return len(v) > 0 and min(v) > 0


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of the per-layer ViT embedder.

    ``layers``: ``"all"`` or a tuple of block numbers (layer ℓ = output of block ℓ, 1…L; 0 = patch embedding).
    ``weights``: a local path or fsspec URL of a ``.safetensors`` file; ``None`` resolves the timm name through
    the model hub. ``random_init`` must be explicit and is recorded. ``pooling``: ``cls`` (token 0), ``mean`` (of
    the patch tokens) or ``auto`` (``cls`` where the model has a class token, else ``mean``; recorded as resolved).

    The encoder's input: ``preprocess`` names a preset (``paper`` or the model's timm data config); ``mean``,
    ``std`` (one value per input channel of the model), ``resize`` (the short side before the crop) and ``crop``
    (the square side fed to the encoder), when set, override the preset's values. ``None`` = the preset's.
    """

    SECTION = "embed"

    model: str = field(default="vit_base_patch16_224.orig_in21k", metadata=NON_EMPTY)
    weights: str | None = field(default=None, metadata=NON_EMPTY)
    random_init: bool = False
    pooling: tuple[str, ...] = field(
        default=("cls",), metadata=rule(f"(non-empty, from {', '.join(POOLINGS)}, no repeats)", _pooling_ok)
    )
    layers: Literal["all"] | tuple[int, ...] = field(
        default="all", metadata=rule("(block numbers >= 0, non-empty, no repeats)", _layers_ok)
    )
    norm: bool = False
    preprocess: Preprocess = "paper"
    mean: tuple[float, ...] | None = field(default=None, metadata=NON_EMPTY)
    std: tuple[float, ...] | None = field(default=None, metadata=rule("(non-empty, every value > 0)", _std_ok))
    resize: int | None = field(default=None, metadata=at_least(1))
    crop: int | None = field(default=None, metadata=at_least(1))
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = field(default=64, metadata=at_least(1))
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        validate(self)
        if self.random_init and self.weights:
            raise fail(self, "random_init", "false when embed.weights is given (give either weights or random_init)")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise fail(self, "std", f"one value per channel, as many as embed.mean ({len(self.mean)})")
        if self.resize is not None and self.crop is not None and self.resize < self.crop:
            raise fail(self, "resize", f"an integer >= embed.crop ({self.crop}): the crop is cut from the resized one")


@dataclass(frozen=True)
class FingerprintConfig:
    """Settings of C_T-layer fingerprints and their attribution.

    ``subset_size``: images per curve (the paper's 500). ``subsets``: ``"disjoint"`` splits each generated set into
    ``n_subsets`` disjoint chunks; ``"bootstrap"`` draws ``n_subsets`` seeded samples with replacement.
    ``alpha``: weight of cosine in the similarity ``α·cos + (1−α)/(1+‖a−b‖)``. ``open_set_threshold``: queries
    whose best similarity is below it are attributed to ``unknown`` (``None`` = closed set). ``gallery``: URL
    of a saved gallery (``gallery.parquet`` of an earlier run) to attribute against; ``None`` = the labelled
    generated sets of this run.
    """

    SECTION = "fingerprint"

    subset_size: int = field(default=500, metadata=at_least(1))
    subsets: Literal["disjoint", "bootstrap"] = "disjoint"
    n_subsets: int | None = field(default=None, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))
    alpha: float = field(default=0.5, metadata=rule("in [0, 1]", lambda v: 0.0 <= v <= 1.0))
    matcher: Literal["1nn", "knn", "centroid"] = "1nn"
    k: int = field(default=3, metadata=at_least(1))
    open_set_threshold: float | None = None
    gallery: str | None = field(default=None, metadata=NON_EMPTY)

    def __post_init__(self) -> None:
        validate(self)


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")

STORAGE_OP_TIMEOUT = "op_timeout_s"
"""memray's own key in ``storage_options`` (not passed to fsspec): the deadline in seconds of one object-store call
per 64 MiB it moves (:mod:`memray.io.filesystems`)."""


def storage_op_timeout(storage_options: Mapping[str, Any] | None) -> float | None:
    """``storage_options["op_timeout_s"]`` as a float, ``None`` when not set.

    Raises:
        FieldError: not a finite number > 0 (``storage_options.op_timeout_s='abc': must be a finite number > 0 …``).
    """
    if not storage_options or STORAGE_OP_TIMEOUT not in storage_options:
        return None
    value = storage_options[STORAGE_OP_TIMEOUT]
    if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise FieldError(
            f"storage_options.{STORAGE_OP_TIMEOUT}",
            value,
            "a finite number > 0 (seconds one object-store call may take per 64 MiB it moves)",
        )
    return float(value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass or dict; tuples become lists; secrets redacted."""
    raw = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    out = json.loads(json.dumps(raw, default=list))
    if isinstance(out, dict) and out.get("storage_options"):
        out["storage_options"] = [
            [k, "<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) else v]
            for k, v in out["storage_options"]
        ]
    return out


def digest(cfg: Any) -> str:
    """A short stable digest of a config (12 hex chars of SHA-256 over canonical JSON)."""
    payload = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def with_overrides(cfg: T, **overrides: Any) -> T:
    """Return ``cfg`` with the non-``None`` overrides applied (CLI flags over YAML)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]


__all__ = [
    "FROM_MODE",
    "METRICS",
    "MODES",
    "MODE_FIELDS",
    "NON_EMPTY",
    "POOLINGS",
    "PREPROCESS_PRESETS",
    "PRESETS",
    "STORAGE_OP_TIMEOUT",
    "CTConfig",
    "ConfigError",
    "EmbedConfig",
    "FieldError",
    "FingerprintConfig",
    "above",
    "at_least",
    "describe",
    "digest",
    "fail",
    "field",
    "from_dict",
    "rule",
    "storage_op_timeout",
    "to_dict",
    "validate",
    "with_overrides",
]
