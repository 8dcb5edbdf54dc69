"""One layer of the scoring engine: fit the space on the training rows, then one search round for all queries.

:func:`fit_layer_engine` fits PCA + cells over the training set's global row blocks
(:func:`memray.stats.fit.fit_space`, which writes the cell-partitioned projected rows to the workspace) and projects
and assigns the test queries in the caller, which holds only queries (O(|P| + Σ|Q|), never O(|T|)).
:func:`score_sets` then runs ONE search round (:func:`memray.stats.search.search_all`) for every query set of the
layer together: the test set (while it has not been searched) and every generated set, concatenated. Each set's
per-sample distances, neighbours and cells come back from that round, so a layer of a Ray job is one fit and one
round of search tasks, and every fingerprint subset reuses the same distances.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.config import CTConfig
from memray.stats.fit import FitResult, fit_space
from memray.stats.fit_store import load_fit, save_fit
from memray.stats.search import search_all
from memray.stats.space import LayerSpace

log = logging.getLogger(__name__)


class Neighbours(NamedTuple):
    """Per-sample result of a search round for one query set of m samples.

    ``dist`` (m,) float64 distance to the nearest training row in the sample's cell (inf if the cell has no
    training row); ``nn`` (m,) int64 global row of that neighbour (-1 if none); ``cell`` (m,) int64.
    """

    dist: np.ndarray
    nn: np.ndarray
    cell: np.ndarray


@dataclass(eq=False)
class EngineLayer:
    """A fitted layer: the space, the fit's per-block cell counts, the workspace and the test queries.

    ``test_z`` (n_P, k) float64 projected test queries, ``test_cells`` (n_P,) int64; ``test`` holds their search
    result once a round has included them (``None`` before).
    """

    layer: int
    cfg: CTConfig
    fit: FitResult
    ws: Any
    train: Rows
    test_z: np.ndarray
    test_cells: np.ndarray
    test: Neighbours | None = None

    @property
    def space(self) -> LayerSpace:
        """The fitted PCA + cells."""
        return self.fit.space

    @property
    def train_counts(self) -> np.ndarray:
        """(cells,) int64 training rows per cell."""
        return np.asarray(self.fit.train_counts, dtype=np.int64)


def fit_layer_engine(
    layer: int, train: Rows, test_x: np.ndarray, cfg: CTConfig, ws: Any, mapper: Mapper = map
) -> EngineLayer:
    """Fit the space on ``train`` (its blocks run through ``mapper``), then project and assign the test queries.

    ``test_x`` (n_P, d) float32 raw test features; they are searched by the first :func:`score_sets` round.
    """
    t0 = time.perf_counter()
    fit = load_fit(ws)  # a complete fit of this workspace (a resume, or a reused reference)
    if fit is None:
        fit = fit_space(train, cfg, ws, mapper, label=f"layer {layer}")
        save_fit(ws, fit)
    else:
        log.info("layer %d: reusing the fit in %s", layer, getattr(ws, "root", ws))
    test_z = fit.space.project(test_x)
    eng = EngineLayer(int(layer), cfg, fit, ws, train, test_z, fit.space.assign(test_z))
    log.info(
        "layer %d: %d train -> %d dims, %d cells; fit in %.2f s",
        layer, train.n, fit.space.dim, cfg.cells, time.perf_counter() - t0,
    )  # fmt: skip
    return eng


def project_queries(engine: EngineLayer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw features (m, d) -> projected (m, k) float64 and their cells (m,) int64."""
    z = engine.space.project(x)
    return z, engine.space.assign(z)


def score_sets(engine: EngineLayer, gens: dict[str, np.ndarray], mapper: Mapper = map) -> dict[str, Neighbours]:
    """ONE search round for the test set (unless already searched) and every generated set (m_s, d) together.

    The test result is stored on ``engine.test``; returns ``{name: Neighbours}`` in the order of ``gens``.
    Results depend only on the data: a query's answer is the same whichever other queries share its round.
    """
    t0 = time.perf_counter()
    parts: list[tuple[str | None, np.ndarray, np.ndarray]] = []
    if engine.test is None:
        parts.append((None, engine.test_z, engine.test_cells))
    parts += [(name, *project_queries(engine, x)) for name, x in gens.items()]
    if not parts:
        return {}
    z = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    cells = np.concatenate([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
    dist, nn = search_all(engine.ws, engine.fit, z, cells, engine.cfg, mapper)
    out: dict[str, Neighbours] = {}
    at = 0
    for name, pz, pc in parts:
        res = Neighbours(dist[at : at + len(pz)].copy(), nn[at : at + len(pz)].copy(), np.asarray(pc, np.int64))
        at += len(pz)
        if name is None:
            engine.test = res
        else:
            out[name] = res
    log.info(
        "layer %d: search round of %d queries (%d sets%s), %.2f s",
        engine.layer, len(z), len(gens), " + test" if parts[0][0] is None else "", time.perf_counter() - t0,
    )  # fmt: skip
    return out


def search_test(engine: EngineLayer, mapper: Mapper = map) -> Neighbours:
    """The test set's neighbours (a round of its own when no :func:`score_sets` round has included it yet)."""
    if engine.test is None:
        score_sets(engine, {}, mapper)
    assert engine.test is not None
    return engine.test
