"""The job's resume keys keep their values: output folders and references made by earlier versions still resume.

The pinned values were computed by the key functions before they moved to :mod:`memray.job.keys` (from
``job/resume.py``, ``job/reference.py``, ``job/collect.py``, ``job/score.py`` and ``job/audit.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ray_helpers import audit_config

from memray.io.features import FeatureSet
from memray.job.keys import embed_key, features_key, fit_key, job_digest, score_key

INPUTS = {k: f"/data/{k}" for k in ("train", "test", "copy", "real")}
FILE_WEIGHTS = {"source": "file", "url": "/w/vit.safetensors", "sha256": "ab" * 32, "bytes": 123}


class Checked:
    """What the keys read of a preflight: the weights record and each set's listing (fixed here: no mtimes)."""

    def __init__(self, weights: dict[str, Any] | None) -> None:
        self.weights = weights

    def listing(self, name: str) -> list[list[Any]]:
        return [[f"/data/{name}/a.png", 10, "1700000000000000000"], [f"/data/{name}/b.png", 11, "17"]]


@pytest.mark.parametrize(
    ("weights", "embed", "fit", "score"),
    [
        # the score key and the job digest changed, on purpose, when the evidence settings (views, pixels, replication)
        # joined the score stage (before: e413d023f12c / 68cc6aca3430, digest 79fc65d5aeb1), and again with
        # evidence.statistic (before: d265296830be / 29f691f8cb11, digest c0789c632760); embed and fit keys did not
        (None, "099fa80bb049", "96526d655301", "7606cab310d6"),  # random-init weights: the config keys them
        (FILE_WEIGHTS, "7d427f3114e7", "d5530f8157f4", "50db32d118b5"),  # a file's SHA-256 in every key
    ],
)
def test_stage_keys_keep_their_values(weights: dict | None, embed: str, fit: str, score: str) -> None:
    cfg = audit_config(INPUTS, "/out/run", reference="/ref")
    assert embed_key(cfg, weights) == embed
    assert fit_key(cfg, Checked(weights)) == fit
    assert score_key(embed, cfg, Checked(weights)) == score


def test_job_digest_keeps_its_value_and_ignores_where_outputs_go() -> None:
    assert job_digest(audit_config(INPUTS, "/out/run", reference="/ref")) == "ac4bb8efecd4"
    assert job_digest(audit_config(INPUTS, "/elsewhere")) == "ac4bb8efecd4"


def test_features_key_keeps_its_value_and_follows_the_bytes() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    sets = {
        "a": FeatureSet(np.array(["x", "y"], dtype=object), {1: x, 3: np.ones((2, 2), np.float16)}),
        "b": FeatureSet(np.array(["z"], dtype=object), {1: np.full((1, 3), 0.5, np.float32)}),
    }
    ct = {"cells": 3, "seed": 0}
    assert features_key(ct, sets) == "a8a7bf32a975"
    sets["a"].layers[1][0, 0] = 1e-7  # one value rewritten in place: another key
    assert features_key(ct, sets) != "a8a7bf32a975"
