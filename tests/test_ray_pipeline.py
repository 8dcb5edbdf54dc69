"""The audit job on a real local Ray: equals the in-process engine, resumes, refuses foreign outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from ray_helpers import audit_config, make_inputs, sample_images, write_npz

from memray.config import to_dict
from memray.embedding.embed import LayerEmbedder, make_prepare
from memray.embedding.pixels import with_pixels
from memray.fingerprint.curve_run import compute_curves, plan_subsets, with_profiles
from memray.fingerprint.fd_profile import FD_TEST, log_fd_to_test
from memray.fingerprint.fid import feature_stats
from memray.io import schema
from memray.io.config import DatasetSpec
from memray.io.features import FeatureSet, write_features
from memray.io.finite import NonFiniteError
from memray.io.shards import STATUS_OK, plan_shards, read_shard
from memray.job.evidence import fid_attribution
from memray.ray.pipeline import ResumeMismatchError, run_audit
from memray.stats.layers import score_features
from memray.stats.results import JOB_KEYS, write_results
from memray.stats.score import fit_layer

REPO = Path(__file__).resolve().parents[1]


def in_process_features(cfg, spec) -> FeatureSet:
    """Decode, prepare and embed a set without Ray, with the same pure functions the job's stages call (pixel space
    included, as the job keeps it)."""
    prepare = make_prepare(cfg.embed)
    rows = [r for p in plan_shards(spec, cfg.resources.shard_rows) for r in read_shard(p, prepare, 10**8)]
    assert all(r[schema.STATUS] == STATUS_OK for r in rows)
    embedder = LayerEmbedder(cfg.embed, num_threads=1)
    images = np.stack([r["image"] for r in rows])
    feats = with_pixels(embedder.embed_prepared(images), images, cfg.evidence.pixels)
    return FeatureSet(np.array([r[schema.SAMPLE_ID] for r in rows], dtype=object), feats, spec.name)


@pytest.mark.timeout(300)
def test_ray_job_equals_in_process_engine(ray_local, tmp_path: Path) -> None:
    cfg = audit_config(make_inputs(tmp_path / "in"), str(tmp_path / "out"), fingerprint={"subset_size": 45})
    result = run_audit(cfg)
    assert len(result.stats["counts"]) == 4 and result.stats["counts"]["train"]["rows_embedded"] == 240
    assert len(list((tmp_path / "out" / "embeddings" / "train").glob("*.done.json"))) == 4  # 240 files / 64 rows
    assert not list((tmp_path / "out" / "embeddings").rglob("*.parts"))  # the actors' part files were merged
    feature_bytes = 540 * 6 * 64 * 4  # 540 images × 6 layers × 64-d float32: none of it went through the driver
    assert 0 < result.stats["embed"]["driver_bytes"] < feature_bytes / 20
    emb = result.stats["embed"]  # where the stage's seconds went: start-up, first batch, the actors' forward passes
    assert 0 < emb["actor_start_seconds"] <= emb["first_forward_seconds"] <= emb["seconds"]
    assert 0 < emb["forward_seconds"] <= emb["seconds"] * cfg.resources.actors

    train, test = in_process_features(cfg, cfg.train), in_process_features(cfg, cfg.test)
    gens = {g.name: in_process_features(cfg, g) for g in cfg.generated}
    ref = score_features(train, test, gens, cfg.ct)
    got = pd.read_parquet(tmp_path / "out" / schema.CT_SCORES_FILE)
    assert len(got) == 2 * 6  # two generated sets × the six blocks of test_vit
    pd.testing.assert_frame_equal(got, ref.ct_scores, check_dtype=False, atol=1e-9, rtol=0)
    copy, real = (got[got[schema.GEN_SET] == n][schema.CT].to_numpy() for n in ("copy", "real"))
    assert (copy < real).all()  # near-copies of training images sit closer to the training set than real images
    run = json.loads((tmp_path / "out" / schema.RUN_FILE).read_text())
    assert run["job_config"]["embed"]["model"] == "test_vit" and run["preprocessing"]["preset"] == "paper"
    write_results(str(tmp_path / "ref"), ref, {k: run[k] for k in JOB_KEYS})  # the job's record, as the job did
    meta = json.loads(pq.read_schema(tmp_path / "out" / schema.CT_SCORES_FILE).metadata[schema.META_KEY])
    assert meta["job"]["job_config"]["embed"]["random_init"] is True and meta["config"]["cells"] == 3
    for name in (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE):  # the very same bytes
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    # neighbors: the encoder's layers bit for bit; pixel space (256-d, whose projection runs in tasks with other BLAS
    # threading than this process) to 1e-12 relative
    nb_job, nb_ref = (pd.read_parquet(tmp_path / d / schema.NEIGHBORS_FILE) for d in ("out", "ref"))
    pix = nb_job[schema.LAYER] == schema.PIXEL_LAYER
    assert pix.sum() == 300 and nb_job[~pix].equals(nb_ref[~pix])
    pd.testing.assert_frame_equal(nb_job[pix], nb_ref[pix], check_exact=False, rtol=1e-12, atol=0)
    # fingerprints: per-subset curves from the job equal curves computed in-process from the same fits
    fitted = {ell: fit_layer(ell, train.layers[ell], train.ids, test.layers[ell], cfg.ct, test_ids=test.ids)
              for ell in sorted(train.layers) if ell != schema.PIXEL_LAYER}  # fmt: skip
    curves = compute_curves(fitted, gens, {g.name: g.label for g in cfg.generated}, cfg.fingerprint)
    fp = pd.read_parquet(tmp_path / "out" / schema.FINGERPRINTS_FILE)
    assert len(fp) == 2 * 2 * 6  # 2 sets × 2 subsets of 45 × 6 layers
    pd.testing.assert_frame_equal(fp.drop(columns=FD_TEST), curves, check_dtype=False, atol=1e-12, rtol=0)
    # the default method (auto → curve_fd): each curve's log FD to the test set, computed in tasks, as in process
    plan = plan_subsets({n: len(g) for n, g in gens.items()}, cfg.fingerprint)
    want = {(n, ell): [log_fd_to_test(g.layers[ell][idx], feature_stats(test.layers[ell])) for idx in plan[n]]
            for n, g in gens.items() for ell in fitted}  # fmt: skip
    np.testing.assert_allclose(fp[FD_TEST], with_profiles(curves, want)[FD_TEST], rtol=1e-9, atol=0)
    assert run["fingerprint_method"] == "curve_fd"
    assert run["config"]["metric"] == "l2" and run["stats"]["counts"]["copy"]["rows_read"] == 90

    # same config, same output: everything is reused and the tables are byte-identical
    before = (tmp_path / "out" / schema.CT_SCORES_FILE).read_bytes()
    again = run_audit(cfg)
    assert again.stats["embed"]["rows"] == 0  # no shard recomputed
    assert (tmp_path / "out" / schema.CT_SCORES_FILE).read_bytes() == before


@pytest.mark.timeout(300)
def test_fid_baseline_from_per_set_statistics_computed_in_tasks(ray_local, tmp_path: Path) -> None:
    """An unlabelled set is attributed by FID-nearest from each set's feature statistics, computed by a task that
    reads the set's feature files; the same attribution as from the features embedded in process."""
    cfg = audit_config(make_inputs(tmp_path / "in"), str(tmp_path / "out"), fingerprint={"subset_size": 45})
    cfg = dataclasses.replace(cfg, generated=(cfg.generated[0], dataclasses.replace(cfg.generated[1], label=None)))
    result = run_audit(cfg)
    got = pd.read_parquet(tmp_path / "out" / schema.ATTRIBUTION_FID_FILE)
    last = max(result.stats["layers"])
    feats = {g.name: in_process_features(cfg, g).layers[last] for g in cfg.generated}
    want = fid_attribution(feats, {g.name: g.label for g in cfg.generated}, f"FID-nearest (layer {last})")
    assert got[schema.QUERY].tolist() == ["real"] and got[schema.PREDICTED].tolist() == ["kde"]
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()), rtol=1e-9)  # None → the file's null


