"""Names at the edge: the one ``{name: class}`` table per component, and the builder.

The CLI's choices and the checkpoint loader both read these tables; no other module
compares component names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..config import ModelConfig, TrainConfig
from ..errors import ConfigError
from .guides import DiagonalNormalGuide, FlowGuide, FullCovarianceGuide, Guide, LowRankGuide
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from .nn import MLP
from ..inference.objectives import IWAE, Objective, TraceELBO, TraceMeanFieldELBO
from .priors import FlowPrior, LearnedNormalPrior, MixturePrior, Prior, StandardNormalPrior, VampPrior
from .vae import VAE

__all__ = [
    "PRIORS",
    "GUIDES",
    "LIKELIHOODS",
    "OBJECTIVES",
    "build_vae",
    "build_objective",
    "check_compatible",
]

#: Prior factories: ``(config, encoder, guide) -> Prior``. The encoder and guide head
#: are the VAE's own, already built (the VampPrior reuses them).
PRIORS: dict[str, Callable[[ModelConfig, MLP, Guide], Prior]] = {
    "normal": lambda c, e, g: StandardNormalPrior(c.z_dim),
    "learned": lambda c, e, g: LearnedNormalPrior(c.z_dim),
    "mixture": lambda c, e, g: MixturePrior(c.z_dim, c.prior_components),
    "vamp": lambda c, e, g: VampPrior(c.z_dim, c.prior_components, e, g),
    "flow": lambda c, e, g: FlowPrior(c.z_dim, c.flow_layers),
}

#: Guide factories: ``(config, encoder_out_features) -> Guide``.
GUIDES: dict[str, Callable[[ModelConfig, int], Guide]] = {
    "diagonal": lambda c, h: DiagonalNormalGuide(h, c.z_dim),
    "fullcov": lambda c, h: FullCovarianceGuide(h, c.z_dim),
    "lowrank": lambda c, h: LowRankGuide(h, c.z_dim, c.guide_rank),
    "flow": lambda c, h: FlowGuide(h, c.z_dim, c.flow_layers),
}

#: Likelihood factories: ``(config, decoder_out_features) -> Likelihood``.
LIKELIHOODS: dict[str, Callable[[ModelConfig, int], Likelihood]] = {
    "bernoulli": lambda c, h: BernoulliLikelihood(h, c.x_dim),
    "cbernoulli": lambda c, h: ContinuousBernoulliLikelihood(h, c.x_dim),
    "normal": lambda c, h: NormalLikelihood(h, c.x_dim),
    "poisson": lambda c, h: PoissonLikelihood(h, c.x_dim),
    "negbin": lambda c, h: NegativeBinomialLikelihood(h, c.x_dim),
}

#: Objective factories: ``(train config) -> Objective``.
OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    # Pyro's Trace_ELBO run as a graph traced once per batch shape: the same draws and
    # gradients as "trace-eager", without Pyro's per-step Python (see TracedLoss).
    "trace": lambda t: TraceELBO(t.particles),
    "trace-eager": lambda t: TraceELBO(t.particles, jit=False),
    "meanfield": lambda t: TraceMeanFieldELBO(t.particles),
    "iwae": lambda t: IWAE(t.particles),
}


def _pick(table: dict, name: str, what: str, flag: str):
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r} for {flag}; choose one of {', '.join(sorted(table))}")
    return table[name]


def build_vae(config: ModelConfig) -> VAE:
    """Build a fresh, randomly initialised VAE from a :class:`ModelConfig`.

    Raises:
        ConfigError: A name is unknown or a value is out of range.

    Example:
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> vae.encode(torch.zeros(1, 6))[0].shape
        torch.Size([1, 2])
    """
    config.validate()
    if config.x_dim < 1:
        raise ConfigError(f"x_dim must be >= 1 to build a model, got {config.x_dim}: set it to the data's number of features")
    make_prior = _pick(PRIORS, config.prior, "prior", "--prior")
    make_guide = _pick(GUIDES, config.guide, "guide", "--guide")
    make_likelihood = _pick(LIKELIHOODS, config.likelihood, "likelihood", "--likelihood")
    encoder = MLP(config.x_dim, config.hidden, config.activation)
    decoder = MLP(config.z_dim, tuple(reversed(config.hidden)), config.activation)
    # Likelihood, guide, prior: the prior comes last because the VampPrior reuses the
    # encoder and guide head.
    likelihood = make_likelihood(config, decoder.out_features)
    guide = make_guide(config, encoder.out_features)
    prior = make_prior(config, encoder, guide)
    return VAE(encoder, decoder, likelihood, prior=prior, guide=guide, z_dim=config.z_dim)


def build_objective(config: TrainConfig) -> Objective:
    """The training objective named by ``config.elbo``.

    Raises:
        ConfigError: The name is unknown, or the objective takes no KL weight and
            ``beta != 1`` or a KL warm-up was asked for.
    """
    objective = _pick(OBJECTIVES, config.elbo, "objective", "--elbo")(config)
    if not objective.supports_beta and (config.beta != 1.0 or config.kl_warmup > 0):
        raise ConfigError(
            f"--elbo {config.elbo} takes no KL weight, got --beta {config.beta} and --kl-warmup "
            f"{config.kl_warmup}; use --beta 1 --kl-warmup 0, or --elbo trace for a beta-VAE"
        )
    return objective


def check_compatible(model: ModelConfig, train: TrainConfig) -> None:
    """Raise :class:`ConfigError` if the objective ``train.elbo`` cannot train the model ``model``.

    Builds the objective and a throw-away model (``x_dim`` 1 if not yet known; the
    global random state is left untouched) and asks the objective (its ``check``),
    so that e.g. ``--elbo meanfield`` with a prior that has no analytic KL fails
    before training, whatever the components are called.

    Raises:
        ConfigError: A name is unknown, a value out of range, or the combination invalid.

    Example:
        >>> check_compatible(ModelConfig(prior="mixture"), TrainConfig(elbo="meanfield"))
        Traceback (most recent call last):
        ...
        pyro_vae.errors.ConfigError: --elbo meanfield with --prior mixture and --guide diagonal: the guide's Independent(Normal) and the prior's MixtureSameFamily have no analytic KL divergence, which the mean-field ELBO needs; use --elbo trace
    """
    objective = build_objective(train)
    with torch.random.fork_rng(devices=[]):
        probe = build_vae(dataclasses.replace(model, x_dim=model.x_dim or 1))
    try:
        objective.check(probe)
    except ConfigError as err:
        raise ConfigError(f"--elbo {train.elbo} with --prior {model.prior} and --guide {model.guide}: {err}") from None
