"""Checks before anything starts: inputs, sizes, capacity, galleries; a failed check writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray_helpers import audit_config, make_inputs, save_weights

from memray.config import to_dict
from memray.fingerprint.curves import write_gallery
from memray.fingerprint.match import Gallery
from memray.io.sources import SourceError
from memray.job.config import ResourcesConfig
from memray.job.preflight import PreflightError, gallery_comparable, preflight, set_rows
from memray.ray.session import CapacityError, check_capacity

REPO = Path(__file__).resolve().parents[1]


def test_preflight_lists_every_set_and_counts_rows_cheaply(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    (tmp_path / "in" / "train" / "notes.txt").write_text("not an image")
    checked = preflight(audit_config(inputs, str(tmp_path / "out")))
    assert {k: len(v) for k, v in checked.plans.items()} == {"train": 4, "test": 1, "copy": 1, "real": 1}
    assert checked.known_rows == {"train": 240, "test": 120, "copy": 90, "real": 90}  # files + .npz headers
    assert [Path(u).name for u, _ in checked.skipped["train"]] == ["notes.txt"]
    assert set_rows(checked.plans["copy"], None) == 90
    assert not (tmp_path / "out").exists()  # nothing written


def test_preflight_fails_on_a_missing_input_before_writing(tmp_path: Path) -> None:
    inputs = {**make_inputs(tmp_path / "in"), "real": str(tmp_path / "in" / "typo.npz")}
    with pytest.raises(SourceError, match=r"typo\.npz"):
        preflight(audit_config(inputs, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_set_holding_no_sample_is_refused_naming_its_files(tmp_path: Path) -> None:
    import dataclasses

    from memray.io.config import DatasetSpec
    from memray.io.features import FeatureSet, write_features

    inputs = make_inputs(tmp_path / "in")
    empty_npz = tmp_path / "in" / "none.npz"
    np.savez(empty_npz, images=np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(PreflightError, match=rf"^set 'real': its inputs hold 0 images \({empty_npz}\); give at least"):
        preflight(audit_config({**inputs, "real": str(empty_npz)}, str(tmp_path / "out")))
    empty = tmp_path / "emb" / "e.parquet"
    write_features(str(empty), FeatureSet(np.array([], dtype=object), {1: np.zeros((0, 4), np.float32)}))
    cfg = audit_config(inputs, str(tmp_path / "out"))
    cfg = dataclasses.replace(cfg, generated=(DatasetSpec(name="g", embeddings=(str(empty),)),), embed=None,
                              train=DatasetSpec(name="train", embeddings=(str(empty),)))  # fmt: skip
    with pytest.raises(PreflightError, match=rf"^set 'train': its inputs hold 0 embedding rows \({empty}\)"):
        preflight(dataclasses.replace(cfg, test=DatasetSpec(name="test", embeddings=(str(empty),))))
    assert not (tmp_path / "out").exists()


def test_subset_size_larger_than_a_generated_set_is_refused(tmp_path: Path) -> None:
    cfg = audit_config(make_inputs(tmp_path / "in"), str(tmp_path / "out"), fingerprint={"subset_size": 100})
    with pytest.raises(PreflightError, match=r"subset_size=100 .*copy \(90\), real \(90\)"):
        preflight(cfg)


def test_an_encoder_input_the_model_cannot_take_fails_before_writing(tmp_path: Path) -> None:
    from memray.embedding.embed import EmbedError

    fixed = {"img_size": 32, "dynamic_img_size": False}  # test_vit takes any size unless built otherwise
    cfg = audit_config(make_inputs(tmp_path / "in"), str(tmp_path / "out"), embed__model_kwargs=fixed, embed__crop=48)
    with pytest.raises(EmbedError, match=r"^test_vit does not take the 3x48x48 input [^\n]*embed\.crop[^\n]*$"):
        preflight(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("resources", "total", "match"),
    [
        ({"actors": 2, "actor_num_cpus": 1.0}, {"CPU": 2.0}, "exceeds the cluster's 2 CPUs"),
        ({"actors": 1, "actor_num_cpus": 2.0}, {"CPU": 2.0}, "would wait forever"),
        ({"actors": 1, "actor_num_gpus": 1.0, "actor_num_cpus": 0.5}, {"CPU": 2.0}, "exceeds the cluster's 0 GPUs"),
        ({"actor_resources": {"A100": 1}, "actor_num_cpus": 0.5}, {"CPU": 4.0}, "no node offers A100=1"),
    ],
)
def test_capacity_check_refuses_a_pool_that_would_hang(resources: dict, total: dict, match: str) -> None:
    with pytest.raises(CapacityError, match=match):
        check_capacity(ResourcesConfig(**resources), total)


def test_capacity_check_accepts_a_pool_that_fits() -> None:
    check_capacity(ResourcesConfig(actors=1, actor_num_cpus=1.0, read_num_cpus=0.25), {"CPU": 2.0})
    check_capacity(ResourcesConfig(actors=4, actor_num_cpus=1.0, autoscaling=True), {"CPU": 2.0})


def test_gallery_from_another_encoder_is_refused_naming_the_fields(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    made = audit_config(inputs, str(tmp_path / "a"), fingerprint={"subset_size": 45}, embed__pooling=["mean"])
    gallery = Gallery(np.array(["g1"]), np.array(["kde"], dtype=object), np.zeros((1, 6)), [1, 2, 3, 4, 5, 6],
                      np.array(["g1"]))  # fmt: skip
    url = str(tmp_path / "gallery.parquet")
    from memray.embedding.embed import describe_preprocessing

    write_gallery(url, gallery, {"job": gallery_comparable(made, describe_preprocessing(made.embed))})
    ours = audit_config(inputs, str(tmp_path / "b"), fingerprint={"subset_size": 45, "gallery": url})
    with pytest.raises(PreflightError, match=r"embed\.pooling: \['mean'\] → \['cls'\]"):
        preflight(ours)
    preflight(ours, allow_gallery_mismatch=True)  # explicitly allowed: a warning, no error
    same = audit_config(inputs, str(tmp_path / "c"), fingerprint={"subset_size": 45, "gallery": url},
                        embed__pooling=["mean"])  # fmt: skip
    preflight(same)


def test_a_published_curve_gallery_with_method_curve_fd_is_refused_before_the_job(tmp_path: Path) -> None:
    """A gallery of C_T values only (no FD-to-test profile) cannot serve curve_fd: one line at preflight; auto and
    curve accept it."""
    inputs = make_inputs(tmp_path / "in")
    gallery = Gallery(np.array(["g1"]), np.array(["kde"], dtype=object), np.zeros((1, 6)), [1, 2, 3, 4, 5, 6])
    url = str(tmp_path / "gallery.parquet")
    write_gallery(url, gallery)
    fp = {"subset_size": 45, "gallery": url, "method": "curve_fd"}
    fd = audit_config(inputs, str(tmp_path / "a"), fingerprint=fp)
    with pytest.raises(ValueError, match=r"built with fingerprint\.method=curve, this run asks for curve_fd") as exc:
        preflight(fd)
    assert "\n" not in str(exc.value)
    for method in ("auto", "curve"):
        preflight(audit_config(inputs, str(tmp_path / method), fingerprint={"subset_size": 45, "gallery": url,
                                                                              "method": method}))  # fmt: skip


def test_cli_user_errors_end_with_one_line_exit_2_before_ray_starts(tmp_path: Path) -> None:
    inputs = {**make_inputs(tmp_path / "in"), "train": str(tmp_path / "in" / "trian")}
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(audit_config(inputs, str(tmp_path / "out")))))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "audit.py"), "--config", str(cfg_file)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "trian" in errors[0] and "Traceback" not in proc.stderr
    assert "started a local Ray" not in proc.stderr and took < 60
    assert not (tmp_path / "out").exists()  # the output folder was not claimed: fixing the typo just works


def test_fingerprint_attribute_refuses_curves_made_with_another_config(tmp_path: Path, capsys) -> None:
    from memray.cli import main

    inputs = make_inputs(tmp_path / "in")
    from memray.embedding.embed import describe_preprocessing

    def job(**kw):
        cfg = audit_config(inputs, str(tmp_path / "x"), fingerprint={"subset_size": 45}, **kw)
        return gallery_comparable(cfg, describe_preprocessing(cfg.embed))

    curves = Gallery(np.array(["a", "b"]), np.array(["kde", "real"], dtype=object), np.arange(12.0).reshape(2, 6),
                     [1, 2, 3, 4, 5, 6], np.array(["a", "b"]))  # fmt: skip
    gallery, queries = str(tmp_path / "gallery.parquet"), str(tmp_path / "queries.parquet")
    write_gallery(gallery, curves, {"job": job()})
    write_gallery(queries, curves, {"job": job(ct__cells=4)})
    assert main(["fingerprint", "attribute", "--gallery", gallery, "--queries", queries]) == 2
    err = capsys.readouterr().err
    assert "ct.cells: 3 → 4" in err and err.count("\n") == 1
    assert main(["fingerprint", "attribute", "--gallery", gallery, "--queries", queries, "--allow-mismatch"]) == 0
    write_gallery(queries, curves, {"job": job()})
    assert main(["fingerprint", "attribute", "--gallery", gallery, "--queries", queries]) == 0


def test_output_folder_of_another_embed_config_is_refused_before_ray(tmp_path: Path) -> None:
    from memray.job.resume import ResumeMismatchError, claim_output

    inputs = make_inputs(tmp_path / "in")
    claim_output(audit_config(inputs, str(tmp_path / "out")), None)
    with pytest.raises(ResumeMismatchError, match=r"embed\.norm: False → True"):
        preflight(audit_config(inputs, str(tmp_path / "out"), embed__norm=True))
    preflight(audit_config(inputs, str(tmp_path / "out"), ct__cells=5))  # scoring changes are fine


def test_gallery_made_with_other_weights_at_the_same_path_is_refused(tmp_path: Path) -> None:
    from memray.embedding.embed import describe_preprocessing
    from memray.job.resume import planned_weights

    inputs = make_inputs(tmp_path / "in")
    weights = save_weights(tmp_path / "w" / "encoder.safetensors", seed=1)
    fp = {"subset_size": 45}
    made = audit_config(inputs, str(tmp_path / "a"), fingerprint=fp, embed__weights=weights, embed__random_init=False)
    gallery = Gallery(np.array(["g1"]), np.array(["kde"], dtype=object), np.zeros((1, 6)), [1, 2, 3, 4, 5, 6],
                      np.array(["g1"]))  # fmt: skip
    url = str(tmp_path / "gallery.parquet")
    job = gallery_comparable(made, describe_preprocessing(made.embed), planned_weights(made, None))
    write_gallery(url, gallery, {"job": job})
    ours = audit_config(inputs, str(tmp_path / "b"), fingerprint={**fp, "gallery": url}, embed__weights=weights,
                        embed__random_init=False)  # fmt: skip
    preflight(ours)  # the same checkpoint: comparable
    moved = tmp_path / "elsewhere" / "encoder.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(Path(weights).read_bytes())
    preflight(audit_config(inputs, str(tmp_path / "c"), fingerprint={**fp, "gallery": url}, embed__weights=str(moved),
                           embed__random_init=False))  # fmt: skip  # the same bytes elsewhere: comparable
    old = job["embed"]["weights_digest"]["sha256"]
    save_weights(Path(weights), seed=2)  # another checkpoint at the same path
    with pytest.raises(PreflightError, match=rf"embed\.weights_digest\.sha256: '{old}' → '[0-9a-f]{{64}}'"):
        preflight(ours)


@pytest.mark.parametrize("role", ["train", "test", "generated"])
def test_repeated_sample_ids_of_an_embeddings_set_are_refused_naming_them(tmp_path: Path, role: str) -> None:
    from memray.io.embedding_inputs import EmbeddingInputError
    from memray.io.features import FeatureSet, write_features

    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    sets = {}
    for name in ("train", "test", "copy"):
        ids = np.array([f"{name}_{i:03d}" for i in range(40)], dtype=object)
        if name == {"generated": "copy"}.get(role, role):  # rows 20-25 repeat rows 0-5 (another file), 30 repeats 31
            ids[20:26], ids[30] = ids[0:6], ids[31]
        (tmp_path / name).mkdir()
        write_features(str(tmp_path / name / "a.parquet"), FeatureSet(ids[:20], {1: x[:20]}))
        write_features(str(tmp_path / name / "b.parquet"), FeatureSet(ids[20:], {1: x[20:]}))
        sets[name] = {"name": name, "embeddings": [str(tmp_path / name)]}
    unused = dict.fromkeys(("train", "test", "copy", "real"), "unused")
    cfg = audit_config(unused, str(tmp_path / "out"), train=sets["train"], test=sets["test"],
                       generated=[sets["copy"]], embed=None)  # fmt: skip
    with pytest.raises(EmbeddingInputError) as info:
        preflight(cfg)
    name = {"generated": "copy"}.get(role, role)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"set {name!r}: 7 sample id(s) occur more than once")
    shown = [f"{name}_{i:03d}" for i in (0, 1, 2, 3, 4)]
    assert str(shown) in text and "a.parquet and " in text and "b.parquet" in text
