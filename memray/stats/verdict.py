"""Per-set verdicts from the C_T tables: Holm-corrected copying, localized copying, and sample-size advice.

A verdict is about a generated SET (C_T is a set-level test, not a per-image detector). ``copying``: C_T is
significantly negative at some layer after Holm's correction over the set's layers; ``localized_copying``: it
is not, but some cell is, after Holm over the set's kept cells × layers (a model that copies in one region and
underfits elsewhere can average out to an unremarkable C_T); ``undefined``: no layer kept a cell.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from memray.io import schema
from memray.stats.significance import holm

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


def verdict_table(
    ct_scores: pd.DataFrame, ct_cells: pd.DataFrame, alpha: float, min_gen_per_cell: int, coverage: float = 0.9
) -> pd.DataFrame:
    """One row per gen_set with exactly :data:`schema.VERDICTS_SCHEMA`'s columns (tables from :func:`add_significance`).

    ``verdict``: ``undefined`` if no layer has a defined C_T; else ``copying`` if the smallest Holm-adjusted C_T
    p is below ``alpha``; else ``localized_copying`` if some cell's Holm p is; else ``no_evidence``.
    ``layers``: the layers with Holm C_T p < alpha ("1,2,3"); ``flagged_cells``: cells with Holm p < alpha
    ("L3:c5,L4:c5"), listed whatever the verdict; ``advice``: :func:`sample_size_advice`.
    """
    rows = []
    for name in sorted(ct_scores[schema.GEN_SET].unique()):
        sc = ct_scores[ct_scores[schema.GEN_SET] == name].sort_values(schema.LAYER, kind="stable")
        ce = ct_cells[ct_cells[schema.GEN_SET] == name].sort_values([schema.LAYER, schema.CELL], kind="stable")
        p = sc[schema.P_HOLM].to_numpy(dtype=np.float64)
        p_min = float(np.nanmin(p)) if np.isfinite(p).any() else math.nan
        sig_layers = sc[schema.LAYER].to_numpy()[p < alpha]
        flagged = ce[ce[schema.P_HOLM].to_numpy(dtype=np.float64) < alpha]
        pairs = zip(flagged[schema.LAYER], flagged[schema.CELL], strict=True)
        cells = ",".join(f"L{int(layer)}:c{int(cell)}" for layer, cell in pairs)
        n_gen = int(sc[schema.N_GEN].iloc[0])
        if not np.isfinite(sc[schema.CT].to_numpy(dtype=np.float64)).any():
            verdict = schema.VERDICT_UNDEFINED
        elif p_min < alpha:
            verdict = schema.VERDICT_COPYING
        elif len(flagged):
            verdict = schema.VERDICT_LOCALIZED
        else:
            verdict = schema.VERDICT_NONE
        advice = sample_size_advice(ce, n_gen, min_gen_per_cell, coverage) if len(ce) else ""
        rows.append((name, verdict, float(alpha), p_min, ",".join(str(int(x)) for x in sig_layers),
                     bool(len(flagged)), cells, n_gen, advice))  # fmt: skip
    out = pd.DataFrame(rows, columns=schema.VERDICTS_SCHEMA.names)
    return out.astype({schema.ALPHA: np.float64, schema.P_HOLM: np.float64, schema.LOCALIZED: bool,
                       schema.N_GEN: np.int64})  # fmt: skip
