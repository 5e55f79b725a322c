"""The VAE as a Pyro program: ``model`` (prior and decoder) and ``guide`` (encoder).

``model(x)`` samples ``z ~ p(z)`` inside a plate over the data points and observes
``x ~ p(x | decoder(z))``; ``guide(x)`` samples ``z ~ q(z | encoder(x))`` at the same
site. These two methods are the only places that call ``pyro.sample``; everything else
(bounds, reconstruction, inspection) reaches the components through ``encode``,
``posterior`` and ``decode``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import nn

from .errors import DataError
from .guides import DiagonalNormalGuide, Guide
from .likelihoods import Likelihood
from .priors import Prior, StandardNormalPrior

__all__ = ["VAE", "DATA_PLATE", "LATENT_SITE", "OBS_SITE"]

#: Name of the plate over data points, shared by model and guide.
DATA_PLATE = "data"
#: Name of the latent sample site, shared by model and guide.
LATENT_SITE = "z"
#: Name of the observed sample site in the model.
OBS_SITE = "x"


class VAE(PyroModule):
    """A variational autoencoder composed of five parts.

    Args:
        encoder: Network x -> features, with an ``out_features`` attribute
            (e.g. :class:`~pyro_vae.nn.MLP`).
        decoder: Network z -> features, with an ``out_features`` attribute.
        likelihood: Head turning decoder features into p(x|z)
            (:class:`~pyro_vae.likelihoods.Likelihood`).
        prior: p(z) (:class:`~pyro_vae.priors.Prior`); default Normal(0, I).
        guide: Head turning encoder features into q(z|x)
            (:class:`~pyro_vae.guides.Guide`); default diagonal Normal. Stored as
            ``self.variational`` because ``self.guide`` is the Pyro guide method.

    Example:
        >>> from pyro_vae.nn import MLP
        >>> from pyro_vae.likelihoods import BernoulliLikelihood
        >>> vae = VAE(MLP(6, [4]), MLP(2, [4]), BernoulliLikelihood(4, 6), z_dim=2)
        >>> loc, scale = vae.encode(torch.rand(3, 6))
        >>> loc.shape, scale.shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        prior: Prior | None = None,
        guide: Guide | None = None,
        *,
        z_dim: int | None = None,
    ) -> None:
        super().__init__()
        if z_dim is None:
            if prior is None:
                raise ValueError("pass z_dim, or a prior that knows its z_dim")
            z_dim = prior.z_dim
        self.z_dim = z_dim
        self.x_dim = likelihood.x_dim
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior if prior is not None else StandardNormalPrior(z_dim)
        self.variational = guide if guide is not None else DiagonalNormalGuide(encoder.out_features, z_dim)
        if self.prior.z_dim != z_dim or self.variational.z_dim != z_dim:
            raise ValueError(
                f"prior z_dim {self.prior.z_dim} and guide z_dim {self.variational.z_dim} must both be {z_dim}"
            )

    # ----------------------------------------------------------------- Pyro program
    @pyro_method
    def model(self, x: torch.Tensor, num_data: int | None = None, beta: float = 1.0) -> torch.Tensor:
        """The generative model p(z) p(x|z) for a batch ``x`` of shape ``(B, x_dim)``.

        Args:
            x: Observed data, one row per data point.
            num_data: Size of the full data set; the plate scales the log-density by
                ``num_data / B`` so that a minibatch estimates the full-data objective.
            beta: Weight of the latent site (``beta != 1`` gives a beta-VAE).

        Returns:
            The sampled latent ``z`` of shape ``(B, z_dim)`` (``(K, B, z_dim)`` under a
            vectorized particle plate).
        """
        pz = self.prior()
        with self._data_plate(x, num_data):
            with poutine.scale(scale=beta):
                z = pyro.sample(LATENT_SITE, pz)
            pyro.sample(OBS_SITE, self.likelihood(self.decoder(z)), obs=x)
        return z

    @pyro_method
    def guide(self, x: torch.Tensor, num_data: int | None = None, beta: float = 1.0) -> torch.Tensor:
        """The amortized guide q(z|x) for a batch ``x`` of shape ``(B, x_dim)``.

        Takes the same arguments as :meth:`model` and samples the same site ``z``.
        """
        qz = self.posterior(x)
        with self._data_plate(x, num_data):
            with poutine.scale(scale=beta):
                return pyro.sample(LATENT_SITE, qz)

    def _data_plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        batch = x.shape[0]
        if num_data is None or num_data == batch:
            return pyro.plate(DATA_PLATE, batch, dim=-1)
        # The rows are already the minibatch: pass them as the subsample so the plate
        # scales by num_data / B without drawing (and ignoring) random indices.
        return pyro.plate(DATA_PLATE, num_data, subsample=torch.arange(batch, device=x.device), dim=-1)

    # ------------------------------------------------------------- the components
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(x) and sigma(x): the exact parameters the guide uses, one row per input.

        Args:
            x: Data of shape ``(B, x_dim)``.

        Returns:
            ``(loc, scale)``, each of shape ``(B, z_dim)``.
        """
        self.check_x(x)
        return self.variational.encode(self.encoder(x))

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x): batch shape ``(B,)``, event shape ``(z_dim,)``."""
        self.check_x(x)
        return self.variational(self.encoder(x))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z): batch shape ``z.shape[:-1]``, event shape ``(x_dim,)``; ``.mean`` gives
        the expected reconstruction."""
        if z.shape[-1] != self.z_dim:
            raise DataError(f"expected z with {self.z_dim} latent dimensions, got shape {tuple(z.shape)}")
        return self.likelihood(self.decoder(z))

    def check_x(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` if ``x`` has the wrong shape for this model."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"expected x as a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor")
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise DataError(
                f"expected x of shape (batch, {self.x_dim}), got {tuple(x.shape)}: this model has "
                f"{self.x_dim} input features; pass data with that many columns or train a new model"
            )
