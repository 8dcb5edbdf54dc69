"""Fréchet distance baseline (FID-nearest): the distance itself, feature statistics, and FID tables.

``FD = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^½)`` between Gaussians fit to two feature sets (Heusel et al.
2017, computed as pytorch-fid / torch-fidelity do). Units: squared feature units; 0 = identical statistics.

FID tables give one scalar FID per generated run (the authors' baseline): either the authors' text format
(``NAME value`` per line) or a CSV/Parquet table with columns ``run, fid`` and an optional ``curve_run`` that
names the curve run explicitly. Without ``curve_run`` names are matched by :func:`match_fid_runs`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import linalg

from memray.io.storage import open_url

log = logging.getLogger(__name__)

FID_RUN = "run"
FID_VALUE = "fid"
FID_CURVE_RUN = "curve_run"


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features ``x`` (n, d), in float64; needs n ≥ 2."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_stats needs an (n >= 2, d) array, got shape {x.shape}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Robustness: when ``sqrtm(Σ₁Σ₂)`` is not finite (singular product, e.g. fewer samples than dimensions) both
    covariances get ``eps·I`` added and a warning is logged; a complex square root whose imaginary diagonal
    exceeds 1e-3 raises (its real part is used otherwise); rounding negatives down to −1e-9·scale become 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("sqrtm(Σ1·Σ2) is singular; adding %g to the covariance diagonals", eps)
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            raise ValueError(f"sqrtm(Σ1·Σ2) has an imaginary component {imag:.3g}: covariances are not PSD")
        covmean = covmean.real
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    scale = float(diff @ diff + np.trace(s1) + np.trace(s2))
    if fd < 0:
        if fd < -1e-9 * max(scale, 1.0):
            raise ValueError(f"Fréchet distance came out negative ({fd:.3g}); check the covariances")
        fd = 0.0
    return fd


def fd_matrix(queries: list[tuple[np.ndarray, np.ndarray]], gallery: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Pairwise Fréchet distances (q, g) between lists of ``(mu, sigma)`` statistics."""
    out = np.empty((len(queries), len(gallery)))
    for i, (m1, s1) in enumerate(queries):
        for j, (m2, s2) in enumerate(gallery):
            out[i, j] = frechet_distance(m1, s1, m2, s2)
    return out


def read_fid_table(url: str) -> pd.DataFrame:
    """Read an FID file → DataFrame ``run, fid, curve_run`` (``curve_run`` None where not given).

    Formats: CSV (``.csv``) or Parquet (``.parquet``) with columns ``run, fid`` [``curve_run``]; anything else is
    read as the authors' text format, one ``NAME value`` (or ``NAME: value``) per line; blank and ``#`` lines
    are skipped.
    """
    suffix = Path(str(url)).suffix.lower()
    if suffix in (".csv", ".parquet"):
        with open_url(url, "rb") as fh:
            df = pd.read_csv(fh) if suffix == ".csv" else pd.read_parquet(fh)
        missing = {FID_RUN, FID_VALUE} - set(df.columns)
        if missing:
            raise ValueError(f"{url}: missing column(s) {sorted(missing)}; an FID table needs 'run' and 'fid'")
        if FID_CURVE_RUN not in df.columns:
            df[FID_CURVE_RUN] = None
        df = df[[FID_RUN, FID_VALUE, FID_CURVE_RUN]].copy()
        bad = df.index[pd.to_numeric(df[FID_VALUE], errors="coerce").isna()].tolist()
        if bad:
            where = f"line {bad[0] + 2}" if suffix == ".csv" else f"row {bad[0] + 1}"
            raise ValueError(f"{url}: {where}: fid {df[FID_VALUE].iloc[bad[0]]!r} is not a number")
        df[FID_VALUE] = df[FID_VALUE].astype(np.float64)
        df[FID_CURVE_RUN] = df[FID_CURVE_RUN].astype(object).where(df[FID_CURVE_RUN].notna(), None)
    else:
        rows = []
        with open_url(url, "rb") as fh:
            for lineno, raw in enumerate(fh.read().decode().splitlines(), 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                m = re.fullmatch(r"(\S+?):?\s+(\S+)", line)
                try:
                    rows.append((m.group(1), float(m.group(2)), None))  # type: ignore[union-attr]
                except (AttributeError, ValueError):
                    raise ValueError(f"{url}: line {lineno}: expected 'NAME value', got {line[:80]!r}") from None
        df = pd.DataFrame(rows, columns=[FID_RUN, FID_VALUE, FID_CURVE_RUN])
    dup = df[FID_RUN][df[FID_RUN].duplicated()].tolist()
    if dup:
        raise ValueError(f"{url}: run {dup[0]!r} appears more than once")
    return df


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(s).lower())


def match_fid_runs(fid: pd.DataFrame, runs: dict[str, str | None]) -> dict[str, float]:
    """Map each curve run to its FID.

    Rules, in order: (1) an explicit ``curve_run`` column; (2) the same name after lower-casing and dropping
    non-alphanumerics (``ddim_1`` ↔ ``ddim1``); (3) a unique FID name that contains the curve's label and ends
    with the rest of the curve's run name (``BigGAN_48_16`` ↔ ``CIFAR10-BigGAN-Deep-train-2022_02_02_21_48_16``).

    Args:
        fid: from :func:`read_fid_table`.
        runs: curve run → label (``None`` if unlabelled).

    Returns:
        run → FID for every run in ``runs``; raises ``ValueError`` naming unmatched or ambiguous runs.
    """
    out: dict[str, float] = {}
    used: dict[str, str] = {}
    explicit = {str(r[FID_CURVE_RUN]): r for _, r in fid.iterrows() if r[FID_CURVE_RUN] is not None}
    names = fid[FID_RUN].astype(str).tolist()
    normed = {n: _norm(n) for n in names}
    problems = []
    for run, label in runs.items():
        if run in explicit:
            out[run], used_name = float(explicit[run][FID_VALUE]), str(explicit[run][FID_RUN])
        else:
            cands = [n for n in names if normed[n] == _norm(run)]
            lab = _norm(label or "")
            if not cands and label and run.lower().startswith(str(label).lower()):
                rest = _norm(run[len(label) :])
                cands = [n for n in names if rest and lab and normed[n].endswith(rest) and lab in normed[n]]
            if len(cands) != 1:
                what = "no FID name matches" if not cands else f"ambiguous: {cands[:4]}"
                problems.append(f"{run!r} ({what})")
                continue
            used_name = cands[0]
            out[run] = float(fid.loc[fid[FID_RUN].astype(str) == used_name, FID_VALUE].iloc[0])
        if used_name in used:
            problems.append(f"{run!r} and {used[used_name]!r} both map to FID run {used_name!r}")
        used[used_name] = run
        log.debug("FID run %s -> curve run %s", used_name, run)
    if problems:
        raise ValueError(
            "cannot map FID runs to curve runs: " + "; ".join(problems[:6]) + ". Give a CSV with columns "
            "run,fid,curve_run naming each curve run explicitly"
        )
    return out
