"""Per-data-point log importance weights and the bounds built on them: the one path.

Every ELBO, IWAE bound and estimate of log p(x) in the package comes from Pyro traces of
the VAE's own ``guide`` and ``model``, run here and nowhere else:

- :func:`weighted_draws` runs the guide (or a *proposal* that replaces the guide's
  distribution at the latent site) and the model replayed on its draws, under a
  vectorized particle plate, and returns the draws with the summed log-densities of the
  model's observed sites, its latent sites and the guide's sites, per draw and data
  point. Each site's log-density is Pyro's ``site["log_prob"]``: scaled and masked as
  ``poutine.scale``, ``poutine.mask`` and ``obs_mask`` say, exactly as ``Trace_ELBO``
  counts it.
- :func:`log_joint` is the model half alone: ``log p(x, z)`` at given latents (the
  model conditioned on them), for MCMC potentials, quadrature and per-point Gaussians;
  :func:`guide_log_density` is the guide's ``log q(z | x)`` at given latents, and
  :func:`other_latents` names the model's sites that conditioning on ``z`` leaves random.
- :func:`weighted_passes` splits N rows x K draws into passes of bounded memory by the
  one chunking rule (:func:`chunk_plan` on the measured :func:`draw_width`).

The ELBO per data point is the mean of the log-weights over draws
(:func:`elbo_per_datum`), the importance-weighted bound their log-mean-exp
(:func:`iwae_per_datum`); with one draw the two are equal.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.utils._python_dispatch import TorchDispatchMode

from ..data.transforms import BatchTransform
from ..errors import ConfigError, DataError
from ..model.vae import LATENT_SITE, VAE, local_params
from ..seeding import forked_rng

__all__ = [
    "PARTICLE_PLATE",
    "DEFAULT_MAX_ELEMENTS",
    "WeightedDraws",
    "LogWeightTerms",
    "Pass",
    "weighted_draws",
    "pass_plan",
    "weighted_passes",
    "collect_weighted",
    "collect_log_weights",
    "log_weights",
    "log_weight_terms",
    "ModelDensities",
    "model_densities",
    "log_joint",
    "guide_log_density",
    "other_latents",
    "check_only_latent",
    "elbo_per_datum",
    "iwae_per_datum",
    "logmeanexp_chunks",
    "draw_width",
    "chunk_plan",
    "given",
    "take_rows",
    "SampleShape",
]

#: A shape as torch.distributions accepts one (``expand``, ``sample``).
SampleShape = Union[torch.Size, list[int], tuple[int, ...]]

#: Name of the vectorized particle plate; it sits left of the data plate (dim -2).
PARTICLE_PLATE = "particles"
#: Numbers per intermediate tensor in one vectorized pass (2**23 floats = 32 MiB).
DEFAULT_MAX_ELEMENTS = 2**23


class LogWeightTerms(NamedTuple):
    """The two parts of the log-weights: ``log_weights == reconstruction + latent``.

    Attributes:
        reconstruction: ``log p(x | z_k)``, the observed sites of the model, ``(K, B)``.
        latent: ``log p(z_k) - log q(z_k | x)``, the model's latent sites minus the
            guide's, ``(K, B)``; minus its mean over k estimates KL(q(z|x) || p(z)).
    """

    reconstruction: torch.Tensor
    latent: torch.Tensor


class WeightedDraws(NamedTuple):
    """K draws per data point with their log-densities, from one pass of the program.

    Attributes:
        z: The draws at the latent site ``z``, ``(K, B, z_dim)``.
        log_likelihood: Sum over the model's observed sites, ``(K, B)``.
        log_prior: Sum over the model's latent sites, ``(K, B)``.
        log_proposal: Sum over the guide's (or proposal's) sites, ``(K, B)``.
    """

    z: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_proposal: torch.Tensor

    @property
    def log_weights(self) -> torch.Tensor:
        """``log p(x, z_k) - log q(z_k | x)``, ``(K, B)``."""
        return self.log_likelihood + self.log_prior - self.log_proposal

    @property
    def terms(self) -> LogWeightTerms:
        """The reconstruction and latent parts of :attr:`log_weights`."""
        return LogWeightTerms(self.log_likelihood, self.log_prior - self.log_proposal)


class _AsPyro(dist.TorchDistribution):
    """A ``torch.distributions`` object with Pyro's distribution interface."""

    arg_constraints: dict = {}

    def __init__(self, base: torch.distributions.Distribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.base.has_rsample

    @property
    def support(self):  # noqa: ANN201 - the base distribution's constraint
        return self.base.support

    def expand(self, batch_shape: SampleShape, _instance: object = None) -> "_AsPyro":
        return _AsPyro(self.base.expand(batch_shape))

    def sample(self, sample_shape: SampleShape = torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> torch.Tensor:
        return self.base.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)


class _Propose(Messenger):
    """Replaces the distribution of the guide's latent site by ``proposal``.

    The plates inside the guide have already broadcast the site's distribution when
    this (outer) handler sees it, so the proposal is expanded to that batch shape.
    Everything else the guide does (other sites, masks) stays.
    """

    def __init__(self, proposal: torch.distributions.Distribution, site: str = LATENT_SITE) -> None:
        super().__init__()
        # Pyro samples by calling the distribution: a plain torch one gets Pyro's interface.
        self.proposal = proposal if isinstance(proposal, TorchDistributionMixin) else _AsPyro(proposal)
        self.site = site

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.site and not msg["is_observed"]:
            msg["fn"] = self.proposal.expand(msg["fn"].batch_shape)


def _sum_log_probs(trace: poutine.Trace, shape: torch.Size, keep: Callable[[Any], bool] | None = None) -> torch.Tensor:
    """Sum of ``site["log_prob"]`` (scaled and masked by Pyro) over the sample sites."""
    total: torch.Tensor | None = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if keep is not None and not keep(site):
            continue
        lp = site["log_prob"]
        if not isinstance(lp, torch.Tensor) or lp.shape != shape:
            got = tuple(lp.shape) if isinstance(lp, torch.Tensor) else "a number"
            raise ValueError(
                f"sample site {name!r} has log_prob shape {got}, expected {tuple(shape)}: "
                "per-data-point weights need every sample site inside the data plate"
            )
        total = lp if total is None else total + lp
    if total is None:
        return torch.zeros(shape)
    return total


def _check_samples(num_samples: int) -> None:
    if num_samples < 1:
        raise ConfigError(f"`num_samples` must be >= 1, got {num_samples}")


def weighted_draws(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1,
    *,
    proposal: dist.TorchDistribution | None = None,
    **program_kwargs: Any,
) -> WeightedDraws:
    """K draws per data point from the guide, weighed by the model: one vectorized pass.

    The guide draws ``z_k`` (reparameterized where the family allows, so gradients
    flow), the model is replayed on those draws, and every sample site's
    ``log_prob`` (masked and scaled as the program says) is summed. The program runs
    with its defaults (no minibatch scale, no KL weight), in Pyro's
    ``module_local_params`` mode for the call only.

    Args:
        vae: The model and guide.
        x: Data of shape ``(B, x_dim)``.
        num_samples: K, draws of z per data point.
        proposal: A distribution with batch shape ``(B,)`` and event shape
            ``(z_dim,)`` that replaces the guide's distribution at the latent site
            (e.g. a Gaussian fitted to each point alone); default the guide's own.
        **program_kwargs: Further keyword arguments of ``vae.model`` and
            ``vae.guide`` (e.g. labels and their mask in a subclass).

    Returns:
        A :class:`WeightedDraws` with tensors of shape ``(K, B)`` (and ``z``).

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> draws = weighted_draws(vae, torch.ones(3, 6), num_samples=5)
        >>> draws.z.shape, draws.log_weights.shape
        (torch.Size([5, 3, 2]), torch.Size([5, 3]))
    """
    _check_samples(num_samples)
    vae.check_x(x)
    shape = torch.Size((num_samples, x.shape[0]))
    with local_params():
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-2):
            if proposal is None:
                guide_trace = poutine.trace(vae.guide).get_trace(x, **program_kwargs)
            else:
                with _Propose(proposal):
                    guide_trace = poutine.trace(vae.guide).get_trace(x, **program_kwargs)
            model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, **program_kwargs)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return WeightedDraws(
        z=guide_trace.nodes[LATENT_SITE]["value"],
        log_likelihood=_sum_log_probs(model_trace, shape, keep=lambda site: site["is_observed"]),
        log_prior=_sum_log_probs(model_trace, shape, keep=lambda site: not site["is_observed"]),
        log_proposal=_sum_log_probs(guide_trace, shape),
    )


