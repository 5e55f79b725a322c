"""A VAE with two stochastic layers: z2 -> z1 -> x (Burda et al. 2015's architecture).

Generative model: z2 ~ p(z2) (the configured prior, of size ``top_dim``),
z1 ~ p(z1 | z2) = Normal(mu(z2), sigma(z2)), x ~ p(x | z1). Guide: q(z1 | x) (the
configured guide family, on the encoder's features) and q(z2 | z1) = Normal(mu(z1),
sigma(z1)). Burda et al. (2015) report MNIST test log p(x) of -85.33 (VAE) and -82.90
(IWAE, k = 50) for 784-100-100-(z1 100)-50-50-(z2 50) with tanh.

The sites are ``z`` (z1, the layer next to x: what ``encode`` and ``posterior`` return)
and ``z2``; the package's bounds sum every site's log-density, so the ELBO, the IWAE
bound and log p(x) estimates cover both layers.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import nn

from .guides import DiagonalNormalGuide, Guide
from .likelihoods import Likelihood
from .nn import size_of
from .priors import Prior
from .vae import LATENT_SITE, OBS_SITE, VAE, program

__all__ = ["TOP_SITE", "HierarchicalVAE"]

#: Name of the top latent site (z2).
TOP_SITE = "z2"


class HierarchicalVAE(VAE):
    """z2 -> z1 -> x, with q(z1 | x) q(z2 | z1).

    Args:
        encoder: Network x -> features (for q(z1 | x)).
        decoder: Network z1 -> features (for p(x | z1)).
        likelihood: Head of p(x | z1).
        guide: Head of q(z1 | x), any guide family, of size ``z_dim``.
        prior: p(z2), of size ``top_dim``.
        up: Network z1 -> features, for q(z2 | z1) (``out_features`` attribute).
        down: Network z2 -> features, for p(z1 | z2).
        z_dim: Size of z1.
        top_dim: Size of z2.
        name: Prefix in Pyro's global param store.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=3, hidden=(8,), top_dim=2, top_hidden=(4,)))
        >>> type(vae).__name__, vae.encode(torch.rand(5, 6))[0].shape
        ('HierarchicalVAE', torch.Size([5, 3]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        guide: Guide,
        prior: Prior,
        up: nn.Module,
        down: nn.Module,
        *,
        z_dim: int,
        top_dim: int,
        name: str | None = None,
    ) -> None:
        super().__init__(encoder, decoder, likelihood, guide=guide, z_dim=z_dim, name=name)
        if prior.z_dim != top_dim:
            raise ValueError(f"the prior is p(z2): its z_dim {prior.z_dim} must be top_dim {top_dim}")
        self.prior = prior  # over z2
        self.top_dim = top_dim
        self.up = up
        self.down = down
        self.top_guide = DiagonalNormalGuide(size_of(up), top_dim)  # q(z2 | z1)
        self.middle = DiagonalNormalGuide(size_of(down), z_dim)  # p(z1 | z2): the same Gaussian head

    @program
    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
        *,
        num_points: int | None = None,
    ) -> torch.Tensor:
        """p(z2) p(z1 | z2) p(x | z1) for a batch ``x``; ``beta`` weighs both latent sites."""
        x = self._flat(x)
        self._features(y, 0)  # refuses a y: this VAE is not conditional
        pz2 = self.prior()
        with self._data_plate(x, num_data, num_points):
            with poutine.scale(scale=beta):
                z2 = pyro.sample(TOP_SITE, pz2)
                z1 = pyro.sample(LATENT_SITE, self.middle(self.down(z2)))
            pyro.sample(OBS_SITE, self.likelihood(self.decoder(z1)), obs=x)
        return z1

    @program
    def guide(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
        *,
        num_points: int | None = None,
    ) -> torch.Tensor:
        """q(z1 | x) q(z2 | z1)."""
        x = self._guide_data(x, "q(z1, z2 | x)")
        qz1 = self.posterior(x, y)
        with self._data_plate(x, num_data, num_points):
            with poutine.scale(scale=beta):
                z1 = pyro.sample(LATENT_SITE, qz1)
                pyro.sample(TOP_SITE, self.top_guide(self.up(z1)))
        return z1

    def sample_latent(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """z1 drawn from the model: z2 ~ p(z2), then z1 ~ p(z1 | z2)."""
        z2 = self.prior().sample(torch.Size(sample_shape))
        return self.middle(self.down(z2)).sample()
