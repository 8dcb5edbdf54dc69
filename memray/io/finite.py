"""NaN/inf embeddings found before any layer is scored: per file and layer, the count and the first sample ids.

A memray shard records its non-finite rows in its completion marker (``shard-NNNNN.done.json``, key
:data:`NONFINITE_KEY`), counted by the embedding actors from the arrays they write; any other feature file (a set
given as embeddings, a shard of an older memray) is read once, column by column in bounded batches, by
:func:`scan_file`. :func:`check_finite` runs the scans through a mapper (Ray tasks in a job) and raises
:class:`NonFiniteError` naming set, layer, sample ids and file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from memray.io import schema, storage
from memray.io.features import FeatureFileError, column_matrix
from memray.io.rows import open_parquet

log = logging.getLogger(__name__)
NONFINITE_KEY = "nonfinite"
"""Marker key: ``{layer: [rows with a NaN/inf value, [their first sample ids]]}`` (``{}``: every row finite)."""
SHOWN_IDS = 10
"""Sample ids kept per file and layer."""
SHOWN_FILES = 3
"""(set, layer, file) entries named in the error message."""
SCAN_BATCH_BYTES = 8 * 2**20
"""Float bytes per decoded batch of a scan (all the scanned layers of a batch of rows)."""

Found = dict[int, tuple[int, list[str]]]


class NonFiniteError(FeatureFileError):
    """Embeddings hold NaN/inf values; the message names set, layer, sample ids and file."""


def nonfinite_rows(ids: np.ndarray, layers: dict[int, np.ndarray]) -> Found:
    """``{layer: (count, first ids)}`` of the rows of ``layers`` (each (n, d), rows matching ``ids``) holding a NaN
    or inf; layers without any are left out."""
    found: Found = {}
    for layer, x in layers.items():
        bad = np.flatnonzero(~np.isfinite(np.asarray(x)).all(axis=1))
        if len(bad):
            found[int(layer)] = (len(bad), [str(ids[i]) for i in bad[:SHOWN_IDS]])
    return found


def merge(a: Found, b: Found) -> Found:
    """Two files' (or parts') findings as one: counts add, the first ids are kept."""
    out = dict(a)
    for layer, (n, ids) in b.items():
        old_n, old_ids = out.get(layer, (0, []))
        out[layer] = (old_n + n, (old_ids + ids)[:SHOWN_IDS])
    return out


def to_json(found: Found) -> dict[str, list]:
    """``found`` as stored in a marker (string keys)."""
    return {str(k): [n, list(ids)] for k, (n, ids) in sorted(found.items())}


def from_json(data: dict[str, list]) -> Found:
    """A marker's :data:`NONFINITE_KEY` value back as ``{layer: (count, ids)}``."""
    return {int(k): (int(v[0]), [str(i) for i in v[1]]) for k, v in data.items()}


def scan_file(url: str, layers: list[int], storage_options: dict[str, Any] | None = None) -> Found:
    """Read ``layers`` of one feature Parquet file in bounded batches and return their non-finite rows."""
    with storage.translate_errors(url, "read"), open_parquet(url, storage_options) as fh:
        pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=2**20)
        cols = [schema.layer_column(layer) for layer in layers]
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise FeatureFileError(f"{url}: no column(s) {missing}")
        width = sum(_list_size(pf, c) for c in cols) or 1
        found: Found = {}
        rows = max(64, SCAN_BATCH_BYTES // (4 * width))
        for batch in pf.iter_batches(batch_size=rows, columns=[schema.SAMPLE_ID, *cols]):
            xs = {layer: column_matrix(batch.column(c), c, url) for layer, c in zip(layers, cols, strict=True)}
            bad = nonfinite_rows(np.arange(batch.num_rows), xs)
            if bad:
                ids = batch.column(schema.SAMPLE_ID).to_pylist()
                found = merge(found, {k: (n, [str(ids[int(i)]) for i in rows]) for k, (n, rows) in bad.items()})
        return found


def _list_size(pf: pq.ParquetFile, column: str) -> int:
    typ = pf.schema_arrow.field(column).type
    return int(getattr(getattr(typ, "storage_type", typ), "list_size", 0) or 1024)


def marker_found(url: str, n: int, storage_options: dict[str, Any] | None = None) -> Found | None:
    """What a memray shard's marker recorded about the feature file ``url`` of ``n`` rows, or ``None`` when it has
    no marker, an older one, or one for another row count (then the file is scanned)."""
    if not url.endswith(".parquet"):
        return None
    marker = url.removesuffix(".parquet") + ".done.json"
    try:
        stats = storage.read_json(marker, storage_options)
    except (FileNotFoundError, ValueError, OSError):
        return None
    if NONFINITE_KEY not in stats or int(stats.get("rows_embedded", -1)) != int(n):
        return None
    return from_json(stats[NONFINITE_KEY])


def check_finite(
    sets: dict[str, list[tuple[str, int]]],
    layers: list[int],
    storage_options: dict[str, Any] | None = None,
    mapper: Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]] = map,
) -> None:
    """Refuse NaN/inf values in ``layers`` of any set's feature files (``{set: [(url, rows)]}``).

    Files whose shard marker recorded the answer are not read; the others are scanned, one mapper item each.

    Raises:
        NonFiniteError: naming, for the first :data:`SHOWN_FILES` (set, layer, file), the count and sample ids.
    """
    if not layers:
        return
    layers = sorted(int(x) for x in layers)
    found: dict[tuple[str, str], Found] = {}
    todo: list[tuple[str, str]] = []
    for name, pieces in sets.items():
        for url, n in pieces:
            if not n:
                continue
            known = marker_found(url, n, storage_options)
            if known is None:
                todo.append((name, url))
            else:
                found[(name, url)] = {k: v for k, v in known.items() if k in layers}
    if todo:
        log.info("checking %d feature file(s) for NaN/inf values (layers %s)", len(todo), layers)
        scans = mapper(_Scan(layers, storage_options), [url for _, url in todo])
        found.update(zip(todo, list(scans), strict=True))
    bad = [(name, url, layer, n, ids) for (name, url), f in found.items() for layer, (n, ids) in sorted(f.items())]
    if bad:
        raise NonFiniteError(_message(bad))


class _Scan:
    """A picklable mapper function: :func:`scan_file` of one URL."""

    def __init__(self, layers: list[int], storage_options: dict[str, Any] | None) -> None:
        self.layers, self.storage_options = layers, storage_options

    def __call__(self, url: str) -> Found:
        return scan_file(url, self.layers, self.storage_options)


def _message(bad: list[tuple[str, str, int, int, list[str]]]) -> str:
    parts = []
    for name, url, layer, n, ids in bad[:SHOWN_FILES]:
        shown = ", ".join(ids) + (", …" if n > len(ids) else "")
        parts.append(f"set {name!r} layer {layer}: {n} row(s) in {url} (sample ids: {shown})")
    more = f"; and {len(bad) - SHOWN_FILES} more (set, layer, file)" if len(bad) > SHOWN_FILES else ""
    return (
        f"NaN/inf embedding values, found before scoring: {'; '.join(parts)}{more}; drop or fix these samples and "
        "rerun (for images memray embedded, the encoder gave these values: check embed.weights and embed.dtype)"
    )