def log_weights(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1,
    *,
    proposal: dist.TorchDistribution | None = None,
    **program_kwargs: Any,
) -> torch.Tensor:
    """Log importance weights ``log p(x, z_k) - log q(z_k | x)`` per draw and data point.

    :attr:`WeightedDraws.log_weights` of :func:`weighted_draws` (see there).

    Returns:
        Tensor of shape ``(K, B)``.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> log_weights(vae, torch.ones(3, 6), num_samples=5).shape
        torch.Size([5, 3])
    """
    return weighted_draws(vae, x, num_samples, proposal=proposal, **program_kwargs).log_weights


def log_weight_terms(vae: VAE, x: torch.Tensor, num_samples: int = 1, **program_kwargs: Any) -> LogWeightTerms:
    """:func:`log_weights` split into the reconstruction and the latent (KL) part, same draws.

    Their means over k are the two terms of the ELBO: ``E_q[log p(x|z)]`` and
    ``-KL(q(z|x) || p(z))``, estimated by Monte Carlo, so that any prior and guide
    (a VampPrior, a flow) works.

    Returns:
        :class:`LogWeightTerms`, each of shape ``(K, B)``.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> terms = log_weight_terms(vae, torch.ones(3, 6), num_samples=5)
        >>> terms.reconstruction.shape, terms.latent.shape
        (torch.Size([5, 3]), torch.Size([5, 3]))
    """
    return weighted_draws(vae, x, num_samples, **program_kwargs).terms


