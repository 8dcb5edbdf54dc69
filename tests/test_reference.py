"""reference.json: a reference is refused when the weights at the same path are another checkpoint (no Ray)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from ray_helpers import audit_config, make_inputs, save_weights

from memray.job.keys import fit_key
from memray.job.markers import REFERENCE_FILE
from memray.job.preflight import preflight
from memray.job.reference import ReferenceMismatchError, check_reference, claim_reference


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_weights_replaced_at_the_same_path_are_refused_naming_file_and_digests(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    weights = save_weights(tmp_path / "w" / "encoder.safetensors", seed=1)
    cfg = audit_config(inputs, str(tmp_path / "out"), reference=str(tmp_path / "ref"), embed__weights=weights,
                       embed__random_init=False)  # fmt: skip
    checked = preflight(cfg)
    assert checked.weights["sha256"] == _sha(weights) and checked.weights["url"] == weights
    assert claim_reference(cfg, checked) is False  # new: its record is written
    assert json.loads((tmp_path / "ref" / REFERENCE_FILE).read_text())["weights"] == {"sha256": _sha(weights)}
    old = _sha(weights)
    assert preflight(cfg).weights == checked.weights  # the same file: accepted

    save_weights(Path(weights), seed=2)  # a retrained checkpoint written over the old one
    with pytest.raises(ReferenceMismatchError) as info:
        preflight(cfg)
    text = str(info.value)
    assert "\n" not in text and f"embed.weights={weights}: sha256 {old[:12]}… → sha256 {_sha(weights)[:12]}…" in text
    other = dataclasses.replace(checked, weights={**checked.weights, "sha256": "0" * 64})
    assert fit_key(cfg, checked) != fit_key(cfg, other)  # the fits of other weights are others


def test_references_from_before_weights_digests(tmp_path: Path) -> None:
    """A reference.json without a weights record: kept for random-init weights, refused for a weights file."""
    inputs = make_inputs(tmp_path / "in")
    ref = tmp_path / "ref"
    plain = audit_config(inputs, str(tmp_path / "out"), reference=str(ref))
    checked = preflight(plain)
    claim_reference(plain, checked)
    record = json.loads((ref / REFERENCE_FILE).read_text())
    record.pop("weights")
    (ref / REFERENCE_FILE).write_text(json.dumps(record))  # as memray wrote it before
    assert check_reference(plain, checked) is True

    weights = save_weights(tmp_path / "w.safetensors", seed=1)
    with_file = audit_config(inputs, str(tmp_path / "out"), reference=str(ref), embed__weights=weights,
                             embed__random_init=False)  # fmt: skip
    record["embed"]["embed"].update(weights=weights, random_init=False)
    (ref / REFERENCE_FILE).write_text(json.dumps(record))
    with pytest.raises(ReferenceMismatchError, match=r"embed\.weights=.*w\.safetensors: \(not recorded\) → sha256"):
        preflight(with_file)


def test_hub_weights_are_compared_once_resolved(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    cfg = audit_config(inputs, str(tmp_path / "out"), reference=str(tmp_path / "ref"), embed__random_init=False)
    checked = preflight(cfg)  # the hub is not contacted: the digest is not known yet
    assert checked.weights == {"source": "hub"}
    resolved = dataclasses.replace(checked, weights={"source": "hub", "hf_hub_id": "timm/t", "state_sha256": "1" * 64})
    claim_reference(cfg, resolved)
    assert preflight(cfg).weights == {"source": "hub"}  # preflight cannot tell: the job checks once resolved
    assert check_reference(cfg, resolved) is True
    other = dataclasses.replace(resolved, weights={**resolved.weights, "state_sha256": "2" * 64})
    with pytest.raises(ReferenceMismatchError, match=r"hub weights of timm/t: state_sha256 111111111111… → state_sha"):
        check_reference(cfg, other)
