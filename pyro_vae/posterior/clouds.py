"""Point clouds of q(z|x) in a 2-D latent plane: what mu(x) and sigma(x) look like.

For each chosen input x, :func:`point_clouds` draws ``z ~ q(z|x)`` many times (for the
diagonal Normal guide, ``z = mu(x) + sigma(x) * eps``) and :func:`draw_point_clouds`
plots each input's cloud in its own colour, with mu(x) marked and the 1- and 2-sigma
ellipses of q(z|x). :func:`plot_point_clouds` does both and writes one PNG; it is the
panel ``pyro-vae inspect`` can draw for the rows it inspects.

Only the model's public components are used (``vae.encode``, ``vae.posterior``), so
the draws are the guide's own.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Ellipse
from torch import distributions as tdist

from ..errors import ConfigError
from ..model.vae import VAE
from ..plotting import save_png, subplots
from ..seeding import forked_rng

__all__ = [
    "PointClouds",
    "point_clouds",
    "draw_point_clouds",
    "plot_point_clouds",
    "plot_clouds",
    "sigma_ellipse",
    "colours",
]


@dataclass(frozen=True)
class PointClouds:
    """Draws of q(z|x) for a few inputs, with the parameters they were drawn from.

    Attributes:
        index: Row of ``x`` of each input, shape ``(K,)``.
        labels: Legend label of each input.
        loc: mu(x) from ``vae.encode``, shape ``(K, 2)``.
        scale: sigma(x) from ``vae.encode``, shape ``(K, 2)``.
        covariance: Covariance of q(z|x) the ellipses are drawn from, ``(K, 2, 2)``:
            the guide's own when q(z|x) is Gaussian, else that of the draws.
        gaussian: Whether ``covariance`` is the guide's own (q(z|x) is Gaussian).
        draws: The draws, shape ``(N, K, 2)``.
    """

    index: np.ndarray
    labels: tuple[str, ...]
    loc: np.ndarray
    scale: np.ndarray
    covariance: np.ndarray
    gaussian: bool
    draws: np.ndarray

    @property
    def num_draws(self) -> int:
        """N, the number of draws per input."""
        return self.draws.shape[0]

    @property
    def mean(self) -> np.ndarray:
        """Empirical mean of each input's draws, ``(K, 2)``."""
        return self.draws.mean(axis=0)

    @property
    def sd(self) -> np.ndarray:
        """Empirical standard deviation of each input's draws (ddof 1), ``(K, 2)``."""
        return self.draws.std(axis=0, ddof=1)


def _rows(index: Sequence[int] | np.ndarray | torch.Tensor | None, num_rows: int) -> np.ndarray:
    if index is None:
        return np.arange(num_rows)
    rows = np.asarray(index).reshape(-1)
    if rows.size == 0:
        raise ConfigError("index is empty: pass at least one row of x to draw")
    if not np.issubdtype(rows.dtype, np.integer):
        raise ConfigError(f"index must hold integer rows of x, got {rows.tolist()}")
    bad = rows[(rows < 0) | (rows >= num_rows)]
    if bad.size:
        raise ConfigError(
            f"index {' '.join(map(str, bad.tolist()))} out of range: x has {num_rows} rows; "
            f"pass rows from 0 to {num_rows - 1}"
        )
    if len(np.unique(rows)) != len(rows):
        raise ConfigError(f"index repeats a row ({' '.join(map(str, rows.tolist()))}); pass each row once")
    return rows


def _gaussian_covariance(q: tdist.Distribution) -> torch.Tensor | None:
    """The covariance of a Gaussian q(z|x), ``(K, 2, 2)``, or None for another family."""
    if isinstance(q, tdist.Independent) and isinstance(q.base_dist, tdist.Normal):
        return torch.diag_embed(q.base_dist.scale.pow(2))
    if isinstance(q, (tdist.MultivariateNormal, tdist.LowRankMultivariateNormal)):
        return q.covariance_matrix
    return None


