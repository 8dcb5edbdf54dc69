"""scripts/make_zoo.py --quick: layout and counts, ground truth against the pixels, disjoint real sets, seeding."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memray.job.config import load_audit_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_zoo.py"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
KINDS = {
    "dcgan": "honest",
    "vae": "honest",
    "pca_gmm": "honest",
    "heldout": "honest",
    "mlp_gan": "honest",
    "kde_wide": "honest",
    "collapsed_gan": "hard_negative",
    "blurry_vae": "hard_negative",
    "dense_sampler": "hard_negative",
    "copy_mix": "memorizer",
    "small_subset_vae": "memorizer",
    "kde": "memorizer",
}
N_TRAIN, N_TEST, N_HELDOUT, N_GEN = 300, 100, 100, 40  # the --quick sizes
pytestmark = pytest.mark.skipif(not FASHION_MNIST.exists(), reason="needs the Debian package dataset-fashion-mnist")


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--quick", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    proc = _run(out, "--seeds", "0", "1")
    assert proc.returncode == 0, proc.stderr
    return out


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (28, 28)
        return np.asarray(im)


def _folder(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: _png(p) for p in sorted(folder.glob("*.png"))}


def _hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(a.tobytes()).hexdigest() for a in _folder(folder).values()}


def _transform(img: np.ndarray, name: str) -> np.ndarray:
    """The documented copy transforms, written out independently of the script."""
    if name == "identity":
        return img
    if name == "hflip":
        return np.fliplr(img)
    if name.startswith("shift_"):
        k, out = int(name[7:]), np.zeros_like(img)
        if name[6] == "x":
            out[:, max(k, 0) : 28 + min(k, 0)] = img[:, max(-k, 0) : 28 - max(k, 0)]
        else:
            out[max(k, 0) : 28 + min(k, 0)] = img[max(-k, 0) : 28 - max(k, 0)]
        return out
    size, x, y = (int(v) for v in re.fullmatch(r"crop(\d+)_x(\d+)_y(\d+)", name).groups())
    assert 24 <= size <= 26 and 0 <= x <= 28 - size and 0 <= y <= 28 - size
    crop = Image.fromarray(img).crop((x, y, x + size, y + size))
    return np.asarray(crop.resize((28, 28), Image.Resampling.BILINEAR))


def test_layout_counts_and_truth_rows(zoo: Path) -> None:
    counts = [len(list((zoo / d).glob("*.png"))) for d in ("train", "test", "heldout")]
    assert counts == [N_TRAIN, N_TEST, N_HELDOUT]
    record = json.loads((zoo / "zoo.json").read_text())
    labels = pd.read_csv(zoo / "labels.csv")
    expected = {f"{k}-s{s}": g for k, g in KINDS.items() for s in (0, 1)}
    assert dict(zip(labels["set"], labels["group"], strict=True)) == expected
    assert {k: v["group"] for k, v in record["kinds"].items()} == KINDS
    for name in expected:
        folder = zoo / "gen" / name
        truth = pd.read_parquet(folder / "truth.parquet")
        assert list(truth["file"]) == sorted(p.name for p in (folder / "images").iterdir()) and len(truth) == N_GEN
        assert {"is_copy", "source_train_file", "transform", "nn_train_file", "nn_l2"} <= set(truth.columns)
        assert truth["is_copy"].dtype == bool
        assert (truth.loc[~truth["is_copy"], ["source_train_file", "transform"]] == "").all().all()
        assert record["sets"][name]["n_copies"] == truth["is_copy"].sum()
        assert record["sets"][name]["train_s"] >= 0 and "sample_seed" in record["sets"][name]
    cfg = load_audit_config(zoo / "audit.yaml")
    assert sorted(g.name for g in cfg.generated) == sorted(expected)
    for g in cfg.generated:  # the audit reads the image folders only: no truth or subset file among the inputs
        assert {p.suffix for p in Path(g.urls[0]).iterdir()} == {".png"} and g.label == g.name.rsplit("-s", 1)[0]


def test_copy_mix_copies_equal_their_transformed_source(zoo: Path) -> None:
    families = set()
    for seed in (0, 1):
        folder = zoo / "gen" / f"copy_mix-s{seed}"
        truth = pd.read_parquet(folder / "truth.parquet")
        copies = truth[truth["is_copy"]]
        assert len(copies) == round(0.3 * N_GEN) and copies["source_train_file"].is_unique
        for row in copies.itertuples():
            source = _png(zoo / "train" / row.source_train_file)
            np.testing.assert_array_equal(
                _png(folder / "images" / row.file), _transform(source, row.transform), row.transform
            )
            families.add(row.transform.split("_")[0].rstrip("0123456789"))
        honest = truth[~truth["is_copy"]]
        assert (honest["nn_l2"] > 0).all()  # no accidental exact copies among the mixture samples
    assert families == {"identity", "hflip", "shift", "crop"}


def test_kde_and_subset_truth(zoo: Path) -> None:
    truth = pd.read_parquet(zoo / "gen" / "kde-s0" / "truth.parquet")
    assert truth["is_copy"].all() and (truth["transform"] == "noise_sigma0.15").all()
    residuals = []
    for row in truth.itertuples():
        src = _png(zoo / "train" / row.source_train_file).astype(float)
        inside = (src > 60) & (src < 195)  # unclipped pixels: residual = noise of std 0.15 * 255
        residuals.append((_png(zoo / "gen" / "kde-s0" / "images" / row.file) - src)[inside])
    assert 0.13 * 255 < np.concatenate(residuals).std() < 0.17 * 255
    folder = zoo / "gen" / "small_subset_vae-s0"
    subset = (folder / "subset.txt").read_text().split()
    assert len(subset) == len(set(subset)) == 50 and set(subset) <= {p.name for p in (zoo / "train").glob("*.png")}
    truth = pd.read_parquet(folder / "truth.parquet")
    np.testing.assert_array_equal(truth["nn_in_subset"], truth["nn_train_file"].isin(subset))
    np.testing.assert_array_equal(truth["is_copy"], truth["nn_in_subset"])
    assert set(truth["latent_source_file"]) <= set(subset)


def test_the_added_honest_kinds_are_written_as_honest_and_copy_nothing(zoo: Path) -> None:
    """mlp_gan and kde_wide build in --quick mode, sit in group honest, flag no copy, and kde_wide's samples are as far
    from T as the held-out real images are (its kernel centres are training images, its samples are not copies)."""
    record = json.loads((zoo / "zoo.json").read_text())
    labels = pd.read_csv(zoo / "labels.csv").set_index("set")["group"]
    train_names = {p.name for p in (zoo / "train").glob("*.png")}
    for seed in (0, 1):
        for kind in ("mlp_gan", "kde_wide"):
            name = f"{kind}-s{seed}"
            truth = pd.read_parquet(zoo / "gen" / name / "truth.parquet")
            assert labels[name] == "honest" and record["sets"][name]["group"] == "honest"
            assert len(truth) == N_GEN and not truth["is_copy"].any() and (truth["nn_l2"] > 0).all()
        kde = pd.read_parquet(zoo / "gen" / f"kde_wide-s{seed}" / "truth.parquet")
        assert set(kde["kernel_train_file"]) <= train_names
        held = pd.read_parquet(zoo / "gen" / f"heldout-s{seed}" / "truth.parquet")
        assert kde["nn_l2"].median() >= 0.9 * held["nn_l2"].median()
        assert record["sets"][f"mlp_gan-s{seed}"]["model"] == "mlp_gan"


def test_nearest_training_image_is_exact(zoo: Path) -> None:
    train = _folder(zoo / "train")
    names, stack = list(train), np.stack(list(train.values())).reshape(len(train), -1).astype(np.int64)
    for name in ("dense_sampler-s1", "kde-s0"):
        truth = pd.read_parquet(zoo / "gen" / name / "truth.parquet")
        for row in truth.itertuples():
            d2 = ((stack - _png(zoo / "gen" / name / "images" / row.file).reshape(-1).astype(np.int64)) ** 2).sum(1)
            assert row.nn_train_file == names[int(d2.argmin())]
            assert row.nn_l2 == pytest.approx(np.sqrt(d2.min()) / 255.0, rel=1e-9, abs=1e-9)


def test_real_sets_are_disjoint_by_pixels(zoo: Path) -> None:
    train, test, heldout = (_hashes(zoo / d) for d in ("train", "test", "heldout"))
    assert len(train) == N_TRAIN and len(test) == N_TEST and len(heldout) == N_HELDOUT
    assert not heldout & test and not heldout & train and not test & train
    for seed in (0, 1):
        drawn = _hashes(zoo / "gen" / f"heldout-s{seed}" / "images")
        assert len(drawn) == N_GEN and drawn <= heldout
    assert all(int(p.stem.split("-")[1]) < 5000 for p in (zoo / "test").glob("*.png"))
    assert all(int(p.stem.split("-")[1]) >= 5000 for p in (zoo / "heldout").glob("*.png"))


def test_seeds_reproduce_and_differ(zoo: Path, tmp_path: Path) -> None:
    kinds = ("dcgan", "collapsed_gan", "small_subset_vae", "copy_mix")
    proc = _run(tmp_path, "--seeds", "1", "--only", *kinds)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == sorted(f"{k}-s1" for k in kinds)
    for kind in kinds:
        again, first = (
            _folder(tmp_path / "gen" / f"{kind}-s1" / "images"),
            _folder(zoo / "gen" / f"{kind}-s1" / "images"),
        )
        assert list(again) == list(first)
        for name in first:
            np.testing.assert_array_equal(again[name], first[name], f"{kind}-s1/{name}")
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "gen" / f"{kind}-s1" / "truth.parquet"),
            pd.read_parquet(zoo / "gen" / f"{kind}-s1" / "truth.parquet"),
        )
        other = _folder(zoo / "gen" / f"{kind}-s0" / "images")
        assert any(not np.array_equal(other[n], first[n]) for n in first)


def test_missing_dataset_is_one_line(tmp_path: Path) -> None:
    proc = _run(tmp_path / "out", "--fashion-mnist", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "dataset-fashion-mnist" in proc.stderr
