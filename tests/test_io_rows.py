"""memray.io.rows: ArrayRows and ParquetRows read any global range and any ids exactly as the concatenated array."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memray.io.features import FeatureFileError, FeatureSet
from memray.io.rows import ArrayRows, ParquetRows, Piece, Rows, pieces

RNG = np.random.default_rng(7)
X = RNG.normal(size=(23, 5)).astype(np.float32)
IDS = np.array([f"img-{i:03d}" for i in range(len(X))], dtype=object)
SPLITS = (0, 4, 5, 5, 13, 23)  # files of 4, 1, 0 (left out), 8 and 10 rows


def _write(tmp: Path, splits=SPLITS, row_group_size: int = 3, kind: str = "fixed") -> list[tuple[str, int]]:
    """Files holding X/IDS rows split at ``splits``; layer 2 = X, layer 4 = 2X. kind: fixed | list | float16."""
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(splits)):
        url = str(tmp / f"part-{i}.parquet")
        if kind == "fixed":
            table = _fixed(FeatureSet(IDS[a:b], {2: X[a:b], 4: 2 * X[a:b]}))
        elif kind == "float16":
            table = _fixed(FeatureSet(IDS[a:b], {2: X[a:b].astype(np.float16)}))
        else:  # plain list<float> columns, as another tool (or Ray's write_parquet) writes them
            cols = {"sample_id": pa.array(IDS[a:b].tolist(), pa.string())}
            cols["layer_2"] = pa.array([r.tolist() for r in X[a:b]], pa.large_list(pa.float32()))
            table = pa.table(cols)
        pq.write_table(table, url, row_group_size=row_group_size)
        out.append((url, b - a))
    return out


def _fixed(fs: FeatureSet) -> pa.Table:
    from memray.io.features import features_to_table

    return features_to_table(fs)


@pytest.mark.parametrize("kind", ["fixed", "list"])
def test_parquet_reads_across_file_and_row_group_boundaries_equal_the_array(tmp_path: Path, kind: str) -> None:
    rows = ParquetRows(pieces(_write(tmp_path, kind=kind)), 2)
    assert isinstance(rows, Rows) and (rows.n, rows.dim) == X.shape and len(rows.pieces) == 4
    for start in range(len(X) + 1):
        for stop in range(start, len(X) + 1):
            got = rows.read(start, stop)
            assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (stop - start, 5)
            np.testing.assert_array_equal(got, X[start:stop])


def test_parquet_ids_any_order_and_other_layer(tmp_path: Path) -> None:
    rows = ParquetRows(pieces(_write(tmp_path)), 4)
    np.testing.assert_array_equal(rows.read(0, rows.n), 2 * X)
    pick = np.array([22, 0, 4, 3, 4, 13, 12, 5], dtype=np.int64)
    assert rows.ids(pick).tolist() == IDS[pick].tolist()
    assert rows.ids(np.arange(rows.n)).tolist() == IDS.tolist()
    assert rows.ids(np.zeros(0, np.int64)).tolist() == []
    with pytest.raises(IndexError):
        rows.ids(np.array([23]))
    with pytest.raises(IndexError):
        rows.read(3, 24)


def test_float16_files_come_back_as_float32(tmp_path: Path) -> None:
    rows = ParquetRows(pieces(_write(tmp_path, kind="float16")), 2)
    got = rows.read(2, 20)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, X[2:20].astype(np.float16).astype(np.float32))


def test_handle_pickles_small_and_reads_the_same(tmp_path: Path) -> None:
    rows = ParquetRows(pieces(_write(tmp_path)), 2)
    blob = pickle.dumps(rows)
    assert len(blob) < 1000 + 200 * len(rows.pieces)  # URLs and counts, never the data
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.read(1, 17), X[1:17])
    arr = pickle.loads(pickle.dumps(ArrayRows(X, IDS)))
    np.testing.assert_array_equal(arr.read(3, 9), X[3:9])


def test_array_rows() -> None:
    x64 = X.astype(np.float64)
    rows = ArrayRows(x64)
    assert isinstance(rows, Rows) and (rows.n, rows.dim) == X.shape
    got = rows.read(5, 11)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, X[5:11])
    assert rows.ids(np.array([2, 0])).tolist() == ["2", "0"]
    assert ArrayRows(X, IDS).ids(np.array([9, 1])).tolist() == ["img-009", "img-001"]


def test_only_overlapping_files_are_opened(tmp_path: Path) -> None:
    files = _write(tmp_path)
    Path(files[0][0]).write_bytes(b"not parquet any more")  # rows 0..3: reading elsewhere must not touch it
    rows = ParquetRows(pieces(files), 2, dim=5)
    np.testing.assert_array_equal(rows.read(4, 23), X[4:23])
    assert rows.ids(np.array([20, 4])).tolist() == ["img-020", "img-004"]
    with pytest.raises(Exception, match="part-0"):
        rows.read(3, 5)


def test_missing_column_and_other_dimension_name_the_file(tmp_path: Path) -> None:
    files = _write(tmp_path)
    with pytest.raises(FeatureFileError, match=r"part-0\.parquet: no column 'layer_7'"):
        ParquetRows(pieces(files), 7, dim=5).read(0, 5)
    odd = tmp_path / "odd.parquet"
    pq.write_table(_fixed(FeatureSet(IDS[:3], {2: np.zeros((3, 6), np.float32)})), odd)
    rows = ParquetRows(pieces([*files, (str(odd), 3)]), 2)
    np.testing.assert_array_equal(rows.read(0, 23), X)  # the odd file is not read
    with pytest.raises(FeatureFileError, match=r"odd\.parquet: column layer_2 has dimension 6, expected 5"):
        rows.read(20, 26)
    with pytest.raises(FeatureFileError, match=r"part-1\.parquet: 1 rows, the listing said 2"):
        ParquetRows((Piece(files[1][0], 2, 0),), 2, dim=5).read(0, 1)
    with pytest.raises(ValueError, match="offset"):
        ParquetRows((Piece(files[0][0], 4, 1),), 2)


def test_works_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    local = _write(tmp_path)
    remote = []
    for url, n in local:
        key = f"{s3_bucket}/feats/{Path(url).name}"
        fs.put(url, key)
        remote.append((f"s3://{key}", n))
    rows = ParquetRows(pieces(remote), 2)
    np.testing.assert_array_equal(rows.read(3, 21), X[3:21])
    back = pickle.loads(pickle.dumps(rows))
    assert back.ids(np.array([21, 3])).tolist() == ["img-021", "img-003"]


_PEAK = """
import sys, numpy as np, pyarrow as pa
from memray.io.rows import ParquetRows, pieces
if sys.argv[3] == "table":  # the reference: Arrow reading the whole column
    import pyarrow.parquet as pq
    pq.read_table(sys.argv[1], columns=["layer_1"])
