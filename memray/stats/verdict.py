"""Per-set verdicts: one family-wise test over C_T, its cells, replication and concentration; sample-size advice.

A verdict is about a generated SET. Its tests — C_T per layer, every kept cell per layer (a model that copies in
one region and underfits elsewhere can average out to an unremarkable C_T), the replication-rate and
concentration tests per layer and pixel space — form one family, Holm-corrected together at ``ct.alpha``
(:func:`verdict_table`). ``copying``: a per-image test (replication or concentration) is rejected: samples sit on
particular training images closer than held-out images do; ``closer_to_training``: only set-level tests (C_T,
cells) are: the set as a whole sits closer to the training set than held-out data, which copying below the
per-image tests' resolution does, and so does an honest generator that oversamples dense regions or collapses
onto modes; ``undefined``: no test is defined.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from memray.io import schema
from memray.stats.significance import holm

_PER_IMAGE = ("replication:", "concentration:")  # tests on samples falling on training images
_USABLE = (schema.CELL_OK, schema.CELL_FEW_GEN)  # cells that more generated samples would keep


def _with_holm(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with P_HOLM = Holm over each gen_set's P_VALUE rows (right after P_VALUE when new)."""
    if schema.P_VALUE not in df.columns:
        raise KeyError(f"table has no {schema.P_VALUE!r} column; compute the p-values first")
    p = df[schema.P_VALUE].to_numpy(dtype=np.float64)
    adj = np.full(len(df), np.nan)
    for rows in df.groupby(schema.GEN_SET, sort=False).indices.values():
        adj[rows] = holm(p[rows])
    out = df.copy()
    if schema.P_HOLM not in out.columns:
        out.insert(out.columns.get_loc(schema.P_VALUE) + 1, schema.P_HOLM, adj)
    else:
        out[schema.P_HOLM] = adj
    return out


