"""Held-out evaluation: ELBO, importance-sampled log p(x), its two terms, active units.

For every data point :func:`evaluate` draws K latents from the guide and computes, on
those same draws (from :func:`pyro_vae.inference.bounds.weighted_passes`, the one path that turns
the model and guide traces into per-data-point log-weights):

- the ELBO, the mean over k of ``log p(x, z_k) - log q(z_k|x)``;
- the importance-weighted bound ``log (1/K) sum_k p(x, z_k) / q(z_k|x)`` (Burda et al.
  2015): an estimate of log p(x) from below that tightens as K grows, at least the ELBO
  on the same draws; K = 5000 is the published standard;
- the reconstruction term ``E_q[log p(x|z)]`` and the KL term ``KL(q(z|x) || p(z))``,
  Monte Carlo estimates (so any prior and guide works) with ``ELBO = reconstruction - KL``;

and, over the data set, the number of *active units*: latent dimensions u with
``Cov_x(E_q[z_u]) > 0.01`` (Burda et al. 2015, section 5.2).

Memory is bounded by a budget, not by K or N: each vectorized pass evaluates at most
``max_elements`` numbers per intermediate tensor (the package's one chunking rule,
:func:`pyro_vae.inference.bounds.chunk_plan` on the measured :func:`~pyro_vae.inference.bounds.draw_width`), the draws of
a data point are folded into running sums and a running log-sum-exp, and only ``(N,)``
vectors are kept. With the default budget, K = 5000 on the 10,000 MNIST test images stays well under
2 GB, on CPU or GPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.transforms import BatchTransform
from ..errors import ConfigError
from ..model.vae import VAE
from ..seeding import forked_rng
from .bounds import DEFAULT_MAX_ELEMENTS, pass_plan, weighted_passes

__all__ = [
    "DEFAULT_IW_SAMPLES",
    "DEFAULT_MAX_ELEMENTS",
    "ACTIVE_UNIT_THRESHOLD",
    "Evaluation",
    "evaluate",
    "evaluate_elbo",
    "posterior_means",
    "unit_activity",
]

#: K of the published log-likelihood estimates (Burda et al. 2015).
DEFAULT_IW_SAMPLES = 5000
#: A unit u is active when Cov_x(E_q[z_u]) exceeds this (Burda et al. 2015).
ACTIVE_UNIT_THRESHOLD = 1e-2
#: Draws per data point for E_q[z] when the guide's distribution has no ``mean``.
DEFAULT_MEAN_SAMPLES = 1000


@dataclass
class Evaluation:
    """Per-data-point results of :func:`evaluate`, in nats.

    Attributes:
        iw_samples: K, draws of z per data point.
        elbo: ELBO per data point, ``(N,)``.
        log_px: Importance-weighted estimate of log p(x) with K draws, ``(N,)``.
        kl: KL(q(z|x) || p(z)) per data point, ``(N,)``.
        reconstruction: E_q[log p(x|z)] per data point, ``(N,)``.
        unit_activity: Cov_x(E_q[z_u]) for every latent dimension u, ``(z_dim,)``.
        threshold: Activity above which a unit counts as active.
        seconds: Wall time of the evaluation.
    """

    iw_samples: int
    elbo: np.ndarray
    log_px: np.ndarray
    kl: np.ndarray
    reconstruction: np.ndarray
    unit_activity: np.ndarray
    threshold: float = ACTIVE_UNIT_THRESHOLD
    seconds: float = 0.0

    @property
    def num_points(self) -> int:
        """N, the number of data points evaluated."""
        return int(self.elbo.shape[0])

    @property
    def active_units(self) -> int:
        """Number of latent dimensions with activity above :attr:`threshold`."""
        return int((self.unit_activity > self.threshold).sum())

    def summary(self) -> dict[str, Any]:
        """Averages over the data points (nats per data point) and the active units."""
        return {
            "num_points": self.num_points,
            "iw_samples": self.iw_samples,
            "elbo_per_datum": float(self.elbo.mean()),
            "log_px_per_datum": float(self.log_px.mean()),
            "kl_per_datum": float(self.kl.mean()),
            "reconstruction_per_datum": float(self.reconstruction.mean()),
            "active_units": self.active_units,
            "z_dim": int(self.unit_activity.shape[0]),
            "active_unit_threshold": self.threshold,
            "seconds": self.seconds,
        }

    def to_dict(self) -> dict[str, Any]:
        """:meth:`summary` plus every per-data-point value and every unit's activity (JSON-ready)."""
        return {
            **self.summary(),
            "unit_activity": self.unit_activity.tolist(),
            "per_datum": {
                "elbo": self.elbo.tolist(),
                "log_px": self.log_px.tolist(),
                "kl": self.kl.tolist(),
                "reconstruction": self.reconstruction.tolist(),
            },
        }