class ModelDensities(NamedTuple):
    """The model's log-density at given latents, in its two parts.

    Attributes:
        log_likelihood: Sum over the observed sites, ``log p(x | z)``, ``(..., B)``.
        log_prior: Sum over the latent sites, ``log p(z)``, ``(..., B)``.
    """

    log_likelihood: torch.Tensor
    log_prior: torch.Tensor


def model_densities(vae: VAE, z: torch.Tensor, x: torch.Tensor, **program_kwargs: Any) -> ModelDensities:
    """``log p(x | z)`` and ``log p(z)`` at given latents, from the model's trace.

    The model runs conditioned on ``z`` (masks and scales as the program says);
    gradients reach ``z`` and the model's weights.

    Args:
        vae: The model.
        z: Latents of shape ``(..., B, z_dim)``.
        x: Data of shape ``(B, x_dim)``.
        **program_kwargs: Further keyword arguments of ``vae.model`` (a conditional
            model's ``y``, one per row).

    Returns:
        :class:`ModelDensities`, each of shape ``(..., B)``.

    Raises:
        ConfigError: ``z`` does not match ``x`` and the model.
    """
    vae.check_x(x)
    batch = x.shape[0]
    if z.dim() < 2 or z.shape[-2:] != (batch, vae.z_dim):
        raise ConfigError(
            f"expected z of shape (..., {batch}, {vae.z_dim}) for x with {batch} rows, got {tuple(z.shape)}"
        )
    leading = z.shape[:-2]
    flat = z.reshape(-1, batch, vae.z_dim)  # (K, B, z_dim)
    shape = torch.Size(flat.shape[:2])
    with local_params(), pyro.plate(PARTICLE_PLATE, flat.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(vae.model, data={LATENT_SITE: flat})).get_trace(x, **program_kwargs)
    trace.compute_log_prob()

    # Conditioning marks the latent site observed: it still counts as the prior's.
    def is_data(site: dict) -> bool:
        return site["is_observed"] and site["name"] != LATENT_SITE

    observed = _sum_log_probs(trace, shape, keep=is_data)
    latent = _sum_log_probs(trace, shape, keep=lambda site: not is_data(site))
    return ModelDensities(observed.reshape(leading + (batch,)), latent.reshape(leading + (batch,)))


