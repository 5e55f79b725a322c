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
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..inference.bounds import collect_weighted, model_densities
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
    az,
)

__all__ = ["ImportanceSamplingWarning", "guide_posterior", "exact_posterior", "importance_posterior"]

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
    _check_counts(num_samples=num_samples, num_chains=num_chains)
    index = _index(index, x.shape[0])
    with torch.no_grad(), forked_rng(x.device, seed=seed):
        z = vae.posterior(x).sample((num_chains * num_samples,))  # (C*S, B, z_dim)
    z = z.reshape(num_chains, num_samples, *z.shape[1:])  # (C, S, B, z_dim)
    attrs = _attrs("amortized guide q(z|x) = Normal(mu(x), sigma(x))")
    return _build(vae, x, z, index, seed=seed, sample_stats=None, attrs=attrs)


# -------------------------------------------------------------------------------- NUTS
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
    progress: bool = False,
) -> ArvizData:
    """Draws from the exact posterior p(z|x) of the trained model, by Pyro's NUTS.

    NUTS runs on ``vae.model`` conditioned on each row of ``x`` with every weight of
    the model held fixed, so z is the only latent. Each data point gets its own runs
    (the posteriors of different points are independent, and one step size and mass
    matrix adapted jointly over many points would suit none of them), and the chains
    of a point run one after the other in this process. Pyro's ``num_chains > 1``
    would fork one process per chain, which with PyTorch's thread pools on CPU is
    fragile (it needs a picklable model under ``spawn``, and falls back to sequential
    chains anyway when cores are short); sequential chains always work, and each
    (row, chain) gets its own seed, so a row's draws do not depend on the other rows.
    PyTorch runs with one intra-op thread meanwhile (restored after): one point's
    tensors are too small to gain from more. Each chain starts from
    ``mu(x) + init_spread * sigma(x) * eps``, spread wider than the guide, so that
    R-hat can reveal chains that have not mixed.

    Args:
        vae: The trained model (left unchanged; nothing enters Pyro's param store).
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        num_samples: Draws kept per chain.
        warmup_steps: Adaptation steps per chain (discarded); default ``num_samples``.
        num_chains: Chains per data point.
        index: Row index of each input (the ``point`` coordinate); default ``0..B-1``.
        seed: Seed; each (row, chain) gets its own stream derived from it.
        init_spread: Width of the initial points in units of sigma(x).
        target_accept_prob: NUTS step-size adaptation target.
        max_tree_depth: NUTS maximum tree depth.
        jit_compile: Let Pyro compile the potential energy with the PyTorch JIT
            (2 to 3 times faster for small models; the model's weights are held fixed,
            so compiling them in as constants is exact).
        progress: Show a progress bar over all points and chains.

    Returns:
        ArviZ data with every group of the module's table. ``sample_stats`` has, with
        dims (chain, draw, point), ArviZ's names for what Pyro's NUTS computes at each
        transition: ``diverging``, ``energy`` (the Hamiltonian of the trajectory: the
        potential energy at the start plus the kinetic energy of the fresh momentum,
        which the integrator keeps up to its error), ``lp`` (log p(z, x) of the draw),
        ``step_size``, ``tree_depth`` (doublings of the trajectory, as Stan counts
        them), ``n_steps`` (leapfrog steps, i.e. model gradient evaluations) and
        ``acceptance_rate`` (the mean Metropolis acceptance probability over the
        trajectory, which step-size adaptation steers to ``target_accept_prob``). The
        attributes ``sampling_time`` and ``sampling_time_per_point`` give the wall time
        in seconds.

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count is below 1, or ``index`` is malformed.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = exact_posterior(vae, torch.ones(1, 6), 20, num_chains=2)
        >>> dict(data.sample_stats.energy.sizes)
        {'chain': 2, 'draw': 20, 'point': 1}
    """
    vae.check_x(x)
    vae.likelihood.check_support(x)
    warmup_steps = num_samples if warmup_steps is None else warmup_steps
    _check_counts(num_samples=num_samples, num_chains=num_chains, max_tree_depth=max_tree_depth)
    if warmup_steps < 0:
        raise ConfigError(f"`warmup_steps` must be >= 0, got {warmup_steps}")
    if not 0 < target_accept_prob < 1:
        raise ConfigError(f"`target_accept_prob` must be in (0, 1), got {target_accept_prob}")
    index = _index(index, x.shape[0])
    num_points = x.shape[0]
    with torch.no_grad():
        loc, scale = vae.encode(x)  # (B, z_dim) each
    shape = (num_chains, num_samples, num_points)
    z = torch.empty(*shape, vae.z_dim, dtype=loc.dtype, device=x.device)  # (C, S, B, z_dim)
    stats = {name: np.zeros(shape, dtype=dtype) for name, dtype in _NUTS_STATS.items()}
    total = num_points * num_chains * (warmup_steps + num_samples)
    bar = tqdm(total=total, disable=not progress, desc="NUTS", unit="step", dynamic_ncols=True, mininterval=0.5)
    start = time.perf_counter()
    try:
        # Parameters stay in the module while NUTS traces the model: nothing enters
        # Pyro's global param store, whichever mode the caller runs Pyro in.
        with frozen(vae), _one_thread(), local_params():
            for b in range(num_points):
                row = int(index[b])
                for c in range(num_chains):
                    bar.set_postfix(point=f"{b + 1}/{num_points} (row {row})", chain=f"{c + 1}/{num_chains}")
                    with forked_rng(x.device, seed=_point_seed(seed, row, c)):
                        init = loc[b : b + 1] + init_spread * scale[b : b + 1] * torch.randn_like(loc[b : b + 1])
                        kernel = _RecordingNUTS(
                            vae.model,
                            target_accept_prob=target_accept_prob,
                            max_tree_depth=max_tree_depth,
                            jit_compile=jit_compile,
                            ignore_jit_warnings=True,
                        )
                        draws, chain_stats = _nuts_chain(kernel, x[b : b + 1], init, num_samples, warmup_steps, bar)
                    z[c, :, b] = draws  # (S, z_dim)
                    for name, values in chain_stats.items():
                        stats[name][c, :, b] = values
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        lp = sum(model_densities(vae, z, x))  # (C, S, B): log p(x, z)
    dims = (*SAMPLE_DIMS, POINT_DIM)
    sample_stats = _dataset(
        {**{name: (dims, values) for name, values in stats.items()}, "lp": (dims, lp)}, _coords(index, vae)
    )
    attrs = _attrs(
        "NUTS on the model conditioned on x, weights fixed",
        sampling_time=seconds,
        sampling_time_per_point=seconds / num_points,
        tuning_steps=warmup_steps,
    )
    return _build(vae, x, z, index, seed=seed, sample_stats=sample_stats, attrs=attrs)