def add_significance(ct_scores: pd.DataFrame, ct_cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add P_HOLM: C_T's p over the layers of each gen_set; cells' p over all kept cells × layers of each set.

    Both tables must hold P_VALUE (NaN for undefined C_T and for cells that are not kept, which Holm ignores).
    Returns new tables; row order is unchanged.
    """
    return _with_holm(ct_scores), _with_holm(ct_cells)


def needed_generated(test_share: np.ndarray, min_gen_per_cell: int, coverage: float = 0.9) -> int:
    """Smallest m for which the largest cells carrying ``coverage`` of the test mass expect > min_gen_per_cell each.

    ``test_share`` (cells,): test samples per cell (shares or counts; normalized here). Assumes generated samples
    spread over the cells like test samples: cell c expects ``m·p_c``; the cells are taken largest first until
    they hold ``coverage`` of the mass, and the smallest of them needs ``m·p_c > min_gen_per_cell``.
    """
    share = np.asarray(test_share, dtype=np.float64).ravel()
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must lie in (0, 1]; got {coverage}")
    total = float(share.sum())
    if len(share) == 0 or total <= 0 or np.any(share < 0):
        raise ValueError("test_share must hold non-negative values with a positive sum")
    p = np.sort(share / total)[::-1]
    cum = np.cumsum(p)
    last = min(int(np.searchsorted(cum, coverage * (1 - 1e-12), side="left")), len(p) - 1)
    pmin = float(p[last])
    m = math.floor(min_gen_per_cell / pmin) + 1
    while m > 1 and (m - 1) * pmin > min_gen_per_cell:  # guard the division's rounding
        m -= 1
    while m * pmin <= min_gen_per_cell:
        m += 1
    return int(m)


def _layer_summary(cells: pd.DataFrame, min_gen_per_cell: int, coverage: float) -> tuple[float, int | None, str]:
    """(kept test mass, needed m or None, "k of K cells kept (reasons)") of one layer's ct_cells rows."""
    n_test = cells[schema.N_TEST].to_numpy(dtype=np.float64)
    kept = cells[schema.KEPT].to_numpy(dtype=bool)
    status = cells[schema.STATUS].to_numpy(dtype=object)
    total = n_test.sum()
    mass = float(n_test[kept].sum() / total) if total > 0 else 0.0
    usable = np.isin(status, _USABLE) & (n_test > 0)
    need = needed_generated(n_test[usable], min_gen_per_cell, coverage) if usable.any() else None
    dropped = pd.Series(status[~kept]).value_counts().sort_index()
    reasons = ", ".join(f"{n} {s}" for s, n in dropped.items())
    head = f"only {int(kept.sum())} of {len(kept)} cells kept" if kept.any() else f"no cell of {len(kept)} kept"
    return mass, need, f"{head} ({reasons})"


def sample_size_advice(set_cells: pd.DataFrame, n_gen: int, min_gen_per_cell: int, coverage: float = 0.9) -> str:
    """One sentence of sample-size guidance for one generated set from its ct_cells rows (all layers).

    ``""`` when at every layer the kept cells carry at least ``coverage`` of the test mass. Otherwise the worst
    layer is described, and the generated count that would keep cells covering ``coverage`` at every layer.
    """
    layers = sorted(int(x) for x in set_cells[schema.LAYER].unique())
    summary = {
        layer: _layer_summary(set_cells[set_cells[schema.LAYER] == layer], min_gen_per_cell, coverage)
        for layer in layers
    }
    worst = min(layers, key=lambda layer: summary[layer][0])
    mass, _, head = summary[worst]
    if mass >= coverage:
        return ""
    where = f"at layer {worst}, " if len(layers) > 1 else ""
    rests = f"C_T rests on {100 * mass:.0f}% of the test mass" if mass > 0 else "C_T is undefined"
    needs = [s[1] for s in summary.values() if s[1] is not None]
    if not needs:
        return f"{where}{head}: {rests}; no cell has both test and training samples, so more images will not help"
    need, cov = max(needs), f"{100 * coverage:.0f}%"
    if need > n_gen:
        tail = (
            f"about {need} generated images would keep cells covering {cov} of the test mass "
            f"(cells need > {min_gen_per_cell} each)"
        )
    else:
        tail = (
            f"the {n_gen} generated images crowd into few cells (a set spread like the test data would need only "
            f"about {need} to keep cells covering {cov} of the test mass)"
        )
    return f"{where}{head}: {rests}; {tail}"


def family(sc: pd.DataFrame, ce: pd.DataFrame, rep: pd.DataFrame | None) -> tuple[list[str], np.ndarray]:
    """One set's tests, named, with their raw p-values: C_T per layer (``ct:L3``), every kept cell (``cell:L3:c5``),
    the replication and concentration tests per layer (``replication:L3``, ``concentration:L3``); undefined ones
    (NaN p) are left out."""
    names = [f"ct:L{int(layer)}" for layer in sc[schema.LAYER]]
    p = [sc[schema.P_VALUE].to_numpy(dtype=np.float64)]
    names += [f"cell:L{int(layer)}:c{int(c)}" for layer, c in zip(ce[schema.LAYER], ce[schema.CELL], strict=True)]
    p.append(ce[schema.P_VALUE].to_numpy(dtype=np.float64))
    if rep is not None and len(rep):
        names += [f"replication:L{int(layer)}" for layer in rep[schema.LAYER]]
        p.append(rep[schema.P_VALUE].to_numpy(dtype=np.float64))
        names += [f"concentration:L{int(layer)}" for layer in rep[schema.LAYER]]
        p.append(rep[schema.CONCENTRATION_P].to_numpy(dtype=np.float64))
    pv = np.concatenate(p)
    ok = np.isfinite(pv)
    return [n for n, keep in zip(names, ok, strict=True) if keep], pv[ok]


def _of(frame: pd.DataFrame | None, name: str, keys: list[str]) -> pd.DataFrame | None:
    if frame is None:
        return None
    return frame[frame[schema.GEN_SET] == name].sort_values(keys, kind="stable")


def verdict_table(
    ct_scores: pd.DataFrame,
    ct_cells: pd.DataFrame,
    alpha: float,
    min_gen_per_cell: int,
    coverage: float = 0.9,
    replication: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per gen_set with exactly :data:`schema.VERDICTS_SCHEMA`'s columns (tables from :func:`add_significance`).

    **One family per set at level ``alpha``**: its C_T p-values (one per layer), its kept cells' p-values (cells ×
    layers) and its replication p-values (one per layer, :mod:`memray.stats.replication`) are Holm-adjusted
    together (:func:`family`), valid under any dependence between them, so a set that does not copy is flagged at
    most ``alpha`` of the time whichever test would fire. ``verdict``: ``undefined`` if no test is defined; else
    ``copying`` if a replication or concentration test is rejected (per-image evidence);
    ``closer_to_training`` if only C_T or cells are; else ``no_evidence``. ``test``: the test with the smallest
    adjusted p (for ``copying``, among the per-image tests: the one that carried the verdict) and ``p_holm`` that p;
    ``layers``: the layers whose C_T test is
    rejected (a list); ``replication_layers``: the layers (−1: pixel space) whose replication or concentration test
    is; ``flagged_cells``: rejected cells (``["L3:c5", "L4:c5"]``); ``n_tests``: the family's size; ``advice``:
    :func:`sample_size_advice`.
    """
    rows = []
    for name in sorted(ct_scores[schema.GEN_SET].unique()):
        sc = _of(ct_scores, name, [schema.LAYER])
        ce = _of(ct_cells, name, [schema.LAYER, schema.CELL])
        rep = _of(replication, name, [schema.LAYER])
        tests, p = family(sc, ce, rep)
        adj = holm(p) if len(p) else p
        hit = [t for t, a in zip(tests, adj, strict=True) if a < alpha]
        best = int(np.argmin(adj)) if len(adj) else -1
        layers = [int(t.removeprefix("ct:L")) for t in hit if t.startswith("ct:")]
        rep_layers = sorted({int(t.split(":L")[1]) for t in hit if t.startswith(_PER_IMAGE)})
        cells = [t.removeprefix("cell:") for t in hit if t.startswith("cell:")]
        n_gen = int(sc[schema.N_GEN].iloc[0])
        if best < 0:
            verdict = schema.VERDICT_UNDEFINED
        elif rep_layers:
            verdict = schema.VERDICT_COPYING
        elif layers or cells:
            verdict = schema.VERDICT_CLOSER
        else:
            verdict = schema.VERDICT_NONE
        if verdict == schema.VERDICT_COPYING:  # the test that carried it: the smallest p among its kind
            best = min((i for i, t in enumerate(tests) if t.startswith(_PER_IMAGE)), key=lambda i: adj[i])
        advice = sample_size_advice(ce, n_gen, min_gen_per_cell, coverage) if len(ce) else ""
        rows.append((name, verdict, float(alpha), float(adj[best]) if best >= 0 else math.nan,
                     tests[best] if best >= 0 else "", len(tests), layers, rep_layers, bool(cells), cells, n_gen,
                     advice))  # fmt: skip
    out = pd.DataFrame(rows, columns=schema.VERDICTS_SCHEMA.names)
    return out.astype({schema.ALPHA: np.float64, schema.P_HOLM: np.float64, schema.LOCALIZED: bool,
                       schema.N_GEN: np.int64, schema.N_TESTS: np.int64})  # fmt: skip
