"""The embedding stage's files, whatever runs it: where a shard's outputs go and how its part files become one
shard (its completion marker: :mod:`memray.job.markers`).

Per shard under ``<root>/embeddings/<set>/``: ``shard-NNNNN.parquet`` (features), ``.errors.parquet`` (rows not
embedded) and ``.done.json`` (the completion marker: counts, embed key, weights record, input listing digest);
while it is embedded, part files under ``shard-NNNNN.parts/``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema, storage
from memray.io.features import parquet_options
from memray.io.shards import ShardPlan

ROW_GROUP_BYTES = 128 * 1024**2  # parts are merged into row groups of about this size


def shard_url(out: str, plan: ShardPlan, suffix: str) -> str:
    """URL of one of a shard's outputs (``.parquet``, ``.errors.parquet``, ``.done.json``)."""
    return storage.join(out, "embeddings", plan.set_name, plan.key + suffix)


def parts_url(out: str, set_name: str, shard: int) -> str:
    """Folder of a shard's part files while it is being embedded (deleted once the shard is written)."""
    return storage.join(out, "embeddings", set_name, f"shard-{int(shard):05d}.parts")


def finish_shard(
    out: str, plan: ShardPlan, parts: list[str], errors: list[list], meta: dict[str, Any], storage_options: dict | None
) -> dict[str, int]:
    """Write a shard from its part files (names in row order) and error rows, then delete its parts folder.

    Streams the parts into ``shard-NNNNN.parquet`` (memory: about :data:`ROW_GROUP_BYTES`); with no ``ok`` row a
    feature file of an earlier run is deleted. Returns the rows written (``rows_embedded``, ``rows_reported``).

    Raises:
        ValueError: two rows of the shard have the same sample id (nothing is written).
    """
    seen: set[str] = set()

    def check(ids: list[str]) -> None:
        before = len(seen)
        seen.update(ids)
        if len(seen) != before + len(ids):
            raise ValueError(f"set {plan.set_name} {plan.key}: duplicate sample ids; make file names/keys unique")

    check([str(e[1]) for e in errors])
    folder, url, n_ok = parts_url(out, plan.set_name, plan.shard), shard_url(out, plan, ".parquet"), 0
    if parts:
        with storage.open_output(url, storage_options) as fh, contextlib.ExitStack() as stack:
            writer, buf = None, []
            for name in parts:
                with storage.open_url(storage.join(folder, name), "rb", storage_options) as part:
                    table = pq.read_table(part)
                check(table.column(schema.SAMPLE_ID).to_pylist())
                if writer is None:
                    sch = table.schema.with_metadata({schema.META_KEY: json.dumps(meta, sort_keys=True).encode()})
                    writer = stack.enter_context(pq.ParquetWriter(fh, sch, **parquet_options(sch)))
                buf.append(table)
                n_ok += table.num_rows
                if sum(t.nbytes for t in buf) >= ROW_GROUP_BYTES or name == parts[-1]:
                    writer.write_table(pa.concat_tables(buf))
                    buf = []
    else:
        storage.remove(url, storage_options)
    cols = [list(c) for c in zip(*errors, strict=True)] if errors else [[]] * 4
    cols[0] = [plan.set_name] * len(errors)
    table = pa.table(dict(zip(schema.ERRORS_SCHEMA.names, cols, strict=True)), schema=schema.ERRORS_SCHEMA)
    with storage.open_output(shard_url(out, plan, ".errors.parquet"), storage_options) as fh:
        pq.write_table(table, fh)
    storage.remove(folder, storage_options, recursive=True)
    return {"rows_embedded": n_ok, "rows_reported": len(errors)}
