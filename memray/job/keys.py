"""Every resume key of the job in one place: what each stage's outputs were made from, as a 12-hex digest.

A marker (:mod:`memray.job.markers`) records the key of the work it completes; a rerun keeps that work only while
the key it computes now is the same. The keys nest: the weights' identity is in the embed key, the embed key in the
fit and score keys, so a change upstream redoes everything downstream. The values are part of the on-disk format
(output folders and references made by earlier versions resume with them): change what goes into a key only on
purpose.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import numpy as np

from memray.config import digest, to_dict
from memray.embedding.identity import weights_identity
from memray.io.features import FeatureSet
from memray.job.config import AuditConfig, result_dict

EMBED_FIELDS = ("embed", "max_image_pixels", "resources.shard_rows")
"""Dotted config fields the embeddings depend on (besides each shard's listing)."""
FIT_FIELDS = ("pca_dim", "pca_only_if_larger", "cells", "seed", "kmeans_niter", "kmeans_nredo", "kmeans_sample",
              "kmeans_seed_sample", "block_rows")  # fmt: skip
"""CT config fields the per-layer fit depends on (the search and the statistic do not change it)."""


def config_field(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"`` (``None`` where a level is missing)."""
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def stage_configs(cfg: AuditConfig) -> dict[str, dict[str, Any]]:
    """The result-relevant config of each stage (JSON-ready): ``embed`` (the :data:`EMBED_FIELDS`) and ``score``
    (C_T, fingerprint, each set's label and image column); the output's ``config.json`` stamps them too."""
    full = result_dict(cfg)
    embed = {name: config_field(full, name) for name in EMBED_FIELDS}
    sets = {s.name: {"label": s.label, "image_column": s.image_column} for s in (cfg.train, cfg.test, *cfg.generated)}
    score = {"ct": full["ct"], "evidence": full["evidence"], "fingerprint": full.get("fingerprint"), "sets": sets}
    return {"embed": embed, "score": score}


def job_digest(cfg: AuditConfig) -> str:
    """Digest of the result-relevant config (:func:`memray.job.config.result_dict`: no output URL, storage options
    or pool sizes): the ``job_digest`` of ``run.json``, every table's metadata and the output's ``config.json``."""
    return digest(result_dict(cfg))


def stage_embed_key(embed: dict[str, Any], weights: dict[str, Any] | None = None) -> str:
    """Digest of an embed stage config (``{"embed": …, "max_image_pixels": …, "resources.shard_rows": …}``) and the
    identity of ``weights`` (a file's SHA-256 or the hub state-dict digest; random-init weights add nothing)."""
    identity = weights_identity(weights)
    return digest(embed if identity is None else {"embed": embed, "weights": identity})


def embed_key(cfg: AuditConfig, weights: dict[str, Any] | None = None) -> str:
    """Key of every embedding shard besides its own listing (which its marker holds): the embed stage config
    (``embed``, ``max_image_pixels``, ``resources.shard_rows``) and the identity of ``weights``, the job's weights
    record (:func:`stage_embed_key`)."""
    return stage_embed_key(stage_configs(cfg)["embed"], weights)


class Listed(Protocol):
    """What the keys (and a reference's record) read of a preflight (:class:`memray.job.preflight.Preflight`)."""

    plans: dict[str, list[Any]]
    files: dict[str, list[Any]]
    weights: dict[str, Any]

    def listing(self, name: str) -> list[str]: ...


def fit_key(cfg: AuditConfig, checked: Listed) -> str:
    """Key of a layer's fit (``fit/<key>/layer_<ℓ>/``): the embed key (weights included), the training set's listing
    and the fit settings (:data:`FIT_FIELDS`); scoring-only settings are not in it."""
    ct = to_dict(cfg.ct)
    fit = {name: ct[name] for name in FIT_FIELDS}
    ekey = embed_key(cfg, checked.weights)
    return digest({"embed_key": ekey, "train": checked.listing(cfg.train.name), "fit": fit})


def score_key(ekey: str, cfg: AuditConfig, checked: Listed) -> str:
    """Key of the layer tables (``layers/layer_<ℓ>/done.json``): the embed key ``ekey``, the scoring stage config
    (C_T, fingerprint, set labels and image columns) and the listing of every set."""
    listings = {spec.name: checked.listing(spec.name) for spec in cfg.sets}
    return digest({"embed_key": ekey, "score": stage_configs(cfg)["score"], "listings": listings})


def features_key(ct: dict[str, Any], sets: dict[str, FeatureSet]) -> str:
    """Score key of ``memray score``: the C_T config and the content of every set (sample ids, every layer's bytes).

    Content, not file names: a file rewritten in place changes the key, so a rerun re-scores instead of reusing
    layers made from other features. Costs one SHA-256 pass over the features (~1 s per GB).
    """
    parts = {}
    for name, fs in sorted(sets.items()):
        h = hashlib.sha256("\0".join(map(str, fs.ids)).encode())
        for layer in sorted(fs.layers):
            x = np.ascontiguousarray(fs.layers[layer])
            h.update(f"|{layer}|{x.dtype.str}|{x.shape}|".encode())
            h.update(memoryview(x).cast("B"))
        parts[name] = h.hexdigest()
    return digest({"ct": ct, "sets": parts})
