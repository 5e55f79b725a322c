"""``pyro-vae inspect --all``: the guide against the exact posterior for every held-out point.

:func:`survey_points` goes over many rows in chunks of bounded memory, with a progress
bar, and keeps one row of numbers per point (never the draws):

- ``log_px``, ``elbo`` and ``gap = log_px - elbo`` (the inference gap, which is
  ``KL(q(z|x) || p(z|x))``): exact by quadrature for ``grid``; else importance-sampled
  log p(x) and Monte Carlo ELBO from the same draws of the guide, with their standard
  errors;
- ``kl``: KL(q || p) from the reference: exact for ``grid`` (equal to ``gap``); for
  ``nuts`` and ``sir`` the KL of the guide's Gaussian from the Gaussian with the
  reference draws' mean and covariance (it misses non-Gaussian shape, which ``gap``
  includes);
- per latent dimension d: ``mean_error_d`` (the guide's mean minus the exact mean, in
  exact sds) and ``sd_ratio_d`` (the guide's sd over the exact sd), and their worst
  values per point (``max_abs_mean_error``, ``min_sd_ratio``, ``max_sd_ratio``);
- the reference's own diagnostics: the quadrature error (``grid``), the largest R-hat,
  the smallest bulk ESS and the divergences (``nuts``), the weights' ESS and Pareto k
  (``sir``).

:func:`write_survey` writes ``survey.csv`` (those rows), ``survey_summary.csv``
(quantiles of every column, and the means per label when the data has labels) and
``survey.png``, a figure of where the encoder is worst (:func:`plot_survey`).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm
from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import ConfigError
from ..files import atomic_write
from ..inference.bounds import collect_log_weights, given
from ..inference.gaps import LogMarginal, frozen
from ..inference.quadrature import QuadratureWarning, posterior_quadrature
from ..model.vae import VAE
from ..plotting import save_png, subplots
from ..posterior.compare import kl_from_moments
from ..posterior.samplers import (
    ImportanceSamplingWarning,
    default_block_size,
    exact_posterior,
    importance_posterior,
)
from ..posterior.schema import LATENT_VAR, POINT_DIM, az
from .inspect import condition_of, load_split, resolve_method
from .outputs import check_output_dir

__all__ = [
    "SURVEY_FILES",
    "Survey",
    "check_survey_outputs",
    "parse_rows",
    "plot_survey",
    "survey_points",
    "survey_run",
    "write_survey",
]

#: Every file :func:`write_survey` writes; ``overwrite=True`` replaces exactly these.
SURVEY_FILES = ("survey.csv", "survey_summary.csv", "survey.png")

#: Points per chunk by method: the grids of 256 points, one NUTS block, 100 points of
#: importance resampling (whose proposals :func:`collect_weighted` bounds itself).
_CHUNKS = {"grid": 256, "nuts": default_block_size(4), "sir": 100}


@dataclass
class Survey:
    """Guide against reference, one row per point (:func:`survey_points`).

    Attributes:
        points: The per-point table, indexed by ``point`` (the row in its split).
        method: The reference: ``grid``, ``nuts`` or ``sir``.
        seconds: Wall time.
    """

    points: pd.DataFrame
    method: str
    seconds: float

    def summary(self) -> pd.DataFrame:
        """Quantiles of every numeric column, then the mean per label (when there are labels)."""
        numeric = self.points.select_dtypes("number").drop(columns=["label"], errors="ignore")
        table = numeric.quantile([0.0, 0.1, 0.5, 0.9, 1.0]).rename(index=lambda q: f"q{q:g}")
        table.loc["mean"] = numeric.mean()
        if "label" in self.points:
            by_label = numeric.groupby(self.points["label"]).mean().rename(index=lambda c: f"label {c} mean")
            table = pd.concat([table, by_label])
        return table

    def worst(self, n: int = 8) -> pd.DataFrame:
        """The ``n`` points with the largest KL(q || p)."""
        return self.points.nlargest(n, "kl")


def parse_rows(text: str, num_rows: int) -> range:
    """The rows ``A:B`` (Python's slice, either end optional) of a split of ``num_rows``.

    Raises:
        ConfigError: ``text`` is not ``A:B`` or selects no row.

    Example:
        >>> parse_rows("10:20", 100), parse_rows(":5", 100), parse_rows("95:", 100)
        (range(10, 20), range(0, 5), range(95, 100))
    """
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if match is None:
        raise ConfigError(f"`rows` must look like A:B (e.g. 0:500), got {text!r}")
    start, stop = (int(v) if v else None for v in match.groups())
    rows = range(num_rows)[slice(start, stop)]
    if len(rows) == 0:
        raise ConfigError(f"`rows` {text} selects no row of the {num_rows}; pass A:B with 0 <= A < B <= {num_rows}")
    return rows


def survey_points(
    vae: VAE,
    x: torch.Tensor,
    index: Sequence[int] | np.ndarray | None = None,
    *,
    method: str | None = None,
    labels: np.ndarray | None = None,
    num_samples: int = 500,
    num_chains: int = 4,
    warmup_steps: int | None = None,
    num_proposals: int = 20_000,
    elbo_samples: int = 2000,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    y: torch.Tensor | None = None,
) -> Survey:
    """The guide against the exact posterior for every row of ``x``, one row of numbers per point.

    Args:
        vae: The trained model.
        x: Inputs ``(N, x_dim)``, as the model sees them.
        index: Row of each input in its split (the ``point`` column); default ``0..N-1``.
        method: ``grid``, ``nuts`` or ``sir`` (default: ``grid`` for z_dim <= 2, else ``sir``).
        labels: One label per row (a ``label`` column), or None.
        num_samples: Draws per chain of NUTS or importance resampling.
        num_chains: Chains of NUTS or importance resampling.
        warmup_steps: NUTS warm-up steps per chain; default ``num_samples``.
        num_proposals: Proposals per point for importance resampling.
        elbo_samples: Draws of the guide per point for log p(x) and the ELBO (``nuts`` and ``sir``).
        chunk_size: Points per chunk (default by method: 256 for ``grid``, a NUTS block of
            100, 100 for ``sir``); memory grows with it, not with N.
        seed: Seed of every draw; chunk k uses ``seed + k``.
        progress: Show a progress bar over the points.
        y: For a conditional model, the condition of each row
            (:func:`~pyro_vae.runs.inspect.condition_of`): q(z | x, y) against p(z | x, y).

    Returns:
        A :class:`Survey`.

    Raises:
        ConfigError: A bad ``method``, count or ``chunk_size``.
        DataError: ``x`` does not fit the model.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> found = survey_points(vae, torch.ones(3, 6), [5, 6, 7])
        >>> list(found.points.index), found.method, "mean_error_1" in found.points
        ([5, 6, 7], 'grid', True)
    """
    vae.check_x(x)
    method = resolve_method(vae, method, x=x, y=y)
    num_points = x.shape[0]
    index = np.arange(num_points) if index is None else np.asarray(index)
    if index.shape != (num_points,):
        raise ConfigError(f"`index` must have one entry per row of x ({num_points}), got shape {index.shape}")
    chunk_size = _CHUNKS[method] if chunk_size is None else chunk_size
    for name, value in (
        ("chunk_size", chunk_size),
        ("num_samples", num_samples),
        ("num_chains", num_chains),
        ("elbo_samples", elbo_samples),
    ):
        if value < 1:
            raise ConfigError(f"`{name}` must be >= 1, got {value}")
    start = time.perf_counter()
    tables = []
    with tqdm(
        total=num_points, disable=not progress, desc=f"inspect ({method})", unit="point", dynamic_ncols=True
    ) as bar:
        for k, lo in enumerate(range(0, num_points, chunk_size)):
            rows = slice(lo, min(lo + chunk_size, num_points))
            table = _chunk(
                vae,
                x[rows],
                None if y is None else y[rows],
                index[rows],
                method,
                num_samples=num_samples,
                num_chains=num_chains,
                warmup_steps=warmup_steps,
                num_proposals=num_proposals,
                elbo_samples=elbo_samples,
                seed=seed + k,
            )
            if labels is not None:
                table.insert(0, "label", np.asarray(labels)[rows])
            tables.append(table)
            bar.update(rows.stop - rows.start)
    points = pd.concat(tables)
    points.index.name = POINT_DIM
    return Survey(points, method, time.perf_counter() - start)


def _chunk(
    vae: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    index: np.ndarray,
    method: str,
    *,
    num_samples: int,
    num_chains: int,
    warmup_steps: int | None,
    num_proposals: int,
    elbo_samples: int,
    seed: int,
) -> pd.DataFrame:
    """The survey's columns for one chunk of points."""
    with torch.no_grad(), frozen(vae):
        loc, scale = (t.double().cpu().numpy() for t in vae.encode(x, y))  # (b, D) each
    columns: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        # The table carries each point's verdict (quadrature error, Pareto k): one
        # warning per chunk would bury the progress bar.
        warnings.simplefilter("ignore", QuadratureWarning)
        warnings.simplefilter("ignore", ImportanceSamplingWarning)
        if method == "grid":
            exact = posterior_quadrature(vae, x, y=y)
            mean, cov = exact.mean.cpu().numpy(), exact.cov.cpu().numpy()
            columns["log_px"] = exact.log_marginal.cpu().numpy()
            columns["elbo"] = exact.elbo.cpu().numpy()
            columns["gap"] = columns["log_px"] - columns["elbo"]
            columns["kl"] = exact.kl.cpu().numpy()
            diagnostics = {"quadrature_error": exact.error.cpu().numpy()}
        else:
            if method == "nuts":
                data = exact_posterior(
                    vae, x, num_samples, warmup_steps=warmup_steps, num_chains=num_chains, index=index, seed=seed, y=y
                )
                r_hat = az.rhat(data, var_names=[LATENT_VAR])[LATENT_VAR].max("latent").values
                ess = az.ess(data, var_names=[LATENT_VAR])[LATENT_VAR].min("latent").values
                diagnostics = {
                    "max_r_hat": r_hat,
                    "min_ess_bulk": ess,
                    "divergences": data.sample_stats["diverging"].sum(("chain", "draw")).values,
                }
            else:
                data = importance_posterior(
                    vae,
                    x,
                    num_samples,
                    num_chains=num_chains,
                    num_proposals=num_proposals,
                    index=index,
                    seed=seed,
                    y=y,
                )
                diagnostics = {"ess": data.sample_stats["ess"].values, "pareto_k": data.sample_stats["pareto_k"].values}
            z = data.posterior[LATENT_VAR].transpose(POINT_DIM, "chain", "draw", "latent").values
            z = np.asarray(z, dtype=np.float64).reshape(len(index), -1, vae.z_dim)  # (b, N, D)
            mean = z.mean(1)
            centred = z - mean[:, None]
            cov = np.einsum("bni,bnj->bij", centred, centred) / (z.shape[1] - 1)
            with torch.no_grad(), frozen(vae):
                lw = collect_log_weights(vae, x, elbo_samples, **given(y, x))  # (K, b): the guide's draws, weighed
            marginal = LogMarginal.from_log_weights(lw)
            columns["log_px"] = marginal.estimate.double().cpu().numpy()
            columns["log_px_se"] = marginal.se.double().cpu().numpy()
            columns["elbo"] = lw.mean(0).double().cpu().numpy()
            columns["elbo_se"] = (lw.std(0) / math.sqrt(lw.shape[0])).double().cpu().numpy()
            columns["gap"] = columns["log_px"] - columns["elbo"]
            columns["kl"] = kl_from_moments(loc, np.einsum("bi,ij->bij", scale**2, np.eye(vae.z_dim)), mean, cov)
    sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))  # (b, D)
    error = (loc - mean) / sd  # (b, D)
    ratio = scale / sd  # (b, D)
    for d in range(vae.z_dim):
        columns[f"mean_error_{d}"] = error[:, d]
    for d in range(vae.z_dim):
        columns[f"sd_ratio_{d}"] = ratio[:, d]
    columns["max_abs_mean_error"] = np.abs(error).max(1)
    columns["min_sd_ratio"] = ratio.min(1)
    columns["max_sd_ratio"] = ratio.max(1)
    for d in range(vae.z_dim):
        columns[f"exact_mean_{d}"] = mean[:, d]
    columns.update(diagnostics)
    return pd.DataFrame(columns, index=pd.Index(index, name=POINT_DIM))


