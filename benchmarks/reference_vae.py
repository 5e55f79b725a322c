"""The reference: the same VAE written directly in PyTorch, no Pyro.

It is what a Pyro formulation of the VAE can at best reach, so the benchmarks measure
pyro_vae against it in the same process:

- identical networks: the encoder and decoder are ``Linear -> activation`` stacks with
  the same widths, the guide head is two linear maps to mu(x) and, through softplus plus
  the same floor, sigma(x); the likelihood head is a linear map to Bernoulli logits. The
  parameter names equal pyro_vae's, so ``load_state_dict`` moves weights either way;
- the same estimator: one (or ``particles``, vectorized) reparameterized draw
  z = mu + sigma * eps per data point, and the Monte Carlo ELBO
  log p(x|z) + log p(z) - log q(z|x), summed over the minibatch and scaled by N / B
  (or, with ``iwae=True``, the importance-weighted bound on the same draws);
- the same optimizer (Adam over all parameters) and the same data pipeline (an epoch's
  permutation, indexing, dynamic binarization) in :func:`train_epoch`.

Example:
    >>> import torch
    >>> ref = ReferenceVAE(784, (400,), 50)
    >>> ref.loss(torch.bernoulli(torch.rand(8, 784)), num_data=60000).shape
    torch.Size([])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferenceVAE", "train_epoch", "ACTIVATIONS"]

#: Hidden non-linearities (the names pyro_vae uses).
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
#: Floor added to softplus scales, as in pyro_vae.model.nn.SCALE_FLOOR.
SCALE_FLOOR = 1e-4
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), ACTIVATIONS[activation]()]
            in_features = width
        self.layers = nn.Sequential(*layers)
        self.out_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _Gaussian(nn.Module):
    def __init__(self, in_features: int, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(in_features, z_dim)
        self.raw_scale = nn.Linear(in_features, z_dim)


class _Bernoulli(nn.Module):
    def __init__(self, in_features: int, x_dim: int) -> None:
        super().__init__()
        self.logits = nn.Linear(in_features, x_dim)


class ReferenceVAE(nn.Module):
    """A Bernoulli VAE with a diagonal Normal guide and a standard Normal prior, in plain PyTorch.

    Args:
        x_dim: Features per data point.
        hidden: Encoder widths; the decoder uses them reversed (as pyro_vae does).
        z_dim: Latent size.
        activation: ``relu`` or ``tanh``.
    """

    def __init__(self, x_dim: int, hidden: Sequence[int], z_dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.encoder = _MLP(x_dim, hidden, activation)
        self.decoder = _MLP(z_dim, tuple(reversed(hidden)), activation)
        self.variational = _Gaussian(self.encoder.out_features, z_dim)
        self.likelihood = _Bernoulli(self.decoder.out_features, x_dim)
        self.z_dim = z_dim

    def log_weights(self, x: torch.Tensor, particles: int = 1) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for ``particles`` reparameterized draws, shape ``(K, B)``."""
        h = self.encoder(x)
        loc = self.variational.loc(h)  # (B, z)
        scale = F.softplus(self.variational.raw_scale(h)) + SCALE_FLOOR  # (B, z)
        eps = torch.randn((particles,) + loc.shape, dtype=loc.dtype, device=loc.device)  # (K, B, z)
        z = loc + eps * scale  # (K, B, z)
        logits = self.likelihood.logits(self.decoder(z))  # (K, B, x)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z * z - _HALF_LOG_2PI).sum(-1)  # (K, B)
        # log q(z|x) at z = loc + eps * scale is -eps^2 / 2 - log scale - log sqrt(2 pi).
        log_qz = (-0.5 * eps * eps - scale.log() - _HALF_LOG_2PI).sum(-1)  # (K, B)
        return log_px_z + log_pz - log_qz

    def loss(self, x: torch.Tensor, num_data: int, particles: int = 1, iwae: bool = False) -> torch.Tensor:
        """Negative ELBO of the minibatch scaled to the data set, ``-(N/B) sum_b mean_k log w``;
        with ``iwae=True`` the importance-weighted bound ``-(N/B) sum_b log mean_k w``."""
        log_w = self.log_weights(x, particles)  # (K, B)
        bound = torch.logsumexp(log_w, 0) - math.log(particles) if iwae else log_w.mean(0)  # (B,)
        return -bound.sum() * (num_data / x.shape[0])


def train_epoch(
    model: ReferenceVAE,
    train: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    *,
    seed: int = 0,
    particles: int = 1,
    iwae: bool = False,
    binarize: bool = True,
) -> float:
    """One epoch of the usual PyTorch loop; returns the mean loss per data point.

    Does what ``pyro_vae.fit`` does per epoch: seeds, permutes the rows, binarizes each
    minibatch dynamically, steps Adam, and checks that the loss is finite.
    """
    num_data = train.shape[0]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(num_data, generator=generator).to(train.device)
    total = 0.0
    for lo in range(0, num_data, batch_size):
        xb = train[order[lo : lo + batch_size]]
        if binarize:
            xb = torch.bernoulli(xb)
        loss = model.loss(xb, num_data, particles, iwae)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the reference's loss became {value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * xb.shape[0] / num_data
    return total / num_data
