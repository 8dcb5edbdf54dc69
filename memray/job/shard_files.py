"""The embedding stage's files and completion markers, whatever runs it: where a shard's outputs go, how its part
files become one shard, and whether a finished shard can be kept.

Per shard under ``<root>/embeddings/<set>/``: ``shard-NNNNN.parquet`` (features), ``.errors.parquet`` (rows not
embedded) and ``.done.json`` (the completion marker: counts, embed key, weights record, input listing digest);
while it is embedded, part files under ``shard-NNNNN.parts/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema, storage
from memray.io.features import parquet_options
from memray.io.shards import ShardPlan

log = logging.getLogger(__name__)
ROW_GROUP_BYTES = 128 * 1024**2  # parts are merged into row groups of about this size


def shard_url(out: str, plan: ShardPlan, suffix: str) -> str:
    """URL of one of a shard's outputs (``.parquet``, ``.errors.parquet``, ``.done.json``)."""
    return storage.join(out, "embeddings", plan.set_name, plan.key + suffix)


def parts_url(out: str, set_name: str, shard: int) -> str:
    """Folder of a shard's part files while it is being embedded (deleted once the shard is written)."""
    return storage.join(out, "embeddings", set_name, f"shard-{int(shard):05d}.parts")


def finish_shard(
    out: str, plan: ShardPlan, parts: list[str], errors: list[list], meta: dict[str, Any], so: dict | None
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
        with storage.open_output(url, so) as fh, contextlib.ExitStack() as stack:
            writer, buf = None, []
            for name in parts:
                with storage.open_url(storage.join(folder, name), "rb", so) as part:
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
        storage.remove(url, so)
    cols = [list(c) for c in zip(*errors, strict=True)] if errors else [[]] * 4
    cols[0] = [plan.set_name] * len(errors)
    table = pa.table(dict(zip(schema.ERRORS_SCHEMA.names, cols, strict=True)), schema=schema.ERRORS_SCHEMA)
    with storage.open_output(shard_url(out, plan, ".errors.parquet"), so) as fh:
        pq.write_table(table, fh)
    storage.remove(folder, so, recursive=True)
    return {"rows_embedded": n_ok, "rows_reported": len(errors)}


def shard_done(out: str, plan: ShardPlan, embed_key: str, so: dict | None, views: tuple[str, ...] = ()) -> bool:
    """Whether a shard's outputs are complete and were made from its current listing with this embed config, under
    the further ``views`` (names, :mod:`memray.embedding.views`; a marker without ``views`` has none)."""
    marker = shard_url(out, plan, ".done.json")
    if not storage.exists(marker, so):
        return False
    try:
        stats = storage.read_json(marker, so)
    except (OSError, ValueError) as exc:
        log.warning("set %s %s: unreadable marker (%s); embedding it again", plan.set_name, plan.key, exc)
        return False
    if stats.get("embed_key") != embed_key or stats.get("listing_digest") != plan.listing_digest():
        log.info(
            "set %s %s: its input files changed since it was embedded; embedding it again", plan.set_name, plan.key
        )
        return False
    if list(stats.get("views", [])) != list(views):
        log.info("set %s %s: embedded under views %s, now %s; embedding it again", plan.set_name, plan.key,
                 stats.get("views", []), list(views))  # fmt: skip
        return False
    if int(stats.get("rows_embedded", 0)) == 0:
        return True
    try:
        with storage.open_url(shard_url(out, plan, ".parquet"), "rb", so) as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", so) as fh:
            pq.ParquetFile(fh)
    except Exception as exc:  # truncated or overwritten by hand: redo rather than fail later
        log.warning("set %s %s: damaged shard files (%s); embedding it again", plan.set_name, plan.key, exc)
        return False
    if rows != int(stats["rows_embedded"]):
        log.warning("set %s %s: %d rows on disk, marker says %s; embedding it again", plan.set_name, plan.key, rows,
                    stats["rows_embedded"])  # fmt: skip
        return False
    return True
