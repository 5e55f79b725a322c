"""The smallest VAE, to see what mu(x) and sigma(x) are.

6 input features -> 4 hidden units -> a 2-D latent. The encoder's last layer has two
heads: one gives mu(x) = (mu_1(x), mu_2(x)), the other sigma(x) = (sigma_1(x),
sigma_2(x)). They are outputs of the network for one input x, the parameters of that
input's approximate posterior q(z|x) = Normal(mu(x), diag(sigma(x)^2)); they are not
statistics of the data set, nor weights of the network, nor the mean of the hidden
layer.

The script trains on a small synthetic data set it makes, prints mu and sigma for a
few inputs, then draws 10,000 samples z = mu(x) + sigma(x) * eps for one input and
shows that their mean and standard deviation are mu(x) and sigma(x): the
reparameterization trick.

Run:  python examples/seed_diagram.py          (about 20 s)
      python examples/seed_diagram.py --smoke  (a few seconds; used by the tests)
"""

from __future__ import annotations

import argparse
import math

import torch
from pyro import poutine

from pyro_vae import MLP, VAE, BernoulliLikelihood, TrainConfig, fit


def make_data(n: int, seed: int = 0) -> torch.Tensor:
    """Binary data with two latent factors: x_j ~ Bernoulli(sigmoid(W z + b)), z ~ N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[3.0, 0.0], [2.5, 1.0], [0.0, 3.0], [-1.0, 2.5], [-3.0, 0.5], [1.5, -2.5]])  # (6, 2)
    z = torch.randn(n, 2, generator=g)  # (n, 2)
    return torch.bernoulli(torch.sigmoid(z @ w.T), generator=g)  # (n, 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="train briefly (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = make_data(2000, args.seed)
    encoder = MLP(6, [4], activation="tanh")  # x (6) -> hidden (4)
    decoder = MLP(2, [4], activation="tanh")  # z (2) -> hidden (4)
    vae = VAE(encoder, decoder, BernoulliLikelihood(4, 6), z_dim=2)
    config = TrainConfig(epochs=5 if args.smoke else 150, batch_size=100, lr=1e-2, seed=args.seed)
    history = fit(vae, data[:1800], data[1800:], config, progress=False)
    print(f"trained {config.epochs} epochs: held-out ELBO per data point {history[-1].val_elbo:.3f} nats\n")

    # Five different inputs: each gets its own mu(x) and sigma(x).
    inputs = torch.tensor(
        [[1, 1, 0, 0, 0, 1], [0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]],
        dtype=torch.float32,
    )
    with torch.no_grad():
        loc, scale = vae.encode(inputs)  # (5, 2) each
        hidden = vae.encoder(inputs)  # (5, 4)
    print("input x                 mu_1(x)  mu_2(x)  sigma_1(x)  sigma_2(x)  mean of hidden layer")
    for x, m, s, h in zip(inputs, loc, scale, hidden):
        bits = " ".join(str(int(v)) for v in x)
        print(f"{bits}    {m[0]:8.3f} {m[1]:8.3f}  {s[0]:10.3f}  {s[1]:10.3f}  {h.mean():8.3f}")
    print(
        "\nmu and sigma change from input to input, and mu_1 != mu_2: they are two different "
        "outputs of the encoder's mu head, not the mean of its hidden layer.\n"
    )

    # The reparameterization trick for one input: z = mu(x) + sigma(x) * eps.
    n = 10_000
    x = inputs[:1]
    with torch.no_grad():
        mu, sigma = (t[0] for t in vae.encode(x))  # (2,) each
        eps = torch.randn(n, 2)  # (n, 2)
        z = mu + sigma * eps  # (n, 2)
        # The guide itself, run n times on the same input, draws the same cloud.
        guide_trace = poutine.trace(vae.guide).get_trace(x.expand(n, 6))
        z_guide = guide_trace.nodes["z"]["value"]  # (n, 2)
    print(f"{n} samples of z for x = {' '.join(str(int(v)) for v in x[0])}:")
    print("                 mu(x) / sigma(x)   mean of z = mu + sigma*eps   (s.e.)   mean of guide's z")
    for d in range(2):
        se = float(sigma[d]) / math.sqrt(n)
        print(f"  dimension {d + 1}:   mu    = {mu[d]:7.3f}      {z[:, d].mean():7.3f}              "
              f"({se:.3f})     {z_guide[:, d].mean():7.3f}")
    for d in range(2):
        se = float(sigma[d]) / math.sqrt(2 * (n - 1))
        print(f"  dimension {d + 1}:   sigma = {sigma[d]:7.3f}      {z[:, d].std():7.3f} (sd of z)       "
              f"({se:.3f})     {z_guide[:, d].std():7.3f}")
    print("\nThe cloud of z's has mean mu(x) and standard deviation sigma(x), within a few standard errors.")


if __name__ == "__main__":
    main()
