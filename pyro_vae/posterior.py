"""ArviZ views of a VAE's posteriors: the amortized guide beside the exact posterior.

For each input x the guide is a distribution q(z|x) (for the classic diagonal guide,
Normal(mu(x), sigma(x))). This module draws from it (:func:`guide_posterior`), from
the exact posterior p(z|x) of the trained model with Pyro's NUTS
(:func:`exact_posterior`), or by importance resampling with the guide as proposal
(:func:`importance_posterior`), and returns each as ArviZ data in one schema, so that
``az.summary``, ``az.plot_*`` and ``to_netcdf`` work on it as on the output of any
probabilistic programming language:

==================  =====================================================================
group               variables (dims)
==================  =====================================================================
``posterior``       ``z`` (chain, draw, point, latent)
``sample_stats``    NUTS: ``diverging``, ``step_size``, ``n_steps``, ``lp`` (chain, draw,
                    point); importance resampling: ``lp`` and, per point, ``ess`` and
                    ``log_marginal`` (point)
``constant_data``   ``mu``, ``sigma`` (point, latent): ``vae.encode(x)``, the guide's
                    exact parameters (for richer guide families: the location and
                    per-dimension scale of their Gaussian part)
``observed_data``   ``x`` (point, feature): the inputs, as the model sees them
==================  =====================================================================

The ``point`` coordinate holds each input's row index in its data set, so
``data.posterior.z.sel(point=9)`` is the posterior of row 9; ``latent`` and ``feature``
count from 0. The data is built once as an :class:`xarray.DataTree` and returned in the
type the installed ArviZ works on: the tree itself for ArviZ >= 1 (``arviz_base``), an
``az.InferenceData`` for ArviZ 0.x (Python 3.11 and older), converted with
``az.InferenceData.from_datatree``. Neither line of ArviZ converts Pyro SVI results
(``from_pyro`` takes MCMC objects only in 0.x and is absent in 1.x); this module fills
that gap for amortized guides.

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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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

from .errors import ConfigError, DataError  # noqa: E402
from .figures import save_png  # noqa: E402
from .gaps import LogMarginal, frozen, log_joint  # noqa: E402
from .vae import LATENT_SITE, VAE  # noqa: E402

__all__ = [
    "POINT_DIM",
    "LATENT_DIM",
    "FEATURE_DIM",
    "LATENT_VAR",
    "ArvizData",
    "to_arviz",
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
#: Name of the latent variable in the ``posterior`` group (the model's sample site).
LATENT_VAR = LATENT_SITE

#: Whether the installed ArviZ works on ``xarray.DataTree`` natively (ArviZ >= 1).
_DATATREE_NATIVE = int(az.__version__.split(".")[0]) >= 1

#: What the functions here return: ``xarray.DataTree`` on ArviZ >= 1, else ``InferenceData``.
ArvizData = Union[xr.DataTree, "az.InferenceData"]


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


def _attrs(inference: str, **extra: Any) -> dict[str, Any]:
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arviz_version": az.__version__,
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


def _draw_coords(num_chains: int, num_samples: int) -> dict[str, np.ndarray]:
    return {"chain": np.arange(num_chains), "draw": np.arange(num_samples)}


def _posterior_group(z: torch.Tensor, coords: dict[str, np.ndarray]) -> xr.Dataset:
    chains, draws = z.shape[:2]
    return xr.Dataset(
        {LATENT_VAR: (("chain", "draw", POINT_DIM, LATENT_DIM), z.detach().cpu().numpy())},
        coords={**_draw_coords(chains, draws), POINT_DIM: coords[POINT_DIM], LATENT_DIM: coords[LATENT_DIM]},
    )


@torch.no_grad()
def _data_groups(vae: VAE, x: torch.Tensor, coords: dict[str, np.ndarray]) -> dict[str, xr.Dataset]:
    loc, scale = vae.encode(x)  # (B, z_dim) each
    point_latent = (POINT_DIM, LATENT_DIM)
    constant = xr.Dataset(
        {"mu": (point_latent, loc.cpu().numpy()), "sigma": (point_latent, scale.cpu().numpy())},
        coords={POINT_DIM: coords[POINT_DIM], LATENT_DIM: coords[LATENT_DIM]},
    )
    observed = xr.Dataset(
        {"x": ((POINT_DIM, FEATURE_DIM), x.detach().cpu().numpy())},
        coords={POINT_DIM: coords[POINT_DIM], FEATURE_DIM: coords[FEATURE_DIM]},
    )
    return {"constant_data": constant, "observed_data": observed}


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")


def _point_seed(seed: int, row: int, chain: int) -> int:
    # Each (row, chain) gets its own stream, so a point's draws do not depend on which
    # other points are inspected with it.
    return (seed * 1_000_003 + int(row) * 7_919 + chain * 104_729) % (2**63 - 1)


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
        ArviZ data with ``posterior`` (``z``: chain, draw, point, latent),
        ``constant_data`` (``mu``, ``sigma``: point, latent) and ``observed_data``
        (``x``: point, feature).

    Raises:
        DataError: ``x`` does not fit the model.
        ConfigError: A count is below 1, or ``index`` is malformed.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = guide_posterior(vae, torch.ones(3, 6), 50, index=[0, 5, 9])
        >>> dict(data.posterior.z.sizes)
        {'chain': 4, 'draw': 50, 'point': 3, 'latent': 2}
    """
    vae.check_x(x)
    _check_counts(num_samples=num_samples, num_chains=num_chains)
    coords = _coords(_index(index, x.shape[0]), vae)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        z = vae.posterior(x).sample((num_chains * num_samples,))  # (C*S, B, z_dim)
    z = z.reshape(num_chains, num_samples, *z.shape[1:])  # (C, S, B, z_dim)
    groups = {"posterior": _posterior_group(z, coords), **_data_groups(vae, x, coords)}
    return to_arviz(groups, _attrs("amortized guide q(z|x) = Normal(mu(x), sigma(x))"))


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
        ArviZ data with the groups of :func:`guide_posterior` plus ``sample_stats``:
        ``diverging`` (bool), ``step_size``, ``n_steps`` (leapfrog steps, i.e. model
        gradient evaluations) and ``lp`` (log p(z, x) of the draw), each with dims
        (chain, draw, point). The attributes ``sampling_time`` and
        ``sampling_time_per_point`` give the wall time in seconds.

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count is below 1, or ``index`` is malformed.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = exact_posterior(vae, torch.ones(1, 6), 20, num_chains=2)
        >>> dict(data.sample_stats.diverging.sizes)
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
    coords = _coords(_index(index, x.shape[0]), vae)
    num_points = x.shape[0]
    with torch.no_grad():
        loc, scale = vae.encode(x)  # (B, z_dim) each
    shape = (num_chains, num_samples, num_points)
    z = torch.empty(*shape, vae.z_dim, dtype=loc.dtype, device=x.device)  # (C, S, B, z_dim)
    stats = {
        "diverging": np.zeros(shape, dtype=bool),
        "step_size": np.zeros(shape),
        "n_steps": np.zeros(shape, dtype=np.int64),
    }
    total = num_points * num_chains * (warmup_steps + num_samples)
    bar = tqdm(total=total, disable=not progress, desc="NUTS", unit="step", dynamic_ncols=True, mininterval=0.5)
    devices = [x.device] if x.device.type == "cuda" else []
    start = time.perf_counter()
    try:
        with frozen(vae), _one_thread():
            for b in range(num_points):
                row = int(coords[POINT_DIM][b])
                for c in range(num_chains):
                    bar.set_postfix(point=f"{b + 1}/{num_points} (row {row})", chain=f"{c + 1}/{num_chains}")
                    with torch.random.fork_rng(devices=devices):
                        torch.manual_seed(_point_seed(seed, row, c))
                        init = loc[b : b + 1] + init_spread * scale[b : b + 1] * torch.randn_like(loc[b : b + 1])
                        kernel = _CountingNUTS(
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
        lp = log_joint(vae, z, x).cpu().numpy()  # (C, S, B)
    dims = ("chain", "draw", POINT_DIM)
    sample_stats = xr.Dataset(
        {**{name: (dims, values) for name, values in stats.items()}, "lp": (dims, lp)},
        coords={**_draw_coords(num_chains, num_samples), POINT_DIM: coords[POINT_DIM]},
    )
    groups = {"posterior": _posterior_group(z, coords), "sample_stats": sample_stats, **_data_groups(vae, x, coords)}
    attrs = _attrs(
        "NUTS on the model conditioned on x, weights fixed",
        sampling_time=seconds,
        sampling_time_per_point=seconds / num_points,
        tuning_steps=warmup_steps,
    )
    return to_arviz(groups, attrs)


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


class _CountingNUTS(NUTS):
    """Pyro's NUTS, counting evaluations of the potential energy.

    Every leapfrog step evaluates the potential and its gradient once, so the count
    between two draws is that draw's number of steps (ArviZ's ``n_steps``), which
    Pyro's MCMC does not report. The kernel sets ``potential_fn`` in its set-up
    (compiled or not); the property wraps whatever it sets.
    """

    evaluations = 0

    @property
    def potential_fn(self) -> Any:
        return self._counted_potential_fn

    @potential_fn.setter
    def potential_fn(self, fn: Any) -> None:
        if fn is None:
            self._counted_potential_fn = None
            return

        def counted(params: dict[str, torch.Tensor]) -> torch.Tensor:
            self.evaluations += 1
            return fn(params)

        self._counted_potential_fn = counted


def _nuts_chain(
    kernel: _CountingNUTS,
    x: torch.Tensor,
    init: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    bar: tqdm,
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """One NUTS chain for one data point: draws ``(S, z_dim)`` and per-draw statistics."""
    step_size = np.zeros(num_samples)
    n_steps = np.zeros(num_samples, dtype=np.int64)
    last = [0]

    def hook(kernel: _CountingNUTS, params: dict, stage: str, i: int) -> None:
        if stage.startswith("Sample"):
            step_size[i] = kernel.step_size
            n_steps[i] = kernel.evaluations - last[0]
        last[0] = kernel.evaluations
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
    diverging = np.zeros(num_samples, dtype=bool)
    diverging[mcmc.diagnostics()["divergences"]["chain 0"]] = True
    return draws, {"diverging": diverging, "step_size": step_size, "n_steps": n_steps}


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
    ``p(x, z) / q(z|x)`` and ``num_chains * num_samples`` of them are resampled with
    replacement. Much cheaper than NUTS, and exact as ``num_proposals`` grows, but
    only as good as the guide's coverage: the Kish effective sample size ``ess`` in
    ``sample_stats`` says how many independent posterior draws the weighted proposals
    are worth (a few dozen or fewer: trust NUTS instead). The resampled draws repeat,
    so ArviZ's ESS of them overstates their information; ``ess`` is the honest figure.

    Args:
        vae: The trained model.
        x: Data of shape ``(B, x_dim)``, as the model sees it.
        num_samples: Resampled draws per chain.
        num_chains: Chains (a split of the resampled draws).
        num_proposals: Draws from the guide per point.
        index: Row index of each input (the ``point`` coordinate); default ``0..B-1``.
        seed: Seed of the draws (the caller's random stream is left untouched).

    Returns:
        ArviZ data with the groups of :func:`guide_posterior` plus ``sample_stats``:
        ``lp`` (chain, draw, point), and ``ess`` and ``log_marginal`` (the
        importance-sampled log p(x)) per point.

    Raises:
        DataError: ``x`` does not fit the model or is outside the likelihood's support.
        ConfigError: A count is below 1 (or ``num_proposals`` below 2).

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> data = importance_posterior(vae, torch.ones(2, 6), 25, num_proposals=500)
        >>> dict(data.sample_stats.ess.sizes)
        {'point': 2}
    """
    vae.check_x(x)
    vae.likelihood.check_support(x)
    _check_counts(num_samples=num_samples, num_chains=num_chains)
    if num_proposals < 2:
        raise ConfigError(f"num_proposals must be >= 2, got {num_proposals}")
    coords = _coords(_index(index, x.shape[0]), vae)
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen(vae), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        q = vae.posterior(x)
        z = q.sample((num_proposals,))  # (K, B, z_dim)
        lw = log_joint(vae, z, x) - q.log_prob(z)  # (K, B)
        marginal = LogMarginal.from_log_weights(lw)
        picks = torch.multinomial(torch.softmax(lw.T, -1), num_chains * num_samples, replacement=True)  # (B, C*S)
        chosen = z.gather(0, picks.T.unsqueeze(-1).expand(-1, -1, vae.z_dim))  # (C*S, B, z_dim)
        chosen = chosen.reshape(num_chains, num_samples, *chosen.shape[1:])  # (C, S, B, z_dim)
        lp = log_joint(vae, chosen, x).cpu().numpy()  # (C, S, B)
    dims = ("chain", "draw", POINT_DIM)
    sample_stats = xr.Dataset(
        {
            "lp": (dims, lp),
            "ess": ((POINT_DIM,), marginal.ess.cpu().numpy()),
            "log_marginal": ((POINT_DIM,), marginal.estimate.cpu().numpy()),
        },
        coords={**_draw_coords(num_chains, num_samples), POINT_DIM: coords[POINT_DIM]},
    )
    groups = {"posterior": _posterior_group(chosen, coords), "sample_stats": sample_stats, **_data_groups(vae, x, coords)}
    return to_arviz(groups, _attrs("sampling-importance-resampling, guide as proposal", num_proposals=num_proposals))


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

    Both columns come from ``az.summary``; for the reference, its Monte Carlo error of
    the mean, bulk ESS and R-hat come along, so a difference of means can be read
    against the reference's own uncertainty.

    Args:
        guide: Output of :func:`guide_posterior`.
        reference: Output of :func:`exact_posterior` or :func:`importance_posterior`
            for the same points.
        names: Column prefixes of the two.

    Returns:
        A DataFrame with one row per ``z[point, latent]`` (ArviZ's labels) and columns
        ``{g}_mean, {g}_sd, {r}_mean, {r}_sd, {r}_mcse_mean, {r}_ess_bulk, {r}_r_hat``.

    Raises:
        DataError: The two cover different points.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> q = guide_posterior(vae, torch.ones(1, 6), 100)
        >>> list(compare_posteriors(q, q, names=("a", "b")).columns[:3])
        ['a_mean', 'a_sd', 'b_mean']
    """
    _check_same_points(guide, reference)
    g_name, r_name = names
    g = az.summary(guide, var_names=[LATENT_VAR])
    r = az.summary(reference, var_names=[LATENT_VAR])
    columns = {f"{g_name}_mean": g["mean"], f"{g_name}_sd": g["sd"]}
    columns.update({f"{r_name}_{c}": r[c] for c in ("mean", "sd", "mcse_mean", "ess_bulk", "r_hat")})
    return pd.DataFrame(columns)


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
    modes), which the inference gap of :func:`pyro_vae.gaps.inference_gaps`, exactly
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
        >>> from pyro_vae.build import build_vae
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
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
    fig, axes = plt.subplots(
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
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.22 * len(rows) * (len(data) + 1)))
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
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False, layout="constrained")
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
