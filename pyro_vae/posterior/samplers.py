"""ArviZ views of a VAE's posteriors: the amortized guide beside the exact posterior.

For each input x the guide is a distribution q(z|x) (for the classic diagonal guide,
Normal(mu(x), sigma(x))). This module draws from it (:func:`guide_posterior`), from
the exact posterior p(z|x) of the trained model with Pyro's NUTS
(:func:`exact_posterior`), or by importance resampling with the guide as proposal
(:func:`importance_posterior`), and returns each as ArviZ data in ArviZ's schema, so
that ArviZ's summaries, diagnostics, plots and ``to_netcdf`` work on it as on the
output of any probabilistic programming language:

========================  ===============================================================
group                     variables (dims)
========================  ===============================================================
``posterior``             ``z`` (chain, draw, point, latent)
``posterior_predictive``  ``x`` (chain, draw, point, feature): one draw of p(x|z) per
                          posterior draw of z
``log_likelihood``        ``x`` (chain, draw, point): log p(x|z) of each observed point
                          at each posterior draw
``prior``                 ``z`` (chain, draw, point, latent): draws of p(z), one per
                          point of the plate
``prior_predictive``      ``x`` (chain, draw, point, feature): p(x|z) at the prior draws
``observed_data``         ``x`` (point, feature): the inputs, as the model sees them
``constant_data``         ``mu``, ``sigma`` (point, latent): ``vae.encode(x)``, the guide's
                          exact parameters (for richer guide families: the location and
                          per-dimension scale of their Gaussian part)
``sample_stats``          NUTS: ``diverging``, ``energy``, ``lp``, ``step_size``,
                          ``tree_depth``, ``n_steps``, ``acceptance_rate`` (chain, draw,
                          point); importance resampling: ``lp`` (chain, draw, point) and
                          the importance weights' ``ess``, ``pareto_k`` and
                          ``log_marginal`` (point). The guide's draws are independent
                          and have none.
========================  ===============================================================

The ``point`` coordinate holds each input's row index in its data set, so
``data.posterior.z.sel(point=9)`` is the posterior of row 9 and ``data.sel(point=9)``
is all of row 9's data; ``latent`` and ``feature`` count from 0. Each point has its own
chains (its posterior is independent of the others'), so the diagnostics that pool
chain and draw (energy plots, divergences in a pair plot) are read per point, on
``data.sel(point=9)``. The attributes follow ArviZ's (``sample_dims``,
``inference_library``, ``creation_library``, ...).

The groups are built once, as an :class:`xarray.DataTree`, by :func:`to_arviz`, which
returns the type the installed ArviZ works on: the tree itself for ArviZ >= 1
(``arviz_base``; Python >= 3.12), an ``az.InferenceData`` for ArviZ 0.x (Python 3.11
and older). Neither line of ArviZ converts Pyro SVI results (``from_pyro`` takes MCMC
objects only in 0.x and is absent in 1.x); this module fills that gap for amortized
guides.

:func:`compare_posteriors` puts the guide's and a reference's summaries side by side,
:func:`gaussian_kl` measures the distance between them, and the ``plot_*`` functions
draw the figures of ``pyro-vae inspect``. This is the only module that imports ArviZ.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Iterator, Sequence, Union

import matplotlib as mpl
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from pyro.infer import MCMC, NUTS  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

with warnings.catch_warnings():
    # ArviZ 0.x announces its 1.x refactor with a FutureWarning on import; the note is
    # for ArviZ's users, not ours, and would otherwise print on every CLI call.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

from ..errors import ConfigError, DataError  # noqa: E402
from ..runs.figures import save_png, subplots  # noqa: E402
from ..inference.bounds import collect_weighted, model_densities  # noqa: E402
from ..inference.gaps import LogMarginal, frozen  # noqa: E402
from ..model.vae import LATENT_SITE, OBS_SITE, VAE, local_params  # noqa: E402

__all__ = [
    "POINT_DIM",
    "LATENT_DIM",
    "FEATURE_DIM",
    "SAMPLE_DIMS",
    "LATENT_VAR",
    "OBSERVED_VAR",
    "ArvizData",
    "ImportanceSamplingWarning",
    "to_arviz",
    "write_netcdf",
    "guide_posterior",
    "exact_posterior",
    "importance_posterior",
    "compare_posteriors",
    "gaussian_kl",
    "plot_marginals",
    "plot_forest",
    "plot_latent_ellipses",
]

#: Dimension of the data points (its coordinate: each point's row index).
POINT_DIM = "point"
#: Dimension of the latent vector z.
LATENT_DIM = "latent"
#: Dimension of the observed features of x.
FEATURE_DIM = "feature"
#: The dimensions that index draws, as ArviZ's ``sample_dims`` attribute names them.
SAMPLE_DIMS = ("chain", "draw")
#: Name of the latent variable in ``posterior`` and ``prior`` (the model's sample site).
LATENT_VAR = LATENT_SITE
#: Name of the observed variable in ``observed_data``, the predictive groups and
#: ``log_likelihood`` (the model's observed site).
OBSERVED_VAR = OBS_SITE

#: Whether the installed ArviZ works on ``xarray.DataTree`` natively (ArviZ >= 1).
_DATATREE_NATIVE = int(az.__version__.split(".")[0]) >= 1

#: What the functions here return: ``xarray.DataTree`` on ArviZ >= 1, else ``InferenceData``.
ArvizData = Union[xr.DataTree, "az.InferenceData"]

#: Importance weights with fewer effective draws than this make the resampled draws a
#: re-weighting of a handful of proposals.
_MIN_IMPORTANCE_ESS = 100.0


class ImportanceSamplingWarning(UserWarning):
    """Importance resampling's weights say its draws do not represent p(z|x)."""


