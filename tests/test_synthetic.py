"""scripts/synthetic.py (seeding, shapes, one property per generator), its EM against scikit-learn, the sample."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import augment_copies, fit_gmm, gmm_sample, kde_sample, sample_gmm

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _images(n: int = 40, h: int = 8, w: int = 12, c: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---- kde ------------------------------------------------------------------------------------------------------
def test_kde_bandwidth_zero_copies_rows_and_seeding() -> None:
    train = _images()
    out, prov = kde_sample(train, 25, 0.0, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == (25, 8, 12)
    np.testing.assert_array_equal(out, train[prov["source_rows"]])
    again, _ = kde_sample(train, 25, 0.0, np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)
    other, _ = kde_sample(train, 25, 5.0, np.random.default_rng(4))
    assert not np.array_equal(out, other)
    assert prov["seed"] == 3 and json.loads(json.dumps(prov)) == prov  # JSON-ready provenance


def test_kde_noise_std_float_input_and_recorded_state() -> None:
    train = np.full((10, 30, 30), 128.0)  # float stays float, no clipping at mid grey
    rng = np.random.default_rng(11)
    rng.normal(size=7)  # a used generator: its state, not its seed, reproduces the call
    out, prov = kde_sample(train, 50, 8.0, rng)
    assert out.dtype == np.float64
    assert abs((out - 128.0).std() - 8.0) < 0.1 and abs((out - 128.0).mean()) < 0.1
    replay = np.random.default_rng()
    replay.bit_generator.state = prov["rng_state"]
    np.testing.assert_array_equal(kde_sample(train, 50, 8.0, replay)[0], out)
    with pytest.raises(ValueError, match="bandwidth"):
        kde_sample(train, 5, -1.0, rng)


# ---- augment --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [None, 3])
def test_flip_is_an_involution_on_the_source_rows(c: int | None) -> None:
    train = _images(c=c)
    out, prov = augment_copies(train, 30, np.random.default_rng(0), "flip")
    assert len(set(prov["source_rows"])) == 30  # distinct rows while n <= N
    np.testing.assert_array_equal(out[:, :, ::-1], train[prov["source_rows"]])
    assert not np.array_equal(out, train[prov["source_rows"]])


def test_shift_moves_content_and_zero_fills() -> None:
    train = _images(seed=1) | 1  # no zero pixels in the source
    out, prov = augment_copies(train, 20, np.random.default_rng(5), "shift", shift=2)
    for img, src, (dy, dx) in zip(out, train[prov["source_rows"]], prov["offsets"], strict=True):
        assert (dy, dx) != (0, 0) and max(abs(dy), abs(dx)) <= 2
        for y in range(8):
            for x in range(12):
                sy, sx = y - dy, x - dx
                inside = 0 <= sy < 8 and 0 <= sx < 12
                assert img[y, x] == (src[sy, sx] if inside else 0)


def test_noise_has_requested_std() -> None:
    train = np.full((50, 20, 20), 128, np.uint8)
    out, _ = augment_copies(train, 50, np.random.default_rng(2), "noise", noise_std=10.0)
    diff = out.astype(float) - 128
    assert abs(diff.std() - 10.0) < 0.2 and abs(diff.mean()) < 0.2


@pytest.mark.parametrize("c", [None, 3])
def test_blockshuffle_permutes_tiles_and_keeps_pixel_multiset(c: int | None) -> None:
    train = _images(n=12, h=8, w=12, c=c, seed=7)
    out, prov = augment_copies(train, 12, np.random.default_rng(9), "blockshuffle", blocks=4)
    for img, src, perm in zip(out, train[prov["source_rows"]], prov["permutations"], strict=True):
        assert perm != list(range(16)) and sorted(perm) == list(range(16))
        np.testing.assert_array_equal(np.sort(img, axis=None), np.sort(src, axis=None))
        for j, p in enumerate(perm):  # output tile j is input tile perm[j] (tiles are 2×3, row-major)
            ty, tx, sy, sx = divmod(j, 4) + divmod(p, 4)
            got, want = img[ty * 2 : ty * 2 + 2, tx * 3 : tx * 3 + 3], src[sy * 2 : sy * 2 + 2, sx * 3 : sx * 3 + 3]
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="divisible"):
        augment_copies(_images(h=9), 2, np.random.default_rng(0), "blockshuffle")


def test_downsample_is_blockwise_mean_then_nearest() -> None:
    train = _images(h=8, w=12, seed=3)
    out, prov = augment_copies(train, 5, np.random.default_rng(1), "downsample", factor=4)
    src = train[prov["source_rows"]].astype(float)
    for i in range(5):
        for by in range(2):
            for bx in range(3):
                tile = src[i, by * 4 : by * 4 + 4, bx * 4 : bx * 4 + 4]
                assert (out[i, by * 4 : by * 4 + 4, bx * 4 : bx * 4 + 4] == np.rint(tile.mean())).all()
    with pytest.raises(ValueError, match="kind"):
        augment_copies(train, 2, np.random.default_rng(0), "rotate")


# ---- gmm ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_matches_scikit_learn_from_the_same_start(covariance: str) -> None:
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 1, (150, 3)), rng.normal(4, 0.5, (100, 3)), rng.normal([0, 5, -3], 2, (80, 3))])
    w0 = np.array([0.3, 0.3, 0.4])
    m0 = z[[0, 160, 300]]
    c0 = np.stack([np.eye(3)] * 3) if covariance == "full" else np.ones((3, 3))
    ours = fit_gmm(z, 3, rng, covariance=covariance, n_iter=15, tol=0.0, init=(w0, m0, c0))
    prec = np.linalg.inv(c0) if covariance == "full" else 1.0 / c0
    ref = GaussianMixture(3, covariance_type=covariance, max_iter=15, tol=0.0, reg_covar=1e-6)
    ref.set_params(weights_init=w0, means_init=m0, precisions_init=prec)
    with pytest.warns(Warning):  # tol=0 never converges: sklearn warns
        ref.fit(z)
    np.testing.assert_allclose(ours.weights, ref.weights_, rtol=1e-8)
    np.testing.assert_allclose(ours.means, ref.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.covariances, ref.covariances_, rtol=1e-8, atol=1e-10)
    assert ours.n_iter == 15 and not ours.converged


def test_gmm_recovers_a_known_mixture_and_samples_from_it() -> None:
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal([-5, 0], 1.0, (600, 2)), rng.normal([5, 2], 0.5, (400, 2))])
    gmm = fit_gmm(z, 2, rng)
    order = np.argsort(gmm.means[:, 0])
    np.testing.assert_allclose(gmm.weights[order], [0.6, 0.4], atol=0.01)
    np.testing.assert_allclose(gmm.means[order], [[-5, 0], [5, 2]], atol=0.1)
    assert gmm.converged
    draws, comp = sample_gmm(gmm, 20000, np.random.default_rng(2))
    assert abs((comp == order[0]).mean() - 0.6) < 0.015
    np.testing.assert_allclose(np.cov(draws[comp == order[1]].T), gmm.covariances[order[1]], atol=0.02)


def test_gmm_sample_shapes_seeding_and_dtype() -> None:
    base = np.random.default_rng(0).normal(100, 30, (4, 1, 6, 6))
    train = np.clip(base + np.random.default_rng(1).normal(0, 5, (4, 30, 6, 6)), 0, 255).reshape(120, 6, 6)
    a, prov = gmm_sample(train.astype(np.uint8), 50, 4, np.random.default_rng(5), pca_dim=8)
    b, _ = gmm_sample(train.astype(np.uint8), 50, 4, np.random.default_rng(5), pca_dim=8)
    assert a.dtype == np.uint8 and a.shape == (50, 6, 6)
    np.testing.assert_array_equal(a, b)
    assert prov["params"]["pca_dim"] == 8 and len(prov["component"]) == 50
    f, _ = gmm_sample(train, 10, 4, np.random.default_rng(5), pca_dim=8, covariance="diag")
    assert f.dtype == np.float64
    with pytest.raises(ValueError, match="components"):
        gmm_sample(train, 10, 500, np.random.default_rng(0))


# ---- bundled sample -------------------------------------------------------------------------------------------
def _load(name: str) -> tuple[np.ndarray, np.ndarray, dict, np.lib.npyio.NpzFile]:
    z = np.load(SAMPLE / f"{name}.npz")
    return z["images"], z["labels"], json.loads(z["meta"].item()), z


def test_bundled_sample_files_shapes_roles_and_size() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert total < 6 * 1024**2
    sizes = {"train": 2000, "test": 1000}
    for stem in ("heldout_real", "kde_copy_bw8", "kde_bw64", "gmm_k20"):
        sizes |= {stem: 500, f"{stem}_run2": 500}
    for name, n in sizes.items():
        images, labels, meta, _ = _load(name)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8 and labels.shape == (n,)
        assert "Fashion-MNIST" in meta["dataset"]
    _, train_labels, _, _ = _load("train")
    assert np.bincount(train_labels).tolist() == [200] * 10
    test_idx = _load("test")[3]["source_index"]
    held = [set(_load(h)[3]["source_index"].tolist()) for h in ("heldout_real", "heldout_real_run2")]
    assert not held[0] & held[1] and not held[0] & set(test_idx.tolist()) and not held[1] & set(test_idx.tolist())
    train = _load("train")[0]
    copies, labels, meta, _ = _load("kde_copy_bw8")
    np.testing.assert_array_equal(labels, train_labels[meta["source_rows"]])
    assert np.abs(copies.astype(float) - train[meta["source_rows"]]).mean() < 8  # noise std 8, clipped


def _pixel_ct(train: np.ndarray, test: np.ndarray, gens: dict[str, np.ndarray]) -> dict[str, float]:
    """Independent C_T (Meehan et al.): PCA-64 on T, 10 k-means cells, Euclidean NN in-cell, Mann-Whitney z."""
    from scipy.spatial.distance import cdist
    from scipy.stats import rankdata
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) / 255.0

    pca = PCA(64, random_state=0).fit(flat(train))
    t, p = pca.transform(flat(train)), pca.transform(flat(test))
    km = KMeans(10, n_init=3, random_state=0).fit(t)
    ct, cp = km.labels_, km.predict(p)
    dp = np.empty(len(p))
    for c in range(10):
        dp[cp == c] = cdist(p[cp == c], t[ct == c]).min(axis=1)
    out = {}
    for name, gen in gens.items():
        q = pca.transform(flat(gen))
        cq = km.predict(q)
        num = den = 0.0
        for c in range(10):
            if (cq == c).sum() <= 20:
                continue
            dq = cdist(q[cq == c], t[ct == c]).min(axis=1)
            n, m = int((cp == c).sum()), len(dq)
            u = rankdata(np.concatenate([dp[cp == c], dq]))[n:].sum() - m * (m + 1) / 2
            num += n / len(p) * (u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)
            den += n / len(p)
        out[name] = num / den
    return out


def test_bundled_sample_reads_as_documented_in_pixel_space() -> None:
    train, test = _load("train")[0], _load("test")[0]
    ct = _pixel_ct(train, test, {g: _load(g)[0] for g in ("kde_copy_bw8", "kde_bw64", "heldout_real", "gmm_k20")})
    assert ct["kde_copy_bw8"] < -8 and ct["kde_bw64"] < -2, ct
    assert abs(ct["heldout_real"]) < 1.5 and abs(ct["gmm_k20"]) < 1.5, ct


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="needs the Debian package dataset-fashion-mnist")
def test_make_sample_data_reproduces_the_bundled_bytes(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_sample_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # as the script runs standalone; also immune to a busy machine
        assert make_sample_data.main(["--fashion-mnist", str(FASHION_MNIST), "--out", str(tmp_path)]) == 0
    bundled = sorted(p.name for p in SAMPLE.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == bundled
    for name in bundled:
        digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert digest == hashlib.sha256((SAMPLE / name).read_bytes()).hexdigest(), name
