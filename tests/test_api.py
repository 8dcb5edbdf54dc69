"""The Python API end to end on the bundled sample: memray.audit with probes → verdicts, copies with sources that
fetch back, probes.parquet with the anchors detected at every layer, report.html; memray.score on arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memray
from memray.io import schema
from memray.io.fetch import fetch_image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
PROBES = ["copies", "near_copies", "rotated", "flipped"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str):
    import ray

    out = tmp_path_factory.mktemp("api") / "audit"
    settings = {
        "embed.model_kwargs": {"img_size": 32},
        "resources.actor_num_cpus": 0.5,
        "resources.torch_threads": 1,
        "resources.index_task_num_cpus": 0.5,
        "ct.bootstrap": 200,
        "probes": {"n": 300, "probes": PROBES},
    }
    gens = {
        "copier": {"urls": [str(SAMPLE / "kde_copy_bw8.npz")], "label": "kde"},
        "fresh": SAMPLE / "heldout_real.npz",
    }
    try:
        res = memray.audit(train=SAMPLE / "train.npz", test=SAMPLE / "test.npz", generated=gens, output=str(out),
                           model="test_vit", random_init=True, settings=settings, num_cpus=2)  # fmt: skip
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return res


@pytest.mark.timeout(900)
def test_verdicts_and_uncertainty(run) -> None:
    v = run.verdicts.set_index(schema.GEN_SET)
    assert v.loc["copier", schema.VERDICT] == schema.VERDICT_COPYING and v.loc["copier", schema.P_HOLM] < 1e-6
    assert v.loc["fresh", schema.VERDICT] != schema.VERDICT_COPYING
    sc = run.ct_scores
    ok = sc[schema.CT].notna()
    assert (sc.loc[ok, schema.CI_LOW] <= sc.loc[ok, schema.CT]).all()
    assert (sc.loc[ok, schema.CT] <= sc.loc[ok, schema.CI_HIGH]).all()
    assert set(run.table("verdicts")[schema.GEN_SET]) == {"copier", "fresh", *(f"probe_{p}" for p in PROBES)}


@pytest.mark.timeout(900)
def test_copies_name_their_sources_and_fetch_back(run) -> None:
    copies = run.table("copies")
    assert list(copies.columns) == schema.COPIES_SCHEMA.names
    first = copies[(copies[schema.GEN_SET] == "copier") & (copies[schema.RANK] == 1) & (copies[schema.LAYER] == 1)]
    assert len(first) == 500
    # the KDE sampler records which training row each near-copy came from
    meta = json.loads(np.load(SAMPLE / "kde_copy_bw8.npz")["meta"].item())
    row = first.iloc[0]
    src_row = meta["source_rows"][int(row[schema.SAMPLE_ID].rsplit("/", 1)[1])]
    hits = np.mean([tid == f"train.npz/{meta['source_rows'][int(s.rsplit('/', 1)[1])]}"
                    for s, tid in zip(first[schema.SAMPLE_ID], first[schema.TRAIN_ID], strict=True)])  # fmt: skip
    assert hits > 0.9, hits  # the nearest training image overall is the one it was copied from
    gen = np.load(SAMPLE / "kde_copy_bw8.npz")["images"]
    train = np.load(SAMPLE / "train.npz")["images"]
    assert row[schema.GEN_SOURCE] == f"{SAMPLE / 'kde_copy_bw8.npz'}#{row[schema.SAMPLE_ID].rsplit('/', 1)[1]}"
    np.testing.assert_array_equal(
        fetch_image(row[schema.GEN_SOURCE])[:, :, 0], gen[int(row[schema.SAMPLE_ID].split("/")[1])]
    )
    assert row[schema.TRAIN_SOURCE].startswith(str(SAMPLE / "train.npz") + "#")
    if row[schema.TRAIN_ID] == f"train.npz/{src_row}":
        np.testing.assert_array_equal(fetch_image(row[schema.TRAIN_SOURCE])[:, :, 0], train[src_row])
    assert first[schema.TEST_QUANTILE].median() < 0.05  # closer to the training set than 95% of test images


@pytest.mark.timeout(900)
def test_probes_detect_the_anchors_at_every_layer(run) -> None:
    probes = run.table("probes")
    assert list(probes.columns) == schema.PROBES_SCHEMA.names
    layers = sorted(run.ct_scores[schema.LAYER].unique())
    summary = json.loads((Path(run.output) / schema.PROBES_SUMMARY_FILE).read_text())
    for anchor in ("copies", "near_copies"):
        assert summary["probes"][anchor]["detected_layers"] == layers, anchor
        assert (probes[probes[schema.PROBE] == anchor][schema.CT] < -3).all()
    assert summary["recommendation"]["text"]
    html = Path(run.report).read_text()
    assert 'id="probes"' in html and 'id="verdict"' in html and "rotated" in html


def test_score_on_arrays_gives_verdicts() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(800, 16))
    test = rng.normal(size=(300, 16))
    copier = train[:300] + 0.01 * rng.normal(size=(300, 16))
    res = memray.score(train, test, {"copier": copier, "fresh": rng.normal(size=(300, 16))}, mode="meehan",
                       pca_dim=None, kmeans_nredo=2, bootstrap=100)  # fmt: skip
    v = res.verdicts.set_index(schema.GEN_SET)[schema.VERDICT]
    assert v["copier"] == schema.VERDICT_COPYING and v["fresh"] == schema.VERDICT_NONE
    assert isinstance(res.copies, pd.DataFrame) and (res.copies[schema.RANK] == 1).sum() == 600
    assert set(memray.__all__) >= {"audit", "score", "probe", "fetch_image", "build_report"}