# --------------------------------------------------------------------------- schema
def to_arviz(groups: dict[str, xr.Dataset], attrs: dict[str, Any] | None = None) -> ArvizData:
    """Build the DataTree of ``groups`` and return it as the installed ArviZ expects.

    Args:
        groups: ``{group name: Dataset}``, e.g. ``{"posterior": ..., "sample_stats": ...}``.
        attrs: Attributes of the root (and of every group, as ArviZ writes them).

    Returns:
        The ``xarray.DataTree`` itself on ArviZ >= 1, an ``az.InferenceData`` on 0.x.

    Example:
        >>> ds = xr.Dataset({"z": (("chain", "draw"), np.zeros((2, 5)))})
        >>> list(to_arviz({"posterior": ds}).posterior.data_vars)
        ['z']
    """
    attrs = dict(attrs or {})
    tree = xr.DataTree.from_dict({name: ds.assign_attrs({**attrs, **ds.attrs}) for name, ds in groups.items()})
    tree.attrs = attrs
    return tree if _DATATREE_NATIVE else az.InferenceData.from_datatree(tree)


def write_netcdf(data: ArvizData, path: str | os.PathLike) -> None:
    """Write ArviZ data to a compressed netCDF file, which ``az.from_netcdf`` opens on either line.

    ArviZ 0.x's ``InferenceData.to_netcdf`` compresses every variable by default;
    ``xarray.DataTree.to_netcdf`` (ArviZ 1.x) does not, so the same zlib encoding is
    asked for here. The predictive draws of a binary likelihood shrink about 15-fold.

    Args:
        data: Output of :func:`guide_posterior`, :func:`exact_posterior`, ...
        path: The file to write (replaced if it exists).
    """
    if not _DATATREE_NATIVE:
        data.to_netcdf(str(path))
        return
    encoding = {
        node.path: {name: {"zlib": True, "complevel": 4} for name in node.data_vars}
        for node in data.subtree
        if node.data_vars
    }
    data.to_netcdf(str(path), encoding=encoding)