@torch.no_grad()
def evaluate_elbo(
    vae: VAE,
    x: torch.Tensor,
    *,
    particles: int = 1,
    seed: int = 0,
    transform: BatchTransform | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    y: torch.Tensor | None = None,
) -> float:
    """ELBO per data point of ``x``, averaged over the rows.

    Computed by :func:`pyro_vae.inference.bounds.weighted_passes` (Pyro traces of the VAE's
    model and guide, masks and scales honoured), in passes of bounded memory. The
    draws come from a forked RNG seeded with ``seed``, so the result is the same on
    every call and the caller's random stream is left untouched.

    Args:
        vae: The model.
        x: Data ``(N, x_dim)``.
        particles: Draws of z per data point.
        seed: Seed of the draws (and of ``transform``'s randomness).
        transform: Applied to each block of rows first (e.g. binarization).
        max_elements: Memory budget of one pass (numbers per intermediate tensor).

    Returns:
        The mean ELBO per data point, in nats.
    """
    was_training = vae.training
    vae.eval()
    total = 0.0
    try:
        with forked_rng(x.device, seed=seed):
            kwargs: dict[str, Any] = {} if y is None else {"y": y}
            for step in weighted_passes(vae, x, particles, transform=transform, max_elements=max_elements, **kwargs):
                total += float(step.draws.log_weights.double().sum())  # sum over draws and rows
    finally:
        vae.train(was_training)
    return total / (x.shape[0] * particles)


@torch.no_grad()
def posterior_means(
    vae: VAE, x: torch.Tensor, *, num_samples: int = DEFAULT_MEAN_SAMPLES, y: torch.Tensor | None = None
) -> torch.Tensor:
    """E_q[z | x] for every row of ``x``: the guide's mean, or a sample mean where it has none.

    A Gaussian guide's mean is mu(x); a flow guide's has no closed form and is the mean
    of ``num_samples`` draws (its noise adds at most ``max_u Var_q[z_u] / num_samples``
    to :func:`unit_activity`).

    Args:
        vae: The model.
        x: Data ``(B, x_dim)``.
        num_samples: Draws per row when the distribution has no ``mean``.

    Returns:
        Tensor ``(B, z_dim)``.
    """
    q = vae.posterior(x, y)  # batch (B,), event (z_dim,)
    try:
        return q.mean
    except NotImplementedError:
        return q.rsample((num_samples,)).mean(0)  # (B, z_dim)


