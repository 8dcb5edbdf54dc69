"""C_T-layer fingerprints: curve similarity, a labelled gallery, and attribution (1-NN, k-NN, centroid, open set).

A fingerprint is one C_T value per layer (a curve, shape ``(L,)``). Two curves are compared with the authors'
similarity ``S(a, b) = α·cos(a, b) + (1 − α)/(1 + ‖a − b‖₂)`` (He et al. 2024, α = 0.5), after setting NaN
values to 0 as the authors do; the cosine with an all-zero curve is defined as 0. Higher S = more alike;
S lies in [−α, 1] and equals 1 only for identical non-zero curves.

Deterministic ties everywhere: higher score first, then the lexicographically smallest label, then the
smallest curve name. Attribution tables follow :data:`memray.io.schema.ATTRIBUTION_SCHEMA`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.fd_profile import CURVE, CURVE_FD, joint_vectors, l2_matrix, resolve_method
from memray.io import schema

log = logging.getLogger(__name__)

_PAIR_CHUNK = 1 << 22  # elements of the (rows, m, L) difference array computed at once (32 MiB of float64)
UNKNOWN = "unknown"  # the prediction of an open-set query whose best similarity is below the threshold


class GalleryError(ValueError):
    """Curves cannot be compared (layers differ, duplicate names, missing labels); the message says how to fix."""


@dataclass(frozen=True)
class Gallery:
    """A set of named curves, optionally labelled: the reference gallery or a batch of queries.

    Attributes:
        names: (g,) unique curve names (str).
        labels: (g,) generator labels (str), ``None`` for unlabelled queries.
        curves: (g, L) float64 C_T values, column j = layer ``layers[j]``; NaN allowed (treated as 0).
        layers: (L,) layer numbers, strictly increasing.
        runs: (g,) the generated set each curve came from (several subsets share a run); defaults to ``names``.
            Leave-one-run-out evaluation removes every curve of the query's run from its gallery.
        fd_test: (g, L) the FD-to-test profile (log Fréchet distance of each curve's images to the test set, per
            layer; :mod:`memray.fingerprint.fd_profile`), or ``None`` for C_T-only curves (published curves).
    """

    names: np.ndarray
    labels: np.ndarray
    curves: np.ndarray
    layers: tuple[int, ...]
    runs: np.ndarray | None = None
    fd_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        names = np.asarray(self.names, dtype=object)
        curves = np.asarray(self.curves, dtype=np.float64)
        if curves.ndim != 2 or curves.shape != (len(names), len(self.layers)):
            raise GalleryError(f"curves have shape {curves.shape}, expected ({len(names)}, {len(self.layers)})")
        if len(set(names.tolist())) != len(names):
            dup = pd.Series(names).loc[lambda s: s.duplicated()].unique().tolist()
            raise GalleryError(f"duplicate curve names {dup[:5]}: every curve needs a unique name")
        if list(self.layers) != sorted(set(self.layers)):
            raise GalleryError(f"layers {list(self.layers)} must be strictly increasing")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=object).reshape(len(names)))
        object.__setattr__(self, "curves", curves)
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        runs = names if self.runs is None else np.asarray(self.runs, dtype=object).reshape(len(names))
        object.__setattr__(self, "runs", runs)
        if self.fd_test is not None:
            fd = np.asarray(self.fd_test, dtype=np.float64)
            if fd.shape != curves.shape or not np.isfinite(fd).all():
                raise GalleryError(f"fd_test must be finite with the curves' shape {curves.shape}, got {fd.shape}")
            object.__setattr__(self, "fd_test", fd)

    @property
    def method(self) -> str:
        """``curve_fd`` when the curves carry an FD-to-test profile, else ``curve``."""
        return CURVE if self.fd_test is None else CURVE_FD

    def __len__(self) -> int:
        return len(self.names)

    def select(self, rows: np.ndarray) -> Gallery:
        """The curves at ``rows`` (indices or a boolean mask), as a new Gallery."""
        fd = None if self.fd_test is None else self.fd_test[rows]
        return Gallery(self.names[rows], self.labels[rows], self.curves[rows], self.layers, self.runs[rows], fd)

    def layer(self, layer: int) -> Gallery:
        """Layer ``layer`` alone, as a gallery of 1-D curves (the single-layer baseline)."""
        j = self.layers.index(int(layer))
        fd = None if self.fd_test is None else self.fd_test[:, j : j + 1]
        return Gallery(self.names, self.labels, self.curves[:, j : j + 1], (int(layer),), self.runs, fd)


def align_layers(queries: Gallery, gallery: Gallery) -> None:
    """Raise :class:`GalleryError` unless queries and gallery have the same layer numbers."""
    if queries.layers != gallery.layers:
        only_q = sorted(set(queries.layers) - set(gallery.layers))
        only_g = sorted(set(gallery.layers) - set(queries.layers))
        raise GalleryError(
            f"layer mismatch: queries have layers {list(queries.layers)}, the gallery {list(gallery.layers)} "
            f"(only in queries: {only_q}, only in gallery: {only_g}); compute both with the same encoder layers"
        )


def similarity_matrix(a: np.ndarray, b: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Pairwise ``α·cos + (1 − α)/(1 + L2)`` between rows of ``a`` (n, L) and ``b`` (m, L) → (n, m).

    NaN entries become 0 first; the cosine with a zero row is 0.
    """
    a = np.nan_to_num(np.atleast_2d(np.asarray(a, dtype=np.float64)), nan=0.0)
    b = np.nan_to_num(np.atleast_2d(np.asarray(b, dtype=np.float64)), nan=0.0)
    if a.shape[1] != b.shape[1]:
        raise GalleryError(f"curves have {a.shape[1]} and {b.shape[1]} layers; they must match")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = np.outer(na, nb)
    cos = np.divide(a @ b.T, denom, out=np.zeros(denom.shape), where=denom > 0)
    l2 = np.empty(cos.shape)
    step = max(1, _PAIR_CHUNK // max(1, b.size))  # rows of a per chunk: bounded (chunk, m, L) temporaries
    for i in range(0, len(a), step):
        l2[i : i + step] = np.sqrt(((a[i : i + step, None, :] - b[None, :, :]) ** 2).sum(-1))
    return alpha * cos + (1.0 - alpha) / (1.0 + l2)


def similarity(a: np.ndarray, b: np.ndarray, alpha: float = 0.5) -> float:
    """Similarity of two curves (L,): ``α·cos(a, b) + (1 − α)/(1 + ‖a − b‖₂)``, NaN → 0, cos with 0 = 0."""
    return float(similarity_matrix(np.ravel(a)[None], np.ravel(b)[None], alpha)[0, 0])


def _ranked(keys: list[np.ndarray], present: np.ndarray) -> np.ndarray:
    """Indices of the present labels, best first: larger ``keys[0]``, then ``keys[1]``…, then smaller label code."""
    codes = np.flatnonzero(present)
    order = np.lexsort((codes, *(-k[codes] for k in reversed(keys))))
    return codes[order]


def _label_codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique labels and each curve's index into them (so code order = lexicographic label order)."""
    uniq, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    return uniq.astype(object), codes.ravel()


def decide_1nn(scores: np.ndarray, labels: np.ndarray) -> tuple[str, float, str | None, float]:
    """Nearest curve wins: (predicted, its score, runner-up label, runner-up's best score).

    ``scores`` (g,): higher = closer. Each label scores its best curve; equal scores → smallest label.
    """
    uniq, codes = _label_codes(labels)
    best = np.full(len(uniq), -np.inf)
    np.maximum.at(best, codes, np.asarray(scores, dtype=np.float64))
    order = _ranked([best], np.bincount(codes, minlength=len(uniq)) > 0)
    if len(order) == 1:
        return uniq[order[0]], float(best[order[0]]), None, float("nan")
    return uniq[order[0]], float(best[order[0]]), uniq[order[1]], float(best[order[1]])


def decide_knn(
    scores: np.ndarray, labels: np.ndarray, names: np.ndarray, k: int
) -> tuple[str, float, str | None, float]:
    """Majority vote of the k most similar curves (ties among curves: smaller label, then name); score = votes / k'.

    Ties in votes → larger summed similarity of the voters → smallest label. Labels without a vote rank
    after all voted labels by their best similarity (this only matters for the runner-up). k' = min(k, g).
    """
    scores = np.asarray(scores, dtype=np.float64)
    uniq, codes = _label_codes(labels)
    name_rank = np.argsort(np.argsort(np.asarray(names, dtype=object).astype(str), kind="stable"), kind="stable")
    top = np.lexsort((name_rank, codes, -scores))[: min(k, len(scores))]
    votes = np.bincount(codes[top], minlength=len(uniq)).astype(np.float64)
    total = np.bincount(codes[top], weights=scores[top], minlength=len(uniq))
    best = np.full(len(uniq), -np.inf)
    np.maximum.at(best, codes, scores)
    order = _ranked([votes, total, best], np.bincount(codes, minlength=len(uniq)) > 0)
    kk = float(len(top))
    if len(order) == 1:
        return uniq[order[0]], votes[order[0]] / kk, None, float("nan")
    return uniq[order[0]], votes[order[0]] / kk, uniq[order[1]], votes[order[1]] / kk


def label_centroids(gallery: Gallery, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label mean curve (NaN → 0 first) over ``rows``: (labels (c,), centroids (c, L)), labels sorted."""
    curves = np.nan_to_num(gallery.curves[rows], nan=0.0)
    labs = gallery.labels[rows]
    uniq = np.array(sorted(set(labs.tolist())), dtype=object)
    return uniq, np.stack([curves[labs == lab].mean(0) for lab in uniq])


def method_name(fcfg: FingerprintConfig) -> str:
    """Name of the curve method (the ``method`` column), e.g. ``C_T curve (1nn, alpha=0.5)`` or
    ``C_T curve + FD-to-test (1nn)`` (``method: curve_fd``)."""
    extra = f", k={fcfg.k}" if fcfg.matcher == "knn" else ""
    if fcfg.method == CURVE_FD:
        return f"C_T curve + FD-to-test ({fcfg.matcher}{extra})"
    if isinstance(fcfg.open_set_threshold, str):
        extra += f", open set {fcfg.open_set_threshold}"
    elif fcfg.open_set_threshold is not None:
        extra += f", open set < {fcfg.open_set_threshold:g}"
    return f"C_T curve ({fcfg.matcher}{extra}, alpha={fcfg.alpha:g})"


def attribute(
    queries: Gallery, gallery: Gallery, cfg: FingerprintConfig, allowed: np.ndarray | None = None
) -> pd.DataFrame:
    """Attribute each query curve to a gallery label.

    Args:
        queries: curves to attribute; their labels (may be ``None``) are reported as ``true_label``.
        gallery: labelled reference curves with the same layers.
        cfg: ``alpha``, ``matcher`` (``1nn`` | ``knn`` | ``centroid``), ``k``, ``open_set_threshold``.
        allowed: optional (q, g) boolean mask of the gallery curves each query may use (leave-one-run-out).

    Returns:
        A DataFrame with :data:`~memray.io.schema.ATTRIBUTION_SCHEMA` columns (``cfg.method`` ``auto`` resolved by
        :func:`~memray.fingerprint.fd_profile.resolve_method`; ``curve_fd`` scores are −distance, see
        :func:`_scorer`). ``score``: best similarity (1nn),
        vote share (knn) or similarity to the label's centroid (centroid); ``runner_up`` is the best other label
        and ``margin = score − runner_up's score``: a difference of two similarities, each in [−α, 1], so it lies
        in [0, 1 + α] and exceeds ``score`` whenever the runner-up's similarity is negative (its cosine with the
        query is negative, common for near-zero curves such as held-out real data). Open set: when the best
        similarity to any gallery curve (centroid: any centroid) is below ``open_set_threshold``,
        ``predicted = "unknown"``, ``runner_up`` holds the closed-set winner and
        ``margin = best similarity − threshold`` (< 0).
    """
    align_layers(queries, gallery)
    if isinstance(cfg.open_set_threshold, str):
        raise GalleryError(
            "open_set_threshold='calibrated' is resolved against a gallery first "
            "(memray.fingerprint.open_set.resolve_open_set)"
        )
    if any(lab is None or (isinstance(lab, float) and np.isnan(lab)) for lab in gallery.labels):
        raise GalleryError("every gallery curve needs a label; drop unlabelled curves or give them one")
    if allowed is None:
        allowed = np.ones((len(queries), len(gallery)), dtype=bool)
    both = queries.fd_test is not None and gallery.fd_test is not None
    cfg = resolve_method(cfg, both, "the query or gallery curves")
    sim, centroid = _scorer(queries, gallery, cfg)
    rows = []
    for qi in range(len(queries)):
        use = np.flatnonzero(allowed[qi])
        if use.size == 0:
            raise GalleryError(f"query {queries.names[qi]!r} has no gallery curve to compare with")
        if cfg.matcher == "centroid":
            labs, s = centroid(qi, use)
            pred, score, runner, rscore = decide_1nn(s, labs)
        elif cfg.matcher == "knn":
            s = sim[qi, use]
            pred, score, runner, rscore = decide_knn(s, gallery.labels[use], gallery.names[use], cfg.k)
        else:
            s = sim[qi, use]
            pred, score, runner, rscore = decide_1nn(s, gallery.labels[use])
        margin = score - rscore
        best = float(np.max(s))
        if cfg.open_set_threshold is not None and best < cfg.open_set_threshold:
            pred, runner, score, margin = UNKNOWN, pred, best, best - cfg.open_set_threshold
        rows.append((queries.names[qi], queries.labels[qi], pred, score, runner, margin))
    return attribution_frame(rows, method_name(cfg))


def _scorer(queries: Gallery, gallery: Gallery, cfg: FingerprintConfig) -> tuple[np.ndarray, Any]:
    """(q, g) scores (higher = closer) and a function ``(query row, gallery rows) → (labels, centroid scores)``.

    ``curve``: the similarity of the module docstring. ``curve_fd``: −L2 between the z-scored joint vectors
    (:func:`memray.fingerprint.fd_profile.joint_vectors`, scaled over every gallery curve).
    """
    if cfg.method != CURVE_FD:

        def curve_centroid(qi: int, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            labs, cents = label_centroids(gallery, use)
            return labs, similarity_matrix(queries.curves[qi : qi + 1], cents, cfg.alpha)[0]

        return similarity_matrix(queries.curves, gallery.curves, cfg.alpha), curve_centroid
    nq = len(queries)
    v = joint_vectors(
        np.vstack([queries.curves, gallery.curves]),
        np.vstack([queries.fd_test, gallery.fd_test]),  # type: ignore[list-item]
        np.arange(nq, nq + len(gallery)),
    )
    vq, vg = v[:nq], v[nq:]

    def joint_centroid(qi: int, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labs = gallery.labels[use]
        uniq = np.array(sorted(set(labs.tolist())), dtype=object)
        cents = np.stack([vg[use][labs == lab].mean(0) for lab in uniq])
        return uniq, -l2_matrix(vq[qi : qi + 1], cents)[0]

    return -l2_matrix(vq, vg), joint_centroid


def attribution_frame(rows: list[tuple], method: str) -> pd.DataFrame:
    """Rows ``(query, true_label, predicted, score, runner_up, margin)`` of ``method`` as a typed attribution table."""
    cols = [f.name for f in schema.ATTRIBUTION_SCHEMA]
    df = pd.DataFrame([(method, *r) for r in rows], columns=cols)
    for c in (schema.SCORE, schema.MARGIN):
        df[c] = df[c].astype(np.float64)
    return df


def attribute_by_distance(
    queries: Gallery, gallery: Gallery, dist: np.ndarray, allowed: np.ndarray, method: str = "distance 1-NN"
) -> pd.DataFrame:
    """1-NN by a precomputed distance (q, g) (baselines): score = −distance, ties as in :func:`decide_1nn`.

    ``margin`` = runner-up label's distance − the winner's (≥ 0).
    """
    rows = []
    for qi in range(len(queries)):
        use = np.flatnonzero(allowed[qi])
        if use.size == 0:
            raise GalleryError(f"query {queries.names[qi]!r} has no gallery curve to compare with")
        pred, score, runner, rscore = decide_1nn(-dist[qi, use], gallery.labels[use])
        rows.append((queries.names[qi], queries.labels[qi], pred, score, runner, score - rscore))
    return attribution_frame(rows, method)
