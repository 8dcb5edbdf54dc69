"""Pixel space: grey box-averaged pixels by hand, and a pixel 'layer' scored as evidence without C_T."""

from __future__ import annotations

import numpy as np

from memray.embedding.pixels import pixel_features, with_pixels
from memray.io import schema
from memray.io.features import FeatureSet, features_to_table, table_to_features
from memray.stats.config import CTConfig
from memray.stats.layers import score_features


def test_grey_box_average_by_hand():
    img = np.zeros((1, 3, 4, 4), np.uint8)
    img[0, 0, :2, :2] = 255  # red top-left quarter: grey 85
    img[0, :, 2:, 2:] = 102  # grey 102 bottom-right quarter
    got = pixel_features(img, 2)
    np.testing.assert_allclose(got, [[85 / 255, 0, 0, 0.4]], atol=1e-6)
    assert got.dtype == np.float32 and with_pixels({}, img, 0) == {}
    assert set(with_pixels({3: np.ones((1, 2))}, img, 2)) == {3, schema.PIXEL_LAYER}


def test_pixels_column_round_trips():
    fs = FeatureSet(np.array(["a", "b"], dtype=object), {schema.PIXEL_LAYER: np.eye(2, 4, dtype=np.float32),
                                                         1: np.ones((2, 3), np.float32)})  # fmt: skip
    table = features_to_table(fs, views={"hflip": {schema.PIXEL_LAYER: np.zeros((2, 4), np.float32)}})
    assert table.column_names == ["sample_id", "pixels", "layer_1", "pixels@hflip"]
    assert schema.parse_view_column("pixels@hflip") == (schema.PIXEL_LAYER, "hflip")
    back = table_to_features(table)
    np.testing.assert_array_equal(back.layers[schema.PIXEL_LAYER], fs.layers[schema.PIXEL_LAYER])


def test_pixel_space_gets_evidence_but_no_ct():
    rng = np.random.default_rng(2)

    def fs(x: np.ndarray, p: str) -> FeatureSet:
        ids = np.array([f"{p}{i}" for i in range(len(x))], dtype=object)
        return FeatureSet(ids, {schema.PIXEL_LAYER: x.astype(np.float32), 1: np.tanh(x).astype(np.float32)})

    train = rng.normal(size=(500, 6))
    gen = train[:200] + 0.001 * rng.normal(size=(200, 6))  # near-copies
    cfg = CTConfig(mode="meehan", cells=3, top_k=2, bootstrap=20)  # seeds of layer -1 (bootstrap, concentration)
    res = score_features(fs(train, "t"), fs(rng.normal(size=(300, 6)), "p"), {"g": fs(gen, "g")}, cfg)
    assert sorted(res.ct_scores.layer.unique()) == [1] and res.layers == [1]
    rep = res.replication.set_index("layer")
    assert rep.loc[schema.PIXEL_LAYER, "share_below"] > 0.9 and rep.loc[schema.PIXEL_LAYER, "p_value"] < 1e-10
    assert schema.PIXEL_LAYER in set(res.copies.layer)
    assert res.verdicts.iloc[0].verdict == "copying" and res.verdicts.iloc[0].replication_layers[0] == -1
