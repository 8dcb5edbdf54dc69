"""memray/job/score.py: the layer-folder sink resumes `memray score` like the job, keyed by the features' content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memray.cli import main
from memray.io.features import FeatureSet
from memray.job.score import features_key

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "features"


def _score(tmp: Path, out: Path) -> int:
    argv = ["score", "--train", str(tmp / "train.npz"), "--test", str(tmp / "test.npz"), "--gen",
            f"copier={tmp / 'copier.npz'}", "--mode", "meehan", "--bootstrap", "50", "--out", str(out)]  # fmt: skip
    return main(argv)


def _markers(out: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["score_key"] for p in sorted(out.glob("layers/*/done.json"))}


def test_memray_score_resumes_finished_layers_and_rescores_changed_features(tmp_path: Path, capsys) -> None:
    data = tmp_path / "in"
    shutil.copytree(EXAMPLES, data)
    out = tmp_path / "out"
    assert _score(data, out) == 0
    first = pd.read_parquet(out / "ct_scores.parquet")
    keys = _markers(out)
    assert len(keys) == first["layer"].nunique() >= 2 and len(set(keys.values())) == 1
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("layers/*/*.parquet")}

    assert _score(data, out) == 0  # same content: every layer is read back, nothing is written again
    assert {p: p.stat().st_mtime_ns for p in out.glob("layers/*/*.parquet")} == stamps
    pd.testing.assert_frame_equal(pd.read_parquet(out / "ct_scores.parquet"), first)

    with np.load(data / "copier.npz") as z:  # the same file name, other content: every layer is scored again
        arrays = {k: z[k] for k in z.files}
    layer_key = next(k for k in arrays if k != "ids" and arrays[k].ndim == 2)
    arrays[layer_key] = arrays[layer_key][::-1].copy()
    np.savez(data / "copier.npz", **arrays)
    assert _score(data, out) == 0
    assert set(_markers(out).values()) != set(keys.values())
    assert any(p.stat().st_mtime_ns != t for p, t in stamps.items())


def test_features_key_follows_content_not_names() -> None:
    ids = np.array(["a", "b"], dtype=object)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    base = features_key({"seed": 0}, {"train": FeatureSet(ids, {1: x}, "t.npz")})
    assert base == features_key({"seed": 0}, {"train": FeatureSet(ids, {1: x.copy()}, "elsewhere.npz")})
    y = x.copy()
    y[1, 3] = np.nextafter(y[1, 3], np.float32(np.inf))  # one ulp
    for other in (
        {"train": FeatureSet(ids, {1: y}, "t.npz")},
        {"train": FeatureSet(ids[::-1].copy(), {1: x}, "t.npz")},
        {"train": FeatureSet(ids, {2: x}, "t.npz")},
    ):
        assert features_key({"seed": 0}, other) != base
    assert features_key({"seed": 1}, {"train": FeatureSet(ids, {1: x}, "t.npz")}) != base


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")
