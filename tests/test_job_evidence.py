"""memray/job/evidence.py: the FID-nearest baseline from per-set feature statistics computed where the files are."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema
from memray.job.evidence import fid_attribution, fid_from_stats, set_feature_stats


def _write(root: Path, name: str, x: np.ndarray, per_file: int = 70) -> list[tuple[str, int]]:
    files = []
    for i, lo in enumerate(range(0, len(x), per_file)):
        part = np.ascontiguousarray(x[lo : lo + per_file])
        table = pa.table({
            schema.SAMPLE_ID: [f"{name}{j}" for j in range(lo, lo + len(part))],
            schema.layer_column(4): pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), x.shape[1]),
        })  # fmt: skip
        url = root / name / f"part-{i}.parquet"
        url.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, url)
        files.append((str(url), len(part)))
    return files


def test_fid_from_per_set_statistics_of_the_files_equals_fid_of_the_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scales = {"a": 1.0, "b": 2.0, "q": 1.1, "r": 2.1}
    feats = {n: (rng.normal(size=(200, 6)) * s + s).astype(np.float32) for n, s in scales.items()}
    labels = {"a": "A", "b": "B", "q": None, "r": None}
    files = {n: _write(tmp_path, n, x) for n, x in feats.items()}
    calls: list[list[str]] = []

    def stats_of(names: list[str]) -> dict:
        calls.append(names)  # one batch of sets, as a job maps them to tasks
        stats = map(partial(set_feature_stats, layer=4, storage_options=None), [files[n] for n in names])
        return dict(zip(names, stats, strict=True))

    got = fid_from_stats(stats_of, labels)
    pd.testing.assert_frame_equal(got, fid_attribution(feats, labels), check_exact=True)
    assert got.set_index(schema.QUERY)[schema.PREDICTED].to_dict() == {"q": "A", "r": "B"} and len(calls) == 1
    assert fid_from_stats(stats_of, {"a": "A", "b": "B"}) is None and len(calls) == 1  # nothing to attribute
