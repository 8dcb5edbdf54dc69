"""A layer's per-sample tables, written by one task per query block: the neighbours C_T used, and the copies.

After the layer's search round the caller holds, per query, its cell, distance and neighbour row. One task per
query block (the test set's blocks, then each generated set's, sets by name) reads the block's sample ids, resolves
the sample ids of the training rows it was matched with and writes its part of ``neighbors``. With ``ct.top_k`` the
top-k round (:func:`memray.stats.topk.topk_round`) first leaves every item's lists in the query workspace; a test
block then merges its lists and returns its global nearest distances, and a generated block merges its lists and
writes its part of ``copies`` (``test_quantile`` against those test distances; rows sorted by sample id and rank).
The caller gets back only the parts (URL, rows, keys): :class:`memray.stats.parts.PartsTable` assembles them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from memray.io import schema
from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.copies import LayerTrain, Sources, copies_frame
from memray.stats.parts import Part, PartDir
from memray.stats.queries import QueryBlock
from memray.stats.topk import merged_topk, topk_round

if TYPE_CHECKING:
    from memray.stats.score import FittedLayer


def neighbor_frame(role: str, gen_set: str | None, layer: int, ids, cell, nn_ids, dist) -> pd.DataFrame:
    """``neighbors.parquet`` rows of one query set (or block): sample, cell, nearest training sample in the cell."""
    return pd.DataFrame(
        {
            schema.ROLE: role,
            schema.GEN_SET: pd.Series([gen_set] * len(ids), dtype=object),
            schema.SAMPLE_ID: np.asarray(ids, dtype=object).astype(str),
            schema.LAYER: np.int32(layer),
            schema.CELL: cell.astype(np.int32),
            schema.NN_TRAIN_ID: nn_ids,
            schema.NN_DISTANCE: dist,
        }
    )


@dataclass(frozen=True)
class BlockContext:
    """What every block task of a layer shares (shipped once per mapper call).

    ``items``: the top-k round's item count (0: no copies); ``test_d1``: the test set's global nearest distances
    (for the generated blocks' ``test_quantile``).
    """

    train: LayerTrain
    qws: Any
    parts: PartDir
    k: int
    items: int
    sources: Sources | None
    train_name: str
    test_d1: np.ndarray | None = None


@dataclass(frozen=True)
class SampleBlock:
    """One query block's work: its set (``name`` ``None`` = the test set, ``index`` its place in the layer), rows
    handle, block and its slice of the search round's result (dist, nn, cell: (rows,) each)."""

    name: str | None
    index: int
    rows: Rows
    block: QueryBlock
    dist: np.ndarray
    nn: np.ndarray
    cell: np.ndarray


def run_block(job: SampleBlock, ctx: BlockContext) -> tuple[Part, Part | None, np.ndarray | None]:
    """Write the block's neighbours (and copies) parts; returns them and, for a test block with top-k, its nearest
    distances over the whole training set."""
    b, layer = job.block, ctx.train.layer
    role = schema.ROLE_TEST if job.name is None else schema.ROLE_GEN
    ids = job.rows.ids(np.arange(b.start, b.stop, dtype=np.int64))
    tag = f"l{layer}-s{job.index:03d}-b{b.g:06d}"
    nbr = neighbor_frame(role, job.name, layer, ids, job.cell, ctx.train.neighbour_ids(job.nn), job.dist)
    neighbours = ctx.parts.write("neighbors", tag, nbr, (role, job.name, layer))
    if not ctx.k:
        return neighbours, None, None
    dist, rows = merged_topk(ctx.qws, b, ctx.items, ctx.k)
    if job.name is None:
        return neighbours, None, dist[:, 0]
    df = copies_frame(ctx.train, {job.name: ids}, {job.name: (dist, rows)}, ctx.test_d1, ctx.sources, ctx.train_name)
    df = df.sort_values([schema.SAMPLE_ID, schema.RANK], kind="stable", ignore_index=True)
    return neighbours, ctx.parts.write("copies", tag, df, (job.name, layer)), None


def sample_tables(
    fitted: FittedLayer,
    gens: dict[str, Rows],
    scored: dict[str, Any],
    parts: PartDir,
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
) -> dict[str, list[Part]]:
    """The layer's ``neighbors`` (and, with ``ct.top_k``, ``copies``) parts, in input order (test, sets by name,
    blocks), written by tasks; ``scored``: name -> the set's search result (``dist``, ``nn``, ``cell``)."""
    eng, cfg, names = fitted.engine, fitted.cfg, sorted(gens)
    sets = [(None, eng.test_rows, fitted.test)] + [(n, gens[n], scored[n]) for n in names]
    jobs = [
        SampleBlock(name, i, rows, b, r.dist[b.start : b.stop], r.nn[b.start : b.stop], r.cell[b.start : b.stop])
        for i, (name, rows, r) in enumerate(sets)
        for b in eng.projected[name].blocks()
    ]
    k = cfg.top_k if names else 0
    items = topk_round(eng.ws, eng.fit, eng.qws, [j.block for j in jobs], k, cfg, mapper) if k else 0
    ctx = BlockContext(LayerTrain(fitted.layer, fitted.train), eng.qws, parts, k, items, sources, train_name)
    n_test = sum(j.name is None for j in jobs) if k else len(jobs)
    done = list(mapper(partial(run_block, ctx=ctx), jobs[:n_test]))
    if n_test < len(jobs):  # the generated blocks' test_quantile needs the test set's global nearest distances
        test_d1 = np.concatenate([d1 for _, _, d1 in done])
        done += list(mapper(partial(run_block, ctx=dataclasses.replace(ctx, test_d1=test_d1)), jobs[n_test:]))
    out = {"neighbors": [nb for nb, _, _ in done]}
    if k:
        out["copies"] = [cp for _, cp, _ in done if cp is not None]
    return out
