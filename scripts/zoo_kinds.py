"""The kinds of the detection zoo: what each generator draws, and the ground truth of every image it writes.

A kind is ``fn(ctx, kind, seed) -> Drawn``: ``n_gen`` uint8 images (n, 28, 28) and per-image truth. Seeds are
derived, never shared: ``derived_seed(name, seed)`` hashes the name (CRC-32) with the run seed through numpy's
``SeedSequence``, so a kind draws the same images whether or not other kinds ran before it. Models that several
kinds sample (the DCGAN, the VAE, the PCA-GMM) are trained once per run seed, by their owner's seed, and cached.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zoo_models as zm
from PIL import Image

GROUPS = {
    "dcgan": "honest",
    "vae": "honest",
    "pca_gmm": "honest",
    "heldout": "honest",
    "mlp_gan": "honest",
    "kde_wide": "honest",
    "collapsed_gan": "hard_negative",
    "blurry_vae": "hard_negative",
    "dense_sampler": "hard_negative",
    "copy_mix": "memorizer",
    "small_subset_vae": "memorizer",
    "kde": "memorizer",
}
# The model a kind samples (trained once per run seed with the owner's parameters and derived seed).
MODEL_OF = {
    "dcgan": "dcgan",
    "collapsed_gan": "dcgan",
    "vae": "vae",
    "blurry_vae": "blurry_vae",
    "small_subset_vae": "small_subset_vae",
    "pca_gmm": "pca_gmm",
    "mlp_gan": "mlp_gan",
    "kde_wide": "pca_gmm",
    "dense_sampler": "pca_gmm",
    "copy_mix": "pca_gmm",
}
PARAMS: dict[str, dict[str, Any]] = {
    "dcgan": {"epochs": 80, "z_dim": 64, "width": 64, "lr": 2e-4, "batch": 64},
    "vae": {"epochs": 40, "z_dim": 16, "width": 32, "lr": 1e-3, "batch": 64, "beta": 1.0},
    "blurry_vae": {"epochs": 4, "z_dim": 16, "width": 32, "lr": 1e-3, "batch": 64, "beta": 1.0},
    "small_subset_vae": {
        "epochs": 200,
        "subset": 300,
        "z_dim": 16,
        "width": 32,
        "lr": 1e-3,
        "batch": 64,
        "beta": 1.0,
        "sampling": "aggregate posterior of the subset: z = mu_j + sigma_j * eps for a random subset image j",
    },
    "pca_gmm": {"pca_dim": 50, "components": 20},
    "mlp_gan": {"epochs": 60, "z_dim": 64, "width": 256, "lr": 2e-4, "batch": 64},
    "kde_wide": {"bandwidth": 0.8, "space": "the PCA space of pca_gmm (its pca_dim)", "kernel": "Gaussian"},
    "heldout": {"pool": "heldout/", "replace": False},
    "collapsed_gan": {"modes": 5, "z_noise": 0.05},
    "dense_sampler": {"top_components": 3, "scale": 0.5},
    "copy_mix": {
        "copy_fraction": 0.3,
        "honest": "pca_gmm",
        "shift_px": [1, 2],
        "crop_px": [24, 26],
        "families": ["identity", "hflip", "shift", "crop"],
        "padding": "zero (shifted-in pixels are 0)",
        "resize": "PIL bilinear crop -> 28x28",
    },
    "kde": {"sigma": 0.15, "replace": True, "scale": "pixels in [0, 1], clipped, rounded to uint8"},
}
QUICK: dict[str, dict[str, Any]] = {  # --quick: a few steps each, for the test
    "dcgan": {"epochs": 1, "width": 16},
    "vae": {"epochs": 1},
    "mlp_gan": {"epochs": 1, "width": 32},
    "small_subset_vae": {"epochs": 5, "subset": 50},
    "pca_gmm": {"pca_dim": 10, "components": 3},
}


def derived_seed(name: str, seed: int) -> int:
    """A 32-bit seed for ``name`` (a kind, a model, ``<kind>/sample``) under run seed ``seed``."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


@dataclass
class Ctx:
    """What every kind reads: T and the held-out pool (uint8 (n, 28, 28) + PNG names), sizes, parameters, models."""

    train: np.ndarray
    train_names: list[str]
    heldout: np.ndarray
    heldout_names: list[str]
    n_gen: int
    params: dict[str, dict[str, Any]]
    models: dict[tuple[str, int], tuple[Any, float]] = field(default_factory=dict)

    train_f: np.ndarray = field(init=False)  # T as float32 in [0, 1]

    def __post_init__(self) -> None:
        self.train_f = self.train.astype(np.float32) / 255.0


