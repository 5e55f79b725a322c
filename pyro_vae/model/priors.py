"""Priors p(z): modules whose ``forward()`` returns a distribution over one z.

Interface (all a new prior needs): subclass :class:`Prior`, create every parameter in
``__init__``, and return from ``forward()`` a distribution with ``event_shape ==
(z_dim,)`` and empty ``batch_shape``. The model places it inside the data plate.

The priors here:

- :class:`StandardNormalPrior`: Normal(0, I), fixed.
- :class:`LearnedNormalPrior`: Normal(m, diag(s^2)) with learned m and s.
- :class:`MixturePrior`: a mixture of K diagonal Gaussians with learned weights,
  locations and scales.
- :class:`VampPrior`: the mixture of the guide's own posteriors at K learned
  pseudo-inputs (Tomczak and Welling, 2018).
- :class:`FlowPrior`: a standard Normal pushed through learned masked
  autoregressive transforms (Papamakarios et al., 2017).

Only the first two have a closed-form KL divergence to a Gaussian guide, which is
what ``--elbo meanfield`` needs; :func:`pyro_vae.inference.objectives.check_compatible` finds that
out by asking ``torch.distributions.kl_divergence``, not by name.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn

from ..errors import ConfigError
from .guides import Guide
from .nn import flow_hidden, inverse_softplus_scale, softplus_scale

__all__ = ["Prior", "StandardNormalPrior", "LearnedNormalPrior", "MixturePrior", "VampPrior", "FlowPrior"]


class Prior(nn.Module):
    """Base class of priors p(z).

    Args:
        z_dim: Size of the latent vector.
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """Return p(z), ``event_shape == (z_dim,)``."""
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """p(z) = Normal(0, I), the prior of the classic VAE.

    Example:
        >>> p = StandardNormalPrior(2)()
        >>> p.event_shape, p.batch_shape
        (torch.Size([2]), torch.Size([]))
    """

    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        # Buffers, not constants, so that .to(device) moves them with the model.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormalPrior(Prior):
    """p(z) = Normal(m, diag(s^2)) with a learned location m and scale s.

    Starts as Normal(0, I). With a decoder whose first layer is linear the learned
    location and scale can be absorbed by the decoder, so the gain over the standard
    Normal is small; the prior is mostly useful as the simplest learnable baseline.

    Args:
        z_dim: Size of the latent vector.

    Example:
        >>> p = LearnedNormalPrior(2)()
        >>> p.event_shape, float(p.base_dist.scale[0].detach())
        (torch.Size([2]), 1.0)
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.raw_scale = nn.Parameter(torch.full((z_dim,), inverse_softplus_scale(1.0)))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, softplus_scale(self.raw_scale)).to_event(1)


class MixturePrior(Prior):
    """p(z) = sum_k w_k Normal(m_k, diag(s_k^2)): a mixture of K diagonal Gaussians.

    Weights (as logits), locations and scales are all learned. The locations start as
    draws from Normal(0, I) so that the components differ, the scales at 1 and the
    weights uniform; with ``num_components=1`` the prior is exactly a learned Normal.

    Args:
        z_dim: Size of the latent vector.
        num_components: K, the number of Gaussians.

    Raises:
        ConfigError: ``num_components < 1``.

    Example:
        >>> p = MixturePrior(2, num_components=3)()
        >>> p.event_shape, p.batch_shape, p.log_prob(torch.zeros(4, 2)).shape
        (torch.Size([2]), torch.Size([]), torch.Size([4]))
    """

    def __init__(self, z_dim: int, num_components: int = 10) -> None:
        super().__init__(z_dim)
        if num_components < 1:
            raise ConfigError(f"`prior_components` must be >= 1, got {num_components}")
        self.num_components = num_components
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))  # (K, z_dim)
        self.raw_scales = nn.Parameter(torch.full((num_components, z_dim), inverse_softplus_scale(1.0)))

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, softplus_scale(self.raw_scales)).to_event(1)  # batch (K,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(Prior):
    """The VampPrior: p(z) = (1/K) sum_k q(z | u_k) at K learned pseudo-inputs u_k.

    The prior reuses the VAE's own encoder and guide head, so it needs references to
    them. They are held as plain attributes, not registered as submodules: the VAE
    owns and registers them once, so ``parameters()`` lists each weight once and
    ``state_dict()`` has no duplicate keys (safetensors refuses shared tensors). The
    only parameters of this module are the pseudo-inputs. Moving the VAE with
    ``.to(device)`` moves the referenced modules too; ``copy.deepcopy`` of the VAE
    keeps the references pointing at the copies.

    The pseudo-inputs start uniform in [0, 1], the range of image data scaled to
    [0, 1] (digits, MNIST); :meth:`init_from_data` sets them to randomly chosen data
    rows instead, for data in another range.

    Args:
        z_dim: Size of the latent vector.
        num_components: K, the number of pseudo-inputs.
        encoder: The VAE's encoder network (x -> features).
        guide: The VAE's guide head (features -> q(z|x)).

    Raises:
        ConfigError: ``num_components < 1``, or the guide's ``z_dim`` is not ``z_dim``.

    Example:
        >>> from pyro_vae.model.guides import DiagonalNormalGuide
        >>> from pyro_vae.model.nn import MLP
        >>> encoder = MLP(6, [4])
        >>> prior = VampPrior(2, 5, encoder, DiagonalNormalGuide(4, 2))
        >>> p = prior()
        >>> p.event_shape, p.batch_shape, [n for n, _ in prior.named_parameters()]
        (torch.Size([2]), torch.Size([]), ['pseudo_inputs'])
    """

    def __init__(self, z_dim: int, num_components: int, encoder: nn.Module, guide: Guide) -> None:
        super().__init__(z_dim)
        if num_components < 1:
            raise ConfigError(f"`prior_components` must be >= 1, got {num_components}")
        if guide.z_dim != z_dim:
            raise ConfigError(f"the VampPrior needs a guide with z_dim {z_dim}, got {guide.z_dim}")
        self.num_components = num_components
        x_dim = getattr(encoder, "in_features", None)
        if x_dim is None:
            raise ConfigError(
                "the VampPrior needs an encoder with an in_features attribute (e.g. pyro_vae.model.nn.MLP)"
            )
        self.pseudo_inputs = nn.Parameter(torch.rand(num_components, x_dim))  # (K, x_dim)
        # A tuple is not a Module, so nn.Module does not register these (see above).
        self._amortized = (encoder, guide)

    def forward(self) -> dist.TorchDistribution:
        encoder, guide = self._amortized
        components = guide(encoder(self.pseudo_inputs))  # batch (K,), event (z_dim,)
        mixing = dist.Categorical(logits=torch.zeros(self.num_components, device=self.pseudo_inputs.device))
        return dist.MixtureSameFamily(mixing, components)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the pseudo-inputs to K rows of ``x`` drawn at random (with replacement
        when ``x`` has fewer than K rows).

        Args:
            x: Data of shape ``(N, x_dim)``.
            generator: Random generator of the draw.

        Raises:
            ConfigError: ``x`` has the wrong number of features.
        """
        if x.dim() != 2 or x.shape[1] != self.pseudo_inputs.shape[1]:
            raise ConfigError(
                f"expected data of shape (N, {self.pseudo_inputs.shape[1]}) for the pseudo-inputs, got {tuple(x.shape)}"
            )
        replace = x.shape[0] < self.num_components
        if replace:
            rows = torch.randint(0, x.shape[0], (self.num_components,), generator=generator)
        else:
            rows = torch.randperm(x.shape[0], generator=generator)[: self.num_components]
        self.pseudo_inputs.copy_(x[rows.to(x.device)].to(self.pseudo_inputs))


