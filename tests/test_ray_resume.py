"""Resume on a real local Ray: inputs that changed, scoring settings that changed, damaged shards, run history."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from ray_helpers import audit_config, sample_images, write_npz, write_pngs

from memray.io import schema
from memray.job.resume import ResumeMismatchError
from memray.ray.pipeline import run_audit

TABLES = (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE)


def _inputs(root: Path) -> dict[str, str]:
    """Train and a generated set as PNG folders (files can be added and deleted), test as .npz."""
    write_pngs(root / "train", sample_images("train", 160))
    write_pngs(root / "gen", sample_images("kde_copy_bw8", 90))
    return {
        "train": str(root / "train"),
        "test": write_npz(root / "test.npz", sample_images("test", 100)),
        "copy": str(root / "gen"),
        "real": write_npz(root / "real.npz", sample_images("heldout_real", 60)),
    }


def _cfg(inputs: dict[str, str], out: Path, **kw):
    return audit_config(inputs, str(out), resources__shard_rows=32, **kw)


def _same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.timeout(600)
def test_changed_inputs_are_embedded_again_and_counted_right(ray_local, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = run_audit(_cfg(inputs, out))
    assert first.stats["counts"]["copy"]["rows_read"] == 90

    gen = Path(inputs["copy"])  # add 3 images, delete 1, between two runs into the same folder
    extra = sample_images("heldout_real", 63)[60:]
    write_pngs(tmp_path / "extra", extra)
    for i, p in enumerate(sorted((tmp_path / "extra").glob("*.png"))):
        p.rename(gen / f"new_{i}.png")
    (gen / "img_00010.png").unlink()
    second = run_audit(_cfg(inputs, out))
    c = second.stats["counts"]["copy"]
    assert (c["rows_read"], c["rows_embedded"], c["rows_reported"]) == (92, 92, 0)
    assert second.stats["embed"]["rows"] > 0  # the changed shards were embedded again
    nbrs = pd.read_parquet(out / schema.NEIGHBORS_FILE)
    ids = set(nbrs[nbrs[schema.GEN_SET] == "copy"][schema.SAMPLE_ID])
    assert "img_00010.png" not in ids and {"new_0.png", "new_1.png", "new_2.png"} <= ids
    run_audit(_cfg(inputs, tmp_path / "fresh"))
    _same_tables(out, tmp_path / "fresh")

    # a run that stopped part-way (layers and the last shard unfinished), then a file inserted before the rerun
    for marker in (out / "layers").glob("*/done.json"):
        marker.unlink()
    sorted((out / "embeddings" / "copy").glob("*.done.json"))[-1].unlink()
    write_pngs(tmp_path / "extra2", sample_images("heldout_real", 1))
    (tmp_path / "extra2" / "img_00000.png").rename(gen / "img_00010b.png")  # sorts inside the first shards
    third = run_audit(_cfg(inputs, out))
    assert third.stats["counts"]["copy"]["rows_read"] == 93
    run_audit(_cfg(inputs, tmp_path / "fresh2"))
    _same_tables(out, tmp_path / "fresh2")


@pytest.mark.timeout(600)
def test_scoring_changes_rescore_damaged_shards_are_redone_and_history_is_kept(ray_local, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = run_audit(_cfg(inputs, out))
    rows_first = first.stats["embed"]["rows"]
    assert rows_first == 160 + 100 + 90 + 60

    shard = sorted((out / "embeddings" / "train").glob("shard-*[0-9].parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:200])  # a damaged embedding shard (e.g. a partial copy)
    second = run_audit(_cfg(inputs, out, ct__cells=4))  # only a scoring setting changed
    assert second.stats["embed"]["rows"] == 32  # just the damaged shard, not the whole folder
    cells = pd.read_parquet(out / schema.CT_CELLS_FILE)
    assert set(cells.groupby([schema.GEN_SET, schema.LAYER]).size()) == {4}
    run_audit(_cfg(inputs, tmp_path / "fresh", ct__cells=4))
    _same_tables(out, tmp_path / "fresh")

    run = json.loads((out / schema.RUN_FILE).read_text())
    assert "memray" not in run and run["memray_version"]
    history = run["stats"]["history"]
    assert len(history) == 1 and history[0]["embed"]["rows"] == rows_first  # the first run's stats survive
    assert run["stats"]["resumed"] is True and run["stats"]["embed"]["rows"] == 32
    assert run["stats"]["nodes"] and all(n["host"] for n in run["stats"]["nodes"])
    layer1 = run["stats"]["score"]["layers"]["1"]  # the rank of each layer's training features is recorded
    assert layer1["degenerate"] is False and layer1["train_rank"] == layer1["space_dim"] > 0

    with pytest.raises(ResumeMismatchError, match=r"embed\.pooling: \['cls'\] → \['mean'\]"):
        run_audit(_cfg(inputs, out, embed__pooling=["mean"]))