def log_joint(vae: VAE, z: torch.Tensor, x: torch.Tensor, **program_kwargs: Any) -> torch.Tensor:
    """``log p(x, z)``: the model's log-density with its latent site set to ``z``.

    The unnormalised log posterior density of z given x: the sum of
    :func:`model_densities`.

    Args:
        vae: The model.
        z: Latents of shape ``(..., B, z_dim)``.
        x: Data of shape ``(B, x_dim)``.
        **program_kwargs: Further keyword arguments of ``vae.model`` (``y``).

    Returns:
        Tensor of shape ``(..., B)``.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> log_joint(vae, torch.zeros(5, 3, 2), torch.ones(3, 6)).shape
        torch.Size([5, 3])
    """
    densities = model_densities(vae, z, x, **program_kwargs)
    return densities.log_likelihood + densities.log_prior


def other_latents(vae: VAE, x: torch.Tensor, **program_kwargs: Any) -> list[str]:
    """The model's sample sites that setting ``z`` leaves random (neither observed nor ``z``).

    :func:`log_joint` is the density of p(z | x) only when this is empty: a second
    latent layer, or labels missing under ``obs_mask``, would be drawn afresh at every
    evaluation. ``program_kwargs`` are the model's further keyword arguments for the
    rows of ``x`` (a semi-supervised model given every label has none).

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> other_latents(build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,))), torch.ones(1, 6))
        []
    """
    z = torch.zeros(1, x.shape[0], vae.z_dim, dtype=x.dtype, device=x.device)
    with torch.no_grad(), local_params(), pyro.plate(PARTICLE_PLATE, 1, dim=-2):
        trace = poutine.trace(poutine.condition(vae.model, data={LATENT_SITE: z})).get_trace(x, **program_kwargs)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site) and not site["is_observed"] and _counts(site)
    ]


def _counts(site: Any) -> bool:
    """Whether a site's log-density counts for some row: not masked out everywhere.

    ``obs_mask`` makes an ``_unobserved`` site even when every value is observed; its
    mask is then all False and it changes no density.
    """
    mask = site.get("mask")
    if mask is None:
        return True
    return bool(mask.any()) if isinstance(mask, torch.Tensor) else bool(mask)


def check_only_latent(vae: VAE, x: torch.Tensor, method: str, **program_kwargs: Any) -> None:
    """Raise :class:`ConfigError` if the model has latents besides ``z`` (:func:`other_latents`).

    Args:
        vae: The model.
        x: Some of its data ``(B, x_dim)``.
        method: What needs p(z | x) alone, for the message (e.g. ``"NUTS"``).
        **program_kwargs: The model's further keyword arguments for the rows of ``x``.
    """
    others = other_latents(vae, x, **program_kwargs)
    if others:
        raise ConfigError(
            f"{method} needs z to be the model's only latent, but this model also draws {', '.join(others)}; "
            "use `method` sir (importance resampling weighs every site)"
        )


