"""Guides q(z|x): heads that turn encoder features into a distribution over z.

Interface (all a new guide needs): subclass :class:`Guide`, create every parameter in
``__init__``, and implement

- ``forward(h) -> Distribution`` with ``batch_shape == h.shape[:-1]`` and
  ``event_shape == (z_dim,)``, where ``h`` is the encoder's output;
- ``encode(h) -> (loc, scale)``, each of shape ``h.shape[:-1] + (z_dim,)``: for the
  diagonal Normal these are exactly the parameters mu(x), sigma(x) of q(z|x); for
  other families, the location and the per-dimension scale of their Gaussian part.

The guides here, each with reparameterized draws (``rsample``):

- :class:`DiagonalNormalGuide`: Normal(mu(x), diag(sigma(x)^2)).
- :class:`FullCovarianceGuide`: MultivariateNormal(mu(x), L(x) L(x)^T), with a
  Cholesky factor L(x) whose diagonal is positive.
- :class:`LowRankGuide`: MultivariateNormal(mu(x), W(x) W(x)^T + diag(d(x)^2)).
- :class:`FlowGuide`: Normal(mu(x), diag(sigma(x)^2)) followed by inverse
  autoregressive transforms conditioned on the encoder's features (Kingma et al., 2016).
"""

from __future__ import annotations

from typing import cast

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ..errors import ConfigError
from .nn import flow_hidden, softplus_scale

__all__ = ["Guide", "DiagonalNormalGuide", "FullCovarianceGuide", "LowRankGuide", "FlowGuide"]


class Guide(nn.Module):
    """Base class of amortized guide families q(z|x).

    Args:
        in_features: Size of the encoder's output.
        z_dim: Size of the latent vector.
    """

    def __init__(self, in_features: int, z_dim: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.z_dim = z_dim

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Return ``(loc, scale)`` for encoder features ``h``."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Return q(z|x) for encoder features ``h``."""
        raise NotImplementedError


class DiagonalNormalGuide(Guide):
    """q(z|x) = Normal(mu(x), diag(sigma(x)^2)), the classic amortized guide.

    Two linear maps of the encoder's features give mu(x) and, through softplus,
    sigma(x): one pair of vectors per input x. They are the parameters of that input's
    approximate posterior, not statistics of the data set.

    Example:
        >>> g = DiagonalNormalGuide(4, 2)
        >>> loc, scale = g.encode(torch.zeros(3, 4))
        >>> loc.shape, bool((scale > 0).all())
        (torch.Size([3, 2]), True)
        >>> g(torch.zeros(3, 4)).event_shape
        torch.Size([2])
    """

    def __init__(self, in_features: int, z_dim: int) -> None:
        super().__init__(in_features, z_dim)
        self.loc = nn.Linear(in_features, z_dim)
        self.raw_scale = nn.Linear(in_features, z_dim)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), softplus_scale(self.raw_scale(h))  # (B, z_dim) each

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.encode(h)
        return dist.Normal(loc, scale).to_event(1)


