"""Stage configs: mode presets (constructor == preset == YAML), overrides on record, round trips, type checks."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from memray.commands.score import build_config
from memray.config import ConfigError, digest, from_dict, to_dict, with_overrides
from memray.embedding.config import EmbedConfig
from memray.fingerprint.config import FingerprintConfig
from memray.stats.config import MODE_FIELDS, MODES, PRESETS, CTConfig
from memray.stats.results import method_record


@pytest.mark.parametrize("mode", MODES)
def test_mode_applies_its_preset_however_the_config_is_made(mode):
    made = [CTConfig(mode=mode), CTConfig.preset(mode), from_dict(CTConfig, {"mode": mode})]
    assert made[0] == made[1] == made[2]
    assert {k: getattr(made[0], k) for k in MODE_FIELDS} == PRESETS[mode]
    assert made[0].overrides() == {} and method_record(made[0])["preset"] == mode
    assert len({digest(c) for c in made}) == 1


def test_meehan_and_dgm_eval_use_their_own_metric_and_cells():
    assert CTConfig(mode="meehan").metric == "l2" and CTConfig(mode="meehan").cells == 10
    dgm = CTConfig(mode="dgm-eval")
    assert (dgm.metric, dgm.cells, dgm.pca_only_if_larger) == ("l2", 3, True)
    assert CTConfig().metric == "cosine_abs" and CTConfig().mode == "paper"
    assert all(CTConfig(mode=m).kmeans_nredo == 10 for m in MODES)  # sklearn KMeans(n_init=10) everywhere


def test_explicit_fields_override_the_preset_and_are_on_record():
    cfg = CTConfig(mode="meehan", cells=3)
    assert cfg.metric == "l2" and cfg.cells == 3
    assert cfg == CTConfig.preset("meehan", cells=3) == from_dict(CTConfig, {"mode": "meehan", "cells": 3})
    assert cfg.overrides() == {"cells": 3}
    assert method_record(cfg)["preset"] == "meehan; overridden: cells=3"
    off = CTConfig(mode="paper", pca_dim=None, metric="l2", kmeans_nredo=1)
    assert method_record(off)["preset"] == 'paper; overridden: metric="l2", pca_dim=null, kmeans_nredo=1'
    assert CTConfig(mode="meehan", cells=10).overrides() == {}  # the preset's own value is no override
    assert CTConfig(mode="meehan", cells=3) != CTConfig(mode="meehan")


@pytest.mark.parametrize(
    "cfg",
    [
        CTConfig(),
        CTConfig(mode="meehan"),
        CTConfig(mode="dgm-eval", cells=5, pca_dim=None),
        CTConfig(mode="paper", kmeans_nredo=1, seed=7, kmeans_sample=100),
        EmbedConfig(layers=(0, 3), pooling=("cls", "mean"), model_kwargs={"img_size": 32, "depth": 2}),
        FingerprintConfig(n_subsets=4, open_set_threshold=0.25, gallery="s3://b/g.parquet"),
        FingerprintConfig(method="curve_fd", matcher="knn", gallery="g.parquet"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_round_trips_keep_equality_and_digest(cfg):
    data = to_dict(cfg)
    assert json.loads(json.dumps(data)) == data and "FROM_MODE" not in json.dumps(data)
    back = from_dict(type(cfg), data)
    assert back == cfg and digest(back) == digest(cfg) and to_dict(back) == data


def test_fingerprint_method_values_and_the_open_set_rule():
    assert FingerprintConfig().method == "auto" and from_dict(FingerprintConfig, {"method": "curve"}).method == "curve"
    old = {k: v for k, v in to_dict(FingerprintConfig(subset_size=50)).items() if k != "method"}
    assert from_dict(FingerprintConfig, old) == FingerprintConfig(subset_size=50)  # records before the option: auto
    with pytest.raises(ConfigError, match="method"):
        FingerprintConfig(method="fid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="open_set_threshold is a C_T-curve similarity") as exc:
        FingerprintConfig(method="curve_fd", open_set_threshold="calibrated")
    assert "\n" not in str(exc.value)


def test_an_old_record_with_one_restart_reads_back_as_an_override():
    record = to_dict(CTConfig(mode="meehan"))
    record["kmeans_nredo"] = 1  # written before 10 restarts became the preset
    cfg = from_dict(CTConfig, record)
    assert cfg.kmeans_nredo == 1 and cfg.overrides() == {"kmeans_nredo": 1}


def test_with_overrides_keeps_the_mode_and_shows_changed_fields():
    cfg = with_overrides(CTConfig(mode="dgm-eval"), cells=4, seed=None)
    assert cfg.mode == "dgm-eval" and cfg.cells == 4 and cfg.overrides() == {"cells": 4}


def _score_args(**kw):
    base = {"mode": "paper", "cells": None, "metric": None, "pca_dim": None, "min_gen_per_cell": None, "seed": None,
            "search_rows": None, "block_rows": None, "kmeans_restarts": None}  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_score_cli_flags_become_overrides_of_the_mode():
    assert build_config(_score_args(mode="meehan")) == CTConfig(mode="meehan")
    cfg = build_config(_score_args(mode="dgm-eval", pca_dim="none", kmeans_restarts=2, seed=3))
    assert cfg == CTConfig(mode="dgm-eval", pca_dim=None, kmeans_nredo=2, seed=3)
    assert cfg.overrides() == {"pca_dim": None, "kmeans_nredo": 2}


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (CTConfig, {"cells": "abc"}, "ct.cells='abc': must be an integer >= 1"),
        (CTConfig, {"cells": True}, "ct.cells=True: must be an integer >= 1"),  # bool is not an int
        (CTConfig, {"cells": 2.0}, "ct.cells=2.0: must be an integer >= 1"),
        (CTConfig, {"cells": 0}, "ct.cells=0: must be an integer >= 1"),
        (CTConfig, {"mode": "fast"}, "ct.mode='fast': must be one of paper, meehan, dgm-eval"),
        (CTConfig, {"metric": "cos"}, "ct.metric='cos': must be one of cosine_abs, cosine, l2"),
        (CTConfig, {"pca_dim": -3}, "ct.pca_dim=-3: must be an integer >= 1 or null"),
        (CTConfig, {"pca_only_if_larger": "yes"}, "ct.pca_only_if_larger='yes': must be true or false"),
        (CTConfig, {"min_gen_per_cell": -1}, "ct.min_gen_per_cell=-1: must be an integer >= 0"),
        (CTConfig, {"seed": -1}, "ct.seed=-1: must be an integer >= 0"),
        (CTConfig, {"kmeans_niter": 0}, "ct.kmeans_niter=0: must be an integer >= 1"),
        (CTConfig, {"kmeans_nredo": 0}, "ct.kmeans_nredo=0: must be an integer >= 1"),
        (CTConfig, {"kmeans_sample": 5}, "ct.kmeans_sample=5: must be null (all points) or an integer >= ct.cells"),
        (CTConfig, {"search_rows": 0}, "ct.search_rows=0: must be an integer >= 1"),
        (CTConfig, {"query_batch": 1.5}, "ct.query_batch=1.5: must be an integer >= 1"),
        (CTConfig, {"candidates": None}, "ct.candidates=None: must be an integer >= 1"),
        (EmbedConfig, {"model": ""}, "embed.model='': must be a string (non-empty)"),
        (EmbedConfig, {"weights": 3}, "embed.weights=3: must be a string (non-empty) or null"),
        (EmbedConfig, {"random_init": 1}, "embed.random_init=1: must be true or false"),
        (EmbedConfig, {"pooling": ["cls", "max"]}, "embed.pooling=['cls', 'max']: must be a list of strings"),
        (EmbedConfig, {"pooling": []}, "embed.pooling=[]: must be a list of strings (non-empty"),
        (EmbedConfig, {"layers": "last"}, "embed.layers='last': must be 'all' or a list of integers"),
        (EmbedConfig, {"layers": [1, -2]}, "embed.layers=[1, -2]: must be 'all' or a list of integers"),
        (EmbedConfig, {"layers": [2, 2]}, "no repeats"),
        (EmbedConfig, {"norm": "false"}, "embed.norm='false': must be true or false"),
        (EmbedConfig, {"preprocess": "timm"}, "embed.preprocess='timm': must be one of paper, model"),
        (EmbedConfig, {"dtype": "bfloat16"}, "embed.dtype='bfloat16': must be one of float32, float16"),
        (EmbedConfig, {"batch_size": 0}, "embed.batch_size=0: must be an integer >= 1"),
        (EmbedConfig, {"model_kwargs": [1, 2]}, "embed.model_kwargs=[1, 2]: must be a mapping of names to values"),
        (EmbedConfig, {"weights": "w.safetensors", "random_init": True}, "embed.random_init=True: must be false"),
        (EmbedConfig, {"pooling": ["auto", "max"]}, "from cls, mean, auto, no repeats"),
        (EmbedConfig, {"mean": []}, "embed.mean=[]: must be a list of numbers (non-empty) or null"),
        (
            EmbedConfig,
            {"std": [0.5, 0.0, 0.5]},
            "embed.std=[0.5, 0.0, 0.5]: must be a list of numbers (non-empty, every",
        ),
        (EmbedConfig, {"mean": ["a"]}, "embed.mean=['a']: must be a list of numbers"),
        (EmbedConfig, {"mean": [0.5, 0.5, 0.5], "std": [0.5]}, "embed.std=(0.5,): must be one value per channel, as"),
        (EmbedConfig, {"crop": 0}, "embed.crop=0: must be an integer >= 1 or null"),
        (EmbedConfig, {"resize": 200, "crop": 224}, "embed.resize=200: must be an integer >= embed.crop (224)"),
        (FingerprintConfig, {"subset_size": 0}, "fingerprint.subset_size=0: must be an integer >= 1"),
        (FingerprintConfig, {"subsets": "random"}, "fingerprint.subsets='random': must be one of disjoint, bootstrap"),
        (FingerprintConfig, {"n_subsets": 0}, "fingerprint.n_subsets=0: must be an integer >= 1 or null"),
        (FingerprintConfig, {"seed": -2}, "fingerprint.seed=-2: must be an integer >= 0"),
        (FingerprintConfig, {"alpha": 1.5}, "fingerprint.alpha=1.5: must be a finite number in [0, 1]"),
        (FingerprintConfig, {"alpha": float("nan")}, "fingerprint.alpha=nan: must be a finite number in [0, 1]"),
        (FingerprintConfig, {"matcher": "2nn"}, "fingerprint.matcher='2nn': must be one of 1nn, knn, centroid"),
        (FingerprintConfig, {"k": 0}, "fingerprint.k=0: must be an integer >= 1"),
        (FingerprintConfig, {"open_set_threshold": "x"}, "fingerprint.open_set_threshold='x': must be a finite"),
        (FingerprintConfig, {"gallery": ""}, "fingerprint.gallery='': must be a string (non-empty) or null"),
        (CTConfig, {"cell": 3}, r"ct: unknown field(s) ['cell']"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(cls, data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"^ct\.cells='3': must be an integer >= 1$"):
        CTConfig(cells="3")
    with pytest.raises(ConfigError, match=r"^embed\.batch_size=-1"):
        EmbedConfig(batch_size=-1)


def test_values_are_normalised_to_their_annotated_types():
    fp = from_dict(FingerprintConfig, {"alpha": 1, "open_set_threshold": 0})  # YAML ints for float fields
    assert type(fp.alpha) is float and fp.alpha == 1.0 and type(fp.open_set_threshold) is float
    ct = CTConfig(cells=np.int64(4), seed=np.int32(2))  # numpy integers are integers
    assert type(ct.cells) is int and type(ct.seed) is int and ct == CTConfig(cells=4, seed=2)
    emb = from_dict(EmbedConfig, {"pooling": "mean", "layers": [3, 1], "model_kwargs": {"b": 1, "a": [2, 3]}})
    assert emb.pooling == ("mean",) and emb.layers == (3, 1) and emb.model_kwargs == (("a", [2, 3]), ("b", 1))
    own = from_dict(EmbedConfig, {"pooling": "auto", "mean": 0.5, "std": [1], "resize": 64, "crop": 56})
    assert own.pooling == ("auto",) and own.mean == (0.5,) and own.std == (1.0,) and type(own.std[0]) is float
    assert (own.resize, own.crop) == (64, 56) and EmbedConfig().mean is None and EmbedConfig().crop is None
