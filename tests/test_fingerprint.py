"""Curve similarity and attribution against hand-computed cases (numbers worked out in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import memray.fingerprint.match as fp
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.match import (
    UNKNOWN,
    Gallery,
    GalleryError,
    attribute,
    attribute_by_distance,
    decide_1nn,
    decide_knn,
    similarity,
    similarity_matrix,
)

SQ2 = math.sqrt(2.0)


def _g(curves: list[list[float]], labels: list[str | None], names: list[str] | None = None) -> Gallery:
    names = names or [f"c{i}" for i in range(len(curves))]
    return Gallery(np.array(names, dtype=object), np.array(labels, dtype=object), np.array(curves, float),
                   tuple(range(1, len(curves[0]) + 1)))  # fmt: skip


def test_similarity_hand_computed() -> None:
    # orthogonal unit vectors: cos 0, L2 √2 → 0.5·0 + 0.5/(1 + √2) = 0.2071067811865476
    assert similarity([1, 0], [0, 1]) == pytest.approx(0.2071067811865476, abs=1e-15)
    # parallel: cos 1, ‖(1,2,2) − (2,4,4)‖ = 3 → 0.5 + 0.5/4 = 0.625
    assert similarity([1, 2, 2], [2, 4, 4]) == pytest.approx(0.625, abs=1e-15)
    # α = 1: cosine only; α = 0: 1/(1 + L2) only
    assert similarity([1, 2, 2], [2, 4, 4], alpha=1.0) == pytest.approx(1.0)
    assert similarity([1, 2, 2], [2, 4, 4], alpha=0.0) == pytest.approx(0.25)
    # anti-parallel, α = 0.5: −0.5 + 0.5/(1 + 2) = −1/3
    assert similarity([1, 0], [-1, 0]) == pytest.approx(-1.0 / 3.0)


def test_similarity_nan_and_zero_vector() -> None:
    # NaN → 0 first: (1, NaN) becomes (1, 0) = the other curve → cos 1, L2 0 → 1.0
    assert similarity([1, np.nan], [1, 0]) == pytest.approx(1.0)
    # a zero curve has cos 0 by definition; ‖(3, 4)‖ = 5 → 0.5/(1 + 5) = 1/12
    assert similarity([0, 0], [3, 4]) == pytest.approx(1.0 / 12.0)
    assert similarity([np.nan, np.nan], [0, 0]) == pytest.approx(0.5)  # both zero: cos 0, L2 0 → 0.5


def test_similarity_matrix_matches_pairwise_loop() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 12)), rng.normal(size=(7, 12))
    a[1, 3] = np.nan
    for alpha in (0.0, 0.3, 1.0):
        got = similarity_matrix(a, b, alpha)
        for i in range(5):
            for j in range(7):
                x, y = np.nan_to_num(a[i]), b[j]
                cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
                ref = alpha * cos + (1 - alpha) / (1 + np.sqrt(((x - y) ** 2).sum()))
                assert got[i, j] == pytest.approx(ref, abs=1e-12)


def test_1nn_hand_computed() -> None:
    gallery = _g([[1, 0], [0, 1], [2, 2]], ["A", "B", "B"], ["a1", "b1", "b2"])
    query = _g([[1, 1]], ["B"], ["q"])
    # vs a1 and b1: cos 1/√2, L2 1 → 0.5/√2 + 0.25 = 0.6035533905932737
    # vs b2: cos 1, L2 √2 → 0.5 + 0.5/(1 + √2) = 0.7071067811865476 → B wins, runner-up A
    row = attribute(query, gallery, FingerprintConfig()).iloc[0]
    assert (row.query, row.true_label, row.predicted, row.runner_up) == ("q", "B", "B", "A")
    assert row.score == pytest.approx(0.7071067811865476)
    assert row.margin == pytest.approx(0.7071067811865476 - 0.6035533905932737)


def test_ties_break_to_smallest_label_in_any_order() -> None:
    # query (1, 1) is equally similar (0.60355…) to (1, 0) and (0, 1): the smaller label wins, margin 0
    curves, labels = [[1, 0], [0, 1]], ["zeta", "alpha"]
    query = _g([[1, 1]], [None], ["q"])
    for order in ([0, 1], [1, 0]):
        gallery = _g([curves[i] for i in order], [labels[i] for i in order], [f"n{i}" for i in order])
        row = attribute(query, gallery, FingerprintConfig()).iloc[0]
        assert (row.predicted, row.runner_up, row.margin) == ("alpha", "zeta", 0.0)
        assert row.true_label is None


def test_open_set_threshold() -> None:
    gallery = _g([[1, 0], [0, 1]], ["zeta", "alpha"])
    query = _g([[1, 1]], [None], ["q"])
    best = 0.5 / SQ2 + 0.25  # 0.6035533905932737
    rejected = attribute(query, gallery, FingerprintConfig(open_set_threshold=0.65)).iloc[0]
    assert rejected.predicted == UNKNOWN and rejected.runner_up == "alpha"
    assert rejected.score == pytest.approx(best) and rejected.margin == pytest.approx(best - 0.65)
    accepted = attribute(query, gallery, FingerprintConfig(open_set_threshold=0.60)).iloc[0]
    assert accepted.predicted == "alpha"


def test_knn_majority_vote_beats_nearest() -> None:
    # query (1, 0): a1 = (1, 0) → 1.0; b1 = (1, 0.2) and b2 = (1, −0.2) → 0.5/√1.04 + 0.5/1.2 = 0.9069571…;
    # c1 = (−1, 0) → −1/3. k = 3 → votes B 2, A 1: B (score 2/3, runner-up A 1/3); 1-NN says A.
    gallery = _g([[1, 0], [1, 0.2], [1, -0.2], [-1, 0]], ["A", "B", "B", "C"], ["a1", "b1", "b2", "c1"])
    query = _g([[1, 0]], ["B"], ["q"])
    knn = attribute(query, gallery, FingerprintConfig(matcher="knn", k=3)).iloc[0]
    assert (knn.predicted, knn.runner_up) == ("B", "A")
    assert knn.score == pytest.approx(2 / 3) and knn.margin == pytest.approx(1 / 3)
    assert attribute(query, gallery, FingerprintConfig(matcher="1nn")).iloc[0].predicted == "A"


def test_knn_vote_tie_broken_by_summed_similarity_not_name() -> None:
    # k = 2: one vote each. "zz" (1, 0.2) → 0.9069571, "aa" (1, 0.3) → 0.5/√1.09 + 0.5/1.3 = 0.8635284…
    # the larger summed similarity wins although "aa" sorts first
    gallery = _g([[1, 0.2], [1, 0.3]], ["zz", "aa"])
    query = _g([[1, 0]], [None], ["q"])
    row = attribute(query, gallery, FingerprintConfig(matcher="knn", k=2)).iloc[0]
    assert (row.predicted, row.runner_up, row.score, row.margin) == ("zz", "aa", 0.5, 0.0)


def test_centroid_differs_from_1nn() -> None:
    # query (1, 0). A = {(1, 0.1), (5, 5)}, B = {(1.3, 0), (1.4, 0)}.
    # 1-NN: (1, 0.1) → 0.5·0.9950372 + 0.5/1.1 = 0.9520641 > (1.3, 0) → 0.5 + 0.5/1.3 = 0.8846154 → A.
    # centroids: A (3, 2.55) → 0.5·3/√15.5025 + 0.5/(1 + √10.5025) = 0.4988729; B (1.35, 0) → 0.5 + 0.5/1.35
    gallery = _g([[1, 0.1], [5, 5], [1.3, 0], [1.4, 0]], ["A", "A", "B", "B"])
    query = _g([[1, 0]], ["B"], ["q"])
    assert attribute(query, gallery, FingerprintConfig()).iloc[0].predicted == "A"
    row = attribute(query, gallery, FingerprintConfig(matcher="centroid")).iloc[0]
    assert (row.predicted, row.runner_up) == ("B", "A")
    assert row.score == pytest.approx(0.5 + 0.5 / 1.35)
    assert row.margin == pytest.approx(0.5 + 0.5 / 1.35 - (1.5 / math.sqrt(15.5025) + 0.5 / (1 + math.sqrt(10.5025))))


def test_allowed_mask_and_distance_baseline() -> None:
    gallery = _g([[0.0], [1.0], [3.0]], ["A", "B", "C"])
    query = _g([[0.9]], ["B"], ["q"])
    dist = np.abs(np.array([[0.9 - 0.0, 0.9 - 1.0, 0.9 - 3.0]]))
    row = attribute_by_distance(query, gallery, dist, np.array([[True, True, True]])).iloc[0]
    assert (row.predicted, row.runner_up) == ("B", "A")
    assert row.score == pytest.approx(-0.1) and row.margin == pytest.approx(-0.1 + 0.9)
    masked = attribute_by_distance(query, gallery, dist, np.array([[True, False, True]])).iloc[0]
    assert masked.predicted == "A" and masked.runner_up == "C"
    alone = attribute(query, gallery, FingerprintConfig(), allowed=np.array([[False, False, True]])).iloc[0]
    assert alone.predicted == "C" and alone.runner_up is None and math.isnan(alone.margin)


def test_gallery_errors() -> None:
    with pytest.raises(GalleryError, match="layer mismatch"):
        attribute(_g([[1, 2, 3]], ["A"]), _g([[1, 2]], ["A"]), FingerprintConfig())
    with pytest.raises(GalleryError, match="duplicate curve names"):
        _g([[1], [2]], ["A", "B"], ["x", "x"])
    with pytest.raises(GalleryError, match="needs a label"):
        attribute(_g([[1]], ["A"]), _g([[1]], [None]), FingerprintConfig())
    with pytest.raises(GalleryError, match="strictly increasing"):
        Gallery(np.array(["a"], dtype=object), np.array(["A"], dtype=object), np.zeros((1, 2)), (3, 1))


def test_single_layer_view() -> None:
    g = Gallery(np.array(["a", "b"], dtype=object), np.array(["A", "B"], dtype=object),
                np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), (2, 5, 9))  # fmt: skip
    one = g.layer(5)
    assert one.layers == (5,) and one.curves[:, 0].tolist() == [2.0, 5.0]
    assert g.select(np.array([1])).names.tolist() == ["b"]


def _brute_1nn(scores: list[float], labels: list[str]) -> tuple:
    best: dict[str, float] = {}
    for s, lab in zip(scores, labels, strict=True):
        best[lab] = max(best.get(lab, -np.inf), s)
    order = sorted(best, key=lambda lab: (-best[lab], lab))
    return order[0], best[order[0]], (order[1] if len(order) > 1 else None)


def _brute_knn(scores: list[float], labels: list[str], names: list[str], k: int) -> tuple:
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i], names[i]))
    top = ranked[:k]
    key = {}
    for lab in set(labels):
        mine = [i for i in top if labels[i] == lab]
        key[lab] = (
            len(mine),
            sum(scores[i] for i in mine),
            max(s for s, x in zip(scores, labels, strict=True) if x == lab),
        )
    order = sorted(key, key=lambda lab: (-key[lab][0], -key[lab][1], -key[lab][2], lab))
    return order[0], key[order[0]][0] / len(top), (order[1] if len(order) > 1 else None)


def test_decisions_match_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        g = int(rng.integers(1, 9))
        scores = rng.integers(0, 4, g).astype(float).tolist()  # few distinct values: many exact ties
        labels = [str(x) for x in rng.choice(["b", "a", "c", "aa"], g)]
        names = [f"n{x}" for x in rng.permutation(g)]
        pred, score, runner, _ = decide_1nn(np.array(scores), np.array(labels, dtype=object))
        assert (pred, score, runner) == _brute_1nn(scores, labels)
        k = int(rng.integers(1, 5))
        pred, share, runner, _ = decide_knn(np.array(scores), np.array(labels, dtype=object), np.array(names), k)
        assert (pred, share, runner) == _brute_knn(scores, labels, names, k)


def test_similarity_matrix_chunking_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(23, 12)), rng.normal(size=(9, 12))
    whole = similarity_matrix(a, b)
    monkeypatch.setattr(fp, "_PAIR_CHUNK", 50)  # < one row of pairs: one query row per chunk
    assert np.array_equal(similarity_matrix(a, b), whole)
    monkeypatch.setattr(fp, "_PAIR_CHUNK", 500)
    assert np.array_equal(similarity_matrix(a, b), whole)