def _attrs(inference: str, **extra: Any) -> dict[str, Any]:
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arviz_version": az.__version__,
        "sample_dims": list(SAMPLE_DIMS),
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "pyro_vae",
        "creation_library_version": metadata.version("pyro_vae"),
        "inference": inference,
        **extra,
    }


def _index(index: Sequence[int] | np.ndarray | torch.Tensor | None, num_points: int) -> np.ndarray:
    if index is None:
        return np.arange(num_points)
    index = np.asarray(index)
    if index.shape != (num_points,):
        raise ConfigError(f"index must have one entry per row of x ({num_points}), got shape {index.shape}")
    if len(np.unique(index)) != num_points:
        raise ConfigError(f"index must not repeat a row, got {index.tolist()}; pass each row once")
    return index


def _coords(index: np.ndarray, vae: VAE) -> dict[str, np.ndarray]:
    return {POINT_DIM: index, LATENT_DIM: np.arange(vae.z_dim), FEATURE_DIM: np.arange(vae.x_dim)}


def _dataset(variables: dict[str, tuple[tuple[str, ...], Any]], coords: dict[str, np.ndarray]) -> xr.Dataset:
    """A Dataset of ``{name: (dims, tensor or array)}``, each dim with its coordinate.

    ``coords`` gives ``point``, ``latent`` and ``feature``; ``chain`` and ``draw``
    count from 0.
    """
    arrays = {
        name: (dims, values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values))
        for name, (dims, values) in variables.items()
    }
    sizes = {dim: n for dims, values in arrays.values() for dim, n in zip(dims, values.shape)}
    return xr.Dataset(
        arrays, coords={dim: np.arange(n) if dim in SAMPLE_DIMS else coords[dim] for dim, n in sizes.items()}
    )


def _stream_seed(seed: int, stream: int) -> int:
    # A stream of its own for each use of one seed (draws, predictive draws, ...).
    return (seed * 1_000_003 + stream * 15_485_863) % (2**63 - 1)


def _point_seed(seed: int, row: int, chain: int) -> int:
    # Each (row, chain) gets its own stream, so a point's draws do not depend on which
    # other points are inspected with it.
    return (seed * 1_000_003 + int(row) * 7_919 + chain * 104_729) % (2**63 - 1)


