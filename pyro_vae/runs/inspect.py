"""What ``pyro-vae inspect`` does, callable from Python: the guide against a reference.

For a few inputs x, :func:`inspect_points` draws from the amortized guide q(z|x) and
from a reference for the exact posterior p(z|x), one of :data:`METHODS`: quadrature on
adaptive grids (``grid``, exact, for z_dim <= 2), Pyro's NUTS (``nuts``) or
sampling-importance-resampling from the guide (``sir``); :func:`default_method` picks
``grid`` where the latent is small enough, else ``sir``. It compares them: posterior
mean and sd per latent dimension side by side, a Gaussian KL between the two, and the
inference gaps of each point (approximation and amortization, Cremer et al. 2018).
:func:`write_inspection` saves it all: netCDF files that ``arviz.from_netcdf`` opens,
CSV tables and PNG figures. :func:`load_inputs` picks rows of a run's data the way the
model saw them in training (binarized for a Bernoulli likelihood), with what a
conditional model is conditioned on (:func:`condition_of`), :func:`load_split` a whole
split (:mod:`pyro_vae.runs.survey` goes over all of it).

A conditional model is inspected given each point's condition: q(z | x, y) against
p(z | x, y), with y the split's label; a semi-supervised model's label where the data
has one, else its classifier's guess. A model with two stochastic layers has a second
latent that NUTS and the grid do not sample; importance resampling weighs it and is
the reference for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..config import RunConfig
from ..data.rows import Rows
from ..errors import ConfigError, DataError
from ..inference.bounds import given, other_latents, take_rows
from ..inference.gaps import InferenceGaps, inference_gaps
from ..inference.quadrature import MAX_GRID_DIM, check_grid_dim, posterior_quadrature
from ..model.vae import VAE
from ..posterior.clouds import PointClouds, plot_clouds, point_clouds
from ..posterior.compare import compare_posteriors, gaussian_kl
from ..posterior.grid import grid_posterior
from ..posterior.plots import plot_forest, plot_latent_ellipses, plot_marginals
from ..posterior.samplers import exact_posterior, guide_posterior, importance_posterior
from ..posterior.schema import LATENT_DIM, ArvizData, write_netcdf
from ..seeding import forked_rng
from .outputs import check_output_dir

__all__ = [
    "METHODS",
    "Inspection",
    "INSPECT_FILES",
    "default_method",
    "resolve_method",
    "inspect_points",
    "condition_of",
    "load_inputs",
    "load_points",
    "load_split",
    "check_outputs",
    "write_inspection",
]

#: The references for p(z|x), by name: what each is, for messages and ``--help``.
METHODS = {
    "grid": "quadrature on adaptive grids: exact, for z_dim <= 2",
    "nuts": "Pyro's NUTS, blocks of points on their product space",
    "sir": "importance resampling from the guide",
}

#: Every file :func:`write_inspection` may write; ``overwrite=True`` replaces exactly these.
INSPECT_FILES = (
    "guide.nc",
    "nuts.nc",
    "sir.nc",
    "grid.nc",
    "summary.csv",
    "points.csv",
    "marginals.png",
    "forest.png",
    "latent.png",
    "clouds.png",
)


def default_method(vae: VAE, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> str:
    """``grid`` for a latent of at most 2 dimensions (exact and fast), else ``sir``.

    Given some inputs ``x`` (and their conditions ``y``), also ``sir`` where the model
    draws latents besides z for them (a second layer, unknown labels): the grid and NUTS
    integrate z alone, importance resampling weighs every site.
    """
    if vae.z_dim > MAX_GRID_DIM:
        return "sir"
    if x is not None and other_latents(vae, x[:1], **take_rows(given(y, x), slice(0, 1), len(x))):
        return "sir"
    return "grid"


def resolve_method(
    vae: VAE, method: str | None, mcmc: bool = False, x: torch.Tensor | None = None, y: torch.Tensor | None = None
) -> str:
    """The reference to use: ``method``, ``nuts`` for ``mcmc=True``, else :func:`default_method` (for ``x``, ``y``).

    Raises:
        ConfigError: ``method`` is not one of :data:`METHODS`, contradicts ``mcmc``, or
            is ``grid`` for a latent above 2 dimensions.
    """
    if method is not None and method not in METHODS:
        raise ConfigError(f"unknown `method` {method!r}; choose one of {', '.join(METHODS)}")
    if mcmc and method not in (None, "nuts"):
        raise ConfigError(f"`mcmc` asks for NUTS but `method` is {method}; pass one of them")
    method = "nuts" if mcmc else method or default_method(vae, x, y)
    if method == "grid":
        check_grid_dim(vae)
    return method


@dataclass
class Inspection:
    """The guide and a reference posterior for a few inputs, and their comparison.

    Attributes:
        guide: Draws from q(z|x) (:func:`pyro_vae.posterior.samplers.guide_posterior`).
        reference: Draws from p(z|x): the grid's, NUTS's or importance resampling's.
        reference_name: ``"grid"``, ``"nuts"`` or ``"sir"``; the prefix of its columns and
            its file name.
        table: Mean and sd per ``z[point, latent]``, guide beside reference
            (:func:`pyro_vae.posterior.compare.compare_posteriors`).
        points: One row per point: Gaussian KL, log p(x), the ELBOs, the gaps and the
            reference's diagnostics (divergences and worst R-hat for NUTS; the
            importance weights' effective sample size and Pareto k for importance
            resampling).
        gaps: The per-point gaps with their Monte Carlo errors.
        clouds: For a 2-D latent, each point's cloud of z ~ q(z|x) with mu(x) and
            sigma(x) (:func:`pyro_vae.posterior.clouds.point_clouds`); else None.
    """

    guide: ArvizData
    reference: ArvizData
    reference_name: str
    table: pd.DataFrame
    points: pd.DataFrame
    gaps: InferenceGaps
    clouds: PointClouds | None = None

    def describe_reference(self) -> str:
        """One line saying what the reference is and, for NUTS, how long it took."""
        post = self.reference.posterior
        shape = f"{post.sizes['chain']} chains x {post.sizes['draw']} draws"
        attrs = self.reference.attrs
        if "proposal_nodes" in attrs:
            error = float(self.reference.sample_stats["quadrature_error"].max())
            return (
                f"reference: quadrature on adaptive grids (largest change at the last refinement {error:.1e}); "
                f"{shape} resampled from the grid"
            )
        if "sampling_time" in attrs:
            return (
                f"reference: NUTS, {shape} after {attrs['tuning_steps']} warm-up steps per chain; "
                f"{attrs['sampling_time_per_point']:.1f} s per data point"
            )
        return f"reference: importance resampling from the guide, {shape} from {attrs['num_proposals']} proposals per point"


def inspect_points(
    vae: VAE,
    x: torch.Tensor,
    index: Sequence[int] | np.ndarray | None = None,
    *,
    method: str | None = None,
    mcmc: bool = False,
    num_samples: int = 500,
    num_chains: int = 4,
    warmup_steps: int | None = None,
    num_proposals: int = 20_000,
    gap_samples: int = 5000,
    seed: int = 0,
    progress: bool = False,
    y: torch.Tensor | None = None,
) -> Inspection:
    """Compare the amortized guide with the exact posterior for each row of ``x``.

    Args:
        vae: The trained model.
        x: Inputs of shape ``(B, x_dim)``, as the model sees them.
        index: Row index of each input in its data set; default ``0..B-1``.
        method: The reference, one of :data:`METHODS`: ``grid``
            (:func:`pyro_vae.posterior.grid.grid_posterior`: the mean, sd and KL are the
            quadrature's, exact), ``nuts``
            (:func:`pyro_vae.posterior.samplers.exact_posterior`) or ``sir``
            (:func:`pyro_vae.posterior.samplers.importance_posterior`); default
            :func:`default_method`.
        mcmc: The same as ``method="nuts"`` (kept for older callers).
        num_samples: Draws per chain, for the guide and the reference.
        num_chains: Chains, for the guide and the reference.
        warmup_steps: NUTS warm-up steps per chain; default ``num_samples``.
        num_proposals: Proposals per point for importance resampling.
        gap_samples: Draws per point for the importance-sampled log p(x) of the gaps.
        seed: Seed of every draw.
        progress: Show a progress bar while NUTS runs.
        y: For a conditional model, the condition of each row (:func:`condition_of`):
            the guide is q(z | x, y) and the reference p(z | x, y). The points table
            then has a ``y`` column (for labels).

    Returns:
        An :class:`Inspection`.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> found = inspect_points(vae, torch.ones(2, 6), [3, 7], num_samples=50, gap_samples=200)
        >>> list(found.points.index), found.reference_name
        ([3, 7], 'grid')
    """
    name = resolve_method(vae, method, mcmc, x, y)
    guide = guide_posterior(vae, x, num_samples, num_chains=num_chains, index=index, seed=seed, y=y)
    exact = None
    if name == "grid":
        exact = posterior_quadrature(vae, x, y=y)
        reference = grid_posterior(vae, x, num_samples, num_chains=num_chains, index=index, seed=seed, exact=exact, y=y)
    elif name == "nuts":
        reference = exact_posterior(
            vae,
            x,
            num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
            index=index,
            seed=seed,
            progress=progress,
            y=y,
        )
    else:
        reference = importance_posterior(
            vae, x, num_samples, num_chains=num_chains, num_proposals=num_proposals, index=index, seed=seed, y=y
        )
    table = compare_posteriors(guide, reference, names=("guide", name))
    if exact is not None:  # the quadrature's moments, not the resampled draws'
        sd = exact.sd.cpu().numpy()  # (B, z_dim)
        table[f"{name}_mean"] = exact.mean.cpu().numpy().ravel()
        table[f"{name}_sd"] = sd.ravel()
        table[f"{name}_mcse_mean"] = (exact.error.cpu().numpy()[:, None] * sd).ravel()  # quadrature error
    gaps = inference_gaps(vae, x, index=guide.posterior.point.values, num_samples=gap_samples, seed=seed, y=y)
    points = pd.DataFrame(gaps.table()).set_index("index")
    points.index.name = "point"
    points.insert(0, "kl_gaussian", gaussian_kl(guide, reference).values)
    if y is not None and y.dim() == 1:
        points.insert(0, "y", y.cpu().numpy())
    stats = reference.sample_stats
    if "diverging" in stats:
        points[f"{name}_divergences"] = stats["diverging"].sum(("chain", "draw")).values
        r_hat = table[f"{name}_r_hat"].to_numpy().reshape(len(points), -1)  # (B, z_dim), rows in point order
        points[f"{name}_max_r_hat"] = r_hat.max(1)
    if "pareto_k" in stats:
        points[f"{name}_ess"] = stats["ess"].values
        points[f"{name}_pareto_k"] = stats["pareto_k"].values
    if exact is not None:  # exact: KL(q || p(z|x)) = log p(x) - ELBO, by quadrature
        points[f"{name}_log_px"] = exact.log_marginal.cpu().numpy()
        points[f"{name}_kl"] = exact.kl.cpu().numpy()
        points[f"{name}_error"] = exact.error.cpu().numpy()
    clouds = None
    if vae.z_dim == 2:
        labels = [f"row {i}" for i in guide.posterior.point.values]
        if y is not None and y.dim() == 1:
            labels = [f"{label}, y = {int(c)}" for label, c in zip(labels, y.tolist(), strict=True)]
        clouds = point_clouds(vae, x, None, num_draws=num_chains * num_samples, seed=seed, labels=labels, y=y)
    return Inspection(guide, reference, name, table, points, gaps, clouds)


def load_split(
    run_dir: str | os.PathLike, *, split: str | None = None, seed: int | None = None
) -> tuple[RunConfig, VAE, torch.Tensor, str, np.ndarray | None]:
    """A whole split of a run's data as its model sees it, its labels, and the model.

    The split is binarized as a whole (for a likelihood that needs 0/1 data, with the
    run's binarization and a generator seeded with ``seed``), so a row looks the same
    whichever other rows are picked with it.

    Args:
        run_dir: A training run's directory.
        split: ``train``, ``val`` or ``test``; default the held-out split (test if the
            data has one, else validation).
        seed: Seed of the binarization; default the run's seed.

    Returns:
        ``(config, vae, x, split, labels)``: ``x`` of shape ``(N, x_dim)``, ``labels``
        ``(N,)`` or None.

    Raises:
        CheckpointError: The run directory is damaged.
        ConfigError: The split does not exist.
    """
    from .checkpoint import load_run
    from .train import load_data, make_transform

    config, vae = load_run(run_dir)
    data = load_data(config)
    if split is None:
        split = "test" if data.test is not None else "val"
    splits = {
        "train": (data.train, data.train_labels),
        "val": (data.val, data.val_labels),
        "test": (data.test, data.test_labels),
    }
    if split not in splits:
        raise ConfigError(f"`split` must be one of {', '.join(splits)}, got {split!r}")
    rows, labels = splits[split]
    if rows is None:
        raise ConfigError(f"the data {config.data.data!r} has no {split} split; choose `split` train or val")
    # A mapped split is read whole as float32: inspection looks at a held-out split, which is small.
    x = torch.from_numpy(rows.read(slice(None)) if isinstance(rows, Rows) else rows)
    vae.likelihood.check_support(x)
    transform = make_transform(config, vae)
    if transform is not None:
        with forked_rng(seed=config.train.seed if seed is None else seed):
            x = transform(x)
    return config, vae, x, split, labels


def condition_of(config: RunConfig, vae: VAE, x: torch.Tensor, labels: np.ndarray | None) -> torch.Tensor | None:
    """What a run's model is conditioned on for inputs ``x`` with the split's ``labels``.

    None for an unconditional model; the labels for a conditional one (``condition``
    labels); for a semi-supervised one the labels where known, else the classifier's
    guess ``vae.predict(x)``, so that every point's posterior is p(z | x, y) for one y.

    Raises:
        DataError: A conditional model's split has no labels.
    """
    condition = config.model.condition
    if condition == "none":
        return None
    known = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long, device=x.device)
    if condition == "labels":
        if known is None or bool((known < 0).any()):
            raise DataError(
                f"this conditional VAE needs the label of every inspected row, but the data {config.data.data!r} "
                "has none for some; inspect a split with labels"
            )
        return known
    with torch.no_grad():
        return vae.complete_labels(x, known)


def load_inputs(
    run_dir: str | os.PathLike, index: Sequence[int], *, split: str | None = None, seed: int | None = None
) -> tuple[RunConfig, VAE, torch.Tensor, str, torch.Tensor | None]:
    """:func:`load_points`, with each row's condition (:func:`condition_of`) for a conditional model.

    Returns:
        ``(config, vae, x, split, y)``: ``y`` is None for an unconditional model.
    """
    config, vae, x, split, labels = load_split(run_dir, split=split, seed=seed)
    rows = _check_index(index, len(x), split, config)
    picked = None if labels is None else np.asarray(labels)[rows]
    x = x[rows]
    return config, vae, x, split, condition_of(config, vae, x, picked)


def _check_index(index: Sequence[int], num_rows: int, split: str, config: RunConfig) -> list[int]:
    bad = [i for i in index if not 0 <= i < num_rows]
    if bad:
        raise ConfigError(
            f"`index` {' '.join(map(str, bad))} out of range: the {split} split of {config.data.data!r} has "
            f"{num_rows} rows; pass indices from 0 to {num_rows - 1}"
        )
    if len(set(index)) != len(index):
        raise ConfigError(f"`index` repeats a row ({' '.join(map(str, index))}); pass each row once")
    return list(index)


def load_points(
    run_dir: str | os.PathLike, index: Sequence[int], *, split: str | None = None, seed: int | None = None
) -> tuple[RunConfig, VAE, torch.Tensor, str]:
    """Rows of a run's data, as its model sees them, and the model (:func:`load_split`, then the rows).

    Args:
        run_dir: A training run's directory.
        index: Rows of the split, each in ``0..N-1``.
        split: ``train``, ``val`` or ``test``; default the held-out split (test if the
            data has one, else validation).
        seed: Seed of the binarization; default the run's seed.

    Returns:
        ``(config, vae, x, split)`` with ``x`` of shape ``(len(index), x_dim)``.

    Raises:
        CheckpointError: The run directory is damaged.
        ConfigError: The split does not exist or an index is out of range or repeated.
    """
    config, vae, x, split, _ = load_split(run_dir, split=split, seed=seed)
    return config, vae, x[_check_index(index, len(x), split, config)], split


def check_outputs(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Make sure ``out_dir`` can take an inspection's files; returns it as a Path.

    Raises:
        ConfigError: ``out_dir`` is a file, or holds files of an earlier inspection and
            ``overwrite`` is off.
    """
    return check_output_dir(out_dir, INSPECT_FILES, overwrite=overwrite)


def _write_netcdf(data: ArvizData, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_netcdf(data, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_inspection(found: Inspection, out_dir: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Write an inspection's files into ``out_dir`` and return their paths.

    Files: ``guide.nc`` and ``nuts.nc`` or ``sir.nc`` (ArviZ netCDF:
    ``arviz.from_netcdf`` opens them), ``summary.csv`` (the side-by-side table),
    ``points.csv`` (per-point KL, log p(x), ELBOs and gaps), ``marginals.png``,
    ``forest.png`` and, for a 2-D latent, ``latent.png`` (the reference's draws with
    the guide's mean and 1- and 2-sigma ellipses) and ``clouds.png`` (each row's cloud
    of guide draws, its mu(x) and sigma(x) ellipses, as in the seed diagram).

    Raises:
        ConfigError: As :func:`check_outputs`.
    """
    out = check_outputs(out_dir, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for name in INSPECT_FILES:  # no stale file of an earlier inspection is left beside the new ones
        (out / name).unlink(missing_ok=True)
    from ..files import atomic_write

    written = [out / "guide.nc", out / f"{found.reference_name}.nc", out / "summary.csv", out / "points.csv"]
    _write_netcdf(found.guide, written[0])
    _write_netcdf(found.reference, written[1])
    atomic_write(written[2], found.table.to_csv(index_label="variable"))
    atomic_write(written[3], found.points.to_csv())
    names = ["guide", found.reference_name.upper()]
    plot_marginals([found.guide, found.reference], names, out / "marginals.png")
    plot_forest([found.guide, found.reference], names, out / "forest.png")
    written += [out / "marginals.png", out / "forest.png"]
    if found.guide.posterior.sizes[LATENT_DIM] == 2:
        plot_latent_ellipses(found.guide, found.reference, out / "latent.png", name=names[1])
        written.append(out / "latent.png")
    if found.clouds is not None:
        plot_clouds(found.clouds, out / "clouds.png", title="q(z|x) for each row: z = mu(x) + sigma(x) * eps")
        written.append(out / "clouds.png")
    return written
