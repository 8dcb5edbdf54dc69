"""Configuration of the audit job: the image sets, resources, and the nested stage configs.

Loaded from YAML (``load_audit_config``) with CLI overrides, dumped beside every output (``run.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memray.config import NON_EMPTY, ConfigError, FieldError, above, at_least, from_dict, rule, to_dict, validate
from memray.embedding.config import EmbedConfig
from memray.fingerprint.config import FingerprintConfig
from memray.io.config import CLAIM_LEASE_S, DatasetSpec, storage_op_timeout
from memray.probes.config import PROBE_SET_PREFIX, ProbesConfig
from memray.stats.config import CTConfig, EvidenceConfig
from memray.stats.device import ScoreDevice

PROBES_DIR = "probes"  # under the output folder


def probe_url(output: str, set_name: str) -> str:
    """Where the probe set ``probe_<probe>`` is written: ``<output>/probes/<probe>.tar``."""
    probe = set_name.removeprefix(PROBE_SET_PREFIX)
    return f"{output.rstrip('/')}/{PROBES_DIR}/{probe}.tar"


def _amounts_ok(pairs: tuple[tuple[str, float], ...]) -> bool:
    return all(name and amount >= 0 for name, amount in pairs)


@dataclass(frozen=True)
class ResourcesConfig:
    """How the Ray job is laid out. ``actors``: embedding actor-pool size; ``actor_num_gpus``: 1 on GPU nodes.

    On a machine with few CPUs keep ``actors * actor_num_cpus`` below the CPU count, or the read tasks starve.
    ``shard_rows``: images per embedding shard (the unit of resume); ``embed_batch_size``: rows per actor batch.
    16,384 rows: one shard of ViT-B × 12 layers is ~600 MB (a good object size; 10M images → ~610 files, not ~9,800
    at 1,024), about 10 s of one GPU to redo on resume; small enough that a 100k-image set still reads in parallel
    (one read task per shard) and that each layer column of a shard (~50 MB) is read on its own.
    ``index_task_num_cpus``: CPUs of each search / k-means restart task.
    ``score_device``: where the scoring tasks' block arithmetic (PCA moments, projection, Lloyd passes, cell
    assignment) runs, float64 either way (:mod:`memray.stats.device`): ``cpu`` (numpy), ``cuda`` (torch; each
    task is given a GPU), ``auto`` (CUDA in tasks given a GPU, i.e. with ``faiss_gpu``, else numpy); ``run.json``
    records the device used (``stats.score.score_devices``).
    ``layers_in_flight``: layers the job's driver scores at once (each waits on its own tasks, so the workers stay
    busy between one layer's small rounds; the tables do not depend on it; the driver holds that many layers'
    per-sample results and the workers their rounds).
    ``actor_resources``: custom Ray resources each embedding actor requests (e.g. ``{"A100": 1}`` to pin actors to
    nodes that advertise that resource). ``autoscaling``: the cluster's autoscaler adds nodes on demand, so the
    capacity check against the connected cluster's current resources is skipped.
    """

    SECTION = "resources"

    actors: int = field(default=1, metadata=at_least(1))
    actor_num_cpus: float = field(default=1.0, metadata=at_least(0))
    actor_num_gpus: float = field(default=0.0, metadata=at_least(0))
    torch_threads: int | None = field(default=None, metadata=at_least(1))
    read_num_cpus: float = field(default=0.25, metadata=above(0))
    shard_rows: int = field(default=16384, metadata=at_least(1))
    embed_batch_size: int = field(default=64, metadata=at_least(1))
    index_task_num_cpus: float = field(default=1.0, metadata=at_least(0))
    faiss_gpu: bool = False
    score_device: ScoreDevice = "cpu"
    layers_in_flight: int = field(default=2, metadata=at_least(1))
    actor_resources: tuple[tuple[str, float], ...] = field(
        default=(), metadata=rule("(non-empty names, amounts >= 0)", _amounts_ok)
    )
    autoscaling: bool = False

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class AuditConfig:
    """The whole audit job: inputs, embedding, statistic, fingerprints, resources and the output URL.

    ``reference``: a folder or ``s3://`` prefix holding the training and test embeddings and the per-layer fits
    (PCA, cells, partitioned projected rows), written by the first audit that names it and reused by later
    audits of the same training set with the same encoder and fit settings (:mod:`memray.job.reference`).
    ``probes``: build the memorization probe sets (transformed training images, :mod:`memray.probes`) and score
    them as further generated sets; ``generated`` may then be empty (``memray probe``).
    ``claim_lease_s``: the run claims its output folder (and a reference it builds) with a lease of this many
    seconds, renewed every third of it; a claim not renewed for this long is taken over by the next run
    (:mod:`memray.io.claim`). Not part of the result digest.

    Every field is checked on construction (types from the annotations, ranges from the field rules); errors
    name the dotted field, e.g. ``resources.actors=1.5: must be an integer >= 1``.
    """

    SECTION = ""

    train: DatasetSpec
    test: DatasetSpec
    generated: tuple[DatasetSpec, ...] = field(metadata=rule("(a list of sets)", lambda v: True))
    output: str = field(metadata=NON_EMPTY)
    embed: EmbedConfig | None = None
    ct: CTConfig = field(default_factory=CTConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    fingerprint: FingerprintConfig | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_image_pixels: int = field(default=89_478_485, metadata=at_least(1))
    storage_options: tuple[tuple[str, Any], ...] = field(default=(), metadata={"secret": True})
    reference: str | None = None
    probes: ProbesConfig | None = None
    claim_lease_s: float = field(default=CLAIM_LEASE_S, metadata=at_least(5))

    def __post_init__(self) -> None:
        validate(self)
        storage_op_timeout(dict(self.storage_options))
        if not self.generated and self.probes is None:
            raise FieldError("generated", [], "at least one set (or a probes: section)", type(self), "generated")
        if self.probes is not None and self.train.is_embeddings:
            raise ConfigError("probes: need the training images (train.urls), not precomputed embeddings")
        for g in self.generated:  # probe_<p> names the probe sets this job writes, nothing else
            if g.name.startswith(PROBE_SET_PREFIX) and g.urls != (probe_url(self.output, g.name),):
                raise ConfigError(
                    f"generated set {g.name!r}: names starting with {PROBE_SET_PREFIX!r} are reserved for the probe "
                    "sets memray builds (probes: section); rename the set"
                )
        if self.evidence.statistic == "relative" and self.ct.top_k == 1:
            raise ConfigError("evidence.statistic=relative divides by the k-th nearest distance: set ct.top_k >= 2 "
                              "(default 5) or evidence.statistic: distance")  # fmt: skip
        if self.embed is None and not all(s.is_embeddings for s in self.sets):
            object.__setattr__(self, "embed", EmbedConfig())  # images to embed: the default embedder
        names = [self.train.name, self.test.name, *(g.name for g in self.generated)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"dataset names must be unique; repeated: {dupes}")

    @property
    def sets(self) -> tuple[DatasetSpec, ...]:
        """Every set: train, test, then the generated sets in order."""
        return (self.train, self.test, *self.generated)

    @property
    def storage(self) -> dict[str, Any] | None:
        """The fsspec/s3fs options of every storage call (``None`` when there are none)."""
        return dict(self.storage_options) or None


# Dotted fields holding local paths: relative ones are resolved against the config file's folder (in the file)
# or the current directory (overrides from the command line). ``generated[].urls``/``embeddings`` are resolved too.
PATH_FIELDS = (
    "output",
    "reference",
    "train.urls",
    "test.urls",
    "train.embeddings",
    "test.embeddings",
    "embed.weights",
    "fingerprint.gallery",
)


def under_ray_job() -> bool:
    """True in the driver of a ``ray job submit`` job (Ray sets ``RAY_JOB_ID`` in its environment)."""
    return bool(os.environ.get("RAY_JOB_ID"))


def refuse_relative_under_ray_job(key: str, value: object) -> None:
    """Under ``ray job submit`` refuse a relative ``output``/``reference``: the job runs in a temporary copy of the
    working dir, where anything written there would be lost."""
    if under_ray_job() and _is_relative(value):
        raise ConfigError(
            f"{key}={value!r} is relative: under `ray job submit` the job runs in a temporary copy of the "
            "working dir, so what it writes would be lost there; give an absolute path on shared storage or an "
            f"s3:// URL (--set {key}=...)"
        )


def _is_relative(path: object) -> bool:
    """A local path (no URL scheme) that is not absolute."""
    return isinstance(path, str) and bool(path) and "://" not in path and not os.path.isabs(path)


def _resolve(value: object, base: Path) -> object:
    """``value`` (a path or a list of paths) with relative local paths made absolute against ``base``."""
    if isinstance(value, (list, tuple)):
        return [_resolve(v, base) for v in value]
    return os.path.normpath(os.path.join(base, value)) if _is_relative(value) else value


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of the config data with the relative local paths of :data:`PATH_FIELDS` and of every
    ``generated[].urls`` / ``generated[].embeddings`` resolved against ``base``."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted in PATH_FIELDS:
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _resolve(node[leaf], base)
    if isinstance(out.get("generated"), list):
        out["generated"] = [
            {**g, **{k: _resolve(g[k], base) for k in ("urls", "embeddings") if k in g}} if isinstance(g, dict) else g
            for g in out["generated"]
        ]
    return out


def load_audit_config(path: str | Path, overrides: dict[str, Any] | None = None) -> AuditConfig:
    """Read an audit YAML file; ``overrides`` maps dotted keys (``ct.seed``) to values applied on top.

    Relative local paths in the file are relative to the file's folder; relative paths given as overrides (the
    command line) are relative to the current directory. Under ``ray job submit`` a relative output is refused:
    the job runs in a temporary copy of the working dir, where the results would be lost.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields (train, test, generated, output, ...)")
    overrides = dict(overrides or {})
    for key in ("output", "reference"):
        refuse_relative_under_ray_job(key, overrides.get(key, data.get(key)))
    data = resolve_paths(data, Path(path).resolve().parent)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _resolve(value, Path.cwd()) if dotted in PATH_FIELDS else value
    return audit_config_from_dict(data, str(path))


