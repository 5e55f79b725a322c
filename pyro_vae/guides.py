"""Guides q(z|x): heads that turn encoder features into a distribution over z.

Interface (all a new guide needs): subclass :class:`Guide`, create every parameter in
``__init__``, and implement

- ``forward(h) -> Distribution`` with ``batch_shape == h.shape[:-1]`` and
  ``event_shape == (z_dim,)``, where ``h`` is the encoder's output;
- ``encode(h) -> (loc, scale)``, each of shape ``h.shape[:-1] + (z_dim,)``: for the
  diagonal Normal these are exactly the parameters mu(x), sigma(x) of q(z|x); for
  other families, the location and the per-dimension scale of their Gaussian part.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .nn import softplus_scale

__all__ = ["Guide", "DiagonalNormalGuide"]


class Guide(nn.Module):
    """Base class of amortized guide families q(z|x).

    Args:
        in_features: Size of the encoder's output.
        z_dim: Size of the latent vector.
    """

    def __init__(self, in_features: int, z_dim: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.z_dim = z_dim

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Return ``(loc, scale)`` for encoder features ``h``."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Return q(z|x) for encoder features ``h``."""
        raise NotImplementedError


class DiagonalNormalGuide(Guide):
    """q(z|x) = Normal(mu(x), diag(sigma(x)^2)), the classic amortized guide.

    Two linear maps of the encoder's features give mu(x) and, through softplus,
    sigma(x): one pair of vectors per input x. They are the parameters of that input's
    approximate posterior, not statistics of the data set.

    Example:
        >>> g = DiagonalNormalGuide(4, 2)
        >>> loc, scale = g.encode(torch.zeros(3, 4))
        >>> loc.shape, bool((scale > 0).all())
        (torch.Size([3, 2]), True)
        >>> g(torch.zeros(3, 4)).event_shape
        torch.Size([2])
    """

    def __init__(self, in_features: int, z_dim: int) -> None:
        super().__init__(in_features, z_dim)
        self.loc = nn.Linear(in_features, z_dim)
        self.raw_scale = nn.Linear(in_features, z_dim)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), softplus_scale(self.raw_scale(h))  # (B, z_dim) each

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.encode(h)
        return dist.Normal(loc, scale).to_event(1)
