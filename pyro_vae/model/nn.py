"""Networks only: plain ``nn.Module`` bodies with no distributions attached.

An encoder maps x to features; a decoder maps z to features. The distribution heads
(guides and likelihoods) own the last linear layer, so that the same body can serve
any guide or likelihood.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ACTIVATIONS", "MLP", "SCALE_FLOOR", "softplus_scale", "inverse_softplus_scale", "flow_hidden"]

#: Hidden-layer non-linearities by name (the one table the CLI and the config use).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}

#: Floor added to every softplus scale, so that a standard deviation never reaches 0.
SCALE_FLOOR = 1e-4


def softplus_scale(raw: torch.Tensor) -> torch.Tensor:
    """Map an unconstrained tensor to a standard deviation: softplus plus a small floor."""
    return nn.functional.softplus(raw) + SCALE_FLOOR


def inverse_softplus_scale(scale: float) -> float:
    """The raw value that :func:`softplus_scale` maps to ``scale`` (``scale > SCALE_FLOOR``).

    Example:
        >>> float(softplus_scale(torch.tensor(inverse_softplus_scale(1.0))))
        1.0
    """
    return math.log(math.expm1(scale - SCALE_FLOOR))


def flow_hidden(kind: str, z_dim: int, num_layers: int, hidden: int | None) -> int:
    """Check the sizes of an autoregressive flow and return its hidden width.

    Args:
        kind: ``"prior"`` or ``"guide"``, for the message.
        z_dim: Size of the latent vector (>= 2).
        num_layers: Number of autoregressive layers (>= 1).
        hidden: Width of each layer's MADE network; default ``10 * z_dim`` (>= ``z_dim``).

    Raises:
        ConfigError: A size is out of range.
    """
    hidden = 10 * z_dim if hidden is None else hidden
    if z_dim < 2:
        raise ConfigError(f"a flow {kind} needs `z_dim` >= 2 (an autoregressive flow in 1-D is affine), got {z_dim}")
    if num_layers < 1:
        raise ConfigError(f"`flow_layers` must be >= 1, got {num_layers}")
    if hidden < z_dim:
        raise ConfigError(f"the flow's hidden width must be >= z_dim {z_dim}, got {hidden}")
    return hidden


class MLP(nn.Module):
    """A stack of ``Linear -> activation`` layers.

    With an empty ``hidden`` the MLP is the identity, which makes a linear decoder
    (probabilistic PCA) or a linear encoder.

    Args:
        in_features: Size of the input's last dimension.
        hidden: Widths of the hidden layers, in order.
        activation: Key of :data:`ACTIVATIONS`.

    Example:
        >>> net = MLP(6, [4])
        >>> net(torch.zeros(3, 6)).shape
        torch.Size([3, 4])
        >>> net.out_features
        4
    """

    def __init__(self, in_features: int, hidden: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layers to ``x`` of shape ``(..., in_features)``; returns ``(..., out_features)``."""
        return self.layers(x)
