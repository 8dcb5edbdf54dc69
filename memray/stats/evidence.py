"""A layer's evidence beside C_T: the query sets under their views, and the replication-rate test per set.

Views (:mod:`memray.embedding.views`) reach the scoring loop as further row handles of the test set and of each
generated set (the same rows, in the same order, embedded under a transform: feature columns
``layer_<ℓ>@<view>``). They are projected into the layer's space in one round of tasks and searched in the top-k
round with the identity rows; a sample's **evidence score** (:func:`memray.stats.copies.evidence_score` of its
top-k list over the whole training set: ``d_1 / d_k`` or ``d_1``) is the smallest over identity and the views its set
shares with the test set, computed the same way for test samples (:mod:`memray.stats.samples`). C_T, its cells
and ``neighbors.parquet`` use identity only: the paper's statistic does not move.

:func:`evidence_frames`: per generated set, the replication test of :mod:`memray.stats.replication` on the
evidence scores, stratified by the samples' identity cells (cells are fit on T only, so test and generated
samples of a cell stay exchangeable under the null whatever the views); the samples below their cell's threshold
("hits") then give the concentration test and the per-image leak tests of :mod:`memray.stats.leaks`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memray.io import schema
from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.config import EvidenceConfig, seed_word
from memray.stats.copies import Sources
from memray.stats.engine import EngineLayer, project
from memray.stats.leaks import Hits, LeakTable, concentration_test, leaked_images
from memray.stats.replication import Thresholds, replication_from_thresholds
from memray.stats.samples import Evidence

#: set (``None``: the test set) -> view name -> the set's rows under that view
ViewSets = dict[str | None, dict[str, Rows]]


def check_views(views: ViewSets, sets: dict[str | None, Rows], layer: int) -> None:
    """Refuse a view whose rows do not match its set's (count): the evidence pairs rows by position.

    Raises:
        ValueError: one line naming the set, view and both counts.
    """
    for name, under in views.items():
        for view, rows in under.items():
            if name not in sets:
                raise ValueError(f"layer {layer}: view {view!r} of set {name!r}, which is not scored")
            if rows.n != sets[name].n:
                what = "the test set" if name is None else f"set {name!r}"
                raise ValueError(
                    f"layer {layer}: {what} has {sets[name].n} rows but {rows.n} under view {view!r}; "
                    "embed the set again (its feature files are from different runs)"
                )


def project_views(engine: EngineLayer, views: ViewSets, mapper: Mapper = map) -> dict[str | None, tuple[str, ...]]:
    """Project every set's view rows in one round of tasks (``engine.projected[(set, view)]``); returns
    set -> its view names in order."""
    specs = [((name, view), rows, f"{'test' if name is None else repr(name)} under view {view}, layer {engine.layer}")
             for name, under in views.items() for view, rows in under.items()]  # fmt: skip
    if specs:
        project(engine, specs, mapper, by_cell=False)  # searched only for the global top-k
    return {name: tuple(under) for name, under in views.items()}


@dataclass(frozen=True)
class LayerEvidence:
    """What the evidence tables of a layer need beyond the distances: the cells of the test and generated samples
    (identity), the number of cells, the training rows' ids and the sources resolver (``None``: no sources)."""

    layer: int
    test_cells: np.ndarray
    gen_cells: dict[str, np.ndarray]
    n_cells: int
    train_ids: Callable[[np.ndarray], np.ndarray]
    sources: Sources | None = None
    train_name: str = "train"


def set_hits(ev: Evidence, name: str, le: LayerEvidence, thr: Thresholds) -> Hits:
    """Which test and generated samples are below their cell's threshold, and the training row each hit."""
    test_d, test_r = ev.test_nearest(name)
    test_hit = test_d < thr.t[le.test_cells]  # NaN threshold: never
    gen_hit = ev.gens[name] < thr.t[le.gen_cells[name]]
    return Hits(gen_hit, ev.gen_rows[name], test_hit, test_r)


