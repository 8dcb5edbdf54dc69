"""Tests of memray.fingerprint.fd_profile: the FD-to-test profile, the joint curve_fd vectors, method rules."""

from __future__ import annotations

import numpy as np
import pytest

from memray.config import ConfigError
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.fd_profile import (
    check_gallery_method,
    joint_vectors,
    l2_matrix,
    log_fd_to_test,
    planned_method,
    profiles,
    resolve_method,
)


def _fd_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """FD between Gaussians fit to x and y, with the symmetric square root from eigh (no scipy sqrtm)."""
    m1, m2 = x.mean(0), y.mean(0)
    c1 = (x - m1).T @ (x - m1) / (len(x) - 1)
    c2 = (y - m2).T @ (y - m2) / (len(y) - 1)
    w, v = np.linalg.eigh(c1)
    r1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ1^½
    inner = np.linalg.eigvalsh(r1 @ c2 @ r1)  # tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½)
    return float((m1 - m2) @ (m1 - m2) + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_log_fd_to_test_of_a_small_case_computed_by_hand() -> None:
    """Four 2-d points against four test points, by hand: means (1, 1) and (.5, .5), covariances (4/3)·I and (1/3)·I,
    so FD = ‖Δμ‖² + Σ(√(4/3) − √(1/3))² = 1/2 + 2/3 = 7/6; then a random case against an eigh-based FD."""
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    test = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t_stats = (test.mean(0), np.cov(test, rowvar=False))
    assert log_fd_to_test(x, t_stats) == pytest.approx(np.log(7 / 6), rel=1e-9)
    rng = np.random.default_rng(0)
    feats, big_test = rng.normal(size=(60, 5)), rng.normal(size=(200, 5)) * 1.3 + 0.2
    subs = [np.arange(0, 30), np.arange(30, 60)]
    got = profiles(feats, subs, (big_test.mean(0), np.cov(big_test, rowvar=False)))
    want = [np.log(_fd_by_hand(feats[i], big_test)) for i in subs]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_joint_vectors_z_score_every_column_over_the_reference_rows() -> None:
    curves = np.array([[0.0, np.nan], [2.0, 1.0], [4.0, 3.0]])
    fd = np.array([[1.0, 1.0], [3.0, 1.0], [9.0, 5.0]])
    v = joint_vectors(curves, fd, np.array([True, True, False]))
    # reference rows 0, 1: columns (0, 2), (0, 1) [NaN → 0], (1, 3), (1, 1) → means 1, .5, 2, 1; stds 1, .5, 1, 0
    want = np.array([[-1, -1, -1, 0], [1, 1, 1, 0], [3, 5, 7, 4e12]], dtype=float)
    np.testing.assert_allclose(v, want, rtol=1e-9)
    np.testing.assert_allclose(l2_matrix(v[:2], v[:2]), [[0, np.sqrt(12)], [np.sqrt(12), 0]])


def test_method_rules_and_one_line_errors() -> None:
    assert resolve_method(FingerprintConfig(), True).method == "curve_fd"
    assert resolve_method(FingerprintConfig(), False).method == "curve"  # published curves: no features
    assert resolve_method(FingerprintConfig(open_set_threshold=0.5), True).method == "curve"
    with pytest.raises(ConfigError, match="published curves") as exc:
        resolve_method(FingerprintConfig(method="curve_fd"), False, "authors.txt")
    assert "\n" not in str(exc.value) and "fingerprint.method: curve" in str(exc.value)
    assert planned_method(FingerprintConfig()) == "curve_fd"
    assert planned_method(FingerprintConfig(), "curve") == "curve"  # a curve-only gallery decides
    assert planned_method(FingerprintConfig(method="curve"), "curve_fd") == "curve"  # refused by the check below
    check_gallery_method("auto", "curve", "g.parquet")
    check_gallery_method("curve_fd", "curve_fd", "g.parquet")
    with pytest.raises(ConfigError, match=r"g\.parquet was built with fingerprint.method=curve_fd") as exc:
        check_gallery_method("curve", "curve_fd", "g.parquet")
    assert "\n" not in str(exc.value)