def survey_run(
    run_dir: str | os.PathLike,
    *,
    rows: str | None = None,
    split: str | None = None,
    method: str | None = None,
    seed: int | None = None,
    progress: bool = False,
    **options: int | None,
) -> tuple[Survey, RunConfig, str, torch.Tensor]:
    """:func:`survey_points` over a run's split (all of it, or ``rows`` ``A:B``), as ``pyro-vae inspect --all``.

    Args:
        run_dir: A training run's directory.
        rows: ``A:B`` (:func:`parse_rows`), or None for every row.
        split: ``train``, ``val`` or ``test``; default the held-out split.
        method: ``grid``, ``nuts`` or ``sir`` (default by z_dim).
        seed: Seed of the binarization and the draws; default the run's.
        progress: Show a progress bar.
        **options: ``num_samples``, ``num_chains``, ``warmup_steps`` and the other
            counts of :func:`survey_points`.

    Returns:
        ``(survey, config, split, x)``: ``x`` holds the surveyed inputs as the model saw them.

    Raises:
        CheckpointError: The run directory is damaged.
        ConfigError: A bad split, ``rows`` or option.
    """
    config, vae, x, split, labels = load_split(run_dir, split=split, seed=seed)
    picked = parse_rows(rows, len(x)) if rows is not None else range(len(x))
    seed = config.train.seed if seed is None else seed
    x = x[picked.start : picked.stop]
    labels = None if labels is None else labels[picked.start : picked.stop]
    index = np.arange(picked.start, picked.stop)
    found = survey_points(
        vae,
        x,
        index,
        method=method,
        labels=labels,
        seed=seed,
        progress=progress,
        y=condition_of(config, vae, x, labels),
        **{k: v for k, v in options.items() if v is not None},
    )
    return found, config, split, x


