"""The score tables' catalogue: file names, row order, exact Arrow schemas, and DataFrame → Arrow conversion.

Every table is sorted by its order keys (:data:`TABLES`, stable: rows keep their input order within equal keys,
nulls first). The per-sample tables (``neighbors``, ``copies``) are written by tasks as part files
(:mod:`memray.stats.parts`), each part holding one value of the table's leading :data:`GROUP_KEYS` order keys.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pyarrow as pa

from memray.io import schema

# table name -> (file name, sort keys); rows keep their input order within equal keys
TABLES: dict[str, tuple[str, list[str]]] = {
    "ct_scores": (schema.CT_SCORES_FILE, [schema.GEN_SET, schema.LAYER]),
    "ct_cells": (schema.CT_CELLS_FILE, [schema.GEN_SET, schema.LAYER, schema.CELL]),
    "neighbors": (schema.NEIGHBORS_FILE, [schema.ROLE, schema.GEN_SET, schema.LAYER]),
    "copies": (schema.COPIES_FILE, [schema.GEN_SET, schema.LAYER, schema.SAMPLE_ID, schema.RANK]),
    "ct_stability": (schema.STABILITY_FILE, [schema.GEN_SET, schema.LAYER, schema.PARTITION_SEED]),
    "replication": (schema.REPLICATION_FILE, [schema.GEN_SET, schema.LAYER]),
    "memorized": (schema.MEMORIZED_FILE, [schema.GEN_SET, schema.LAYER, schema.P_VALUE, schema.TRAIN_ID]),
}
OPTIONAL = ("copies", "ct_stability", "replication", "memorized")  # empty when ct.top_k = 0 / ct.partitions = 1
SCHEMAS = {
    "ct_scores": schema.CT_SCORES_SCHEMA,
    "ct_cells": schema.CT_CELLS_SCHEMA,
    "neighbors": schema.NEIGHBORS_SCHEMA,
    "copies": schema.COPIES_SCHEMA,
    "ct_stability": schema.STABILITY_SCHEMA,
    "replication": schema.REPLICATION_SCHEMA,
    "memorized": schema.MEMORIZED_SCHEMA,
}
#: per-sample table -> how many leading sort keys hold one value per part file (a part: one set, layer, role)
GROUP_KEYS = {"neighbors": 3, "copies": 2}


def empty(name: str) -> pd.DataFrame:
    """An empty frame with a table's columns."""
    return pd.DataFrame({f.name: pd.Series(dtype=object if pa.types.is_list(f.type) else f.type.to_pandas_dtype())
                         for f in SCHEMAS[name]})  # fmt: skip


def sort_frame(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` in table ``name``'s order (stable, nulls first)."""
    return df.sort_values(TABLES[name][1], kind="stable", na_position="first", ignore_index=True)


def with_meta(sch: pa.Schema, meta: dict[str, Any] | None) -> pa.Schema:
    """``sch`` carrying ``meta`` as memray's JSON metadata (``None``: no metadata)."""
    if meta is None:
        return sch
    return sch.with_metadata({schema.META_KEY: json.dumps(meta, sort_keys=True).encode()})


def to_table(df: pd.DataFrame, sch: pa.Schema, meta: dict[str, Any] | None) -> pa.Table:
    """A DataFrame as an Arrow table with exactly ``sch`` (columns, types) and only memray's metadata."""
    arrays = []
    for f in sch:
        col = df[f.name]
        if pa.types.is_list(f.type):  # lists of ids / distances
            arrays.append(pa.array([list(v) for v in col], type=f.type))
        elif pa.types.is_string(f.type):  # None/NaN -> null (e.g. gen_set of test rows)
            arrays.append(pa.array(col.to_numpy(dtype=object), type=f.type, from_pandas=True))
        else:  # numeric NaN stays NaN (an undefined z or C_T), not null
            arrays.append(pa.array(col.to_numpy(), type=f.type))
    return pa.Table.from_arrays(arrays, schema=with_meta(sch, meta))
