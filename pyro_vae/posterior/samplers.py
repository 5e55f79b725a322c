"""Draws from q(z|x) and from the exact posterior p(z|x), as ArviZ data.

:func:`guide_posterior` draws from the amortized guide, :func:`exact_posterior` from
the true posterior of the trained model with Pyro's NUTS, and
:func:`importance_posterior` by importance resampling with the guide as proposal
(Pareto-smoothed weights, with their ESS and Pareto k). Every one returns the groups of
:mod:`pyro_vae.posterior.schema`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..inference.bounds import (
    check_only_latent,
    collect_weighted,
    given,
    log_joint,
    model_densities,
    take_rows,
)
from ..inference.gaps import LogMarginal, frozen
from ..model.vae import VAE, local_params
from ..seeding import forked_rng
from .schema import (
    _DATATREE_NATIVE,
    LATENT_VAR,
    POINT_DIM,
    SAMPLE_DIMS,
    ArvizData,
    _attrs,
    _build,
    _check_counts,
    _coords,
    _dataset,
    _index,
    _point_seed,
    _stream_seed,
    az,
)

__all__ = [
    "ImportanceSamplingWarning",
    "guide_posterior",
    "exact_posterior",
    "default_block_size",
    "importance_posterior",
]

#: Importance weights with fewer effective draws than this make the resampled draws a
#: re-weighting of a handful of proposals.
_MIN_IMPORTANCE_ESS = 100.0


class ImportanceSamplingWarning(UserWarning):
    """Importance resampling's weights say its draws do not represent p(z|x)."""


# ------------------------------------------------------------------ the amortized guide
def guide_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    *,
    num_chains: int = 4,
    index: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    y: torch.Tensor | None = None,
) -> ArvizData:
    """Draws of z from the amortized guide q(z|x) for each row of ``x``, as ArviZ data.

    The draws are independent, so the chains are just a split of them; they make
    ArviZ's R-hat and ESS well defined (near 1 and near the number of draws).

    Args:
        vae: The trained model.
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        num_samples: Draws per chain.
        num_chains: Chains.
        index: Row index of each input in its data set (the ``point`` coordinate);
            default ``0..B-1``.
        seed: Seed of the draws (the caller's random stream is left untouched).
        y: For a conditional model, the condition of each row (its label): the draws
            are from q(z | x, y).

    Returns:
        ArviZ data with the groups of the module's table but ``sample_stats``.

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count is below 1, or ``index`` is malformed.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = guide_posterior(vae, torch.ones(3, 6), 50, index=[0, 5, 9])
        >>> dict(data.posterior.z.sizes)
        {'chain': 4, 'draw': 50, 'point': 3, 'latent': 2}
        >>> dict(data.log_likelihood.x.sizes)
        {'chain': 4, 'draw': 50, 'point': 3}
    """
    vae.check_x(x)
    vae.likelihood.check_support(x)
    given(y, x)
    _check_counts(num_samples=num_samples, num_chains=num_chains)
    index = _index(index, x.shape[0])
    with torch.no_grad(), forked_rng(x.device, seed=seed):
        z = vae.posterior(x, y).sample((num_chains * num_samples,))  # (C*S, B, z_dim)
    z = z.reshape(num_chains, num_samples, *z.shape[1:])  # (C, S, B, z_dim)
    attrs = _attrs("amortized guide q(z|x) = Normal(mu(x), sigma(x))")
    return _build(vae, x, z, index, seed=seed, sample_stats=None, attrs=attrs, y=y)


# -------------------------------------------------------------------------------- NUTS
#: Latents (points x batched chains) per product-space block by default. Larger blocks
#: evaluate the decoder on more latents per leapfrog step, for the same Python work in
#: Pyro's NUTS, but need more steps per transition (the step size shrinks like the
#: block's dimension to the -1/4). benchmarks/posterior_speed.py measures the trade-off:
#: on a 2-core CPU, for the digits model (z_dim 2), 100 points x 4 chains gave 48 times
#: per-point NUTS's effective draws per second, 25 points 26 times (benchmarks/README.md).
_BLOCK_LATENTS = 400


