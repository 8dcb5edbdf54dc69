"""memray.io.finite: NaN/inf embeddings named by set, layer, sample ids and file before any layer is scored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from memray.io import finite
from memray.io.features import FeatureSet, write_features
from memray.io.finite import NonFiniteError, check_finite, scan_file


def _write(path: Path, prefix: str, n: int, bad: dict[int, list[int]] | None = None, value: float = np.nan) -> str:
    """A feature file of ``n`` rows ``<prefix>0…`` with layers 1-3 (8-d); ``bad``: {layer: rows set to ``value``}."""
    rng = np.random.default_rng(n)
    layers = {ell: rng.normal(size=(n, 8)).astype(np.float32) for ell in (1, 2, 3)}
    for ell, rows in (bad or {}).items():
        layers[ell][rows, 3] = value
    write_features(str(path), FeatureSet(np.array([f"{prefix}{i}" for i in range(n)], dtype=object), layers))
    return str(path)


def test_every_set_is_checked_and_named_by_sample_ids_and_file(tmp_path: Path) -> None:
    train_a = _write(tmp_path / "train" / "a.parquet", "t", 40)
    train_b = _write(tmp_path / "train" / "b.parquet", "u", 40, {3: [5, 17]})
    test = _write(tmp_path / "test.parquet", "p", 20)
    gen = _write(tmp_path / "gen.parquet", "g", 20, {2: [2]}, value=np.inf)
    sets = {"train": [(train_a, 40), (train_b, 40)], "test": [(test, 20)], "gen": [(gen, 20)]}
    with pytest.raises(NonFiniteError) as err:
        check_finite(sets, [1, 2, 3])
    msg = str(err.value)
    assert "\n" not in msg
    assert f"set 'train' layer 3: 2 row(s) in {train_b} (sample ids: u5, u17)" in msg
    assert f"set 'gen' layer 2: 1 row(s) in {gen} (sample ids: g2)" in msg
    assert "train_a" not in msg and "'test'" not in msg
    check_finite(sets, [1])  # layer 1 is finite everywhere
    check_finite(sets, [])


def test_a_scan_reads_bounded_batches_and_keeps_the_first_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finite, "SCAN_BATCH_BYTES", 64 * 4 * 8 * 2)  # 64 rows per batch of two 8-d layers
    bad_rows = [1, 70, 130, 131, 199, *range(140, 152)]
    url = _write(tmp_path / "f.parquet", "r", 200, {1: bad_rows})
    found = scan_file(url, [1, 2])
    assert found == {1: (len(bad_rows), [f"r{i}" for i in sorted(bad_rows)[: finite.SHOWN_IDS]])}
    assert scan_file(url, [2, 3]) == {}


def test_a_shard_marker_answers_without_reading_the_file(tmp_path: Path) -> None:
    url = _write(tmp_path / "shard-00000.parquet", "s", 30)  # finite values, but the marker says otherwise
    marker = tmp_path / "shard-00000.done.json"
    marker.write_text(json.dumps({"rows_embedded": 30, finite.NONFINITE_KEY: {"2": [1, ["s7"]]}}))
    with pytest.raises(NonFiniteError, match=re.escape(f"set 'x' layer 2: 1 row(s) in {url} (sample ids: s7)")):
        check_finite({"x": [(url, 30)]}, [1, 2])
    check_finite({"x": [(url, 30)]}, [1, 3])  # the marker's layer is not being scored
    marker.write_text(json.dumps({"rows_embedded": 29, finite.NONFINITE_KEY: {"2": [1, ["s7"]]}}))
    check_finite({"x": [(url, 30)]}, [1, 2])  # a marker of another row count is not trusted: the file is read


def test_found_rows_merge_and_round_trip_through_json() -> None:
    a = {1: (3, ["a", "b", "c"])}
    b = {1: (12, [f"x{i}" for i in range(10)]), 2: (1, ["y"])}
    merged = finite.merge(a, b)
    assert merged == {1: (15, ["a", "b", "c"] + [f"x{i}" for i in range(7)]), 2: (1, ["y"])}
    assert finite.from_json(json.loads(json.dumps(finite.to_json(merged)))) == merged
