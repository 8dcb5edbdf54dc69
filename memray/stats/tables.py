"""The result tables of a scoring run: per-layer pieces with their uncertainty, and the assembled :class:`ScoreResult`.

Per layer (:func:`layer_tables`): C_T with its one-sided p-value and seeded bootstrap 95% interval
(:mod:`memray.stats.significance`), each cell's Z and p-value, the in-cell neighbours the statistic used, the global
top-k copy evidence (:mod:`memray.stats.copies`) and, with ``ct.partitions > 1``, C_T's range over seeded
partitions. :meth:`ScoreResult.from_tables` sorts the concatenated pieces and adds what needs every layer: the
Holm-adjusted p-values and one verdict per generated set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from memray.io import schema
from memray.stats import Mapper
from memray.stats.config import CTConfig
from memray.stats.copies import copies_frame, global_neighbours
from memray.stats.significance import bootstrap_ct, cell_p_values, ct_p_value_from_cells
from memray.stats.verdict import add_significance, verdict_table

log = logging.getLogger(__name__)

Sources = Callable[[str, np.ndarray], list[str | None]]

# table name -> (file name, sort keys); rows keep their input order within equal keys
TABLES: dict[str, tuple[str, list[str]]] = {
    "ct_scores": (schema.CT_SCORES_FILE, [schema.GEN_SET, schema.LAYER]),
    "ct_cells": (schema.CT_CELLS_FILE, [schema.GEN_SET, schema.LAYER, schema.CELL]),
    "neighbors": (schema.NEIGHBORS_FILE, [schema.ROLE, schema.GEN_SET, schema.LAYER]),
    "copies": (schema.COPIES_FILE, [schema.GEN_SET, schema.LAYER, schema.SAMPLE_ID, schema.RANK]),
    "ct_stability": (schema.STABILITY_FILE, [schema.GEN_SET, schema.LAYER, schema.PARTITION_SEED]),
}
OPTIONAL = ("copies", "ct_stability")  # empty when ct.top_k = 0 / ct.partitions = 1
SCHEMAS = {
    "ct_scores": schema.CT_SCORES_SCHEMA,
    "ct_cells": schema.CT_CELLS_SCHEMA,
    "neighbors": schema.NEIGHBORS_SCHEMA,
    "copies": schema.COPIES_SCHEMA,
    "ct_stability": schema.STABILITY_SCHEMA,
}


def empty(name: str) -> pd.DataFrame:
    """An empty frame with a table's columns."""
    return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in SCHEMAS[name]})


@dataclass
class ScoreResult:
    """Tidy result tables (sorted deterministically) and the config that produced them.

    ``ct_scores``: one row per (gen_set, layer) with p-values and CI; ``ct_cells``: per (gen_set, layer, cell);
    ``neighbors``: per (role, gen_set, layer, sample), the nearest training sample in the sample's cell (what C_T
    uses), ``gen_set`` null for test rows; ``copies``: per generated sample and layer its top-k nearest training
    samples over the whole training set; ``ct_stability``: C_T per partition seed; ``verdicts``: per set.
    """

    ct_scores: pd.DataFrame
    ct_cells: pd.DataFrame
    neighbors: pd.DataFrame
    config: CTConfig | None
    layers: list[int]
    gen_sets: list[str]
    copies: pd.DataFrame | None = None
    ct_stability: pd.DataFrame | None = None
    verdicts: pd.DataFrame | None = None

    def table(self, name: str) -> pd.DataFrame:
        """A table by name (``ct_scores``) or file name (``ct_scores.parquet``); also ``verdicts``."""
        key = name.removesuffix(".parquet")
        if key not in (*TABLES, "verdicts"):
            raise KeyError(f"unknown table {name!r}; one of {sorted((*TABLES, 'verdicts'))}")
        return getattr(self, key)

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame], config: CTConfig | None = None) -> ScoreResult:
        """Assemble (e.g. per-layer pieces concatenated) tables keyed by name or file name, sorting the rows.

        Adds the Holm-adjusted p-values (over each set's layers; over its kept cells × layers) and the verdicts.
        """
        frames = {}
        for key, (file, order) in TABLES.items():
            df = tables.get(key, tables.get(file))
            if df is None and key in OPTIONAL:
                df = empty(key)
            if df is None:
                raise KeyError(f"table {key!r} missing; got {sorted(tables)}")
            frames[key] = df.sort_values(order, kind="stable", na_position="first", ignore_index=True)
        frames["ct_scores"], frames["ct_cells"] = add_significance(frames["ct_scores"], frames["ct_cells"])
        scores = frames["ct_scores"]
        verdicts = None
        if config is not None:
            verdicts = verdict_table(scores, frames["ct_cells"], config.alpha, config.min_gen_per_cell)
        layers = sorted(int(x) for x in scores[schema.LAYER].unique())
        gen_sets = sorted(scores[schema.GEN_SET].unique())
        return cls(**frames, config=config, layers=layers, gen_sets=gen_sets, verdicts=verdicts)


