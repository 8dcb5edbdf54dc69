"""Stage keys of a resume: which fields changed, and what a changed embed config does to an output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray_helpers import audit_config

from memray.config import digest
from memray.job.keys import embed_key, stage_configs
from memray.job.resume import CONFIG_FILE, ResumeMismatchError, claim_output, differing_fields, flatten

INPUTS = {"train": "/data/t", "test": "/data/p", "copy": "/data/c", "real": "/data/r"}


def test_flatten_and_differing_fields_name_every_changed_field() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    old = {"embed": {"model": "a", "layers": "all"}, "ct": {"cells": 10}}
    new = {"embed": {"model": "b", "layers": "all"}, "ct": {"cells": 10, "seed": 1}}
    assert differing_fields(old, new) == ["ct.seed: (unset) → 1", "embed.model: 'a' → 'b'"]
    assert differing_fields(old, old) == []


def test_embed_key_ignores_scoring_and_layout_fields() -> None:
    base = audit_config(INPUTS, "/out")
    assert embed_key(base) == embed_key(audit_config(INPUTS, "/out", ct__cells=7, resources__actors=3))
    assert embed_key(base) != embed_key(audit_config(INPUTS, "/out", embed__pooling=["mean"]))
    assert embed_key(base) != embed_key(audit_config(INPUTS, "/out", resources__shard_rows=7))


def test_claim_output_rescores_on_scoring_changes_and_refuses_embed_changes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert claim_output(audit_config(INPUTS, str(out)), None) == {"resumed": False, "rescore": []}
    assert (out / CONFIG_FILE).exists()
    again = claim_output(audit_config(INPUTS, str(out), ct__cells=5), None)
    assert again["resumed"] and again["rescore"] == ["score.ct.cells: 3 → 5"]
    with pytest.raises(ResumeMismatchError, match=r"embed\.model: 'test_vit' → 'vit_tiny_patch16_224'"):
        claim_output(audit_config(INPUTS, str(out), embed__model="vit_tiny_patch16_224"), None)
    stamp = json.loads((out / CONFIG_FILE).read_text())
    assert stamp["stages"]["score"]["ct"]["cells"] == 5  # the refused config did not overwrite the stamp


def test_embed_key_follows_the_weights_content_not_their_path() -> None:
    base = audit_config(INPUTS, "/out")
    legacy = digest(stage_configs(base)["embed"])  # the key of earlier versions: config only
    assert embed_key(base) == embed_key(base, {"source": "random_init"}) == legacy  # random init: unchanged keys
    file_cfg = audit_config(INPUTS, "/out", embed__weights="/w/enc.safetensors", embed__random_init=False)
    a, b = ({"source": "file", "url": "/w/enc.safetensors", "sha256": h * 64, "bytes": 1} for h in "ab")
    assert embed_key(file_cfg, a) != embed_key(file_cfg, b)  # same path, other bytes: other embeddings
    assert embed_key(file_cfg, a) == embed_key(file_cfg, {**a, "bytes": 2, "etag": "x"})  # only the digest counts
    hub_cfg = audit_config(INPUTS, "/out", embed__random_init=False)
    h1, h2 = ({"source": "hub", "hf_hub_id": "timm/t", "state_sha256": h * 64} for h in "cd")
    assert embed_key(hub_cfg, h1) != embed_key(hub_cfg, h2)


def test_claim_output_records_the_weights(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = audit_config(INPUTS, str(out), embed__weights="/w/enc.safetensors", embed__random_init=False)
    a = {"source": "file", "url": "/w/enc.safetensors", "sha256": "a" * 64, "bytes": 1}
    claim_output(cfg, None, a)
    assert json.loads((out / CONFIG_FILE).read_text())["weights"] == a
    again = claim_output(cfg, None, {**a, "sha256": "b" * 64})  # replaced at the same path: resumed, re-embedded
    assert again["resumed"] and json.loads((out / CONFIG_FILE).read_text())["weights"]["sha256"] == "b" * 64
