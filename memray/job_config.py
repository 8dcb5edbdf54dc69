"""Configuration of the audit job: the image sets, resources, and the nested stage configs.

Loaded from YAML (``load_audit_config``) with CLI overrides, dumped beside every output (``run.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memray.config import ConfigError, CTConfig, EmbedConfig, FingerprintConfig, from_dict, to_dict


@dataclass(frozen=True)
class DatasetSpec:
    """One image set: a URL or list of URLs (local folder, ``s3://`` prefix, tar shards, Parquet, ``.npz``).

    ``label``: the model/architecture that produced a generated set (used as a fingerprint gallery label).
    """

    name: str
    urls: tuple[str, ...]
    label: str | None = None
    image_column: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        if not self.name or "/" in self.name:
            raise ConfigError(f"dataset name {self.name!r}: use a non-empty name without '/'")
        if not self.urls:
            raise ConfigError(f"dataset {self.name!r}: give at least one URL")


@dataclass(frozen=True)
class ResourcesConfig:
    """How the Ray job is laid out. ``actors``: embedding actor-pool size; ``actor_num_gpus``: 1 on GPU nodes.

    On a machine with few CPUs keep ``actors * actor_num_cpus`` below the CPU count, or the read tasks starve.
    ``shard_rows``: images per embedding shard (the unit of resume); ``embed_batch_size``: rows per actor batch.
    ``actor_resources``: custom Ray resources each embedding actor requests (e.g. ``{"A100": 1}`` to pin actors to
    nodes that advertise that resource).
    """

    actors: int = 1
    actor_num_cpus: float = 1.0
    actor_num_gpus: float = 0.0
    torch_threads: int | None = None
    read_num_cpus: float = 0.25
    shard_rows: int = 1024
    embed_batch_size: int = 64
    index_task_num_cpus: float = 1.0
    faiss_gpu: bool = False
    actor_resources: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.actor_resources, dict):
            object.__setattr__(self, "actor_resources", tuple(sorted(self.actor_resources.items())))
        if self.actors < 1 or self.shard_rows < 1 or self.embed_batch_size < 1:
            raise ConfigError("resources.actors, shard_rows and embed_batch_size must be >= 1")
        if self.actor_num_cpus < 0 or self.actor_num_gpus < 0 or self.read_num_cpus <= 0:
            raise ConfigError("resources: CPU/GPU requests must be >= 0 (read_num_cpus > 0)")


@dataclass(frozen=True)
class AuditConfig:
    """The whole audit job: inputs, embedding, statistic, fingerprints, resources and the output URL."""

    train: DatasetSpec
    test: DatasetSpec
    generated: tuple[DatasetSpec, ...]
    output: str
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ct: CTConfig = field(default_factory=CTConfig)
    fingerprint: FingerprintConfig | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_image_pixels: int = 89_478_485
    storage_options: tuple[tuple[str, Any], ...] = ()

    NESTED = {  # noqa: RUF012 - class-level lookup used by from_dict, not a dataclass field
        "train": DatasetSpec,
        "test": DatasetSpec,
        "embed": EmbedConfig,
        "ct": CTConfig,
        "fingerprint": FingerprintConfig,
        "resources": ResourcesConfig,
    }

    def __post_init__(self) -> None:
        gens = tuple(
            g if isinstance(g, DatasetSpec) else from_dict(DatasetSpec, g, "generated") for g in self.generated
        )
        object.__setattr__(self, "generated", gens)
        if isinstance(self.storage_options, dict):
            object.__setattr__(self, "storage_options", tuple(sorted(self.storage_options.items())))
        names = [self.train.name, self.test.name, *(g.name for g in gens)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"dataset names must be unique; repeated: {dupes}")
        if not gens:
            raise ConfigError("give at least one generated set under 'generated'")


def load_audit_config(path: str | Path, overrides: dict[str, Any] | None = None) -> AuditConfig:
    """Read an audit YAML file; ``overrides`` maps dotted keys (``ct.seed``) to values applied on top."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return audit_config_from_dict(data, str(path))


def audit_config_from_dict(data: dict[str, Any], where: str = "config") -> AuditConfig:
    """Build an :class:`AuditConfig` from plain data, with errors naming the field."""
    return from_dict(AuditConfig, data, where)


# Fields that cannot change a number in the outputs; they are left out of the resume digest.
LAYOUT_ONLY_RESOURCES = (
    "actors",
    "actor_num_cpus",
    "actor_resources",
    "torch_threads",
    "read_num_cpus",
    "embed_batch_size",
    "index_task_num_cpus",
)


def result_dict(cfg: AuditConfig) -> dict[str, Any]:
    """The part of the config that determines the results (no output URL, storage options or pool sizes)."""
    out = to_dict(cfg)
    out.pop("output", None)
    out.pop("storage_options", None)
    for name in LAYOUT_ONLY_RESOURCES:
        out["resources"].pop(name, None)
    return out
