"""Figures of ``pyro-vae inspect``: marginals, a forest plot, latent-plane ellipses.

Drawn with matplotlib from the draws (no pyplot), so each figure is the same whichever
ArviZ line is installed.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib as mpl
import numpy as np

from ..errors import DataError
from ..plotting import save_png, subplots
from .schema import (
    LATENT_DIM,
    LATENT_VAR,
    POINT_DIM,
    ArvizData,
    _check_same_points,
    _draws,
    _points_of,
)

__all__ = ["plot_marginals", "plot_forest", "plot_latent_ellipses"]


# ----------------------------------------------------------------------------- figures
def _aligned_draws(data: Sequence[ArvizData]) -> tuple[list[np.ndarray], np.ndarray]:
    """The draws of each posterior, ``(point, chain * draw, latent)``, and their shared points.

    Raises:
        DataError: The posteriors cover different points.
    """
    for other in data[1:]:
        _check_same_points(data[0], other)
    return [_draws(d) for d in data], _points_of(data[0])


def _colors(n: int) -> list[str]:
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[k % len(cycle)] for k in range(n)]


def plot_marginals(data: Sequence[ArvizData], names: Sequence[str], path: str | os.PathLike) -> None:
    """Marginal densities of every ``z[point, latent]`` (histograms), one panel each, overlaid.

    Drawn with matplotlib from the draws, so the figure is the same whichever ArviZ
    line is installed; ``az.plot_dist`` / ``az.plot_density`` work on the same data.

    Args:
        data: Outputs of :func:`guide_posterior`, :func:`exact_posterior`, ... for the
            same points.
        names: Legend label of each.
        path: Where to write the PNG.

    Raises:
        DataError: The posteriors cover different points.
    """
    draws, points = _aligned_draws(data)  # each draw array (B, N, D)
    num_points, _, z_dim = draws[0].shape
    fig, axes = subplots(
        num_points, z_dim, figsize=(3.0 * z_dim, 2.2 * num_points), squeeze=False, layout="constrained"
    )
    for b, point in enumerate(points):
        for j in range(z_dim):
            ax = axes[b, j]
            pooled = np.concatenate([d[b, :, j] for d in draws])
            low, high = np.quantile(pooled, [0.001, 0.999])
            edges = np.linspace(low, high, 41)
            for d, name, color in zip(draws, names, _colors(len(draws)), strict=True):
                ax.hist(d[b, :, j], bins=edges, density=True, histtype="stepfilled", alpha=0.15, color=color)
                ax.hist(d[b, :, j], bins=edges, density=True, histtype="step", color=color, label=name)
            ax.set_title(f"z[{point}, {j}]", fontsize=9)
            ax.set_yticks([])
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("marginal posteriors of z per point and latent dimension", fontsize=10)
    save_png(fig, path)


def plot_forest(data: Sequence[ArvizData], names: Sequence[str], path: str | os.PathLike) -> None:
    """Forest plot of every ``z[point, latent]``: median, 50% and 94% intervals per posterior.

    Equal-tailed intervals from the draws, drawn with matplotlib (the same figure on
    either ArviZ line; ``az.plot_forest`` works on the same data).

    Args:
        data: Outputs of :func:`guide_posterior`, :func:`exact_posterior`, ... for the
            same points.
        names: Label of each.
        path: Where to write the PNG.

    Raises:
        DataError: The posteriors cover different points.
    """
    draws, points = _aligned_draws(data)  # each draw array (B, N, D)
    rows = [(b, j) for b in range(len(points)) for j in range(draws[0].shape[-1])]
    fig, ax = subplots(figsize=(6, 0.8 + 0.22 * len(rows) * (len(data) + 1)))
    offsets = np.linspace(-0.25, 0.25, len(data)) if len(data) > 1 else np.zeros(1)
    for d, name, color, offset in zip(draws, names, _colors(len(draws)), offsets, strict=True):
        for r, (b, j) in enumerate(rows):
            lo94, lo50, median, hi50, hi94 = np.quantile(d[b, :, j], [0.03, 0.25, 0.5, 0.75, 0.97])
            y = -r + offset
            ax.hlines(y, lo94, hi94, color=color, lw=1.2)
            ax.hlines(y, lo50, hi50, color=color, lw=4)
            ax.plot(median, y, "o", color=color, mfc="white", ms=5, label=name if r == 0 else None)
    ax.set_yticks([-r for r in range(len(rows))], [f"z[{points[b]}, {j}]" for b, j in rows])
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("median, 50% and 94% intervals", fontsize=10)
    save_png(fig, path)


def plot_latent_ellipses(
    guide: ArvizData, reference: ArvizData, path: str | os.PathLike, *, name: str = "NUTS"
) -> None:
    """For a 2-D latent: the reference's draws per point, with the guide's mean and 1-, 2-sigma ellipses.

    One panel per point. The ellipses are those of q(z|x) = Normal(mu(x), sigma(x))
    (axis-aligned, as the guide is diagonal); a tilted or shifted cloud of draws
    shows what the guide misses.

    Args:
        guide: Output of :func:`guide_posterior` (its ``mu`` and ``sigma`` are used).
        reference: Draws to show (:func:`exact_posterior` or :func:`importance_posterior`).
        path: Where to write the PNG.
        name: Label of the reference's draws.

    Raises:
        DataError: The latent is not 2-D, or the two cover different points.
    """
    from matplotlib.patches import Ellipse

    _check_same_points(guide, reference)
    z_dim = guide.posterior.sizes[LATENT_DIM]
    if z_dim != 2:
        raise DataError(f"latent ellipses need a 2-D latent, this model has {z_dim}; use plot_marginals instead")
    points = _points_of(guide)
    cols = min(len(points), 4)
    rows = math.ceil(len(points) / cols)
    fig, axes = subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(points) :]:
        ax.set_visible(False)
    for ax, point in zip(axes.ravel()[: len(points)], points, strict=True):
        draws = reference.posterior[LATENT_VAR].sel({POINT_DIM: point}).values.reshape(-1, 2)  # (N, 2)
        mu = guide.constant_data["mu"].sel({POINT_DIM: point}).values  # (2,)
        sigma = guide.constant_data["sigma"].sel({POINT_DIM: point}).values  # (2,)
        ax.scatter(draws[:, 0], draws[:, 1], s=3, alpha=0.25, color="tab:blue", label=f"{name} draws")
        for k, style in ((1, "-"), (2, "--")):
            ax.add_patch(
                Ellipse(
                    mu,
                    2 * k * sigma[0],
                    2 * k * sigma[1],
                    fill=False,
                    color="tab:red",
                    ls=style,
                    lw=1.2,
                    label=f"guide {k} sigma",
                )
            )
        ax.plot(*mu, marker="x", color="tab:red", ms=8, mew=2, ls="none", label="guide mean mu(x)")
        ax.plot(*draws.mean(0), marker="+", color="k", ms=10, mew=2, ls="none", label=f"{name} mean")
        ax.set_title(f"point {point}", fontsize=9)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        ax.set_aspect("equal", adjustable="datalim")
    axes.ravel()[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{name} draws of p(z|x) with the guide q(z|x): mean and 1-, 2-sigma ellipses", fontsize=10)
    save_png(fig, path)
