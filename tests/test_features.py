"""memray.io.features.load_features: good files round-trip; bad ones fail naming the file, never advising unpickling."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from memray.io.features import FeatureFileError, FeatureSet, load_features, write_features


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


X = np.arange(12, dtype=np.float32).reshape(4, 3)


def test_good_files_load(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(_npy(X))
    got = load_features(str(tmp_path / "x.npy"), layer=5)
    assert list(got.ids) == ["0", "1", "2", "3"] and list(got.layers) == [5]
    np.testing.assert_array_equal(got.layers[5], X)
    (tmp_path / "x.npz").write_bytes(_npz(layer_2=X, layer_1=X * 2))
    got = load_features(str(tmp_path / "x.npz"))
    assert list(got.layers) == [1, 2]
    np.testing.assert_array_equal(got.layers[1], X * 2)
    write_features(str(tmp_path / "x.parquet"), FeatureSet(np.array(["a", "b", "c", "d"], dtype=object), {3: X}))
    got = load_features(str(tmp_path / "x.parquet"))
    assert list(got.ids) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(got.layers[3], X)


def _refusal(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    with pytest.raises(FeatureFileError) as info:
        load_features(str(path))
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "allow_pickle=True" not in msg and "unsafe" not in msg and "pickle.load" not in msg, msg
    return msg


@pytest.mark.parametrize("data", [b"", b"garbage bytes, not an array" * 4, b"\x80\x04K\x01."])  # last: a pickle
def test_garbage_npy_names_the_file_and_the_format(tmp_path: Path, data: bytes) -> None:
    msg = _refusal(tmp_path / "feats.npy", data)
    assert "NumPy .npy" in msg and "2-D" in msg


def test_object_truncated_and_wrong_shape_npy(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    assert "Python objects" in _refusal(tmp_path / "obj.npy", _npy(objects, allow_pickle=True))
    good = _npy(X)
    assert "NumPy .npy" in _refusal(tmp_path / "cut.npy", good[: len(good) - 8])
    assert "(4,)" in _refusal(tmp_path / "flat.npy", _npy(np.zeros(4, np.float32)))
    assert "<U1" in _refusal(tmp_path / "text.npy", _npy(np.array([["a"]])))


def test_garbage_npz_and_parquet(tmp_path: Path) -> None:
    assert ".npz" in _refusal(tmp_path / "f.npz", b"not a zip archive" * 3)
    good = _npz(layer_1=X)
    assert ".npz" in _refusal(tmp_path / "cut.npz", good[: len(good) // 2])
    objects = np.array([None, 1], dtype=object)
    assert "Python objects" in _refusal(tmp_path / "obj.npz", _npz(layer_1=objects))
    assert "Parquet" in _refusal(tmp_path / "f.parquet", b"PAR1 but not really")
    with pytest.raises(FeatureFileError, match="file not found"):
        load_features(str(tmp_path / "missing.npy"))


def test_list_columns_of_other_tools(tmp_path: Path) -> None:
    """``list``/``large_list`` float columns load like fixed-size lists; ragged, null or non-float ones are refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array(["a", "b", "c", "d"])
    for typ in (pa.list_(pa.float32()), pa.large_list(pa.float32()), pa.list_(pa.float64())):
        pq.write_table(pa.table({"sample_id": ids, "layer_2": pa.array(X.tolist(), typ)}), tmp_path / "l.parquet")
        got = load_features(str(tmp_path / "l.parquet"))
        assert got.layers[2].dtype == typ.value_type.to_pandas_dtype() and got.layers[2].shape == (4, 3)
        np.testing.assert_array_equal(got.layers[2], X)
    bad = {
        "rows of different lengths (3 in row 0, 2 in row 2)": pa.array([[1.0] * 3, [1.0] * 3, [1.0] * 2, [1.0] * 3]),
        "1 null rows": pa.array([[1.0], None, [1.0], [1.0]], pa.list_(pa.float32())),
        "holds int64": pa.array([[1], [2], [3], [4]]),
    }
    for msg, col in bad.items():
        pq.write_table(pa.table({"sample_id": ids, "layer_1": col}), tmp_path / "b.parquet")
        with pytest.raises(FeatureFileError) as info:
            load_features(str(tmp_path / "b.parquet"))
        assert f"b.parquet: column layer_1 {msg}" in str(info.value) or msg in str(info.value), info.value
