"""Per-sample result tables as Parquet part files written by tasks, assembled into one file by streaming.

The neighbours and copies of a layer are written per query block by the task that computed them
(:mod:`memray.stats.samples`): a part holds one value of the table's leading order keys
(:data:`~memray.stats.catalog.GROUP_KEYS`: role, set, layer) and its rows sorted stably by the remaining ones
(copies: sample id, rank). A :class:`PartsTable` lists a table's parts in input order (layer, then the test set and
the generated sets by name, then block); the table is the stable merge of its parts by the order keys: the same rows
in the same order as :func:`~memray.stats.catalog.sort_frame` on their concatenation. :meth:`PartsTable.write`
streams that merge into one Parquet file in row groups of pyarrow's default 2^20 rows, so the file has the bytes
``pq.write_table`` gives the whole sorted table; it holds one row group plus one batch per merged part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from memray.io.storage import join, open_output, open_url
from memray.stats.catalog import GROUP_KEYS, SCHEMAS, TABLES, empty, sort_frame, to_table, with_meta

ROW_GROUP_ROWS = 1024 * 1024
"""Rows per row group of an assembled file: pyarrow's default, so the bytes equal ``pq.write_table``'s."""
READ_ROWS = 65536
"""Rows per batch read from a part."""


@dataclass(frozen=True)
class Part:
    """One part file: its URL, row count and the values of its table's leading order keys (``None`` = null)."""

    url: str
    rows: int
    group: tuple[Any, ...]


@dataclass(frozen=True)
class PartDir:
    """A folder (local path or URL) where tasks write one layer's part files, ``<root>/<table>/<name>.parquet``."""

    root: str
    storage_options: dict[str, Any] | None = field(default=None, compare=False)

    def write(self, table: str, name: str, df: pd.DataFrame, group: tuple[Any, ...]) -> Part:
        """Write ``df`` (rows already in part order) as part ``name`` of ``table`` (atomically)."""
        url = join(self.root, table, f"{name}.parquet")
        arrow = to_table(df, SCHEMAS[table], None)
        with open_output(url, self.storage_options) as fh:
            pq.write_table(arrow, fh, compression="zstd")
        return Part(url, arrow.num_rows, tuple(group))


def _group_order(group: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, "") if v is None else (1, v) for v in group)  # nulls first, as the frames sort


@dataclass(frozen=True)
class PartsTable:
    """A per-sample table held as part files (see the module docstring); read whole only by :meth:`frame`."""

    name: str
    parts: tuple[Part, ...]
    storage_options: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def rows(self) -> int:
        """Number of rows of the table."""
        return sum(p.rows for p in self.parts)

    def read_part(self, part: Part) -> Iterator[pa.Table]:
        """A part's rows, batch by batch."""
        with open_url(part.url, "rb", self.storage_options) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=READ_ROWS):
                yield pa.Table.from_batches([batch])

    def frame(self) -> pd.DataFrame:
        """The whole table as a sorted DataFrame (for results small enough to hold)."""
        frames = []
        for p in self.parts:
            with open_url(p.url, "rb", self.storage_options) as fh:
                frames.append(pq.read_table(fh).to_pandas())
        return sort_frame(self.name, pd.concat(frames, ignore_index=True) if frames else empty(self.name))

    def batches(self) -> Iterator[pa.Table]:
        """The table's rows in order: parts grouped by their leading keys, each group merged by the others."""
        order = sorted(range(len(self.parts)), key=lambda i: (_group_order(self.parts[i].group), i))
        rest = TABLES[self.name][1][GROUP_KEYS[self.name] :]
        at = 0
        while at < len(order):
            end = at + 1
            while end < len(order) and self.parts[order[end]].group == self.parts[order[at]].group:
                end += 1
            group = [self.parts[i] for i in order[at:end]]
            if len(group) == 1 or not rest:
                for p in group:
                    yield from self.read_part(p)
            else:
                yield from merge_runs([self.read_part(p) for p in group], rest)
            at = end

    def write(self, url: str, meta: dict[str, Any] | None, storage_options: dict[str, Any] | None = None) -> int:
        """Write the table to ``url`` (memray's ``meta`` in the schema metadata; ``storage_options`` of its store,
        default the parts') by streaming; returns its rows."""
        sch = with_meta(SCHEMAS[self.name], meta)
        storage_options = self.storage_options if storage_options is None else storage_options
        total = 0
        with (
            open_output(url, storage_options) as fh,
            pq.ParquetWriter(fh, sch, compression="zstd", write_statistics=True) as writer,
        ):
            held: list[pa.Table] = []
            count = 0
            for t in self.batches():
                held.append(t)
                count += t.num_rows
                while count >= ROW_GROUP_ROWS:
                    cat = pa.concat_tables(held).combine_chunks()
                    writer.write_table(cat.slice(0, ROW_GROUP_ROWS))
                    held, count, total = [cat.slice(ROW_GROUP_ROWS)], count - ROW_GROUP_ROWS, total + ROW_GROUP_ROWS
            if count or not total:  # the last row group (an empty table: one empty row group, as pq.write_table)
                writer.write_table(pa.concat_tables(held).combine_chunks() if held else sch.empty_table())
                total += count
        return total


