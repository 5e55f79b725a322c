"""Inference gaps per data point: how far the amortized guide is from the exact posterior.

For one input x, Cremer, Li & Duvenaud (2018, "Inference Suboptimality in Variational
Autoencoders") split the *inference gap* ``log p(x) - ELBO(q_phi)`` of the amortized
guide ``q_phi(z|x) = Normal(mu(x), sigma(x))`` (which is exactly
``KL(q_phi(z|x) || p(z|x))``) into two parts:

- the **approximation gap** ``log p(x) - ELBO(q*)``, where ``q*`` is the best diagonal
  Gaussian for that x alone (free mean and scale, decoder fixed): what the family
  cannot express;
- the **amortization gap** ``ELBO(q*) - ELBO(q_phi)``: what one shared encoder loses
  against optimising every data point separately.

Both are non-negative in expectation. (With a richer guide family than the diagonal
Normal, ``q*`` is still diagonal, so the second difference also contains the change of
family and can be negative.) The per-point Gaussians are fitted by
:func:`fit_local_gaussians`, started from the amortized guide; ``log p(x)`` is
estimated by importance sampling (:func:`log_marginal`) with a *defensive* proposal,
the even mixture of the amortized guide and ``q*``, so that the estimate stays good when
one of the two misses part of the posterior.

Every density here comes from the package's one trace-based path
(:mod:`pyro_vae.inference.bounds`: :func:`~pyro_vae.inference.bounds.log_joint` and
:func:`~pyro_vae.inference.bounds.collect_log_weights`, masks and scales honoured); no ArviZ.
:mod:`pyro_vae.posterior` turns the same quantities into ArviZ data.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ..errors import ConfigError
from ..model.vae import VAE
from ..seeding import forked_rng
from .bounds import SampleShape, collect_log_weights, elbo_per_datum, given, log_joint

__all__ = [
    "InferenceGaps",
    "PerPointFit",
    "refine_per_point",
    "LogMarginal",
    "EvenMixture",
    "frozen",
    "point_index",
    "log_joint",
    "gaussian_log_weights",
    "fit_local_gaussians",
    "log_marginal",
    "inference_gaps",
]


@contextlib.contextmanager
def frozen(vae: VAE) -> Iterator[VAE]:
    """Hold every weight of ``vae`` fixed (``requires_grad=False``) and in eval mode.

    Inside, gradients reach only the tensors the caller optimises (per-point means and
    scales, or the latent of an MCMC chain), never the model's weights, and autograd
    does not build graphs through them. The flags and mode are restored on exit.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> with frozen(vae):
        ...     any(p.requires_grad for p in vae.parameters())
        False
        >>> all(p.requires_grad for p in vae.parameters())
        True
    """
    flags = [(p, p.requires_grad) for p in vae.parameters()]
    was_training = vae.training
    vae.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield vae
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        vae.train(was_training)


def point_index(index: Sequence[int] | np.ndarray | torch.Tensor | None, num_points: int) -> np.ndarray:
    """The label of each of ``num_points`` data points (its row in its data set): checked.

    Args:
        index: One distinct label per point; default ``0..num_points-1``.
        num_points: The number of points.

    Raises:
        ConfigError: ``index`` has the wrong length or repeats a label.

    Example:
        >>> point_index([3, 7], 2).tolist(), point_index(None, 2).tolist()
        ([3, 7], [0, 1])
    """
    if index is None:
        return np.arange(num_points)
    index = np.asarray(index)
    if index.shape != (num_points,):
        raise ConfigError(f"`index` must have one entry per row of x ({num_points}), got shape {index.shape}")
    if len(np.unique(index)) != num_points:
        raise ConfigError(f"`index` must not repeat a row, got {index.tolist()}; pass each row once")
    return index


def gaussian_log_weights(
    vae: VAE,
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    num_samples: int = 1,
    *,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log importance weights under the diagonal Gaussian ``Normal(loc, scale)`` per point.

    :func:`pyro_vae.inference.bounds.collect_log_weights` with that Gaussian in place of the
    guide's distribution (e.g. one fitted to a single data point). Draws are
    reparameterized, so gradients reach ``loc`` and ``scale``.

    Args:
        vae: The model.
        x: Data of shape ``(B, x_dim)``.
        loc: Means of shape ``(B, z_dim)``.
        scale: Standard deviations of shape ``(B, z_dim)``.
        num_samples: K, draws per data point.
        y: For a conditional model, the condition of each row.

    Returns:
        Tensor of shape ``(K, B)``.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> gaussian_log_weights(vae, torch.ones(3, 6), torch.zeros(3, 2), torch.ones(3, 2), 4).shape
        torch.Size([4, 3])
    """
    return collect_log_weights(vae, x, num_samples, proposal=dist.Normal(loc, scale).to_event(1), **given(y, x))