@torch.no_grad()
def point_clouds(
    vae: VAE,
    x: torch.Tensor,
    index: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    num_draws: int = 2000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    y: torch.Tensor | None = None,
) -> PointClouds:
    """Draw ``num_draws`` times from q(z|x) for chosen rows of ``x``.

    The draws come from ``vae.posterior(x).rsample``, the guide's own sampling; for the
    diagonal Normal guide that is ``z = mu(x) + sigma(x) * eps`` with
    ``eps ~ Normal(0, I)``. The seed is applied in a forked random state, so the
    caller's random stream is left as it was.

    Args:
        vae: A model with a 2-D latent.
        x: Data of shape ``(B, x_dim)``.
        index: Rows of ``x`` to draw for, each in ``0..B-1`` and distinct; default all.
        num_draws: Draws per row (>= 2).
        seed: Seed of the draws.
        labels: Legend label per row; default ``"row i"``.
        y: For a conditional model, the condition of each row of ``x``: the clouds
            are of q(z | x, y).

    Returns:
        A :class:`PointClouds` with draws of shape ``(num_draws, K, 2)``.

    Raises:
        ConfigError: The latent is not 2-D, ``index`` is empty, out of range or
            repeats a row, ``num_draws < 2``, or ``labels`` has the wrong length.
        DataError: ``x`` has the wrong shape for this model.

    Example:
        >>> from pyro_vae import MLP, VAE, BernoulliLikelihood
        >>> vae = VAE(MLP(6, [4]), MLP(2, [4]), BernoulliLikelihood(4, 6), z_dim=2)
        >>> clouds = point_clouds(vae, torch.ones(3, 6), [0, 2], num_draws=100)
        >>> clouds.draws.shape, clouds.loc.shape, clouds.labels
        ((100, 2, 2), (2, 2), ('row 0', 'row 2'))
    """
    if vae.z_dim != 2:
        raise ConfigError(
            f"point clouds are drawn in a 2-D latent plane, but this model has z_dim={vae.z_dim}; "
            "train a model with `z_dim` 2 to draw them"
        )
    if num_draws < 2:
        raise ConfigError(f"`num_draws` must be >= 2 (a standard deviation needs two draws), got {num_draws}")
    vae.check_x(x)
    rows = _rows(index, x.shape[0])
    if labels is None:
        labels = [f"row {i}" for i in rows]
    if len(labels) != len(rows):
        raise ConfigError(f"labels must give one label per row ({len(rows)}), got {len(labels)}")
    picks = torch.as_tensor(rows, device=x.device)
    x_rows = x[picks]  # (K, x_dim)
    y_rows = None if y is None else y[picks.to(y.device)]
    loc, scale = vae.encode(x_rows, y_rows)  # (K, 2) each
    q = vae.posterior(x_rows, y_rows)  # batch (K,), event (2,)
    with forked_rng(seed=seed):
        draws = q.rsample((num_draws,))  # (N, K, 2)
    draws_np = draws.detach().cpu().double().numpy()
    covariance = _gaussian_covariance(q)
    if covariance is None:  # e.g. a flow: no closed-form covariance; use the draws'
        centred = draws_np - draws_np.mean(axis=0)  # (N, K, 2)
        covariance_np = np.einsum("nki,nkj->kij", centred, centred) / (num_draws - 1)  # (K, 2, 2)
    else:
        covariance_np = covariance.detach().cpu().double().numpy()
    return PointClouds(
        index=rows,
        labels=tuple(labels),
        loc=loc.detach().cpu().double().numpy(),
        scale=scale.detach().cpu().double().numpy(),
        covariance=covariance_np,
        gaussian=covariance is not None,
        draws=draws_np,
    )


def sigma_ellipse(center: np.ndarray, covariance: np.ndarray, k: float, **kwargs) -> Ellipse:
    """The k-sigma ellipse ``{z : (z - c)^T S^-1 (z - c) = k^2}`` of a 2-D Gaussian, as a patch.

    In 2-D it holds ``1 - exp(-k^2 / 2)`` of the mass: 39% for k = 1, 86% for k = 2.
    ``kwargs`` go to :class:`matplotlib.patches.Ellipse` (colour, line style, ...).
    """
    variances, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    major = vectors[:, 1]
    angle = math.degrees(math.atan2(major[1], major[0]))
    width, height = 2 * k * np.sqrt(np.maximum(variances[::-1], 0.0))
    return Ellipse(tuple(center), width, height, angle=angle, fill=False, **kwargs)


