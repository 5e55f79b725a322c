"""Likelihoods p(x|z): heads that turn decoder features into a distribution over x.

Interface (all a new likelihood needs): subclass :class:`Likelihood`, create every
parameter in ``__init__``, and implement

- ``forward(h) -> Distribution`` with ``batch_shape == h.shape[:-1]`` and
  ``event_shape == (x_dim,)``, where ``h`` is the decoder's output;
- ``check_support(x)``, raising :class:`~pyro_vae.errors.DataError` with the fix when
  the data cannot come from this likelihood;
- the class attribute ``needs_binary`` (``True`` when observations must be 0/1, so
  that the data pipeline binarizes them).

The likelihoods here, by the data they model:

- binary (0/1): :class:`BernoulliLikelihood` (grey values are binarized);
- values in [0, 1], kept as they are: :class:`ContinuousBernoulliLikelihood`;
- real values: :class:`NormalLikelihood`;
- counts: :class:`PoissonLikelihood`, :class:`NegativeBinomialLikelihood`
  (over-dispersed counts, as in scVI).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import ConfigError, DataError
from .nn import inverse_softplus_scale, softplus_scale

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "NormalLikelihood",
    "PoissonLikelihood",
    "NegativeBinomialLikelihood",
]


def _describe_bad(x: torch.Tensor, bad: torch.Tensor) -> str:
    rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten() if bad.dim() > 1 else bad.nonzero().flatten()
    return (
        f"{int(bad.sum())} value(s) are not, the first in row {int(rows[0])}; "
        f"the data range is [{float(x.min()):.4g}, {float(x.max()):.4g}]"
    )


class Likelihood(nn.Module):
    """Base class of decoder likelihoods p(x|z).

    Args:
        in_features: Size of the decoder's output.
        x_dim: Number of features of one data point.
        identity_head: The decoder's output already is the per-feature parameter (a
            convolutional decoder with one output per pixel): no linear map in between.
            Needs ``in_features == x_dim``.
    """

    #: Observations must be exactly 0 or 1 (the data pipeline binarizes them).
    needs_binary: bool = False

    def __init__(self, in_features: int, x_dim: int, *, identity_head: bool = False) -> None:
        super().__init__()
        if identity_head and in_features != x_dim:
            raise ConfigError(
                f"an identity likelihood head needs the decoder to output one value per feature ({x_dim}), "
                f"got {in_features}; use a linear head or a decoder with {x_dim} outputs"
            )
        self.in_features = in_features
        self.x_dim = x_dim
        self.identity_head = identity_head

    def _head(self) -> nn.Module:
        """The map from decoder features to one parameter per feature."""
        return nn.Identity() if self.identity_head else nn.Linear(self.in_features, self.x_dim)

    def check_support(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` if ``x`` is outside this likelihood's support."""
        if not torch.isfinite(x).all():
            raise DataError(
                f"data holds NaN or inf: {_describe_bad(x, ~torch.isfinite(x))}; "
                "clean or impute those values before training"
            )

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Return p(x|z) for decoder features ``h``."""
        raise NotImplementedError


class _UnitIntervalLikelihood(Likelihood):
    """Shared head and support check of the likelihoods for data in [0, 1]: logits per feature."""

    _label = "[0, 1]"

    def __init__(self, in_features: int, x_dim: int, *, identity_head: bool = False) -> None:
        super().__init__(in_features, x_dim, identity_head=identity_head)
        self.logits = self._head()

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        bad = (x < 0) | (x > 1)
        if bad.any():
            raise DataError(
                f"the {self._label} likelihood needs data in [0, 1], but {_describe_bad(x, bad)}; "
                "rescale the data to [0, 1] or use `likelihood` normal for real-valued data"
            )


class BernoulliLikelihood(_UnitIntervalLikelihood):
    """Independent Bernoulli pixels, parameterized by logits: binary data.

    Data in [0, 1] is accepted by :meth:`check_support`; the training pipeline turns it
    into 0/1 observations (dynamic or threshold binarization).

    Example:
        >>> lik = BernoulliLikelihood(4, 6)
        >>> lik(torch.zeros(3, 4)).event_shape
        torch.Size([6])
    """

    needs_binary = True
    _label = "Bernoulli"

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.logits(h)).to_event(1)  # batch h.shape[:-1], event (x_dim,)


class NormalLikelihood(Likelihood):
    """Independent Normal features with a learned scale per feature: real-valued data.

    Args:
        in_features: Size of the decoder's output.
        x_dim: Number of features of one data point.
        init_scale: Initial standard deviation of every feature.

    Example:
        >>> lik = NormalLikelihood(4, 6)
        >>> d = lik(torch.zeros(3, 4))
        >>> d.mean.shape, float(d.base_dist.scale[0, 0].detach())
        (torch.Size([3, 6]), 1.0)
    """

    def __init__(self, in_features: int, x_dim: int, init_scale: float = 1.0, *, identity_head: bool = False) -> None:
        super().__init__(in_features, x_dim, identity_head=identity_head)
        self.loc = self._head()
        # The initial scale is exactly init_scale.
        self.raw_scale = nn.Parameter(torch.full((x_dim,), inverse_softplus_scale(init_scale)))

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc = self.loc(h)  # (..., x_dim)
        return dist.Normal(loc, softplus_scale(self.raw_scale).expand_as(loc)).to_event(1)


class ContinuousBernoulliLikelihood(_UnitIntervalLikelihood):
    """Independent continuous Bernoulli features: data in [0, 1], not binarized.

    The continuous Bernoulli (Loaiza-Ganem and Cunningham, 2019) is the normalized
    version of the Bernoulli density on [0, 1], so grey values are modelled as they
    are and the log-likelihood is a proper density.

    Example:
        >>> lik = ContinuousBernoulliLikelihood(4, 6)
        >>> d = lik(torch.zeros(3, 4))
        >>> d.event_shape, d.log_prob(torch.full((3, 6), 0.25)).shape
        (torch.Size([6]), torch.Size([3]))
    """

    _label = "continuous Bernoulli"

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=self.logits(h)).to_event(1)  # batch h.shape[:-1], event (x_dim,)


class _CountLikelihood(Likelihood):
    """Shared support check of the count likelihoods: non-negative integers."""

    _name = "count"

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        bad = (x < 0) | (x != torch.round(x))
        if bad.any():
            raise DataError(
                f"the {self._name} likelihood needs counts (non-negative integers), but {_describe_bad(x, bad)}; "
                "pass raw counts, or use `likelihood` normal for real-valued data"
            )


class PoissonLikelihood(_CountLikelihood):
    """Independent Poisson counts with rate softplus(W h + b).

    Example:
        >>> lik = PoissonLikelihood(4, 6)
        >>> d = lik(torch.zeros(3, 4))
        >>> d.event_shape, d.log_prob(torch.ones(3, 6)).shape
        (torch.Size([6]), torch.Size([3]))
    """

    _name = "Poisson"

    def __init__(self, in_features: int, x_dim: int, *, identity_head: bool = False) -> None:
        super().__init__(in_features, x_dim, identity_head=identity_head)
        self.raw_rate = self._head()

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        # softplus rather than exp: a large pre-activation gives a large rate, not inf.
        return dist.Poisson(softplus_scale(self.raw_rate(h))).to_event(1)


class NegativeBinomialLikelihood(_CountLikelihood):
    """Independent negative binomial counts with mean mu(z) and a learned dispersion.

    Parameterized as in scVI by the mean ``mu`` (from the decoder, through softplus)
    and an inverse dispersion ``theta`` per feature (learned, shared by all data
    points): the variance is ``mu + mu^2 / theta``, so small ``theta`` means strong
    over-dispersion and ``theta -> inf`` gives the Poisson. In the ``(total_count,
    logits)`` form of the distribution, ``total_count = theta`` and ``logits =
    log(mu) - log(theta)``.

    Args:
        in_features: Size of the decoder's output.
        x_dim: Number of features of one data point.
        init_theta: Initial inverse dispersion of every feature.

    Example:
        >>> lik = NegativeBinomialLikelihood(4, 6)
        >>> d = lik(torch.zeros(3, 4))
        >>> d.event_shape, round(float(lik.theta[0].detach()), 4)
        (torch.Size([6]), 1.0)
    """

    _name = "negative binomial"

    def __init__(self, in_features: int, x_dim: int, init_theta: float = 1.0, *, identity_head: bool = False) -> None:
        super().__init__(in_features, x_dim, identity_head=identity_head)
        self.raw_mean = self._head()
        self.raw_theta = nn.Parameter(torch.full((x_dim,), inverse_softplus_scale(init_theta)))

    @property
    def theta(self) -> torch.Tensor:
        """The inverse dispersion per feature, shape ``(x_dim,)``."""
        return softplus_scale(self.raw_theta)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        mean = softplus_scale(self.raw_mean(h))  # (..., x_dim)
        theta = self.theta.expand_as(mean)
        return dist.NegativeBinomial(total_count=theta, logits=mean.log() - theta.log()).to_event(1)
