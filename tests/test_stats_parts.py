"""Per-sample tables as part files: the streamed file has the bytes of the sorted table written whole."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from memray.io import schema
from memray.stats import parts as parts_mod
from memray.stats.catalog import SCHEMAS, sort_frame, to_table
from memray.stats.parts import PartDir, PartsTable, merge_runs

META = {"table": "x", "config": {"seed": 0}}


def whole_bytes(name: str, df: pd.DataFrame, **kw) -> bytes:
    """What write_results writes: the sorted frame as one table, pq.write_table."""
    buf = io.BytesIO()
    pq.write_table(to_table(sort_frame(name, df), SCHEMAS[name], META), buf, compression="zstd",
                   write_statistics=True, **kw)  # fmt: skip
    return buf.getvalue()


def copies_block(rng: np.random.Generator, gen_set: str, layer: int, ids: np.ndarray, k: int = 3) -> pd.DataFrame:
    m = len(ids)
    return pd.DataFrame({
        schema.GEN_SET: gen_set,
        schema.SAMPLE_ID: np.repeat(ids, k),
        schema.LAYER: np.int32(layer),
        schema.RANK: np.tile(np.arange(1, k + 1, dtype=np.int32), m),
        schema.TRAIN_ID: rng.integers(0, 50, m * k).astype(str).astype(object),
        schema.DISTANCE: rng.random(m * k),
        schema.TEST_QUANTILE: np.where(rng.random(m * k) < 0.1, np.nan, rng.random(m * k)),
        schema.GEN_SOURCE: None,
        schema.TRAIN_SOURCE: [None if i % 3 else f"src{i}" for i in range(m * k)],
        schema.VIEW: np.repeat(np.array(["identity", "hflip"], dtype=object)[np.arange(m) % 2], k),
    })  # fmt: skip


def copies_parts(tmp: Path, rng: np.random.Generator, block: int = 40):
    """Two sets × two layers, unsorted sample ids (with repeats) cut into blocks: (PartsTable, concatenation)."""
    pdir, parts, frames = PartDir(str(tmp / "parts")), [], []
    ids = {"b": np.array([f"s{rng.integers(0, 90)}" for _ in range(130)]), "a": rng.permutation(97).astype(str)}
    for layer in (3, 1):  # input order: layer, set, block (the layers out of order on purpose)
        for name in sorted(ids):
            for g, lo in enumerate(range(0, len(ids[name]), block)):
                df = copies_block(rng, name, layer, ids[name][lo : lo + block])
                frames.append(df)
                part = df.sort_values([schema.SAMPLE_ID, schema.RANK], kind="stable", ignore_index=True)
                parts.append(pdir.write("copies", f"l{layer}-{name}-b{g}", part, (name, layer)))
    return PartsTable("copies", tuple(parts)), pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize(("read_rows", "group_rows"), [(7, 100), (1000, 1000)])
def test_streamed_copies_equal_the_sorted_table_written_whole(tmp_path, monkeypatch, read_rows, group_rows):
    rng = np.random.default_rng(0)
    table, cat = copies_parts(tmp_path, rng)
    monkeypatch.setattr(parts_mod, "READ_ROWS", read_rows)  # many merge rounds, ties at the bound
    monkeypatch.setattr(parts_mod, "ROW_GROUP_ROWS", group_rows)
    assert table.write(str(tmp_path / "copies.parquet"), META) == len(cat) == table.rows
    got = (tmp_path / "copies.parquet").read_bytes()
    assert got == whole_bytes("copies", cat, row_group_size=group_rows)
    assert pq.ParquetFile(tmp_path / "copies.parquet").metadata.num_row_groups == -(-len(cat) // group_rows)
    pd.testing.assert_frame_equal(table.frame(), pd.read_parquet(tmp_path / "copies.parquet"))


def test_neighbours_at_the_default_row_group_and_an_empty_table(tmp_path):
    """> 2^20 rows: two row groups, as pq.write_table cuts them; nulls (test rows' gen_set) sort first."""
    rng = np.random.default_rng(1)
    pdir, parts, frames = PartDir(str(tmp_path / "p")), [], []
    for layer in (1, 2):
        for role, gen_set, n in (("test", None, 1000), ("gen", "z", 300_000), ("gen", "y", 230_000)):
            df = pd.DataFrame({
                schema.ROLE: role, schema.GEN_SET: pd.Series([gen_set] * n, dtype=object),
                schema.SAMPLE_ID: np.arange(n).astype(str), schema.LAYER: np.int32(layer),
                schema.CELL: rng.integers(0, 10, n).astype(np.int32),
                schema.NN_TRAIN_ID: rng.integers(0, 10**6, n).astype(str), schema.NN_DISTANCE: rng.random(n),
            })  # fmt: skip
            frames.append(df)
            parts.append(pdir.write("neighbors", f"{layer}-{gen_set}", df, (role, gen_set, layer)))
    cat = pd.concat(frames, ignore_index=True)
    table = PartsTable("neighbors", tuple(parts))
    table.write(str(tmp_path / "n.parquet"), META)
    assert (tmp_path / "n.parquet").read_bytes() == whole_bytes("neighbors", cat)
    assert pq.ParquetFile(tmp_path / "n.parquet").metadata.num_row_groups == 2
    empty = PartsTable("copies", ())
    assert empty.write(str(tmp_path / "e.parquet"), META) == 0
    assert (tmp_path / "e.parquet").read_bytes() == whole_bytes("copies", empty.frame())


def test_merge_runs_is_a_stable_sort_of_the_runs_concatenation():
    import pyarrow as pa

    rng = np.random.default_rng(2)
    runs, whole = [], []
    for r in range(4):
        keys = np.sort(rng.integers(0, 30, 50))
        t = pa.table({"k": keys, "run": np.full(50, r), "pos": np.arange(50)})
        runs.append(t)
        whole.append(t)
    pieces = merge_runs([iter([t.slice(i, 6) for i in range(0, 50, 6)]) for t in runs], ["k"])
    got = pa.concat_tables(list(pieces)).to_pandas()
    want = pa.concat_tables(whole).to_pandas().sort_values("k", kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
