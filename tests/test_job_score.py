"""memray/job/score.py: the layer-folder sink resumes `memray score` like the job, keyed by the features' content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memray.cli import main
from memray.io import schema
from memray.io.features import FeatureSet
from memray.job.config import audit_config_from_dict
from memray.job.keys import features_key
from memray.job.score import run_scoring
from memray.stats import queries
from memray.stats.layers import score_features
from memray.stats.results import write_results

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


def test_memray_score_records_seconds_per_stage_and_layer_in_run_json(tmp_path: Path) -> None:
    """``run.json`` says what each stage of each scored layer cost (seconds, never negative) and the totals."""
    out = tmp_path / "out"
    argv = [
        "score",
        "--train",
        str(EXAMPLES / "train.npz"),
        "--test",
        str(EXAMPLES / "test.npz"),
        "--gen",
        f"copier={EXAMPLES / 'copier.npz'}",
        "--bootstrap",
        "20",
        "--partitions",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    stats = json.loads((out / schema.RUN_FILE).read_text())["stats"]
    layers = sorted(pd.read_parquet(out / "ct_scores.parquet")["layer"].unique().tolist())
    assert sorted(int(k) for k in stats["layers"]) == layers and len(layers) >= 2
    stages = {"fit", "statistic", "views", "partitions", "bootstrap", "tables", "samples", "evidence"}
    for layer in layers:
        rec = stats["layers"][str(layer)]
        assert set(rec["stages"]) == stages, rec
        assert rec["seconds"] >= 0 and all(v >= 0 for v in rec["stages"].values())
        assert sum(rec["stages"].values()) <= rec["seconds"] + 1e-6  # the stages are parts of the layer's time
    assert set(stats["stages"]) == stages and stats["seconds"] >= 0
    assert stats["score_devices"] == ["cpu"]  # the numpy path computed it (--score-device cpu, the default)
    for name in stages:  # the totals add up the layers' stage seconds
        assert stats["stages"][name] == pytest.approx(sum(stats["layers"][str(ly)]["stages"][name] for ly in layers))


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


def _write_set(root: Path, name: str, fs: FeatureSet, per_file: int) -> list[tuple[str, int]]:
    """A set as embedding Parquet files (sample_id + layer_<ℓ> fixed-size lists) of ``per_file`` rows."""
    files = []
    for i, lo in enumerate(range(0, len(fs), per_file)):
        cols = {schema.SAMPLE_ID: pa.array(fs.ids[lo : lo + per_file].tolist(), pa.string())}
        for layer, x in fs.layers.items():
            part = np.ascontiguousarray(x[lo : lo + per_file])
            cols[schema.layer_column(layer)] = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), x.shape[1])
        url = root / name / f"part-{i:03d}.parquet"
        url.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), url)
        files.append((str(url), min(per_file, len(fs) - lo)))
    return files


@pytest.mark.timeout(300)
def test_job_scoring_writes_every_table_as_score_features_does(tmp_path: Path, monkeypatch) -> None:
    """The job's path (feature files read by tasks, per-sample tables as part files merged when written) gives the
    bytes of the in-process path (rows in memory, tables as frames), every table; a damaged part is redone."""
    monkeypatch.setattr(queries, "QUERY_ROWS", 1024)  # several query blocks per set: parts to merge
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=3.0, size=(5, 16))

    def draw(n: int) -> np.ndarray:
        return (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, 16))).astype(np.float32)

    def fs(x: np.ndarray, prefix: str) -> FeatureSet:
        ids = np.array([f"{prefix}{i}" for i in rng.permutation(len(x))], dtype=object)  # unsorted sample ids
        return FeatureSet(ids, {1: x, 2: np.tanh(x[:, ::-1]).astype(np.float32)}, prefix)

    train = draw(1400)
    sets = {"train": fs(train, "t"), "test": fs(draw(1100), "p"), "copy": fs(train[rng.integers(0, 1400, 2200)], "c"),
            "fresh": fs(draw(1300), "f")}  # fmt: skip
    pieces = {k: _write_set(tmp_path / "in", k, v, 600) for k, v in sets.items()}
    ct = {"mode": "meehan", "cells": 4, "pca_dim": 6, "kmeans_nredo": 2, "bootstrap": 40, "top_k": 3, "partitions": 2}
    cfg = audit_config_from_dict({
        "train": {"name": "train", "embeddings": [str(tmp_path / "in" / "train")]},
        "test": {"name": "test", "embeddings": [str(tmp_path / "in" / "test")]},
        "generated": [{"name": g, "embeddings": [str(tmp_path / "in" / g)]} for g in ("copy", "fresh")],
        "output": str(tmp_path / "job"), "ct": ct,
    })  # fmt: skip
    result, _, _ = run_scoring(cfg, pieces, [1, 2], map, score_key="k")
    write_results(cfg.output, result, {"inputs": {}}, None, map)
    ref = score_features(sets["train"], sets["test"], {g: sets[g] for g in ("copy", "fresh")}, cfg.ct)
    write_results(str(tmp_path / "ref"), ref, {"inputs": {}})
    files = sorted(p.name for p in (tmp_path / "ref").glob("*.parquet"))
    assert len(files) == 8 and len(pd.read_parquet(tmp_path / "ref" / schema.COPIES_FILE)) == 2 * 3 * 3500
    for name in files:
        assert (tmp_path / "job" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name

    layer_parts = sorted((tmp_path / "job" / "layers" / "layer_2" / "parts" / "copies").glob("*.parquet"))
    assert len(layer_parts) == 3 + 2  # blocks of 1,024 rows: 2,200 → 3, 1,300 → 2
    layer_parts[1].write_bytes(layer_parts[1].read_bytes()[:100])  # a damaged part file
    stamp = (tmp_path / "job" / "layers" / "layer_1" / "done.json").stat().st_mtime_ns
    again, _, _ = run_scoring(cfg, pieces, [1, 2], map, score_key="k")
    write_results(cfg.output, again, {"inputs": {}}, None, map)
    assert (tmp_path / "job" / "layers" / "layer_1" / "done.json").stat().st_mtime_ns == stamp  # layer 1 read back
    for name in files:  # layer 2 scored again, the same bytes
        assert (tmp_path / "job" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name

    marker = tmp_path / "job" / "layers" / "layer_1" / "done.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in record.items() if k != "parts"}))  # an earlier release's layout
    again, _, _ = run_scoring(cfg, pieces, [1, 2], map, score_key="k")
    assert "parts" in json.loads(marker.read_text())  # scored again, not mixed with the other layer's parts
    write_results(cfg.output, again, {"inputs": {}}, None, map)
    assert (tmp_path / "job" / schema.COPIES_FILE).read_bytes() == (tmp_path / "ref" / schema.COPIES_FILE).read_bytes()


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")


def test_memray_score_refuses_cuda_without_a_device_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    from memray.stats import device

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    argv = ["score", "--train", str(EXAMPLES / "train.npz"), "--test", str(EXAMPLES / "test.npz"), "--gen",
            f"copier={EXAMPLES / 'copier.npz'}", "--score-device", "cuda", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memray score: error: resources.score_device=cuda: this task sees no CUDA device"), err
    assert "\n" not in err


@pytest.mark.timeout(300)
def test_job_scoring_records_the_score_device_and_refuses_cuda_without_one(tmp_path: Path, monkeypatch) -> None:
    """``stats.score.score_devices`` says which path computed the layer (numpy: ``cpu``); ``auto`` without CUDA is
    the numpy path, bit for bit; ``cuda`` without CUDA is one line naming the field."""
    from memray.config import ConfigError
    from memray.stats import device

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    rng = np.random.default_rng(5)
    x = (rng.normal(scale=3.0, size=(4, 8))[rng.integers(0, 4, 900)] + rng.normal(size=(900, 8))).astype(np.float32)
    sets = {k: FeatureSet(np.array([f"{k}{i}" for i in range(300)], dtype=object), {1: x[j : j + 300]}, k)
            for k, j in (("train", 0), ("test", 300), ("gen", 600))}  # fmt: skip
    pieces = {k: _write_set(tmp_path / "in", k, v, 300) for k, v in sets.items()}

    def run(device_choice: str, out: str) -> tuple[pd.DataFrame, dict]:
        cfg = audit_config_from_dict({
            "train": {"name": "train", "embeddings": [str(tmp_path / "in" / "train")]},
            "test": {"name": "test", "embeddings": [str(tmp_path / "in" / "test")]},
            "generated": [{"name": "gen", "embeddings": [str(tmp_path / "in" / "gen")]}],
            "output": str(tmp_path / out), "resources": {"score_device": device_choice},
            "ct": {"mode": "meehan", "cells": 2, "pca_dim": 4, "kmeans_nredo": 2, "bootstrap": 0, "top_k": 0},
        })  # fmt: skip
        result, _, stats = run_scoring(cfg, pieces, [1], map, score_key="k")
        return result.ct_scores, stats

    cpu, stats = run("cpu", "cpu")
    assert stats["score_devices"] == ["cpu"]
    auto, stats = run("auto", "auto")
    assert stats["score_devices"] == ["cpu"]
    pd.testing.assert_frame_equal(auto, cpu)
    with pytest.raises(ConfigError) as info:
        run("cuda", "cuda")
    assert "\n" not in str(info.value) and "resources.score_device=cuda" in str(info.value)
