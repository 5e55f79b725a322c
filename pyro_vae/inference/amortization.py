"""The amortization gap in one call: per-point Gaussians against the amortized guide.

An amortized guide shares one encoder across all inputs. Giving every data point its
own free Gaussian Normal(mu_i, diag(sigma_i^2)), started at the guide's ``encode(x)`` and
fitted to that point's ELBO with the decoder and prior fixed, shows what the sharing
costs: the **amortization gap**, refined ELBO minus amortized ELBO per data point
(Cremer, Li and Duvenaud, 2018).

:func:`refine_per_point` returns both ELBOs and the refined parameters as tensors, one
row per data point. The fit itself is :func:`pyro_vae.inference.gaps.fit_local_gaussians` and the
per-point ELBO :func:`pyro_vae.inference.gaps.gaussian_log_weights`, so there is one
implementation; :func:`pyro_vae.inference.gaps.inference_gaps` adds the importance-sampled
log p(x) and the approximation gap, as NumPy arrays for reports.

For a diagonal Normal guide the difference is exactly the amortization gap. For another
guide family (full covariance, low rank, flow) the per-point Gaussian is still
diagonal, started at that guide's location and marginal scales, so the difference
also contains the change of family and can be negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bounds import collect_log_weights, elbo_per_datum
from ..errors import ConfigError
from .gaps import fit_local_gaussians, frozen, gaussian_log_weights
from ..model.vae import VAE

__all__ = ["PerPointFit", "refine_per_point"]


@dataclass(frozen=True)
class PerPointFit:
    """What :func:`refine_per_point` returns; every tensor has one row per data point.

    Attributes:
        loc: Refined mu_i, shape ``(B, z_dim)``.
        scale: Refined sigma_i, shape ``(B, z_dim)``.
        elbo: ELBO of each point under its refined Gaussian, ``(B,)``, nats.
        amortized_elbo: ELBO of each point under the VAE's own guide, from as many
            draws, ``(B,)``, nats.
    """

    loc: torch.Tensor
    scale: torch.Tensor
    elbo: torch.Tensor
    amortized_elbo: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """The amortization gap per data point, ``elbo - amortized_elbo``, ``(B,)``."""
        return self.elbo - self.amortized_elbo


def refine_per_point(
    vae: VAE,
    x: torch.Tensor,
    steps: int = 500,
    lr: float = 0.05,
    num_particles: int = 16,
    *,
    eval_particles: int = 1000,
    seed: int = 0,
) -> PerPointFit:
    """Fit a free diagonal Gaussian to each data point of a trained VAE, model held fixed.

    Every point starts at the guide's ``vae.encode(x)`` and its own ELBO is maximized
    with Adam (:func:`pyro_vae.inference.gaps.fit_local_gaussians`); only the per-point means and
    scales change: the VAE's weights get neither an update nor a ``.grad``. Both ELBOs
    returned are then estimated with ``eval_particles`` draws per point. Every draw
    comes from a forked generator seeded with ``seed``, so the caller's random stream
    is untouched and repeated calls agree.

    Args:
        vae: A trained model; left unchanged (train/eval mode restored).
        x: Data ``(B, x_dim)`` as the model sees it: binarize it first for a
            likelihood that needs 0/1 data.
        steps: Adam steps.
        lr: Initial Adam learning rate (cosine decay to 0).
        num_particles: Draws per data point in each step's ELBO estimate.
        eval_particles: Draws per data point for the returned ELBOs.
        seed: Seed of every draw.

    Returns:
        A :class:`PerPointFit`: ``loc`` and ``scale`` ``(B, z_dim)``, ``elbo`` and
        ``amortized_elbo`` ``(B,)``; ``fit.gap`` is the amortization gap per point.

    Raises:
        ConfigError: ``steps``, ``lr`` or a particle count is not positive.
        DataError: ``x`` has the wrong shape or is outside the likelihood's support.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> fit = refine_per_point(vae, torch.ones(3, 6), steps=5, eval_particles=10)
        >>> fit.loc.shape, fit.elbo.shape, fit.gap.shape
        (torch.Size([3, 2]), torch.Size([3]), torch.Size([3]))
    """
    if eval_particles < 1:
        raise ConfigError(f"eval_particles must be >= 1, got {eval_particles}")
    vae.check_x(x)
    vae.likelihood.check_support(x)
    loc, scale = fit_local_gaussians(vae, x, steps=steps, particles=num_particles, lr=lr, seed=seed)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), frozen(vae), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 1)
        elbo = elbo_per_datum(gaussian_log_weights(vae, x, loc, scale, eval_particles))  # (B,)
        amortized = elbo_per_datum(collect_log_weights(vae, x, eval_particles))  # (B,)
    return PerPointFit(loc, scale, elbo, amortized)
