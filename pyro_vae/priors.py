"""Priors p(z): modules whose ``forward()`` returns a distribution over one z.

Interface (all a new prior needs): subclass :class:`Prior`, create every parameter in
``__init__``, and return from ``forward()`` a distribution with ``event_shape ==
(z_dim,)`` and empty ``batch_shape``. The model places it inside the data plate.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["Prior", "StandardNormalPrior"]


class Prior(nn.Module):
    """Base class of priors p(z).

    Args:
        z_dim: Size of the latent vector.
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """Return p(z), ``event_shape == (z_dim,)``."""
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """p(z) = Normal(0, I), the prior of the classic VAE.

    Example:
        >>> p = StandardNormalPrior(2)()
        >>> p.event_shape, p.batch_shape
        (torch.Size([2]), torch.Size([]))
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        # Buffers, not constants, so that .to(device) moves them with the model.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
