"""The small CPU generators of the detection zoo (``scripts/make_zoo.py``): a DCGAN, an MLP GAN, a VAE, a PCA Gaussian
mixture and a kernel density estimate in its PCA space.

Images are float32 arrays in [0, 1] of shape ``(n, 28, 28)`` here; ``to_uint8`` rounds them for writing. Every
function takes its seed explicitly: a model is initialised from ``torch.manual_seed(seed)`` and trained on batches
drawn by ``np.random.default_rng(seed)``; samples come from a ``torch.Generator`` / numpy generator seeded by the
caller, so a (kind, seed) pair gives the same images on every run with the same ``--threads``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from torch import nn
from torch.nn import functional as F


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 grey levels (clipped, rounded)."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def batches(n: int, batch: int, epochs: int, rng: np.random.Generator):
    """Row indices of each minibatch: ``epochs`` seeded permutations of ``range(n)`` cut into ``batch`` rows."""
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            yield torch.from_numpy(order[start : start + batch])


# ---- DCGAN -----------------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z ``(n, z_dim)`` → image ``(n, 1, 28, 28)`` in [0, 1]: fc to 7×7, two stride-2 transposed convolutions."""

    def __init__(self, z_dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(z_dim, 2 * width * 49), nn.BatchNorm1d(2 * width * 49), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(z).view(-1, 2 * self.width, 7, 7))


def discriminator(width: int) -> nn.Module:
    """image ``(n, 1, 28, 28)`` → logit ``(n, 1)``: two stride-2 convolutions and a linear layer."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        nn.BatchNorm2d(2 * width),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(2 * width * 49, 1),
    )


def train_gan(gen: nn.Module, disc: nn.Module, images: np.ndarray, seed: int, epochs: int, z_dim: int, lr: float,
              batch: int) -> nn.Module:  # fmt: skip
    """Train ``gen`` against ``disc`` (non-saturating BCE loss, Adam β1 = 0.5) on ``images`` (n, 28, 28) in [0, 1];
    the generator, in eval mode."""
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    x_all = torch.from_numpy(images[:, None].astype(np.float32))
    noise = torch.Generator().manual_seed(seed)
    for idx in batches(len(images), batch, epochs, np.random.default_rng(seed)):
        real = x_all[idx]
        fake = gen(torch.randn(len(idx), z_dim, generator=noise))
        ones, zeros = torch.ones(len(idx), 1), torch.zeros(len(idx), 1)
        loss_d = F.binary_cross_entropy_with_logits(disc(real), ones)
        loss_d = loss_d + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(disc(fake), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return gen.eval()


def train_dcgan(images: np.ndarray, seed: int, epochs: int, z_dim: int, width: int, lr: float, batch: int):
    """A DCGAN on ``images`` (n, 28, 28) in [0, 1] (:func:`train_gan`); the generator."""
    torch.manual_seed(seed)
    return train_gan(Generator(z_dim, width), discriminator(width), images, seed, epochs, z_dim, lr, batch)


@torch.no_grad()
def sample_gan(gen: Generator, z: torch.Tensor) -> np.ndarray:
    """Generator outputs for latent codes ``z`` (n, z_dim), as (n, 28, 28) floats in [0, 1]."""
    return gen(z)[:, 0].numpy()


# ---- MLP GAN ---------------------------------------------------------------------------------------------------
def mlp_generator(z_dim: int, width: int) -> nn.Module:
    """z ``(n, z_dim)`` → image ``(n, 1, 28, 28)`` in [0, 1]: two hidden layers (width, 2·width), no convolution."""
    return nn.Sequential(
        nn.Linear(z_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, 2 * width), nn.BatchNorm1d(2 * width),
        nn.LeakyReLU(0.2), nn.Linear(2 * width, 784), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)),
    )  # fmt: skip


def mlp_discriminator(width: int) -> nn.Module:
    """image ``(n, 1, 28, 28)`` → logit ``(n, 1)``: two hidden layers (2·width, width)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 2 * width), nn.LeakyReLU(0.2), nn.Linear(2 * width, width), nn.LeakyReLU(0.2),
        nn.Linear(width, 1),
    )  # fmt: skip


def train_mlp_gan(images: np.ndarray, seed: int, epochs: int, z_dim: int, width: int, lr: float, batch: int):
    """An MLP GAN on ``images`` (n, 28, 28) in [0, 1] (:func:`train_gan`); the generator."""
    torch.manual_seed(seed)
    return train_gan(mlp_generator(z_dim, width), mlp_discriminator(width), images, seed, epochs, z_dim, lr, batch)


