"""Copy evidence per generated sample: its k nearest training samples over the whole training set (one layer).

What the statistic uses is the nearest training sample *within the sample's cell* (``neighbors.parquet``); for
about one sample in ten that is not the nearest training sample overall. ``copies.parquet`` holds the global top-k
(:mod:`memray.stats.topk`) with ``test_quantile``: the share of test samples whose global nearest-training distance
is below this one (0.001: closer than 99.9% of fresh images). A small quantile is evidence to look at, not a
verdict: C_T is a test of a set, and about α of fresh images sit below the α quantile by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memray.io import schema
from memray.io.rows import Rows
from memray.stats import Mapper
from memray.stats.engine import Fitted, as_rows, project
from memray.stats.topk import merged_topk, share_below, topk_round

IDENTITY = "identity"
"""The view name of untransformed images (:mod:`memray.embedding.views`)."""

Sources = Callable[[str, np.ndarray], list[str | None]]
"""``(set name, sample ids) -> source strings`` (:class:`memray.io.fetch.Locator`), for the copy evidence."""


def evidence_score(dist: np.ndarray, statistic: str) -> np.ndarray:
    """(rows,) evidence score of top-k lists ``dist`` (rows, k), ascending, ``inf`` padded.

    ``distance``: ``d_1``. ``relative``: ``d_1 / d_k``, with ``d_k`` the k-th distance (the last finite one where a
    list is short) and 0 where ``d_1 = 0``: a sample on ONE training image scores near 0, one among many alike
    (a "hub", a dense region) near 1 (the nearest-over-neighbourhood ratio of Carlini et al. 2023's extraction
    criterion). Either score is computed the same way for test and generated samples, so ranks stay calibrated.

    Raises:
        ValueError: ``relative`` with lists of one column (no k-th neighbour).
    """
    d = np.asarray(dist, np.float64)
    if statistic == "distance":
        return d[:, 0].copy()
    if statistic != "relative":
        raise ValueError(f"evidence.statistic={statistic!r}: use relative or distance")
    if d.shape[1] < 2:
        raise ValueError("evidence.statistic=relative needs ct.top_k >= 2 (the k-th nearest distance)")
    kth = np.where(np.isfinite(d), d, -np.inf).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = d[:, 0] / kth
    out[d[:, 0] == 0] = 0.0
    out[~np.isfinite(d[:, 0])] = np.inf
    return out


def neighbour_ids(train: Rows, nn: np.ndarray) -> np.ndarray:
    """Sample ids (object array) of training rows ``nn`` (int64), ``None`` where ``nn`` is -1."""
    nn = np.asarray(nn, np.int64)
    out = np.full(len(nn), None, dtype=object)
    found = nn >= 0
    if found.any():
        out[found] = train.ids(nn[found])
    return out


@dataclass(frozen=True)
class LayerTrain:
    """What a per-sample table task needs of a layer's training set: the layer number and the rows' sample ids."""

    layer: int
    train: Rows

    def neighbour_ids(self, nn: np.ndarray) -> np.ndarray:
        """:func:`neighbour_ids` of this training set."""
        return neighbour_ids(self.train, nn)


def global_neighbours(
    fitted: Fitted, gens: dict[str, np.ndarray | Rows], k: int, mapper: Mapper = map
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One top-k round for the test set (its nearest only is kept) and every generated set (features (m, d)),
    the lists returned to the caller (a layer's tables have tasks write them instead, :mod:`memray.stats.samples`).

    Returns ``(test_d1 (n_P,), {name: (dist (m, k), train rows (m, k))})``.
    """
    eng = fitted.engine
    sets = [] if None in eng.projected else [(None, eng.test_rows, f"test features, layer {eng.layer}")]
    sets += [(n, as_rows(x), f"generated features {n!r}, layer {eng.layer}") for n, x in gens.items()]
    project(eng, sets, mapper, by_cell=False)  # searched only for the global top-k
    blocks = {n: eng.projected[n].blocks() for n in [None, *gens]}
    every = [b for bs in blocks.values() for b in bs]
    items = topk_round(eng.ws, eng.fit, eng.qws, every, k, fitted.cfg, mapper, groups=[0] * len(every))
    found, cache = {}, {}
    for n, bs in blocks.items():
        lists = [merged_topk(eng.qws, b, items, k, cache) for b in bs]
        found[n] = (np.concatenate([d for d, _ in lists]), np.concatenate([r for _, r in lists]))
    test_d1 = found.pop(None)[0][:, 0]
    return test_d1, found


def copies_frame(
    fitted: LayerTrain | Fitted,
    ids: dict[str, np.ndarray],
    found: dict[str, tuple[np.ndarray, np.ndarray]],
    test_d1: np.ndarray,
    sources: Sources | None = None,
    train_name: str = "train",
    views: dict[str, np.ndarray] | None = None,
    scores: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """``copies.parquet`` rows of one layer (schema.COPIES_SCHEMA), rank 1 = nearest.

    ``test_quantile``: without ``scores``, each row's distance against ``test_d1`` (the test set's nearest
    distances); with ``scores`` (set name -> (m,) evidence scores, :func:`evidence_score`), each sample's score
    against ``test_d1`` holding the test set's scores, the same on all of the sample's rows.
    ``ids``: set name -> sample ids of its rows; ``sources(set_name, sample_ids)`` -> their source strings
    (:class:`memray.io.fetch.Locator`; the training set is ``train_name``), ``None`` = no sources (features
    given as arrays); ``views``: set name -> (m,) the view each row's lists were found under (default identity).
    """
    frames = []
    for name in sorted(found):
        dist, rows = found[name]
        m, k = dist.shape
        ok = rows.reshape(-1) >= 0
        flat_rows = rows.reshape(-1)[ok]
        sid = np.repeat(np.asarray(ids[name], dtype=object).astype(str), k)[ok]
        score = np.repeat(scores[name], k) if scores is not None else dist.reshape(-1)
        view = np.repeat(np.asarray((views or {}).get(name, np.full(m, IDENTITY, dtype=object)), dtype=object), k)
        train_ids = fitted.neighbour_ids(flat_rows)
        frame = pd.DataFrame(
            {
                schema.GEN_SET: name,
                schema.SAMPLE_ID: sid,
                schema.LAYER: np.int32(fitted.layer),
                schema.RANK: np.tile(np.arange(1, k + 1, dtype=np.int32), m)[ok],
                schema.TRAIN_ID: train_ids,
                schema.DISTANCE: dist.reshape(-1)[ok],
                schema.TEST_QUANTILE: share_below(test_d1, score[ok]),
                schema.GEN_SOURCE: None,
                schema.TRAIN_SOURCE: None,
                schema.VIEW: view[ok],
            }
        )
        if sources is not None and len(frame):
            frame[schema.GEN_SOURCE] = sources(name, frame[schema.SAMPLE_ID].to_numpy())
            frame[schema.TRAIN_SOURCE] = sources(train_name, frame[schema.TRAIN_ID].to_numpy())
        frames.append(frame)
    if not frames:
        return pd.DataFrame({f.name: [] for f in schema.COPIES_SCHEMA})
    return pd.concat(frames, ignore_index=True)
