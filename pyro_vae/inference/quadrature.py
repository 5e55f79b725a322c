"""Exact posterior quantities for a small latent (z_dim <= 2), by quadrature on adaptive grids.

For a latent of one or two dimensions the posterior p(z|x) can be integrated instead of
sampled. :func:`posterior_quadrature` evaluates the model's ``log p(x, z)`` (the one
trace-based path, :func:`~pyro_vae.inference.bounds.log_joint`) on a grid of nodes per
data point and integrates it with the trapezoidal rule, which for a smooth density that
has decayed at the edges of the box converges faster than any power of the spacing. The
result is, per point and to quadrature accuracy:

- ``log p(x)``, the normaliser of p(x, z);
- the posterior mean and covariance;
- the ELBO of the guide, ``E_q[log p(x, z) - log q(z|x)]``, integrated on a grid of its
  own fitted to q (the guide's density comes from its own program,
  :func:`~pyro_vae.inference.bounds.guide_log_density`), and
  ``KL(q(z|x) || p(z|x)) = log p(x) - ELBO``, the inference gap.

The grids adapt per point, all points in one vectorized pass at a time:

1. *Locate.* The first box is the union of the guide's ``mu +- 6 sigma`` and the prior's
   mean +- 6 sd (from prior draws), so a guide that misses the posterior still leaves it
   inside. On 17 nodes per dimension the posterior's mean and sd are measured and the box
   is moved to ``mean +- 6 sd`` (widened twofold while more than a ``tol / 100`` share of
   the mass sits on the boundary nodes), until it stops moving.
2. *Refine.* The nodes per dimension go 17 -> 33 -> 65 ... on the settled box until
   ``log p(x)``, the mean and the sd (in units of the sd) change by less than ``tol``
   from one refinement to the next; that change is reported as the point's
   quadrature error.

A posterior mode far outside both the guide's and the prior's boxes would be missed;
nothing else is assumed. No ArviZ here: :func:`pyro_vae.posterior.grid.grid_posterior`
turns the same grids into ArviZ data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..model.vae import VAE
from ..seeding import forked_rng
from .bounds import (
    DEFAULT_MAX_ELEMENTS,
    check_only_latent,
    draw_width,
    given,
    guide_log_density,
    log_joint,
    take_rows,
)
from .gaps import frozen

__all__ = [
    "DEFAULT_TOL",
    "MAX_GRID_DIM",
    "GridBoxes",
    "PosteriorQuadrature",
    "QuadratureWarning",
    "check_grid_dim",
    "grid_nodes",
    "posterior_quadrature",
]

#: The largest latent the grids handle: the nodes grow as (nodes per dimension) ** z_dim.
MAX_GRID_DIM = 2
#: Default accuracy: the change of log p(x) and the ELBO (nats) and of the mean and sd
#: (in sds) at the last refinement. A ReLU decoder makes log p(x, z) kinked, where the
#: trapezoidal rule converges like the spacing squared: each refinement then gains a
#: factor 4 for 4 times the nodes (in 2-D), and 1e-3 costs about 65^2 to 129^2 nodes.
DEFAULT_TOL = 1e-3
#: Half-width of a settled box, in the measured posterior sds (a Gaussian's density is
#: 1.5e-8 of its peak there; heavier tails widen the box through the edge check).
_HALF_WIDTH = 6.0
#: Nodes per dimension of the first grid (spacing 0.75 sd on a settled box).
_START_NODES = 17
#: Most nodes per dimension, by latent size (2-D: 513^2 = 263,169 nodes per point).
_MAX_NODES = {1: 16_385, 2: 513}
#: Rounds of moving the box before refinement starts regardless.
_MAX_LOCATE = 12
#: Prior draws that measure the prior's box.
_PRIOR_DRAWS = 4096


class QuadratureWarning(UserWarning):
    """The grid of some point did not reach the asked accuracy within the node budget."""


@dataclass(frozen=True)
class GridBoxes:
    """Where each point's grid lies: ``centre +- half_width`` with ``nodes`` per dimension.

    Attributes:
        centre: ``(B, D)``.
        half_width: ``(B, D)``.
        nodes: ``(B,)``, odd, at least 17.
    """

    centre: torch.Tensor
    half_width: torch.Tensor
    nodes: torch.Tensor

    def select(self, rows: torch.Tensor) -> GridBoxes:
        """The boxes of some points."""
        return GridBoxes(self.centre[rows], self.half_width[rows], self.nodes[rows])


@dataclass(frozen=True)
class PosteriorQuadrature:
    """Exact (to quadrature accuracy) posterior quantities per data point.

    Attributes:
        log_marginal: ``log p(x)``, ``(B,)``.
        mean: Posterior mean, ``(B, D)``.
        cov: Posterior covariance, ``(B, D, D)``.
        elbo: ``E_q[log p(x, z) - log q(z|x)]`` of the guide, ``(B,)``.
        kl: ``KL(q(z|x) || p(z|x)) = log_marginal - elbo``, ``(B,)``: the inference gap.
        error: Quadrature error estimate per point ``(B,)``: the largest change, at the
            last refinement of either grid, of ``log p(x)`` or the ELBO (nats) or of the
            mean or sd (in sds).
        boxes: The posterior grids (:class:`GridBoxes`), to draw from or re-evaluate.

    All tensors are float64, on the data's device.
    """

    log_marginal: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    elbo: torch.Tensor
    kl: torch.Tensor
    error: torch.Tensor
    boxes: GridBoxes

    @property
    def sd(self) -> torch.Tensor:
        """Posterior standard deviation per dimension, ``(B, D)``."""
        return torch.diagonal(self.cov, dim1=-2, dim2=-1).sqrt()


def check_grid_dim(vae: VAE) -> None:
    """Raise :class:`ConfigError` unless the latent is small enough for a grid."""
    if vae.z_dim > MAX_GRID_DIM:
        raise ConfigError(
            f"grid quadrature needs a latent of at most {MAX_GRID_DIM} dimensions, this model has "
            f"z_dim={vae.z_dim}: use `method` nuts or sir"
        )


def grid_nodes(boxes: GridBoxes, nodes: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The nodes of each point's grid with ``nodes`` per dimension, and their trapezoid log-weights.

    Args:
        boxes: The boxes of B points with D dimensions.
        nodes: Nodes per dimension (the same for every point here).
        dtype: dtype of the returned nodes.

    Returns:
        ``(z, log_weights)``: nodes of shape ``(N, B, D)`` with ``N = nodes ** D``, in
        row-major order over the dimensions, and ``(N,)`` log trapezoid weights (1 inside,
        1/2 per dimension on the boundary), without the cell volume.

    Example:
        >>> box = GridBoxes(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([3]))
        >>> z, lw = grid_nodes(box, 3)
        >>> z.shape, lw.exp().sum().item()  # 3 x 3 nodes; weights 1/4 + 1/2 + ... sum to 2 x 2
        (torch.Size([9, 1, 2]), 4.0)
    """
    dim = boxes.centre.shape[-1]
    device = boxes.centre.device
    u = torch.linspace(-1.0, 1.0, nodes, dtype=torch.float64, device=device)  # (n,)
    mesh = torch.stack(torch.meshgrid(*([u] * dim), indexing="ij"), -1).reshape(-1, dim)  # (N, D)
    z = boxes.centre.double() + boxes.half_width.double() * mesh[:, None, :]  # (N, B, D)
    w1 = torch.zeros(nodes, dtype=torch.float64, device=device)
    w1[0] = w1[-1] = math.log(0.5)
    idx = torch.stack(torch.meshgrid(*([torch.arange(nodes, device=device)] * dim), indexing="ij"), -1)
    log_weights = w1[idx.reshape(-1, dim)].sum(-1)  # (N,)
    return z.to(dtype), log_weights