@torch.no_grad()
def _build(
    vae: VAE,
    x: torch.Tensor,
    z: torch.Tensor,
    index: np.ndarray,
    *,
    seed: int,
    sample_stats: xr.Dataset | None,
    attrs: dict[str, Any],
) -> ArvizData:
    """The one path from posterior draws of z to ArviZ data: every group of the schema.

    Args:
        vae: The model.
        x: The inputs ``(B, x_dim)``.
        z: Posterior draws ``(C, S, B, z_dim)``.
        index: The ``point`` coordinate ``(B,)``.
        seed: Seed of the predictive and prior draws (the caller's stream is left alone).
        sample_stats: The sampler's statistics, or None.
        attrs: The data's attributes (:func:`_attrs`).
    """
    coords = _coords(index, vae)
    draws = (*SAMPLE_DIMS, POINT_DIM)
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen(vae), torch.random.fork_rng(devices=devices):
        torch.manual_seed(_stream_seed(seed, 1))
        x_post = vae.decode(z).sample()  # (C, S, B, x_dim)
        log_lik = model_densities(vae, z, x).log_likelihood  # (C, S, B), from the model's trace
        z_prior = vae.prior().sample(z.shape[:-1])  # (C, S, B, z_dim)
        x_prior = vae.decode(z_prior).sample()  # (C, S, B, x_dim)
        loc, scale = vae.encode(x)  # (B, z_dim) each
    groups = {
        "posterior": _dataset({LATENT_VAR: ((*draws, LATENT_DIM), z)}, coords),
        "posterior_predictive": _dataset({OBSERVED_VAR: ((*draws, FEATURE_DIM), x_post)}, coords),
        "log_likelihood": _dataset({OBSERVED_VAR: (draws, log_lik)}, coords),
        "prior": _dataset({LATENT_VAR: ((*draws, LATENT_DIM), z_prior)}, coords),
        "prior_predictive": _dataset({OBSERVED_VAR: ((*draws, FEATURE_DIM), x_prior)}, coords),
        "observed_data": _dataset({OBSERVED_VAR: ((POINT_DIM, FEATURE_DIM), x)}, coords),
        "constant_data": _dataset(
            {"mu": ((POINT_DIM, LATENT_DIM), loc), "sigma": ((POINT_DIM, LATENT_DIM), scale)}, coords
        ),
    }
    if sample_stats is not None:
        groups["sample_stats"] = sample_stats
    return to_arviz(groups, attrs)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")


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
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
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
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0 < target_accept_prob < 1:
        raise ConfigError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
    index = _index(index, x.shape[0])
    num_points = x.shape[0]
    with torch.no_grad():
        loc, scale = vae.encode(x)  # (B, z_dim) each
    shape = (num_chains, num_samples, num_points)
    z = torch.empty(*shape, vae.z_dim, dtype=loc.dtype, device=x.device)  # (C, S, B, z_dim)
    stats = {name: np.zeros(shape, dtype=dtype) for name, dtype in _NUTS_STATS.items()}
    total = num_points * num_chains * (warmup_steps + num_samples)
    bar = tqdm(total=total, disable=not progress, desc="NUTS", unit="step", dynamic_ncols=True, mininterval=0.5)
    devices = [x.device] if x.device.type == "cuda" else []
    start = time.perf_counter()
    try:
        # Parameters stay in the module while NUTS traces the model: nothing enters
        # Pyro's global param store, whichever mode the caller runs Pyro in.
        with frozen(vae), _one_thread(), local_params():
            for b in range(num_points):
                row = int(index[b])
                for c in range(num_chains):
                    bar.set_postfix(point=f"{b + 1}/{num_points} (row {row})", chain=f"{c + 1}/{num_chains}")
                    with torch.random.fork_rng(devices=devices):
                        torch.manual_seed(_point_seed(seed, row, c))
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
        raise ConfigError(f"num_proposals must be >= 2, got {num_proposals}")
    index = _index(index, x.shape[0])
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen(vae), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
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
        "of the posterior; use exact_posterior (NUTS; pyro-vae inspect --mcmc) for these points",
        ImportanceSamplingWarning,
        stacklevel=4,  # the caller of importance_posterior (through torch.no_grad's wrapper)
    )


# -------------------------------------------------------------------------- comparison
def _points_of(data: ArvizData) -> np.ndarray:
    return np.asarray(data.posterior[POINT_DIM].values)


def _check_same_points(guide: ArvizData, reference: ArvizData) -> None:
    a, b = _points_of(guide), _points_of(reference)
    if a.shape != b.shape or not (a == b).all():
        raise DataError(
            f"the two posteriors cover different points ({a.tolist()} vs {b.tolist()}); "
            "draw both for the same rows of x with the same index"
        )


