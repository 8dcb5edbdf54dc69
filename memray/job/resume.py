"""What each stage of an audit depends on, so a rerun redoes exactly the work whose inputs changed.

Stages and their keys:

- **embed** (the shard files under ``embeddings/``): the embed config, ``max_image_pixels`` and
  ``resources.shard_rows``. A change here invalidates every embedding: the rerun is refused, naming the fields,
  because silently re-embedding a large set into the same folder would throw hours of GPU work away.
- **the weights' content**: the weights are known by what they are, not by their path (:func:`planned_weights`,
  :mod:`memray.embedding.identity`): a file's SHA-256 (streamed once by the preflight), or the digest of the state
  dict the hub gave (resolved when the job starts). It is part of the embed key (:func:`memray.job.keys.embed_key`),
  so weights replaced at the same path make every shard, fit and layer of the folder be computed again;
  ``random_init`` weights follow from the config and add nothing (their keys are those of earlier versions).

The keys themselves are computed in :mod:`memray.job.keys`; the markers that record them in :mod:`memray.job.markers`.
- **each embedding shard**: the embed key plus the shard's listing (file names, sizes, mtimes/ETags); a
  shard whose listing changed is embedded again.
- **score** (``layers/layer_<ℓ>/``): the embed key, the C_T config, the fingerprint config and set labels
  (fingerprints are computed in the same pass) and the listing digests of every shard of every set. A change
  only re-scores; the embeddings are kept.

``config.json`` in the output folder holds the stage configs of the last run that claimed it.
"""

from __future__ import annotations

import logging
from typing import Any

from memray.embedding.identity import (
    SOURCE_FILE,
    SOURCE_HUB,
    SOURCE_RANDOM,
    describe_weights,
    show_identity,
    weights_identity,
)
from memray.io import storage
from memray.job.config import AuditConfig, result_dict
from memray.job.keys import EMBED_FIELDS, config_field, job_digest, stage_configs

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


class ResumeMismatchError(ValueError):
    """The output folder holds embeddings made with another embed config; the message names the fields."""


def planned_weights(cfg: AuditConfig, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The weights record the job plans with: a file's SHA-256 and size (streamed once, bounded memory; plus the
    ETag on object storage); ``{"source": "hub"}`` until the job resolves it; ``{"source": "random_init"}``."""
    from memray.io.safetensors_io import weights_digest

    emb = cfg.embed
    if emb is None:
        return {}
    if emb.weights:
        record = {"source": SOURCE_FILE, "url": emb.weights, **weights_digest(emb.weights, storage_options)}
        log.info("weights %s: %s (%d bytes)", emb.weights, show_identity(weights_identity(record)), record["bytes"])
        return record
    return {"source": SOURCE_RANDOM if emb.random_init else SOURCE_HUB}


def weights_pending(weights: dict[str, Any] | None) -> bool:
    """Hub weights whose digest the job has not resolved yet (preflight does not contact the hub)."""
    return (weights or {}).get("source") == SOURCE_HUB and weights_identity(weights) is None


def flatten(data: object, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["embed.model: 'a' → 'b'", …]`` for every dotted field whose value differs (sorted)."""
    a, b = flatten(old), flatten(new)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            shown_a = "(unset)" if va is missing else repr(va)
            shown_b = "(unset)" if vb is missing else repr(vb)
            lines.append(f"{key}: {shown_a} → {shown_b}")
    return lines


def _old_stages(old: dict[str, Any]) -> dict[str, Any] | None:
    """Stage configs of a stamp, also from the single-digest stamps of memray 0.1 (``{"config": …}``)."""
    if "stages" in old:
        return old["stages"]
    if "config" in old:
        full = old["config"]
        return {"embed": {name: config_field(full, name) for name in EMBED_FIELDS}, "score": None}
    return None


def check_output_folder(cfg: AuditConfig, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Read-only: the stage configs in the output folder, refusing embeddings made with another embed config.

    Returns the old stage configs (``None`` for a new folder).

    Raises:
        ResumeMismatchError: naming every differing embed field (old → new).
    """
    url = storage.join(cfg.output, CONFIG_FILE)
    if not storage.exists(url, storage_options):
        return None
    old = _old_stages(storage.read_json(url, storage_options)) or {}
    embed_diff = differing_fields(old.get("embed") or {}, stage_configs(cfg)["embed"])
    if embed_diff:
        raise ResumeMismatchError(
            f"{cfg.output} holds embeddings made with another embed config ({'; '.join(embed_diff)}): "
            "choose a new output folder, or delete its embeddings/ folder to embed again"
        )
    return old


def claim_output(
    cfg: AuditConfig, storage_options: dict[str, Any] | None, weights: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compare the output folder's stamp with this config, then write this config's stamp (and ``weights``, the
    job's weights record; weights changed at the same path are logged: the embeddings are made again).

    Returns ``{"resumed": bool, "rescore": [changed scoring fields]}``.

    Raises:
        ResumeMismatchError: the folder's embeddings were made with a different embed config.
    """
    stages = stage_configs(cfg)
    url = storage.join(cfg.output, CONFIG_FILE)
    stamp = {"digest": job_digest(cfg), "stages": stages, "config": result_dict(cfg), "weights": weights or {}}
    out: dict[str, Any] = {"resumed": False, "rescore": []}
    old = check_output_folder(cfg, storage_options)
    if old is not None:
        out["resumed"] = True
        before = weights_identity(storage.read_json(url, storage_options).get("weights"))
        if before is not None and before != weights_identity(weights):
            log.warning("%s changed (%s → %s): everything is embedded and scored again", describe_weights(weights),
                        show_identity(before), show_identity(weights_identity(weights)))  # fmt: skip
        if old.get("score") is not None:
            out["rescore"] = differing_fields({"score": old["score"]}, {"score": stages["score"]})
        if out["rescore"]:
            log.info("scoring settings changed (%s): the layers are scored again", "; ".join(out["rescore"]))
        log.info("resuming into %s", cfg.output)
    storage.write_json(url, stamp, storage_options)
    return out