def guide_log_density(vae: VAE, z: torch.Tensor, x: torch.Tensor, **program_kwargs: Any) -> torch.Tensor:
    """``log q(z | x)``: the guide's log-density at given latents, from the guide's trace.

    The guide runs conditioned on ``z`` (its latent site set to ``z``; masks and scales
    as the program says), the counterpart of :func:`log_joint` for the guide, so that
    any guide family (a flow, a low-rank Gaussian) is evaluated by its own program.

    Args:
        vae: The model and guide.
        z: Latents of shape ``(..., B, z_dim)``.
        x: Data of shape ``(B, x_dim)``.
        **program_kwargs: Further keyword arguments of ``vae.guide`` (``y``).

    Returns:
        Tensor of shape ``(..., B)``.

    Raises:
        ConfigError: ``z`` does not match ``x`` and the model.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> guide_log_density(vae, torch.zeros(5, 3, 2), torch.ones(3, 6)).shape
        torch.Size([5, 3])
    """
    vae.check_x(x)
    batch = x.shape[0]
    if z.dim() < 2 or z.shape[-2:] != (batch, vae.z_dim):
        raise ConfigError(
            f"expected z of shape (..., {batch}, {vae.z_dim}) for x with {batch} rows, got {tuple(z.shape)}"
        )
    leading = z.shape[:-2]
    flat = z.reshape(-1, batch, vae.z_dim)  # (K, B, z_dim)
    with local_params(), pyro.plate(PARTICLE_PLATE, flat.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(vae.guide, data={LATENT_SITE: flat})).get_trace(x, **program_kwargs)
    trace.compute_log_prob()
    return _sum_log_probs(trace, torch.Size(flat.shape[:2])).reshape(leading + (batch,))


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