class EvenMixture(dist.TorchDistribution):
    """The even mixture ``(1/M) sum_m q_m(z)`` of M distributions over z.

    A *defensive* importance-sampling proposal: weighted against the mixture, the
    draws estimate p(x) without bias and never much worse than the best component
    alone. Each draw picks its component uniformly at random.

    Args:
        components: Distributions with the same batch and event shapes.

    Example:
        >>> q = EvenMixture([dist.Normal(torch.zeros(3, 2), 1.0).to_event(1), dist.Normal(torch.ones(3, 2), 2.0).to_event(1)])
        >>> q.batch_shape, q.event_shape, q.sample((5,)).shape, q.log_prob(torch.zeros(3, 2)).shape
        (torch.Size([3]), torch.Size([2]), torch.Size([5, 3, 2]), torch.Size([3]))
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, components: Sequence[dist.TorchDistribution], validate_args: bool | None = None) -> None:
        self.components = list(components)
        first = self.components[0]
        super().__init__(first.batch_shape, first.event_shape, validate_args=False)

    def expand(self, batch_shape: SampleShape, _instance: object = None) -> "EvenMixture":
        return EvenMixture([c.expand(batch_shape) for c in self.components])

    def sample(self, sample_shape: SampleShape = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            draws = torch.stack([c.sample(sample_shape) for c in self.components])  # (M, *S, *batch, *event)
            pick = torch.randint(
                len(self.components), draws.shape[1 : draws.dim() - len(self.event_shape)], device=draws.device
            )
            pick = pick.reshape(pick.shape + (1,) * len(self.event_shape)).expand(draws.shape[1:])
            return draws.gather(0, pick.unsqueeze(0)).squeeze(0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([c.log_prob(value) for c in self.components])  # (M, ...)
        return torch.logsumexp(log_probs, 0) - math.log(len(self.components))


def _check_positive(**values: int | float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"`{name}` must be > 0, got {value}")


def fit_local_gaussians(
    vae: VAE,
    x: torch.Tensor,
    *,
    steps: int = 500,
    particles: int = 16,
    lr: float = 0.05,
    seed: int = 0,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best diagonal Gaussian for each data point alone (non-amortized VI).

    Every point gets its own free mean and log-scale, started at the amortized guide's
    ``mu(x)``, ``sigma(x)``, and fitted by maximising its own ELBO with Adam while the
    decoder and prior stay fixed. The ELBO uses the Gaussian's exact entropy and
    reparameterized draws for the expected log joint (lower variance than the plain
    Trace_ELBO estimator, same optimum), and the learning rate follows a cosine decay
    to zero so that the last iterate settles instead of jittering at the optimum.
    The points are optimised together, but their objectives are independent.

    Args:
        vae: The trained model (left unchanged).
        x: Data of shape ``(B, x_dim)``.
        steps: Adam steps.
        particles: Draws of z per point and step.
        lr: Initial Adam learning rate.
        seed: Seed of the draws (the caller's random stream is left untouched).

    Returns:
        ``(loc, scale)``, each of shape ``(B, z_dim)``, detached.

    Raises:
        ConfigError: ``steps``, ``particles`` or ``lr`` is not positive.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> loc, scale = fit_local_gaussians(vae, torch.ones(3, 6), steps=5)
        >>> loc.shape, bool((scale > 0).all())
        (torch.Size([3, 2]), True)
    """
    vae.check_x(x)
    kwargs = given(y, x)
    _check_positive(steps=steps, particles=particles, lr=lr)
    with torch.no_grad():
        loc0, scale0 = vae.encode(x, y)  # (B, z_dim) each
    loc = loc0.detach().clone().requires_grad_(True)
    log_scale = scale0.detach().log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    with frozen(vae), forked_rng(x.device, seed=seed):
        for _ in range(steps):
            q = dist.Normal(loc, log_scale.exp()).to_event(1)
            z = q.rsample((particles,))  # (P, B, z_dim)
            elbo = log_joint(vae, z, x, **kwargs).mean(0) + q.entropy()  # (B,): trace-based log p(x, z)
            optimizer.zero_grad(set_to_none=True)
            (-elbo.sum()).backward()
            optimizer.step()
            schedule.step()
    return loc.detach(), log_scale.detach().exp()


