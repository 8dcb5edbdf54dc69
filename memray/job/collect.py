"""The collect stage: after embedding, the shard markers → every set's feature files, counts and error rows.

Reads only the small completion markers and error files (never the features); checks rows read = rows embedded +
rows reported for every set, and refuses a set without any embedded row. Also here: the resume history of an output
folder.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema, storage
from memray.io.images import STATUS_SKIPPED
from memray.io.shards import ShardPlan
from memray.job.config import AuditConfig
from memray.job.markers import read_shard_marker
from memray.job.preflight import Preflight
from memray.job.shard_files import shard_url

Counts = dict[str, dict[str, int]]
Pieces = dict[str, list[tuple[str, int]]]


def set_counts(read: int = 0, embedded: int = 0, reported: int = 0, skipped: int = 0) -> dict[str, int]:
    """One set's counts as recorded in ``run.json`` (rows read = rows embedded + rows reported)."""
    return {"rows_read": read, "rows_embedded": embedded, "rows_reported": reported, "files_skipped": skipped}


def collect_errors(
    out: str, plans: list[ShardPlan], skipped: dict[str, list[tuple[str, str]]], storage_options: dict | None
) -> tuple[pa.Table, Counts, Pieces]:
    """All error rows (plus one ``skipped`` row per skipped file), per-set counts and feature files.

    Reads the shard markers only (small JSON); checks rows read = embedded + reported for every set. The feature
    files are ``(url, rows)`` per set in shard order: the set's global row order.
    """
    tables, counts, pieces = [], {}, {}
    for plan in plans:
        stats = read_shard_marker(out, plan, storage_options)
        if int(stats["rows_embedded"]):
            pieces.setdefault(plan.set_name, []).append((shard_url(out, plan, ".parquet"), int(stats["rows_embedded"])))
        c = counts.setdefault(plan.set_name, set_counts())
        for k in ("rows_read", "rows_embedded", "rows_reported"):
            c[k] += int(stats[k])
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", storage_options) as fh:
            tables.append(pq.read_table(fh).cast(schema.ERRORS_SCHEMA))
    for name, entries in skipped.items():
        counts.setdefault(name, set_counts())
        counts[name]["files_skipped"] = len(entries)
        if entries:
            cols = {
                schema.SET: [name] * len(entries),
                schema.SAMPLE_ID: [u for u, _ in entries],
                schema.STATUS: [STATUS_SKIPPED] * len(entries),
                schema.ERROR: [why for _, why in entries],
            }
            tables.append(pa.table(cols, schema=schema.ERRORS_SCHEMA))
    for name, c in counts.items():
        if c["rows_read"] != c["rows_embedded"] + c["rows_reported"]:
            raise RuntimeError(f"set {name}: rows read {c['rows_read']} != embedded + reported {c}")
    errors = pa.concat_tables(tables).cast(schema.ERRORS_SCHEMA) if tables else schema.ERRORS_SCHEMA.empty_table()
    return errors, counts, pieces


def collect_all(
    groups: dict[str, list[ShardPlan]], checked: Preflight, storage_options: dict | None
) -> tuple[pa.Table, Counts, Pieces]:
    """:func:`collect_errors` over every embedding root (the output, and the reference when there is one)."""
    tables, counts, pieces = [], {}, {}
    for root, group in groups.items():
        names = {plan.set_name for plan in group}
        skipped = {k: v for k, v in checked.skipped.items() if k in names}  # each set's skipped files once
        t, c, p = collect_errors(root, group, skipped, storage_options)
        tables.append(t)
        counts.update(c)
        pieces.update(p)
    if not tables:  # every set given as embeddings
        tables = [schema.ERRORS_SCHEMA.empty_table()]
    return pa.concat_tables(tables), counts, pieces


def check_embedded(cfg: AuditConfig, counts: dict[str, dict[str, int]], pieces: dict[str, list]) -> None:
    """Refuse a set without any embedded row: one whose inputs held no image, or whose every image failed."""
    for spec in cfg.sets:
        if pieces.get(spec.name):
            continue
        c = counts.get(spec.name) or set_counts()
        if c["rows_read"]:
            raise ValueError(
                f"set {spec.name!r}: none of its {c['rows_read']} image(s) could be embedded; see {schema.ERRORS_FILE} "
                "(a status and an error per image)"
            )
        skipped = f" ({c['files_skipped']} file(s) skipped: see {schema.ERRORS_FILE})" if c["files_skipped"] else ""
        raise ValueError(f"set {spec.name!r}: its inputs hold no image or embedding row{skipped}; give at least one")


def embedded_layers(pieces: list[tuple[str, int]], storage_options: dict | None) -> list[int]:
    """Layer numbers present in a set's embeddings (from its first feature file's schema)."""
    with storage.open_url(pieces[0][0], "rb", storage_options) as fh:
        names = pq.read_schema(fh).names
    return sorted(x for x in (schema.parse_layer_column(n) for n in names) if x is not None)


def previous_stats(out: str, storage_options: dict | None) -> list[dict[str, Any]]:
    """The runs recorded in an earlier ``run.json`` of this folder (oldest first), for the resume history."""
    url = storage.join(out, schema.RUN_FILE)
    if not storage.exists(url, storage_options):
        return []
    try:
        old = storage.read_json(url, storage_options).get("stats", {})
    except (OSError, ValueError):
        return []
    history = list(old.get("history", []))
    if old:
        history.append({k: old[k] for k in ("started_utc", "seconds", "embed", "score", "nodes") if k in old})
    return history
