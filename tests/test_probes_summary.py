"""The probe table and the layer recommendation, on hand-made C_T curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from memray.io import schema
from memray.probes.config import PROBE_NAMES
from memray.probes.summary import probe_table, recommend, write_probe_outputs

LAYERS = list(range(1, 7))
SETS = {f"probe_{p}": p for p in PROBE_NAMES}
DETECTED, NOT = 1e-6, 0.9  # Holm-adjusted p of a detected / not detected (probe, layer)


def _scores(curves: dict[str, list[tuple[float, float]]], prefix: str = "probe_") -> pd.DataFrame:
    """ct_scores rows of sets ``<prefix><probe>`` from {probe: [(ct, p_holm) per layer]}, plus a non-probe set."""
    rows = []
    for probe, values in curves.items():
        for layer, (ct, holm) in zip(LAYERS, values, strict=True):
            rows.append((f"{prefix}{probe}", layer, ct, holm / 6, ct - 1, ct + 1, 200, holm))
    rows += [("gan", layer, -50.0, 1e-9, -51.0, -49.0, 500, 1e-9) for layer in LAYERS]
    cols = [schema.GEN_SET, schema.LAYER, schema.CT, schema.P_VALUE, schema.CI_LOW, schema.CI_HIGH, schema.N_GEN]
    return pd.DataFrame(rows, columns=[*cols, schema.P_HOLM])


def _curve(ct: list[float], detected: set[int]) -> list[tuple[float, float]]:
    return [(c, DETECTED if layer in detected else NOT) for layer, c in zip(LAYERS, ct, strict=True)]


def _paper_like() -> pd.DataFrame:
    """A trained ViT's pattern (He et al.): low-level probes early only, flips/crops late, anchors everywhere."""
    return _scores(
        {
            "rotated": _curve([-20, -12, 3, 4, 5, 6], {1, 2}),
            "shuffled": _curve([-9, -8, 2, 3, 4, 5], {1, 2}),
            "downsampled": _curve([-7, 1, 2, 3, 3, 3], {1}),
            "noisy": _curve([30, 32, 35, 37, 38, 39], set()),
            "cropped": _curve([8, 6, 3, 0.5, -1, -2], {6}),
            "flipped": _curve([4, 2, -1, -3, -3, -4], {4, 5, 6}),
            "copies": _curve([-15] * 6, set(LAYERS)),
            "near_copies": _curve([-10] * 6, set(LAYERS)),
        }
    )


def test_probe_table_has_the_schema_columns_and_the_probe_rows() -> None:
    scores = _paper_like().sample(frac=1.0, random_state=0)  # any row order in
    table = probe_table(scores, SETS)
    assert list(table.columns) == schema.PROBES_SCHEMA.names
    assert len(table) == 8 * 6 and "gan" not in set(table[schema.PROBE])
    assert list(table[schema.PROBE].drop_duplicates()) == list(PROBE_NAMES)  # registry order, then layer
    assert all(list(g[schema.LAYER]) == LAYERS for _, g in table.groupby(schema.PROBE))
    row = table[(table[schema.PROBE] == "rotated") & (table[schema.LAYER] == 2)].iloc[0]
    assert (row[schema.CT], row[schema.CI_LOW], row[schema.CI_HIGH], row[schema.N]) == (-12, -13, -11, 200)
    assert row[schema.P_VALUE] == pytest.approx(DETECTED / 6)
    assert table[schema.LAYER].dtype == np.int32 and table[schema.N].dtype == np.int64


def test_probe_table_warns_about_probe_sets_without_scores(caplog: pytest.LogCaptureFixture) -> None:
    scores = _scores({"copies": _curve([-1] * 6, set())})
    with caplog.at_level(logging.WARNING, logger="memray.probes.summary"):
        table = probe_table(scores, {"probe_copies": "copies", "probe_flipped": "flipped"})
    assert set(table[schema.PROBE]) == {"copies"} and "probe_flipped" in caplog.text


def test_recommend_reads_the_paper_like_pattern() -> None:
    scores = _paper_like()
    out = recommend(probe_table(scores, SETS), scores, SETS, alpha=0.05)
    json.dumps(out, allow_nan=False)  # JSON-ready
    assert out["alpha"] == 0.05 and list(out["probes"]) == list(PROBE_NAMES)
    rot = out["probes"]["rotated"]
    assert rot == {
        "set": "probe_rotated",
        "params": {"max_angle": 30.0},
        "n": 200,
        "detected_layers": [1, 2],
        "min_ct": -20.0,
        "min_ct_layer": 1,
    }
    assert out["probes"]["noisy"]["detected_layers"] == [] and out["probes"]["copies"]["detected_layers"] == LAYERS
    rec = out["recommendation"]
    assert rec["low_level_layers"] == [1, 2] and rec["semantic_layers"] == [4, 5, 6]
    assert "most strongly at layer 1" in rec["text"] and "anchor" not in rec["text"]
    assert 2 <= rec["text"].count(". ") + 1 <= 4


