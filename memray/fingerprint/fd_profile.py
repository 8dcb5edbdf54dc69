"""The FD-to-test profile and the ``curve_fd`` fingerprint (``fingerprint.method``).

FD-to-test profile of a curve: per layer ℓ, ``log FD(subset's features at ℓ, test set's features at ℓ)`` (the
Fréchet distance of :mod:`memray.fingerprint.fid`), shape ``(L,)``: like C_T, a fingerprint measured relative to
real held-out data. ``curve_fd`` joins a curve's C_T values (NaN → 0) and its profile into one vector (2L,), z-scores
every column by the mean and standard deviation (ddof 0) of the reference curves (the gallery), and compares two
curves by the L2 distance of their vectors. ``curve`` is the paper's C_T-curve similarity alone.

Methods: ``curve`` needs only C_T values (published curves, text files); ``curve_fd`` needs features, so curves
without a profile cannot use it. ``auto`` = ``curve_fd`` when every curve involved carries a profile and no
open-set threshold is set (the threshold is a curve similarity), else ``curve``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from memray.config import ConfigError
from memray.fingerprint.config import FingerprintConfig
from memray.fingerprint.fid import feature_stats, frechet_distance

CURVE = "curve"
CURVE_FD = "curve_fd"
METHODS: tuple[str, ...] = (CURVE, CURVE_FD)
FD_TEST = "fd_test"  # column of curve tables: the curve's log FD to the test set at that layer
_EPS = 1e-12


def log_fd(stats: tuple[np.ndarray, np.ndarray], test_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """``log FD`` between two ``(mu, sigma)`` statistics (a subset's and the test set's); FD floored at 1e-12."""
    return float(np.log(max(frechet_distance(*stats, *test_stats), _EPS)))


def log_fd_to_test(x: np.ndarray, test_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """``log FD(x, test)`` of one subset's features ``x`` (n ≥ 2, d) and the test set's ``(mu, sigma)``."""
    return log_fd(feature_stats(x), test_stats)


def profiles(x: np.ndarray, subsets: list[np.ndarray], test_stats: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """One layer's ``log FD(subset, test)`` of every subset (row indices into ``x`` (n, d)), in order."""
    return [log_fd_to_test(x[idx], test_stats) for idx in subsets]


def joint_vectors(curves: np.ndarray, fd_test: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``[C_T curve | FD-to-test profile]`` (g, 2L), each column z-scored over the rows ``ref`` (mask or indices).

    ``curves`` (g, L): NaN → 0 first. Scale = standard deviation (ddof 0) + 1e-12, so a constant column becomes 0.
    """
    a = np.hstack([np.nan_to_num(np.asarray(curves, np.float64), nan=0.0), np.asarray(fd_test, np.float64)])
    return (a - a[ref].mean(0)) / (a[ref].std(0) + _EPS)


def l2_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances (n, m) between the rows of ``a`` (n, D) and ``b`` (m, D)."""
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def resolve_method(fcfg: FingerprintConfig, have_profiles: bool, what: str = "the curves") -> FingerprintConfig:
    """``fcfg`` with ``method`` made concrete (``auto`` → ``curve_fd`` when ``have_profiles`` and no open set).

    Raises :class:`~memray.config.ConfigError` when ``curve_fd`` is asked for curves without a profile.
    """
    if fcfg.method == "auto":
        use = CURVE_FD if have_profiles and fcfg.open_set_threshold is None else CURVE
        return replace(fcfg, method=use)
    if fcfg.method == CURVE_FD and not have_profiles:
        raise ConfigError(
            f"fingerprint.method=curve_fd needs an FD-to-test profile, which {what} lack (C_T values only, e.g. "
            "published curves): use fingerprint.method: curve (or auto)"
        )
    return fcfg


def planned_method(fcfg: FingerprintConfig, gallery_method: str | None = None) -> str:
    """The method a job with features will use: explicit, else (``auto``) a saved gallery's method, else ``curve`` with
    an open-set threshold and ``curve_fd`` without one."""
    if fcfg.method != "auto":
        return fcfg.method
    if gallery_method is not None:
        return gallery_method
    return CURVE if fcfg.open_set_threshold is not None else CURVE_FD


def check_gallery_method(method: str, gallery_method: str, url: str) -> None:
    """One line when a saved gallery built by ``gallery_method`` is queried with another concrete ``method``."""
    if method not in ("auto", gallery_method):
        hint = "auto or curve_fd" if gallery_method == CURVE_FD else "curve (or auto)"
        raise ConfigError(
            f"gallery {url} was built with fingerprint.method={gallery_method}, this run asks for {method}: "
            f"set fingerprint.method: {hint}, or rebuild the gallery with method {method}"
        )
