"""memray/fingerprint/open_set.py: an open-set threshold calibrated on the gallery by leaving one family out."""

from __future__ import annotations

import numpy as np
import pytest

from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.match import UNKNOWN, Gallery, attribute
from memray.fingerprint.open_set import best_threshold, calibrate_open_set, resolve_open_set


def _families(n_fam: int = 4, seed: int = 0) -> Gallery:
    """``n_fam`` families × 2 runs × 2 curves: each family a distinct curve shape plus small noise."""
    rng = np.random.default_rng(seed)
    shapes = [np.sin(np.arange(8) * (f + 1) / 2.0) * (1 + f) for f in range(n_fam)]
    names, labels, runs, curves = [], [], [], []
    for f, shape in enumerate(shapes):
        for r in range(2):
            for s in range(2):
                names.append(f"f{f}_r{r}#{s}")
                labels.append(f"f{f}")
                runs.append(f"f{f}_r{r}")
                curves.append(shape + rng.normal(0, 0.02, 8))
    return Gallery(np.array(names), np.array(labels), np.array(curves), tuple(range(1, 9)), np.array(runs))


def test_best_threshold_separates_and_prefers_the_lowest_on_ties() -> None:
    assert best_threshold(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == pytest.approx(0.5)
    assert best_threshold(np.array([0.5]), np.array([0.5])) < 0.5  # no separation: call nothing unknown


def test_separated_families_are_called_unknown_when_absent_and_kept_when_present() -> None:
    curves, fcfg = _families(), FingerprintConfig()
    cal = calibrate_open_set(curves, fcfg)
    assert cal is not None
    table = cal.table.set_index("family")
    assert table.index.tolist() == ["f0", "f1", "f2", "f3", "all"]
    assert table.loc["all", "absent_queries"] == 16 and table.loc["all", "present_queries"] == 16
    assert cal.rates() == (1.0, 0.0)
    resolved, record = resolve_open_set(FingerprintConfig(open_set_threshold="calibrated"), curves)
    assert (
        resolved.open_set_threshold == pytest.approx(cal.threshold) and record["open_set"]["threshold"] == cal.threshold
    )
    keep = curves.labels != "f3"  # f3 is absent from this gallery: its curves must come out unknown
    att = attribute(curves.select(~keep), curves.select(keep), resolved)
    assert (att.predicted == UNKNOWN).all()
    same = attribute(curves.select(np.arange(0, 16, 4)), curves.select(np.arange(16) % 4 >= 2), resolved)
    assert (same.predicted == same.true_label).all()


def test_a_gallery_too_small_to_calibrate_falls_back_to_a_closed_set() -> None:
    curves = _families(2)
    assert calibrate_open_set(curves, FingerprintConfig()) is None
    resolved, record = resolve_open_set(FingerprintConfig(open_set_threshold="calibrated"), curves)
    assert resolved.open_set_threshold is None and record["open_set"]["threshold"] is None
