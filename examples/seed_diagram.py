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

It also draws all of this in one figure (docs/figures/seed_diagram.png, shown in the
README): (a) the network, with the mu head and the sigma head as two separate sets of
weights; (b) each input's cloud of draws with mu(x) and its 1- and 2-sigma ellipses;
(c) the aggregate q(z) over the whole data set against the prior N(0, I); (d) the
moments of the draws against mu(x) and sigma(x).

Run:  python examples/seed_diagram.py          (about 20 s; rewrites the README's figure)
      python examples/seed_diagram.py --smoke  (a few seconds; used by the tests;
                                                writes the figure to a temporary folder)
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from pyro import poutine

from pyro_vae import MLP, VAE, BernoulliLikelihood, DiagonalNormalGuide, TrainConfig, fit
from pyro_vae.plotting import new_figure, save_png
from pyro_vae.posterior.clouds import PointClouds, colours, draw_point_clouds, point_clouds, sigma_ellipse

#: Where the normal run writes the figure the README shows.
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "seed_diagram.png"
#: Draws per input for the figure's clouds and the moments table.
NUM_DRAWS = 4000


def make_data(n: int, seed: int = 0) -> torch.Tensor:
    """Binary data with two latent factors: x_j ~ Bernoulli(sigmoid(W z + b)), z ~ N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[3.0, 0.0], [2.5, 1.0], [0.0, 3.0], [-1.0, 2.5], [-3.0, 0.5], [1.5, -2.5]])  # (6, 2)
    z = torch.randn(n, 2, generator=g)  # (n, 2)
    return torch.bernoulli(torch.sigmoid(z @ w.T), generator=g)  # (n, 6)


# ---------------------------------------------------------------------------- the figure
def _bits(x: torch.Tensor) -> str:
    return "".join(str(int(v)) for v in x)


def draw_network(ax: Axes, vae: VAE, x: torch.Tensor, colour: str) -> None:
    """(a) The 6 -> 4 -> (2 + 2) encoder: edges coloured and sized by weight, node values for one x.

    The mu head and the sigma head are two separate linear layers reading the same
    hidden units a1..a4: mu_i(x) = sum_j W_ij a_j(x) + b_i and sigma_i(x) =
    softplus(sum_j V_ij a_j(x) + c_i). mu1 and mu2 are two different rows of W.
    """
    guide = vae.variational
    first = vae.encoder.layers[0]  # Linear(6, 4)
    with torch.no_grad():
        hidden = vae.encoder(x[None])[0]  # (4,)
        mu, sigma = (t[0] for t in vae.encode(x[None]))  # (2,) each
    w_in = first.weight.detach().numpy()  # (4, 6)
    w_mu = guide.loc.weight.detach().numpy()  # (2, 4)
    w_sigma = guide.raw_scale.weight.detach().numpy()  # (2, 4)
    vmax = float(np.abs(np.concatenate([w_mu.ravel(), w_sigma.ravel()])).max())
    cmap = mpl.colormaps["coolwarm"]

    x_pos = [(0.0, 5.0 - 2.0 * i) for i in range(6)]  # y from 5 to -5
    a_pos = [(1.0, 3.75 - 2.5 * j) for j in range(4)]
    mu_pos = [(2.2, 4.0 - 2.0 * i) for i in range(2)]
    sigma_pos = [(2.2, -2.0 - 2.0 * i) for i in range(2)]

    def edge(p, q, w, scale, alpha):
        ax.plot(
            [p[0], q[0]],
            [p[1], q[1]],
            color=cmap(0.5 + 0.5 * w / scale),
            lw=0.6 + 4.5 * abs(w) / scale,
            alpha=alpha,
            solid_capstyle="round",
            zorder=1,
        )

    w_in_max = float(np.abs(w_in).max())
    for j, a in enumerate(a_pos):
        for i, p in enumerate(x_pos):
            edge(p, a, w_in[j, i], w_in_max, 0.35)
    for head, positions in ((w_mu, mu_pos), (w_sigma, sigma_pos)):
        for i, q in enumerate(positions):
            for j, a in enumerate(a_pos):
                edge(a, q, head[i, j], vmax, 0.95)

    def node(p, name, value, face):
        ax.scatter(*p, s=1500, color=face, edgecolors="k", linewidths=1.2, zorder=3)
        ax.text(p[0], p[1] + 0.22, name, ha="center", va="center", fontsize=11, fontweight="bold", zorder=4)
        ax.text(p[0], p[1] - 0.32, value, ha="center", va="center", fontsize=9, zorder=4)

    for i, p in enumerate(x_pos):
        node(p, f"$x_{i + 1}$", f"{int(x[i])}", "#f0f0f0")
    for j, p in enumerate(a_pos):
        node(p, f"$a_{j + 1}$", f"{hidden[j]:.2f}", "#f0f0f0")
    for i, p in enumerate(mu_pos):
        node(p, f"$\\mu_{i + 1}$", f"{mu[i]:.2f}", "#ffe9a8")
    for i, p in enumerate(sigma_pos):
        node(p, f"$\\sigma_{i + 1}$", f"{sigma[i]:.2f}", "#c9e7c4")

    ax.text(2.55, 3.0, r"$\mu$ head:" "\n" r"$\mu_i = \sum_j W_{ij}\,a_j + b_i$", va="center", fontsize=10)
    ax.text(
        2.55,
        -3.0,
        r"$\sigma$ head:" "\n" r"$\sigma_i = \mathrm{softplus}(\sum_j V_{ij}\,a_j + c_i)$",
        va="center",
        fontsize=10,
    )
    ax.text(0.0, 6.2, "input x", ha="center", fontsize=10)
    ax.text(1.0, 6.2, "hidden a(x) = tanh(...)", ha="center", fontsize=10)
    # The two rows of W at work on this input: mu1 and mu2 are two different weighted sums of a.
    b_mu = guide.loc.bias.detach().numpy()  # (2,)
    lines = [f"node values for x = {_bits(x)} (blue in (b)); edges: red +, blue −, width |weight|"]
    for i in range(2):
        terms = "".join(
            f"{'-' if w < 0 else ('' if j == 0 else '+')}{' ' if j else ''}{abs(w):.2f}×{a:.2f} "
            if a >= 0
            else f"{'-' if w < 0 else ('' if j == 0 else '+')}{' ' if j else ''}{abs(w):.2f}×({a:.2f}) "
            for j, (w, a) in enumerate(zip(w_mu[i], hidden.tolist(), strict=True))
        )
        bias = f"{'-' if b_mu[i] < 0 else '+'} {abs(b_mu[i]):.2f}"
        lines.append(f"μ{i + 1} = {terms}{bias} = {mu[i]:.2f}")
    ax.text(-0.4, -6.0, "\n".join(lines), fontsize=9.5, color=colour, va="top", family="monospace")
    ax.set_xlim(-0.45, 3.7)
    ax.set_ylim(-8.0, 6.6)
    ax.axis("off")
    ax.set_title(r"(a) two heads, two weight sets: $\mu(x)$ and $\sigma(x)$ are the encoder's outputs", loc="left")


def draw_head_weights(ax: Axes, vae: VAE) -> None:
    """(a, right) The two heads' weight rows with their values: W (mu head) above V (sigma head)."""
    guide = vae.variational
    w_mu = guide.loc.weight.detach().numpy()  # (2, 4)
    w_sigma = guide.raw_scale.weight.detach().numpy()  # (2, 4)
    b_mu = guide.loc.bias.detach().numpy()  # (2,)
    b_sigma = guide.raw_scale.bias.detach().numpy()  # (2,)
    table = np.block([[w_mu, b_mu[:, None]], [w_sigma, b_sigma[:, None]]])  # (4, 5)
    vmax = float(np.abs(np.concatenate([w_mu.ravel(), w_sigma.ravel()])).max())
    ax.imshow(table, cmap="coolwarm", vmin=-vmax, vmax=vmax, aspect="auto")
    for (r, c), value in np.ndenumerate(table):
        ax.text(c, r, f"{value:+.2f}", ha="center", va="center", fontsize=10)
    ax.axhline(1.5, color="k", lw=2.5)
    ax.axvline(3.5, color="k", lw=1, ls=":")
    ax.set_xticks(range(5), ["$a_1$", "$a_2$", "$a_3$", "$a_4$", "bias"])
    ax.set_yticks(
        range(4), [r"$\mu_1$: row $W_1$", r"$\mu_2$: row $W_2$", r"$\sigma_1$: row $V_1$", r"$\sigma_2$: row $V_2$"]
    )
    ax.tick_params(length=0)
    ax.set_title(r"head weights: $\mu_1$ and $\mu_2$ read $a$ with different rows", fontsize=11)


def draw_aggregate(ax: Axes, vae: VAE, data: torch.Tensor, clouds: PointClouds, seed: int) -> str:
    """(c) The aggregate q(z) = mean over the data of q(z|x), against the prior N(0, I).

    Returns a one-line summary of the data-set-level moments, also printed by the script.
    """
    with torch.no_grad():
        loc, scale = (t.double().numpy() for t in vae.encode(data))  # (B, 2) each
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            z = vae.posterior(data).sample().double().numpy()  # (B, 2): one draw per input
    # The law of total variance: Var z = E_x[sigma(x)^2] + Var_x[mu(x)] (per dimension).
    within = (scale**2).mean(axis=0)  # (2,)
    between = loc.var(axis=0)  # (2,)
    mean = loc.mean(axis=0)  # (2,)
    covariance = np.diag(within) + np.cov(loc, rowvar=False)  # (2, 2)
    ax.scatter(
        z[:, 0],
        z[:, 1],
        s=4,
        color="0.55",
        alpha=0.45,
        linewidths=0,
        rasterized=True,
        label=f"one z ~ q(z|x) for each of {len(data)} inputs",
    )
    for k in (1, 2):
        ax.add_patch(sigma_ellipse(mean, covariance, k, color="0.45", lw=4.0, alpha=0.8))
        ax.add_patch(sigma_ellipse(np.zeros(2), np.eye(2), k, color="k", lw=1.4, ls="--"))
    ax.plot([], [], "-", color="0.45", lw=4.0, label="aggregate q(z): 1 and 2 sd")
    ax.plot([], [], "k--", lw=1.4, label="prior N(0, I): 1 and 2 sd")
    for k, colour in enumerate(colours(len(clouds.index))):
        ax.add_patch(sigma_ellipse(clouds.loc[k], clouds.covariance[k], 1, color=colour, lw=1.8))
        ax.plot(*clouds.loc[k], "o", ms=7, color=colour, mec="k", mew=1.0)
    ax.plot([], [], "o", color="w", mec="k", label=r"inputs of (b): $\mu(x)$, 1 $\sigma(x)$")
    sd = np.sqrt(within + between)
    ax.text(
        0.02,
        0.02,
        f"data set: mean of z ({mean[0]:+.2f}, {mean[1]:+.2f}), sd of z ({sd[0]:.2f}, {sd[1]:.2f})\n"
        f"  sd² = mean of σ(x)² + variance of μ(x)\n"
        f"      = ({within[0]:.2f} + {between[0]:.2f}, {within[1]:.2f} + {between[1]:.2f})\n"
        f"one input's σ(x): {clouds.scale.min():.2f} to {clouds.scale.max():.2f}",
        transform=ax.transAxes,
        fontsize=9,
        va="bottom",
        family="monospace",
        bbox={"facecolor": "w", "alpha": 0.9, "edgecolor": "0.7"},
    )
    ax.set_xlabel(r"$z_1$")
    ax.set_ylabel(r"$z_2$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncols=2, frameon=False)
    ax.set_title("(c) the data set's q(z) = average of all q(z|x), vs the prior", loc="left")
    return (
        f"aggregate q(z) over {len(data)} inputs: mean ({mean[0]:+.3f}, {mean[1]:+.3f}), "
        f"sd ({sd[0]:.3f}, {sd[1]:.3f}) = sqrt(mean sigma^2 + var mu) per dimension"
    )


def draw_moments(ax: Axes, clouds: PointClouds) -> None:
    """(d) Empirical mean and sd of each input's draws against mu(x) and sigma(x)."""
    n = clouds.num_draws
    se_mean = clouds.scale / math.sqrt(n)  # (K, 2): s.e. of a mean of n draws
    se_sd = clouds.scale / math.sqrt(2 * (n - 1))  # (K, 2): s.e. of their sd
    gap = np.maximum(np.abs(clouds.mean - clouds.loc) / se_mean, np.abs(clouds.sd - clouds.scale) / se_sd)

    def pair(v):
        return f"({v[0]:+.3f}, {v[1]:+.3f})"

    rows = [
        [
            label,
            pair(clouds.loc[k]),
            pair(clouds.mean[k]),
            pair(clouds.scale[k]),
            pair(clouds.sd[k]),
            f"{gap[k].max():.1f}",
        ]
        for k, label in enumerate(clouds.labels)
    ]
    header = ["input x", "μ(x)", "mean of draws", "σ(x)", "sd of draws", "largest gap (s.e.)"]
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(10.5)
    table.scale(1.0, 1.55)
    for k, colour in enumerate(colours(len(rows))):
        table[k + 1, 0].set_text_props(color=colour, fontweight="bold")
    for c in range(len(header)):
        table[0, c].set_text_props(fontweight="bold")
        table[0, c].set_facecolor("#eeeeee")
    ax.axis("off")
    ax.set_title(
        f"(d) the draws of (b) have mean μ(x) and sd σ(x), within a few standard errors\n"
        f"     (N = {n} draws per input; s.e. = σ/√N for a mean, σ/√(2(N-1)) for an sd)",
        loc="left",
    )


def write_figure(vae: VAE, data: torch.Tensor, inputs: torch.Tensor, path: Path, seed: int) -> tuple[PointClouds, str]:
    """Draw panels (a)-(d) into one PNG at ``path``; return the clouds and the aggregate summary."""
    if not isinstance(vae.variational, DiagonalNormalGuide):
        raise TypeError("the diagram reads the diagonal Normal guide's two heads (loc, raw_scale)")
    labels = [_bits(x) for x in inputs]
    clouds = point_clouds(vae, inputs, num_draws=NUM_DRAWS, seed=seed, labels=labels)
    with mpl.rc_context({"font.size": 10.5, "axes.titlesize": 12}):
        fig = new_figure(figsize=(11.0, 14.0), layout="constrained")
        top, middle, bottom = fig.subfigures(3, 1, height_ratios=[1.1, 1.25, 0.45])
        net, weights = top.subplots(1, 2, width_ratios=[2.1, 1.0])
        draw_network(net, vae, inputs[0], colours(1)[0])
        draw_head_weights(weights, vae)
        ax_clouds, ax_aggregate = middle.subplots(1, 2)
        draw_point_clouds(ax_clouds, clouds, max_points=1500)  # the moments use all NUM_DRAWS
        ax_clouds.legend(
            fontsize=9,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.11),
            ncols=3,
            frameon=False,
            title="input x",
            title_fontsize=9,
        )
        ax_clouds.set_title("")  # the library's title, replaced by the panel's own
        ax_clouds.set_title(r"(b) each input $x$: its own cloud $z = \mu(x) + \sigma(x)\,\varepsilon$", loc="left")
        summary = draw_aggregate(ax_aggregate, vae, data, clouds, seed)
        for ax in (ax_clouds, ax_aggregate):  # the same latent plane, on the same scale
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlim(-4.0, 4.0)
            ax.set_ylim(-4.0, 4.0)
        draw_moments(bottom.subplots(), clouds)
        fig.suptitle(
            "The smallest VAE (6 → 4 → 2): μ(x) and σ(x) are outputs of the encoder, one pair for each input x",
            fontsize=13,
            fontweight="bold",
        )
        save_png(fig, path, dpi=150)
    return clouds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="train briefly (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        metavar="PNG",
        help=f"where to write the figure (default: {FIGURE.relative_to(FIGURE.parents[2])}; "
        "with --smoke, a temporary folder, so a briefly trained model never replaces the README's figure)",
    )
    args = parser.parse_args()
    figure = args.figure
    if figure is None:
        figure = Path(tempfile.mkdtemp()) / FIGURE.name if args.smoke else FIGURE

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
    for x, m, s, h in zip(inputs, loc, scale, hidden, strict=True):
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
    print("                 mu(x) / sigma(x)   mean of z = mu + sigma*eps   (s.e.)    mean of guide's z")
    for d in range(2):
        se = float(sigma[d]) / math.sqrt(n)
        print(
            f"  dimension {d + 1}:   mu    = {mu[d]:8.4f}     {z[:, d].mean():8.4f}              "
            f"({se:.4f})    {z_guide[:, d].mean():8.4f}"
        )
    for d in range(2):
        se = float(sigma[d]) / math.sqrt(2 * (n - 1))
        print(
            f"  dimension {d + 1}:   sigma = {sigma[d]:8.4f}     {z[:, d].std():8.4f} (sd of z)      "
            f"({se:.4f})    {z_guide[:, d].std():8.4f}"
        )
    print("\nThe cloud of z's has mean mu(x) and standard deviation sigma(x), within a few standard errors.\n")

    # The same, drawn: panels (a)-(d) of the figure.
    clouds, aggregate = write_figure(vae, data, inputs, figure, args.seed)
    print(f"{clouds.num_draws} draws of q(z|x) per input (the figure's clouds):")
    print("  input x  |      mu(x)        mean of draws   |     sigma(x)        sd of draws")
    for k, label in enumerate(clouds.labels):
        m, e, s, d = clouds.loc[k], clouds.mean[k], clouds.scale[k], clouds.sd[k]
        print(
            f"  {label}   | {m[0]:7.4f} {m[1]:7.4f}   {e[0]:7.4f} {e[1]:7.4f}   "
            f"| {s[0]:7.4f} {s[1]:7.4f}   {d[0]:7.4f} {d[1]:7.4f}"
        )
    print(aggregate)
    print(f"figure written to {figure}")


if __name__ == "__main__":
    main()