@dataclass
class Drawn:
    """One generated set: images (n, 28, 28) uint8 and one truth row per image."""

    images: np.ndarray
    is_copy: np.ndarray  # (n,) bool
    source: list[str]  # the training PNG an image copies, or ""
    transform: list[str]
    extra: dict[str, list] = field(default_factory=dict)  # further truth columns
    files: dict[str, str] = field(default_factory=dict)  # text files written beside the images
    record: dict[str, Any] = field(default_factory=dict)  # seeds, model, timings for zoo.json


def honest(images: np.ndarray, **record: Any) -> Drawn:
    """A set without copies: no source, no transform."""
    n = len(images)
    return Drawn(images, np.zeros(n, bool), [""] * n, [""] * n, record=record)


def model(ctx: Ctx, owner: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """The owner's model for run seed ``seed``, trained on first use; its record (seed, training seconds)."""
    key = (owner, seed)
    fresh = key not in ctx.models
    if fresh:
        p, mseed, start = ctx.params[owner], derived_seed(owner, seed), time.perf_counter()
        if owner == "dcgan":
            fitted: Any = zm.train_dcgan(ctx.train_f, mseed, p["epochs"], p["z_dim"], p["width"], p["lr"], p["batch"])
        elif owner == "mlp_gan":
            fitted = zm.train_mlp_gan(ctx.train_f, mseed, *(p[k] for k in ("epochs", "z_dim", "width", "lr", "batch")))
        elif owner == "pca_gmm":
            fitted = zm.fit_pca_gmm(ctx.train_f, mseed, p["pca_dim"], p["components"])
        elif owner == "small_subset_vae":
            rows = np.sort(np.random.default_rng(mseed).choice(len(ctx.train), p["subset"], replace=False))
            vae = zm.train_vae(
                ctx.train_f[rows], mseed, *(p[k] for k in ("epochs", "z_dim", "width", "lr")), p["batch"], p["beta"]
            )
            fitted = (vae, rows)
        else:
            f = ctx.train_f
            fitted = zm.train_vae(f, mseed, *(p[k] for k in ("epochs", "z_dim", "width", "lr", "batch", "beta")))
        ctx.models[key] = (fitted, time.perf_counter() - start)
    fitted, seconds = ctx.models[key]
    return fitted, {
        "model": owner,
        "model_seed": derived_seed(owner, seed),
        "train_s": round(seconds, 3),
        "trained_here": fresh,
    }


def nearest(train: np.ndarray, images: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-space nearest training row of each image (uint8 (n, 28, 28) both) and its L2 distance in [0, 1] units.

    Squared distances are sums of integer squares (exact in float64), so ties and values do not depend on BLAS.
    """
    t = train.reshape(len(train), -1).astype(np.float64)
    q = images.reshape(len(images), -1).astype(np.float64)
    t_sq = (t * t).sum(1)
    rows, dists = [], []
    for start in range(0, len(q), block):
        qb = q[start : start + block]
        d2 = t_sq[None, :] - 2.0 * qb @ t.T + (qb * qb).sum(1)[:, None]
        rows.append(d2.argmin(1))
        dists.append(np.sqrt(d2[np.arange(len(qb)), rows[-1]]) / 255.0)
    return np.concatenate(rows), np.concatenate(dists)


# ---- copy transforms -------------------------------------------------------------------------------------------
def apply_transform(img: np.ndarray, name: str) -> np.ndarray:
    """``img`` (28, 28) uint8 under ``name``: identity, hflip, shift_x+1 (content moves right by 1 px; the pixels
    shifted in are 0), shift_y-2 (up by 2), crop24_x1_y3 (the 24×24 crop at column 1, row 3, PIL-bilinear to 28×28)."""
    if name == "identity":
        return img.copy()
    if name == "hflip":
        return img[:, ::-1].copy()
    if m := re.fullmatch(r"shift_([xy])([+-]\d+)", name):
        axis, k = (1 if m[1] == "x" else 0), int(m[2])
        out = np.zeros_like(img)
        src = [slice(None)] * 2
        dst = [slice(None)] * 2
        src[axis], dst[axis] = (slice(0, -k), slice(k, None)) if k > 0 else (slice(-k, None), slice(0, k))
        out[tuple(dst)] = img[tuple(src)]
        return out
    if m := re.fullmatch(r"crop(\d+)_x(\d+)_y(\d+)", name):
        s, x, y = int(m[1]), int(m[2]), int(m[3])
        crop = Image.fromarray(img, mode="L").crop((x, y, x + s, y + s))
        return np.asarray(crop.resize(img.shape[::-1], Image.Resampling.BILINEAR))
    raise ValueError(f"unknown copy transform {name!r}")


def draw_transform(rng: np.random.Generator, p: dict[str, Any]) -> str:
    """A random transform name of ``p['families']`` with its parameters (shift ±1–2 px, crop 24–26 px anywhere)."""
    family = p["families"][rng.integers(len(p["families"]))]
    if family == "shift":
        axis, k = "xy"[rng.integers(2)], int(rng.choice(p["shift_px"])) * (1 if rng.integers(2) else -1)
        return f"shift_{axis}{k:+d}"
    if family == "crop":
        s = int(rng.integers(p["crop_px"][0], p["crop_px"][1] + 1))
        x, y = (int(v) for v in rng.integers(0, 28 - s + 1, size=2))
        return f"crop{s}_x{x}_y{y}"
    return str(family)


# ---- the kinds -------------------------------------------------------------------------------------------------
def draw_gan(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """dcgan: z ~ N(0, I). collapsed_gan: the same generator fed only ``modes`` latent codes plus small noise."""
    gen, rec = model(ctx, "dcgan", seed)
    sseed, p, z_dim = derived_seed(f"{kind}/sample", seed), ctx.params[kind], ctx.params["dcgan"]["z_dim"]
    noise = torch.Generator().manual_seed(sseed)
    if kind == "dcgan":
        return honest(
            zm.to_uint8(zm.sample_gan(gen, torch.randn(ctx.n_gen, z_dim, generator=noise))), sample_seed=sseed, **rec
        )
    codes = torch.randn(p["modes"], z_dim, generator=noise)
    mode = torch.randint(p["modes"], (ctx.n_gen,), generator=noise)
    z = codes[mode] + p["z_noise"] * torch.randn(ctx.n_gen, z_dim, generator=noise)
    out = honest(zm.to_uint8(zm.sample_gan(gen, z)), sample_seed=sseed, **rec)
    out.extra["mode"] = mode.tolist()
    return out


def draw_vae(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """vae / blurry_vae: decoded means of z ~ N(0, I)."""
    vae, rec = model(ctx, kind, seed)
    sseed = derived_seed(f"{kind}/sample", seed)
    z = torch.randn(ctx.n_gen, ctx.params[kind]["z_dim"], generator=torch.Generator().manual_seed(sseed))
    return honest(zm.to_uint8(zm.vae_means(vae, z)), sample_seed=sseed, **rec)


def draw_subset_vae(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """A VAE trained long on a small subset of T, sampled from the subset's aggregate posterior; truth by pixel NN."""
    (vae, rows), rec = model(ctx, kind, seed)
    sseed = derived_seed(f"{kind}/sample", seed)
    mu, sigma = zm.vae_posterior(vae, ctx.train_f[rows])
    noise = torch.Generator().manual_seed(sseed)
    j = torch.randint(len(rows), (ctx.n_gen,), generator=noise)
    z = mu[j] + sigma[j] * torch.randn(ctx.n_gen, mu.shape[1], generator=noise)
    images = zm.to_uint8(zm.vae_means(vae, z))
    nn_row, _ = nearest(ctx.train, images)
    in_subset = np.isin(nn_row, rows)
    names = [ctx.train_names[r] for r in nn_row]
    source = [name if c else "" for name, c in zip(names, in_subset, strict=True)]
    transform = ["vae_decoded_mean" if c else "" for c in in_subset]
    latent = [ctx.train_names[rows[i]] for i in j.tolist()]
    subset = "".join(ctx.train_names[r] + "\n" for r in rows)
    extra = {"nn_in_subset": in_subset.tolist(), "latent_source_file": latent}
    return Drawn(images, in_subset, source, transform, extra, {"subset.txt": subset}, {"sample_seed": sseed, **rec})


def draw_pca_gmm(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """pca_gmm: the mixture as fitted; dense_sampler: its top components only, shrunk around their means."""
    gmm, rec = model(ctx, "pca_gmm", seed)
    sseed, p = derived_seed(f"{kind}/sample", seed), ctx.params[kind]
    top, scale = (p["top_components"], p["scale"]) if kind == "dense_sampler" else (0, 1.0)
    images = zm.to_uint8(zm.sample_pca_gmm(gmm, ctx.n_gen, np.random.default_rng(sseed), top, scale))
    return honest(images, sample_seed=sseed, **rec)


def draw_mlp_gan(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """mlp_gan: an MLP generator (no convolution), z ~ N(0, I)."""
    gen, rec = model(ctx, "mlp_gan", seed)
    sseed = derived_seed(f"{kind}/sample", seed)
    z = torch.randn(ctx.n_gen, ctx.params["mlp_gan"]["z_dim"], generator=torch.Generator().manual_seed(sseed))
    return honest(zm.to_uint8(zm.sample_gan(gen, z)), sample_seed=sseed, **rec)


def draw_kde_wide(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """kde_wide: a wide Gaussian KDE in the PCA space of T (bandwidth × each component's std): its samples sit as far
    from T as held-out images do (zoo.json ``median_nn_l2``); the kernel centre is recorded, not a copy."""
    gmm, rec = model(ctx, "pca_gmm", seed)
    sseed = derived_seed(f"{kind}/sample", seed)
    rng = np.random.default_rng(sseed)
    images, rows = zm.sample_pca_kde(ctx.train_f, gmm.pca, ctx.n_gen, rng, ctx.params[kind]["bandwidth"])
    out = honest(zm.to_uint8(images), sample_seed=sseed, **rec)
    out.extra["kernel_train_file"] = [ctx.train_names[r] for r in rows]
    return out


def draw_heldout(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """Real held-out images (from heldout/, disjoint from T and P), drawn without replacement."""
    sseed = derived_seed(f"{kind}/sample", seed)
    rows = np.random.default_rng(sseed).choice(len(ctx.heldout), ctx.n_gen, replace=False)
    out = honest(ctx.heldout[rows], sample_seed=sseed, model=None, train_s=0.0)
    out.extra["heldout_file"] = [ctx.heldout_names[r] for r in rows]
    return out


def draw_copy_mix(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """Honest PCA-GMM samples with a fraction replaced by transformed copies of distinct training images."""
    gmm, rec = model(ctx, "pca_gmm", seed)
    sseed, p = derived_seed(f"{kind}/sample", seed), ctx.params[kind]
    rng = np.random.default_rng(sseed)
    images = zm.to_uint8(zm.sample_pca_gmm(gmm, ctx.n_gen, rng))
    n_copy = round(p["copy_fraction"] * ctx.n_gen)
    slots = np.sort(rng.choice(ctx.n_gen, n_copy, replace=False))
    rows = rng.choice(len(ctx.train), n_copy, replace=False)
    out = honest(images, sample_seed=sseed, **rec)
    for slot, row in zip(slots.tolist(), rows.tolist(), strict=True):
        name = draw_transform(rng, p)
        out.images[slot] = apply_transform(ctx.train[row], name)
        out.is_copy[slot], out.source[slot], out.transform[slot] = True, ctx.train_names[row], name
    return out


def draw_kde(ctx: Ctx, kind: str, seed: int) -> Drawn:
    """Pixel-noise KDE: a random training image (with replacement) + N(0, sigma²) per pixel, clipped and rounded."""
    sseed, p = derived_seed(f"{kind}/sample", seed), ctx.params[kind]
    rng = np.random.default_rng(sseed)
    rows = rng.choice(len(ctx.train), ctx.n_gen, replace=p["replace"])
    images = zm.to_uint8(ctx.train_f[rows] + p["sigma"] * rng.standard_normal((ctx.n_gen, 28, 28)))
    names = [ctx.train_names[r] for r in rows]
    return Drawn(
        images,
        np.ones(ctx.n_gen, bool),
        names,
        [f"noise_sigma{p['sigma']}"] * ctx.n_gen,
        record={"sample_seed": sseed, "model": None, "train_s": 0.0},
    )


DRAW = {
    "dcgan": draw_gan,
    "vae": draw_vae,
    "pca_gmm": draw_pca_gmm,
    "heldout": draw_heldout,
    "mlp_gan": draw_mlp_gan,
    "kde_wide": draw_kde_wide,
    "collapsed_gan": draw_gan,
    "blurry_vae": draw_vae,
    "dense_sampler": draw_pca_gmm,
    "copy_mix": draw_copy_mix,
    "small_subset_vae": draw_subset_vae,
    "kde": draw_kde,
}
