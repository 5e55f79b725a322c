"""The exact posterior of a small latent (z_dim <= 2) from quadrature grids, as ArviZ data.

:func:`pyro_vae.inference.quadrature.posterior_quadrature` integrates p(z|x) on an
adaptive grid per point: log p(x), the posterior mean and covariance and
KL(q || p) without sampling. :func:`grid_posterior` adds draws, so that the grid's
answer reads like the other references (the groups of :mod:`.schema`): proposals from
the piecewise-constant density of each point's grid (:class:`GridProposal`: a node's
cell holds the node's mass), weighed by the model's own density through the one
trace-based path (:func:`~pyro_vae.inference.bounds.collect_weighted` with the grid in
place of the guide), and resampled. The proposal is close to the posterior, so the
weights are nearly even (effective sample size near the number of proposals, Pareto k
near 0), and the resampled draws are exact as the proposals grow, like importance
resampling from the guide but without its blind spots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ..errors import ConfigError
from ..inference.bounds import SampleShape, collect_weighted, given, log_joint
from ..inference.gaps import frozen
from ..inference.quadrature import (
    DEFAULT_TOL,
    GridBoxes,
    PosteriorQuadrature,
    grid_nodes,
    posterior_quadrature,
)
from ..model.vae import VAE
from ..seeding import forked_rng
from .samplers import _resample
from .schema import (
    LATENT_DIM,
    POINT_DIM,
    SAMPLE_DIMS,
    ArvizData,
    _attrs,
    _build,
    _check_counts,
    _coords,
    _dataset,
    _index,
)

__all__ = ["GridProposal", "grid_posterior"]

#: Nodes per dimension of the proposal's grid: fine enough for nearly even weights,
#: coarse enough to be cheap (65^2 nodes per point).
_PROPOSAL_NODES = (33, 65)


class GridProposal(dist.TorchDistribution):
    """The piecewise-constant density of a grid per point: batch ``(B,)``, event ``(D,)``.

    Each node's square cell (side: the node spacing) holds the node's normalised mass;
    :meth:`sample` picks a node by its mass and a uniform point in its cell, and
    :meth:`log_prob` is the cell's mass over its volume (``-inf`` outside every cell).

    Args:
        log_mass: Log masses of the nodes ``(B, N)``, ``N = n ** D`` in the row-major
            order of :func:`~pyro_vae.inference.quadrature.grid_nodes`.
        boxes: The grids' boxes (``n`` nodes per dimension each).
        nodes: n.

    Example:
        >>> boxes = GridBoxes(torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([3]))
        >>> q = GridProposal(torch.log(torch.tensor([[0.25, 0.5, 0.25]])), boxes, 3)
        >>> q.log_prob(torch.tensor([[0.1]])).exp()  # the middle cell: mass 0.5 over width 1
        tensor([0.5000])
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        log_mass: torch.Tensor,
        boxes: GridBoxes,
        nodes: int,
        batch_shape: torch.Size | None = None,
        _cdf: torch.Tensor | None = None,
    ) -> None:
        self.boxes = boxes
        self.nodes = nodes
        if _cdf is None:  # normalised once; expand() shares the tensors
            log_mass = log_mass - torch.logsumexp(log_mass, -1, keepdim=True)  # (B, N)
            _cdf = log_mass.exp().cumsum(-1)  # (B, N)
        self.log_mass, self._cdf = log_mass, _cdf
        dim = boxes.centre.shape[-1]
        self.spacing = 2 * boxes.half_width / (nodes - 1)  # (B, D)
        self.lower = boxes.centre - boxes.half_width  # (B, D): the first node
        batch_shape = torch.Size((log_mass.shape[0],)) if batch_shape is None else torch.Size(batch_shape)
        super().__init__(batch_shape, torch.Size((dim,)), validate_args=False)

    def expand(self, batch_shape: SampleShape, _instance: object = None) -> GridProposal:
        return GridProposal(self.log_mass, self.boxes, self.nodes, torch.Size(batch_shape), self._cdf)

    def sample(self, sample_shape: SampleShape = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape  # (..., B)
        num_points, dim = self.lower.shape
        draws = math.prod(shape[:-1])
        # Inverse CDF: no tensor of (points x nodes) per call, however many draws.
        u = torch.rand(num_points, draws, dtype=self._cdf.dtype, device=self._cdf.device) * self._cdf[:, -1:]
        picks = torch.searchsorted(self._cdf, u).clamp_max(self._cdf.shape[-1] - 1)  # (B, k)
        cell = torch.stack(torch.unravel_index(picks, (self.nodes,) * dim), -1)  # (B, k, D)
        jitter = torch.rand(num_points, draws, dim, dtype=self.lower.dtype, device=self.lower.device) - 0.5
        z = self.lower[:, None] + (cell + jitter) * self.spacing[:, None]  # (B, k, D)
        return z.transpose(0, 1).reshape(shape + (dim,))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        dim = self.lower.shape[-1]
        cell = torch.round((value - self.lower) / self.spacing).long()  # (..., B, D)
        inside = ((cell >= 0) & (cell < self.nodes)).all(-1)  # (..., B)
        flat = torch.zeros_like(inside, dtype=torch.long)
        for d in range(dim):  # row-major, as grid_nodes orders the nodes
            flat = flat * self.nodes + cell[..., d].clamp(0, self.nodes - 1)
        lead = flat.shape[:-1]
        mass = self.log_mass.T.gather(0, flat.reshape(-1, flat.shape[-1]))  # (k, B)
        lp = mass.reshape(lead + flat.shape[-1:]) - self.spacing.log().sum(-1)  # (..., B)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def _proposal(vae: VAE, x: torch.Tensor, exact: PosteriorQuadrature, chunk: int, **program_kwargs: Any) -> GridProposal:
    """The grid proposal of each point on its settled box, nodes per dimension within :data:`_PROPOSAL_NODES`."""
    lo, hi = _PROPOSAL_NODES
    nodes = int(min(max(int(exact.boxes.nodes.max()), lo), hi))
    boxes = GridBoxes(exact.boxes.centre.to(x.dtype), exact.boxes.half_width.to(x.dtype), exact.boxes.nodes)
    z, _ = grid_nodes(boxes, nodes, dtype=x.dtype)  # (N, B, D)
    log_mass = torch.cat([log_joint(vae, part, x, **program_kwargs) for part in z.split(chunk)])  # (N, B)
    return GridProposal(log_mass.T.nan_to_num(nan=-math.inf), boxes, nodes)


@torch.no_grad()
def grid_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    *,
    num_chains: int = 4,
    num_proposals: int | None = None,
    index: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    exact: PosteriorQuadrature | None = None,
    y: torch.Tensor | None = None,
) -> ArvizData:
    """The exact posterior of each row of ``x`` by quadrature (z_dim <= 2), with draws, as ArviZ data.

    Args:
        vae: The trained model.
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        num_samples: Draws per chain.
        num_chains: Chains (a split of the draws, which are independent).
        num_proposals: Proposals per point from the grid; default four per draw.
        index: Row index of each input (the ``point`` coordinate); default ``0..B-1``.
        seed: Seed of the draws (the caller's random stream is left untouched).
        tol: Accuracy of the quadrature (see
            :func:`~pyro_vae.inference.quadrature.posterior_quadrature`).
        exact: The quadrature of these rows, if the caller has it already.
        y: For a conditional model, the condition of each row: the posterior is
            p(z | x, y).

    Returns:
        ArviZ data with every group of :mod:`.schema`; ``sample_stats`` holds ``lp``
        (chain, draw, point), the resampling weights' ``ess`` and ``pareto_k``, and the
        quadrature's exact values per point: ``log_marginal`` (log p(x)), ``elbo`` (of
        the guide), ``kl`` (KL(q || p(z|x))), ``quadrature_error``, and ``exact_mean`` and
        ``exact_sd`` (point, latent; not ``mean``, which would hide xarray's method).

    Raises:
        ConfigError: ``z_dim`` is above 2, or a count is below 1.
        DataError: ``x`` does not fit the model.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = grid_posterior(vae, torch.ones(2, 6), 50, index=[4, 9])
        >>> dict(data.posterior.z.sizes), list(data.sample_stats.kl.dims)
        ({'chain': 4, 'draw': 50, 'point': 2, 'latent': 2}, ['point'])
    """
    _check_counts(num_samples=num_samples, num_chains=num_chains)
    num_proposals = 4 * num_samples * num_chains if num_proposals is None else num_proposals
    if num_proposals < 2:
        raise ConfigError(f"`num_proposals` must be >= 2, got {num_proposals}")
    index = _index(index, x.shape[0])
    kwargs = given(y, x)
    if exact is None:
        exact = posterior_quadrature(vae, x, tol=tol, y=y)
    with frozen(vae), forked_rng(x.device, seed=seed):
        proposal = _proposal(vae, x, exact, chunk=max(1, 2**16 // max(1, x.shape[0])), **kwargs)
        z, lw = collect_weighted(vae, x, num_proposals, proposal=proposal, **kwargs)  # (K, B, D), (K, B)
        chosen, lp, stats = _resample(vae, x, z, lw, num_samples, num_chains, **kwargs)
    point, latent = (POINT_DIM,), (POINT_DIM, LATENT_DIM)
    stats.update(
        {
            "log_marginal": (point, exact.log_marginal),
            "elbo": (point, exact.elbo),
            "kl": (point, exact.kl),
            "quadrature_error": (point, exact.error),
            "exact_mean": (latent, exact.mean),
            "exact_sd": (latent, exact.sd),
        }
    )
    sample_stats = _dataset({"lp": ((*SAMPLE_DIMS, POINT_DIM), lp), **stats}, _coords(index, vae))
    attrs = _attrs(
        "quadrature on an adaptive grid; draws resampled from the grid's piecewise-constant density",
        num_proposals=num_proposals,
        proposal_nodes=proposal.nodes,
    )
    return _build(vae, x, chosen, index, seed=seed, sample_stats=sample_stats, attrs=attrs, y=y)