# --------------------------------------------------------------- passes of bounded memory
class _LargestAllocation(TorchDispatchMode):
    """Records the largest new tensor (in elements) any operation allocates; views are free."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            # A view (transpose, expand, reshape of an input) allocates nothing.
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


@torch.no_grad()
def draw_width(
    vae: VAE,
    x: torch.Tensor,
    probe_samples: int = 64,
    *,
    proposal: dist.TorchDistribution | None = None,
    **program_kwargs: Any,
) -> int:
    """Numbers per draw of z in the largest tensor of a pass: measured, not guessed.

    Runs :func:`weighted_draws` on one row with ``probe_samples`` draws and records the
    size of every tensor an operation allocates, so the decoder's widest layer, a
    mixture prior's ``(components, z_dim)`` block per draw or a flow's hidden layer all
    count, and views of the weights do not.

    Args:
        vae: The model.
        x: Data whose first row is used, ``(B, x_dim)``.
        probe_samples: Draws in the probe.
        proposal: The proposal the passes will use (its first row is probed).

    Returns:
        An upper bound on the numbers per draw in any one new tensor (at least ``x_dim``).

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(40,)))
        >>> draw_width(vae, torch.ones(1, 6))  # the decoder's hidden layer
        40
    """
    recorder = _LargestAllocation()
    row = x[:1]
    if proposal is not None:
        # The probe takes every row's proposal at once: its width per row is the same.
        row, probe_samples = x, max(1, probe_samples // x.shape[0])
    program_kwargs = take_rows(program_kwargs, slice(0, row.shape[0]), x.shape[0])
    with forked_rng(x.device), recorder:
        weighted_draws(vae, row, probe_samples, proposal=proposal, **program_kwargs)
    return max(vae.x_dim, math.ceil(recorder.largest / (probe_samples * row.shape[0])))


def chunk_plan(
    num_points: int, num_samples: int, width: int, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> tuple[int, int]:
    """How N data points x K draws are split into passes: the one chunking rule.

    Args:
        num_points: N.
        num_samples: K.
        width: Numbers per draw in the widest intermediate tensor (:func:`draw_width`).
        max_elements: Budget of numbers per intermediate tensor in one pass.

    Returns:
        ``(batch, samples)``: data points per pass and draws per data point per pass;
        ``batch * samples * width <= max_elements`` whenever ``width <= max_elements``.

    Example:
        >>> chunk_plan(10_000, 5000, 784)
        (2, 5000)
        >>> chunk_plan(10_000, 50_000, 784)
        (1, 10699)
    """
    rows = max(1, max_elements // max(1, width))  # draws of z per pass
    samples = min(num_samples, rows)
    batch = max(1, min(num_points, rows // samples))
    return batch, samples


class Pass(NamedTuple):
    """One pass of :func:`weighted_passes`.

    Attributes:
        rows: The rows of ``x`` this pass covers.
        x: Those rows, transformed as the model sees them (the same in every pass over
            these rows).
        draws: This pass's share of the K draws for those rows.
        start: Index of this pass's first draw among the K.
        num_samples: K, the draws per row over all passes.
    """

    rows: slice
    x: torch.Tensor
    draws: WeightedDraws
    start: int
    num_samples: int

    @property
    def first(self) -> bool:
        """Whether this is the first pass over these rows."""
        return self.start == 0

    @property
    def last(self) -> bool:
        """Whether this is the last pass over these rows."""
        return self.start + self.draws.z.shape[0] >= self.num_samples


def pass_plan(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int,
    *,
    proposal: dist.TorchDistribution | None = None,
    transform: BatchTransform | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    **program_kwargs: Any,
) -> tuple[int, int]:
    """``(rows, draws)`` per pass of :func:`weighted_passes` for these arguments.

    :func:`chunk_plan` on the :func:`draw_width` measured on a probe (the random state
    is left untouched). With a ``proposal`` every pass covers all rows.

    Raises:
        ConfigError: ``num_samples`` or ``max_elements`` is below 1, or there are no rows.
    """
    _check_samples(num_samples)
    if max_elements < 1:
        raise ConfigError(f"`max_elements` must be >= 1, got {max_elements}")
    num_points = x.shape[0]
    if num_points < 1:
        raise ConfigError("got no data points; pass at least one row")
    vae.check_x(x)
    with forked_rng(x.device):
        rows = slice(0, 1) if proposal is None else slice(0, num_points)  # a proposal covers every row
        probe = x[rows]
        if transform is not None:
            probe = transform(probe)  # rows the likelihood accepts
        probe_kwargs = take_rows(program_kwargs, rows, num_points)
        probe_samples = max(1, min(64, max_elements // vae.x_dim))  # the probe keeps to the budget too
        width = draw_width(vae, probe, probe_samples, proposal=proposal, **probe_kwargs)
    if proposal is not None:
        return num_points, max(1, min(num_samples, max_elements // (width * num_points)))
    return chunk_plan(num_points, num_samples, width, max_elements)


def weighted_passes(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int,
    *,
    proposal: dist.TorchDistribution | None = None,
    transform: BatchTransform | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    plan: tuple[int, int] | None = None,
    **program_kwargs: Any,
) -> Iterator[Pass]:
    """:func:`weighted_draws` for N rows x K draws, in passes of bounded memory.

    Rows are taken in blocks and each block's K draws in chunks, sized by
    :func:`pass_plan` so that no intermediate tensor holds more than ``max_elements``
    numbers. Each block of rows is transformed once (e.g. dynamically binarized)
    before its first draw. With a ``proposal`` (batch shape ``(N,)``) all rows go in
    every pass and only the draws are chunked.

    Args:
        vae: The model and guide.
        x: Data ``(N, x_dim)``.
        num_samples: K, draws per data point in all.
        proposal: Replaces the guide's distribution (see :func:`weighted_draws`).
        transform: Applied to each block of rows once (its randomness comes from the
            caller's random state).
        max_elements: Memory budget of one pass.
        plan: ``(rows, draws)`` per pass from :func:`pass_plan`, when the caller has it.
        **program_kwargs: Further keyword arguments of the programs; a tensor whose
            first dimension is N holds one entry per row and is split with the rows.

    Yields:
        :class:`Pass` objects, the rows in order, each block's draws before the next.

    Raises:
        ConfigError: ``num_samples`` or ``max_elements`` is below 1, or there are no rows.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> [(p.rows, p.draws.log_weights.shape) for p in weighted_passes(vae, torch.ones(3, 6), 10, max_elements=60)]
        [(slice(0, 1, None), torch.Size([10, 1])), (slice(1, 2, None), torch.Size([10, 1])), (slice(2, 3, None), torch.Size([10, 1]))]
    """
    batch, samples = plan or pass_plan(
        vae, x, num_samples, proposal=proposal, transform=transform, max_elements=max_elements, **program_kwargs
    )
    num_points = x.shape[0]
    for lo in range(0, num_points, batch):
        rows = slice(lo, min(lo + batch, num_points))
        xb = x[rows]
        if transform is not None:
            xb = transform(xb)
        kwargs = take_rows(program_kwargs, rows, num_points)
        for done in range(0, num_samples, samples):
            k = min(samples, num_samples - done)
            draws = weighted_draws(vae, xb, k, proposal=proposal, **kwargs)
            yield Pass(rows, xb, draws, start=done, num_samples=num_samples)


def given(y: torch.Tensor | None, x: torch.Tensor) -> dict[str, Any]:
    """The programs' keyword arguments for a condition ``y`` of the rows of ``x``: ``{"y": y}``, or ``{}``.

    Raises:
        DataError: ``y`` does not have one entry per row of ``x``.

    Example:
        >>> given(None, torch.ones(3, 2)), list(given(torch.arange(3), torch.ones(3, 2)))
        ({}, ['y'])
    """
    if y is None:
        return {}
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise DataError(f"`y` needs one entry per row of x ({x.shape[0]}), got shape {tuple(y.shape)}")
    return {"y": y}


def take_rows(program_kwargs: dict[str, Any], rows: slice | torch.Tensor, num_points: int) -> dict[str, Any]:
    """The programs' keyword arguments for some of ``num_points`` rows (a slice or an index tensor).

    A tensor with one entry per row (a condition ``y``, a mask) is cut to those rows;
    anything else (a scalar, a shared tensor) passes as it is.
    """
    return {key: _rows_of(value, rows, num_points) for key, value in program_kwargs.items()}


def _rows_of(value: Any, rows: slice | torch.Tensor, num_points: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_points:
        return value[rows]
    return value


def collect_weighted(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int,
    *,
    proposal: dist.TorchDistribution | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    **program_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All K draws and their ``(K, N)`` log-weights from :func:`weighted_passes`.

    For callers that need every draw and weight (resampling, standard errors,
    effective sample sizes); the passes are bounded, the result holds ``K * N``
    latents and weights.

    Returns:
        ``(z, log_weights)`` of shapes ``(K, N, z_dim)`` and ``(K, N)``.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> [t.shape for t in collect_weighted(vae, torch.ones(3, 6), 10, max_elements=60)]
        [torch.Size([10, 3, 2]), torch.Size([10, 3])]
    """
    z: torch.Tensor | None = None
    out: torch.Tensor | None = None
    passes = weighted_passes(vae, x, num_samples, proposal=proposal, max_elements=max_elements, **program_kwargs)
    for step in passes:
        log_w, draws = step.draws.log_weights, step.draws.z  # (k, B), (k, B, z_dim)
        if out is None or z is None:
            out = log_w.new_empty((num_samples, x.shape[0]))
            z = draws.new_empty((num_samples, x.shape[0], draws.shape[-1]))
        k = slice(step.start, step.start + log_w.shape[0])
        out[k, step.rows] = log_w
        z[k, step.rows] = draws
    assert z is not None and out is not None
    return z, out


def collect_log_weights(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int,
    *,
    proposal: dist.TorchDistribution | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    **program_kwargs: Any,
) -> torch.Tensor:
    """The ``(K, N)`` log-weights of :func:`collect_weighted`.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> collect_log_weights(vae, torch.ones(3, 6), 10, max_elements=60).shape
        torch.Size([10, 3])
    """
    return collect_weighted(vae, x, num_samples, proposal=proposal, max_elements=max_elements, **program_kwargs)[1]