def _neighbor_frame(role: str, gen_set: str | None, layer: int, ids, cell, nn_ids, dist) -> pd.DataFrame:
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


def bootstrap_seed(cfg: CTConfig, layer: int) -> int:
    """The bootstrap's seed of one layer: ``SeedSequence([ct.seed, layer])``'s first word (each set's draws are
    further keyed by its name, :func:`memray.stats.significance.bootstrap_replicates`)."""
    return int(np.random.SeedSequence([int(cfg.seed), int(layer)]).generate_state(1)[0])


def layer_tables(
    fitted: Any,
    n_train: int,
    test: Any,
    gens: dict[str, Any],
    scored: dict[str, Any],
    mapper: Mapper = map,
    sources: Sources | None = None,
    train_name: str = "train",
    partitions: dict[str, list[tuple[int, float]]] | None = None,
) -> dict[str, pd.DataFrame]:
    """One fitted layer's table pieces from its scored sets (``scored``: name -> GenScore).

    ``gens``: name -> FeatureSet (ids, features of this layer); ``sources``: sample ids -> source strings (copy
    evidence); ``partitions``: name -> ``[(seed, C_T)]`` under further seeded partitions (``ct.partitions``).
    The top-k copy search (``ct.top_k``) runs through ``mapper``.
    """
    layer, cfg = fitted.layer, fitted.cfg
    names = sorted(gens)
    # neighbour sample ids of the test and every set resolved in one look-up
    nns = [fitted.test_nn] + [scored[name].nn for name in names]
    nn_ids = np.split(fitted.neighbour_ids(np.concatenate(nns)), np.cumsum([len(x) for x in nns])[:-1])
    scores, cells, stab = [], [], []
    nbrs = [_neighbor_frame(schema.ROLE_TEST, None, layer, test.ids, fitted.test_cells, nn_ids[0], fitted.test_dist)]
    cis: dict[str, tuple[float, float]] = {}
    if cfg.bootstrap:  # one call for every set: the test resamples are drawn once per cell
        defined = {n: (scored[n].dist, scored[n].cell) for n in names if not np.isnan(scored[n].ct)}
        cis = bootstrap_ct(fitted.test_dist, fitted.test_cells, defined, fitted.train_counts, cfg.min_gen_per_cell,
                           cfg.bootstrap, bootstrap_seed(cfg, layer))  # fmt: skip
    for name, ids in zip(names, nn_ids[1:], strict=True):
        g = scored[name]
        st = g.cells
        p = float("nan") if np.isnan(g.ct) else ct_p_value_from_cells(st)
        lo, hi = cis.get(name, (float("nan"), float("nan")))
        runs = [(int(cfg.seed), g.ct), *(partitions or {}).get(name, [])]
        stab += [(name, layer, s, ct) for s, ct in runs] if len(runs) > 1 else []
        finite = [ct for _, ct in runs if not np.isnan(ct)]
        pmin, pmax = (min(finite), max(finite)) if len(runs) > 1 and finite else (float("nan"), float("nan"))
        scores.append((name, layer, g.ct, n_train, len(test), len(gens[name]), int(st.kept.sum()), st.cells,
                       p, float("nan"), lo, hi, pmin, pmax))  # fmt: skip
        cell_p = cell_p_values(st)
        for c in range(st.cells):
            cells.append((name, layer, c, st.z[c], st.n_train[c], st.n_test[c], st.n_gen[c], st.kept[c],
                          st.status[c], cell_p[c], float("nan")))  # fmt: skip
        nbrs.append(_neighbor_frame(schema.ROLE_GEN, name, layer, gens[name].ids, g.cell, ids, g.dist))
        log.info("gen set %r, layer %d: C_T = %.3f (p = %.2g; %d cells kept)", name, layer, g.ct, p,
                 int(st.kept.sum()))  # fmt: skip
    out = {
        "ct_scores": pd.DataFrame(scores, columns=schema.CT_SCORES_SCHEMA.names),
        "ct_cells": pd.DataFrame(cells, columns=schema.CT_CELLS_SCHEMA.names),
        "neighbors": pd.concat(nbrs, ignore_index=True),
        "ct_stability": pd.DataFrame(stab, columns=schema.STABILITY_SCHEMA.names) if stab else empty("ct_stability"),
        "copies": empty("copies"),
    }
    if cfg.top_k > 0 and names:
        test_d1, found = global_neighbours(fitted, {n: gens[n].layers[layer] for n in names}, cfg.top_k, mapper)
        ids_by_set = {n: gens[n].ids for n in names}
        out["copies"] = copies_frame(fitted, ids_by_set, found, test_d1, sources, train_name)
    return out
