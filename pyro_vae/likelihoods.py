"""Likelihoods p(x|z): heads that turn decoder features into a distribution over x.

Interface (all a new likelihood needs): subclass :class:`Likelihood`, create every
parameter in ``__init__``, and implement

- ``forward(h) -> Distribution`` with ``batch_shape == h.shape[:-1]`` and
  ``event_shape == (x_dim,)``, where ``h`` is the decoder's output;
- ``check_support(x)``, raising :class:`~pyro_vae.errors.DataError` with the fix when
  the data cannot come from this likelihood;
- the class attribute ``needs_binary`` (``True`` when observations must be 0/1, so
  that the data pipeline binarizes them).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from .errors import DataError
from .nn import SCALE_FLOOR, softplus_scale

__all__ = ["Likelihood", "BernoulliLikelihood", "NormalLikelihood"]


def _describe_bad(x: torch.Tensor, bad: torch.Tensor) -> str:
    rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten() if bad.dim() > 1 else bad.nonzero().flatten()
    return (
        f"{int(bad.sum())} value(s), first in row {int(rows[0])}; "
        f"data range is [{float(x.min()):.4g}, {float(x.max()):.4g}]"
    )


class Likelihood(nn.Module):
    """Base class of decoder likelihoods p(x|z).

    Args:
        in_features: Size of the decoder's output.
        x_dim: Number of features of one data point.
    """

    #: Observations must be exactly 0 or 1 (the data pipeline binarizes them).
    needs_binary: bool = False

    def __init__(self, in_features: int, x_dim: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.x_dim = x_dim

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


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels, parameterized by logits: binary data.

    Data in [0, 1] is accepted by :meth:`check_support`; the training pipeline turns it
    into 0/1 observations (dynamic or threshold binarization).

    Example:
        >>> lik = BernoulliLikelihood(4, 6)
        >>> lik(torch.zeros(3, 4)).event_shape
        torch.Size([6])
    """

    needs_binary = True

    def __init__(self, in_features: int, x_dim: int) -> None:
        super().__init__(in_features, x_dim)
        self.logits = nn.Linear(in_features, x_dim)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        bad = (x < 0) | (x > 1)
        if bad.any():
            raise DataError(
                f"the Bernoulli likelihood needs data in [0, 1], but {_describe_bad(x, bad)}; "
                "rescale the data to [0, 1] or use --likelihood normal for real-valued data"
            )

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
        >>> d.mean.shape, float(d.base_dist.scale[0, 0])
        (torch.Size([3, 6]), 1.0)
    """

    def __init__(self, in_features: int, x_dim: int, init_scale: float = 1.0) -> None:
        super().__init__(in_features, x_dim)
        self.loc = nn.Linear(in_features, x_dim)
        # Inverse of softplus_scale, so that the initial scale is exactly init_scale.
        raw = math.log(math.expm1(init_scale - SCALE_FLOOR))
        self.raw_scale = nn.Parameter(torch.full((x_dim,), raw))

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc = self.loc(h)  # (..., x_dim)
        return dist.Normal(loc, softplus_scale(self.raw_scale).expand_as(loc)).to_event(1)
