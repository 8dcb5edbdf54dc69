"""The k-means seeding: hash samples of rows by sample id, and k-means++ initial centroids per restart.

Seeding sample: the rows whose stable hash ``blake2b(f"{seed}\\0{sample_id}", digest_size=8)`` (read as a
little-endian uint64 h) satisfies ``h · n < s · 2⁶⁴`` with ``s = cfg.kmeans_seed_sample`` (every row when
``s >= n``): about s rows, chosen by sample id alone, so the same rows whatever the files, blocks or workers (and
the same rows at every layer). Restart r seeds greedy k-means++ (:func:`kmeans_pp`) on that sample from
``default_rng([seed, r])`` (:func:`restart_rng`). The Lloyd sample (``cfg.kmeans_sample``) is drawn the same way
and contains the seeding sample when it is larger. Lloyd itself is :mod:`memray.stats.kmeans`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import partial

import numpy as np

from memray.stats import Mapper


def stable_hash(seed: int, sample_id: str) -> int:
    """uint64 hash of a sample id: 8-byte blake2b of ``f"{seed}\\0{sample_id}"`` (UTF-8), little-endian."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{sample_id}".encode(), digest_size=8).digest(), "little")


def hash_ids(seed: int, sample_ids: Iterable[str]) -> np.ndarray:
    """:func:`stable_hash` of each id -> (m,) uint64."""
    return np.fromiter((stable_hash(seed, str(s)) for s in sample_ids), dtype=np.uint64)


def hash_threshold(size: int | None, n: int) -> int | None:
    """Threshold t such that ``h < t`` ⟺ ``h · n < size · 2⁶⁴`` (a fraction ``size / n`` of uint64 hashes);
    ``None`` (every row) when ``size`` is ``None`` or ``>= n``."""
    if size is None or size >= n:
        return None
    return -(-(int(size) << 64) // int(n))  # ceil(size · 2^64 / n) < 2^64


def restart_rng(seed: int, restart: int) -> np.random.Generator:
    """The k-means++ stream of one restart: ``default_rng([seed, restart])`` after one discarded draw below 2³¹−1."""
    rng = np.random.default_rng([seed, restart])
    rng.integers(2**31 - 1)
    return rng


def seed_restarts(sample: np.ndarray, cells: int, seed: int, restarts: int, inner: Mapper = map) -> np.ndarray:
    """k-means++ initial centroids (R, cells, k) float64 on the seeding sample (m, k): restart r from
    ``default_rng([seed, r])`` (:func:`kmeans_pp`, whose float32 result is widened); ``inner`` runs the restarts
    (threads in one process: each restart's stream and arithmetic are its own, so the same centroids).

    Each stream first skips one draw (:func:`restart_rng`), the FAISS seed that memray 0.1's in-process k-means
    took there, so the initial centroids, and hence the cells and every C_T, stay what they were."""
    if len(sample) < cells:
        raise ValueError(
            f"the k-means seeding sample holds {len(sample)} rows, fewer than the {cells} cells; raise "
            "ct.kmeans_seed_sample (or ct.kmeans_sample)"
        )
    inits = list(inner(partial(_seed_one, sample, cells, seed), range(restarts)))
    return np.stack(inits).astype(np.float64)


def _seed_one(sample: np.ndarray, cells: int, seed: int, r: int) -> np.ndarray:
    return kmeans_pp(sample, cells, restart_rng(seed, r))


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; sklearn's 2 + ln k trials per centre) -> (k, d) float32."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)

    def sqdist(rows: np.ndarray) -> np.ndarray:  # (n, len(rows)) squared distances to the rows' points
        return np.maximum(sq[:, None] - 2.0 * (x @ x[rows].T) + sq[rows][None, :], 0.0)

    chosen = [int(rng.integers(n))]
    d2 = sqdist(np.array(chosen))[:, 0]
    trials = 2 + int(np.log(k))
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            cand = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total), n - 1)
        else:  # every point already coincides with a centre
            cand = rng.integers(n, size=trials)
        nd = np.minimum(d2[:, None], sqdist(cand))
        best = int(np.argmin(nd.sum(axis=0)))
        chosen.append(int(cand[best]))
        d2 = nd[:, best]
    return x[chosen].astype(np.float32)
