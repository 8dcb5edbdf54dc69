"""Honest synthetic generators for tests and the bundled sample: copies, kernel-density samples, a Gaussian mixture.

Every function takes the training images (``(N, H, W)`` or ``(N, H, W, C)``; ``uint8`` pixels 0–255 or float) and
a seeded ``np.random.Generator``, and returns ``(samples, provenance)``. ``uint8`` input gives ``uint8`` output
(clipped to 0–255 and rounded); float input stays float. The provenance dict is JSON-ready and is meant to be
stored beside the data: ``generator``, ``params``, ``seed`` (the generator's seed entropy), ``rng_state`` (its
exact state at the call, enough to reproduce the output) and, for copies, ``source_rows`` (training rows used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUGMENTATIONS: tuple[str, ...] = ("flip", "shift", "noise", "blockshuffle", "downsample")
_LOG_2PI = float(np.log(2 * np.pi))


def rng_record(rng: np.random.Generator) -> dict:
    """JSON-ready seed and exact bit-generator state of ``rng`` (call before drawing)."""
    seed_seq = getattr(rng.bit_generator, "seed_seq", None)
    entropy = getattr(seed_seq, "entropy", None)
    return {
        "seed": entropy,
        "spawn_key": list(getattr(seed_seq, "spawn_key", ())),
        "rng_state": rng.bit_generator.state,
    }


def _check_images(train: np.ndarray, n: int) -> np.ndarray:
    train = np.asarray(train)
    if train.ndim not in (3, 4) or train.shape[0] == 0:
        raise ValueError(f"train must be (N, H, W) or (N, H, W, C) with N > 0, got shape {train.shape}")
    if train.dtype != np.uint8 and not np.issubdtype(train.dtype, np.floating):
        raise ValueError(f"train must be uint8 (0–255) or float, got {train.dtype}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return train


def _to_dtype(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """float64 work array → ``like``'s dtype: uint8 is clipped to 0–255 and rounded; floats are cast."""
    if like.dtype == np.uint8:
        return np.rint(np.clip(x, 0, 255)).astype(np.uint8)
    return x.astype(like.dtype)


def _rows(n_train: int, n: int, rng: np.random.Generator, replace: bool) -> np.ndarray:
    return rng.choice(n_train, size=n, replace=replace or n > n_train).astype(np.int64)


