"""Training objectives: each returns a differentiable loss for one minibatch.

Interface: subclass :class:`Objective` and implement ``loss(vae, x, num_data, beta)``,
returning a scalar whose gradient is the negative full-data objective's (minibatch
estimate, scaled by ``num_data / B``). Two optional hooks: the class attribute
``supports_beta`` (``False`` when the objective cannot weight the KL term, so that
``beta != 1`` and KL warm-up are refused before training) and ``check(vae)``, which
raises :class:`~pyro_vae.errors.ConfigError` when the objective cannot train that model.

The objectives here:

- :class:`TraceELBO`: the ELBO with Monte Carlo estimates of every term.
- :class:`TraceMeanFieldELBO`: the ELBO with the KL term in closed form (lower
  variance), for guide/prior pairs where torch has that KL.
- :class:`IWAE`: the importance-weighted bound of Burda et al. (2016), tighter than
  the ELBO as the number of particles K grows.
"""

from __future__ import annotations

import weakref

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Distribution, Independent, kl_divergence

from .bounds import iwae_per_datum, log_weights
from .errors import ConfigError
from .vae import VAE

__all__ = ["Objective", "TraceELBO", "TraceMeanFieldELBO", "IWAE"]


class Objective:
    """Base class of training objectives."""

    #: The objective can weight the latent (KL) term by ``beta`` (beta-VAE, warm-up).
    supports_beta: bool = True

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:  # pragma: no cover
        """Differentiable negative objective for the minibatch ``x``."""
        raise NotImplementedError

    def check(self, vae: VAE) -> None:
        """Raise :class:`ConfigError` if this objective cannot train ``vae`` (default: it can)."""


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


def _describe(d: Distribution) -> str:
    if isinstance(d, Independent):
        return f"Independent({_describe(d.base_dist)})"
    return type(d).__name__


class TraceMeanFieldELBO(Objective):
    """The ELBO with the KL term KL(q(z|x) || p(z)) in closed form: Pyro's ``TraceMeanField_ELBO``.

    Same expectation as :class:`TraceELBO`, lower variance. Pyro silently falls back
    to a Monte Carlo KL when torch has no closed form; this class refuses instead
    (:meth:`check`), so that ``--elbo meanfield`` always means the analytic KL. Which
    pairs have one is asked of ``torch.distributions.kl_divergence`` on the model's
    own distributions: a diagonal Normal guide with a (learned) Normal prior has, a
    mixture, VampPrior or flow prior, or a full-covariance, low-rank or flow guide
    against a diagonal prior, has not.

    Args:
        particles: Draws of z per data point for the reconstruction term, vectorized.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> TraceMeanFieldELBO().loss(vae, torch.ones(3, 6), num_data=3).shape
        torch.Size([])
    """

    def __init__(self, particles: int = 1) -> None:
        self.particles = particles
        self._elbo = TraceMeanField_ELBO(
            num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
        )
        # Models already checked, so the check runs once per model, not per step.
        self._checked: weakref.WeakSet[VAE] = weakref.WeakSet()

    def check(self, vae: VAE) -> None:
        """Raise :class:`ConfigError` unless torch has KL(q || p) in closed form for ``vae``.

        Raises:
            ConfigError: The guide's and the prior's distributions have no analytic KL.
        """
        device = next(vae.parameters()).device
        with torch.no_grad():
            q = vae.posterior(torch.zeros(1, vae.x_dim, device=device))  # batch (1,)
            p = vae.prior()
            try:
                # Expanded as the data plate expands it in the model.
                kl_divergence(q, p.expand(q.batch_shape))
            except NotImplementedError:
                raise ConfigError(
                    f"the guide's {_describe(q)} and the prior's {_describe(p)} have no analytic KL "
                    "divergence, which the mean-field ELBO needs; use --elbo trace"
                ) from None
        self._checked.add(vae)

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        if vae not in self._checked:
            self.check(vae)
        return self._elbo.differentiable_loss(vae.model, vae.guide, x, num_data, beta)


class IWAE(Objective):
    """The importance-weighted bound: ``log (1/K) sum_k p(x, z_k) / q(z_k|x)`` per data point.

    Computed from :func:`pyro_vae.bounds.log_weights` with K vectorized,
    reparameterized draws; the loss is the negative sum over the minibatch, scaled by
    ``num_data / B``. With K = 1 it is the ELBO; it tightens towards log p(x) as K
    grows (Burda et al., 2016). It has the value of Pyro's ``RenyiELBO(alpha=0)``,
    which in Pyro 1.9 has no ``differentiable_loss``.

    The bound is of the unweighted model, so it takes no KL weight:
    ``supports_beta`` is ``False`` and ``beta != 1`` is an error.

    Args:
        particles: K, draws of z per data point.

    Raises:
        ConfigError: ``particles < 1``.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> IWAE(particles=5).loss(vae, torch.ones(3, 6), num_data=3).shape
        torch.Size([])
    """

    supports_beta = False

    def __init__(self, particles: int = 1) -> None:
        if particles < 1:
            raise ConfigError(f"--particles must be >= 1 for the IWAE bound, got {particles}")
        self.particles = particles

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        if beta != 1.0:
            raise ConfigError(
                f"the IWAE bound has no KL weight, got beta {beta}; use --beta 1 --kl-warmup 0 or --elbo trace"
            )
        log_w = log_weights(vae, x, self.particles)  # (K, B)
        return -iwae_per_datum(log_w).sum() * (num_data / x.shape[0])
