"""Per-data-point log importance weights and the bounds built on them.

One function, :func:`log_weights`, runs the guide and the model under a vectorized
particle plate and returns ``log p(x, z_k) - log q(z_k | x)`` for every draw k and data
point. The ELBO is their mean over k; the importance-weighted bound (IWAE), an estimate
of log p(x) that tightens as K grows, is their log-mean-exp. The IWAE objective, the
evaluation and the posterior tools all use this one function.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .vae import VAE

__all__ = ["PARTICLE_PLATE", "log_weights", "elbo_per_datum", "iwae_per_datum"]

#: Name of the vectorized particle plate; it sits left of the data plate (dim -2).
PARTICLE_PLATE = "particles"


def _vectorize(fn: Callable, num_samples: int) -> Callable:
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def _sum_site_log_probs(trace: poutine.Trace, shape: torch.Size) -> torch.Tensor:
    total = torch.zeros(shape)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["fn"].log_prob(site["value"])
        if lp.shape != shape:
            raise ValueError(
                f"sample site {name!r} has log_prob shape {tuple(lp.shape)}, expected {tuple(shape)}: "
                "per-data-point weights need every sample site inside the data plate"
            )
        total = total.to(lp) + lp
    return total


def log_weights(vae: VAE, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    """Log importance weights ``log p(x, z_k) - log q(z_k | x)`` per draw and data point.

    The guide draws ``z_k`` (reparameterized, so gradients flow), the model is replayed
    on those draws, and every sample site's log-density is summed; no scaling (minibatch
    or beta) is applied, so these are the weights of the plain model.

    Args:
        vae: The model and guide.
        x: Data of shape ``(B, x_dim)``.
        num_samples: K, draws of z per data point (vectorized).

    Returns:
        Tensor of shape ``(K, B)``.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> log_weights(vae, torch.ones(3, 6), num_samples=5).shape
        torch.Size([5, 3])
    """
    vae.check_x(x)
    shape = torch.Size((num_samples, x.shape[0]))
    guide = _vectorize(vae.guide, num_samples)
    model = _vectorize(vae.model, num_samples)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return _sum_site_log_probs(model_trace, shape) - _sum_site_log_probs(guide_trace, shape)


def elbo_per_datum(log_w: torch.Tensor) -> torch.Tensor:
    """Monte Carlo ELBO per data point from ``(K, B)`` log-weights: their mean over K."""
    return log_w.mean(0)


def iwae_per_datum(log_w: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound per data point, ``log (1/K) sum_k w_k``, from ``(K, B)``.

    At least the ELBO on the same draws (Jensen), and a consistent estimate of log p(x)
    as K grows.
    """
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