def evidence_frames(
    ev: Evidence | None, le: LayerEvidence, cfg: EvidenceConfig, alpha: float, seed: int
) -> dict[str, pd.DataFrame]:
    """``replication`` and ``memorized`` rows of one layer (:data:`memray.io.schema.REPLICATION_SCHEMA`,
    :data:`~memray.io.schema.MEMORIZED_SCHEMA`): per generated set the replication-rate test, the concentration
    test (seeded by ``seed``, the layer and the set's name) and the per-image leak tests. Empty without evidence
    (``ct.top_k = 0``)."""
    rep, mem = [], []
    for name in sorted(ev.gens if ev is not None else []):
        thr = ev.thresholds[name]
        r = replication_from_thresholds(thr, ev.gens[name], le.gen_cells[name], cfg.r0, alpha)
        hits = set_hits(ev, name, le, thr)
        pairs, p_conc = concentration_test(hits, seed=concentration_seed(seed, le.layer, name))
        used = ",".join(("identity", *ev.views[name]))
        rep.append((name, le.layer, used, r.m, r.n, r.k_obs, r.share_below, r.expected_share, r.rate, r.ci_low,
                    r.ci_high, r.p_value, r.q, r.r0, r.cells, r.m_dropped, pairs, p_conc))  # fmt: skip
        mem.append(memorized_rows(name, le, leaked_images(hits, alpha), hits, ev.gens[name], ev.hit_ids[name]))
    out = {"replication": pd.DataFrame(rep, columns=schema.REPLICATION_SCHEMA.names)}
    out["memorized"] = pd.concat(mem, ignore_index=True) if mem else empty_memorized()
    return out


def concentration_seed(seed: int, layer: int, name: str) -> list[int]:
    """The concentration test's seed words: ``[ct.seed, layer, crc32(set name)]``."""
    return [int(seed), seed_word(layer), zlib.crc32(name.encode("utf-8"))]


def empty_memorized() -> pd.DataFrame:
    """A ``memorized`` frame without rows."""
    return pd.DataFrame({f: pd.Series(dtype=object) for f in schema.MEMORIZED_SCHEMA.names})


def memorized_rows(
    name: str, le: LayerEvidence, t: LeakTable, hits: Hits, gen_d: np.ndarray, hit_ids: np.ndarray
) -> pd.DataFrame:
    """``memorized`` rows of one set: every training image some generated hit fell on, with its closest hits."""
    if not len(t.rows):
        return empty_memorized()
    id_of = np.full(len(gen_d), None, dtype=object)
    id_of[np.flatnonzero(hits.gen_hit)] = hit_ids  # the block tasks read them: hits in row order
    gen = np.flatnonzero(hits.gen_hit & (hits.gen_row >= 0))
    order = gen[np.lexsort((gen_d[gen], hits.gen_row[gen]))]  # by image, nearest first
    ids = id_of[order].astype(str)
    starts = np.searchsorted(hits.gen_row[order], t.rows)
    closest = [slice(a, a + min(3, int(x))) for a, x in zip(starts, t.n_hits, strict=True)]
    train_ids = np.asarray(le.train_ids(t.rows), dtype=object)
    frame = pd.DataFrame({
        schema.GEN_SET: name,
        schema.LAYER: np.int32(le.layer),
        schema.TRAIN_ID: train_ids,
        schema.TRAIN_SOURCE: le.sources(le.train_name, train_ids) if le.sources is not None else None,
        schema.N_HITS: t.n_hits.astype(np.int64),
        schema.TEST_HITS: t.test_hits.astype(np.int64),
        schema.EXPECTED_HITS: t.expected_hits,
        schema.P_VALUE: t.p_value,
        schema.Q_VALUE: t.q_value,
        schema.GEN_SAMPLES: [list(ids[sl]) for sl in closest],
        schema.GEN_DISTANCES: [gen_d[order[sl]].tolist() for sl in closest],
    })  # fmt: skip
    return frame
