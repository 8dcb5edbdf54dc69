"""Fréchet distance against closed forms, FID tables in both formats, and FID-name → curve-run matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memray.fingerprint.fid import fd_matrix, feature_stats, frechet_distance, match_fid_runs, read_fid_table

DATA = Path(__file__).parent / "data" / "layerchoice"


def test_frechet_diagonal_closed_form() -> None:
    # diagonal covariances commute: FD = ‖μ1 − μ2‖² + Σ (√a_i − √b_i)²
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    # 1 + 0 + 4 = 5; (1 − 2)² + (2 − 1)² + 0 = 2 → 7
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(7.0, abs=1e-10)


def test_frechet_one_dimension_and_identity() -> None:
    # 1-D: (μ1 − μ2)² + (σ1 − σ2)² = 9 + (2 − 3)² = 10
    assert frechet_distance([0.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(10.0, abs=1e-12)
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    s = m @ m.T + np.eye(6)
    assert frechet_distance(np.ones(6), s, np.ones(6), s) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_symmetric_eigen_formula() -> None:
    # tr((Σ1Σ2)^½) = Σ sqrt(eig(Σ1^½ Σ2 Σ1^½)), an independent route through symmetric matrices
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        w, v = np.linalg.eigh(s1)
        r = v @ np.diag(np.sqrt(w)) @ v.T
        tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
        ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-8)


def test_frechet_singular_covariances_stay_finite() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1.0  # n < d: rank-deficient covariances
    fd = frechet_distance(*feature_stats(x), *feature_stats(y))
    assert np.isfinite(fd) and fd > 0
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_stats_and_matrix() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    mu, s = feature_stats(x)
    assert mu == pytest.approx(x.astype(float).mean(0))
    assert s == pytest.approx(np.cov(x.astype(float).T, ddof=1))
    with pytest.raises(ValueError, match="n >= 2"):
        feature_stats(x[:1])
    st = [feature_stats(x), feature_stats(x + 1.0)]
    m = fd_matrix(st, st)
    assert m.shape == (2, 2) and m[0, 0] == pytest.approx(0, abs=1e-8) and m[0, 1] == pytest.approx(4.0)


def test_authors_fid_file_maps_to_all_curve_runs() -> None:
    fid = read_fid_table(str(DATA / "layerchoice_fid_score.txt"))
    assert len(fid) == 18 and fid["fid"].dtype == np.float64
    curves = pd.read_csv(DATA / "layerchoice_full_split.csv")
    got = match_fid_runs(fid, dict(zip(curves["run"], curves["label"], strict=True)))
    assert len(got) == 18
    assert got["BigGAN_48_16"] == pytest.approx(58.41919365662545)  # CIFAR10-BigGAN-Deep-train-…_21_48_16
    assert got["ContraGAN_17_17"] == pytest.approx(61.65205971804704)  # CIFAR10-ContraGAN-train-…_11_17_17
    assert got["SNGAN_24_46"] == pytest.approx(63.20041901356194)
    assert got["ddim_1"] == pytest.approx(65.70354982150195)  # ddim1
    assert got["pndm_3"] == pytest.approx(62.0074513029636)  # pndm3


def test_csv_fid_with_explicit_curve_run(tmp_path: Path) -> None:
    p = tmp_path / "fid.csv"
    p.write_text("run,fid,curve_run\nsomething-odd,12.5,gan_a\nddim1,3.0,\n")
    fid = read_fid_table(str(p))
    assert match_fid_runs(fid, {"gan_a": "gan", "ddim_1": "ddim"}) == {"gan_a": 12.5, "ddim_1": 3.0}


def test_fid_matching_errors(tmp_path: Path) -> None:
    fid = pd.DataFrame({"run": ["x-ddpm-1_1", "y-ddpm-2_1"], "fid": [1.0, 2.0], "curve_run": [None, None]})
    with pytest.raises(ValueError, match="ambiguous"):
        match_fid_runs(fid, {"ddpm_1": "ddpm"})
    with pytest.raises(ValueError, match="no FID name matches"):
        match_fid_runs(fid, {"gan_7": "gan"})
    bad = tmp_path / "bad.txt"
    bad.write_text("ok 1.0\nbroken-line-without-value\n")
    with pytest.raises(ValueError, match="line 2"):
        read_fid_table(str(bad))
    csv = tmp_path / "bad.csv"
    csv.write_text("run,fid\na,1\nb,oops\n")
    with pytest.raises(ValueError, match="line 3"):
        read_fid_table(str(csv))
