"""What every section shares: the run, the order of the generated sets, their colours, α and the thumbnails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from memray.io import schema
from memray.report.figures import colours
from memray.report.load import RunData, is_probe
from memray.report.thumbs import Thumbnails

DEFAULT_ALPHA = 0.05
SEVERITY = {schema.VERDICT_COPYING: 0, schema.VERDICT_CLOSER: 1, schema.VERDICT_NONE: 2, schema.VERDICT_UNDEFINED: 3}


@dataclass
class Context:
    """The run plus derived orderings; sections read it, never change it (except the thumbnail cache)."""

    run: RunData
    sets: list[str]  # non-probe generated sets: copying, then localized, …, each by most negative C_T
    probe_sets: list[str]
    verdict: dict[str, str]  # set → VERDICT_* ("" when verdicts.parquet is absent)
    min_ct: dict[str, tuple[float, int | None]]  # set → (most negative C_T, its layer)
    colour: dict[str, str]
    alpha: float
    max_sets: int
    copies_per_set: int
    thumbs: Thumbnails

    def layers(self) -> list[int]:
        """The run's layers (run.json, else those in ct_scores)."""
        ct = self.run.table("ct_scores")
        found = self.run.run.get("layers") or ([] if ct is None else pd.unique(ct[schema.LAYER]).tolist())
        return sorted(int(x) for x in found)


def _alpha(run: RunData) -> float:
    verdicts = run.table("verdicts")
    if verdicts is not None and verdicts[schema.ALPHA].notna().any():
        return float(verdicts[schema.ALPHA].dropna().iloc[0])
    return float((run.run.get("config") or {}).get("alpha", DEFAULT_ALPHA))


def min_ct_by_set(ct: pd.DataFrame | None) -> dict[str, tuple[float, int | None]]:
    """Set → (its most negative finite C_T, that layer); (NaN, None) when no layer has one."""
    out: dict[str, tuple[float, int | None]] = {}
    if ct is None:
        return out
    for name, d in ct.groupby(schema.GEN_SET, sort=False):
        d = d[np.isfinite(d[schema.CT].to_numpy(float))]
        if d.empty:
            out[str(name)] = (float("nan"), None)
        else:
            row = d.loc[d[schema.CT].idxmin()]
            out[str(name)] = (float(row[schema.CT]), int(row[schema.LAYER]))
    return out


def make_context(
    run: RunData, max_sets: int, copies_per_set: int, storage_options: dict[str, Any] | None = None
) -> Context:
    """Order the sets (verdict severity, then most negative C_T, then name) and assign colours."""
    verdicts = run.table("verdicts")
    verdict = {} if verdicts is None else dict(zip(verdicts[schema.GEN_SET], verdicts[schema.VERDICT], strict=True))
    mins = min_ct_by_set(run.table("ct_scores"))
    names = run.gen_sets

    def key(name: str) -> tuple[int, float, str]:
        ct = mins.get(name, (float("nan"), None))[0]
        return SEVERITY.get(verdict.get(name, ""), 2), ct if np.isfinite(ct) else np.inf, name

    sets = sorted((n for n in names if not is_probe(n)), key=key)
    probes = [n for n in names if is_probe(n)]
    return Context(
        run=run,
        sets=sets,
        probe_sets=probes,
        verdict={n: str(verdict.get(n, "")) for n in names},
        min_ct=mins,
        colour=colours(sets),
        alpha=_alpha(run),
        max_sets=max_sets,
        copies_per_set=copies_per_set,
        thumbs=Thumbnails(storage_options),
    )
