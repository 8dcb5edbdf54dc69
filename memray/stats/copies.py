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
    project(eng, sets, mapper)
    blocks = {n: eng.projected[n].blocks() for n in [None, *gens]}
    items = topk_round(eng.ws, eng.fit, eng.qws, [b for bs in blocks.values() for b in bs], k, fitted.cfg, mapper)
    found = {}
    for n, bs in blocks.items():
        lists = [merged_topk(eng.qws, b, items, k) for b in bs]
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
) -> pd.DataFrame:
    """``copies.parquet`` rows of one layer (schema.COPIES_SCHEMA), rank 1 = nearest.

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
                schema.TEST_QUANTILE: share_below(test_d1, dist.reshape(-1)[ok]),
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