@pytest.mark.timeout(120)
def test_other_config_into_same_output_is_refused(ray_local, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"digest": "000000000000", "config": {}}))
    with pytest.raises(ResumeMismatchError, match="new output folder"):
        run_audit(audit_config(inputs, str(out)))


def _done_markers(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("embeddings/*/*.done.json")}


@pytest.mark.timeout(420)
def test_killed_job_resumes_to_identical_tables(tmp_path: Path) -> None:
    """SIGKILL the job after some shards, rerun, compare with a clean run; finished shards are not redone."""
    inputs = make_inputs(tmp_path / "in")
    cfg = audit_config(inputs, str(tmp_path / "killed"), resources__shard_rows=16, resources__embed_batch_size=8)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, str(REPO / "jobs" / "audit.py"), "--config", str(cfg_file), "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = tmp_path / "killed"
    deadline = time.monotonic() + 240
    while len(_done_markers(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    done_at_kill = _done_markers(out)
    assert len(done_at_kill) >= 3, "the job did not get far enough to be killed mid-way"
    assert not (out / schema.CT_SCORES_FILE).exists(), "the job finished before it could be killed"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "took over the claim of" in rerun.stderr and "is gone" in rerun.stderr  # the killed run's claim
    # output hygiene: a progress line per finished shard; no Ray actor-restart noise, no FAISS warnings
    assert "rows/s, ETA" in rerun.stderr and "shards (" in rerun.stderr
    assert "constructor arguments in the object store" not in rerun.stderr
    assert "WARNING clustering" not in rerun.stderr
    assert "faiss.loader" not in rerun.stderr  # FAISS' per-CPU-variant loading messages
    assert rerun.stdout.count("rows read") == 0  # the counts are logged once, not repeated by the summary
    after = _done_markers(out)
    assert all(after[k] == v for k, v in done_at_kill.items())  # finished shards were skipped, not rewritten

    clean_cfg = tmp_path / "clean.yaml"
    clean_cfg.write_text(yaml.safe_dump({**to_dict(cfg), "output": str(tmp_path / "clean")}))
    clean = subprocess.run([*cmd[:3], str(clean_cfg), *cmd[4:]], env=env, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    for name in (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def _features(path: Path, prefix: str, n: int, bad: dict[int, list[int]], value: float) -> str:
    rng = np.random.default_rng(n)
    layers = {ell: rng.normal(size=(n, 8)).astype(np.float32) for ell in (1, 2, 3)}
    for ell, rows in bad.items():
        layers[ell][rows, 0] = value
    write_features(str(path), FeatureSet(np.array([f"{prefix}{i}" for i in range(n)], dtype=object), layers))
    return str(path)


@pytest.mark.timeout(300)
def test_nan_embeddings_of_any_set_are_refused_before_any_layer_is_scored(ray_local, tmp_path: Path) -> None:
    train = _features(tmp_path / "train.parquet", "t", 60, {3: [5, 17]}, np.nan)  # layer 3 only: 1 and 2 are fine
    test = _features(tmp_path / "test.parquet", "p", 30, {}, 0.0)
    gen = _features(tmp_path / "gen.parquet", "g", 30, {2: [4]}, np.inf)
    cfg = audit_config({"train": "-", "test": "-", "copy": "-", "real": "-"}, str(tmp_path / "out"))
    cfg = dataclasses.replace(
        cfg,
        train=DatasetSpec(name="train", embeddings=(train,)),
        test=DatasetSpec(name="test", embeddings=(test,)),
        generated=(DatasetSpec(name="gen", embeddings=(gen,), label="x"),),
        embed=None,
    )
    with pytest.raises(NonFiniteError) as err:
        run_audit(cfg)
    msg = str(err.value)
    assert f"set 'train' layer 3: 2 row(s) in {train} (sample ids: t5, t17)" in msg
    assert f"set 'gen' layer 2: 1 row(s) in {gen} (sample ids: g4)" in msg
    assert not (tmp_path / "out" / "layers").exists()  # no layer was scored


@pytest.mark.timeout(420)
def test_an_encoder_giving_nan_is_refused_before_scoring_naming_the_images(ray_local, tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    model = timm.create_model("test_vit", pretrained=False, img_size=32)
    state = model.state_dict()
    state["blocks.3.mlp.fc2.bias"] = torch.full_like(state["blocks.3.mlp.fc2.bias"], float("nan"))  # layers 4-6
    save_file(state, str(tmp_path / "nan.safetensors"))
    inputs = {name: write_npz(tmp_path / "in" / f"{name}.npz", sample_images(src, n))
              for name, src, n in (("train", "train", 40), ("test", "test", 20), ("copy", "kde_copy_bw8", 20),
                                   ("real", "heldout_real", 20))}  # fmt: skip
    out = tmp_path / "out"
    cfg = audit_config(inputs, str(out), embed__random_init=False, embed__weights=str(tmp_path / "nan.safetensors"))
    with pytest.raises(NonFiniteError) as err:
        run_audit(cfg)
    shard = out / "embeddings" / "train" / "shard-00000.parquet"
    ids = pq.read_table(shard, columns=[schema.SAMPLE_ID]).column(0).to_pylist()
    marker = json.loads((out / "embeddings" / "train" / "shard-00000.done.json").read_text())
    assert marker["nonfinite"] == {str(ell): [40, ids[:10]] for ell in (4, 5, 6)}  # counted by the actors
    assert f"set 'train' layer 4: 40 row(s) in {shard} (sample ids: {', '.join(ids[:10])}, …)" in str(err.value)
    assert not (out / "layers").exists()


def test_a_set_without_embedded_rows_says_whether_it_had_images() -> None:
    from memray.job.collect import check_embedded, set_counts

    cfg = audit_config({"train": "-", "test": "-", "copy": "-", "real": "-"}, "/out")
    pieces = {"train": [("t", 5)], "test": [("p", 5)], "copy": [("c", 5)]}
    failed = {"real": set_counts(read=7, reported=7)}
    with pytest.raises(ValueError, match=r"^set 'real': none of its 7 image\(s\) could be embedded; see errors"):
        check_embedded(cfg, failed, pieces)
    nothing = {"real": set_counts(skipped=2)}
    msg = r"^set 'real': its inputs hold no image or embedding row \(2 file\(s\) skipped: see errors\.parquet\)"
    with pytest.raises(ValueError, match=msg):
        check_embedded(cfg, nothing, pieces)
    check_embedded(cfg, failed, {**pieces, "real": [("r", 1)]})
