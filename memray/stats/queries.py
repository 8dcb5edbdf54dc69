"""Query sets of a layer, projected by tasks that read their own rows, kept as cell parts in a query workspace.

A query set (the test set or a generated set: a :class:`~memray.io.rows.Rows` handle, Parquet files in a job or an
array in process) is cut into blocks of ``block_rows`` rows (default :data:`QUERY_ROWS`, a multiple of the
projection's :data:`~memray.stats.pca.ROW_BLOCK`, so every row is projected in the very BLAS call it would be if the
set were projected whole: results do not depend on the blocks). One task per block (:func:`project_item`, run through
the caller's mapper) reads the block's rows, refuses NaN/inf, projects them into the layer's space, assigns their
cells, writes the whole block to ``<prefix>/all.block_{g:06d}`` of the query workspace (``z`` (m, k) float64,
``rows`` (m,) int64 positions in the set, in order, and ``cells``) and, for a set the in-cell search reads
(``by_cell``), each cell's rows to ``<prefix>/cell_{c:04d}.block_{g:06d}``, and returns the block's cells. Sets
searched only for the global top-k (views, evidence) skip the cell parts: one file per block, not 1 + cells. The
caller keeps only the cells (8 B per row: :class:`Projected`); search and top-k items read the projected rows back
from the workspace, as they read the training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from memray.io.rows import Rows
from memray.stats import Mapper, ScoreInputError, packed_map
from memray.stats.pca import ROW_BLOCK
from memray.stats.space import LayerSpace
from memray.stats.workspace import Workspace, block_count, block_range

QUERY_ROWS = 64 * ROW_BLOCK
"""Rows per query block (memory of a projection task, not results)."""


def _finite(x: np.ndarray, what: str, start: int = 0) -> np.ndarray:
    """``x`` as float32 (n, d), refusing NaN/inf rows with a message naming them (row numbers from ``start``)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if x.ndim != 2 or np.isfinite(x.sum()):  # a finite sum has no NaN/inf term (on overflow: the row check)
            return x
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        rows = (bad[:10] + start).tolist()
        raise ScoreInputError(f"{what}: NaN/inf values in {len(bad)} row(s) {rows}; drop or fix them")
    return x


def query_key(prefix: str, cell: int, g: int) -> str:
    """Query-workspace key of block ``g``'s projected rows in cell ``cell`` of the set under ``prefix``."""
    return f"{prefix}/cell_{cell:04d}.block_{g:06d}"  # one folder per set: a new file, not a new folder


def block_key(prefix: str, g: int) -> str:
    """Query-workspace key of block ``g``'s projected rows in every cell (``z``, ``rows``, ``cells``): what a far
    top-k round reads in one piece."""
    return f"{prefix}/all.block_{g:06d}"


def put_queries(
    qws: Workspace, prefix: str, g: int, start: int, z: np.ndarray, cells: np.ndarray, by_cell: bool = True
) -> None:
    """Write block ``g``'s projected rows ``z`` (m, k), set rows ``start …``, whole (:func:`block_key`) and, with
    ``by_cell``, by cell (:func:`query_key`)."""
    for c in np.unique(cells).tolist() if by_cell else ():
        local = np.flatnonzero(cells == c)
        qws.put(query_key(prefix, c, g), z=np.ascontiguousarray(z[local]), rows=local.astype(np.int64) + start)
    rows = np.arange(start, start + len(z), dtype=np.int64)
    qws.put(block_key(prefix, g), z=np.ascontiguousarray(z), rows=rows, cells=np.asarray(cells, np.int64))


@dataclass(frozen=True)
class QueryBlock:
    """Block ``g`` (set rows ``[start, stop)``) of the projected set under ``prefix``, with the cells it holds."""

    prefix: str
    g: int
    start: int
    stop: int
    cells: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Projected:
    """Where a query set's projected rows are (``prefix`` in the query workspace), their cells (n,) int64 and
    whether the rows were also written by cell (``by_cell``: what the in-cell search reads)."""

    prefix: str
    block_rows: int
    cells: np.ndarray
    by_cell: bool = True

    def blocks(self) -> list[QueryBlock]:
        """The set's blocks, in order."""
        out = []
        for g in range(block_count(len(self.cells), self.block_rows)):
            start, stop = block_range(g, self.block_rows, len(self.cells))
            out.append(QueryBlock(self.prefix, g, start, stop, tuple(np.unique(self.cells[start:stop]).tolist())))
        return out

    def keys_by_cell(self) -> dict[int, list[str]]:
        """Cell -> the query-workspace keys holding the set's rows of that cell.

        Raises:
            ValueError: the set was projected without its cell parts (``by_cell=False``).
        """
        if not self.by_cell:
            raise ValueError(f"query set {self.prefix!r} was projected without cell parts (by_cell=False)")
        out: dict[int, list[str]] = {}
        for b in self.blocks():
            for c in b.cells:
                out.setdefault(c, []).append(query_key(self.prefix, c, b.g))
        return out


def read_block(qws: Workspace, block: QueryBlock) -> np.ndarray:
    """A block's projected rows (stop - start, k) float64, in set order (:func:`block_key`)."""
    return np.asarray(qws.get(block_key(block.prefix, block.g))["z"], np.float64)


@dataclass(frozen=True)
class ProjectItem:
    """One projection work item: block ``g`` of a set (its rows handle), where its parts go, how errors name it."""

    rows: Rows
    prefix: str
    label: str
    g: int
    by_cell: bool = True


def project_item(item: ProjectItem, qws: Workspace, space: LayerSpace, block_rows: int) -> np.ndarray:
    """Read, check, project and assign block ``item.g``; write its cell parts; return its cells (rows,) int64."""
    start, stop = block_range(item.g, block_rows, item.rows.n)
    x = _finite(item.rows.read(start, stop), item.label, start)
    z = space.project(x)
    del x
    cells = space.assign(z)
    put_queries(qws, item.prefix, item.g, start, z, cells, item.by_cell)
    return cells


def project_sets(
    qws: Workspace,
    space: LayerSpace,
    sets: list[tuple[str, Rows, str]],
    block_rows: int = QUERY_ROWS,
    mapper: Mapper = map,
    by_cell: bool = True,
) -> list[Projected]:
    """Project every ``(prefix, rows, label)`` set, one mapper item per block of ``block_rows`` rows (``by_cell``:
    also write the cell parts the in-cell search reads).

    Raises:
        ValueError: ``block_rows`` is not a positive multiple of ``ROW_BLOCK`` (the bits would depend on it).
    """
    if block_rows < 1 or block_rows % ROW_BLOCK:
        raise ValueError(f"query block_rows={block_rows}: must be a positive multiple of {ROW_BLOCK}")
    items = [ProjectItem(rows, prefix, label, g, by_cell) for prefix, rows, label in sets
             for g in range(block_count(rows.n, block_rows))]  # fmt: skip
    spans = [block_range(it.g, block_rows, it.rows.n) for it in items]
    work = [(stop - start) * space.mean.shape[0] for start, stop in spans]  # rows × dimensions
    cells = packed_map(mapper, partial(project_item, qws=qws, space=space, block_rows=block_rows), items, work)
    out, at = [], 0
    for prefix, rows, _ in sets:
        n_blocks = block_count(rows.n, block_rows)
        got = cells[at : at + n_blocks]
        at += n_blocks
        out.append(Projected(prefix, block_rows, np.concatenate(got) if got else np.zeros(0, np.int64), by_cell))
    return out