else:
    rows = ParquetRows(pieces([(sys.argv[1], int(sys.argv[2]))]), 1)
    x = rows.read(int(sys.argv[3]), int(sys.argv[4]))
    assert (x[:, 0] == np.arange(int(sys.argv[3]), int(sys.argv[4])) * x.shape[1]).all()
print(pa.default_memory_pool().max_memory())
"""


def test_read_memory_is_bounded_by_the_rows_read(tmp_path: Path) -> None:
    """A 51 MB single-row-group file: reading 10 rows from its middle peaks at about one batch, not the column
    (Arrow's peak allocation, measured in a fresh interpreter)."""
    import subprocess
    import sys

    n, d = 200_000, 64
    big = np.arange(n * d, dtype=np.float32).reshape(n, d)
    url = str(tmp_path / "big.parquet")
    pq.write_table(_fixed(FeatureSet(np.array([str(i) for i in range(n)], dtype=object), {1: big})), url,
                   row_group_size=n)  # fmt: skip

    def peak(start: int | str, stop: int) -> int:
        cmd = [sys.executable, "-c", _PEAK, url, str(n), str(start), str(stop)]
        return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())

    table, small, whole = peak("table", 0), peak(150_000, 150_010), peak(0, n)
    assert table > big.nbytes  # the measure sees a whole-column read
    assert small < table / 8 and whole < table / 8, (table, small, whole)  # about one batch, streamed into the output