def audit_config_from_dict(data: dict[str, Any], where: str = "config") -> AuditConfig:
    """Build an :class:`AuditConfig` from plain data; errors read ``<where>: <dotted.field>=<value>: <allowed>``."""
    try:
        return from_dict(AuditConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# Fields that cannot change a number in the outputs; they are left out of the resume digest.
LAYOUT_ONLY_RESOURCES = (
    "actors",
    "actor_num_cpus",
    "actor_resources",
    "torch_threads",
    "read_num_cpus",
    "embed_batch_size",
    "index_task_num_cpus",
    "layers_in_flight",
    "autoscaling",
)
# Fields that change numbers only within float64 rounding (README, "GPU scoring"); run.json records their effect.
ROUNDING_ONLY_RESOURCES = ("score_device",)


def result_dict(cfg: AuditConfig) -> dict[str, Any]:
    """The part of the config that determines the results (no output URL, storage options or pool sizes)."""
    out = to_dict(cfg)
    out.pop("output", None)
    out.pop("reference", None)  # where embeddings and fits are kept, not what they are
    out.pop("storage_options", None)
    out.pop("claim_lease_s", None)  # how long a claim on the output lasts, not what is written there
    for name in LAYOUT_ONLY_RESOURCES + ROUNDING_ONLY_RESOURCES:
        out["resources"].pop(name, None)
    return out
