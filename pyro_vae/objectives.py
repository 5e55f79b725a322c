"""Training objectives: each returns a differentiable loss for one minibatch.

Interface: subclass :class:`Objective` and implement ``loss(vae, x, num_data, beta)``,
returning a scalar whose gradient is the negative full-data objective's (minibatch
estimate, scaled by ``num_data / B``).
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO

from .vae import VAE

__all__ = ["Objective", "TraceELBO"]


class Objective:
    """Base class of training objectives."""

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:  # pragma: no cover
        """Differentiable negative objective for the minibatch ``x``."""
        raise NotImplementedError


class TraceELBO(Objective):
    """The ELBO estimated by Pyro's ``Trace_ELBO`` with reparameterized draws.

    Args:
        particles: Draws of z per data point, vectorized.
    """

    def __init__(self, particles: int = 1) -> None:
        self.particles = particles
        self._elbo = Trace_ELBO(
            num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
        )

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        return self._elbo.differentiable_loss(vae.model, vae.guide, x, num_data, beta)
