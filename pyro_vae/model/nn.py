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

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "ConvEncoder",
    "ConvDecoder",
    "SCALE_FLOOR",
    "softplus_scale",
    "inverse_softplus_scale",
    "flow_hidden",
    "size_of",
]

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


def size_of(net: nn.Module, attribute: str = "out_features") -> int:
    """The size a network declares as ``out_features`` (or ``in_features``).

    A network tells the heads around it its sizes through these attributes; a body
    without them can still serve when every head is given explicitly.

    Raises:
        ConfigError: ``net`` declares no such integer attribute.

    Example:
        >>> size_of(MLP(6, [4, 3])), size_of(MLP(6, [4, 3]), "in_features")
        (3, 6)
    """
    size = getattr(net, attribute, None)
    if not isinstance(size, int):
        raise ConfigError(
            f"{type(net).__name__} declares no integer `{attribute}`; give the network that attribute "
            "(see examples/custom_network.py), or pass the heads that need it explicitly"
        )
    return size


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


def _conv_image_shape(image_shape: Sequence[int], channels: Sequence[int], activation: str) -> tuple[int, int]:
    """``(H, W)`` of a convolutional network's images, after checking its arguments.

    Raises:
        ConfigError: An unknown activation, an image smaller than 2 x 2, or no layer.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if len(image_shape) != 2 or min(image_shape) < 2:
        raise ConfigError(
            f"a convolutional network needs an image shape (H, W) of at least 2 x 2, got {tuple(image_shape)}"
        )
    if not channels or min(channels) < 1:
        raise ConfigError(f"a convolutional network needs at least one layer of >= 1 channels, got {list(channels)}")
    return (int(image_shape[0]), int(image_shape[1]))


def _conv_sizes(size: int, layers: int) -> list[int]:
    """Spatial sizes after each stride-2 convolution (kernel 3, padding 1): ``ceil(s / 2)``."""
    sizes = [size]
    for _ in range(layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """Image rows -> features: stride-2 convolutions, then flattened.

    The input is a batch of flat rows ``(..., H * W)`` (how the VAE holds x); each layer
    halves the height and width (rounding up), so it fits 28 x 28 (-> 14 -> 7) and
    8 x 8 (-> 4 -> 2) alike.

    Args:
        image_shape: ``(H, W)`` of one image (one channel).
        channels: Channels of each convolution, in order (at least one).
        activation: Key of :data:`ACTIVATIONS`.

    Example:
        >>> enc = ConvEncoder((8, 8), [4, 8])
        >>> enc(torch.zeros(3, 64)).shape, enc.out_features
        (torch.Size([3, 32]), 32)
    """

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        self.image_shape = _conv_image_shape(image_shape, channels, activation)
        layers: list[nn.Module] = []
        width = 1
        for c in channels:
            layers += [nn.Conv2d(width, c, kernel_size=3, stride=2, padding=1), ACTIVATIONS[activation]()]
            width = c
        self.layers = nn.Sequential(*layers)
        h = _conv_sizes(self.image_shape[0], len(channels))[-1]
        w = _conv_sizes(self.image_shape[1], len(channels))[-1]
        self.in_features = self.image_shape[0] * self.image_shape[1]
        self.out_features = width * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        images = x.reshape(-1, 1, *self.image_shape)  # (N, 1, H, W)
        return self.layers(images).flatten(1).reshape(*lead, self.out_features)


class ConvDecoder(nn.Module):
    """Features -> image rows: a dense layer to a small image, stride-2 transposed
    convolutions back to ``(H, W)``, and a last convolution to one value per pixel.

    Its output has ``H * W`` values per row: the per-pixel parameters themselves (use a
    likelihood with ``identity_head=True``).

    Args:
        in_features: Size of the input (z, plus a condition's features).
        image_shape: ``(H, W)`` of one image.
        channels: Channels of the transposed convolutions, from the smallest image up
            (the encoder's channels reversed).
        activation: Key of :data:`ACTIVATIONS`.

    Example:
        >>> dec = ConvDecoder(2, (8, 8), [8, 4])
        >>> dec(torch.zeros(5, 3, 2)).shape, dec.out_features
        (torch.Size([5, 3, 64]), 64)
    """

    def __init__(
        self, in_features: int, image_shape: Sequence[int], channels: Sequence[int], activation: str = "relu"
    ) -> None:
        super().__init__()
        self.image_shape = _conv_image_shape(image_shape, channels, activation)
        self.sizes = list(
            zip(
                _conv_sizes(self.image_shape[0], len(channels)),
                _conv_sizes(self.image_shape[1], len(channels)),
                strict=True,
            )
        )[::-1]
        h0, w0 = self.sizes[0]
        self.channels = list(channels)
        self.dense = nn.Sequential(nn.Linear(in_features, channels[0] * h0 * w0), ACTIVATIONS[activation]())
        ups: list[nn.Module] = []
        for i, c in enumerate(channels):
            out = channels[i + 1] if i + 1 < len(channels) else channels[-1]
            ups += [nn.ConvTranspose2d(c, out, kernel_size=4, stride=2, padding=1), ACTIVATIONS[activation]()]
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv2d(channels[-1], 1, kernel_size=3, padding=1)
        self.in_features = in_features
        self.out_features = self.image_shape[0] * self.image_shape[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h0, w0 = self.sizes[0]
        images = self.dense(z.reshape(-1, z.shape[-1])).reshape(-1, self.channels[0], h0, w0)
        images = self.out(self.ups(images))  # (N, 1, 2^L h0, 2^L w0), at least (H, W)
        images = images[..., : self.image_shape[0], : self.image_shape[1]]  # odd sizes were rounded up
        return images.reshape(*lead, self.out_features)
