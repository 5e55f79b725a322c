"""Names at the edge: the one ``{name: class}`` table per component, and the builder.

The CLI's choices and the checkpoint loader both read these tables; no other module
compares component names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ..config import ModelConfig, choose
from ..errors import ConfigError
from .conditions import Condition, OneHot
from .guides import (
    DiagonalNormalGuide,
    FlowGuide,
    FullCovarianceGuide,
    Guide,
    LowRankGuide,
)
from .hierarchical import HierarchicalVAE
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from .nn import MLP, ConvDecoder, ConvEncoder, size_of
from .priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
)
from .ssvae import SemiSupervisedVAE
from .vae import VAE

__all__ = [
    "NETWORKS",
    "CONDITIONS",
    "PRIORS",
    "GUIDES",
    "LIKELIHOODS",
    "build_vae",
]


def _labels(config: ModelConfig) -> OneHot:
    if config.num_classes < 2:
        raise ConfigError(
            f"`condition` labels needs the number of classes (>= 2), got `num_classes` {config.num_classes}: "
            "train on data with labels"
        )
    return OneHot(config.num_classes)


#: Condition factories: ``(config) -> Condition or None``. ``semisupervised`` is the
#: label of M2 (:class:`~pyro_vae.model.ssvae.SemiSupervisedVAE`): observed where known,
#: a latent variable where not.
CONDITIONS: dict[str, Callable[[ModelConfig], Condition | None]] = {
    "none": lambda c: None,
    "labels": _labels,
    "semisupervised": _labels,
}

#: Prior factories: ``(config, encoder, guide) -> Prior``. The encoder and guide head
#: are the VAE's own, already built (the VampPrior reuses them).
PRIORS: dict[str, Callable[[ModelConfig, nn.Module, Guide], Prior]] = {
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
#: A convolutional decoder outputs one value per pixel: the likelihood reads it directly.
LIKELIHOODS: dict[str, Callable[[ModelConfig, int], Likelihood]] = {
    "bernoulli": lambda c, h: BernoulliLikelihood(h, c.x_dim, identity_head=c.net == "conv"),
    "cbernoulli": lambda c, h: ContinuousBernoulliLikelihood(h, c.x_dim, identity_head=c.net == "conv"),
    "normal": lambda c, h: NormalLikelihood(h, c.x_dim, identity_head=c.net == "conv"),
    "poisson": lambda c, h: PoissonLikelihood(h, c.x_dim, identity_head=c.net == "conv"),
    "negbin": lambda c, h: NegativeBinomialLikelihood(h, c.x_dim, identity_head=c.net == "conv"),
}


def _conv_shape(config: ModelConfig) -> tuple[int, int]:
    shape = tuple(config.image_shape)
    if len(shape) != 2 or shape[0] * shape[1] != config.x_dim:
        raise ConfigError(
            f"`net` conv needs the image shape of the rows: `image_shape` {list(shape)} does not hold "
            f"{config.x_dim} pixels; train on image data, or pass `image_shape` H W"
        )
    return (int(shape[0]), int(shape[1]))


#: Network factories: ``(config, decoder_in_features) -> (encoder, decoder)``.
NETWORKS: dict[str, Callable[[ModelConfig, int], tuple[nn.Module, nn.Module]]] = {
    "mlp": lambda c, d: (
        MLP(c.x_dim, c.hidden, c.activation),
        MLP(d, tuple(reversed(c.hidden)), c.activation),
    ),
    "conv": lambda c, d: (
        ConvEncoder(_conv_shape(c), c.hidden, c.activation),
        ConvDecoder(d, _conv_shape(c), tuple(reversed(c.hidden)), c.activation),
    ),
}


def _hierarchical(
    config: ModelConfig,
    encoder: nn.Module,
    decoder: nn.Module,
    likelihood: Likelihood,
    guide: Guide,
    condition: Condition | None,
) -> HierarchicalVAE:
    """z2 -> z1 -> x: the prior is over z2, MLPs of ``top_hidden`` join the layers."""
    if condition is not None or config.prior == "vamp":
        raise ConfigError(
            "a two-layer VAE (`top_dim` > 0) takes no `condition` and no `prior` vamp (whose pseudo-inputs "
            "map to z1, not z2); use one layer, or another prior"
        )
    top = dataclasses.replace(config, z_dim=config.top_dim)
    prior = choose(PRIORS, config.prior, "prior")(top, encoder, guide)
    up = MLP(config.z_dim, config.top_hidden, config.activation)
    down = MLP(config.top_dim, tuple(reversed(config.top_hidden)), config.activation)
    return HierarchicalVAE(
        encoder, decoder, likelihood, guide, prior, up, down, z_dim=config.z_dim, top_dim=config.top_dim
    )


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
        raise ConfigError(
            f"`x_dim` must be >= 1 to build a model, got {config.x_dim}: set it to the data's number of features"
        )
    make_prior = choose(PRIORS, config.prior, "prior")
    make_guide = choose(GUIDES, config.guide, "guide")
    make_likelihood = choose(LIKELIHOODS, config.likelihood, "likelihood")
    condition = choose(CONDITIONS, config.condition, "condition")(config)
    c_dim = 0 if condition is None else condition.out_features
    if condition is not None and config.prior == "vamp":
        raise ConfigError(
            "`prior` vamp reads the encoder at its pseudo-inputs without a condition; "
            "use another prior for a conditional VAE"
        )
    encoder, decoder = choose(NETWORKS, config.net, "net")(config, config.z_dim + c_dim)
    # Likelihood, guide, prior: the prior comes last because the VampPrior reuses the
    # encoder and guide head.
    likelihood = make_likelihood(config, size_of(decoder))
    guide = make_guide(config, size_of(encoder) + c_dim)
    if config.top_dim:
        return _hierarchical(config, encoder, decoder, likelihood, guide, condition)
    prior = make_prior(config, encoder, guide)
    if config.condition == "semisupervised":
        return SemiSupervisedVAE(encoder, decoder, likelihood, guide, c_dim, prior=prior, z_dim=config.z_dim)
    return VAE(encoder, decoder, likelihood, prior=prior, guide=guide, z_dim=config.z_dim, condition=condition)