def compare_posteriors(
    guide: ArvizData, reference: ArvizData, *, names: tuple[str, str] = ("guide", "nuts")
) -> pd.DataFrame:
    """Posterior mean and sd per point and latent dimension, guide and reference side by side.

    Means and sds come from ``az.summary``. For a reference drawn by a Markov chain
    (NUTS) its Monte Carlo error of the mean, bulk ESS and R-hat come along, so a
    difference of means can be read against the reference's own uncertainty. For
    importance resampling (:func:`importance_posterior`) ArviZ's ESS and R-hat of the
    resampled draws would mislead (the draws repeat, and chains split from one
    resample always agree), so the weights' own figures come instead: their effective
    sample size, their Pareto k, and the error of the mean they imply,
    ``sd * sqrt(1/ess + 1/N)`` for N resampled draws.

    Args:
        guide: Output of :func:`guide_posterior`.
        reference: Output of :func:`exact_posterior` or :func:`importance_posterior`
            for the same points.
        names: Column prefixes of the two.

    Returns:
        A DataFrame with one row per ``z[point, latent]`` (ArviZ's labels) and columns
        ``{g}_mean, {g}_sd, {r}_mean, {r}_sd, {r}_mcse_mean`` then ``{r}_ess_bulk,
        {r}_r_hat`` (Markov chains) or ``{r}_ess, {r}_pareto_k`` (importance
        resampling; the point's figures on each of its rows).

    Raises:
        DataError: The two cover different points.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> q = guide_posterior(vae, torch.ones(1, 6), 100)
        >>> list(compare_posteriors(q, q, names=("a", "b")).columns[:3])
        ['a_mean', 'a_sd', 'b_mean']
    """
    _check_same_points(guide, reference)
    g_name, r_name = names
    g, r = _summary(guide), _summary(reference)
    columns = {f"{g_name}_mean": g["mean"], f"{g_name}_sd": g["sd"]}
    columns.update({f"{r_name}_mean": r["mean"], f"{r_name}_sd": r["sd"]})
    stats = _sample_stats(reference)
    if stats is None or "pareto_k" not in stats:
        columns.update({f"{r_name}_{c}": r[c] for c in ("mcse_mean", "ess_bulk", "r_hat")})
    else:
        z_dim = reference.posterior.sizes[LATENT_DIM]
        ess = np.repeat(stats["ess"].values, z_dim)  # (B * z_dim,), rows point-major as ArviZ's labels
        draws = reference.posterior.sizes["chain"] * reference.posterior.sizes["draw"]
        columns[f"{r_name}_mcse_mean"] = r["sd"] * np.sqrt(1 / ess + 1 / draws)
        columns[f"{r_name}_ess"] = pd.Series(ess, index=r.index)
        columns[f"{r_name}_pareto_k"] = pd.Series(np.repeat(stats["pareto_k"].values, z_dim), index=r.index)
    return pd.DataFrame(columns)


def _summary(data: ArvizData) -> pd.DataFrame:
    """``az.summary`` of z in raw numbers (both ArviZ lines round for display by default)."""
    table = az.summary(data, var_names=[LATENT_VAR], round_to="none")
    return table.astype({c: float for c in ("mean", "sd", "mcse_mean", "ess_bulk", "r_hat")})


def _sample_stats(data: ArvizData) -> xr.Dataset | None:
    """The ``sample_stats`` group as a Dataset, or None (the guide's draws have none)."""
    if "sample_stats" not in data:
        return None
    stats = data["sample_stats"]
    return stats.to_dataset() if isinstance(stats, xr.DataTree) else stats


