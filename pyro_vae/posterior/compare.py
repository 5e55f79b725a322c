"""The guide against a reference posterior: summaries side by side, and a KL divergence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataError
from .schema import (
    LATENT_DIM,
    LATENT_VAR,
    POINT_DIM,
    ArvizData,
    _check_same_points,
    _draws,
    _points_of,
    az,
)

__all__ = ["compare_posteriors", "gaussian_kl", "kl_from_moments"]


# -------------------------------------------------------------------------- comparison


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
        >>> import torch
        >>> from pyro_vae.config import ModelConfig
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.posterior.samplers import guide_posterior
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
        >>> import torch
        >>> from pyro_vae.config import ModelConfig
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.posterior.samplers import guide_posterior
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> q = guide_posterior(vae, torch.ones(1, 6), 100)
        >>> round(float(gaussian_kl(q, q)[0]), 6)  # the same draws: zero
        0.0
    """
    _check_same_points(guide, reference)
    m_q, s_q = _moments(guide)
    m_p, s_p = _moments(reference)
    kl = kl_from_moments(m_q, s_q, m_p, s_p)
    return xr.DataArray(kl, dims=(POINT_DIM,), coords={POINT_DIM: _points_of(guide)}, name="kl")


def kl_from_moments(m_q: np.ndarray, s_q: np.ndarray, m_p: np.ndarray, s_p: np.ndarray) -> np.ndarray:
    """``KL(N(m_q, S_q) || N(m_p, S_p))`` per point, clipped at 0 (the moments' rounding).

    Args:
        m_q: Means ``(B, D)``.
        s_q: Covariances ``(B, D, D)``.
        m_p: Means ``(B, D)``.
        s_p: Covariances ``(B, D, D)``.

    Returns:
        ``(B,)`` in nats; NaN where a covariance is not positive definite (draws that
        do not span the latent space, e.g. chains that hardly moved: no Gaussian fits them).

    Example:
        >>> eye = np.eye(2)[None]
        >>> float(kl_from_moments(np.zeros((1, 2)), eye, np.ones((1, 2)), eye)[0])  # |m_p - m_q|^2 / 2
        1.0
    """
    ok = (np.linalg.eigvalsh(s_q)[..., 0] > 0) & (np.linalg.eigvalsh(s_p)[..., 0] > 0)  # (B,)
    kl = np.full(len(m_q), np.nan)
    if ok.any():
        kl[ok] = _kl_positive_definite(m_q[ok], s_q[ok], m_p[ok], s_p[ok])
    return kl


def _kl_positive_definite(m_q: np.ndarray, s_q: np.ndarray, m_p: np.ndarray, s_p: np.ndarray) -> np.ndarray:
    chol_q, chol_p = np.linalg.cholesky(s_q), np.linalg.cholesky(s_p)  # (B, D, D) each
    a = np.linalg.solve(chol_p, chol_q)  # L_p^-1 L_q: tr(S_p^-1 S_q) = |a|^2, (B, D, D)
    b = np.linalg.solve(chol_p, (m_p - m_q)[..., None])[..., 0]  # L_p^-1 (m_p - m_q), (B, D)

    def log_det(chol: np.ndarray) -> np.ndarray:
        return 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)  # (B,)

    kl = 0.5 * ((a**2).sum((1, 2)) + (b**2).sum(-1) - m_q.shape[-1] + log_det(chol_p) - log_det(chol_q))  # (B,)
    return np.maximum(kl, 0.0)
