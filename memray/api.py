"""memray's Python API: :func:`audit` (images in folders or buckets → verdicts, tables, report) and :func:`score`
(feature arrays → C_T tables), the same code paths as ``memray audit`` and ``memray score``.

::

    import memray
    res = memray.audit(train="data/train", test="data/test", generated={"model_a": "samples/a"},
                       output="runs/audit", model="vit_base_patch16_224.orig_in21k", weights="vitb16.safetensors")
    res.verdicts            # one row per generated set: copying / closer_to_training / no_evidence, Holm p, tests
    res.table("copies")     # each generated sample's nearest training images, with test_quantile and sources
    res.report              # report.html
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from memray.io.features import FeatureSet
    from memray.job.config import AuditConfig

    Features = np.ndarray | dict[int, np.ndarray] | FeatureSet
    """A feature argument of :func:`score`: an array (n, d), ``{layer: (n, d)}`` or a FeatureSet."""

DEFAULT_MODEL = "vit_base_patch16_224.orig_in21k"

DataSet = str | Path | Sequence[str | Path] | dict[str, Any]
"""A dataset argument: a URL or folder, a list of them, or a dict (``{"urls": [...], "label": ...}``)."""


def _set(name: str, value: DataSet) -> dict[str, Any]:
    """A dataset entry from a URL, a list of URLs or a dict (``{"urls": [...], "label": ...}``)."""
    if isinstance(value, dict):
        return {"name": name, **value}
    urls = [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]
    return {"name": name, "urls": urls}


def audit_config_data(
    train: DataSet,
    test: DataSet,
    generated: dict[str, DataSet],
    output: str,
    model: str | None = None,
    weights: str | None = None,
    random_init: bool = False,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit config (plain data, as in a YAML file) of folders/URLs with the paper's defaults.

    ``generated``: name → URL(s) or ``{"urls": [...], "label": "model family"}``; ``settings``: dotted overrides
    (``{"ct.seed": 1, "resources.actors": 2}``). Relative local paths are relative to the current directory.
    """
    data: dict[str, Any] = {
        "train": _set("train", train),
        "test": _set("test", test),
        "generated": [_set(n, v) for n, v in generated.items()],
        "output": str(output),
        "embed": {"model": model or DEFAULT_MODEL},
    }
    if weights:
        data["embed"]["weights"] = str(weights)
    if random_init:
        data["embed"]["random_init"] = True
    for dotted, value in (settings or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    from memray.job.config import resolve_paths

    return resolve_paths(data, Path.cwd())


def audit(
    train: DataSet | None = None,
    test: DataSet | None = None,
    generated: dict[str, DataSet] | None = None,
    output: str | None = None,
    model: str | None = None,
    weights: str | None = None,
    random_init: bool = False,
    settings: dict[str, Any] | None = None,
    config: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
):
    """Run the audit job (embed on Ray, C_T per layer, verdicts, copies, report) and return its
    :class:`~memray.job.result.AuditResult`.

    Starts a local Ray unless one is running or ``address`` / ``RAY_ADDRESS`` names a cluster. ``config``: a YAML
    file to start from (``jobs/configs/default.yaml``); then every other argument given overrides it.
    """
    from memray.job.config import audit_config_from_dict, load_audit_config

    if config is not None:
        given = {"train": train, "test": test, "generated": generated, "output": output}
        data = audit_config_data(train or "", test or "", generated or {}, output or "", model, weights, random_init)
        overrides = {k: data[k] for k, v in given.items() if v}
        overrides.update({f"embed.{k}": v for k, v in (("model", model), ("weights", weights)) if v})
        if random_init:
            overrides["embed.random_init"] = True
        cfg = load_audit_config(config, {**overrides, **(settings or {})})
    else:
        missing = [
            k for k, v in (("train", train), ("test", test), ("generated", generated), ("output", output)) if not v
        ]
        if missing:
            raise ValueError(f"memray.audit: give {', '.join(missing)} (or config=PATH of an audit YAML file)")
        data = audit_config_data(train, test, generated or {}, str(output), model, weights, random_init, settings)
        cfg = audit_config_from_dict(data, "memray.audit")
    return _run(cfg, address, num_cpus)


def probe_config(
    config: str | None = None,
    train: DataSet | None = None,
    test: DataSet | None = None,
    output: str | None = None,
    model: str | None = None,
    weights: str | None = None,
    random_init: bool = False,
    probes: tuple[str, ...] | None = None,
    n: int | None = None,
    seed: int | None = None,
    settings: dict[str, Any] | None = None,
):
    """The audit config of a probe-only run: the train/test sets and encoder, no generated set, probes on.

    From ``config`` (its generated sets and fingerprints are dropped; output ``<its output>_probes`` unless
    ``output``) or from ``train``/``test``/``output`` with the encoder arguments. ``probes``/``n``/``seed`` override
    the config's ``probes:`` section (default: all eight probes, 500 images, seed 0).
    """
    import dataclasses

    from memray.config import to_dict
    from memray.job.config import audit_config_from_dict, load_audit_config
    from memray.probes.config import ProbesConfig

    if config:
        base = load_audit_config(config, settings)
        data = to_dict(base)
        data.update(generated=[], fingerprint=None, output=output or base.output.rstrip("/") + "_probes")
        data["probes"] = data.get("probes") or {}
        cfg = audit_config_from_dict(data, str(config))
    else:
        given = {"train": train, "test": test, "output": output}
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ValueError(f"give {', '.join(missing)} (or a config file)")
        data = audit_config_data(train, test, {}, str(output), model, weights, random_init, settings)
        cfg = audit_config_from_dict({**data, "generated": [], "probes": data.get("probes") or {}}, "memray probe")
    fields = {"n": n, "seed": seed, "probes": tuple(probes) if probes else None}  # None: keep the config's
    current = dataclasses.asdict(cfg.probes or ProbesConfig())
    return dataclasses.replace(
        cfg, probes=ProbesConfig(**{**current, **{k: v for k, v in fields.items() if v is not None}})
    )


def probe(config: str | None = None, address: str | None = None, num_cpus: int | None = None, **kwargs: Any):
    """Build and score the probe sets (the arguments of :func:`probe_config`); returns the
    :class:`~memray.job.result.AuditResult` (``result.table("probes")``; ``probes.json`` beside it)."""
    cfg = probe_config(config, **kwargs)
    return _run(cfg, address, num_cpus)


def _run(cfg: AuditConfig, address: str | None, num_cpus: int | None):
    """Check, claim the output (refused at once if another run writes it), start or join Ray, run the audit."""
    from memray.job.run import run_job
    from memray.ray.runner import RayRunner

    return run_job(cfg, RayRunner(address, num_cpus))


def _features(x: Features, role: str, layer: int):
    """An array (n, d), ``{layer: array}`` or a FeatureSet → FeatureSet."""
    from memray.io.features import FeatureSet

    if isinstance(x, FeatureSet):
        return x
    layers = {int(k): np.asarray(v, np.float32) for k, v in x.items()} if isinstance(x, dict) else {layer: x}
    layers = {k: np.asarray(v, np.float32) for k, v in layers.items()}
    n = len(next(iter(layers.values())))
    return FeatureSet(np.array([f"{role}/{i}" for i in range(n)], dtype=object), layers, role)


def score(
    train_features: Features,
    test_features: Features,
    generated: dict[str, Features],
    mode: str = "paper",
    layers: list[int] | None = None,
    layer: int = 1,
    **ct: Any,
):
    """C_T of every generated feature set at every layer, with p-values, CIs, verdicts and copy evidence.

    Each argument is an array (n, d) (one layer, numbered ``layer``), a dict ``{layer: (n, d)}`` or a
    :class:`~memray.io.features.FeatureSet`; ``ct`` sets :class:`~memray.config.CTConfig` fields
    (``cells=3, seed=1, bootstrap=0, top_k=5``). Returns a :class:`~memray.stats.tables.ScoreResult`.
    """
    from memray.stats.config import CTConfig
    from memray.stats.layers import score_features

    cfg = CTConfig(mode=mode, **ct)
    gens = {name: _features(x, name, layer) for name, x in generated.items()}
    return score_features(_features(train_features, "train", layer), _features(test_features, "test", layer),
                          gens, cfg, layers=layers)  # fmt: skip
