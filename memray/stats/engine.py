"""One layer of the scoring engine: fit the space on the training rows, then one search round for all queries.

:func:`fit_layer_engine` fits PCA + cells over the training set's global row blocks (:func:`memray.stats.fit.fit_space`,
which writes the cell-partitioned projected rows to the workspace). :func:`score_sets` then runs ONE round for every
query set of the layer together: the test set (while it has not been searched) and every generated set. Query sets
flow like the training rows: tasks read their blocks, project and assign them and write them to the query workspace
(:mod:`memray.stats.queries`), and the search items read them there (:func:`memray.stats.search.search_round`). The
caller holds per query only its cell, distance and neighbour row (24 B), never the features or their projections,
so a layer of a Ray job is one fit, one round of projection tasks and one round of search tasks, and every
fingerprint subset reuses the same distances.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from memray.io.rows import ArrayRows, Rows
from memray.stats import Mapper, queries
from memray.stats.config import CTConfig
from memray.stats.fit import FitResult, fit_space
from memray.stats.fit_store import load_fit, save_fit
from memray.stats.queries import Projected, project_sets
from memray.stats.search import search_round
from memray.stats.space import LayerSpace
from memray.stats.workspace import Workspace

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
    """A fitted layer: the space, the fit's per-block cell counts, the workspaces and the query sets.

    ``qws``: the query workspace (projected query rows, top-k lists); ``test_rows``: the test set's rows, searched
    by the first round (``test`` holds its result afterwards); ``projected``: where each set's projected rows are
    (``None`` = the test set); ``query_rows``: rows per query block (a multiple of 1,024; 0:
    :data:`memray.stats.queries.QUERY_ROWS`; results do not depend on it).
    """

    layer: int
    cfg: CTConfig
    fit: FitResult
    ws: Any
    qws: Any
    train: Rows
    test_rows: Rows
    test: Neighbours | None = None
    projected: dict[str | None, Projected] = field(default_factory=dict)
    rounds: int = 0
    query_rows: int = 0

    @property
    def space(self) -> LayerSpace:
        """The fitted PCA + cells."""
        return self.fit.space

    @property
    def train_counts(self) -> np.ndarray:
        """(cells,) int64 training rows per cell."""
        return np.asarray(self.fit.train_counts, dtype=np.int64)


class Fitted(Protocol):
    """What the table builders read of a fitted layer (:class:`memray.stats.score.FittedLayer` is one): typed here
    so that they need not import the module that calls them."""

    layer: int
    train: Rows
    cfg: CTConfig
    engine: EngineLayer

    @property
    def test(self) -> Neighbours: ...

    @property
    def test_dist(self) -> np.ndarray: ...

    @property
    def test_cells(self) -> np.ndarray: ...

    @property
    def train_counts(self) -> np.ndarray: ...

    def neighbour_ids(self, nn: np.ndarray) -> np.ndarray: ...


def as_rows(x: np.ndarray | Rows) -> Rows:
    """A query set as rows: a :class:`Rows` handle as it is, an array (m, d) in memory."""
    return x if isinstance(x, Rows) else ArrayRows(np.asarray(x))


def fit_layer_engine(
    layer: int,
    train: Rows,
    test: np.ndarray | Rows,
    cfg: CTConfig,
    ws: Workspace,
    mapper: Mapper = map,
    qws: Workspace | None = None,
) -> EngineLayer:
    """Fit the space on ``train`` (its blocks run through ``mapper``); the test set (n_P, d) is searched by the first
    :func:`score_sets` round. ``qws``: the query workspace (default ``ws``'s ``queries`` folder)."""
    t0 = time.perf_counter()
    fit = load_fit(ws)  # a complete fit of this workspace (a resume, or a reused reference)
    if fit is None:
        fit = fit_space(train, cfg, ws, mapper, label=f"layer {layer}")
        save_fit(ws, fit)
    else:
        log.info("layer %d: reusing the fit in %s", layer, getattr(ws, "root", ws))
    qws = ws.child("queries") if qws is None else qws
    eng = EngineLayer(int(layer), cfg, fit, ws, qws, train, as_rows(test))
    log.info(
        "layer %d: %d train -> %d dims, %d cells; fit in %.2f s",
        layer, train.n, fit.space.dim, cfg.cells, time.perf_counter() - t0,
    )  # fmt: skip
    return eng


def project(
    engine: EngineLayer, sets: list[tuple[str | None, Rows, str]], mapper: Mapper = map, by_cell: bool = True
) -> list[Projected]:
    """Project ``(name, rows, label)`` sets in one round of tasks (``label`` names a set in errors); each set's
    parts get a new prefix and are recorded in ``engine.projected`` under its name. ``by_cell=False``: sets only the
    global top-k searches (no cell parts, :mod:`memray.stats.queries`)."""
    r = engine.rounds
    engine.rounds += 1
    specs = [(f"r{r:03d}/s{i:03d}", rows, label) for i, (_, rows, label) in enumerate(sets)]
    done = project_sets(engine.qws, engine.space, specs, engine.query_rows or queries.QUERY_ROWS, mapper, by_cell)
    for (name, _, _), proj in zip(sets, done, strict=True):
        engine.projected[name] = proj
    return done


def score_sets(
    engine: EngineLayer, gens: dict[str, np.ndarray | Rows], mapper: Mapper = map, labels: dict[str, str] | None = None
) -> dict[str, Neighbours]:
    """ONE round for the test set (unless already searched) and every generated set (m_s, d) together.

    The test result is stored on ``engine.test``; returns ``{name: Neighbours}`` in the order of ``gens``.
    Results depend only on the data: a query's answer is the same whichever other queries share its round.
    """
    t0 = time.perf_counter()
    labels = labels or {}
    sets: list[tuple[str | None, Rows, str]] = []
    if engine.test is None:
        sets.append((None, engine.test_rows, f"test features, layer {engine.layer}"))
    sets += [(n, as_rows(x), labels.get(n, f"generated features {n!r}, layer {engine.layer}")) for n, x in gens.items()]
    if not sets:
        return {}
    done = project(engine, sets, mapper)
    parts: dict[int, list[tuple[str, int]]] = {}
    offsets = np.cumsum([0] + [len(p.cells) for p in done])
    for proj, offset in zip(done, offsets.tolist(), strict=False):
        for cell, keys in proj.keys_by_cell().items():
            parts.setdefault(cell, []).extend((key, offset) for key in keys)
    dist, nn = search_round(engine.ws, engine.fit, engine.qws, parts, int(offsets[-1]), engine.cfg, mapper)
    out: dict[str, Neighbours] = {}
    for (name, _, _), proj, a, b in zip(sets, done, offsets[:-1], offsets[1:], strict=True):
        res = Neighbours(dist[a:b].copy(), nn[a:b].copy(), proj.cells)
        if name is None:
            engine.test = res
        else:
            out[name] = res
    log.info(
        "layer %d: search round of %d queries (%d sets%s), %.2f s",
        engine.layer, int(offsets[-1]), len(gens), " + test" if sets[0][0] is None else "", time.perf_counter() - t0,
    )  # fmt: skip
    return out


def search_test(engine: EngineLayer, mapper: Mapper = map) -> Neighbours:
    """The test set's neighbours (a round of its own when no :func:`score_sets` round has included it yet)."""
    if engine.test is None:
        score_sets(engine, {}, mapper)
    assert engine.test is not None
    return engine.test
