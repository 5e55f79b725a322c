"""PNG figures of a run: loss curve, reconstructions, prior samples, latent means.

Figures are made with :mod:`pyro_vae.plotting` (no pyplot, no global state). Every
function takes arrays, draws, writes one PNG atomically and returns nothing; none of
them touches the model.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes

from ..plotting import save_png, subplots

__all__ = ["plot_history", "plot_reconstructions", "plot_samples", "plot_latent"]


def plot_history(history: Sequence[dict[str, float]], path: str | os.PathLike) -> None:
    """Training loss and validation negative ELBO per data point against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (-ELBO)")
    val = [-h["val_elbo"] for h in history]
    if not all(math.isnan(v) for v in val):
        ax.plot(epochs, val, label="validation -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, path)


#: Background of image grids: a neutral grey, so that black and white pixels both show
#: and empty cells read as "no image", not as a black one.
_BACKGROUND = 0.55
#: Pixels between tiles.
_GAP = 1


def _image_grid(rows: Sequence[np.ndarray] | np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Images laid out in rows with a gap between tiles; missing cells (NaN) stay background."""
    h, w = image_shape
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    grid = np.full((n_rows * (h + _GAP) + _GAP, n_cols * (w + _GAP) + _GAP), np.nan)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = _GAP + i * (h + _GAP), _GAP + j * (w + _GAP)
            grid[top : top + h, left : left + w] = np.asarray(image).reshape(h, w)
    return grid


def _show(ax: Axes, data: np.ndarray) -> None:
    import matplotlib as mpl

    cmap = mpl.colormaps["gray"].with_extremes(bad=str(_BACKGROUND))
    vmax = max(1.0, float(np.nanmax(data))) if np.isfinite(data).any() else 1.0
    ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_facecolor(str(_BACKGROUND))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstructions(
    inputs: np.ndarray,
    reconstructions: np.ndarray,
    image_shape: Sequence[int],
    path: str | os.PathLike,
    *,
    inputs_title: str = "inputs",
) -> None:
    """Inputs (top row) above the means of p(x|z) at one z drawn from q(z|x) (bottom row).

    Without an image shape each data point is drawn as one column of a heat map.
    """
    n = len(inputs)
    if image_shape:
        h, w = image_shape
        grid = _image_grid([inputs, reconstructions], image_shape)  # two rows of tiles
        width = max(5.0, 0.6 * n)
        fig, ax = subplots(figsize=(width, 0.9 + width * grid.shape[0] / grid.shape[1]), layout="constrained")
        _show(ax, grid)
        ax.set_yticks([_GAP + h / 2 - 0.5, 2 * _GAP + 1.5 * h - 0.5], ["input", "recon."], fontsize=8)
        ax.set_title(
            f"{inputs_title}; below each, its reconstruction:\nthe mean of p(x|z) at one z ~ q(z|x)", fontsize=9
        )
    else:
        fig, axes = subplots(2, 1, figsize=(max(5, n * 0.6), 4), layout="constrained")
        _show(axes[0], inputs.T)
        _show(axes[1], reconstructions.T)
        axes[0].set_title(inputs_title, fontsize=9)
        axes[1].set_title("their reconstructions: the mean of p(x|z) at one z ~ q(z|x) each", fontsize=9)
    save_png(fig, path)


def plot_samples(
    samples: np.ndarray,
    image_shape: Sequence[int],
    path: str | os.PathLike,
    *,
    columns: int | None = None,
    title: str | None = None,
) -> None:
    """Means of p(x|z) for z drawn from the prior, as an image grid (or heat map).

    ``columns`` images per row (default: a square grid); ``title`` says what was drawn.
    """
    n = len(samples)
    fig, ax = subplots(figsize=(5, 5.3), layout="constrained")
    if image_shape:
        cols = columns or math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        padded = np.concatenate([samples, np.full((rows * cols - n, samples.shape[1]), np.nan)])
        _show(ax, _image_grid(padded.reshape(rows, cols, -1), image_shape))
    else:
        _show(ax, samples.T)
    ax.set_title(title or f"the mean of p(x|z) for {n} draws z ~ p(z)", fontsize=9)
    save_png(fig, path)


def plot_latent(loc: np.ndarray, scale: np.ndarray, labels: np.ndarray | None, path: str | os.PathLike) -> None:
    """Encoded means mu(x) of a 2-D latent, coloured by label, with a few 1-sigma ellipses.

    Each point is one input's mu(x); the ellipses (for every 25th point) show that
    each input also has its own sigma(x).
    """
    from matplotlib.patches import Ellipse

    fig, ax = subplots(figsize=(6, 5))
    colour = {"c": labels, "cmap": "tab10"} if labels is not None else {}
    sc = ax.scatter(loc[:, 0], loc[:, 1], s=6, **colour)
    for i in range(0, len(loc), 25):
        ax.add_patch(Ellipse(loc[i], 2 * scale[i, 0], 2 * scale[i, 1], fill=False, lw=0.6, alpha=0.6, color="k"))
    if labels is not None:
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel("mu_1(x)")
    ax.set_ylabel("mu_2(x)")
    ax.set_title("encoded means mu(x), one per input (ellipses: 1 sigma(x))", fontsize=9)
    save_png(fig, path)