# ---- VAE -------------------------------------------------------------------------------------------------------
class VAE(nn.Module):
    """Convolutional VAE: 28×28 → two stride-2 convolutions → (μ, log σ²) of ``z_dim``; Bernoulli decoder (logits)."""

    def __init__(self, z_dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.enc = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 49, 2 * z_dim),
        )
        self.fc = nn.Sequential(nn.Linear(z_dim, 2 * width * 49), nn.ReLU())
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, 1, 4, 2, 1)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(self.fc(z).view(-1, 2 * self.width, 7, 7))


def train_vae(images: np.ndarray, seed: int, epochs: int, z_dim: int, width: int, lr: float, batch: int, beta: float):
    """A VAE on ``images`` (n, 28, 28) in [0, 1]: loss = BCE(x, decoder(z)) + β·KL(q(z|x) ‖ N(0, I)), summed."""
    torch.manual_seed(seed)
    vae = VAE(z_dim, width)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    x_all = torch.from_numpy(images[:, None].astype(np.float32))
    noise = torch.Generator().manual_seed(seed)
    for idx in batches(len(images), batch, epochs, np.random.default_rng(seed)):
        x = x_all[idx]
        mu, logvar = vae.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise)
        rec = F.binary_cross_entropy_with_logits(vae.decode_logits(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (rec + beta * kl) / len(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae.eval()


@torch.no_grad()
def vae_means(vae: VAE, z: torch.Tensor) -> np.ndarray:
    """Decoded means (sigmoid of the logits) for latent codes ``z`` (n, z_dim): (n, 28, 28) in [0, 1]."""
    return torch.sigmoid(vae.decode_logits(z))[:, 0].numpy()


@torch.no_grad()
def vae_posterior(vae: VAE, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """μ and σ of q(z|x) for ``images`` (n, 28, 28) in [0, 1]."""
    mu, logvar = vae.encode(torch.from_numpy(images[:, None].astype(np.float32)))
    return mu, torch.exp(0.5 * logvar)


# ---- PCA + Gaussian mixture ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PcaGmm:
    """A Gaussian mixture fitted by EM in a PCA space of the training images."""

    pca: PCA
    weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)
    chols: np.ndarray  # (k, d, d) Cholesky factors of the component covariances


def fit_pca_gmm(images: np.ndarray, seed: int, pca_dim: int, components: int) -> PcaGmm:
    """PCA to ``pca_dim`` (exact SVD) of ``images`` (n, 28, 28) in [0, 1], then a full-covariance GMM (k-means init)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    pca = PCA(n_components=pca_dim, svd_solver="full").fit(flat)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed, max_iter=200, reg_covar=1e-4)
    gmm.fit(pca.transform(flat))
    return PcaGmm(pca, gmm.weights_, gmm.means_, np.linalg.cholesky(gmm.covariances_))


def sample_pca_kde(
    images: np.ndarray, pca: PCA, n: int, rng: np.random.Generator, bandwidth: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images from a Gaussian KDE in the PCA space of ``images`` (n_T, 28, 28) in [0, 1]: a random training
    row's coordinates + N(0, (bandwidth·σ_k)²) on component k (σ_k: the training coordinates' std), mapped back and
    clipped. Returns the images (n, 28, 28) and the kernel centres (training rows, (n,))."""
    z = pca.transform(images.reshape(len(images), -1).astype(np.float64))
    rows = rng.integers(0, len(images), n)
    zz = z[rows] + bandwidth * z.std(0) * rng.standard_normal((n, z.shape[1]))
    return np.clip(pca.inverse_transform(zz), 0.0, 1.0).reshape(n, 28, 28).astype(np.float32), rows


def sample_pca_gmm(model: PcaGmm, n: int, rng: np.random.Generator, top: int = 0, scale: float = 1.0) -> np.ndarray:
    """``n`` images (n, 28, 28) in [0, 1]: component ~ weights, z = mean + scale·L·ε, mapped back and clipped.

    ``top`` > 0 keeps only the ``top`` highest-weight components (renormalised); ``scale`` < 1 shrinks every
    component around its mean (std × scale): both over-represent the densest regions.
    """
    weights = model.weights.copy()
    if top:
        weights[np.argsort(-weights, kind="stable")[top:]] = 0.0
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())
    eps = rng.standard_normal((n, model.means.shape[1]))
    z = model.means[comp] + scale * np.einsum("nij,nj->ni", model.chols[comp], eps)
    return np.clip(model.pca.inverse_transform(z), 0.0, 1.0).reshape(n, 28, 28).astype(np.float32)
