"""Rows of one layer of a set in a fixed global order, read by range: in memory or spread over Parquet files.

A :class:`Rows` is a cheap, picklable handle (URLs and counts, never the data, except :class:`ArrayRows`): a
worker given one reads its own rows from storage. Row position is the global int64 id: the files in the given
order, rows in file order. ``read`` returns float32 whatever the stored float type; its memory is O(rows read)
plus one Parquet batch, never O(file): only the files overlapping the range are opened, only the layer's column
and the row groups (and batches) overlapping the range are decoded.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema
from memray.io.features import FeatureFileError, column_matrix
from memray.io.storage import is_remote, open_url, translate_errors

log = logging.getLogger(__name__)

READ_BATCH_BYTES = 2 * 2**20
"""Float bytes per decoded Parquet batch inside a row group (bounds a read's memory beyond the rows it returns:
Arrow's reader peaks at ~5x a batch's values with the list levels and builder growth)."""
ID_BATCH_ROWS = 8192
"""Rows per decoded batch of the ``sample_id`` column."""
REMOTE_BLOCK_BYTES = 8 * 2**20
"""fsspec read-ahead block of remote files (s3fs' default is 50 MiB per range request)."""


@runtime_checkable
class Rows(Protocol):
    """``n`` rows of dimension ``dim``; ``read(start, stop)`` -> float32 (stop - start, dim) C-contiguous;
    ``ids(rows)`` -> object array of the sample-id strings of int64 global rows (any order, repeats allowed)."""

    n: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def ids(self, rows: np.ndarray) -> np.ndarray: ...


def _check_range(start: int, stop: int, n: int) -> tuple[int, int]:
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= n:
        raise IndexError(f"rows [{start}, {stop}) outside [0, {n})")
    return start, stop


def _check_rows(rows: np.ndarray, n: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row ids outside [0, {n}): min {rows.min()}, max {rows.max()}")
    return rows


class ArrayRows:
    """Rows held in memory (the in-process engine and tests). ``sample_ids``: default the row numbers as str."""

    def __init__(self, x: np.ndarray, sample_ids: np.ndarray | None = None) -> None:
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"ArrayRows: expected a 2-D array (n, d), got shape {x.shape}")
        if sample_ids is not None and len(sample_ids) != len(x):
            raise ValueError(f"ArrayRows: {len(sample_ids)} sample ids for {len(x)} rows")
        self.x = x
        self.sample_ids = None if sample_ids is None else np.asarray(sample_ids, dtype=object)
        self.n, self.dim = int(x.shape[0]), int(x.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32 (a copy only when the stored dtype or layout differs)."""
        start, stop = _check_range(start, stop, self.n)
        return np.ascontiguousarray(self.x[start:stop], dtype=np.float32)

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Sample ids of global rows ``rows``."""
        rows = _check_rows(rows, self.n)
        if self.sample_ids is None:
            return np.array([str(r) for r in rows.tolist()], dtype=object)
        return self.sample_ids[rows]


@dataclass(frozen=True)
class Piece:
    """One Parquet file of a :class:`ParquetRows`: its URL, row count and first global row."""

    url: str
    n: int
    offset: int


def pieces(files: list[tuple[str, int]]) -> tuple[Piece, ...]:
    """``(url, rows)`` in global order -> Pieces with running offsets (files with no rows left out)."""
    out, offset = [], 0
    for url, n in files:
        if n > 0:
            out.append(Piece(str(url), int(n), offset))
            offset += int(n)
    return tuple(out)


def open_parquet(url: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """Open a local or remote Parquet file for random access (remote: bounded read-ahead blocks)."""
    if not is_remote(url):
        return open(str(url).removeprefix("file://"), "rb")
    return open_url(url, "rb", storage_options, block_size=REMOTE_BLOCK_BYTES)


@dataclass(frozen=True, eq=False)
class ParquetRows:
    """Rows of layer ``layer`` (column ``layer_<ℓ>``) spread over Parquet files, in piece order.

    ``dim``: the layer's dimension (from the listing); ``0`` reads it from the first file's footer (or first row).
    ``view``: the rows under that view (column ``layer_<ℓ>@<view>``, :mod:`memray.embedding.views`); ``""``: identity.
    """

    pieces: tuple[Piece, ...]
    layer: int
    storage_options: dict[str, Any] | None = None
    dim: int = 0
    view: str = ""
    n: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pieces", tuple(self.pieces))
        offset = 0
        for p in self.pieces:
            if p.offset != offset or p.n < 0:
                raise ValueError(f"{p.url}: piece offset {p.offset}, rows {p.n}; expected offset {offset}, rows >= 0")
            offset += p.n
        object.__setattr__(self, "n", offset)
        if not self.dim and self.pieces:
            object.__setattr__(self, "dim", int(self._read_piece(self.pieces[0], 0, 1).shape[1]))

    @property
    def column(self) -> str:
        """The layer's column name (under the view, if any)."""
        return schema.view_column(self.layer, self.view)

    def _overlapping(self, start: int, stop: int) -> Iterator[tuple[Piece, int, int]]:
        """(piece, local start, local stop) of every piece overlapping global ``[start, stop)``."""
        starts = [p.offset for p in self.pieces]
        i = max(0, bisect.bisect_right(starts, start) - 1)
        while i < len(self.pieces) and self.pieces[i].offset < stop:
            p = self.pieces[i]
            a, b = max(start, p.offset) - p.offset, min(stop, p.offset + p.n) - p.offset
            if b > a:
                yield p, a, b
            i += 1

    def _batches(self, piece: Piece, column: str, a: int, b: int) -> Iterator[pa.Array]:
        """The values of ``column`` for local rows ``[a, b)`` of one file, batch by batch (only overlapping row
        groups are decoded)."""
        with translate_errors(piece.url, "read"), open_parquet(piece.url, self.storage_options) as fh:
            try:
                pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=2**20)
            except pa.ArrowException as exc:
                raise FeatureFileError(f"{piece.url}: not a readable Parquet file ({exc})") from exc
            if pf.metadata.num_rows != piece.n:
                raise FeatureFileError(
                    f"{piece.url}: {pf.metadata.num_rows} rows, the listing said {piece.n}; the file changed since it "
                    "was listed: list the inputs again"
                )
            if column not in pf.schema_arrow.names:
                raise FeatureFileError(
                    f"{piece.url}: no column {column!r} (columns: {', '.join(pf.schema_arrow.names)})"
                )
            if column == schema.SAMPLE_ID:
                batch_rows = ID_BATCH_ROWS
            else:  # dim 0: not known yet (the first row tells it)
                batch_rows = max(64, READ_BATCH_BYTES // (4 * self.dim)) if self.dim else 64
            rg_start = 0
            for rg in range(pf.metadata.num_row_groups):
                rg_n = pf.metadata.row_group(rg).num_rows
                lo, hi = max(a, rg_start), min(b, rg_start + rg_n)
                if hi > lo:
                    pos = rg_start
                    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=[column]):
                        blo, bhi = max(lo, pos) - pos, min(hi, pos + batch.num_rows) - pos
                        if bhi > blo:
                            yield batch.column(0).slice(blo, bhi - blo)
                        pos += batch.num_rows
                        if pos >= hi:
                            break
                rg_start += rg_n
                if rg_start >= b:
                    break

    def _read_piece(self, piece: Piece, a: int, b: int) -> np.ndarray:
        dim = self.dim or None
        parts = [column_matrix(arr, self.column, piece.url, dim) for arr in self._batches(piece, self.column, a, b)]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Global rows ``[start, stop)`` as float32 (stop - start, dim), C-contiguous.

        Raises:
            FeatureFileError: a file lacks the column, has another dimension or row count (names the file).
            StorageError: the store cannot be read.
        """
        start, stop = _check_range(start, stop, self.n)
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        for p, a, b in self._overlapping(start, stop):
            at = p.offset + a - start
            for arr in self._batches(p, self.column, a, b):
                out[at : at + len(arr)] = column_matrix(arr, self.column, p.url, self.dim)
                at += len(arr)
        return out

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Sample ids of global rows ``rows``: reads only the ``sample_id`` column of the files, row groups and
        batches holding them (memory O(rows + one batch))."""
        rows = _check_rows(rows, self.n)
        out = np.empty(len(rows), dtype=object)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        starts = np.array([p.offset for p in self.pieces], dtype=np.int64)
        which = np.searchsorted(starts, wanted, side="right") - 1
        for i in np.unique(which).tolist():
            p, mask = self.pieces[i], which == i
            local, slots = wanted[mask] - p.offset, order[mask]
            lo, hi = int(local[0]), int(local[-1]) + 1
            at = lo
            for arr in self._batches(p, schema.SAMPLE_ID, lo, hi):
                a, b = np.searchsorted(local, [at, at + len(arr)])
                if b > a:
                    picked = arr.take(pa.array(local[a:b] - at)).to_pylist()
                    out[slots[a:b]] = np.asarray(picked, dtype=object)
                at += len(arr)
        return out


def set_rows(files: list[tuple[str, int]], layer: int, storage_options: dict | None, view: str = "") -> ParquetRows:
    """A handle on one layer of a set's feature files (``(url, rows)`` in the set's global row order), under
    ``view`` (``""``: identity)."""
    return ParquetRows(pieces(files), layer, storage_options, view=view)