def _last_key(t: pa.Table, keys: list[str]) -> tuple[Any, ...]:
    return tuple(t.column(k)[t.num_rows - 1].as_py() for k in keys)


def _count_below(t: pa.Table, keys: list[str], bound: tuple[Any, ...]) -> int:
    """Rows of ``t`` (sorted by ``keys``, no nulls) whose key tuple is below ``bound``: a prefix of ``t``."""
    below = pa.array([False] * t.num_rows)
    same = pa.array([True] * t.num_rows)
    for k, v in zip(keys, bound, strict=True):
        col = t.column(k)
        below = pc.or_(below, pc.and_(same, pc.less(col, v)))
        same = pc.and_(same, pc.equal(col, v))
    return int(pc.sum(below).as_py() or 0)


def merge_runs(runs: list[Iterator[pa.Table]], keys: list[str]) -> Iterator[pa.Table]:
    """Stable merge of runs (iterators of tables, each run sorted by ``keys``, no nulls in them): the rows of
    the runs' concatenation sorted stably by ``keys`` (ties keep run order), yielded piece by piece.

    Every round emits the buffered rows below the smallest last key among the runs that have more to read (no
    unread row can precede them), then reads on in the run that set that bound.
    """
    buf: list[pa.Table | None] = [None] * len(runs)
    more = [True] * len(runs)

    def refill(i: int) -> None:
        while more[i] and (buf[i] is None or buf[i].num_rows == 0):
            nxt = next(runs[i], None)
            if nxt is None:
                more[i] = False
            else:
                buf[i] = nxt if buf[i] is None or buf[i].num_rows == 0 else pa.concat_tables([buf[i], nxt])

    for i in range(len(runs)):
        refill(i)
    while True:
        reading = [i for i in range(len(runs)) if more[i]]
        held = [(i, t) for i, t in enumerate(buf) if t is not None and t.num_rows]
        if not reading:
            if held:
                yield _sorted([t for _, t in held], keys)
            return
        limit = min(reading, key=lambda i: (_last_key(buf[i], keys), i))
        bound = _last_key(buf[limit], keys)
        out = []
        for i, t in held:
            n = _count_below(t, keys, bound)
            out.append(t.slice(0, n))
            buf[i] = t.slice(n)
        if any(t.num_rows for t in out):
            yield _sorted(out, keys)
        nxt = next(runs[limit], None)  # the bounding run reads on (its rows at the bound wait for it)
        if nxt is None:
            more[limit] = False
        else:
            buf[limit] = pa.concat_tables([buf[limit], nxt])
        for i in reading:
            refill(i)


def _sorted(tables: list[pa.Table], keys: list[str]) -> pa.Table:
    """The tables' rows (in the given order) sorted stably by ``keys``."""
    t = pa.concat_tables(tables)
    return t.take(pc.sort_indices(t, sort_keys=[(k, "ascending") for k in keys]))
