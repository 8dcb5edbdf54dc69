"""A reusable reference: the training (and test) embeddings and per-layer fits, kept for later audits.

Embedding a 10M-image training set is hours of GPU time; auditing the next model release against the same
training set must not repeat it. With ``reference: URL`` in the audit config, the train and test sets' embedding
shards are written under ``<reference>/embeddings/<set>/`` instead of the output folder, and each layer's fit
(moments → PCA, k-means cells, the partitioned projected training rows; :mod:`memray.stats`) under
``<reference>/fit/<fit key>/layer_<ℓ>/``. A later audit naming the same reference:

- reuses the embeddings when the encoder config, the weights' identity (a file's SHA-256, or the hub state-dict
  digest: :mod:`memray.embedding.identity`) and the train/test listings match (``reference.json``);
- reuses a layer's fit when its fit key matches: the embed key (weights identity included), the training listing
  and the fit settings
  (``ct.pca_dim``, ``pca_only_if_larger``, ``cells``, ``seed``, ``kmeans_*``, ``block_rows``); scoring-only
  settings (τ, metric, fingerprint settings, generated sets) are free to change;
- is refused, naming the differing fields (old → new) and the files added, removed or changed, when the encoder
  config or the listings differ, and naming the weights file (or hub id) and its old → new digest when the
  weights at the same path changed: a reference describes one training set seen through one encoder. A
  reference made before weights digests were recorded holds ``(not recorded)``: with file or hub weights it is
  refused, as its weights cannot be told apart.

``reference.json`` lists under ``fits`` the fit keys whose layers are all written (:mod:`memray.job.markers`).
An audit whose fit key is listed only reads the reference and needs no claim on it; any other audit writes to it
(embeddings, fits) and claims it first (:mod:`memray.job.claims`), so a second audit building the same reference is
refused at once.
"""

from __future__ import annotations

import logging
from typing import Any

from memray.config import digest
from memray.embedding.identity import describe_weights, show_identity, weights_identity
from memray.io import storage
from memray.job.config import AuditConfig
from memray.job.keys import Listed, fit_key, stage_configs
from memray.job.listing_changes import file_changes, file_entries, shard_changes
from memray.job.markers import REFERENCE_FILE
from memray.job.resume import differing_fields, weights_pending

log = logging.getLogger(__name__)


class ReferenceMismatchError(ValueError):
    """The reference was made from another training set or encoder; the message names the fields."""


def record(cfg: AuditConfig, checked: Listed) -> dict[str, Any]:
    """What a reference holds: the encoder's stage config, the weights' identity and the train/test sets with their
    listings (a digest, plus what names a changed file later: the shard count of an image set, the files of an
    embeddings set)."""
    sets = {}
    for role, spec in (("train", cfg.train), ("test", cfg.test)):
        sets[role] = {"name": spec.name, "listing": digest({"listing": checked.listing(spec.name)})}
        if spec.name in checked.files:
            sets[role]["files"] = file_entries(checked.files[spec.name])
        else:
            sets[role]["shards"] = len(checked.plans.get(spec.name, []))
    return {"embed": stage_configs(cfg)["embed"], "weights": weights_identity(checked.weights), "sets": sets}


def differences(cfg: AuditConfig, checked: Listed, old: dict[str, Any]) -> list[str]:
    """``["embed.model: 'a' → 'b'", "train set 'train' changed since the reference was made: added x.png", …]``
    between a reference's record and this run: a changed listing is described by its files
    (:mod:`memray.job.listing_changes`), or by its digests when they cannot be named."""
    ours = record(cfg, checked)
    diff = differing_fields(old.get("embed") or {}, ours["embed"])  # embed.model, max_image_pixels, …
    if old.get("weights") != ours["weights"] and not weights_pending(checked.weights):  # hub: checked once resolved
        change = f"{show_identity(old.get('weights'))} → {show_identity(ours['weights'])}"
        diff.append(f"{describe_weights(checked.weights)}: {change}")
    listings = []
    for role, now in ours["sets"].items():
        was = (old.get("sets") or {}).get(role) or {}
        if was.get("name") != now["name"]:
            diff.append(f"sets.{role}.name: {was.get('name')!r} → {now['name']!r}")
        if was.get("listing") != now["listing"]:
            storage_options = cfg.storage
            if now["name"] in checked.files:
                what = file_changes(was.get("files"), checked.files[now["name"]])
            else:
                plans = checked.plans.get(now["name"], [])
                what = shard_changes(
                    cfg.reference, was.get("name", now["name"]), plans, storage_options, was.get("shards")
                )
            if what:
                diff.append(f"{role} set {now['name']!r} changed since the reference was made: {what}")
            else:
                listings.append(f"sets.{role}.listing: {was.get('listing')!r} → {now['listing']!r}")
    return diff or listings


def check_reference(cfg: AuditConfig, checked: Listed) -> bool:
    """Read-only: whether ``cfg.reference`` exists already; refuses one made from other sets or encoder.

    Raises:
        ReferenceMismatchError: naming every differing field (old → new).
    """
    if not cfg.reference:
        return False
    storage_options = cfg.storage
    url = storage.join(cfg.reference, REFERENCE_FILE)
    if not storage.exists(url, storage_options):
        return False
    diff = differences(cfg, checked, storage.read_json(url, storage_options))
    if diff:
        raise ReferenceMismatchError(
            f"reference={cfg.reference} holds another training/test set or encoder ({'; '.join(diff)}): give a new "
            "reference location for this one, or use the config it was made with"
        )
    return True


def claim_reference(cfg: AuditConfig, checked: Listed) -> bool:
    """Write the reference's record if it is new; returns whether it existed (checked as above)."""
    existed = check_reference(cfg, checked)
    if cfg.reference and not existed:
        storage_options = cfg.storage
        storage.write_json(storage.join(cfg.reference, REFERENCE_FILE), record(cfg, checked), storage_options)
        log.info("reference %s: new; the train/test embeddings and fits are kept there", cfg.reference)
    elif existed:
        log.info("reference %s: reusing its embeddings and fits", cfg.reference)
    return existed


def embeddings_root(cfg: AuditConfig, set_name: str) -> str:
    """Where a set's embedding shards live: the reference for train and test (when set), else the output."""
    if cfg.reference and set_name in (cfg.train.name, cfg.test.name):
        return cfg.reference
    return cfg.output


def fit_roots(cfg: AuditConfig, checked: Listed, layers: list[int]) -> dict[int, tuple[str, bool]]:
    """Each layer's fit workspace and whether it is kept (in a reference) or removed once the layer is scored.

    Keyed by :func:`fit_key` in the output folder too, so a run resumed after a crash mid-layer reuses a
    complete fit only when it was made from the same training rows and fit settings.
    """
    root, keep = (cfg.reference, True) if cfg.reference else (cfg.output, False)
    key = fit_key(cfg, checked)
    return {layer: (storage.join(root, "fit", key, f"layer_{layer}"), keep) for layer in layers}
