"""Names at the edge: the one ``{name: class}`` table per component, and the builder.

The CLI's choices and the checkpoint loader both read these tables; no other module
compares component names.
"""

from __future__ import annotations

from typing import Callable

import torch  # noqa: F401  (used by the doctest)

from .config import ModelConfig, TrainConfig
from .errors import ConfigError
from .guides import DiagonalNormalGuide, Guide
from .likelihoods import BernoulliLikelihood, Likelihood, NormalLikelihood
from .nn import MLP
from .objectives import Objective, TraceELBO
from .priors import Prior, StandardNormalPrior
from .vae import VAE

__all__ = ["PRIORS", "GUIDES", "LIKELIHOODS", "OBJECTIVES", "build_vae", "build_objective"]

#: Prior factories: ``(config) -> Prior``.
PRIORS: dict[str, Callable[[ModelConfig], Prior]] = {
    "normal": lambda c: StandardNormalPrior(c.z_dim),
}

#: Guide factories: ``(config, encoder_out_features) -> Guide``.
GUIDES: dict[str, Callable[[ModelConfig, int], Guide]] = {
    "diagonal": lambda c, h: DiagonalNormalGuide(h, c.z_dim),
}

#: Likelihood factories: ``(config, decoder_out_features) -> Likelihood``.
LIKELIHOODS: dict[str, Callable[[ModelConfig, int], Likelihood]] = {
    "bernoulli": lambda c, h: BernoulliLikelihood(h, c.x_dim),
    "normal": lambda c, h: NormalLikelihood(h, c.x_dim),
}

#: Objective factories: ``(train config) -> Objective``.
OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    "trace": lambda t: TraceELBO(t.particles),
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
    return VAE(
        encoder,
        decoder,
        make_likelihood(config, decoder.out_features),
        prior=make_prior(config),
        guide=make_guide(config, encoder.out_features),
        z_dim=config.z_dim,
    )


def build_objective(config: TrainConfig) -> Objective:
    """The training objective named by ``config.elbo``.

    Raises:
        ConfigError: The name is unknown.
    """
    return _pick(OBJECTIVES, config.elbo, "objective", "--elbo")(config)
