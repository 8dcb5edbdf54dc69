"""Frozen, typed configuration for every stage, with YAML/dict round trips and a stable digest.

Every result memray writes carries the config that made it (Parquet schema metadata and ``run.json``), so a
number can always be traced to its statistical choices: cells, metric, PCA dims, seeds, τ, model, layers,
preprocessing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

Metric = Literal["cosine_abs", "cosine", "l2"]
METRICS: tuple[str, ...] = ("cosine_abs", "cosine", "l2")
MODES: tuple[str, ...] = ("paper", "meehan", "dgm-eval")
POOLINGS: tuple[str, ...] = ("cls", "mean")
PREPROCESS_PRESETS: tuple[str, ...] = ("paper", "model")

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field and what to do."""


@dataclass(frozen=True)
class CTConfig:
    """Settings of the C_T statistic (Meehan et al. 2020 as used by He et al. 2024).

    ``min_gen_per_cell``: a cell is kept iff it holds *more than* this many generated samples; with m generated
    samples this is τ·m for the paper's τ = 20/m. ``candidates``: FAISS top-k per shard that are re-ranked with
    exact float64 distances, so results do not depend on sharding or batching.
    """

    mode: str = "paper"
    metric: Metric = "cosine_abs"
    cells: int = 10
    pca_dim: int | None = 64
    pca_only_if_larger: bool = False
    min_gen_per_cell: int = 20
    seed: int = 0
    kmeans_niter: int = 20
    kmeans_nredo: int = 1
    kmeans_sample: int | None = None
    train_shards: int = 1
    query_batch: int = 4096
    candidates: int = 8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"ct.mode={self.mode!r}: choose one of {', '.join(MODES)}")
        if self.metric not in METRICS:
            raise ConfigError(f"ct.metric={self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.cells < 1:
            raise ConfigError(f"ct.cells={self.cells}: need at least 1 cell")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise ConfigError(f"ct.pca_dim={self.pca_dim}: use a positive integer, or null for no PCA")
        if self.min_gen_per_cell < 0:
            raise ConfigError(f"ct.min_gen_per_cell={self.min_gen_per_cell}: must be >= 0")
        if self.train_shards < 1 or self.query_batch < 1 or self.candidates < 1:
            raise ConfigError("ct.train_shards, ct.query_batch and ct.candidates must be >= 1")
        if self.kmeans_sample is not None and self.kmeans_sample < self.cells:
            raise ConfigError(f"ct.kmeans_sample={self.kmeans_sample}: must be >= ct.cells or null (all points)")

    @classmethod
    def preset(cls, mode: str = "paper", **overrides: Any) -> CTConfig:
        """Named presets: ``paper`` (He et al.), ``meehan`` (Euclidean), ``dgm-eval`` (Euclidean, k=3)."""
        base: dict[str, Any] = {
            "paper": {"metric": "cosine_abs", "cells": 10, "pca_dim": 64, "pca_only_if_larger": False},
            "meehan": {"metric": "l2", "cells": 10, "pca_dim": 64, "pca_only_if_larger": False},
            "dgm-eval": {"metric": "l2", "cells": 3, "pca_dim": 64, "pca_only_if_larger": True},
        }.get(mode, None)
        if base is None:
            raise ConfigError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(mode=mode, **base)


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of the per-layer ViT embedder.

    ``layers``: ``"all"`` or a tuple of block numbers (layer ℓ = output of block ℓ, 1…L; 0 = patch embedding).
    ``weights``: a local path or fsspec URL of a ``.safetensors`` file; ``None`` resolves the timm name through
    the model hub. ``random_init`` must be explicit and is recorded.
    """

    model: str = "vit_base_patch16_224.orig_in21k"
    weights: str | None = None
    random_init: bool = False
    pooling: tuple[str, ...] = ("cls",)
    layers: str | tuple[int, ...] = "all"
    norm: bool = False
    preprocess: str = "paper"
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = 64
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.pooling, str):
            object.__setattr__(self, "pooling", (self.pooling,))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if isinstance(self.model_kwargs, dict):
            object.__setattr__(self, "model_kwargs", tuple(sorted(self.model_kwargs.items())))
        elif self.model_kwargs and isinstance(self.model_kwargs[0], list):
            object.__setattr__(self, "model_kwargs", tuple(tuple(kv) for kv in self.model_kwargs))
        bad = [p for p in self.pooling if p not in POOLINGS]
        if bad or not self.pooling:
            raise ConfigError(f"embed.pooling={self.pooling!r}: choose from {', '.join(POOLINGS)}")
        if self.preprocess not in PREPROCESS_PRESETS:
            raise ConfigError(f"embed.preprocess={self.preprocess!r}: choose one of {', '.join(PREPROCESS_PRESETS)}")
        if self.layers != "all" and not isinstance(self.layers, tuple):
            raise ConfigError(f"embed.layers={self.layers!r}: use 'all' or a list of block numbers")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"embed.dtype={self.dtype!r}: choose float32 or float16")
        if self.batch_size < 1:
            raise ConfigError("embed.batch_size must be >= 1")
        if self.random_init and self.weights:
            raise ConfigError("embed: give either weights or random_init, not both")


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

    subset_size: int = 500
    subsets: Literal["disjoint", "bootstrap"] = "disjoint"
    n_subsets: int | None = None
    seed: int = 0
    alpha: float = 0.5
    matcher: Literal["1nn", "knn", "centroid"] = "1nn"
    k: int = 3
    open_set_threshold: float | None = None
    gallery: str | None = None

    def __post_init__(self) -> None:
        if self.subset_size < 1:
            raise ConfigError("fingerprint.subset_size must be >= 1")
        if self.subsets not in ("disjoint", "bootstrap"):
            raise ConfigError(f"fingerprint.subsets={self.subsets!r}: choose disjoint or bootstrap")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"fingerprint.alpha={self.alpha}: must lie in [0, 1]")
        if self.matcher not in ("1nn", "knn", "centroid"):
            raise ConfigError(f"fingerprint.matcher={self.matcher!r}: choose 1nn, knn or centroid")
        if self.k < 1:
            raise ConfigError("fingerprint.k must be >= 1")


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


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


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build a frozen config from a dict, rejecting unknown keys with the field path in the message."""
    data = dict(data or {})
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _nested_type(cls, name)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}" if where else name)
        elif isinstance(value, list) and name not in ("model_kwargs",):
            value = tuple(value)
        kwargs[name] = value
    if cls is CTConfig and "mode" in kwargs:  # a mode names a preset; the other fields override it
        mode = kwargs.pop("mode")
        try:
            return CTConfig.preset(mode, **kwargs)  # type: ignore[return-value]
        except TypeError as exc:
            raise ConfigError(f"{where or 'ct'}: {exc}") from exc
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required fields
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def _nested_type(cls: type, name: str) -> type | None:
    nested = getattr(cls, "NESTED", {})
    return nested.get(name)


def with_overrides(cfg: T, **overrides: Any) -> T:
    """Return ``cfg`` with the non-``None`` overrides applied (CLI flags over YAML)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]


__all__ = [
    "METRICS",
    "MODES",
    "POOLINGS",
    "PREPROCESS_PRESETS",
    "CTConfig",
    "ConfigError",
    "EmbedConfig",
    "FingerprintConfig",
    "digest",
    "field",
    "from_dict",
    "to_dict",
    "with_overrides",
]
