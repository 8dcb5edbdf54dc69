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
from typing import Any

import numpy as np
import pandas as pd

from memray.io import schema
from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.config import DEFAULT_STATISTIC
from memray.stats.copies import IDENTITY, LayerTrain, Sources, copies_frame, evidence_score
from memray.stats.engine import Fitted
from memray.stats.parts import Part, PartDir
from memray.stats.queries import QueryBlock
from memray.stats.replication import Thresholds, thresholds
from memray.stats.topk import TopkLists, merged_topk, topk_round


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

    ``items``: where the top-k round left its lists (``None``: no copies); ``test_d1``: per generated set, the test
    set's evidence scores (:func:`memray.stats.copies.evidence_score` of ``statistic`` over the whole training set,
    smallest over the views the set shares with the test set) for its ``test_quantile``; ``thresholds``: per
    generated set, each cell's test q-quantile of them (a sample below it is a *hit*,
    :mod:`memray.stats.replication`).
    """

    train: LayerTrain
    qws: Any
    parts: PartDir
    k: int
    items: TopkLists | None
    sources: Sources | None
    train_name: str
    test_d1: dict[str, np.ndarray] | None = None
    thresholds: dict[str, np.ndarray] | None = None
    statistic: str = DEFAULT_STATISTIC


@dataclass(frozen=True)
class SampleBlock:
    """One query block's work: its set (``name`` ``None`` = the test set, ``index`` its place in the layer), rows
    handle, block and its slice of the search round's result (dist, nn, cell: (rows,) each); ``views``: the same
    rows' blocks under the further views ``(name, block)`` the evidence is the smallest over."""

    name: str | None
    index: int
    rows: Rows
    block: QueryBlock
    dist: np.ndarray
    nn: np.ndarray
    cell: np.ndarray
    views: tuple[tuple[str, QueryBlock], ...] = ()


def nearest_over_views(ctx: BlockContext, job: SampleBlock) -> tuple[np.ndarray, ...]:
    """The block's merged top-k lists under each view, and per row the view whose evidence score is smallest
    (ties: the first, identity first): ``(dist (rows, k), train rows (rows, k), view index (rows,), s (rows, V),
    r1 (rows, V))`` with ``s`` every view's score (:func:`memray.stats.copies.evidence_score`) and ``r1`` its
    nearest training row (column 0: identity)."""
    cache: dict[str, dict] = {}  # the block and its views share their list files (one group)
    lists = [merged_topk(ctx.qws, b, ctx.items, ctx.k, cache) for b in (job.block, *(vb for _, vb in job.views))]
    d1 = np.stack([evidence_score(d, ctx.statistic) for d, _ in lists], axis=1)
    r1 = np.stack([r[:, 0] for _, r in lists], axis=1)
    best = np.argmin(d1, axis=1)
    at = np.arange(len(best))
    dist = np.stack([d for d, _ in lists])[best, at]
    rows = np.stack([r for _, r in lists])[best, at]
    return dist, rows, best, d1, r1


Nearest = tuple[np.ndarray, ...]
"""Evidence of a block's rows: nearest distance and training row over the whole training set (and, for a generated
block, the sample ids of its hits)."""


def run_block(job: SampleBlock, ctx: BlockContext) -> tuple[Part, Part | None, Nearest | None]:
    """Write the block's neighbours (and copies) parts; returns them and, with top-k, the rows' nearest distances
    and training rows over the whole training set: a test block every view's ((rows, V) each), a generated block
    those of the view with the smallest distance ((rows,) each)."""
    b, layer = job.block, ctx.train.layer
    role = schema.ROLE_TEST if job.name is None else schema.ROLE_GEN
    ids = job.rows.ids(np.arange(b.start, b.stop, dtype=np.int64))
    tag = f"l{layer}-s{job.index:03d}-b{b.g:06d}"
    nbr = neighbor_frame(role, job.name, layer, ids, job.cell, ctx.train.neighbour_ids(job.nn), job.dist)
    neighbours = ctx.parts.write("neighbors", tag, nbr, (role, job.name, layer))
    if not ctx.k:
        return neighbours, None, None
    dist, rows, best, d1, r1 = nearest_over_views(ctx, job)
    if job.name is None:
        return neighbours, None, (d1, r1)
    names = np.array([IDENTITY, *(v for v, _ in job.views)], dtype=object)[best]
    test_d1 = (ctx.test_d1 or {})[job.name]
    score = d1[np.arange(len(best)), best]
    per_row = {job.name: score} if ctx.statistic != "distance" else None  # distance: each rank's own quantile
    df = copies_frame(ctx.train, {job.name: ids}, {job.name: (dist, rows)}, test_d1, ctx.sources, ctx.train_name,
                      {job.name: names}, per_row)  # fmt: skip
    df = df.sort_values([schema.SAMPLE_ID, schema.RANK], kind="stable", ignore_index=True)
    hit = score < (ctx.thresholds or {})[job.name][job.cell]  # NaN threshold (no test sample): never
    nearest = (score, rows[:, 0], np.asarray(ids, dtype=object)[hit])
    return neighbours, ctx.parts.write("copies", tag, df, (job.name, layer)), nearest


