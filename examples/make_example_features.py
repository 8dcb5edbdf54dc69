"""Make the small, seeded example feature files in ``examples/features/`` (run from the repository root).

The "embeddings" are synthetic, not from a real encoder: a 12-d latent drawn from a mixture of 8 Gaussian
clusters is mapped through three fixed random layers (linear, then tanh) to 32-d features per layer, like the
residual stream of a small network. Sets (rows × 32 dims × 3 layers, float16):

- ``train.npz`` (4,000): the training set T.   ``test.npz`` (1,000): fresh draws, the held-out set P.
- ``copier.npz`` (500): training latents plus small noise (σ = 0.05): memorization, C_T ≪ 0.
- ``fresh.npz`` (500): fresh draws from the training distribution: C_T ≈ 0.
- ``underfit.npz`` (500): draws with 1.6× wider clusters, farther from T than P is: C_T > 0.

Usage: ``python examples/make_example_features.py [--out examples/features] [--seed 0]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LATENT, DIM, LAYERS, CLUSTERS = 12, 32, 3, 8
SIZES = {"train": 4000, "test": 1000, "copier": 500, "fresh": 500, "underfit": 500}


def encoder(rng: np.random.Generator) -> list[np.ndarray]:
    """Fixed random layer weights: (LATENT, DIM) then (DIM, DIM) twice."""
    dims = [LATENT] + [DIM] * LAYERS
    return [rng.normal(size=(dims[i], dims[i + 1])) / np.sqrt(dims[i]) for i in range(LAYERS)]


def embed(latent: np.ndarray, weights: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-layer features ``{"layer_ℓ": (n, DIM) float16}`` of latents (n, LATENT)."""
    out, h = {}, latent
    for i, w in enumerate(weights, start=1):
        h = h @ w if i == 1 else np.tanh(h @ w) * 2.0
        out[f"layer_{i}"] = h.astype(np.float16)
    return out


def draw(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = 1.0) -> np.ndarray:
    """n latents from the cluster mixture, within-cluster std ``spread``."""
    labels = rng.integers(0, len(centres), size=n)
    return centres[labels] + spread * rng.normal(size=(n, LATENT))


def make(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write the five example files under ``out`` and return their paths."""
    rng = np.random.default_rng(seed)
    weights = encoder(rng)
    centres = rng.normal(scale=3.0, size=(CLUSTERS, LATENT))
    train = draw(rng, centres, SIZES["train"])
    copied = train[rng.choice(len(train), SIZES["copier"], replace=False)]
    latents = {
        "train": train,
        "test": draw(rng, centres, SIZES["test"]),
        "copier": copied + 0.05 * rng.normal(size=copied.shape),
        "fresh": draw(rng, centres, SIZES["fresh"]),
        "underfit": draw(rng, centres, SIZES["underfit"], spread=1.6),
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, z in latents.items():
        paths[name] = out / f"{name}.npz"
        np.savez_compressed(paths[name], **embed(z, weights))
    return paths


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "features"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in make(Path(args.out), args.seed).items():
        print(f"{name:>9}: {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
