"""The result tables of a scoring run: per-layer pieces with their uncertainty, and the assembled :class:`ScoreResult`.

Per layer (:func:`layer_tables`): C_T with its one-sided p-value and seeded bootstrap 95% interval
(:mod:`memray.stats.significance`), each cell's Z and p-value and, with ``ct.partitions > 1``, C_T's range over seeded
partitions, computed from the per-sample distances and cells the caller holds; and the per-sample tables (the in-cell
neighbours the statistic used, the global top-k copy evidence of :mod:`memray.stats.copies`), written by tasks as part
files (:mod:`memray.stats.samples`). :meth:`ScoreResult.from_tables` sorts the concatenated pieces (the part files are
merged when written, :class:`memray.stats.parts.PartsTable`) and adds what needs every layer: the Holm-adjusted
p-values and one verdict per generated set.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from memray.io import schema
from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.catalog import OPTIONAL, SCHEMAS, TABLES, empty, sort_frame
from memray.stats.config import CTConfig, EvidenceConfig, seed_word
from memray.stats.copies import Sources
from memray.stats.engine import Fitted
from memray.stats.evidence import LayerEvidence, evidence_frames
from memray.stats.parts import Part, PartDir, PartsTable
from memray.stats.samples import sample_tables
from memray.stats.significance import bootstrap_ct, cell_p_values, ct_p_value_from_cells
from memray.stats.timing import StageTimes
from memray.stats.verdict import add_significance, verdict_table

__all__ = ["OPTIONAL", "SCHEMAS", "TABLES", "ScoreResult", "Sources", "Table", "concat_pieces", "empty",
           "layer_tables"]  # fmt: skip
log = logging.getLogger(__name__)

Table = pd.DataFrame | PartsTable
"""A result table: a DataFrame, or (the per-sample tables of a job) its part files."""


@dataclass
class ScoreResult:
    """Tidy result tables (sorted deterministically) and the config that produced them.

    ``ct_scores``: one row per (gen_set, layer) with p-values and CI; ``ct_cells``: per (gen_set, layer, cell);
    ``neighbors``: per (role, gen_set, layer, sample), the nearest training sample in the sample's cell (what C_T
    uses), ``gen_set`` null for test rows; ``copies``: per generated sample and layer its top-k nearest training
    samples over the whole training set; ``ct_stability``: C_T per partition seed; ``verdicts``: per set. In a job
    ``neighbors`` and ``copies`` are part files (:class:`~memray.stats.parts.PartsTable`): :meth:`table` reads them.
    """

    ct_scores: pd.DataFrame
    ct_cells: pd.DataFrame
    neighbors: Table
    config: CTConfig | None
    layers: list[int]
    gen_sets: list[str]
    copies: Table | None = None
    ct_stability: pd.DataFrame | None = None
    replication: pd.DataFrame | None = None
    memorized: pd.DataFrame | None = None
    verdicts: pd.DataFrame | None = None

    def table(self, name: str) -> pd.DataFrame:
        """A table by name (``ct_scores``) or file name (``ct_scores.parquet``); also ``verdicts``."""
        key = name.removesuffix(".parquet")
        if key not in (*TABLES, "verdicts"):
            raise KeyError(f"unknown table {name!r}; one of {sorted((*TABLES, 'verdicts'))}")
        value = getattr(self, key)
        return value.frame() if isinstance(value, PartsTable) else value

    def materialized(self) -> ScoreResult:
        """This result with every table a DataFrame (part files read whole)."""
        return dataclasses.replace(self, neighbors=self.table("neighbors"), copies=self.table("copies"))

    @classmethod
    def from_tables(cls, tables: dict[str, Table], config: CTConfig | None = None) -> ScoreResult:
        """Assemble (e.g. per-layer pieces concatenated) tables keyed by name or file name, sorting the rows.

        Adds the Holm-adjusted p-values (over each set's layers; over its kept cells × layers) and the verdicts.
        """
        frames: dict[str, Any] = {}
        for key, (file, _) in TABLES.items():
            df = tables.get(key, tables.get(file))
            if df is None and key in OPTIONAL:
                df = empty(key)
            if df is None:
                raise KeyError(f"table {key!r} missing; got {sorted(tables)}")
            frames[key] = df if isinstance(df, PartsTable) else sort_frame(key, df)  # parts merge when written
        frames["ct_scores"], frames["ct_cells"] = add_significance(frames["ct_scores"], frames["ct_cells"])
        scores = frames["ct_scores"]
        verdicts = None
        if config is not None:
            verdicts = verdict_table(scores, frames["ct_cells"], config.alpha, config.min_gen_per_cell,
                                     replication=frames["replication"])  # fmt: skip
        layers = sorted(int(x) for x in scores[schema.LAYER].unique())
        gen_sets = sorted(scores[schema.GEN_SET].unique())
        return cls(**frames, config=config, layers=layers, gen_sets=gen_sets, verdicts=verdicts)


def concat_pieces(name: str, pieces: list[pd.DataFrame | list[Part]], storage_options: dict | None = None) -> Table:
    """Table ``name`` (or its file name) from per-layer pieces: frames concatenated, part lists as one
    :class:`~memray.stats.parts.PartsTable` (an empty frame beside parts, e.g. no copies, adds nothing)."""
    parts = [p for piece in pieces if isinstance(piece, list) for p in piece]
    frames = [p for p in pieces if isinstance(p, pd.DataFrame)]
    if len(frames) == len(pieces):
        return pd.concat(frames, ignore_index=True)
    if any(len(f) for f in frames):
        raise ValueError(f"table {name!r}: per-layer pieces mix part files and rows")
    return PartsTable(name.removesuffix(".parquet"), tuple(parts), storage_options)


def bootstrap_seed(cfg: CTConfig, layer: int) -> int:
    """The bootstrap's seed of one layer: ``SeedSequence([ct.seed, layer])``'s first word (each set's draws are
    further keyed by its name, :func:`memray.stats.significance.bootstrap_replicates`)."""
    return int(np.random.SeedSequence([int(cfg.seed), seed_word(layer)]).generate_state(1)[0])


def layer_tables(
    fitted: Fitted,
    n_train: int,
    test: Rows,
    gens: dict[str, Rows],
    scored: dict[str, Any],
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
    partitions: dict[str, list[tuple[int, float]]] | None = None,
    *,
    parts: PartDir,
    views: dict[str | None, tuple[str, ...]] | None = None,
    evidence: EvidenceConfig | None = None,
    times: StageTimes | None = None,
) -> dict[str, pd.DataFrame | list[Part]]:
    """One fitted layer's table pieces from its scored sets (``scored``: name -> GenScore of a round of ``fitted``).

    ``test``, ``gens``: the sets' rows (name -> Rows); ``sources``: sample ids -> source strings (copy evidence);
    ``partitions``: name -> ``[(seed, C_T)]`` under further seeded partitions (``ct.partitions``). The neighbours
    and the top-k copies (``ct.top_k``) are written by tasks run through ``mapper`` as part files under ``parts``
    (:func:`memray.stats.samples.sample_tables`): those tables are lists of parts; the others are frames.
    ``views``: set (``None``: test) -> its further views, projected (:func:`memray.stats.evidence.project_views`);
    ``evidence``: the replication test's settings (``None``: :class:`EvidenceConfig` defaults). ``times``: where
    the seconds of the ``bootstrap``, ``tables``, ``samples`` and ``evidence`` stages go (:mod:`memray.stats.timing`).
    """
    layer, cfg = fitted.layer, fitted.cfg
    times = times or StageTimes()
    names = sorted(gens)
    scores, cells, stab = [], [], []
    cis: dict[str, tuple[float, float]] = {}
    if cfg.bootstrap:  # one call for every set: the test resamples are drawn once per cell
        defined = {n: (scored[n].dist, scored[n].cell) for n in names if not np.isnan(scored[n].ct)}
        with times.stage("bootstrap"):
            cis = bootstrap_ct(fitted.test_dist, fitted.test_cells, defined, fitted.train_counts,
                               cfg.min_gen_per_cell, cfg.bootstrap, bootstrap_seed(cfg, layer))  # fmt: skip
    t0 = time.perf_counter()
    for name in names:
        g = scored[name]
        st = g.cells
        p = float("nan") if np.isnan(g.ct) else ct_p_value_from_cells(st)
        lo, hi = cis.get(name, (float("nan"), float("nan")))
        runs = [(int(cfg.seed), g.ct), *(partitions or {}).get(name, [])]
        stab += [(name, layer, s, ct) for s, ct in runs] if len(runs) > 1 else []
        finite = [ct for _, ct in runs if not np.isnan(ct)]
        pmin, pmax = (min(finite), max(finite)) if len(runs) > 1 and finite else (float("nan"), float("nan"))
        scores.append((name, layer, g.ct, n_train, test.n, gens[name].n, int(st.kept.sum()), st.cells,
                       p, float("nan"), lo, hi, pmin, pmax))  # fmt: skip
        cell_p = cell_p_values(st)
        for c in range(st.cells):
            cells.append((name, layer, c, st.z[c], st.n_train[c], st.n_test[c], st.n_gen[c], st.kept[c],
                          st.status[c], cell_p[c], float("nan")))  # fmt: skip
        log.info("gen set %r, layer %d: C_T = %.3f (p = %.2g; %d cells kept)", name, layer, g.ct, p,
                 int(st.kept.sum()))  # fmt: skip
    out: dict[str, pd.DataFrame | list[Part]] = {
        "ct_scores": pd.DataFrame(scores, columns=schema.CT_SCORES_SCHEMA.names),
        "ct_cells": pd.DataFrame(cells, columns=schema.CT_CELLS_SCHEMA.names),
        "ct_stability": pd.DataFrame(stab, columns=schema.STABILITY_SCHEMA.names) if stab else empty("ct_stability"),
        "copies": empty("copies"),
    }
    times.seconds["tables"] += time.perf_counter() - t0
    out.update(per_sample_tables(fitted, gens, scored, parts, mapper, sources, train_name, views, evidence, times))
    return out


def per_sample_tables(
    fitted: Fitted,
    gens: dict[str, Rows],
    scored: dict[str, Any],
    parts: PartDir,
    mapper: Mapper,
    sources: Sources | None,
    train_name: str,
    views: dict[str | None, tuple[str, ...]] | None,
    evidence: EvidenceConfig | None,
    times: StageTimes | None = None,
) -> dict[str, pd.DataFrame | list[Part]]:
    """The per-sample tables (``neighbors``, ``copies``: part files written by tasks) and what they give per set:
    ``replication`` and ``memorized`` (:func:`memray.stats.evidence.evidence_frames`)."""
    cfg, ev_cfg, times = fitted.cfg, evidence or EvidenceConfig(), times or StageTimes()
    out: dict[str, pd.DataFrame | list[Part]] = {}
    with times.stage("samples"):
        samples, ev = sample_tables(fitted, gens, scored, parts, mapper, sources, train_name, views, ev_cfg.q,
                                    ev_cfg.statistic)  # fmt: skip
    out.update(samples)
    le = LayerEvidence(fitted.layer, fitted.test_cells, {n: scored[n].cell for n in sorted(gens)}, int(cfg.cells),
                       fitted.neighbour_ids, sources, train_name)  # fmt: skip
    with times.stage("evidence"):
        out.update(evidence_frames(ev, le, ev_cfg, cfg.alpha, int(cfg.seed)))
    return out
