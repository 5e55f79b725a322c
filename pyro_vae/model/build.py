"""Names at the edge: the one ``{name: class}`` table per component, and the builder.

The CLI's choices and the checkpoint loader both read these tables; no other module
compares component names.
"""

from __future__ import annotations

from typing import Callable

from ..config import ModelConfig, choose
from ..errors import ConfigError
from .guides import (
    DiagonalNormalGuide,
    FlowGuide,
    FullCovarianceGuide,
    Guide,
    LowRankGuide,
)
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from .nn import MLP
from .priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
)
from .vae import VAE

__all__ = [
    "PRIORS",
    "GUIDES",
    "LIKELIHOODS",
    "build_vae",
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

def build_vae(config: ModelConfig) -> VAE:
    """Build a fresh, randomly initialised VAE from a :class:`ModelConfig`.

    Raises:
        ConfigError: A name is unknown or a value is out of range.

    Example:
        >>> import torch
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> vae.encode(torch.zeros(1, 6))[0].shape
        torch.Size([1, 2])
    """
    config.validate()
    if config.x_dim < 1:
        raise ConfigError(f"`x_dim` must be >= 1 to build a model, got {config.x_dim}: set it to the data's number of features")
    make_prior = choose(PRIORS, config.prior, "prior")
    make_guide = choose(GUIDES, config.guide, "guide")
    make_likelihood = choose(LIKELIHOODS, config.likelihood, "likelihood")
    encoder = MLP(config.x_dim, config.hidden, config.activation)
    decoder = MLP(config.z_dim, tuple(reversed(config.hidden)), config.activation)
    # Likelihood, guide, prior: the prior comes last because the VampPrior reuses the
    # encoder and guide head.
    likelihood = make_likelihood(config, decoder.out_features)
    guide = make_guide(config, encoder.out_features)
    prior = make_prior(config, encoder, guide)
    return VAE(encoder, decoder, likelihood, prior=prior, guide=guide, z_dim=config.z_dim)
