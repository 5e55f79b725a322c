"""Write your own network: a residual MLP encoder, plugged into a VAE by its constructor.

A network is any ``torch.nn.Module`` from rows to features with two attributes,
``in_features`` and ``out_features``: the VAE checks the sizes when it is built, the
guide head reads ``out_features`` (plus a condition's features), and the decoder is the
same kind of module from z to features. Nothing else needs to know about it.

The script trains the same VAE twice on scikit-learn's digits, once with the library's
MLP encoder and once with the residual encoder below, and prints both held-out ELBOs.
It also registers the network in ``pyro_vae.model.build.NETWORKS`` (the table behind
``--net`` and the checkpoint loader), so ``build_vae(ModelConfig(net="residual"))``
and ``pyro_vae.load`` of a saved run work in any process that ran the registration.

Run:  python examples/custom_network.py          (about 20 s)
      python examples/custom_network.py --smoke  (a few seconds; used by the tests)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from pyro_vae import MLP, ModelConfig, TrainConfig, build_vae, fit, load_dataset
from pyro_vae.data.transforms import binarize
from pyro_vae.model.build import NETWORKS


class ResidualMLP(nn.Module):
    """x -> features: a linear map to ``width``, then blocks ``h + f(h)`` (f: Linear-tanh-Linear).

    Args:
        in_features: Size of one row.
        width: Size of the features (``out_features``).
        blocks: Number of residual blocks.
    """

    def __init__(self, in_features: int, width: int, blocks: int = 2) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, width
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width)) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x))  # (..., width)
        for block in self.blocks:
            h = torch.tanh(h + block(h))
        return h


# One line makes it a named network: (config, decoder inputs) -> (encoder, decoder).
NETWORKS["residual"] = lambda config, decoder_in: (
    ResidualMLP(config.x_dim, config.hidden[0]),
    MLP(decoder_in, tuple(reversed(config.hidden)), config.activation),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two epochs, for the tests")
    args = parser.parse_args()
    epochs = 2 if args.smoke else 60
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    train, val = torch.from_numpy(data.train), torch.from_numpy(data.val)
    for net in ("mlp", "residual"):
        torch.manual_seed(0)
        vae = build_vae(ModelConfig(x_dim=64, z_dim=2, hidden=(64,), net=net))
        history = fit(
            vae,
            train,
            val,
            TrainConfig(epochs=epochs, lr=3e-3),
            transform=lambda x: binarize(x, "dynamic"),
            progress=False,
        )
        print(
            f"{type(vae.encoder).__name__:<12} held-out ELBO per data point after {epochs} epochs: "
            f"{history[-1].val_elbo:.2f} nats"
        )


if __name__ == "__main__":
    main()