def colours(n: int) -> list[str]:
    """``n`` colours from matplotlib's default cycle, one per input."""
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[k % len(cycle)] for k in range(n)]


def draw_point_clouds(ax: Axes, clouds: PointClouds, *, max_points: int = 2000) -> None:
    """Draw each input's cloud on ``ax``: draws, mu(x) and the 1- and 2-sigma ellipses.

    Args:
        ax: Matplotlib axes to draw on.
        clouds: Output of :func:`point_clouds`.
        max_points: At most this many draws per input are scattered (all of them
            enter the ellipses and moments).
    """
    shown = clouds.draws[:max_points]  # (n, K, 2)
    where = "" if clouds.gaussian else " of the draws"
    for k, colour in enumerate(colours(len(clouds.index))):
        ax.scatter(shown[:, k, 0], shown[:, k, 1], s=3, alpha=0.25, color=colour, linewidths=0, rasterized=True)
        centre = clouds.loc[k] if clouds.gaussian else clouds.mean[k]
        for sigmas, style in ((1, "-"), (2, "--")):
            ax.add_patch(sigma_ellipse(centre, clouds.covariance[k], sigmas, color=colour, lw=1.6, ls=style))
        ax.plot(*clouds.loc[k], marker="o", ms=9, color=colour, mec="k", mew=1.2, ls="", label=clouds.labels[k])
    # Legend entries for the shapes, drawn in black once.
    ax.plot([], [], "ko", mfc="w", ms=7, label=r"$\mu(x)$: the cloud's mean")
    ax.plot([], [], "k-", lw=1.4, label=rf"1 $\sigma(x)$ ellipse{where}")
    ax.plot([], [], "k--", lw=1.4, label=rf"2 $\sigma(x)$ ellipse{where}")
    ax.set_xlabel(r"$z_1$")
    ax.set_ylabel(r"$z_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title(f"q(z|x) for {len(clouds.index)} inputs: {clouds.num_draws} draws each")


def plot_point_clouds(
    vae: VAE,
    x: torch.Tensor,
    index: Sequence[int] | np.ndarray | torch.Tensor | None,
    path: str | os.PathLike,
    *,
    num_draws: int = 2000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    y: torch.Tensor | None = None,
) -> PointClouds:
    """Write one PNG of q(z|x)'s point clouds for chosen rows of ``x`` (a 2-D latent).

    Each input gets its own colour: ``num_draws`` draws ``z ~ q(z|x)``, its mu(x)
    marked, and the 1- and 2-sigma ellipses of q(z|x) (from the guide's covariance
    when q is Gaussian, else from the draws).

    Args:
        vae: A model with a 2-D latent.
        x: Data of shape ``(B, x_dim)``.
        index: Rows of ``x`` to draw, each in ``0..B-1`` and distinct; None for all.
        path: Where to write the PNG (atomically).
        num_draws: Draws per row (>= 2).
        seed: Seed of the draws.
        labels: Legend label per row; default ``"row i"``.
        y: For a conditional model, the condition of each row of ``x``: the clouds
            are of q(z | x, y).

    Returns:
        The :class:`PointClouds` that were drawn, for tables of their moments.

    Raises:
        ConfigError: The latent is not 2-D, or ``index``, ``num_draws`` or ``labels``
            is invalid (see :func:`point_clouds`).
        DataError: ``x`` has the wrong shape for this model.

    Example:
        >>> import os, tempfile
        >>> from pyro_vae import MLP, VAE, BernoulliLikelihood
        >>> vae = VAE(MLP(6, [4]), MLP(2, [4]), BernoulliLikelihood(4, 6), z_dim=2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "clouds.png")
        ...     clouds = plot_point_clouds(vae, torch.eye(6), [0, 3], path, num_draws=200)
        ...     os.path.getsize(path) > 0
        True
    """
    clouds = point_clouds(vae, x, index, num_draws=num_draws, seed=seed, labels=labels, y=y)
    plot_clouds(clouds, path)
    return clouds


def plot_clouds(clouds: PointClouds, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Write one PNG of clouds already drawn (:func:`point_clouds`), atomically."""
    fig, ax = subplots(figsize=(6.5, 6), layout="constrained")
    draw_point_clouds(ax, clouds)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    if title:
        ax.set_title(title, fontsize=10)
    save_png(fig, path)