def check_survey_outputs(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Make sure ``out_dir`` can take a survey's files; returns it as a Path.

    Raises:
        ConfigError: ``out_dir`` is a file, or holds files of an earlier survey and
            ``overwrite`` is off.
    """
    return check_output_dir(out_dir, SURVEY_FILES, overwrite=overwrite)


def write_survey(
    found: Survey,
    out_dir: str | os.PathLike,
    *,
    images: np.ndarray | None = None,
    image_shape: Sequence[int] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``survey.csv``, ``survey_summary.csv`` and ``survey.png`` into ``out_dir``.

    Args:
        found: The survey.
        images: The inputs, ``(N, x_dim)`` in the order of ``found.points``, to show the
            worst ones (with ``image_shape``).
        image_shape: ``(H, W)`` of the inputs, or None for plain feature vectors.
        overwrite: Replace the files of an earlier survey.

    Raises:
        ConfigError: As :func:`check_survey_outputs`.
    """
    out = check_survey_outputs(out_dir, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in SURVEY_FILES]
    atomic_write(paths[0], found.points.to_csv())
    atomic_write(paths[1], found.summary().to_csv(index_label="statistic"))
    plot_survey(found, paths[2], images=images, image_shape=image_shape)
    return paths


def plot_survey(
    found: Survey,
    path: str | os.PathLike,
    *,
    images: np.ndarray | None = None,
    image_shape: Sequence[int] | None = None,
    worst: int = 8,
) -> None:
    """Where the encoder is worst: one PNG of four panels.

    1. The exact posterior means (z_0, z_1; the first two principal components of them
       for a larger latent), coloured by KL(q || p): the regions of latent space the
       encoder serves badly.
    2. KL(q || p) per label (box plots), or its histogram without labels.
    3. Each point's worst mean error (in exact sds) against its sd ratios (guide over
       exact: below 1 the guide is too narrow), coloured by KL.
    4. The ``worst`` inputs with the largest KL (as images, when ``image_shape`` is given),
       else the table of their rows.
    """
    table = found.points
    kl = table["kl"].to_numpy()
    floor = max(float(np.quantile(kl[kl > 0], 0.01)) if (kl > 0).any() else 1e-6, 1e-6)
    shown = np.maximum(kl, floor)
    norm = LogNorm(vmin=shown.min(), vmax=max(shown.max(), shown.min() * 10))
    fig, axes = subplots(2, 2, figsize=(12, 10), layout="constrained")
    fig.suptitle(
        f"Where the encoder is worst: q(z|x) against the exact posterior ({found.method}), {len(table)} points",
        fontsize=13,
    )

    # 1. Latent map.
    ax = axes[0, 0]
    means = table.filter(regex=r"^exact_mean_\d+$").to_numpy()  # (N, D)
    if means.shape[1] > 2:
        centred = means - means.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        plane, labels = centred @ vt[:2].T, ("principal component 1", "principal component 2")
    else:
        plane = means if means.shape[1] == 2 else np.column_stack([means[:, 0], np.zeros(len(means))])
        labels = ("z_0 (exact posterior mean)", "z_1 (exact posterior mean)" if means.shape[1] == 2 else "")
    order = np.argsort(shown)  # the worst drawn last, on top
    points = ax.scatter(
        plane[order, 0], plane[order, 1], c=shown[order], norm=norm, cmap="viridis", s=14, edgecolors="none"
    )
    fig.colorbar(points, ax=ax, label="KL(q || p), nats (log scale)")
    for i in np.argsort(-shown)[: min(worst, len(shown))]:
        ax.annotate(
            str(table.index[i]), plane[i], fontsize=8, xytext=(3, 3), textcoords="offset points", color="crimson"
        )
    ax.set(xlabel=labels[0], ylabel=labels[1], title="KL(q || p) by where the posterior sits (worst rows named)")

    # 2. By label, or the distribution.
    ax = axes[0, 1]
    if "label" in table:
        groups = sorted(table["label"].unique())
        ax.boxplot(
            [shown[table["label"].to_numpy() == g] for g in groups],
            tick_labels=[str(g) for g in groups],
            showfliers=True,
            flierprops={"markersize": 3},
        )
        ax.set(yscale="log", xlabel="label", ylabel="KL(q || p), nats", title="KL(q || p) per label")
    else:
        ax.hist(np.log10(shown), bins=40, color="tab:blue")
        ax.set(xlabel="log10 KL(q || p), nats", ylabel="points", title="KL(q || p) over the points")
    ax.grid(alpha=0.3)

    # 3. Mean error against sd ratio.
    ax = axes[1, 0]
    ratio = np.sqrt(table["min_sd_ratio"].to_numpy() * table["max_sd_ratio"].to_numpy())
    ax.scatter(
        table["max_abs_mean_error"].to_numpy()[order],
        ratio[order],
        c=shown[order],
        norm=norm,
        cmap="viridis",
        s=14,
        edgecolors="none",
    )
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set(
        xlabel="largest |guide mean - exact mean| over z's dimensions, in exact sds",
        ylabel="guide sd / exact sd (sqrt of its smallest x largest over z)",
        yscale="log",
        title="Mean error and spread of the guide (colour: KL)",
    )
    ax.grid(alpha=0.3)

    # 4. The worst inputs.
    ax = axes[1, 1]
    top = table.nlargest(min(worst, len(table)), "kl")
    if images is not None and image_shape is not None and len(image_shape) == 2:
        ax.set_axis_off()
        ax.set_title(f"The {len(top)} inputs with the largest KL(q || p)")
        cols = 4
        rows_n = math.ceil(len(top) / cols)
        positions = {row: k for k, row in enumerate(table.index)}
        for k, row in enumerate(top.index):
            sub = ax.inset_axes(
                [(k % cols) / cols + 0.01, 1 - (k // cols + 1) / rows_n * 0.95, 1 / cols - 0.02, 0.95 / rows_n - 0.08]
            )
            sub.imshow(np.asarray(images[positions[row]]).reshape(image_shape), cmap="gray_r", interpolation="nearest")
            sub.set_xticks([]), sub.set_yticks([])
            label = f", label {top.loc[row, 'label']}" if "label" in top else ""  # .loc keeps the int dtype
            sub.set_title(f"row {row}{label}\nKL {top.loc[row, 'kl']:.2f}", fontsize=8)
    else:
        ax.set_axis_off()
        shown_cols = [c for c in ("label", "kl", "gap", "max_abs_mean_error", "min_sd_ratio") if c in top]
        cells = [[f"{row}"] + [f"{top.loc[row, c]:.3g}" for c in shown_cols] for row in top.index]
        ax.table(cellText=cells, colLabels=["row"] + shown_cols, loc="center")
        ax.set_title(f"The {len(top)} points with the largest KL(q || p)")
    save_png(fig, path)
