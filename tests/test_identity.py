"""Weights identity: which part of a weights record keys the embeddings, and the one-line refusal of other weights."""

from __future__ import annotations

import pytest

from memray.embedding.identity import WeightsChangedError, check_same_weights, weights_identity, weights_mismatch

FILE_A = {"source": "file", "url": "/w/enc.safetensors", "sha256": "a" * 64, "bytes": 10}
FILE_B = {**FILE_A, "sha256": "b" * 64}
HUB_A = {"source": "hub", "hf_hub_id": "timm/x", "revision": "r1", "state_sha256": "c" * 64}
HUB_B = {**HUB_A, "revision": "r2", "state_sha256": "d" * 64}


def test_identity_is_the_content_digest_never_the_path() -> None:
    assert weights_identity(FILE_A) == {"sha256": "a" * 64}
    assert weights_identity({**FILE_A, "url": "/elsewhere/enc.safetensors"}) == weights_identity(FILE_A)
    assert weights_identity(HUB_A) == {"state_sha256": "c" * 64}
    assert weights_identity({"source": "hub"}) is None  # not resolved yet
    assert weights_identity({"source": "random_init", "seed": 0}) is None  # the config keys it
    assert weights_identity(None) is None and weights_identity({}) is None


def test_other_weights_are_refused_in_one_line_naming_file_or_hub_id() -> None:
    check_same_weights(FILE_A, FILE_A)
    check_same_weights({"source": "random_init"}, {"source": "random_init"})  # nothing to compare
    with pytest.raises(WeightsChangedError) as info:
        check_same_weights(FILE_B, FILE_A, "actor 7")
    text = str(info.value)
    assert "\n" not in text and text.startswith("embed.weights=/w/enc.safetensors: the weights file changed")
    assert f"sha256 {'a' * 12}… when the job started, sha256 {'b' * 12}… when actor 7 loaded it" in text
    hub = weights_mismatch(HUB_B, HUB_A, "actor 3")
    assert "\n" not in hub and hub.startswith("the hub weights of timm/x: actor 3 resolved other weights")
    assert "revision r1 → r2" in hub and "pretrained_cfg_overlay" in hub
    assert weights_mismatch(HUB_A, HUB_A) == ""