@dataclass(frozen=True)
class Evidence:
    """A layer's evidence (global nearest training sample, smallest score over views): ``test`` (n_P, V_P) every
    test view's evidence score (column 0 identity, then ``test_views``) and ``test_rows`` its nearest training row;
    ``gens``: set -> (m,) its smallest score over ``views[set]`` (the views it shares with the test set) and
    ``gen_rows`` the training row it hit there; ``hit_ids``: set -> the sample ids of its hits, in row order
    (read by the block tasks: the caller never reads query rows); ``thresholds``: set -> its cells' thresholds
    (the test q-quantiles of the test scores over the set's views). Distances here are evidence scores
    (:func:`memray.stats.copies.evidence_score`)."""

    test: np.ndarray
    test_rows: np.ndarray
    test_views: tuple[str, ...]
    gens: dict[str, np.ndarray]
    gen_rows: dict[str, np.ndarray]
    views: dict[str, tuple[str, ...]]
    hit_ids: dict[str, np.ndarray]
    thresholds: dict[str, Thresholds]

    def test_d1(self, name: str) -> np.ndarray:
        """(n_P,) the test set's evidence scores over set ``name``'s views."""
        return self.test_nearest(name)[0]

    def test_nearest(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(n_P,) each the test set's evidence scores and training rows over set ``name``'s views."""
        return test_over(self.test, self.test_rows, self.test_views, self.views[name])


def test_over(
    d1: np.ndarray, r1: np.ndarray, test_views: tuple[str, ...], views: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The smallest of the test rows' nearest distances ``d1`` (n, 1 + len(test_views)) over identity and
    ``views``, and the training row ``r1`` of the same shape at that view (ties: the first)."""
    cols = [0, *(1 + test_views.index(v) for v in views)]
    best = np.argmin(d1[:, cols], axis=1)
    at = np.arange(len(d1))
    return d1[:, cols][at, best], r1[:, cols][at, best]


def block_jobs(fitted: Fitted, gens: dict[str, Rows], scored: dict[str, Any], views: dict) -> list[SampleBlock]:
    """Every query block of the layer (test, then sets by name), with its blocks under the views it is compared
    over (``views``: set (``None``: test) -> tuple of view names, projected as ``(set, view)``)."""
    eng = fitted.engine
    sets = [(None, eng.test_rows, fitted.test)] + [(n, gens[n], scored[n]) for n in sorted(gens)]
    jobs = []
    for i, (name, rows, r) in enumerate(sets):
        under = [(v, eng.projected[(name, v)].blocks()) for v in views.get(name, ())]
        for b in eng.projected[name].blocks():
            sl = slice(b.start, b.stop)
            jobs.append(SampleBlock(name, i, rows, b, r.dist[sl], r.nn[sl], r.cell[sl],
                                    tuple((v, bs[b.g]) for v, bs in under)))  # fmt: skip
    return jobs


def sample_tables(
    fitted: Fitted,
    gens: dict[str, Rows],
    scored: dict[str, Any],
    parts: PartDir,
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
    views: dict[str | None, tuple[str, ...]] | None = None,
    q: float = 0.01,
    statistic: str = DEFAULT_STATISTIC,
) -> tuple[dict[str, list[Part]], Evidence | None]:
    """The layer's ``neighbors`` (and, with ``ct.top_k``, ``copies``) parts, in input order (test, sets by name,
    blocks), written by tasks; ``scored``: name -> the set's search result (``dist``, ``nn``, ``cell``);
    ``views``: set (``None``: the test set) -> the further views projected for it (``engine.projected[(set,
    view)]``); a generated set is compared over the views it shares with the test set; ``q``: the test quantile
    of the hits' thresholds; ``statistic``: the evidence score (:func:`memray.stats.copies.evidence_score`). Returns
    the parts and, with top-k, the layer's :class:`Evidence`."""
    eng, cfg, names = fitted.engine, fitted.cfg, sorted(gens)
    test_views = tuple((views or {}).get(None, ()))
    shared = {n: tuple(v for v in (views or {}).get(n, ()) if v in test_views) for n in names}
    jobs = block_jobs(fitted, gens, scored, {None: test_views, **shared})
    k = cfg.top_k if names else 0
    blocks = [b for j in jobs for b in (j.block, *(vb for _, vb in j.views))]
    groups = [ji for ji, j in enumerate(jobs) for _ in range(1 + len(j.views))]  # a job reads its group's files
    items = topk_round(eng.ws, eng.fit, eng.qws, blocks, k, cfg, mapper, groups) if k else None
    ctx = BlockContext(LayerTrain(fitted.layer, fitted.train), eng.qws, parts, k, items, sources, train_name,
                       statistic=statistic)  # fmt: skip
    n_test = sum(j.name is None for j in jobs) if k else len(jobs)
    done = list(mapper(partial(run_block, ctx=ctx), jobs[:n_test]))
    evidence = None
    if n_test < len(jobs):  # the generated blocks' test_quantile needs the test set's evidence scores
        d1 = np.concatenate([e[0] for _, _, e in done])
        r1 = np.concatenate([e[1] for _, _, e in done])
        ev = Evidence(d1, r1, test_views, {}, {}, shared, {}, {})
        test_d1 = {n: ev.test_d1(n) for n in names}
        cells = int(cfg.cells)
        ev.thresholds.update({n: thresholds(test_d1[n], fitted.test_cells, cells, q) for n in names})
        ctx = dataclasses.replace(ctx, test_d1=test_d1, thresholds={n: t.t for n, t in ev.thresholds.items()})
        gen_done = list(mapper(partial(run_block, ctx=ctx), jobs[n_test:]))
        for n in names:
            got = [e for j, (_, _, e) in zip(jobs[n_test:], gen_done, strict=True) if j.name == n]
            ev.gens[n] = np.concatenate([d for d, _, _ in got]) if got else np.zeros(0)
            ev.gen_rows[n] = np.concatenate([r for _, r, _ in got]) if got else np.zeros(0, np.int64)
            ev.hit_ids[n] = np.concatenate([i for _, _, i in got]) if got else np.zeros(0, object)
        done += gen_done
        evidence = ev
    out = {"neighbors": [nb for nb, _, _ in done]}
    if k:
        out["copies"] = [cp for _, cp, _ in done if cp is not None]
    return out, evidence