class FullCovarianceGuide(Guide):
    """q(z|x) = MultivariateNormal(mu(x), L(x) L(x)^T): correlated latent dimensions.

    A linear map of the encoder's features gives the ``z_dim * (z_dim + 1) / 2``
    entries of the lower-triangular Cholesky factor L(x); its diagonal goes through
    softplus (plus a small floor) so that it is positive and the covariance is
    positive definite.

    :meth:`encode` returns mu(x) and the marginal standard deviations
    ``sqrt(diag(L L^T))``, the row norms of L(x).

    Example:
        >>> g = FullCovarianceGuide(4, 3)
        >>> q = g(torch.zeros(5, 4))
        >>> q.batch_shape, q.event_shape, q.rsample().shape
        (torch.Size([5]), torch.Size([3]), torch.Size([5, 3]))
    """

    def __init__(self, in_features: int, z_dim: int) -> None:
        super().__init__(in_features, z_dim)
        self.loc = nn.Linear(in_features, z_dim)
        self.raw_tril = nn.Linear(in_features, z_dim * (z_dim + 1) // 2)
        rows, cols = torch.tril_indices(z_dim, z_dim)
        # Fixed by z_dim, so not saved: a fresh instance recomputes them.
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)

    def scale_tril(self, h: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor L(x), shape ``h.shape[:-1] + (z_dim, z_dim)``."""
        raw = self.raw_tril(h)  # (..., z_dim (z_dim + 1) / 2)
        tril = raw.new_zeros(raw.shape[:-1] + (self.z_dim, self.z_dim))
        tril[..., self.tril_rows, self.tril_cols] = raw
        diagonal = softplus_scale(tril.diagonal(dim1=-2, dim2=-1))  # (..., z_dim)
        return tril.tril(-1) + torch.diag_embed(diagonal)  # (..., z_dim, z_dim)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), self.scale_tril(h).pow(2).sum(-1).sqrt()  # (B, z_dim) each

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.MultivariateNormal(self.loc(h), scale_tril=self.scale_tril(h))


class LowRankGuide(Guide):
    """q(z|x) = MultivariateNormal(mu(x), W(x) W(x)^T + diag(d(x)^2)).

    A covariance with ``rank`` correlated directions W(x) (``z_dim x rank``) plus an
    independent scale d(x) per dimension: cheaper than :class:`FullCovarianceGuide`
    for a large ``z_dim``.

    :meth:`encode` returns mu(x) and the marginal standard deviations
    ``sqrt(sum_r W_ir^2 + d_i^2)``.

    Args:
        in_features: Size of the encoder's output.
        z_dim: Size of the latent vector.
        rank: Number of columns of W(x), 1 to ``z_dim``.

    Raises:
        ConfigError: ``rank`` is not in 1 .. ``z_dim``.

    Example:
        >>> g = LowRankGuide(4, 3, rank=2)
        >>> q = g(torch.zeros(5, 4))
        >>> q.batch_shape, q.event_shape, q.cov_factor.shape
        (torch.Size([5]), torch.Size([3]), torch.Size([5, 3, 2]))
    """

    def __init__(self, in_features: int, z_dim: int, rank: int = 1) -> None:
        super().__init__(in_features, z_dim)
        if not 1 <= rank <= z_dim:
            raise ConfigError(f"`guide_rank` must be between 1 and `z_dim` {z_dim}, got {rank}")
        self.rank = rank
        self.loc = nn.Linear(in_features, z_dim)
        self.cov_factor = nn.Linear(in_features, z_dim * rank)
        self.raw_diag_scale = nn.Linear(in_features, z_dim)

    def _parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        factor = self.cov_factor(h).unflatten(-1, (self.z_dim, self.rank))  # (..., z_dim, rank)
        return self.loc(h), factor, softplus_scale(self.raw_diag_scale(h))  # (..., z_dim) loc and d

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, factor, diag_scale = self._parts(h)
        return loc, (factor.pow(2).sum(-1) + diag_scale.pow(2)).sqrt()  # (B, z_dim) each

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, factor, diag_scale = self._parts(h)
        # LowRankMultivariateNormal takes the diagonal as a variance.
        return dist.LowRankMultivariateNormal(loc, factor, diag_scale.pow(2))


class _FlowDistribution(dist.TransformedDistribution):
    """A transformed distribution whose ``log_prob`` broadcasts its argument.

    The inverse of an autoregressive transform starts from a tensor of the value's
    shape, so a value that only broadcasts against the batch (as
    ``MixtureSameFamily`` passes one, with a singleton component dimension) has to be
    expanded first. A value that already has the full shape is passed on as it is,
    keeping the transforms' cache of a fresh draw valid.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        full = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        if value.shape != full:
            value = value.expand(full)
        return super().log_prob(value)


class FlowGuide(Guide):
    """q(z|x): Normal(mu(x), diag(sigma(x)^2)) followed by conditional IAF layers.

    Each layer is Pyro's ``ConditionalAffineAutoregressive`` (an inverse
    autoregressive flow) whose MADE network also reads the encoder's features h(x),
    so every input gets its own non-Gaussian posterior. Draws and the density of a
    fresh draw cost one network pass per layer (the transforms cache their inverse);
    the density of an arbitrary z (e.g. a VampPrior built on this guide) costs
    ``z_dim`` passes per layer.

    :meth:`encode` returns mu(x) and sigma(x) of the Gaussian base, before the flow.

    Args:
        in_features: Size of the encoder's output (the flow's context).
        z_dim: Size of the latent vector (>= 2).
        num_layers: Number of autoregressive layers.
        hidden: Width of each layer's MADE network (default ``10 * z_dim``; at least
            ``z_dim``).

    Raises:
        ConfigError: ``z_dim < 2``, ``num_layers < 1`` or ``hidden < z_dim``.

    Example:
        >>> g = FlowGuide(4, 3, num_layers=2)
        >>> q = g(torch.zeros(5, 4))
        >>> q.batch_shape, q.event_shape, q.rsample().shape
        (torch.Size([5]), torch.Size([3]), torch.Size([5, 3]))
    """

    def __init__(self, in_features: int, z_dim: int, num_layers: int = 2, hidden: int | None = None) -> None:
        super().__init__(in_features, z_dim)
        hidden = flow_hidden("guide", z_dim, num_layers, hidden)
        self.base = DiagonalNormalGuide(in_features, z_dim)
        self.layers = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(z_dim, in_features, [hidden]))
            for _ in range(num_layers)
        )

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.encode(h)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        # Each ConditionalAffineAutoregressive.condition(h) gives an IAF layer for this h.
        transforms = [cast(ConditionalAffineAutoregressive, layer).condition(h) for layer in self.layers]
        return _FlowDistribution(self.base(h), transforms)  # batch h.shape[:-1], event (z_dim,)
