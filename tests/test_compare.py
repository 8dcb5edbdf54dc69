"""memray/fingerprint/compare.py: intervals that resample runs, paired comparisons, the one-sentence verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memray.fingerprint.compare import RunBootstrap, compare_methods, mcnemar_exact, winner_sentence
from memray.fingerprint.evaluate import wilson_interval


def test_each_draw_pools_the_queries_of_the_runs_it_drew() -> None:
    runs = np.array(["b", "b", "a", "a", "a", "c"], dtype=object)  # unsorted on purpose
    correct = np.array([1, 0, 1, 1, 1, 0], dtype=bool)
    boot = RunBootstrap.draw(runs, n_boot=50, seed=3)
    assert boot.runs.tolist() == ["a", "b", "c"] and (boot.weights.sum(1) == 3).all()
    hits, total = {"a": 3, "b": 1, "c": 0}, {"a": 3, "b": 2, "c": 1}
    for w, acc in zip(boot.weights, boot.accuracies(runs, correct), strict=True):
        want = sum(w[i] * hits[r] for i, r in enumerate("abc")) / sum(w[i] * total[r] for i, r in enumerate("abc"))
        assert acc == pytest.approx(want)
    again = RunBootstrap.draw(runs[::-1], n_boot=50, seed=3)  # the draws do not depend on query order
    assert (again.weights == boot.weights).all()


def test_runs_resampled_interval_is_wider_than_wilson_when_runs_cluster() -> None:
    """Two runs of 20 queries, one all right and one all wrong: Wilson treats 40 independent queries (narrow);
    resampling runs sees 2 (a draw of the same run twice gives 0 or 1)."""
    runs = np.repeat(np.array(["r1", "r2"], dtype=object), 20)
    correct = np.repeat([True, False], 20)
    lo, hi = RunBootstrap.draw(runs, 2000, 0).interval(runs, correct)
    wlo, whi = wilson_interval(20, 40)
    assert (lo, hi) == (0.0, 1.0) and 0.3 < wlo < whi < 0.7


def test_exact_mcnemar_on_discordant_pairs() -> None:
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert mcnemar_exact(a, b) == (6, 0, pytest.approx(2 * 0.5**6))  # two-sided binomial(6, 0.5) tail
    assert mcnemar_exact(b, b)[2] == 1.0


def _rows() -> pd.DataFrame:
    queries = [f"run{i}#{s}" for i in range(6) for s in range(2)]
    curve = [q < "run3" for q in queries]  # right on runs 0-2 only
    fid = [True] * len(queries)
    return pd.DataFrame(
        {
            "method": ["curve"] * 12 + ["FID-nearest (layer 8)"] * 12,
            "query": queries * 2,
            "correct": curve + fid,
        }
    )


def test_comparison_and_sentence_name_the_winner_and_the_margin() -> None:
    rows = _rows()
    runs = {q: q.split("#")[0] for q in rows["query"]}
    boot = RunBootstrap.draw(np.array(list(runs.values()), dtype=object), 2000, 0)
    comp = compare_methods(rows, "curve", boot, runs)
    r = comp.iloc[0]
    assert (r["method"], r["only_method"], r["only_reference"]) == ("FID-nearest (layer 8)", 6, 0)
    assert r["diff"] == pytest.approx(0.5) and 0 < r["diff_low"] <= 0.5 <= r["diff_high"] <= 1
    summary = pd.DataFrame(
        {"method": ["curve", "FID-nearest (layer 8)"], "correct": [6, 12], "total": [12, 12], "accuracy": [0.5, 1.0]}
    )
    text = winner_sentence(summary, comp)
    assert text.startswith("On this gallery FID-nearest (layer 8) attributes best: 12/12")
    assert "+0.50" in text and "6/12" in text and "McNemar p = 0.031" in text
    flipped = summary.assign(correct=[12, 6], accuracy=[1.0, 0.5])
    assert winner_sentence(flipped, None).startswith("On this gallery the paper's C_T curve attributes best: 12/12")
