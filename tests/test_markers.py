"""Completion markers (:mod:`memray.job.markers`): their file names and JSON contents are the on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

from memray.io.shards import ShardPlan
from memray.job.markers import (
    FITS,
    fit_done,
    layer_done,
    read_layer_marker,
    shard_done,
    shard_record,
    write_fit_marker,
    write_layer_marker,
    write_shard_marker,
)


def test_shard_marker_contents_and_an_empty_shard_is_done(tmp_path: Path) -> None:
    plan = ShardPlan("gen", 2, ())
    weights = {"source": "file", "url": "w.safetensors", "sha256": "ab" * 32}
    record = shard_record(plan, 3, {"rows_embedded": 0, "rows_reported": 3}, "k1", weights)
    write_shard_marker(str(tmp_path), plan, record, None)
    marker = tmp_path / "embeddings" / "gen" / "shard-00002.done.json"
    assert json.loads(marker.read_text()) == {
        "rows_read": 3, "rows_embedded": 0, "rows_reported": 3, "embed_key": "k1", "weights": weights,
        "nonfinite": {}, "listing_digest": plan.listing_digest(), "listing": plan.listing(),
    }  # fmt: skip
    assert shard_done(str(tmp_path), plan, "k1", None) and not shard_done(str(tmp_path), plan, "k2", None)
    no_weights = shard_record(plan, 0, {"rows_embedded": 0, "rows_reported": 0}, "k1", None)
    assert "weights" not in no_weights  # random-init weights: no record, as before


def test_layer_marker_contents_and_checks(tmp_path: Path) -> None:
    layer_dir = str(tmp_path / "layers" / "layer_3")
    write_layer_marker(layer_dir, {"seconds": 1.5}, "s1", {"copies.parquet": []}, None)
    assert json.loads((tmp_path / "layers" / "layer_3" / "done.json").read_text()) == {
        "seconds": 1.5, "score_key": "s1", "parts": {"copies.parquet": []}
    }  # fmt: skip
    assert read_layer_marker(layer_dir, None)["score_key"] == "s1"
    assert layer_done(layer_dir, "s1", lambda record: [], None)
    assert not layer_done(layer_dir, "s2", lambda record: [], None)  # other inputs or settings
    assert not layer_done(layer_dir, "s1", lambda record: [str(tmp_path / "absent.parquet")], None)  # damaged


def test_fit_marker_in_reference_json(tmp_path: Path) -> None:
    ref = str(tmp_path / "ref")
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "reference.json").write_text(json.dumps({"embed": {"x": 1}}))
    assert not fit_done(ref, "f1", None) and not fit_done(None, "f1", None)
    assert not fit_done(str(tmp_path / "absent"), "f1", None)
    write_fit_marker(ref, "f1", [4, 2], None)
    data = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert data["embed"] == {"x": 1} and data[FITS]["f1"]["layers"] == [2, 4] and "finished" in data[FITS]["f1"]
    assert fit_done(ref, "f1", None) and not fit_done(ref, "f2", None)