@dataclass(frozen=True)
class LogMarginal:
    """An importance-sampling estimate of ``log p(x)`` per data point.

    Attributes:
        estimate: ``log (1/K) sum_k w_k`` per point, shape ``(B,)``; a stochastic
            lower bound on log p(x) (its expectation is below it, by Jensen), which
            tightens as K grows.
        se: Monte Carlo standard error of ``estimate`` (delta method), ``(B,)``.
        ess: Kish effective sample size ``(sum w)^2 / sum w^2`` per point, ``(B,)``:
            how many independent draws from the exact posterior the weighted sample is
            worth. Small values mean the proposal misses the posterior.
        num_samples: K, draws per point.
    """

    estimate: torch.Tensor
    se: torch.Tensor
    ess: torch.Tensor
    num_samples: int

    @classmethod
    def from_log_weights(cls, log_w: torch.Tensor) -> "LogMarginal":
        """The estimate from ``(K, B)`` log importance weights.

        Example:
            >>> lw = torch.zeros(10, 3)  # every weight 1: p(x) = 1 exactly
            >>> LogMarginal.from_log_weights(lw).estimate
            tensor([0., 0., 0.])
        """
        shift = log_w.max(0).values  # (B,)
        w = torch.exp(log_w - shift)  # (K, B)
        mean = w.mean(0)  # (B,)
        se = (w.var(0) / log_w.shape[0]).sqrt() / mean  # delta method
        ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))  # (B,)
        return cls(torch.log(mean) + shift, se, ess, log_w.shape[0])


@torch.no_grad()
def log_marginal(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 5000,
    *,
    proposals: Sequence[dist.TorchDistribution] | None = None,
    seed: int = 0,
    y: torch.Tensor | None = None,
) -> LogMarginal:
    """Importance-sampling estimate of ``log p(x)`` per data point.

    The weights come from :func:`pyro_vae.inference.bounds.collect_log_weights` (Pyro traces of
    the model, masks and scales honoured). With several proposals the draws come from
    their even mixture ``r(z) = (1/M) sum_m q_m(z)`` (:class:`EvenMixture`, defensive
    importance sampling): the estimate of p(x) is unbiased and is never much worse
    than that of the best single proposal.

    Args:
        vae: The model.
        x: Data of shape ``(B, x_dim)``.
        num_samples: K, draws per data point.
        proposals: Distributions with batch shape ``(B,)`` and event shape
            ``(z_dim,)``; default the amortized guide ``vae.posterior(x)`` alone.
        seed: Seed of the draws (the caller's random stream is left untouched).

    Returns:
        A :class:`LogMarginal` with tensors of shape ``(B,)``.

    Raises:
        ConfigError: ``num_samples`` is smaller than 2.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> log_marginal(vae, torch.ones(3, 6), 100).estimate.shape
        torch.Size([3])
    """
    vae.check_x(x)
    proposals = list(proposals) if proposals is not None else []
    if num_samples < 2:
        raise ConfigError(f"`num_samples` must be at least 2, got {num_samples}")
    proposal = None if not proposals else proposals[0] if len(proposals) == 1 else EvenMixture(proposals)
    with frozen(vae), forked_rng(x.device, seed=seed):
        log_w = collect_log_weights(vae, x, num_samples, proposal=proposal, **given(y, x))  # (K, B)
    return LogMarginal.from_log_weights(log_w)


