"""Accuracy intervals that resample runs, paired comparisons of two methods, and the one-sentence verdict.

Queries from one generated run are not independent (a run gives several subset curves, all matched against the
same gallery), so intervals resample **runs** (a cluster bootstrap): each of ``n_boot`` seeded draws takes R runs
with replacement from the R query runs and pools their queries; the accuracy interval is the 2.5/97.5 percentile
of the pooled accuracy. Two methods are compared on the same draws (paired): the interval of the accuracy
difference, beside the exact McNemar test on the discordant queries (two-sided binomial p of ``b`` vs ``c``, the
queries only one method gets right), which treats queries as independent and is the optimistic one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

METHOD = "method"
REFERENCE = "reference"
COMPARISON_COLUMNS = (
    METHOD,
    REFERENCE,
    "accuracy",
    "reference_accuracy",
    "diff",
    "diff_low",
    "diff_high",
    "only_method",  # queries this method gets right and the reference does not (McNemar's b)
    "only_reference",  # queries the reference gets right and this method does not (c)
    "p_mcnemar",
)


@dataclass(frozen=True)
class RunBootstrap:
    """Seeded cluster-bootstrap draws over runs: ``weights`` (n_boot, R) = times each run is drawn."""

    runs: np.ndarray  # (R,) run names, sorted
    weights: np.ndarray  # (n_boot, R) int
    seed: int

    @classmethod
    def draw(cls, runs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> RunBootstrap:
        """``n_boot`` draws of R runs with replacement (``default_rng(seed)``); runs sorted first, so the draws
        do not depend on the order of the queries."""
        uniq = np.array(sorted(set(np.asarray(runs, dtype=object).tolist())), dtype=object)
        picks = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
        weights = np.zeros((n_boot, len(uniq)), dtype=np.int64)
        np.add.at(weights, (np.arange(n_boot)[:, None], picks), 1)
        return cls(uniq, weights, seed)

    def accuracies(self, query_runs: np.ndarray, correct: np.ndarray) -> np.ndarray:
        """Pooled accuracy (n_boot,) of each draw: Σ_runs w·correct / Σ_runs w·queries."""
        idx = np.searchsorted(self.runs, np.asarray(query_runs, dtype=object))
        hits = np.bincount(idx, weights=np.asarray(correct, dtype=np.float64), minlength=len(self.runs))
        total = np.bincount(idx, minlength=len(self.runs)).astype(np.float64)
        return (self.weights @ hits) / (self.weights @ total)

    def interval(self, query_runs: np.ndarray, correct: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the pooled accuracy."""
        return _percentiles(self.accuracies(query_runs, correct), confidence)

    def diff_interval(
        self, query_runs: np.ndarray, a: np.ndarray, b: np.ndarray, confidence: float = 0.95
    ) -> tuple[float, float]:
        """Percentile interval of accuracy(a) − accuracy(b) on the same draws (paired)."""
        d = self.accuracies(query_runs, a) - self.accuracies(query_runs, b)
        return _percentiles(d, confidence)


def _percentiles(x: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(x, [tail, 100.0 - tail])
    return float(lo), float(hi)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(only_a, only_b, two-sided exact p) over paired 0/1 outcomes; p = 1 without discordant pairs."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    return only_a, only_b, (1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue))


def compare_methods(rows: pd.DataFrame, reference: str, boot: RunBootstrap, runs_of: dict[str, str]) -> pd.DataFrame:
    """Every other method of ``rows`` (``method, query, correct``) against ``reference`` on the same queries.

    ``runs_of``: query name → its run. Returns :data:`COMPARISON_COLUMNS`, one row per other method.
    """
    ref = rows[rows[METHOD] == reference].set_index("query")["correct"]
    q_runs = np.array([runs_of[q] for q in ref.index], dtype=object)
    out = []
    for name, grp in rows.groupby(METHOD, sort=False):
        if name == reference:
            continue
        mine = grp.set_index("query")["correct"].reindex(ref.index).to_numpy(bool)
        r = ref.to_numpy(bool)
        lo, hi = boot.diff_interval(q_runs, mine, r)
        b, c, p = mcnemar_exact(mine, r)
        out.append((name, reference, mine.mean(), r.mean(), mine.mean() - r.mean(), lo, hi, b, c, p))
    return pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))


def winner_sentence(summary: pd.DataFrame, comparison: pd.DataFrame | None) -> str:
    """One sentence: which method attributes best on this gallery and by how much over the paper's curve.

    ``summary``: the accuracy table (``method, correct, total, accuracy`` …; first row = the curve method);
    ``comparison``: :func:`compare_methods` against that curve method (``None``: no interval is quoted).
    """
    curve = summary.iloc[0]
    best = summary.sort_values("accuracy", ascending=False, kind="stable").iloc[0]
    frac = f"{int(curve['correct'])}/{int(curve['total'])}"
    if best[METHOD] == curve[METHOD]:
        second = summary.iloc[1:].sort_values("accuracy", ascending=False, kind="stable")
        if second.empty:
            return f"Only the C_T curve was evaluated: {frac} correct."
        other = second.iloc[0]
        row = _row(comparison, other[METHOD])
        return (
            f"On this gallery the paper's C_T curve attributes best: {frac} correct ({curve['accuracy']:.2f}), "
            f"ahead of {other[METHOD]} ({other['accuracy']:.2f}) by {curve['accuracy'] - other['accuracy']:+.2f}"
            + (_interval_words(row, sign=-1.0) if row is not None else "")
            + "."
        )
    row = _row(comparison, best[METHOD])
    return (
        f"On this gallery {best[METHOD]} attributes best: {int(best['correct'])}/{int(best['total'])} correct "
        f"({best['accuracy']:.2f}) against the paper's C_T curve's {frac} ({curve['accuracy']:.2f}), "
        f"{best['accuracy'] - curve['accuracy']:+.2f}" + (_interval_words(row, 1.0) if row is not None else "") + "."
    )


def _row(comparison: pd.DataFrame | None, method: str) -> pd.Series | None:
    if comparison is None or comparison.empty:
        return None
    hit = comparison[comparison[METHOD] == method]
    return None if hit.empty else hit.iloc[0]


def _interval_words(row: pd.Series, sign: float) -> str:
    lo, hi = sorted((sign * row["diff_low"], sign * row["diff_high"]))
    settled = "" if lo > 0 or hi < 0 else "; the interval includes 0, so this gallery does not separate them"
    return (
        f" (95% interval over resampled runs [{lo:+.2f}, {hi:+.2f}], exact McNemar p = {row['p_mcnemar']:.2g}{settled})"
    )