def test_detection_needs_a_negative_ct_and_a_small_holm_p() -> None:
    scores = _scores({"copies": [(-5, DETECTED), (5, DETECTED), (-5, NOT), (-5, 0.049), (-5, 0.05), (-5, np.nan)]})
    out = recommend(probe_table(scores, SETS), scores, SETS, alpha=0.05)
    assert out["probes"]["copies"]["detected_layers"] == [1, 4]


def test_recommend_says_no_separation_for_a_flat_random_encoder() -> None:
    rng = np.random.default_rng(0)
    flat = {p: [(float(rng.normal(0, 0.3)), NOT) for _ in LAYERS] for p in PROBE_NAMES}
    flat["copies"] = _curve([-11, -11.2, -10.9, -10.8, -11.1, -10.7], set(LAYERS))
    flat["near_copies"] = _curve([-10.5] * 6, set(LAYERS))
    scores = _scores(flat)
    rec = recommend(probe_table(scores, SETS), scores, SETS, alpha=0.05)["recommendation"]
    assert rec["low_level_layers"] == [] and rec["semantic_layers"] == []
    assert "no separation" in rec["text"] and "No low-level probe is detected" in rec["text"]
    everything = {p: _curve([-3.0] * 6, set(LAYERS)) for p in PROBE_NAMES}  # pixel-level: all seen at every layer
    scores = _scores(everything)
    rec = recommend(probe_table(scores, SETS), scores, SETS, alpha=0.05)["recommendation"]
    assert rec["low_level_layers"] == LAYERS and rec["semantic_layers"] == [] and "no separation" in rec["text"]


def test_recommend_falls_back_to_the_relative_contrast() -> None:
    curves = {  # low-level probes detected at every layer, weakening with depth; content never alone
        "rotated": _curve([-20, -15, -10, -6, -3, -2], set(LAYERS)),
        "shuffled": _curve([-10, -8, -6, -4, -2, 1], {1, 2, 3, 4, 5}),
        "flipped": _curve([-5, -5, -5, -5, -4, -3], set(LAYERS)),
        "copies": _curve([-15] * 6, set(LAYERS)),
    }
    scores = _scores(curves)
    sets = {f"probe_{p}": p for p in curves}
    rec = recommend(probe_table(scores, sets), scores, sets, alpha=0.05)["recommendation"]
    # contrast flipped − mean(rotated, shuffled): 10, 6.5, 3, 0, -1.5, -2.5 → layer 6
    assert rec["low_level_layers"] == LAYERS and rec["semantic_layers"] == [6]
    assert "relative" in rec["text"]
    curves["flipped"] = _curve([5, 5, 5, 5, 5, 5], set())  # never closer than the low-level ones: no semantic layer
    scores = _scores(curves)
    rec = recommend(probe_table(scores, sets), scores, sets, alpha=0.05)["recommendation"]
    assert rec["semantic_layers"] == [] and "At no layer" in rec["text"]


def test_recommend_flags_anchors_that_are_not_detected() -> None:
    curves = {
        "rotated": _curve([-9, -2, 1, 1, 1, 1], {1}),
        "flipped": _curve([1, 1, 1, -2, -3, -3], {5, 6}),
        "copies": _curve([-9, -9, -9, -9, -2, -1], {1, 2, 3, 4}),
    }
    scores = _scores(curves, prefix="set_")
    sets = {f"set_{p}": p for p in curves}  # any set names
    out = recommend(probe_table(scores, sets), scores, sets, alpha=0.05, params={"rotated": {"max_angle": 10.0}})
    assert out["probes"]["rotated"]["set"] == "set_rotated" and out["probes"]["rotated"]["params"]["max_angle"] == 10
    rec = out["recommendation"]
    assert rec["low_level_layers"] == [1] and rec["semantic_layers"] == [5, 6]
    assert "anchor 'copies' is not detected at layers 5–6" in rec["text"]


def test_write_probe_outputs_round_trip(tmp_path: Path) -> None:
    scores = _paper_like()
    table = probe_table(scores, SETS)
    summary = recommend(table, scores, SETS, alpha=0.01)
    urls = write_probe_outputs(table, summary, str(tmp_path), metadata={"encoder": "vit_tiny"})
    assert urls == {"probes": str(tmp_path / schema.PROBES_FILE), "summary": str(tmp_path / schema.PROBES_SUMMARY_FILE)}
    back = pq.read_table(urls["probes"])
    assert back.schema.remove_metadata() == schema.PROBES_SCHEMA
    pd.testing.assert_frame_equal(back.to_pandas(), table)
    meta = json.loads(back.schema.metadata[schema.META_KEY])
    assert meta["table"] == "probes" and meta["alpha"] == 0.01 and meta["encoder"] == "vit_tiny"
    assert meta["probe_sets"]["shuffled"] == {"set": "probe_shuffled", "params": {"grid": 4}, "n": 200}
    assert json.loads(Path(urls["summary"]).read_text()) == summary