class _Moments:
    """Running per-unit sums for the variance over data points, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        values = values.double()  # (B, z_dim)
        total, squares = values.sum(0), (values * values).sum(0)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += values.shape[0]

    def variance(self) -> torch.Tensor:
        assert self.total is not None and self.squares is not None
        if self.count < 2:
            return torch.zeros_like(self.total)
        mean = self.total / self.count
        return ((self.squares - self.count * mean * mean) / (self.count - 1)).clamp_min(0.0)


def unit_activity(
    vae: VAE,
    x: torch.Tensor,
    *,
    batch_size: int = 1024,
    num_samples: int = DEFAULT_MEAN_SAMPLES,
    seed: int = 0,
    transform: BatchTransform | None = None,
) -> torch.Tensor:
    """Cov_x(E_q[z_u]) of every latent dimension u over the rows of ``x``.

    A unit whose posterior mean barely moves with x (activity below 0.01) is unused by
    the model (Burda et al. 2015, "active units").

    Args:
        vae: The model.
        x: Data ``(N, x_dim)``, N >= 2.
        batch_size: Rows per pass.
        num_samples: Draws per row for guides without a closed-form mean.
        seed: Seed of ``transform`` and of those draws.
        transform: Applied to each batch first (e.g. binarization).

    Returns:
        Tensor ``(z_dim,)`` on the CPU (float64).

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> unit_activity(vae, torch.rand(20, 6)).shape
        torch.Size([2])
    """
    moments = _Moments()
    was_training = vae.training
    vae.eval()
    try:
        with forked_rng(x.device), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size]
                if transform is not None:
                    xb = transform(xb)
                moments.add(posterior_means(vae, xb, num_samples=num_samples))
    finally:
        vae.train(was_training)
    return moments.variance().cpu()


def evaluate(
    vae: VAE,
    x: torch.Tensor,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    seed: int = 0,
    transform: BatchTransform | None = None,
    mean_samples: int = DEFAULT_MEAN_SAMPLES,
    progress: bool = False,
    y: torch.Tensor | None = None,
) -> Evaluation:
    """ELBO, importance-sampled log p(x), KL and reconstruction terms per row, and active units.

    Every row is transformed once (e.g. dynamically binarized, with the draws of
    ``seed``), then gets ``iw_samples`` draws of z from the guide, evaluated in passes of
    at most ``max_elements`` numbers per intermediate tensor (see
    :func:`pyro_vae.inference.bounds.chunk_plan`);
    the results do not depend on the passes beyond Monte Carlo noise. The draws come from
    a forked random generator seeded with ``seed``: repeated calls agree, and the
    caller's random stream is untouched.

    Args:
        vae: The trained model (put in eval mode for the call).
        x: Held-out data ``(N, x_dim)`` on the model's device, N >= 1.
        iw_samples: K, draws of z per data point (5000 is the published standard).
        max_elements: Memory budget of one pass (numbers per intermediate tensor).
        seed: Seed of the draws and of ``transform``.
        transform: Applied to each row once, before any draw (binarization).
        mean_samples: Draws per row for E_q[z] when the guide has no closed-form mean
            (active units).
        progress: Show a progress bar over the passes.
        y: For a conditional VAE, the condition of each row: the bounds are then of
            log p(x | y).

    Returns:
        An :class:`Evaluation`.

    Raises:
        ConfigError: ``iw_samples < 1``, ``max_elements < 1`` or no rows.
        DataError: ``x`` does not fit the model.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> result = evaluate(vae, torch.bernoulli(torch.rand(5, 6)), iw_samples=100)
        >>> result.log_px.shape, bool((result.elbo <= result.log_px).all())
        ((5,), True)
    """
    if iw_samples < 1:
        raise ConfigError(f"`iw_samples` must be >= 1, got {iw_samples}; 5000 is the published standard")
    if max_elements < 1:
        raise ConfigError(f"`max_elements` must be >= 1, got {max_elements}")
    if x.shape[0] < 1:
        raise ConfigError("evaluate got no data points; pass at least one row")
    vae.check_x(x)
    start_time = time.perf_counter()
    num_points = x.shape[0]
    results = {name: np.empty(num_points) for name in ("elbo", "log_px", "kl", "reconstruction")}
    moments = _Moments()
    was_training = vae.training
    vae.eval()
    kwargs: dict[str, Any] = {} if y is None else {"y": y}
    plan = pass_plan(vae, x, iw_samples, transform=transform, max_elements=max_elements, **kwargs)
    total = math.ceil(num_points / plan[0]) * math.ceil(iw_samples / plan[1])
    bar = tqdm(total=total, disable=not progress, unit="pass", desc=f"log p(x), K={iw_samples}", dynamic_ncols=True)
    try:
        with forked_rng(x.device), torch.no_grad():
            torch.manual_seed(seed)
            passes = weighted_passes(vae, x, iw_samples, transform=transform, plan=plan, **kwargs)
            for step in passes:
                if step.first:
                    lse: torch.Tensor | None = None  # running log-sum-exp of the weights, (B,)
                    sums = torch.zeros(2, step.x.shape[0], dtype=torch.float64, device=x.device)  # recon, latent
                # float64 from here: K = 5000 terms are summed, and ELBO <= log p(x)
                # must hold to far better than float32 when the weights are all equal.
                terms = step.draws.terms
                reconstruction, latent = terms.reconstruction.double(), terms.latent.double()  # (k, B)
                chunk_lse = torch.logsumexp(reconstruction + latent, 0)  # (B,)
                lse = chunk_lse if lse is None else torch.logaddexp(lse, chunk_lse)
                sums[0] += reconstruction.sum(0)
                sums[1] += latent.sum(0)
                bar.update(1)
                if not step.last:
                    continue
                mean_reconstruction, mean_latent = (sums / iw_samples).cpu().numpy()
                results["reconstruction"][step.rows] = mean_reconstruction
                results["kl"][step.rows] = -mean_latent
                results["elbo"][step.rows] = mean_reconstruction + mean_latent
                results["log_px"][step.rows] = (lse - math.log(iw_samples)).cpu().numpy()
                moments.add(
                    posterior_means(vae, step.x, num_samples=mean_samples, y=None if y is None else y[step.rows])
                )
    finally:
        bar.close()
        vae.train(was_training)
    return Evaluation(
        iw_samples=iw_samples,
        unit_activity=moments.variance().cpu().numpy(),
        seconds=time.perf_counter() - start_time,
        elbo=results["elbo"],
        log_px=results["log_px"],
        kl=results["kl"],
        reconstruction=results["reconstruction"],
    )
