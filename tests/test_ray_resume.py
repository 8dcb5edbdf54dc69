"""Resume on a real local Ray: inputs, weights and scoring settings that changed, damaged shards, run history."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray_helpers import HUB_REPO, audit_config, fake_hub_cache, sample_images, save_weights, write_npz, write_pngs
from test_ray_pipeline import in_process_features

from memray.cli import _user_message
from memray.io import schema
from memray.job.preflight import preflight
from memray.job.resume import ResumeMismatchError
from memray.ray.pipeline import run_audit
from memray.stats.layers import score_features

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


def _weights_cfg(inputs: dict[str, str], out: Path, weights: str, **kw):
    return _cfg(inputs, out, embed__weights=weights, embed__random_init=False, **kw)


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.timeout(600)
def test_weights_replaced_in_place_are_embedded_again(ray_local, tmp_path: Path) -> None:
    """Another checkpoint at the same path: the second run into the same folder embeds every set again and equals
    the in-process audit with the new weights; a file replaced while a job runs fails it in one line."""
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    weights = save_weights(tmp_path / "w" / "encoder.safetensors", seed=1)
    cfg = _weights_cfg(inputs, out, weights)
    run_audit(cfg)
    first = pd.read_parquet(out / schema.CT_SCORES_FILE)

    save_weights(Path(weights), seed=2)  # a retrained checkpoint written over the old one
    second = run_audit(cfg)
    assert second.stats["embed"]["rows"] == 160 + 100 + 90 + 60  # every set embedded again, none reused
    sets = {s.name: in_process_features(cfg, s) for s in cfg.sets}
    expected = score_features(sets["train"], sets["test"], {g.name: sets[g.name] for g in cfg.generated}, cfg.ct)
    got = pd.read_parquet(out / schema.CT_SCORES_FILE)
    pd.testing.assert_frame_equal(got, expected.ct_scores, check_dtype=False, atol=1e-9, rtol=0)
    assert not np.allclose(got[schema.CT], first[schema.CT])  # the new weights do give other numbers
    verdicts = pd.read_parquet(out / schema.VERDICTS_FILE)
    assert verdicts[schema.VERDICT].tolist() == expected.verdicts[schema.VERDICT].tolist()
    new = _sha256(weights)
    run = json.loads((out / schema.RUN_FILE).read_text())
    assert run["weights"]["sha256"] == new and run["weights"]["url"] == weights
    for marker in out.glob("embeddings/*/*.done.json"):
        assert json.loads(marker.read_text())["weights"]["sha256"] == new

    checked = preflight(_weights_cfg(inputs, tmp_path / "mid", weights))  # planned with the current file …
    save_weights(Path(weights), seed=3)  # … replaced before the actors load it
    with pytest.raises(ValueError) as info:
        run_audit(_weights_cfg(inputs, tmp_path / "mid", weights), checked=checked)
    message = _user_message(info.value)
    assert "\n" not in message and weights in message and "changed while the job ran" in message
    assert f"sha256 {new[:12]}… when the job started, sha256 {_sha256(weights)[:12]}…" in message
    assert not list((tmp_path / "mid").glob("embeddings/*/*.done.json"))  # nothing embedded with either file


@pytest.mark.timeout(600)
def test_hub_weights_are_known_by_their_state_digest(tmp_path: Path) -> None:
    """Hub weights (an offline hub cache, given to a Ray of its own): the markers record hub id, revision and
    state-dict digest; when the hub's ``main`` moves to another checkpoint, the rerun embeds everything again."""
    import ray

    cache = tmp_path / "hub"
    fake_hub_cache(cache, "a" * 40, seed=1)
    if ray.is_initialized():
        ray.shutdown()  # the shared Ray's workers do not see this hub cache; the next test starts a fresh one
    ray.init(address="local", num_cpus=2, object_store_memory=512 * 1024**2, include_dashboard=False,
             log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}})  # fmt: skip
    try:
        inputs = _inputs(tmp_path / "in")
        out = tmp_path / "out"
        cfg = _cfg(inputs, out, embed__random_init=False)  # neither weights nor random_init: the model hub
        run_audit(cfg)
        marker = json.loads(next(out.glob("embeddings/train/*.done.json")).read_text())["weights"]
        assert marker["source"] == "hub" and marker["hf_hub_id"] == HUB_REPO and marker["revision"] == "a" * 40

        new_file = fake_hub_cache(cache, "b" * 40, seed=2)  # the hub's main now holds another checkpoint
        second = run_audit(cfg)
        assert second.stats["embed"]["rows"] == 160 + 100 + 90 + 60  # every set embedded again
        run = json.loads((out / schema.RUN_FILE).read_text())["weights"]
        assert run["revision"] == "b" * 40 and run["state_sha256"] != marker["state_sha256"]
        as_file = _weights_cfg(inputs, tmp_path / "unused", new_file)  # the same tensors, read from the file
        sets = {s.name: in_process_features(as_file, s) for s in as_file.sets}
        expected = score_features(sets["train"], sets["test"], {g.name: sets[g.name] for g in cfg.generated}, cfg.ct)
        got = pd.read_parquet(out / schema.CT_SCORES_FILE)
        pd.testing.assert_frame_equal(got, expected.ct_scores, check_dtype=False, atol=1e-9, rtol=0)
    finally:
        ray.shutdown()