def default_block_size(chains_per_run: int) -> int:
    """Points per product-space block that :func:`exact_posterior` picks by default.

    Example:
        >>> default_block_size(4), default_block_size(1)  # chains batched, or run in turn
        (100, 400)
    """
    return max(1, _BLOCK_LATENTS // chains_per_run)


def exact_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 500,
    *,
    warmup_steps: int | None = None,
    num_chains: int = 4,
    index: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    init_spread: float = 2.0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = True,
    block_size: int | None = None,
    batch_chains: bool = True,
    progress: bool = False,
    y: torch.Tensor | None = None,
) -> ArvizData:
    """Draws from the exact posterior p(z|x) of the trained model, by Pyro's NUTS, many points at once.

    The posteriors of different points are independent, so a block of points is
    sampled jointly: Pyro's NUTS runs on the product space of the block, whose
    potential energy is ``-sum_b log p(x_b, z_b)`` (the model's own density,
    :func:`~pyro_vae.inference.bounds.log_joint`, with every weight held fixed), with a
    diagonal mass matrix adapted per coordinate. The joint density factorizes, so
    every point's marginal is still exactly its posterior; each leapfrog step
    evaluates the decoder on the whole block at once, which is what makes this fast.
    What the points share is the step size and the length of each trajectory (its
    tree depth): the step size shrinks like (block dimension)^(-1/4), and a point
    whose posterior is harder than the others' sets it for all of them. With
    ``batch_chains`` the chains of the block are more coordinates of the same
    product space (one Pyro run moves them all); else each chain is a run of its own
    over the block, with its own adaptation. ``block_size=1, batch_chains=False`` is
    the classic per-point, per-chain NUTS.

    Each chain of a point starts from ``mu(x) + init_spread * sigma(x) * eps``,
    spread wider than the guide so that R-hat can reveal chains that have not mixed;
    the starts are seeded per (row, chain), the trajectories per block, so a point's
    draws depend on the other points of its block (never their distribution).

    Args:
        vae: The trained model (left unchanged; nothing enters Pyro's param store).
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        num_samples: Draws kept per chain.
        warmup_steps: Adaptation steps per chain (discarded); default ``num_samples``.
        num_chains: Chains per data point.
        index: Row index of each input (the ``point`` coordinate); default ``0..B-1``.
        seed: Seed of the starts and the trajectories.
        init_spread: Width of the initial points in units of sigma(x).
        target_accept_prob: NUTS step-size adaptation target.
        max_tree_depth: NUTS maximum tree depth.
        jit_compile: Compile the potential energy with the PyTorch JIT, once per block
            (the model's weights are held fixed, so compiling them in is exact).
        block_size: Points sampled jointly; default :func:`default_block_size` (100
            points with 4 batched chains: 400 latents per block).
        batch_chains: Put the chains of a block into its product space (default), or
            run them one after the other.
        progress: Show a progress bar over all blocks.
        y: For a conditional model, the condition of each row: the draws are from
            p(z | x, y) (a semi-supervised model's labels must all be known, else the
            label is a second latent).

    Returns:
        ArviZ data with every group of the module's table. ``sample_stats`` has, with
        dims (chain, draw, point), ArviZ's names for what Pyro's NUTS computes at each
        transition. Per point: ``energy`` (the point's own Hamiltonian at the start of
        the transition: its potential ``-log p(x, z)`` plus the kinetic energy of its
        fresh momentum; the block's Hamiltonian is their sum, so ArviZ's energy plot
        and BFMI read per point as for a chain of its own), ``lp`` (log p(z, x) of the
        draw) and ``diverging`` (the trajectory diverged, charged to the points whose
        own energy error caused it: each with at least a tenth of the summed positive
        errors, or every point of the block if none is). Shared by every point of a
        run (a block, or one chain of it): ``step_size``, ``tree_depth`` (doublings, as
        Stan counts them), ``n_steps`` (leapfrog steps, i.e. gradient evaluations of
        the whole block) and ``acceptance_rate`` (the mean Metropolis acceptance
        probability over the trajectory). The attributes ``sampling_time`` and
        ``sampling_time_per_point`` give the wall time in seconds, ``block_size`` and
        ``batch_chains`` the layout.

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count is below 1, ``index`` is malformed, or the model has
            latents besides ``z`` (a second layer: NUTS would need them too).

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = exact_posterior(vae, torch.ones(3, 6), 20, num_chains=2)
        >>> dict(data.sample_stats.energy.sizes)
        {'chain': 2, 'draw': 20, 'point': 3}
    """
    vae.check_x(x)
    vae.likelihood.check_support(x)
    kwargs = given(y, x)
    check_only_latent(vae, x, "NUTS", **kwargs)
    warmup_steps = num_samples if warmup_steps is None else warmup_steps
    _check_counts(num_samples=num_samples, num_chains=num_chains, max_tree_depth=max_tree_depth)
    if block_size is not None:
        _check_counts(block_size=block_size)
    if warmup_steps < 0:
        raise ConfigError(f"`warmup_steps` must be >= 0, got {warmup_steps}")
    if not 0 < target_accept_prob < 1:
        raise ConfigError(f"`target_accept_prob` must be in (0, 1), got {target_accept_prob}")
    index = _index(index, x.shape[0])
    num_points = x.shape[0]
    batched = num_chains if batch_chains else 1  # chains per Pyro run
    block_size = min(default_block_size(batched) if block_size is None else block_size, num_points)
    with torch.no_grad():
        loc, scale = vae.encode(x, y)  # (B, z_dim) each
        starts = torch.stack(
            [
                torch.stack(
                    [
                        _start(loc[b], scale[b], init_spread, _point_seed(seed, int(index[b]), c))
                        for b in range(num_points)
                    ]
                )
                for c in range(num_chains)
            ]
        )  # (C, B, z_dim)
    shape = (num_chains, num_samples, num_points)
    z = torch.empty(*shape, vae.z_dim, dtype=loc.dtype, device=x.device)  # (C, S, B, z_dim)
    stats = {name: np.zeros(shape, dtype=dtype) for name, dtype in _NUTS_STATS.items()}
    blocks = [slice(lo, min(lo + block_size, num_points)) for lo in range(0, num_points, block_size)]
    runs = [(rows, slice(c, c + batched)) for rows in blocks for c in range(0, num_chains, batched)]
    bar = tqdm(
        total=len(runs) * (warmup_steps + num_samples),
        disable=not progress,
        desc="NUTS",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5,
    )
    # Small blocks gain nothing from intra-op threads (one thread was 5-10 times faster
    # than two for a single point on a loaded 2-core machine); large ones keep torch's.
    threads = _one_thread() if block_size * batched < 64 else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        # Parameters stay in the module while NUTS runs the model: nothing enters
        # Pyro's global param store, whichever mode the caller runs Pyro in.
        with frozen(vae), threads, local_params():
            for rows, chains in runs:
                first = int(index[rows.start])
                bar.set_postfix(
                    rows=f"{rows.start + 1}-{rows.stop} of {num_points}", chains=f"{chains.start + 1}-{chains.stop}"
                )
                with forked_rng(x.device, seed=_stream_seed(_point_seed(seed, first, chains.start), 2)):
                    draws, run_stats = _nuts_block(
                        vae,
                        x[rows],
                        starts[chains, rows],
                        take_rows(kwargs, rows, num_points),
                        num_samples,
                        warmup_steps,
                        bar,
                        target_accept_prob=target_accept_prob,
                        max_tree_depth=max_tree_depth,
                        jit_compile=jit_compile,
                    )
                z[chains, :, rows] = draws.transpose(0, 1)  # (c, S, b, z_dim)
                for name, values in run_stats.items():
                    stats[name][chains, :, rows] = values.transpose(1, 0, 2)  # (c, S, b)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        lp = sum(model_densities(vae, z, x, **kwargs))  # (C, S, B): log p(x, z)
    dims = (*SAMPLE_DIMS, POINT_DIM)
    sample_stats = _dataset(
        {**{name: (dims, values) for name, values in stats.items()}, "lp": (dims, lp)}, _coords(index, vae)
    )
    attrs = _attrs(
        "NUTS on the model conditioned on x, weights fixed, blocks of points on their product space",
        sampling_time=seconds,
        sampling_time_per_point=seconds / num_points,
        tuning_steps=warmup_steps,
        block_size=block_size,
        batch_chains=int(batch_chains),
    )
    return _build(vae, x, z, index, seed=seed, sample_stats=sample_stats, attrs=attrs, y=y)