def _mean_se(lw: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return lw.mean(0).cpu().numpy(), (lw.std(0) / math.sqrt(lw.shape[0])).cpu().numpy()


@dataclass(frozen=True)
class InferenceGaps:
    """Per-data-point ``log p(x)``, ELBOs and the gaps between them, in nats.

    Every array has one entry per data point; each estimate has its Monte Carlo
    standard error (``*_se``). The gaps' standard errors combine the two terms'
    (independent draws).

    Attributes:
        index: Row index of each data point in the data it came from.
        log_px: Importance-sampled log p(x) (:func:`log_marginal`, defensive mixture
            of the amortized guide and the per-point Gaussian).
        log_px_se: Its standard error.
        log_px_ess: Kish effective sample size of that importance sample.
        elbo_amortized: ELBO of the amortized guide q(z|x) = Normal(mu(x), sigma(x)).
        elbo_amortized_se: Its standard error.
        elbo_local: ELBO of the best per-point Gaussian q*(z) (:func:`fit_local_gaussians`).
        elbo_local_se: Its standard error.
    """

    index: np.ndarray
    log_px: np.ndarray
    log_px_se: np.ndarray
    log_px_ess: np.ndarray
    elbo_amortized: np.ndarray
    elbo_amortized_se: np.ndarray
    elbo_local: np.ndarray
    elbo_local_se: np.ndarray

    @property
    def inference_gap(self) -> np.ndarray:
        """``log p(x) - ELBO(q_phi)``, which is ``KL(q_phi(z|x) || p(z|x))``."""
        return self.log_px - self.elbo_amortized

    @property
    def approximation_gap(self) -> np.ndarray:
        """``log p(x) - ELBO(q*)``: the cost of the Gaussian family itself."""
        return self.log_px - self.elbo_local

    @property
    def amortization_gap(self) -> np.ndarray:
        """``ELBO(q*) - ELBO(q_phi)``: the cost of sharing one encoder across inputs."""
        return self.elbo_local - self.elbo_amortized

    @property
    def approximation_gap_se(self) -> np.ndarray:
        """Standard error of :attr:`approximation_gap`."""
        return np.hypot(self.log_px_se, self.elbo_local_se)

    @property
    def amortization_gap_se(self) -> np.ndarray:
        """Standard error of :attr:`amortization_gap`."""
        return np.hypot(self.elbo_local_se, self.elbo_amortized_se)

    @property
    def inference_gap_se(self) -> np.ndarray:
        """Standard error of :attr:`inference_gap`."""
        return np.hypot(self.log_px_se, self.elbo_amortized_se)

    def table(self) -> dict[str, np.ndarray]:
        """Every per-point column, gaps included, keyed by name (for a DataFrame or CSV)."""
        names = (
            "index",
            "log_px",
            "log_px_se",
            "log_px_ess",
            "elbo_amortized",
            "elbo_amortized_se",
            "elbo_local",
            "elbo_local_se",
            "inference_gap",
            "approximation_gap",
            "amortization_gap",
        )
        return {name: np.asarray(getattr(self, name)) for name in names}

    def mean(self) -> dict[str, float]:
        """Averages over the data points, each with the standard error of that average.

        The standard error is the spread across points over ``sqrt(N)`` (it contains
        the Monte Carlo error of each point's estimate).
        """
        out: dict[str, float] = {"num_points": float(len(self.index))}
        n = len(self.index)
        for name in (
            "log_px",
            "elbo_amortized",
            "elbo_local",
            "inference_gap",
            "approximation_gap",
            "amortization_gap",
        ):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            out[name] = float(values.mean())
            out[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return out


def _per_point_fit(
    vae: VAE,
    x: torch.Tensor,
    steps: int,
    particles: int,
    lr: float,
    elbo_samples: int,
    seed: int,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-point Gaussians and the ``(K, B)`` log-weights of the amortized guide and of them."""
    loc, scale = fit_local_gaussians(vae, x, steps=steps, particles=particles, lr=lr, seed=seed, y=y)
    with torch.no_grad(), frozen(vae), forked_rng(x.device, seed=seed + 1):
        amortized = collect_log_weights(vae, x, elbo_samples, **given(y, x))  # (K, B)
        local = gaussian_log_weights(vae, x, loc, scale, elbo_samples, y=y)  # (K, B)
    return loc, scale, amortized, local


def inference_gaps(
    vae: VAE,
    x: torch.Tensor,
    *,
    index: Sequence[int] | np.ndarray | None = None,
    num_samples: int = 5000,
    elbo_samples: int = 1000,
    steps: int = 500,
    particles: int = 16,
    lr: float = 0.05,
    seed: int = 0,
    y: torch.Tensor | None = None,
) -> InferenceGaps:
    """Log p(x), the amortized and per-point ELBOs and the gaps, for each row of ``x``.

    Args:
        vae: The trained model (left unchanged).
        x: Data of shape ``(B, x_dim)``, as the model sees it (binarized for a
            Bernoulli likelihood).
        index: Row index of each point, for the report; default ``0..B-1``.
        num_samples: Draws per point for the importance-sampled log p(x).
        elbo_samples: Draws per point for each ELBO.
        steps: Adam steps of the per-point fit (:func:`fit_local_gaussians`).
        particles: Draws per point and step of that fit.
        lr: Its initial learning rate.
        seed: Seed of every draw.
        y: For a conditional model, the condition of each row (the gaps of
            q(z | x, y) against p(z | x, y)).

    Returns:
        An :class:`InferenceGaps` with arrays of shape ``(B,)``.

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count or the learning rate is not positive, or ``index`` has
            the wrong length.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> gaps = inference_gaps(vae, torch.ones(3, 6), num_samples=200, elbo_samples=50, steps=10)
        >>> gaps.approximation_gap.shape
        (3,)
    """
    vae.check_x(x)
    vae.likelihood.check_support(x)
    _check_positive(num_samples=num_samples, elbo_samples=elbo_samples)
    index = point_index(index, x.shape[0])
    loc, scale, amortized_lw, local_lw = _per_point_fit(vae, x, steps, particles, lr, elbo_samples, seed, y)
    amortized, local = _mean_se(amortized_lw), _mean_se(local_lw)
    with torch.no_grad(), frozen(vae):
        local_q = dist.Normal(loc, scale).to_event(1)
        marginal = log_marginal(vae, x, num_samples, proposals=[vae.posterior(x, y), local_q], seed=seed + 2, y=y)
    return InferenceGaps(
        index=index,
        log_px=marginal.estimate.cpu().numpy(),
        log_px_se=marginal.se.cpu().numpy(),
        log_px_ess=marginal.ess.cpu().numpy(),
        elbo_amortized=amortized[0],
        elbo_amortized_se=amortized[1],
        elbo_local=local[0],
        elbo_local_se=local[1],
    )


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
    returned are then estimated with ``eval_particles`` draws per point (the same
    computation as :func:`inference_gaps`, without log p(x)). Every draw
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
        raise ConfigError(f"`eval_particles` must be >= 1, got {eval_particles}")
    vae.check_x(x)
    vae.likelihood.check_support(x)
    loc, scale, amortized, local = _per_point_fit(vae, x, steps, num_particles, lr, eval_particles, seed)
    return PerPointFit(loc, scale, elbo_per_datum(local), elbo_per_datum(amortized))
