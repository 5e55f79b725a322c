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
                          per-dimension scale of their Gaussian part); for a
                          conditional model also ``y`` (point), or (point, condition)
                          for condition vectors: what every draw was conditioned on
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
draw the figures of ``pyro-vae inspect``. This is the only module that imports ArviZ
(others take ``az`` from here).
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Sequence

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

with warnings.catch_warnings():
    # ArviZ 0.x announces its 1.x refactor with a FutureWarning on import; the note is
    # for ArviZ's users, not ours, and would otherwise print on every CLI call.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

from ..errors import ConfigError, DataError  # noqa: E402
from ..inference.bounds import given, model_densities  # noqa: E402
from ..inference.gaps import frozen, point_index  # noqa: E402
from ..model.vae import LATENT_SITE, OBS_SITE, VAE  # noqa: E402
from ..seeding import forked_rng

__all__ = [
    "POINT_DIM",
    "LATENT_DIM",
    "FEATURE_DIM",
    "SAMPLE_DIMS",
    "LATENT_VAR",
    "OBSERVED_VAR",
    "az",
    "ArvizData",
    "to_arviz",
    "write_netcdf",
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
#: A conditional model's condition of each point in ``constant_data`` (its label, or
#: its condition vector along :data:`CONDITION_DIM`).
CONDITION_VAR = "y"
#: Dimension of a condition vector.
CONDITION_DIM = "condition"

#: Whether the installed ArviZ works on ``xarray.DataTree`` natively (ArviZ >= 1).
_DATATREE_NATIVE = int(az.__version__.split(".")[0]) >= 1

#: What the functions here return: ``xarray.DataTree`` on ArviZ >= 1, else ``InferenceData``.
#: Which of the two depends on the ArviZ installed, and both are read the same way
#: (``data.posterior``, ``data.sample_stats``, ``data.sel(point=...)``), so the static type
#: is ``Any``: a union would make every group access an error on one of the two lines.
ArvizData = Any


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


def _library_version() -> str:
    """pyro_vae's installed version, or ``"unknown"`` when it runs from a source tree never installed."""
    try:
        return metadata.version("pyro_vae")
    except metadata.PackageNotFoundError:
        return "unknown"


def _attrs(inference: str, **extra: Any) -> dict[str, Any]:
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arviz_version": az.__version__,
        "sample_dims": list(SAMPLE_DIMS),
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "pyro_vae",
        "creation_library_version": _library_version(),
        "inference": inference,
        **extra,
    }


def _index(index: Sequence[int] | np.ndarray | torch.Tensor | None, num_points: int) -> np.ndarray:
    return point_index(index, num_points)


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
    sizes = {dim: n for dims, values in arrays.values() for dim, n in zip(dims, values.shape, strict=True)}
    return xr.Dataset(arrays, coords={dim: coords[dim] if dim in coords else np.arange(n) for dim, n in sizes.items()})


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
    y: torch.Tensor | None = None,
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
        y: A conditional model's condition of each point, or None; it conditions every
            predictive draw and goes into ``constant_data`` as ``y``. A semi-supervised
            model's unknown labels (-1) are its classifier's guess there.
    """
    coords = _coords(index, vae)
    draws = (*SAMPLE_DIMS, POINT_DIM)
    with frozen(vae), forked_rng(x.device, seed=_stream_seed(seed, 1)):
        y = _known_labels(vae, x, y)
        x_post = vae.decode(z, y).sample()  # (C, S, B, x_dim)
        log_lik = model_densities(vae, z, x, **given(y, x)).log_likelihood  # (C, S, B), from the model's trace
        z_prior = vae.sample_latent(z.shape[:-1])  # (C, S, B, z_dim)
        x_prior = vae.decode(z_prior, y).sample()  # (C, S, B, x_dim)
        loc, scale = vae.encode(x, y)  # (B, z_dim) each
    groups = {
        "posterior": _dataset({LATENT_VAR: ((*draws, LATENT_DIM), z)}, coords),
        "posterior_predictive": _dataset({OBSERVED_VAR: ((*draws, FEATURE_DIM), x_post)}, coords),
        "log_likelihood": _dataset({OBSERVED_VAR: (draws, log_lik)}, coords),
        "prior": _dataset({LATENT_VAR: ((*draws, LATENT_DIM), z_prior)}, coords),
        "prior_predictive": _dataset({OBSERVED_VAR: ((*draws, FEATURE_DIM), x_prior)}, coords),
        "observed_data": _dataset({OBSERVED_VAR: ((POINT_DIM, FEATURE_DIM), x)}, coords),
        "constant_data": _dataset(
            {"mu": ((POINT_DIM, LATENT_DIM), loc), "sigma": ((POINT_DIM, LATENT_DIM), scale), **_condition(y)},
            coords,
        ),
    }
    if sample_stats is not None:
        groups["sample_stats"] = sample_stats
    return to_arviz(groups, attrs)


def _known_labels(vae: VAE, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
    """``y`` with a semi-supervised model's unknown labels (-1) replaced by its classifier's guess.

    The predictive draws and log p(x | z) need one label per point; the draws of z
    (importance resampling) are still from the posterior with the label summed out.
    """
    if y is None or not hasattr(vae, "complete_labels"):
        return y
    return vae.complete_labels(x, y)


def _condition(y: torch.Tensor | None) -> dict[str, tuple[tuple[str, ...], Any]]:
    """``constant_data``'s ``y``: labels as (point,), condition vectors as (point, condition)."""
    if y is None:
        return {}
    dims = (POINT_DIM,) if y.dim() == 1 else (POINT_DIM, CONDITION_DIM)
    return {CONDITION_VAR: (dims, y.reshape(y.shape[0], -1) if y.dim() > 1 else y)}


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"`{name}` must be >= 1, got {value}")


def _draws(data: ArvizData) -> np.ndarray:
    """The draws of z as ``(point, chain * draw, latent)``."""
    z = data.posterior[LATENT_VAR].transpose(POINT_DIM, "chain", "draw", LATENT_DIM).values
    return np.asarray(z, dtype=np.float64).reshape(z.shape[0], -1, z.shape[-1])


def _points_of(data: ArvizData) -> np.ndarray:
    return np.asarray(data.posterior[POINT_DIM].values)


def _check_same_points(guide: ArvizData, reference: ArvizData) -> None:
    a, b = _points_of(guide), _points_of(reference)
    if a.shape != b.shape or not (a == b).all():
        raise DataError(
            f"the two posteriors cover different points ({a.tolist()} vs {b.tolist()}); "
            "draw both for the same rows of x with the same index"
        )
