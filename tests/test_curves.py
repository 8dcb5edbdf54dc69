"""Curve tables: every input format to one long form, galleries on disk, subset plans, curves from features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from memray.fingerprint.curves import (
    CurveFileError,
    read_curves,
    read_gallery,
    to_gallery,
    write_gallery,
)
from memray.io import schema

DATA = Path(__file__).parent / "data" / "layerchoice"


def test_authors_text_formats() -> None:
    runs, split = to_gallery(read_curves(str(DATA / "layerchoice_model_ct_scores.txt")))
    assert len(runs) == 18 and runs.layers == tuple(range(1, 13)) and split is None
    assert runs.names[0] == "ContraGAN_17_17" and runs.labels[0] == "ContraGAN"
    assert runs.curves[0, 0] == -1.738038609961968 and runs.curves[0, 11] == 1.962765440626461
    assert sorted(set(runs.labels)) == ["BigGAN", "ContraGAN", "SNGAN", "ddim", "ddpm", "pndm"]
    full, fsplit = to_gallery(read_curves(str(DATA / "layerchoice_Ffull_score.txt")))
    assert list(fsplit).count("query") == 6 and list(fsplit).count("gallery") == 12
    # repeated names get #1, #2 in file order; unique names stay as they are
    assert "ContraGAN_train_batch#1" in full.names and "ContraGAN_train_batch#2" in full.names
    assert "ContraGAN_test_batch" in full.names


def test_full_split_csv_is_the_full_file_by_value() -> None:
    """The derived CSV (named runs) holds exactly the Full file's curves with the same gallery/query roles."""
    txt, tsplit = to_gallery(read_curves(str(DATA / "layerchoice_Ffull_score.txt")))
    csv, csplit = to_gallery(read_curves(str(DATA / "layerchoice_full_split.csv")))
    assert len(txt) == len(csv) == 18
    for i in range(len(txt)):
        same = np.flatnonzero((csv.curves == txt.curves[i]).all(axis=1))
        assert len(same) == 1, txt.names[i]
        assert csv.labels[same[0]] == txt.labels[i] and csplit[same[0]] == tsplit[i]


def _long_frame() -> pd.DataFrame:
    rows = []
    for run, label, split, values in [
        ("r1", "A", "gallery", [1.0, 2.0, np.nan]),
        ("r2", "B", "query", [3.0, 4.0, 5.0]),
    ]:
        rows += [(label, run, split, layer, v) for layer, v in enumerate(values, 1)]
    return pd.DataFrame(rows, columns=["label", "run", "split", "layer", "ct"])


@pytest.mark.parametrize("fmt", ["long.csv", "long.parquet", "wide_l.csv", "wide_layer.parquet"])
def test_long_and_wide_tables_agree(tmp_path: Path, fmt: str) -> None:
    long = _long_frame()
    df = long
    if fmt.startswith("wide"):
        prefix = "l" if "_l." in fmt else "layer_"
        df = long.pivot(index=["label", "run", "split"], columns="layer", values="ct").reset_index()
        df.columns = [c if isinstance(c, str) else f"{prefix}{c}" for c in df.columns]
    path = tmp_path / fmt
    df.to_csv(path, index=False) if fmt.endswith(".csv") else df.to_parquet(path, index=False)
    g, split = to_gallery(read_curves(str(path)))
    assert (
        g.names.tolist() == ["r1", "r2"] and g.labels.tolist() == ["A", "B"] and split.tolist() == ["gallery", "query"]
    )
    np.testing.assert_array_equal(g.curves, [[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("label,run,layer,ct\nA,r1,1,0.5\nA,r1,2,abc\n", "line 3: ct 'abc' is not a number"),
        ("label,run,layer,ct\nA,r1,1,0.5\nA,r1,1,0.7\n", "line 3: curve 'r1' has layer 1 twice"),
        ("label,run,split,l1\nA,r1,train,0.5\n", "line 2: split 'train'"),
        ("label,run,layer,ct\nA,r1,1,0.5\nA,r1,2,0.5\nB,r2,1,0.1\n", "curve 'r2' lacks layers \\[2\\]"),
        ("label,run,layer,ct\nA,r1,1,0.5\nB,r1,2,0.5\n", "more than one label"),
        ("label,name,x\nA,r1,0.5\n", "no 'run'"),
        ("label,run,foo\nA,r1,0.5\n", "neither long"),
    ],
)
def test_malformed_csv_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(CurveFileError, match=message) as err:
        to_gallery(read_curves(str(path)), str(path))
    assert "bad.csv" in str(err.value)


def test_malformed_text_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("A_1 [1.0, 2.0]\nB_1 1.0, 2.0\n")
    with pytest.raises(CurveFileError, match="line 2: expected"):
        read_curves(str(path))
    path.write_text("A_1 [1.0, 2.0]\nB_1 [1.0, x]\n")
    with pytest.raises(CurveFileError, match="line 2: non-numeric"):
        read_curves(str(path))
    path.write_text("A_1 [1.0, 2.0]\nB_1 [1.0]\n")
    with pytest.raises(CurveFileError, match="line 2: 1 values"):
        read_curves(str(path))
    with pytest.raises(CurveFileError, match="file not found"):
        read_curves(str(tmp_path / "missing.csv"))


def test_gallery_round_trip(tmp_path: Path) -> None:
    g, _ = to_gallery(read_curves(str(DATA / "layerchoice_model_ct_scores.txt")))
    path = tmp_path / "gallery.parquet"
    write_gallery(str(path), g, {"source": "test"})
    back = read_gallery(str(path))
    assert back.names.tolist() == g.names.tolist() and back.labels.tolist() == g.labels.tolist()
    assert back.layers == g.layers and np.array_equal(back.curves, g.curves)
    assert json.loads(pq.read_schema(path).metadata[schema.META_KEY]) == {"source": "test", "method": "curve"}


@pytest.mark.timeout(120)
def test_gallery_round_trip_on_s3(s3_bucket: str) -> None:
    g, _ = to_gallery(read_curves(str(DATA / "layerchoice_Fsmall_score.txt")))
    url = f"s3://{s3_bucket}/galleries/small.parquet"
    write_gallery(url, g)
    back = read_gallery(url)
    assert back.names.tolist() == g.names.tolist() and np.array_equal(back.curves, g.curves)