def _start(loc: torch.Tensor, scale: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    """One chain's start for one point, from a seed of its own: ``(z_dim,)``."""
    with forked_rng(loc.device, seed=seed):
        return loc + spread * scale * torch.randn_like(loc)


#: The per-transition statistics of :func:`exact_posterior`, and their dtypes.
_NUTS_STATS = {
    "diverging": bool,
    "energy": np.float64,
    "step_size": np.float64,
    "tree_depth": np.int64,
    "n_steps": np.int64,
    "acceptance_rate": np.float64,
}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _RecordingNUTS(NUTS):
    """Pyro's NUTS, keeping the statistics of each transition that ArviZ reports.

    Pyro computes all of them inside ``NUTS.sample`` and keeps only running totals
    (mean acceptance probability, the list of divergences). Each transition grows the
    trajectory by doubling: ``sample`` calls ``_build_tree`` once per doubling (the
    top-level calls), with the Hamiltonian of the trajectory, and each returned tree
    carries its number of leapfrog steps, its summed acceptance probabilities and
    whether it diverged or turned. This subclass watches those calls and leaves the
    algorithm untouched; :attr:`transition` holds the last transition's statistics.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._depth = 0  # recursion depth inside _build_tree
        self._doublings: list[tuple[int, Any]] = []  # (tree depth, tree) per top-level call
        self._energy = math.nan
        self.transition: dict[str, Any] = {}

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):  # noqa: ANN001, ANN202
        top = self._depth == 0
        if top:
            self._energy = float(energy_current)
        self._depth += 1
        try:
            tree = super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)
        finally:
            self._depth -= 1
        if top:
            self._doublings.append((tree_depth, tree))
        return tree

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._doublings = []
        params = super().sample(params)
        if self._doublings:
            depth, last = self._doublings[-1]
            steps = sum(int(tree.num_proposals) for _, tree in self._doublings)
            accept = sum(float(tree.sum_accept_probs) for _, tree in self._doublings)
            stopped = bool(last.diverging) or bool(last.turning)
            self.transition = {
                "diverging": bool(last.diverging),  # only the last doubling can diverge: it stops the growth
                "energy": self._energy,
                "step_size": float(self.step_size),
                # Stan's count: the doublings whose subtree was kept (a diverging or
                # turning subtree is dropped, and the growth stops there).
                "tree_depth": depth if stopped else depth + 1,
                "n_steps": steps,
                "acceptance_rate": accept / steps,  # Pyro's accept_prob of the transition
            }
        return params


class _BlockNUTS(_RecordingNUTS):
    """:class:`_RecordingNUTS` on the product space of a block of points, per-point records added.

    The potential is ``-sum log_density(z)`` over the block (``z`` of shape
    ``(c, b, z_dim)``: chains x points). Besides the shared statistics, each
    transition records per (chain, point) the start ``z0``, the kinetic energy of the
    fresh momentum and which points a divergence is charged to: at the diverging
    leapfrog step, each point's own energy error (its potential from the last
    evaluation, its kinetic energy from the momentum) against its energy at the start.
    """

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, **kwargs: Any) -> None:
        self._log_density = log_density
        self._last = init.new_zeros(init.shape[:-1])  # (c, b): log density at the latest evaluation
        self._z0 = init  # (c, b, z_dim): the start of the current transition
        self._r0 = torch.zeros_like(init)  # (c, b, z_dim): its fresh momentum, unscaled
        self._blamed: torch.Tensor | None = None
        super().__init__(potential_fn=self._potential, **kwargs)

    def _potential(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        lp = self._log_density(params[LATENT_VAR])  # (c, b)
        self._last = lp.detach()
        return -lp.sum()

    def _sample_r(self, name: str):
        r, r_unscaled = super()._sample_r(name)
        self._r0 = next(iter(r_unscaled.values())).reshape(self._z0.shape)  # (c, b, z_dim)
        return r, r_unscaled

    def _build_basetree(self, z, r, z_grads, log_slice, direction, energy_current):
        tree = super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
        if bool(tree.diverging) and self._blamed is None:
            r_new = next(iter(tree.r_right_unscaled.values())).reshape(self._z0.shape)  # (c, b, z_dim)
            energy_new = -self._last + 0.5 * r_new.pow(2).sum(-1)  # (c, b)
            with torch.no_grad():
                energy_start = -self._log_density(self._z0) + 0.5 * self._r0.pow(2).sum(-1)  # (c, b)
            error = (energy_new - energy_start).nan_to_num(nan=math.inf).clamp_min(0.0)  # (c, b)
            total = error.sum()
            blamed = error >= 0.1 * total if bool(torch.isfinite(total)) else torch.isinf(error)
            self._blamed = blamed if bool(blamed.any()) else torch.ones_like(blamed)
        return tree

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._z0 = params[LATENT_VAR].detach()
        self._blamed = None
        params = super().sample(params)
        if self.transition:
            self.transition["z0"] = self._z0
            self.transition["kinetic"] = 0.5 * self._r0.pow(2).sum(-1)  # (c, b)
            self.transition["diverging"] = (
                self._blamed if self._blamed is not None else torch.zeros_like(self._last, dtype=torch.bool)
            )
        return params


def _nuts_block(
    vae: VAE,
    x: torch.Tensor,
    init: torch.Tensor,
    program_kwargs: dict[str, Any],
    num_samples: int,
    warmup_steps: int,
    bar: tqdm,
    *,
    target_accept_prob: float,
    max_tree_depth: int,
    jit_compile: bool,
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """One Pyro NUTS run on the product space of ``c`` chains x ``b`` points.

    Args:
        vae: The model (weights held fixed by the caller).
        x: The block's data ``(b, x_dim)``.
        init: Starts ``(c, b, z_dim)``.
        program_kwargs: The model's keyword arguments for the block's rows (``y``).

    Returns:
        Draws ``(S, c, b, z_dim)`` and per-draw statistics ``{name: (S, c, b)}``.
    """
    c, b = init.shape[:2]

    def log_density(z: torch.Tensor) -> torch.Tensor:
        return log_joint(vae, z, x, **program_kwargs)  # (c, b)

    if jit_compile:
        with warnings.catch_warnings():
            # Tracing freezes the model's Python (its checks, plates) for this block's
            # shapes, which is what the warnings say; torch also deprecates the tracer.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            log_density = torch.jit.trace(log_density, (init.clone(),), check_trace=False)
    kernel = _BlockNUTS(log_density, init, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    shape = (num_samples, c, b)
    stats = {name: np.zeros(shape, dtype=dtype) for name, dtype in _NUTS_STATS.items()}
    z0 = init.new_empty((num_samples, c, b, init.shape[-1]))  # (S, c, b, z_dim)
    kinetic = init.new_empty(shape)  # (S, c, b)

    def hook(kernel: _BlockNUTS, params: dict, stage: str, i: int) -> None:
        if stage.startswith("Sample"):
            record = kernel.transition
            for name in _NUTS_STATS:
                value = record[name]
                stats[name][i] = value.cpu().numpy() if isinstance(value, torch.Tensor) else value
            z0[i], kinetic[i] = record["z0"], record["kinetic"]
        bar.update(1)

    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={LATENT_VAR: init},  # (c, b, z_dim)
        num_chains=1,
        hook_fn=hook,
        disable_progbar=True,
    )
    mcmc.run()
    with torch.no_grad():
        # Each point's Hamiltonian at the start of each transition: its own potential
        # plus its own kinetic energy (the block's is their sum).
        stats["energy"] = (kinetic - log_joint(vae, z0, x, **program_kwargs)).double().cpu().numpy()  # (S, c, b)
    return mcmc.get_samples()[LATENT_VAR], stats  # (S, c, b, z_dim)


# ------------------------------------------------------------- importance resampling
@torch.no_grad()
def importance_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    *,
    num_chains: int = 4,
    num_proposals: int = 20_000,
    index: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    y: torch.Tensor | None = None,
) -> ArvizData:
    """Approximate draws from p(z|x) by sampling-importance-resampling from the guide.

    For each point, ``num_proposals`` draws from q(z|x) are weighted by
    ``p(x, z) / q(z|x)``, the weights are Pareto-smoothed (PSIS, Vehtari et al. 2024,
    through ArviZ), and ``num_chains * num_samples`` of the proposals are resampled
    with replacement by the smoothed weights. Much cheaper than NUTS, and exact as
    ``num_proposals`` grows, but only as good as the guide's coverage of the posterior.
    The resampled draws repeat, so ArviZ's ESS and R-hat of them say nothing about how
    much they are worth; the weights do: their effective sample size ``ess`` (how many
    independent posterior draws the weighted proposals are worth) and the Pareto
    shape ``pareto_k`` of their upper tail (above ``min(1 - 1/log10(S), 0.7)`` for S
    proposals, 0.7 for S >= 2155, the estimate is unreliable whatever S: the guide
    misses part of the posterior). Both are in ``sample_stats``, and a warning
    (:class:`ImportanceSamplingWarning`) names the points where k is above that
    threshold or the ESS below 100.

    Args:
        vae: The trained model.
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        num_samples: Resampled draws per chain.
        num_chains: Chains (a split of the resampled draws).
        num_proposals: Draws from the guide per point.
        index: Row index of each input (the ``point`` coordinate); default ``0..B-1``.
        seed: Seed of the draws (the caller's random stream is left untouched).
        y: For a conditional model, the condition of each row: the draws are from
            p(z | x, y). A semi-supervised model's unknown labels (-1) are summed over
            by the weights, so its draws are then from p(z | x).

    Returns:
        ArviZ data with every group of the module's table; ``sample_stats`` holds
        ``lp`` (log p(z, x) of each draw: chain, draw, point) and, per point, ``ess``
        and ``pareto_k`` of the smoothed weights and ``log_marginal``, the
        importance-sampled log p(x) (from the raw weights, which keep it unbiased).

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count is below 1 (or ``num_proposals`` below 2).

    Warns:
        ImportanceSamplingWarning: For some point the weights' Pareto k or ESS says the
            draws do not represent the posterior.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = importance_posterior(vae, torch.ones(2, 6), 25, num_proposals=500)
        >>> dict(data.sample_stats.pareto_k.sizes)
        {'point': 2}
    """
    vae.check_x(x)
    vae.likelihood.check_support(x)
    _check_counts(num_samples=num_samples, num_chains=num_chains)
    if num_proposals < 2:
        raise ConfigError(f"`num_proposals` must be >= 2, got {num_proposals}")
    index = _index(index, x.shape[0])
    kwargs = given(y, x)
    with frozen(vae), forked_rng(x.device, seed=seed):
        z, lw = collect_weighted(vae, x, num_proposals, **kwargs)  # (K, B, z_dim), (K, B)
        marginal = LogMarginal.from_log_weights(lw)
        chosen, lp, stats = _resample(vae, x, z, lw, num_samples, num_chains, **kwargs)
    _warn_if_unreliable(index, stats["ess"][1], stats["pareto_k"][1], num_proposals)
    stats["log_marginal"] = ((POINT_DIM,), marginal.estimate)
    sample_stats = _dataset({"lp": ((*SAMPLE_DIMS, POINT_DIM), lp), **stats}, _coords(index, vae))
    attrs = _attrs("sampling-importance-resampling, guide as proposal", num_proposals=num_proposals)
    return _build(vae, x, chosen, index, seed=seed, sample_stats=sample_stats, attrs=attrs, y=y)


def _resample(
    vae: VAE,
    x: torch.Tensor,
    z: torch.Tensor,
    log_w: torch.Tensor,
    num_samples: int,
    num_chains: int,
    **program_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[tuple[str, ...], Any]]]:
    """Resample weighted proposals by their Pareto-smoothed weights (in the caller's random stream).

    Args:
        vae: The model.
        x: The data ``(B, x_dim)``.
        z: Proposals ``(K, B, z_dim)``.
        log_w: Their log importance weights ``(K, B)``.
        num_samples: Draws per chain.
        num_chains: Chains (a split of the resampled draws).
        **program_kwargs: The model's keyword arguments for the rows (``y``).

    Returns:
        ``(draws, lp, stats)``: draws ``(C, S, B, z_dim)``, their ``log p(x, z)``
        ``(C, S, B)``, and the weights' ``ess`` and ``pareto_k`` per point as
        ``{name: (dims, values)}``.
    """
    smoothed, pareto_k = _psis(log_w.T.double().cpu().numpy())  # (B, K), (B,)
    weights = torch.from_numpy(np.exp(smoothed)).to(log_w.device)  # (B, K), each row sums to 1
    picks = torch.multinomial(weights, num_chains * num_samples, replacement=True)  # (B, C*S)
    chosen = z.gather(0, picks.T.unsqueeze(-1).expand(-1, -1, vae.z_dim))  # (C*S, B, z_dim)
    chosen = chosen.reshape(num_chains, num_samples, *chosen.shape[1:])  # (C, S, B, z_dim)
    densities = model_densities(vae, chosen, x, **program_kwargs)
    lp = densities.log_prior + densities.log_likelihood  # (C, S, B): log p(x, z)
    ess = 1.0 / (weights.double() ** 2).sum(-1).cpu().numpy()  # (B,)
    return chosen, lp, {"ess": ((POINT_DIM,), ess), "pareto_k": ((POINT_DIM,), pareto_k)}


def _psis(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed importance sampling, by ArviZ.

    Args:
        log_weights: Log importance weights ``(B, K)``, K draws per point.

    Returns:
        The smoothed log-weights ``(B, K)``, normalised so that each row's weights sum
        to 1, and the Pareto shape k of each row's upper tail ``(B,)``. A row whose
        weights are all equal (the proposal is the posterior) has nothing to smooth:
        uniform weights and k = -inf.
    """
    flat = log_weights.max(-1) - log_weights.min(-1) < 1e-12  # (B,)
    smoothed = np.full(log_weights.shape, -math.log(log_weights.shape[-1]))  # (B, K)
    k = np.full(log_weights.shape[0], -np.inf)  # (B,)
    rows = ~flat
    if rows.any():
        if _DATATREE_NATIVE:
            from arviz_stats.base import array_stats

            # arviz_stats smooths log-ratios as its LOO produces them: the negated
            # log-weights (it flips the sign back inside).
            smoothed[rows], k[rows] = array_stats.psislw(-log_weights[rows], r_eff=1.0, axis=-1)
        else:
            smoothed[rows], k[rows] = az.psislw(log_weights[rows], reff=1.0)
    return smoothed, k


def _warn_if_unreliable(index: np.ndarray, ess: np.ndarray, pareto_k: np.ndarray, num_proposals: int) -> None:
    # Vehtari et al. (2024): above this k, S draws cannot give a reliable estimate.
    k_max = min(1.0 - 1.0 / math.log10(num_proposals), 0.7)
    bad = (pareto_k > k_max) | (ess < _MIN_IMPORTANCE_ESS)
    if not bad.any():
        return
    details = ", ".join(
        f"row {row} (Pareto k {k:.2f}, ESS {e:.1f})"
        for row, k, e in zip(index[bad], pareto_k[bad], ess[bad], strict=True)
    )
    warnings.warn(
        f"importance resampling from the guide is unreliable for {details} of {num_proposals} proposals: "
        f"a Pareto k above {k_max:.2f} or an ESS below {_MIN_IMPORTANCE_ESS:.0f} means the guide misses part "
        "of the posterior; use exact_posterior (NUTS: `--method nuts` of pyro-vae inspect), or the grid for z_dim <= 2",
        ImportanceSamplingWarning,
        stacklevel=4,  # the caller of importance_posterior (through torch.no_grad's wrapper)
    )
