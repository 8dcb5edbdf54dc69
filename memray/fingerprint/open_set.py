"""Open-set attribution calibrated on the gallery itself, by leaving one family out.

A query from a family absent from the gallery should come out ``unknown``: its best similarity to the gallery
(to any curve; ``centroid``: to any label's mean curve) is below ``open_set_threshold``. The threshold is chosen
from the gallery's own labelled runs:

- *absent* score of a curve: its best similarity to the curves of the **other** families (as if its family were
  not in the gallery);
- *present* score: its best similarity to the curves of the other runs (its own family still there; only for
  families with ≥ 2 runs).

The threshold maximizes ``share of absent scores below it + share of present scores at or above it`` (ties:
the lowest such threshold, placed midway between neighbouring scores). The rates reported are honest: the
threshold applied to a family's curves is calibrated **without** that family (one threshold per left-out family);
the threshold used for attribution is calibrated on every family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.match import Gallery, label_centroids, similarity_matrix

log = logging.getLogger(__name__)

FAMILY = "family"
OPEN_SET_COLUMNS = (FAMILY, "threshold", "absent_queries", "absent_unknown", "present_queries", "present_unknown")
ALL = "all"  # the pooled row of the open-set table


@dataclass(frozen=True)
class OpenSetCalibration:
    """``threshold``: calibrated on every family; ``table``: :data:`OPEN_SET_COLUMNS`, one row per left-out
    family (its own threshold, calibrated without it) and a last ``all`` row (the calibrated threshold, pooled
    held-out counts). ``absent_unknown`` / ``present_unknown`` count queries called ``unknown``."""

    threshold: float
    table: pd.DataFrame

    def rates(self) -> tuple[float, float]:
        """(share of absent-family queries called unknown, share of present-family queries wrongly unknown)."""
        r = self.table.iloc[-1]
        return r["absent_unknown"] / max(r["absent_queries"], 1), r["present_unknown"] / max(r["present_queries"], 1)


def best_similarity(curves: Gallery, mask: np.ndarray, fcfg: FingerprintConfig) -> np.ndarray:
    """Best similarity (g,) of each curve to the curves ``mask[i]`` allows (``centroid``: to their label means);
    NaN where the mask allows none."""
    sim = similarity_matrix(curves.curves, curves.curves, fcfg.alpha)
    out = np.full(len(curves), np.nan)
    for i in range(len(curves)):
        use = np.flatnonzero(mask[i])
        if use.size == 0:
            continue
        if fcfg.matcher == "centroid":
            _, cents = label_centroids(curves, use)
            out[i] = float(similarity_matrix(curves.curves[i : i + 1], cents, fcfg.alpha).max())
        else:
            out[i] = float(sim[i, use].max())
    return out


def best_threshold(absent: np.ndarray, present: np.ndarray) -> float:
    """The threshold t maximizing ``mean(absent < t) + mean(present ≥ t)`` (lowest on ties, midway between
    scores); needs at least one score of each kind."""
    absent, present = np.asarray(absent, float), np.asarray(present, float)
    if absent.size == 0 or present.size == 0:
        raise ValueError("open-set calibration needs absent-family and present-family scores")
    s = np.unique(np.concatenate([absent, present]))
    cands = np.concatenate([[s[0] - 1e-9], (s[:-1] + s[1:]) / 2.0, [s[-1] + 1e-9]])
    gain = (absent[None, :] < cands[:, None]).mean(1) + (present[None, :] >= cands[:, None]).mean(1)
    return float(cands[int(np.argmax(gain))])


def calibrate_open_set(curves: Gallery, fcfg: FingerprintConfig) -> OpenSetCalibration | None:
    """Calibrate the open-set threshold on labelled ``curves`` by leaving one family out (module docstring).

    Returns ``None`` (logged) when the gallery cannot calibrate: fewer than 3 families, or no family with 2 runs.
    """
    labels = np.asarray(curves.labels, dtype=object).astype(str)
    fams = sorted(set(labels.tolist()))
    runs = np.asarray(curves.runs, dtype=object)
    absent = best_similarity(curves, labels[:, None] != labels[None, :], fcfg)
    present = best_similarity(curves, runs[:, None] != runs[None, :], fcfg)
    has_family = np.array([(labels[runs != runs[i]] == labels[i]).any() for i in range(len(curves))])
    present[~has_family] = np.nan  # its family has no other run: it is never "present"
    if len(fams) < 3 or not has_family.any():
        log.info("open-set calibration skipped: needs >= 3 families and one family with >= 2 runs")
        return None
    rows = []
    for fam in fams:
        rest = labels != fam
        a_rest, p_rest = absent[rest], present[rest & has_family]
        if p_rest.size == 0:
            log.info("open-set calibration skipped: without family %r no family has two runs", fam)
            return None
        t = best_threshold(a_rest, p_rest)
        mine, mine_p = absent[~rest], present[~rest & has_family]
        rows.append((fam, t, mine.size, int((mine < t).sum()), mine_p.size, int((mine_p < t).sum())))
    table = pd.DataFrame(rows, columns=list(OPEN_SET_COLUMNS))
    threshold = best_threshold(absent, present[has_family])
    pooled = (ALL, threshold, *table[list(OPEN_SET_COLUMNS[2:])].sum().astype(int).tolist())
    table = pd.concat([table, pd.DataFrame([pooled], columns=list(OPEN_SET_COLUMNS))], ignore_index=True)
    return OpenSetCalibration(threshold, table)


def open_set_sentence(cal: OpenSetCalibration) -> str:
    """One sentence on the calibrated open set: its threshold and the held-out rates."""
    r = cal.table.iloc[-1]
    return (
        f"Open set, calibrated by leaving one family out: threshold {cal.threshold:.3f}; queries of a family absent "
        f"from the gallery called unknown {int(r['absent_unknown'])}/{int(r['absent_queries'])}, queries of a present "
        f"family wrongly called unknown {int(r['present_unknown'])}/{int(r['present_queries'])}."
    )


def resolve_open_set(fcfg: FingerprintConfig, gallery: Gallery) -> tuple[FingerprintConfig, dict[str, Any]]:
    """``fcfg`` with ``open_set_threshold="calibrated"`` replaced by the threshold calibrated on ``gallery``, and a
    record for the output's metadata; a gallery that cannot calibrate gives a closed set (logged, recorded)."""
    if fcfg.open_set_threshold != "calibrated":
        return fcfg, {}
    cal = calibrate_open_set(gallery, fcfg)
    if cal is None:
        why = "the gallery cannot calibrate an open set (needs >= 3 families and one family with >= 2 runs)"
        log.warning("fingerprint.open_set_threshold=calibrated: %s; attributing as a closed set", why)
        return replace(fcfg, open_set_threshold=None), {"open_set": {"threshold": None, "why": why}}
    absent, present = cal.rates()
    record = {"threshold": cal.threshold, "absent_unknown_rate": absent, "present_unknown_rate": present}
    return replace(fcfg, open_set_threshold=cal.threshold), {"open_set": record}
