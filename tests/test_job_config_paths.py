"""Relative paths in an audit config: against the config file's folder, and refused as output under a Ray job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memray.config import ConfigError
from memray.job.config import load_audit_config

CONFIG = {
    "train": {"name": "train", "urls": ["data/train"]},
    "test": {"name": "test", "urls": "data/test.npz"},
    "generated": [{"name": "g", "urls": ["s3://bucket/g/", "/abs/g.npz"]}],
    "output": "runs/x",
    "embed": {"model": "test_vit", "weights": "w/model.safetensors"},
}


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "configs" / "job.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    path = _write(tmp_path)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_audit_config(path)
    base = (tmp_path / "configs").resolve()
    assert cfg.train.urls == (str(base / "data" / "train"),)
    assert cfg.test.urls == (str(base / "data" / "test.npz"),)
    assert cfg.generated[0].urls == ("s3://bucket/g/", "/abs/g.npz")  # URLs and absolute paths stay
    assert cfg.output == str(base / "runs" / "x") and cfg.embed.weights == str(base / "w" / "model.safetensors")
    # a path given on the command line is relative to the current directory
    assert load_audit_config(path, {"output": "elsewhere"}).output == str(tmp_path.resolve() / "elsewhere")


def test_relative_output_is_refused_under_a_ray_job(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path)
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    with pytest.raises(ConfigError, match="absolute path on shared storage or an s3:// URL"):
        load_audit_config(path)
    with pytest.raises(ConfigError, match="is relative"):
        load_audit_config(path, {"output": "runs/y"})
    cfg = load_audit_config(path, {"output": "s3://bucket/out"})
    assert cfg.output == "s3://bucket/out"


def test_shipped_demo_config_points_at_the_bundled_data(monkeypatch) -> None:
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    repo = Path(__file__).resolve().parents[1]
    cfg = load_audit_config(repo / "jobs" / "configs" / "default.yaml")
    assert Path(cfg.train.urls[0]) == repo / "data" / "sample" / "train.npz" and Path(cfg.train.urls[0]).exists()
    assert Path(cfg.output) == repo / "runs" / "demo"