def _moments(data: ArvizData) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(B, D)`` and covariance ``(B, D, D)`` of the draws of z, chains pooled."""
    draws = _draws(data)  # (B, N, D)
    if draws.shape[1] <= draws.shape[2]:
        raise DataError(
            f"{draws.shape[1]} draws per point cannot give the covariance of {draws.shape[2]} latent "
            f"dimensions; draw more than {draws.shape[2]}"
        )
    centred = draws - draws.mean(1, keepdims=True)  # (B, N, D)
    return draws.mean(1), np.einsum("bni,bnj->bij", centred, centred) / (draws.shape[1] - 1)


def gaussian_kl(guide: ArvizData, reference: ArvizData) -> xr.DataArray:
    """``KL(N(m_q, S_q) || N(m_p, S_p))`` per point, from the first two moments of each set of draws.

    Both posteriors are replaced by the Gaussians with their draws' mean and
    covariance (all chains pooled), which works for any guide family and any
    reference. For a Gaussian guide and a near-Gaussian posterior this is close to
    ``KL(q(z|x) || p(z|x))``; it ignores any non-Gaussian shape (skew, several
    modes), which the inference gap of :func:`pyro_vae.inference.gaps.inference_gaps`, exactly
    ``KL(q || p(z|x))`` in expectation, includes.

    Args:
        guide: Output of :func:`guide_posterior`.
        reference: Output of :func:`exact_posterior` or :func:`importance_posterior`.

    Returns:
        A DataArray of KL values in nats, dim ``point``.

    Raises:
        DataError: The two cover different points, or a posterior has no more draws
            than latent dimensions.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> q = guide_posterior(vae, torch.ones(1, 6), 100)
        >>> round(float(gaussian_kl(q, q)[0]), 6)  # the same draws: zero
        0.0
    """
    _check_same_points(guide, reference)
    m_q, s_q = _moments(guide)
    m_p, s_p = _moments(reference)
    chol_q, chol_p = np.linalg.cholesky(s_q), np.linalg.cholesky(s_p)  # (B, D, D) each
    a = np.linalg.solve(chol_p, chol_q)  # L_p^-1 L_q: tr(S_p^-1 S_q) = |a|^2, (B, D, D)
    b = np.linalg.solve(chol_p, (m_p - m_q)[..., None])[..., 0]  # L_p^-1 (m_p - m_q), (B, D)

    def log_det(chol: np.ndarray) -> np.ndarray:
        return 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)  # (B,)

    kl = 0.5 * ((a**2).sum((1, 2)) + (b**2).sum(-1) - m_q.shape[-1] + log_det(chol_p) - log_det(chol_q))  # (B,)
    return xr.DataArray(np.maximum(kl, 0.0), dims=(POINT_DIM,), coords={POINT_DIM: _points_of(guide)}, name="kl")


# ----------------------------------------------------------------------------- figures
def _aligned_draws(data: Sequence[ArvizData]) -> tuple[list[np.ndarray], np.ndarray]:
    """The draws of each posterior, ``(point, chain * draw, latent)``, and their shared points.

    Raises:
        DataError: The posteriors cover different points.
    """
    for other in data[1:]:
        _check_same_points(data[0], other)
    return [_draws(d) for d in data], _points_of(data[0])


def _draws(data: ArvizData) -> np.ndarray:
    """The draws of z as ``(point, chain * draw, latent)``."""
    z = data.posterior[LATENT_VAR].transpose(POINT_DIM, "chain", "draw", LATENT_DIM).values
    return np.asarray(z, dtype=np.float64).reshape(z.shape[0], -1, z.shape[-1])


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
            edges = np.linspace(*np.quantile(pooled, [0.001, 0.999]), 41)
            for d, name, color in zip(draws, names, _colors(len(draws))):
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
    for d, name, color, offset in zip(draws, names, _colors(len(draws)), offsets):
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


def plot_latent_ellipses(guide: ArvizData, reference: ArvizData, path: str | os.PathLike, *, name: str = "NUTS") -> None:
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
    for ax in axes.ravel()[len(points):]:
        ax.set_visible(False)
    for ax, point in zip(axes.ravel(), points):
        draws = reference.posterior[LATENT_VAR].sel({POINT_DIM: point}).values.reshape(-1, 2)  # (N, 2)
        mu = guide.constant_data["mu"].sel({POINT_DIM: point}).values  # (2,)
        sigma = guide.constant_data["sigma"].sel({POINT_DIM: point}).values  # (2,)
        ax.scatter(draws[:, 0], draws[:, 1], s=3, alpha=0.25, color="tab:blue", label=f"{name} draws")
        for k, style in ((1, "-"), (2, "--")):
            ax.add_patch(
                Ellipse(mu, 2 * k * sigma[0], 2 * k * sigma[1], fill=False, color="tab:red", ls=style, lw=1.2,
                        label=f"guide {k} sigma")
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