def kde_sample(train: np.ndarray, n: int, bandwidth: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Meehan et al.'s kernel-density sampler: random training images (with replacement) plus N(0, bandwidth²) noise.

    Args:
        train: training images, uint8 or float.
        n: number of samples.
        bandwidth: noise std in pixel units (grey levels for uint8). 0 returns exact training rows (copies).
        rng: seeded generator.
    """
    train = _check_images(train, n)
    if not bandwidth >= 0:
        raise ValueError(f"bandwidth must be >= 0, got {bandwidth}")
    record = rng_record(rng)
    rows = _rows(len(train), n, rng, replace=True)
    noisy = train[rows].astype(np.float64) + rng.normal(0.0, bandwidth, size=(n, *train.shape[1:]))
    prov = {"generator": "kde", "params": {"bandwidth": float(bandwidth), "n": n, "n_train": len(train)}, **record}
    return _to_dtype(noisy, train), {**prov, "source_rows": rows.tolist()}


def gmm_sample(
    train: np.ndarray,
    n: int,
    components: int,
    rng: np.random.Generator,
    pca_dim: int = 32,
    covariance: str = "full",
    n_iter: int = 100,
    tol: float = 1e-4,
) -> tuple[np.ndarray, dict]:
    """Fit a Gaussian mixture (EM, k-means++ start) in a PCA space of the flattened images, and sample from it.

    Args:
        train: training images, uint8 or float.
        n: number of samples.
        components: mixture components.
        rng: seeded generator (initialisation and sampling).
        pca_dim: PCA dimensions (capped at ``min(N - 1, H·W·C)``); samples are mapped back with the PCA basis.
        covariance: ``"full"`` or ``"diag"`` per component.
        n_iter, tol: EM iteration cap and tolerance on the mean log-likelihood.
    """
    train = _check_images(train, n)
    record = rng_record(rng)
    x = train.reshape(len(train), -1).astype(np.float64)
    mean = x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(pca_dim, len(train) - 1, x.shape[1]))
    basis = vt[:k]  # (k, D), orthonormal rows
    gmm = fit_gmm((x - mean) @ basis.T, components, rng, covariance=covariance, n_iter=n_iter, tol=tol)
    z, comp = sample_gmm(gmm, n, rng)
    out = (z @ basis + mean).reshape(n, *train.shape[1:])
    explained = float((sing[:k] ** 2).sum() / max((sing**2).sum(), np.finfo(float).tiny))
    # Summaries rounded to 10 significant digits: BLAS threading changes their last bits, not the samples.
    params = {"n": n, "components": components, "pca_dim": k, "pca_explained_variance": float(f"{explained:.10g}")}
    params |= {"covariance": covariance, "n_iter": gmm.n_iter, "converged": gmm.converged, "n_train": len(train)}
    params |= {"mean_log_likelihood": float(f"{gmm.log_likelihood:.10g}"), "tol": tol, "max_iter": n_iter}
    return _to_dtype(out, train), {"generator": "gmm", "params": params, **record, "component": comp.tolist()}


def augment_copies(
    train: np.ndarray,
    n: int,
    rng: np.random.Generator,
    kind: str,
    shift: int = 3,
    noise_std: float = 25.0,
    blocks: int = 4,
    factor: int = 4,
) -> tuple[np.ndarray, dict]:
    """Transformed training images (distinct rows while ``n <= N``), the paper's low-/high-level probes.

    Kinds: ``flip`` (left-right), ``shift`` (random offset of 1..``shift`` px in y and/or x, zero fill),
    ``noise`` (additive N(0, ``noise_std``²)), ``blockshuffle`` (``blocks``×``blocks`` grid of tiles permuted, never
    the identity; H and W must divide), ``downsample`` (area mean over ``factor``×``factor`` tiles, then
    nearest-neighbour back to full size; H and W must divide).
    """
    train = _check_images(train, n)
    if kind not in AUGMENTATIONS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    record = rng_record(rng)
    rows = _rows(len(train), n, rng, replace=False)
    src = train[rows]
    h, w = train.shape[1:3]
    extra: dict = {}
    if kind == "flip":
        out = src[:, :, ::-1].copy()
    elif kind == "shift":
        out, extra["offsets"] = _shift(src, shift, rng)
    elif kind == "noise":
        out = _to_dtype(src.astype(np.float64) + rng.normal(0.0, noise_std, size=src.shape), src)
    elif kind == "blockshuffle":
        out, extra["permutations"] = _blockshuffle(src, blocks, rng)
    else:
        if h % factor or w % factor:
            raise ValueError(f"downsample: image size {h}×{w} is not divisible by factor {factor}")
        tiles = src.astype(np.float64).reshape(n, h // factor, factor, w // factor, factor, *src.shape[3:])
        small = tiles.mean(axis=(2, 4))
        out = _to_dtype(small.repeat(factor, axis=1).repeat(factor, axis=2), src)
    knob = {"shift": {"max_shift": shift}, "noise": {"noise_std": noise_std}, "blockshuffle": {"blocks": blocks}}
    knob |= {"flip": {}, "downsample": {"factor": factor}}
    params = {"kind": kind, "n": n, "n_train": len(train), **knob[kind]}
    prov = {"generator": f"augment_{kind}", "params": params, **record, "source_rows": rows.tolist(), **extra}
    return out, prov


def _shift(src: np.ndarray, max_shift: int, rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
    """Translate each image by (dy, dx) ∈ [-max_shift, max_shift]², not (0, 0); vacated pixels are 0."""
    if max_shift < 1:
        raise ValueError(f"shift must be >= 1 pixel, got {max_shift}")
    out = np.zeros_like(src)
    h, w = src.shape[1:3]
    offsets = []
    for i in range(len(src)):
        dy = dx = 0
        while dy == 0 and dx == 0:
            dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        out[i, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = src[
            i, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        offsets.append([dy, dx])
    return out, offsets


def _blockshuffle(src: np.ndarray, blocks: int, rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
    """Cut each image into a ``blocks``×``blocks`` grid and permute the tiles (output tile j = input tile perm[j])."""
    n, h, w = src.shape[:3]
    if blocks < 2 or h % blocks or w % blocks:
        raise ValueError(f"blockshuffle: image size {h}×{w} must be divisible by blocks={blocks} (>= 2)")
    bh, bw = h // blocks, w // blocks
    tail = src.shape[3:]
    # (n, by, bh, bx, bw, ...) → (n, by·bx, bh, bw, ...)
    tiles = src.reshape(n, blocks, bh, blocks, bw, *tail).swapaxes(2, 3).reshape(n, blocks * blocks, bh, bw, *tail)
    perms = []
    out_tiles = np.empty_like(tiles)
    for i in range(n):
        perm = np.arange(blocks * blocks)
        while np.array_equal(perm, np.arange(blocks * blocks)):
            perm = rng.permutation(blocks * blocks)
        out_tiles[i] = tiles[i, perm]
        perms.append(perm.tolist())
    out = out_tiles.reshape(n, blocks, blocks, bh, bw, *tail).swapaxes(2, 3).reshape(src.shape)
    return out, perms


# ---- Gaussian mixture (numpy EM; the M-step and stopping rule follow scikit-learn's GaussianMixture) ----------
@dataclass(frozen=True)
class GaussianMixture:
    """A fitted mixture: ``weights`` (k,), ``means`` (k, d), ``covariances`` (k, d, d) full or (k, d) diag."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance: str
    n_iter: int
    converged: bool
    log_likelihood: float  # mean log-likelihood per sample (nats) at the last E-step


def _log_gauss(z: np.ndarray, means: np.ndarray, covs: np.ndarray, covariance: str) -> np.ndarray:
    """(n, k) log densities of rows of ``z`` under each component."""
    d = z.shape[1]
    if covariance == "diag":
        maha = (((z[:, None, :] - means[None]) ** 2) / covs[None]).sum(axis=2)
        return -0.5 * (d * _LOG_2PI + np.log(covs).sum(axis=1)[None] + maha)
    out = np.empty((len(z), len(means)))
    for j in range(len(means)):
        try:
            chol = np.linalg.cholesky(covs[j])
        except np.linalg.LinAlgError as e:
            raise ValueError(f"GMM component {j}: covariance not positive definite; raise reg_covar") from e
        y = np.linalg.solve(chol, (z - means[j]).T)
        out[:, j] = -0.5 * (d * _LOG_2PI + 2 * np.log(np.diag(chol)).sum() + (y**2).sum(axis=0))
    return out


def _m_step(z: np.ndarray, resp: np.ndarray, covariance: str, reg: float) -> tuple[np.ndarray, ...]:
    nk = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps
    means = resp.T @ z / nk[:, None]
    if covariance == "diag":
        covs = np.stack([resp[:, j] @ (z - means[j]) ** 2 / nk[j] for j in range(len(nk))]) + reg
    else:
        covs = np.stack([(resp[:, j, None] * (z - means[j])).T @ (z - means[j]) / nk[j] for j in range(len(nk))])
        covs += reg * np.eye(z.shape[1])[None]
    return nk / nk.sum(), means, covs


def _kmeans_pp(z: np.ndarray, k: int, rng: np.random.Generator, n_lloyd: int = 10) -> np.ndarray:
    """Hard labels (n,) from k-means++ seeding plus ``n_lloyd`` Lloyd iterations."""
    centers = [z[rng.integers(len(z))]]
    d2 = ((z - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        idx = rng.choice(len(z), p=d2 / total) if total > 0 else rng.integers(len(z))
        centers.append(z[idx])
        d2 = np.minimum(d2, ((z - z[idx]) ** 2).sum(axis=1))
    c = np.array(centers)
    for _ in range(n_lloyd):
        labels = ((z[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
        c = np.array([z[labels == j].mean(axis=0) if (labels == j).any() else c[j] for j in range(k)])
    return ((z[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)


def fit_gmm(
    z: np.ndarray,
    components: int,
    rng: np.random.Generator,
    covariance: str = "full",
    n_iter: int = 100,
    tol: float = 1e-4,
    reg_covar: float = 1e-6,
    init: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> GaussianMixture:
    """EM for a Gaussian mixture on ``z`` (n, d); stops when the mean log-likelihood changes by less than ``tol``.

    ``init`` = (weights, means, covariances) starts EM there; otherwise k-means++ (seeded by ``rng``) + Lloyd
    labels give the first M-step. ``reg_covar`` is added to every covariance diagonal.
    """
    z = np.asarray(z, dtype=np.float64)
    if covariance not in ("full", "diag"):
        raise ValueError(f"covariance={covariance!r}: choose 'full' or 'diag'")
    if not 1 <= components <= len(z):
        raise ValueError(f"components={components}: need 1 <= components <= n samples ({len(z)})")
    if init is None:
        resp = np.eye(components)[_kmeans_pp(z, components, rng)]
        weights, means, covs = _m_step(z, resp, covariance, reg_covar)
    else:
        weights, means, covs = (np.asarray(a, dtype=np.float64) for a in init)
    lower, converged, done = -np.inf, False, 0
    for done in range(1, n_iter + 1):  # noqa: B007  (`done` is the iteration count reported)
        log_p = np.log(weights)[None] + _log_gauss(z, means, covs, covariance)
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_p - top).sum(axis=1))
        weights, means, covs = _m_step(z, np.exp(log_p - log_norm[:, None]), covariance, reg_covar)
        prev, lower = lower, float(log_norm.mean())
        if abs(lower - prev) < tol:
            converged = True
            break
    return GaussianMixture(weights, means, covs, covariance, done, converged, lower)


def sample_gmm(gmm: GaussianMixture, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws: points (n, d) and the component of each (n,)."""
    comp = rng.choice(len(gmm.weights), size=n, p=gmm.weights)
    eps = rng.standard_normal((n, gmm.means.shape[1]))
    if gmm.covariance == "diag":
        return gmm.means[comp] + np.sqrt(gmm.covariances[comp]) * eps, comp
    chol = np.linalg.cholesky(gmm.covariances)
    return gmm.means[comp] + np.einsum("nij,nj->ni", chol[comp], eps), comp
