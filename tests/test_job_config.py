"""Audit configs: every field type- and range-checked with one-line errors naming the dotted field; shipped YAMLs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from memray.config import ConfigError, to_dict
from memray.io.config import DatasetSpec
from memray.job.config import AuditConfig, ResourcesConfig, audit_config_from_dict, load_audit_config
from memray.job.keys import job_digest

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "train": {"name": "train", "urls": ["s3://b/train/"]},
    "test": {"name": "test", "urls": "s3://b/test.npz"},
    "generated": [{"name": "g1", "urls": ["s3://b/g1.npz"]}, {"name": "g2", "urls": ["s3://b/g2.npz"]}],
    "output": "s3://b/out",
}


def _with(dotted: str, value):
    data = copy.deepcopy(BASE)
    node, *keys = data, *dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("resources.actors", 1.5, "resources.actors=1.5: must be an integer >= 1"),
        ("max_image_pixels", -1, "max_image_pixels=-1: must be an integer >= 1"),
        ("ct.cells", "abc", "ct.cells='abc': must be an integer >= 1"),
        ("resources.actors", 0, "resources.actors=0: must be an integer >= 1"),
        ("resources.actors", True, "resources.actors=True: must be an integer >= 1"),
        ("resources.actor_num_cpus", -0.5, "resources.actor_num_cpus=-0.5: must be a finite number >= 0"),
        ("resources.actor_num_gpus", "one", "resources.actor_num_gpus='one': must be a finite number >= 0"),
        ("resources.torch_threads", 0, "resources.torch_threads=0: must be an integer >= 1 or null"),
        ("resources.read_num_cpus", 0, "resources.read_num_cpus=0: must be a finite number > 0"),
        ("resources.shard_rows", 0, "resources.shard_rows=0: must be an integer >= 1"),
        ("resources.embed_batch_size", 2.5, "resources.embed_batch_size=2.5: must be an integer >= 1"),
        ("resources.index_task_num_cpus", -1, "resources.index_task_num_cpus=-1: must be a finite number >= 0"),
        ("resources.faiss_gpu", "no", "resources.faiss_gpu='no': must be true or false"),
        ("resources.score_device", "gpu", "resources.score_device='gpu': must be one of cpu, auto, cuda"),
        ("resources.actor_resources", {"A100": -1}, "resources.actor_resources={'A100': -1}: must be a mapping"),
        ("resources.actor_resources", ["A100"], "resources.actor_resources=['A100']: must be a mapping"),
        ("max_image_pixels", 1e6, "max_image_pixels=1000000.0: must be an integer >= 1"),
        ("fingerprint.n_subsets", 0, "fingerprint.n_subsets=0: must be an integer >= 1 or null"),
        ("fingerprint.alpha", -0.1, "fingerprint.alpha=-0.1: must be a finite number in [0, 1]"),
        ("embed.batch_size", "64", "embed.batch_size='64': must be an integer >= 1"),
        ("ct.mode", "paperish", "ct.mode='paperish': must be one of paper, meehan, dgm-eval"),
        ("train.name", "a/b", "train.name='a/b': must be a string (a folder name: non-empty, not '.' or '..', without"),
        ("train.name", "..", "train.name='..': must be a string (a folder name: non-empty, not '.' or '..', without"),
        ("test.name", ".", "test.name='.': must be a string (a folder name: non-empty, not '.' or '..', without '/'"),
        ("generated.0.name", "a\\b", "generated[0].name='a\\\\b': must be a string (a folder name"),
        ("test.urls", [], "test.urls=[]: must be a list of strings (at least one, each non-empty)"),
        ("test.label", "", "test.label='': must be a string (non-empty) or null"),
        ("generated.1.urls", [""], "generated[1].urls=['']: must be a list of strings (at least one"),
        ("generated.0.image_column", 3, "generated[0].image_column=3: must be a string (non-empty) or null"),
        ("generated", [], "generated=[]: must be at least one set (or a probes: section)"),
        ("output", "", "output='': must be a string (non-empty)"),
        ("train", "s3://b/train/", "train='s3://b/train/': must be a mapping (a dataset section)"),
        ("resources", 4, "resources=4: must be a mapping (a resources section)"),
        ("storage_options", ["anon"], "storage_options='<redacted>': must be a mapping of names to values"),
        ("storage_options.op_timeout_s", 0, "storage_options.op_timeout_s=0: must be a finite number > 0 (seconds"),
        ("storage_options.op_timeout_s", "5m", "storage_options.op_timeout_s='5m': must be a finite number > 0"),
        ("resources.actorz", 1, "resources: unknown field(s) ['actorz']"),
    ],
)
def test_bad_values_give_one_line_naming_the_dotted_field(dotted, value, message):
    with pytest.raises(ConfigError) as info:
        audit_config_from_dict(_with(dotted, value), "job.yaml")
    text = str(info.value)
    assert text.startswith("job.yaml: ") and message in text and "\n" not in text


def test_missing_required_fields_and_duplicate_names():
    data = copy.deepcopy(BASE)
    del data["output"]
    with pytest.raises(ConfigError, match=r"missing required field\(s\) \['output'\]"):
        audit_config_from_dict(data)
    with pytest.raises(ConfigError, match=r"generated\[0\]\.urls=\(\): must be .* or give embeddings"):
        audit_config_from_dict(_with("generated.0", {"name": "g1"}))
    with pytest.raises(ConfigError, match="dataset names must be unique"):
        audit_config_from_dict(_with("generated.1.name", "g1"))


def test_direct_construction_is_checked_with_the_section_name():
    with pytest.raises(ConfigError, match=r"^resources\.actors=1\.5: must be an integer >= 1$"):
        ResourcesConfig(actors=1.5)
    with pytest.raises(ConfigError, match=r"^dataset\.urls=\(\): must be a list of strings"):
        DatasetSpec("x", ())
    assert ResourcesConfig(actor_num_cpus=2).actor_num_cpus == 2.0  # an int for a float field is fine


def test_yaml_file_errors_name_the_file_and_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_with("resources.actors", 1.5)))
    with pytest.raises(ConfigError, match=r"job\.yaml: resources\.actors=1\.5: must be an integer >= 1$"):
        load_audit_config(path)
    with pytest.raises(ConfigError, match=r"ct\.cells='abc': must be an integer >= 1$"):
        load_audit_config(tmp_path / "job.yaml", {"resources.actors": 2, "ct.cells": "abc"})


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, monkeypatch):
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    cfg = load_audit_config(path)
    assert isinstance(cfg, AuditConfig) and cfg.ct.kmeans_nredo == 10 and cfg.ct.overrides() == {}
    assert audit_config_from_dict(to_dict(cfg)) == cfg
    raw = yaml.safe_load(path.read_text())
    assert cfg.resources.actors == raw["resources"]["actors"]


def test_score_device_round_trips_is_recorded_and_keeps_the_digest():
    """``resources.score_device`` (default cpu) loads, dumps back, and changes numbers only within float64 rounding:
    it is left out of the resume digest, like the pool sizes."""
    base = audit_config_from_dict(copy.deepcopy(BASE))
    assert base.resources.score_device == "cpu"
    for value in ("auto", "cuda", "cpu"):
        cfg = audit_config_from_dict(_with("resources.score_device", value))
        assert cfg.resources.score_device == value and to_dict(cfg)["resources"]["score_device"] == value
        assert audit_config_from_dict(to_dict(cfg)) == cfg
        assert job_digest(cfg) == job_digest(base)
