"""Per-data-point log importance weights and the bounds built on them.

One function, :func:`log_weights`, runs the guide and the model under a vectorized
particle plate and returns ``log p(x, z_k) - log q(z_k | x)`` for every draw k and data
point. The ELBO is their mean over k; the importance-weighted bound (IWAE), an estimate
of log p(x) that tightens as K grows, is their log-mean-exp. The IWAE objective, the
evaluation and the posterior tools all use this one function.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .vae import VAE

__all__ = [
    "PARTICLE_PLATE",
    "LogWeightTerms",
    "log_weights",
    "log_weight_terms",
    "elbo_per_datum",
    "iwae_per_datum",
    "logmeanexp_chunks",
]

#: Name of the vectorized particle plate; it sits left of the data plate (dim -2).
PARTICLE_PLATE = "particles"


def _vectorize(fn: Callable, num_samples: int) -> Callable:
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def _sum_site_log_probs(
    trace: poutine.Trace, shape: torch.Size, keep: Callable[[dict], bool] | None = None
) -> torch.Tensor:
    total = torch.zeros(shape)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if keep is not None and not keep(site):
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
    model_trace, guide_trace, shape = _traces(vae, x, num_samples)
    return _sum_site_log_probs(model_trace, shape) - _sum_site_log_probs(guide_trace, shape)


def _traces(vae: VAE, x: torch.Tensor, num_samples: int) -> tuple[poutine.Trace, poutine.Trace, torch.Size]:
    vae.check_x(x)
    shape = torch.Size((num_samples, x.shape[0]))
    guide = _vectorize(vae.guide, num_samples)
    model = _vectorize(vae.model, num_samples)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return model_trace, guide_trace, shape


class LogWeightTerms(NamedTuple):
    """The two parts of the log-weights: ``log_weights == reconstruction + latent``.

    Attributes:
        reconstruction: ``log p(x | z_k)``, the observed sites of the model, ``(K, B)``.
        latent: ``log p(z_k) - log q(z_k | x)``, the model's latent sites minus the
            guide's, ``(K, B)``; minus its mean over k estimates KL(q(z|x) || p(z)).
    """

    reconstruction: torch.Tensor
    latent: torch.Tensor


def log_weight_terms(vae: VAE, x: torch.Tensor, num_samples: int = 1) -> LogWeightTerms:
    """:func:`log_weights` split into the reconstruction and the latent (KL) part, same draws.

    Their means over k are the two terms of the ELBO: ``E_q[log p(x|z)]`` and
    ``-KL(q(z|x) || p(z))``, estimated by Monte Carlo, so that any prior and guide
    (a VampPrior, a flow) works.

    Args:
        vae: The model and guide.
        x: Data of shape ``(B, x_dim)``.
        num_samples: K, draws of z per data point (vectorized).

    Returns:
        :class:`LogWeightTerms`, each of shape ``(K, B)``.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> terms = log_weight_terms(vae, torch.ones(3, 6), num_samples=5)
        >>> terms.reconstruction.shape, terms.latent.shape
        (torch.Size([5, 3]), torch.Size([5, 3]))
    """
    model_trace, guide_trace, shape = _traces(vae, x, num_samples)
    reconstruction = _sum_site_log_probs(model_trace, shape, keep=lambda site: site["is_observed"])  # (K, B)
    prior = _sum_site_log_probs(model_trace, shape, keep=lambda site: not site["is_observed"])  # (K, B)
    return LogWeightTerms(reconstruction, prior - _sum_site_log_probs(guide_trace, shape))


def elbo_per_datum(log_w: torch.Tensor) -> torch.Tensor:
    """Monte Carlo ELBO per data point from ``(K, B)`` log-weights: their mean over K."""
    return log_w.mean(0)


def iwae_per_datum(log_w: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound per data point, ``log (1/K) sum_k w_k``, from ``(K, B)``.

    At least the ELBO on the same draws (Jensen), and a consistent estimate of log p(x)
    as K grows.
    """
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def logmeanexp_chunks(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """``log (1/K) sum_k exp(a_k)`` over K split into chunks, in memory of one chunk.

    The IWAE bound of :func:`iwae_per_datum` for K too large to hold at once: feed it
    the ``(K_i, B)`` log-weights of successive chunks of draws (``sum_i K_i = K``).

    Args:
        chunks: Tensors of shape ``(K_i, B)``, the same ``B`` for all.

    Returns:
        Tensor of shape ``(B,)``: the same value as ``iwae_per_datum(torch.cat(chunks))``
        up to float rounding.

    Raises:
        ValueError: No chunk was given.

    Example:
        >>> a = torch.randn(10, 3)
        >>> torch.allclose(logmeanexp_chunks(a.split(4)), iwae_per_datum(a))
        True
    """
    total: torch.Tensor | None = None
    count = 0
    for chunk in chunks:
        lse = torch.logsumexp(chunk, 0)  # (B,)
        total = lse if total is None else torch.logaddexp(total, lse)
        count += chunk.shape[0]
    if total is None:
        raise ValueError("logmeanexp_chunks got no chunk; pass at least one (K_i, B) tensor")
    return total - math.log(count)