class FlowPrior(Prior):
    """A normalizing-flow prior: Normal(0, I) pushed through learned transforms.

    Each layer is the inverse of Pyro's ``AffineAutoregressive`` (a masked
    autoregressive flow, MAF): its density ``log_prob(z)``, which training needs for
    every draw of the guide, costs one network pass per layer; drawing from the prior
    (only done to generate samples) costs ``z_dim`` passes per layer. Every layer's
    MADE network has its own random variable order, saved in the ``state_dict``.

    The transform objects are rebuilt around the stored networks on every call, so
    that no tensor of a previous call stays cached in the module (a cached non-leaf
    tensor would make ``copy.deepcopy`` of the model fail).

    Args:
        z_dim: Size of the latent vector (>= 2).
        num_layers: Number of autoregressive layers.
        hidden: Width of each layer's MADE network (default ``10 * z_dim``; at least
            ``z_dim``).

    Raises:
        ConfigError: ``z_dim < 2``, ``num_layers < 1`` or ``hidden < z_dim``.

    Example:
        >>> p = FlowPrior(2, num_layers=2)()
        >>> p.event_shape, p.batch_shape, p.log_prob(torch.zeros(4, 2)).shape
        (torch.Size([2]), torch.Size([]), torch.Size([4]))
    """

    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, z_dim: int, num_layers: int = 2, hidden: int | None = None) -> None:
        super().__init__(z_dim)
        hidden = flow_hidden("prior", z_dim, num_layers, hidden)
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        self.layers = nn.ModuleList(AutoRegressiveNN(z_dim, [hidden]) for _ in range(num_layers))

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        transforms = [AffineAutoregressive(arn).inv for arn in self.layers]
        return dist.TransformedDistribution(base, transforms)
