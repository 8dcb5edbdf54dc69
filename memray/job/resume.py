"""What each stage of an audit depends on, so a rerun redoes exactly the work whose inputs changed.

Stages and their keys:

- **embed** (the shard files under ``embeddings/``): the embed config, ``max_image_pixels`` and
  ``resources.shard_rows``. A change here invalidates every embedding: the rerun is refused, naming the fields,
  because silently re-embedding a large set into the same folder would throw hours of GPU work away.
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

from memray.config import digest
from memray.io import storage
from memray.job_config import AuditConfig, result_dict

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
EMBED_FIELDS = ("embed", "max_image_pixels", "resources.shard_rows")
"""Dotted config fields the embeddings depend on (besides each shard's listing)."""


class ResumeMismatchError(ValueError):
    """The output folder holds embeddings made with another embed config; the message names the fields."""


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def stage_configs(cfg: AuditConfig) -> dict[str, dict[str, Any]]:
    """The result-relevant config of each stage (JSON-ready)."""
    full = result_dict(cfg)
    embed = {name: _get(full, name) for name in EMBED_FIELDS}
    sets = {s.name: {"label": s.label, "image_column": s.image_column} for s in (cfg.train, cfg.test, *cfg.generated)}
    score = {"ct": full["ct"], "fingerprint": full.get("fingerprint"), "sets": sets}
    return {"embed": embed, "score": score}


def embed_key(cfg: AuditConfig) -> str:
    """Digest of what every embedding shard depends on besides its own listing."""
    return digest(stage_configs(cfg)["embed"])


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
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
        return {"embed": {name: _get(full, name) for name in EMBED_FIELDS}, "score": None}
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


def claim_output(cfg: AuditConfig, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Compare the output folder's stamp with this config, then write this config's stamp.

    Returns ``{"resumed": bool, "rescore": [changed scoring fields]}``.

    Raises:
        ResumeMismatchError: the folder's embeddings were made with a different embed config.
    """
    stages = stage_configs(cfg)
    url = storage.join(cfg.output, CONFIG_FILE)
    stamp = {"digest": digest(result_dict(cfg)), "stages": stages, "config": result_dict(cfg)}
    out: dict[str, Any] = {"resumed": False, "rescore": []}
    old = check_output_folder(cfg, storage_options)
    if old is not None:
        out["resumed"] = True
        if old.get("score") is not None:
            out["rescore"] = differing_fields({"score": old["score"]}, {"score": stages["score"]})
        if out["rescore"]:
            log.info("scoring settings changed (%s): the layers are scored again", "; ".join(out["rescore"]))
        log.info("resuming into %s", cfg.output)
    storage.write_json(url, stamp, storage_options)
    return out