@dataclass
class _Stats:
    """The quadrature of one grid per point (float64)."""

    log_norm: torch.Tensor  # (B,): log of the integral of f
    mean: torch.Tensor  # (B, D)
    cov: torch.Tensor  # (B, D, D)
    extra: torch.Tensor  # (B,): the integral of g f / the integral of f (0 when there is no g)
    edge: torch.Tensor  # (B,): share of the mass on the boundary nodes
    spacing: torch.Tensor  # (B, D)

    @property
    def sd(self) -> torch.Tensor:
        return torch.diagonal(self.cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()

    def change(self, other: _Stats) -> torch.Tensor:
        """Largest change between two quadratures of the same points, ``(B,)``."""
        sd = self.sd.clamp_min(torch.finfo(torch.float64).tiny)
        return (
            torch.stack(
                [
                    (self.log_norm - other.log_norm).abs(),
                    (self.extra - other.extra).abs(),
                    ((self.mean - other.mean).abs() / sd).amax(-1),
                    ((self.sd - other.sd).abs() / sd).amax(-1),
                ]
            )
            .nan_to_num(nan=math.inf)
            .amax(0)
        )

    def select(self, rows: torch.Tensor) -> _Stats:
        return _Stats(*(getattr(self, f)[rows] for f in ("log_norm", "mean", "cov", "extra", "edge", "spacing")))


#: ``f(z, rows) -> (log_f, g)``: the log-density to integrate at nodes ``z`` (N, b, D) of
#: the points ``rows``, both ``(N, b)``; ``g`` (or None) is averaged under the normalised f.
_Integrand = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def _quadrature(
    f: _Integrand, boxes: GridBoxes, nodes: int, rows: torch.Tensor, dtype: torch.dtype, chunk: int
) -> _Stats:
    """Integrate ``f`` on the grids of the points ``rows``, ``nodes`` per dimension, in chunks of nodes."""
    z64, log_w = grid_nodes(boxes, nodes)  # (N, b, D), (N,)
    log_f, g = [], []
    for lo in range(0, z64.shape[0], chunk):
        lf, gg = f(z64[lo : lo + chunk].to(dtype), rows)  # (n, b) each
        log_f.append(lf.double())
        g.append(None if gg is None else gg.double())
    lf = torch.cat(log_f).nan_to_num(nan=-math.inf)  # (N, b): NaN (outside the support) has no mass
    a = lf + log_w[:, None]  # (N, b)
    spacing = 2 * boxes.half_width.double() / (nodes - 1)  # (b, D)
    log_norm = torch.logsumexp(a, 0) + spacing.log().sum(-1)  # (b,)
    p = torch.softmax(a, 0).nan_to_num(nan=0.0)  # (N, b): normalised mass per node
    mean = torch.einsum("nb,nbd->bd", p, z64)  # (b, D)
    dz = z64 - mean  # (N, b, D)
    cov = torch.einsum("nb,nbd,nbe->bde", p, dz, dz)  # (b, D, D)
    if g[0] is None:
        extra = torch.zeros_like(log_norm)
    else:
        gg = torch.cat(cast(list[torch.Tensor], g))  # (N, b): all given when the first is
        extra = (p * torch.where(p > 0, gg, torch.zeros_like(gg))).sum(0)  # (b,)
    u = (z64 - boxes.centre.double()) / boxes.half_width.double()  # (N, b, D)
    boundary = (u.abs() > 1 - 1e-9).any(-1)  # (N, b)
    edge = (p * boundary).sum(0)  # (b,)
    return _Stats(log_norm, mean, cov, extra, edge, spacing)


def _adapt(
    f: _Integrand, boxes: GridBoxes, *, tol: float, max_nodes: int, dtype: torch.dtype, budget: int
) -> tuple[_Stats, GridBoxes, torch.Tensor]:
    """Locate and refine every point's grid (module docstring); returns the last stats, the boxes and the errors."""
    num_points = boxes.centre.shape[0]
    device = boxes.centre.device
    centre, half_width = boxes.centre.double().clone(), boxes.half_width.double().clone()
    nodes = torch.full((num_points,), _START_NODES, dtype=torch.long, device=device)
    rounds = torch.zeros(num_points, dtype=torch.long, device=device)
    refining = torch.zeros(num_points, dtype=torch.bool, device=device)
    done = torch.zeros(num_points, dtype=torch.bool, device=device)
    error = torch.full((num_points,), math.inf, dtype=torch.float64, device=device)
    previous: dict[int, _Stats] = {}
    final: dict[int, _Stats] = {}
    edge_tol = tol / 100
    while not bool(done.all()):
        for n in torch.unique(nodes[~done]).tolist():
            rows = torch.nonzero(~done & (nodes == n)).squeeze(-1)  # (b,)
            box = GridBoxes(centre[rows], half_width[rows], nodes[rows])
            chunk = max(1, budget // max(1, rows.numel()))
            stats = _quadrature(f, box, n, rows, dtype, chunk)
            sd = stats.sd
            too_narrow = stats.edge > edge_tol  # mass on the boundary: the box cuts the posterior off
            for j, row in enumerate(rows.tolist()):
                one = stats.select(torch.tensor([j], device=device))
                if too_narrow[j]:  # widen around the mass found so far, and locate again
                    centre[row] = stats.mean[j]
                    half_width[row] = 2 * half_width[row]
                    refining[row] = False
                    nodes[row] = _START_NODES
                    rounds[row] += 1
                    if rounds[row] > 4 * _MAX_LOCATE:  # the density does not decay: give up on this point
                        final[row], error[row], done[row] = one, math.inf, True
                    continue
                if not refining[row]:
                    target = _HALF_WIDTH * torch.maximum(sd[j], stats.spacing[j] / 4)  # (D,)
                    shift = ((stats.mean[j] - centre[row]).abs() / target).amax()
                    ratio = (target / half_width[row]).log().abs().amax()
                    rounds[row] += 1
                    if (shift < 0.05 and ratio < math.log(1.5)) or rounds[row] >= _MAX_LOCATE:
                        refining[row] = True  # settled: refine this box from here
                        previous[row] = one
                        nodes[row] = 2 * n - 1
                    else:
                        centre[row], half_width[row] = stats.mean[j], target
                    continue
                error[row] = float(one.change(previous[row])[0])
                previous[row] = one
                if error[row] < tol or 2 * n - 1 > max_nodes:
                    final[row], done[row] = one, True
                else:
                    nodes[row] = 2 * n - 1
    order = [final[i] for i in range(num_points)]
    stats = _Stats(
        *(torch.cat([getattr(s, f) for s in order]) for f in ("log_norm", "mean", "cov", "extra", "edge", "spacing"))
    )
    return stats, GridBoxes(centre, half_width, nodes), error


def _prior_box(vae: VAE, num_points: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's mean +- 6 sd per dimension, from draws, as ``(B, D)`` centre and half-width."""
    with forked_rng(device, seed=0):
        z = vae.sample_latent((_PRIOR_DRAWS,)).double()  # (K, D)
    z = z.reshape(-1, vae.z_dim)
    lo = z.mean(0) - _HALF_WIDTH * z.std(0)
    hi = z.mean(0) + _HALF_WIDTH * z.std(0)
    return ((lo + hi) / 2).expand(num_points, -1), ((hi - lo) / 2).expand(num_points, -1)


def _union(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.minimum(a[0] - a[1], b[0] - b[1])
    hi = torch.maximum(a[0] + a[1], b[0] + b[1])
    return (lo + hi) / 2, (hi - lo) / 2


@torch.no_grad()
def posterior_quadrature(
    vae: VAE,
    x: torch.Tensor,
    *,
    tol: float = DEFAULT_TOL,
    max_nodes: int | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    y: torch.Tensor | None = None,
) -> PosteriorQuadrature:
    """log p(x), the posterior mean and covariance, and KL(q || p) per point, by quadrature.

    See the module docstring for the grids. Every density comes from the VAE's own
    programs: ``log p(x, z)`` from :func:`~pyro_vae.inference.bounds.log_joint` and
    ``log q(z|x)`` from :func:`~pyro_vae.inference.bounds.guide_log_density`. The points
    are integrated together, and the nodes of a pass are chunked so that no
    intermediate tensor holds more than ``max_elements`` numbers.

    Args:
        vae: The trained model, with ``z_dim`` at most 2.
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        tol: Accuracy asked for: the change of ``log p(x)`` and the ELBO (nats) and of
            the mean and sd (in sds) at the last refinement. Float32 models stop
            improving near 1e-5 (the rounding of ``log p(x, z)``).
        max_nodes: Most nodes per dimension (default 513 in 2-D, 16385 in 1-D).
        max_elements: Memory budget of one pass (numbers per intermediate tensor).
        y: For a conditional model, the condition of each row (p(z | x, y) is integrated).

    Returns:
        A :class:`PosteriorQuadrature` (float64 tensors).

    Raises:
        ConfigError: ``z_dim`` is above 2, the model has latents besides ``z``, or
            ``tol`` is not positive.
        DataError: ``x`` does not fit the model, or ``log p(x)`` is not finite.

    Warns:
        QuadratureWarning: Some point did not reach ``tol`` within ``max_nodes``; its
            ``error`` says how far it got.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> exact = posterior_quadrature(vae, torch.ones(3, 6))
        >>> exact.log_marginal.shape, exact.cov.shape, bool((exact.kl >= 0).all())
        (torch.Size([3]), torch.Size([3, 2, 2]), True)
    """
    check_grid_dim(vae)
    vae.check_x(x)
    vae.likelihood.check_support(x)
    kwargs = given(y, x)
    check_only_latent(vae, x, "grid quadrature", **kwargs)
    if not tol > 0:
        raise ConfigError(f"`tol` must be > 0, got {tol}")
    max_nodes = _MAX_NODES[vae.z_dim] if max_nodes is None else max_nodes
    if max_nodes < _START_NODES:
        raise ConfigError(f"`max_nodes` must be >= {_START_NODES}, got {max_nodes}")
    num_points = x.shape[0]
    dtype = x.dtype
    with frozen(vae):
        width = draw_width(vae, x, 16, **kwargs)
        budget = max(1, max_elements // width)  # nodes x points per pass
        loc, scale = vae.encode(x, y)  # (B, D) each
        guide_box = (loc.double(), _HALF_WIDTH * scale.double())
        start = _union(guide_box, _prior_box(vae, num_points, x.device))
        boxes = GridBoxes(*start, torch.full((num_points,), _START_NODES, device=x.device))

        def posterior(z: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, None]:
            return log_joint(vae, z, x[rows], **take_rows(kwargs, rows, num_points)), None  # (n, b)

        def guide(z: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_q = guide_log_density(vae, z, x[rows], **take_rows(kwargs, rows, num_points))  # (n, b)
            return log_q, log_joint(vae, z, x[rows], **take_rows(kwargs, rows, num_points)) - log_q

        exact, boxes, error = _adapt(posterior, boxes, tol=tol, max_nodes=max_nodes, dtype=dtype, budget=budget)
        q_boxes = GridBoxes(*guide_box, boxes.nodes)
        q, _, q_error = _adapt(guide, q_boxes, tol=tol, max_nodes=max_nodes, dtype=dtype, budget=budget)
    bad = ~torch.isfinite(exact.log_norm)
    if bool(bad.any()):
        rows = torch.nonzero(bad).squeeze(-1).tolist()
        raise DataError(
            f"log p(x) is not finite for rows {rows} of x: the model gives these inputs no density "
            "(check that x is what the model was trained on)"
        )
    error = torch.maximum(error, q_error)
    _warn_if_inaccurate(error, tol)
    return PosteriorQuadrature(
        log_marginal=exact.log_norm,
        mean=exact.mean,
        cov=exact.cov,
        elbo=q.extra,
        kl=(exact.log_norm - q.extra).clamp_min(0.0),
        error=error,
        boxes=boxes,
    )


def _warn_if_inaccurate(error: torch.Tensor, tol: float) -> None:
    bad = (error >= tol).cpu().numpy()
    if not bad.any():
        return
    details = ", ".join(
        f"row {i} ({e:.1e})" for i, e in zip(np.flatnonzero(bad), error.cpu().numpy()[bad], strict=True)
    )
    warnings.warn(
        f"grid quadrature did not reach `tol` {tol:g} for {details} within the node budget: the posterior "
        "has structure finer than the grid can resolve (raise `max_nodes`, or check the model)",
        QuadratureWarning,
        stacklevel=3,
    )
