"""An independent, deliberately plain C_T implementation used only by the tests.

It shares no code with memray: PCA by numpy SVD of the centred training matrix, sklearn KMeans (k-means++,
10 restarts), dense distance matrices per cell from scipy's ``cdist``, ranks from ``scipy.stats.rankdata`` and
the Z formula written out as in Meehan et al.'s code. Use it on well-separated clustered data, where both
implementations must find the same partition (cell numbering may differ; C_T does not depend on it).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import rankdata
from sklearn.cluster import KMeans


def project(train: np.ndarray, others: list[np.ndarray], pca_dim: int | None, only_if_larger: bool):
    """PCA fit on ``train`` by SVD; returns the projected train and others (unchanged when PCA is off)."""
    n, d = train.shape
    if pca_dim is None or (only_if_larger and d <= pca_dim):
        return train.astype(np.float64), [o.astype(np.float64) for o in others]
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    v = vt[: min(n, d, pca_dim)].T
    return (train - mean) @ v, [(o - mean) @ v for o in others]


def dense_distances(queries: np.ndarray, train: np.ndarray, metric: str) -> np.ndarray:
    """(q, n) float64 distances by the definition (``l2``; ``1 − cos``; ``1 − |cos|``, zero vectors: cos = 0)."""
    if metric == "l2":
        return np.sqrt(((queries[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    nq = np.linalg.norm(queries, axis=1)[:, None]
    nt = np.linalg.norm(train, axis=1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.nan_to_num((queries @ train.T) / (nq * nt))
    return 1 - (np.abs(cos) if metric == "cosine_abs" else cos)


def nearest_distance(queries: np.ndarray, train: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each query to its nearest training row, from the full distance matrix."""
    if metric == "l2":
        dm = cdist(queries, train, "euclidean")
    elif metric == "cosine":
        dm = cdist(queries, train, "cosine")
    else:  # 1 - |cos|
        dm = 1.0 - np.abs(1.0 - cdist(queries, train, "cosine"))
    return dm.min(axis=1)


def z_u(gen_d: np.ndarray, test_d: np.ndarray) -> float:
    """Meehan's Z_U: U of the generated sample from pooled average ranks, continuity term 0.5."""
    m, n = len(gen_d), len(test_d)
    if m == 0:
        return 0.0
    ranks = rankdata(np.concatenate([gen_d, test_d]))
    u = ranks[:m].sum() - m * (m + 1) / 2
    return (u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)


def reference_ct(
    train: np.ndarray,
    test: np.ndarray,
    gen: np.ndarray,
    *,
    metric: str,
    cells: int,
    pca_dim: int | None,
    pca_only_if_larger: bool,
    min_gen_per_cell: int,
    seed: int = 0,
    n_init: int = 10,
) -> dict:
    """C_T plus the per-sample distances and cell labels (``test_d``, ``gen_d``, ``labels``), all in float64.

    Cells: sklearn ``KMeans(n_init=10)`` (the reference protocol: best inertia of 10 k-means++ runs)."""
    train, test, gen = (np.asarray(a, dtype=np.float64) for a in (train, test, gen))
    tz, (pz, qz) = project(train, [test, gen], pca_dim, pca_only_if_larger)
    km = KMeans(n_clusters=cells, n_init=n_init, random_state=seed).fit(tz)
    t_lab, p_lab, q_lab = km.labels_, km.predict(pz), km.predict(qz)
    num = den = 0.0
    test_d = np.full(len(pz), np.nan)
    gen_d = np.full(len(qz), np.nan)
    for c in range(cells):
        t_c = tz[t_lab == c]
        pd_c = nearest_distance(pz[p_lab == c], t_c, metric) if (p_lab == c).any() else np.zeros(0)
        qd_c = nearest_distance(qz[q_lab == c], t_c, metric) if (q_lab == c).any() else np.zeros(0)
        test_d[p_lab == c], gen_d[q_lab == c] = pd_c, qd_c
        if len(pd_c) == 0 or len(qd_c) <= min_gen_per_cell:
            continue
        share = len(pd_c) / len(pz)
        num += share * z_u(qd_c, pd_c)
        den += share
    return {
        "ct": num / den if den > 0 else float("nan"),
        "test_d": test_d,
        "gen_d": gen_d,
        "train_labels": t_lab,
        "test_labels": p_lab,
        "gen_labels": q_lab,
    }