#: The per-transition statistics :class:`_RecordingNUTS` keeps, and their dtypes.
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
    # One point's tensors are tiny (a single z through the decoder): intra-op threads
    # only add synchronisation, which on a busy CPU made NUTS 5-10 times slower
    # (measured: 1.0 s with one thread, 10.4 s with two, on a loaded 2-core machine).
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


def _nuts_chain(
    kernel: _RecordingNUTS,
    x: torch.Tensor,
    init: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    bar: tqdm,
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """One NUTS chain for one data point: draws ``(S, z_dim)`` and per-draw statistics."""
    stats = {name: np.zeros(num_samples, dtype=dtype) for name, dtype in _NUTS_STATS.items()}

    def hook(kernel: _RecordingNUTS, params: dict, stage: str, i: int) -> None:
        if stage.startswith("Sample"):
            for name, value in kernel.transition.items():
                stats[name][i] = value
        bar.update(1)

    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={LATENT_VAR: init},  # (1, z_dim): the site's shape for one point
        num_chains=1,
        hook_fn=hook,
        disable_progbar=True,
    )
    with warnings.catch_warnings():
        # Pyro compiles the potential with torch.jit.trace, which torch deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        mcmc.run(x)
    draws = mcmc.get_samples()[LATENT_VAR][:, 0]  # (S, z_dim)
    return draws, stats


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
    with frozen(vae), forked_rng(x.device, seed=seed):
        z, lw = collect_weighted(vae, x, num_proposals)  # (K, B, z_dim), (K, B)
        marginal = LogMarginal.from_log_weights(lw)
        smoothed, pareto_k = _psis(lw.T.double().cpu().numpy())  # (B, K), (B,)
        weights = torch.from_numpy(np.exp(smoothed)).to(lw.device)  # (B, K), each row sums to 1
        picks = torch.multinomial(weights, num_chains * num_samples, replacement=True)  # (B, C*S)
        chosen = z.gather(0, picks.T.unsqueeze(-1).expand(-1, -1, vae.z_dim))  # (C*S, B, z_dim)
        chosen = chosen.reshape(num_chains, num_samples, *chosen.shape[1:])  # (C, S, B, z_dim)
        lp = sum(model_densities(vae, chosen, x))  # (C, S, B): log p(x, z)
    ess = 1.0 / (weights.double() ** 2).sum(-1).cpu().numpy()  # (B,)
    _warn_if_unreliable(index, ess, pareto_k, num_proposals)
    sample_stats = _dataset(
        {
            "lp": ((*SAMPLE_DIMS, POINT_DIM), lp),
            "ess": ((POINT_DIM,), ess),
            "pareto_k": ((POINT_DIM,), pareto_k),
            "log_marginal": ((POINT_DIM,), marginal.estimate),
        },
        _coords(index, vae),
    )
    attrs = _attrs("sampling-importance-resampling, guide as proposal", num_proposals=num_proposals)
    return _build(vae, x, chosen, index, seed=seed, sample_stats=sample_stats, attrs=attrs)


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
        f"row {row} (Pareto k {k:.2f}, ESS {e:.1f})" for row, k, e in zip(index[bad], pareto_k[bad], ess[bad])
    )
    warnings.warn(
        f"importance resampling from the guide is unreliable for {details} of {num_proposals} proposals: "
        f"a Pareto k above {k_max:.2f} or an ESS below {_MIN_IMPORTANCE_ESS:.0f} means the guide misses part "
        "of the posterior; use exact_posterior (NUTS; `mcmc` in pyro-vae inspect) for these points",
        ImportanceSamplingWarning,
        stacklevel=4,  # the caller of importance_posterior (through torch.no_grad's wrapper)
    )


