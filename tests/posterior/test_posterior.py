"""ArviZ views of the guide and the exact posterior, and the inference gaps.

Ground truth is probabilistic PCA, a VAE with a linear decoder: z ~ N(0, I),
x | z ~ N(W z + b, s^2 I). Its posterior p(z|x) is Gaussian with precision
Lambda = I + W^T W / s^2 and mean Lambda^-1 W^T (x - b) / s^2, and p(x) = N(b, W W^T + s^2 I),
so NUTS, importance sampling, the trained guide and every gap have a closed form.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from pyro.infer import MCMC

from pyro_vae import MLP, VAE, NormalLikelihood, TrainConfig, fit
from pyro_vae.cli import main
from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.inference.gaps import (
    fit_local_gaussians,
    inference_gaps,
    log_joint,
    log_marginal,
)
from pyro_vae.model.nn import SCALE_FLOOR
from pyro_vae.posterior.compare import compare_posteriors, gaussian_kl, kl_from_moments
from pyro_vae.posterior.plots import plot_forest, plot_latent_ellipses, plot_marginals
from pyro_vae.posterior.samplers import (
    ImportanceSamplingWarning,
    _RecordingNUTS,
    exact_posterior,
    guide_posterior,
    importance_posterior,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x's note about its 1.x refactor
    import arviz as az

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG"
#: ArviZ 1.x (Python >= 3.12): xarray.DataTree and arviz-base/-stats/-plots; else 0.x.
ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1
#: ArviZ 0.x's plots call a matplotlib API that matplotlib 3.11 deprecates; not ours to fix.
OLD_MATPLOTLIB_CALLS = pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
#: Every group the posterior functions write; the guide's draws have no sample_stats.
DRAW_GROUPS = {"posterior", "posterior_predictive", "log_likelihood", "prior", "prior_predictive"}
DATA_GROUPS = {"observed_data", "constant_data"}
NUTS_STATS = {"diverging", "energy", "lp", "step_size", "tree_depth", "n_steps", "acceptance_rate"}

# A posterior with correlated dimensions (W's columns are not orthogonal).
W_CORR = torch.tensor([[1.0, 0.5], [0.3, -1.0], [0.8, 0.8], [0.0, 0.4]])
B_CORR = torch.tensor([0.1, -0.2, 0.3, 0.0])
S = 0.5
X_CORR = torch.tensor([[1.0, 0.5, -0.3, 0.2], [-0.5, 1.2, 0.4, -0.8]])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Every tensor here is tiny: on shared CPUs, intra-op threads cost more than they save.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def ppca_vae(w: torch.Tensor, b: torch.Tensor, s: float) -> VAE:
    """A VAE whose decoder is exactly the PPCA likelihood N(W z + b, s^2 I); linear encoder."""
    x_dim, z_dim = w.shape
    vae = VAE(MLP(x_dim, []), MLP(z_dim, []), NormalLikelihood(z_dim, x_dim), z_dim=z_dim)
    with torch.no_grad():
        vae.likelihood.loc.weight.copy_(w)
        vae.likelihood.loc.bias.copy_(b)
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(s - SCALE_FLOOR)))
    return vae


def closed_form(w: torch.Tensor, b: torch.Tensor, s: float, x: torch.Tensor):
    """Posterior mean (B, Z), covariance (Z, Z), precision (Z, Z) and log p(x) (B,)."""
    precision = torch.eye(w.shape[1]) + w.T @ w / s**2
    cov = torch.linalg.inv(precision)
    mean = (x - b) @ w @ cov.T / s**2
    log_px = torch.distributions.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(w.shape[0])).log_prob(x)
    return mean, cov, precision, log_px


def set_guide(vae: VAE, w: torch.Tensor, b: torch.Tensor, s: float, spread: float) -> None:
    """Make the linear encoder give the exact posterior mean and ``spread`` times its marginal sd."""
    _, cov, _, _ = closed_form(w, b, s, torch.zeros(1, w.shape[0]))
    gain = cov @ w.T / s**2  # mean = gain (x - b)
    sd = spread * cov.diag().sqrt()
    with torch.no_grad():
        vae.variational.loc.weight.copy_(gain)
        vae.variational.loc.bias.copy_(-gain @ b)
        vae.variational.raw_scale.weight.zero_()
        vae.variational.raw_scale.bias.copy_(torch.log(torch.expm1(sd - SCALE_FLOOR)))


def gaussian_kl_closed(m_q, s_q, m_p, cov_p) -> torch.Tensor:
    """KL(N(m_q, diag s_q^2) || N(m_p, cov_p)) per row."""
    prec = torch.linalg.inv(cov_p)
    diff = m_p - m_q  # (B, Z)
    trace = (prec.diag() * s_q**2).sum(-1)
    maha = torch.einsum("bi,ij,bj->b", diff, prec, diff)
    return 0.5 * (trace + maha - m_q.shape[-1] + torch.logdet(cov_p) - 2 * s_q.log().sum(-1))


def groups(data) -> set[str]:
    """The groups of ArviZ data, on either line."""
    return set(data.children) if ARVIZ_1 else set(data.groups())


def group(data, name: str) -> xr.Dataset:
    """One group of ArviZ data as a Dataset, on either line."""
    return data[name].to_dataset() if ARVIZ_1 else data[name]


def ppca_log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; W z + b, s^2 I) of the correlated PPCA, written out: z (..., B, 2), x (B, 4) -> (..., B)."""
    resid = x - (z @ W_CORR.T + B_CORR)  # (..., B, 4)
    return -0.5 * (resid**2).sum(-1) / S**2 - 4 * math.log(S) - 2 * math.log(2 * math.pi)


@pytest.fixture(scope="module")
def corr_vae() -> VAE:
    vae = ppca_vae(W_CORR, B_CORR, S)
    set_guide(vae, W_CORR, B_CORR, S, spread=1.3)
    return vae


@pytest.fixture(scope="module")
def corr_nuts(corr_vae):
    """NUTS on both points of the correlated PPCA (rows 3 and 7): 4 chains x 300 draws each."""
    return exact_posterior(corr_vae, X_CORR, 300, warmup_steps=200, num_chains=4, index=[3, 7], seed=1)


@pytest.fixture(scope="module")
def corr_guide(corr_vae):
    """The guide's draws for the same points as corr_nuts, as many per chain."""
    return guide_posterior(corr_vae, X_CORR, 300, num_chains=4, index=[3, 7])


# ------------------------------------------------------------------------- the schema
def test_guide_posterior_has_arviz_groups_dims_and_coords(corr_vae):
    data = guide_posterior(corr_vae, X_CORR, 50, num_chains=3, index=[3, 11])
    # The native object of the ArviZ installed.
    assert isinstance(data, xr.DataTree if ARVIZ_1 else az.InferenceData)
    assert groups(data) == DRAW_GROUPS | DATA_GROUPS
    assert data.posterior.z.dims == data.prior.z.dims == ("chain", "draw", "point", "latent")
    assert dict(data.posterior.z.sizes) == dict(data.prior.z.sizes) == {"chain": 3, "draw": 50, "point": 2, "latent": 2}
    for name in ("posterior_predictive", "prior_predictive"):
        assert dict(data[name].x.sizes) == {"chain": 3, "draw": 50, "point": 2, "feature": 4}
    assert data.log_likelihood.x.dims == ("chain", "draw", "point")
    assert data.posterior.point.values.tolist() == [3, 11]
    assert data.posterior.latent.values.tolist() == [0, 1]
    assert data.constant_data.mu.dims == data.constant_data.sigma.dims == ("point", "latent")
    assert data.observed_data.x.dims == ("point", "feature")
    loc, scale = corr_vae.encode(X_CORR)
    np.testing.assert_array_equal(data.constant_data.mu.values, loc.detach().numpy())
    np.testing.assert_array_equal(data.constant_data.sigma.values, scale.detach().numpy())
    np.testing.assert_array_equal(data.observed_data.x.sel(point=11).values, X_CORR[1].numpy())
    # log p(x|z) of each observed point at each draw: the PPCA likelihood written out.
    z = torch.as_tensor(data.posterior.z.values)  # (3, 50, 2, 2)
    np.testing.assert_allclose(data.log_likelihood.x.values, ppca_log_likelihood(z, X_CORR).numpy(), rtol=1e-5)
    # ArviZ's attributes, on the data and on each group.
    for attrs in (data.attrs, data.posterior.attrs, data.log_likelihood.attrs):
        assert attrs["inference_library"] == "pyro" and attrs["creation_library"] == "pyro_vae"
        assert list(attrs["sample_dims"]) == ["chain", "draw"]


def test_data_from_an_uninstalled_source_tree_names_an_unknown_version(corr_vae, monkeypatch):
    # Run from a checkout on PYTHONPATH, without pip install: no package metadata.
    from importlib import metadata

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    data = guide_posterior(corr_vae, X_CORR, 5)
    assert data.attrs["creation_library_version"] == "unknown"


def test_predictive_and_prior_draws_follow_the_model(corr_vae):
    # The PPCA: z ~ N(0, I) and x | z ~ N(W z + b, s^2 I), so x ~ N(b, W W^T + s^2 I).
    data = guide_posterior(corr_vae, X_CORR, 2000, num_chains=2, index=[3, 7])
    z_post = data.posterior.z.values.reshape(-1, 2)  # (8000, 2), both points pooled
    x_post = data.posterior_predictive.x.values.reshape(-1, 4)  # (8000, 4)
    z_prior = data.prior.z.values.reshape(-1, 2)  # (8000, 2)
    x_prior = data.prior_predictive.x.values.reshape(-1, 4).astype(np.float64)  # (8000, 4)
    n = 8000
    w, b = W_CORR.numpy(), B_CORR.numpy()
    # Predictive noise around W z + b at the same draw: mean 0 (SE s/sqrt(N) = 0.0056) and sd s
    # (SE s/sqrt(2N) = 0.004); 4 SE.
    noise = x_post - (z_post @ w.T + b)
    np.testing.assert_array_less(np.abs(noise.mean(0)), 4 * S / math.sqrt(n))
    np.testing.assert_array_less(np.abs(noise.std(0) - S), 4 * S / math.sqrt(2 * n))
    # Prior draws: mean 0 (SE 1/sqrt(N) = 0.011), sd 1 (SE 0.008); the prior predictive's
    # covariance W W^T + s^2 I (SE of an entry sqrt((C_ii C_jj + C_ij^2) / N)); 4 SE.
    np.testing.assert_array_less(np.abs(z_prior.mean(0)), 4 / math.sqrt(n))
    np.testing.assert_array_less(np.abs(z_prior.std(0) - 1), 4 / math.sqrt(2 * n))
    c = w @ w.T + S**2 * np.eye(4)
    se = np.sqrt((np.outer(c.diagonal(), c.diagonal()) + c**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x_prior.T) - c), 4 * se)
    np.testing.assert_array_less(np.abs(x_prior.mean(0) - b), 4 * np.sqrt(c.diagonal() / n))


def test_guide_draws_have_mean_mu_and_sd_sigma(corr_vae):
    data = guide_posterior(corr_vae, X_CORR, 2500, num_chains=4)
    z = data.posterior.z
    mu, sigma = data.constant_data.mu.values, data.constant_data.sigma.values
    # N = 10000 independent draws: SE of the mean sigma/100, SE of the sd ~ sigma/sqrt(2N) = sigma/141.
    n = 10_000
    np.testing.assert_array_less(np.abs(z.mean(("chain", "draw")).values - mu), 4 * sigma / math.sqrt(n))
    np.testing.assert_array_less(np.abs(z.std(("chain", "draw")).values - sigma), 4 * sigma / math.sqrt(2 * n))


def test_index_and_counts_are_checked(corr_vae):
    with pytest.raises(ConfigError, match="repeat"):
        guide_posterior(corr_vae, X_CORR, 10, index=[4, 4])
    with pytest.raises(ConfigError, match="one entry per row"):
        guide_posterior(corr_vae, X_CORR, 10, index=[4])
    with pytest.raises(ConfigError, match="num_samples"):
        guide_posterior(corr_vae, X_CORR, 0)
    with pytest.raises(DataError, match="expected x of shape"):
        exact_posterior(corr_vae, torch.zeros(1, 3), 10)
    a = guide_posterior(corr_vae, X_CORR, 10, index=[0, 1])
    b = guide_posterior(corr_vae, X_CORR, 10, index=[0, 2])
    with pytest.raises(DataError, match="different points"):
        compare_posteriors(a, b)


# ------------------------------------------------------------------------------ NUTS
def test_nuts_matches_the_closed_form_posterior(corr_nuts):
    mean, cov, _, _ = closed_form(W_CORR, B_CORR, S, X_CORR)
    sd = cov.diag().sqrt().numpy()
    c = cov.numpy()
    for b, point in enumerate((3, 7)):
        z = corr_nuts.posterior.z.sel(point=point).values.reshape(-1, 2).astype(np.float64)  # (1200, 2)
        ess = az.ess(corr_nuts).z.sel(point=point).values  # (2,), bulk ESS of each dimension
        # MC error of the mean: sd / sqrt(ESS) (ESS ~ 500-1200 of N = 1200 draws); 4 SE.
        np.testing.assert_array_less(np.abs(z.mean(0) - mean[b].numpy()), 4 * sd / np.sqrt(ess))
        # SE of a covariance entry ~ sqrt((S_ii S_jj + S_ij^2) / ESS); 4 SE with the smaller ESS.
        se_cov = np.sqrt((np.outer(c.diagonal(), c.diagonal()) + c**2) / ess.min())
        np.testing.assert_array_less(np.abs(np.cov(z.T) - c), 4 * se_cov)
    rhat = az.rhat(corr_nuts).z.values  # (point, latent)
    assert (rhat < 1.02).all(), rhat
    assert not corr_nuts.sample_stats.diverging.values.any()


def test_nuts_energy_is_the_hamiltonian_of_each_trajectory(corr_nuts):
    # energy[t] = U(z[t-1]) + K(fresh momentum) and lp[t-1] = -U(z[t-1]), so energy[t] + lp[t-1]
    # is the kinetic energy r'r / 2 of a standard normal momentum: chi^2(2) / 2, mean 1 and
    # sd 1. N = 4 chains x 299 x 2 points = 2392 independent draws: SE 0.02; 4 SE.
    stats = corr_nuts.sample_stats
    kinetic = (stats.energy.values[:, 1:] + stats.lp.values[:, :-1]).ravel()  # (2392,)
    assert (kinetic > -1e-4).all()
    assert abs(kinetic.mean() - 1.0) < 4 / math.sqrt(kinetic.size), kinetic.mean()
    assert abs(kinetic.std() - 1.0) < 0.15  # sd of the sample sd of chi^2(2)/2 is ~0.045 here
    # Tree depth and steps: 2^d - 1 steps for a full tree of d doublings, up to 2^(d+1) - 1
    # when the last doubling was dropped (it turned or diverged) part-way.
    d, n = stats.tree_depth.values, stats.n_steps.values
    assert ((n >= 2**d - 1) & (n <= 2 ** (d + 1) - 1)).all()
    assert ((stats.acceptance_rate >= 0) & (stats.acceptance_rate <= 1)).all()


def test_recording_nuts_agrees_with_pyros_own_records():
    # Neal's funnel diverges now and then; Pyro keeps the divergences and the running mean
    # of the acceptance probability, and the recorded statistics must agree with both.
    def funnel():
        y = pyro.sample("y", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(torch.zeros(2), torch.exp(y / 2)).to_event(1))

    kernel = _RecordingNUTS(funnel, max_tree_depth=4)
    records = []

    def hook(kernel, params, stage, i):
        if stage.startswith("Sample"):
            records.append({**kernel.transition, "pyro_mean_accept": kernel._mean_accept_prob})

    mcmc = MCMC(kernel, num_samples=200, warmup_steps=100, hook_fn=hook, disable_progbar=True)
    mcmc.run()
    diverging = [i for i, r in enumerate(records) if r["diverging"]]
    assert diverging and diverging == mcmc.diagnostics()["divergences"]["chain 0"]
    accept = np.array([r["acceptance_rate"] for r in records])
    running_mean = np.cumsum(accept) / np.arange(1, len(accept) + 1)
    np.testing.assert_allclose(running_mean, [r["pyro_mean_accept"] for r in records], rtol=1e-6)
    depth = np.array([r["tree_depth"] for r in records])
    steps = np.array([r["n_steps"] for r in records])
    assert depth.max() <= 4 and ((steps >= 2**depth - 1) & (steps <= 2 ** (depth + 1) - 1)).all()
    assert (steps[depth == 4] == 15).all()  # at the maximum depth the tree is full


def test_nuts_sample_stats_and_the_model_is_left_alone(corr_vae):
    before = {k: v.clone() for k, v in corr_vae.state_dict().items()}
    corr_vae.train()
    data = exact_posterior(corr_vae, X_CORR, 30, warmup_steps=30, num_chains=2, index=[3, 7])
    stats = data.sample_stats
    assert set(stats.data_vars) == NUTS_STATS
    assert groups(data) == DRAW_GROUPS | DATA_GROUPS | {"sample_stats"}
    for name in stats.data_vars:
        assert stats[name].dims == ("chain", "draw", "point")
    assert stats.diverging.dtype == bool
    assert stats.tree_depth.dtype == stats.n_steps.dtype == np.int64
    assert (stats.n_steps >= 1).all()
    # After warm-up the step size is fixed within each chain.
    assert (stats.step_size > 0).all() and (stats.step_size.max("draw") == stats.step_size.min("draw")).all()
    z = torch.as_tensor(data.posterior.z.values)
    np.testing.assert_allclose(stats.lp.values, log_joint(corr_vae, z, X_CORR).detach().numpy(), rtol=1e-5)
    assert data.attrs["sampling_time"] > 0
    # Weights, their gradient flags and the training mode are as they were.
    after = corr_vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in corr_vae.parameters()) and corr_vae.training
    corr_vae.eval()
    assert data.attrs["block_size"] == 2 and data.attrs["batch_chains"] == 1  # one block, chains batched
    # Per-point runs (blocks of 1, chains in turn) give each (row, chain) its own random
    # stream: row 7 draws the same with or without row 3.
    per_point = {"warmup_steps": 30, "num_chains": 2, "block_size": 1, "batch_chains": False}
    both = exact_posterior(corr_vae, X_CORR, 30, index=[3, 7], **per_point)
    alone = exact_posterior(corr_vae, X_CORR[1:], 30, index=[7], **per_point)
    np.testing.assert_array_equal(alone.posterior.z.sel(point=7).values, both.posterior.z.sel(point=7).values)


# --------------------------------------------------------------- importance sampling
def test_importance_resampling_matches_the_closed_form(corr_vae):
    mean, cov, _, log_px = closed_form(W_CORR, B_CORR, S, X_CORR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportanceSamplingWarning)  # the guide is wider than p(z|x): no warning
        data = importance_posterior(corr_vae, X_CORR, 1000, num_chains=4, num_proposals=20_000)
    assert groups(data) == DRAW_GROUPS | DATA_GROUPS | {"sample_stats"}
    ess = data.sample_stats.ess.values  # ESS of the 20000 Pareto-smoothed weights
    assert (ess > 5000).all() and (ess <= 20_000).all()
    # A proposal wider than the target has bounded weights: no heavy tail (k < 0.5).
    assert (data.sample_stats.pareto_k.values < 0.5).all()
    sd = cov.diag().sqrt().numpy()
    # Resampled mean: SE ~ sd * sqrt(1/ESS + 1/4000) (weighting, then 4000 resampled draws); 4 SE.
    se = sd * np.sqrt(1 / ess[:, None] + 1 / 4000)
    np.testing.assert_array_less(np.abs(data.posterior.z.mean(("chain", "draw")).values - mean.numpy()), 4 * se)
    # log p(x): relative SE of the weights' mean ~ sqrt(1/ESS) ~ 0.01; 0.05 is 4-5 SE.
    np.testing.assert_allclose(data.sample_stats.log_marginal.values, log_px.numpy(), atol=0.05)
    lp = log_joint(corr_vae, torch.as_tensor(data.posterior.z.values), X_CORR).detach().numpy()
    np.testing.assert_allclose(data.sample_stats.lp.values, lp, rtol=1e-5)


def orthogonal_ppca(spread: float) -> tuple[VAE, torch.Tensor]:
    """A PPCA with a diagonal posterior and a guide of the exact mean and ``spread`` times its sd; 8 inputs."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    w = q[:, :2] @ torch.diag(torch.tensor([2.0, 1.0]))
    vae = ppca_vae(w, torch.zeros(5), S)
    set_guide(vae, w, torch.zeros(5), S, spread=spread)
    return vae, torch.randn(8, 5, generator=g)


@pytest.mark.parametrize("spread", [0.6, 0.8])
def test_pareto_k_of_the_weights_matches_the_closed_form(spread):
    # Target N(m, s^2), proposal N(m, (c s)^2) with c < 1: the weights' upper tail is Pareto
    # with shape k = 1 - c^2 in each dimension (both dimensions have the same c here).
    # Over 6 seeds x 3 points the PSIS estimate from 20000 proposals had sd 0.06-0.07 (measured);
    # the mean of 8 points has SE ~0.025, and 0.1 is 4 SE.
    vae, x = orthogonal_ppca(spread)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportanceSamplingWarning)
        data = importance_posterior(vae, x, 100, num_proposals=20_000)
    k = data.sample_stats.pareto_k.values  # (8,)
    assert abs(k.mean() - (1 - spread**2)) < 0.1, k


def test_importance_resampling_warns_when_the_guide_is_too_narrow(tmp_path):
    vae, x = orthogonal_ppca(0.3)  # k = 1 - 0.09 = 0.91: the estimate cannot be trusted
    verdict = r"unreliable for row 0 \(Pareto k 0\.\d\d, ESS .*exact_posterior"
    with pytest.warns(ImportanceSamplingWarning, match=verdict):
        data = importance_posterior(vae, x[:2], 50, num_proposals=5000)
    assert (data.sample_stats.pareto_k.values > 0.7).all()
    # The comparison table reports the weights' figures for importance resampling, not the
    # R-hat and ESS of the resampled draws (which repeat, and always look converged).
    guide = guide_posterior(vae, x[:2], 50)
    table = compare_posteriors(guide, data, names=("guide", "sir"))
    assert list(table.columns) == [
        "guide_mean",
        "guide_sd",
        "sir_mean",
        "sir_sd",
        "sir_mcse_mean",
        "sir_ess",
        "sir_pareto_k",
    ]
    np.testing.assert_allclose(table["sir_pareto_k"].to_numpy(), np.repeat(data.sample_stats.pareto_k.values, 2))
    np.testing.assert_allclose(table["sir_ess"].to_numpy(), np.repeat(data.sample_stats.ess.values, 2))


def test_log_marginal_is_exact_with_the_exact_posterior_as_proposal(corr_vae):
    mean, cov, _, log_px = closed_form(W_CORR, B_CORR, S, X_CORR)
    exact = dist.MultivariateNormal(mean, cov)  # a Pyro distribution: it replaces the guide's site in a trace
    # Every weight p(x, z) / p(z|x) equals p(x): no Monte Carlo error at all.
    est = log_marginal(corr_vae, X_CORR, 200, proposals=[exact])
    np.testing.assert_allclose(est.estimate.numpy(), log_px.numpy(), atol=1e-4)
    np.testing.assert_allclose(est.ess.numpy(), 200, rtol=1e-3)
    # The defensive mixture with the (wider) guide is unbiased for p(x): within 4 SE.
    mixed = log_marginal(corr_vae, X_CORR, 4000, proposals=[exact, corr_vae.posterior(X_CORR)])
    np.testing.assert_array_less((mixed.estimate - log_px).abs().numpy(), 4 * mixed.se.numpy() + 1e-4)


# ---------------------------------------------------------------------------- gaps
def test_per_point_gaussian_is_the_best_diagonal_gaussian(corr_vae):
    mean, _, precision, _ = closed_form(W_CORR, B_CORR, S, X_CORR)
    loc, scale = fit_local_gaussians(corr_vae, X_CORR, steps=500)
    # The KL(q || p)-optimal diagonal Gaussian of a Gaussian posterior: its mean, and
    # variances 1 / Lambda_ii. Stochastic gradients (16 particles) leave the last iterate
    # 0.005-0.02 from the mean and 1-3% from the scale over seeds, which costs the ELBO
    # under 0.002 nats (0.5 d' Lambda d and ~rel. error^2 per dimension).
    np.testing.assert_allclose(loc.numpy(), mean.numpy(), atol=0.04)
    np.testing.assert_allclose(scale.numpy(), (1 / precision.diag().sqrt()).expand(2, -1).numpy(), rtol=0.05)


def test_gaps_match_their_closed_forms(corr_vae):
    mean, cov, precision, log_px = closed_form(W_CORR, B_CORR, S, X_CORR)
    gaps = inference_gaps(corr_vae, X_CORR, index=[5, 6], num_samples=20_000, elbo_samples=4000)
    # Approximation gap: KL(best diagonal Gaussian || p) = (sum log Lambda_ii - log det Lambda) / 2.
    approx = float(0.5 * (precision.diag().log().sum() - torch.logdet(precision)))
    # Amortization gap: KL(q_amortized || p) - KL(q* || p), q* = N(mean, diag 1/Lambda_ii).
    loc, scale = corr_vae.encode(X_CORR)
    q_star_sd = (1 / precision.diag().sqrt()).expand(2, -1)
    amort = gaussian_kl_closed(loc, scale, mean, cov) - gaussian_kl_closed(mean, q_star_sd, mean, cov)
    # Each within 4 of its Monte Carlo SE (~0.01 with 4000 draws), plus 0.01 for the optimiser.
    tol = 0.01
    np.testing.assert_array_less(np.abs(gaps.log_px - log_px.numpy()), 4 * gaps.log_px_se + 1e-4)
    np.testing.assert_array_less(np.abs(gaps.approximation_gap - approx), 4 * gaps.approximation_gap_se + tol)
    np.testing.assert_array_less(
        np.abs(gaps.amortization_gap - amort.detach().numpy()), 4 * gaps.amortization_gap_se + tol
    )
    assert gaps.index.tolist() == [5, 6]
    summary = gaps.mean()
    assert summary["num_points"] == 2 and math.isclose(summary["approximation_gap"], gaps.approximation_gap.mean())


def test_gaps_are_non_negative_for_a_trained_nonlinear_vae(tiny_binary):
    from pyro_vae.model.build import build_vae

    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    fit(vae, tiny_binary, config=TrainConfig(epochs=30, batch_size=32, lr=0.01), progress=False)
    x = tiny_binary[:12]
    gaps = inference_gaps(vae, x, num_samples=4000, elbo_samples=2000, steps=300)
    # Non-negative in expectation; each estimate within 3 of its SE of >= 0.
    assert (gaps.approximation_gap > -3 * gaps.approximation_gap_se).all(), gaps.table()
    assert (gaps.amortization_gap > -3 * gaps.amortization_gap_se).all(), gaps.table()
    assert (gaps.elbo_local > gaps.elbo_amortized - 3 * gaps.amortization_gap_se).all()
    assert np.isfinite(gaps.log_px).all() and (gaps.log_px_ess > 100).all()

    # ...and not zero: a 2-D diagonal Gaussian cannot fit these posteriors, so the mean
    # approximation gap over the 12 points (about 0.17 nats here) exceeds 5 of its SE
    # (sqrt(sum se^2) / 12, ~0.005); gaps that are always 0 fail. So does the whole
    # inference gap log p(x) - ELBO(amortized) (the amortization gap has its closed-form
    # test above).
    def mean_and_se(values, ses):
        return float(values.mean()), float(np.sqrt((ses**2).sum()) / len(values))

    approx, approx_se = mean_and_se(gaps.approximation_gap, gaps.approximation_gap_se)
    assert approx > 5 * approx_se, (approx, approx_se)
    inference, inference_se = mean_and_se(
        gaps.log_px - gaps.elbo_amortized, np.hypot(gaps.log_px_se, gaps.elbo_amortized_se)
    )
    assert inference > 5 * inference_se, (inference, inference_se)


def test_trained_amortized_guide_recovers_the_closed_form_posterior():
    # W with orthogonal columns: the posterior covariance is diagonal, so a diagonal
    # guide can match it exactly; only the encoder is trained, the decoder is the truth.
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    w = q[:, :2] @ torch.diag(torch.tensor([2.0, 1.0]))
    b = 0.5 * torch.randn(5, generator=g)
    vae = ppca_vae(w, b, S)
    x = torch.randn(500, 2, generator=g) @ w.T + b + S * torch.randn(500, 5, generator=g)
    params = [*vae.encoder.parameters(), *vae.variational.parameters()]
    history: list = []
    for lr, epochs in ((0.05, 300), (0.005, 500)):  # a fast phase, then a quiet one
        config = TrainConfig(epochs=epochs, batch_size=500, lr=lr, particles=16, elbo="meanfield")
        history = fit(vae, x, config=config, optimizer=torch.optim.Adam(params, lr=lr), history=history, progress=False)
    mean, cov, _, _ = closed_form(w, b, S, x[:100])
    loc, scale = (t.detach() for t in vae.encode(x[:100]))
    sd = cov.diag().sqrt()  # (0.24, 0.45)
    # 500 training points leave the learned linear map a little off: within 0.06 (a quarter
    # of the smaller posterior sd) for the mean and 10% for sigma.
    assert (loc - mean).abs().max() < 0.06
    assert ((scale - sd) / sd).abs().max() < 0.10


# -------------------------------------------------------------------- comparison, ArviZ
def test_compare_table_and_gaussian_kl(corr_vae, corr_nuts):
    guide = guide_posterior(corr_vae, X_CORR, 1000, index=[3, 7])
    table = compare_posteriors(guide, corr_nuts)
    assert list(table.index) == ["z[3, 0]", "z[3, 1]", "z[7, 0]", "z[7, 1]"]
    assert list(table.columns) == [
        "guide_mean",
        "guide_sd",
        "nuts_mean",
        "nuts_sd",
        "nuts_mcse_mean",
        "nuts_ess_bulk",
        "nuts_r_hat",
    ]
    assert table.dtypes.eq(float).all()  # raw numbers, not ArviZ's rounded display strings
    np.testing.assert_allclose(table["guide_mean"], guide.posterior.z.mean(("chain", "draw")).values.ravel(), atol=1e-6)
    mean, cov, _, _ = closed_form(W_CORR, B_CORR, S, X_CORR)
    loc, scale = corr_vae.encode(X_CORR)
    truth = gaussian_kl_closed(loc, scale, mean, cov).detach().numpy()  # 0.391 nats for each point
    kl = gaussian_kl(guide, corr_nuts)
    assert kl.dims == ("point",) and kl.point.values.tolist() == [3, 7]
    # The moment-matched KL from N_q guide and N_p reference draws has sd
    # sqrt(1.44 / N_q + 1.69 / N_p) for this posterior (measured over 600 seeds of
    # independent draws). NUTS's draws count by their effective number (bulk ESS, the
    # smallest of the point's two dimensions). The mean over the two points is compared,
    # within 4 of its SE (~0.12 nats at N_q = 4000, ESS ~ 1200): the KL in the wrong
    # direction, KL(p || q) = 0.201, is 0.19 away and fails.
    ess = az.ess(corr_nuts).z.min("latent").values  # (2,)
    se = np.sqrt(1.44 / 4000 + 1.69 / ess)  # per point
    mean_se = float(np.sqrt((se**2).sum()) / 2)
    assert abs(float(kl.values.mean() - truth.mean())) < 4 * mean_se, (kl.values, truth, mean_se)
    assert 4 * mean_se < float(truth.mean()) - 0.201  # the reverse direction lies outside


def _with_draws(data, z: np.ndarray):
    """A copy of ArviZ data whose posterior draws of z are ``z`` ``(chain, draw, point, latent)``."""
    copy = data.copy(deep=True) if ARVIZ_1 else data.copy()
    copy.posterior["z"].values[...] = z
    return copy


def test_kl_from_moments_is_nan_where_the_draws_do_not_span_the_latent():
    # Chains that hardly moved give a singular covariance: no Gaussian KL, and no LinAlgError.
    eye = np.eye(2)[None].repeat(2, 0)  # (2, 2, 2)
    flat = eye.copy()
    flat[1] = [[1.0, 1.0], [1.0, 1.0]]  # rank 1
    kl = kl_from_moments(np.zeros((2, 2)), eye, np.ones((2, 2)), flat)
    assert kl[0] == pytest.approx(1.0) and np.isnan(kl[1])


def test_gaussian_kl_is_kl_of_the_guide_from_the_posterior_in_closed_form(corr_vae):
    """Exact draws on both sides: 20,000 from the guide and 20,000 from the closed-form
    posterior, so the moment-matched KL must equal KL(q || p) to within its SE."""
    n_chains, n_draws = 4, 5000
    guide = guide_posterior(corr_vae, X_CORR, n_draws, num_chains=n_chains, index=[3, 7])
    mean, cov, _, _ = closed_form(W_CORR, B_CORR, S, X_CORR)
    g = torch.Generator().manual_seed(7)
    exact = mean + torch.randn(n_chains, n_draws, 2, 2, generator=g) @ torch.linalg.cholesky(cov).T  # (C, D, B, 2)
    reference = _with_draws(guide, exact.numpy())
    kl = gaussian_kl(guide, reference).values  # (2,)
    loc, scale = corr_vae.encode(X_CORR)
    truth = gaussian_kl_closed(loc, scale, mean, cov).detach().numpy()  # KL(q || p) = 0.391
    reverse = (
        0.5
        * (  # KL(p || q) = 0.201: q diagonal with variances scale^2
            (cov.diag() / scale**2).sum(-1)
            + (((mean - loc) / scale) ** 2).sum(-1)
            - 2
            + 2 * scale.log().sum(-1)
            - torch.logdet(cov)
        )
        .detach()
        .numpy()
    )
    # sd of the estimate: sqrt(1.44 / 20000 + 1.69 / 20000) = 0.0125 nats (see above);
    # tolerance 4 SE = 0.05. The reverse direction is 15 SE away.
    se = math.sqrt(1.44 / 20_000 + 1.69 / 20_000)
    np.testing.assert_array_less(np.abs(kl - truth), 4 * se)
    assert (np.abs(reverse - truth) > 10 * se).all(), (truth, reverse)
    # The same draws on both sides: exactly zero.
    np.testing.assert_allclose(gaussian_kl(guide, guide).values, 0.0, atol=1e-9)


# ------------------------------------------------------- ArviZ calls, on the line installed
def test_arviz_summary_ess_and_rhat(corr_guide, corr_nuts):
    labels = ["z[3, 0]", "z[3, 1]", "z[7, 0]", "z[7, 1]"]
    for data in (corr_guide, corr_nuts):
        summary = az.summary(data)
        assert list(summary.index) == labels
        assert {"mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"} <= set(summary.columns)
        ess, rhat = az.ess(data).z, az.rhat(data).z
        assert ess.dims == rhat.dims == ("point", "latent")
        assert (rhat.values < 1.02).all(), rhat.values
    # The guide's 1200 draws are independent: bulk ESS near 1200 (its sampling sd is ~5%).
    ess = az.ess(corr_guide).z.values
    assert ((ess > 900) & (ess < 1600)).all(), ess


@OLD_MATPLOTLIB_CALLS
def test_arviz_posterior_predictive_check_plot(corr_nuts, tmp_path):
    one = corr_nuts.sel(point=7)  # the four features of row 7 against 50 draws of p(x|z)
    if ARVIZ_1:
        pc = az.plot_ppc_dist(one, num_samples=50)
        assert pc.viz["predictive_dist"]["x"].sizes["sample"] == 50
        assert pc.viz["observed_dist"]["x"].item() is not None
        pc.savefig(tmp_path / "ppc.png")
    else:
        ax = az.plot_ppc(one, num_pp_samples=50)
        drawn = [line for line in ax.get_lines() if len(line.get_xdata())]  # less the legend's empty proxy
        assert len(drawn) == 52  # 50 predictive draws, the observed data, the predictive mean
        ax.figure.savefig(tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").read_bytes()[:4] == PNG


@OLD_MATPLOTLIB_CALLS
def test_arviz_energy_plot_and_bfmi(corr_nuts, tmp_path):
    one = corr_nuts.sel(point=7)
    bfmi = np.asarray(az.bfmi(one).energy.values if ARVIZ_1 else az.bfmi(one))
    assert bfmi.shape == (4,) and (bfmi > 0.3).all(), bfmi  # one per chain, none low
    if ARVIZ_1:
        pc = az.plot_energy(one)
        assert list(pc.viz["dist"]["energy"].values) == ["marginal", "transition"]
        pc.savefig(tmp_path / "energy.png")
    else:
        ax = az.plot_energy(one)
        assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["Marginal Energy", "Energy transition"]
        ax.figure.savefig(tmp_path / "energy.png")
    assert (tmp_path / "energy.png").read_bytes()[:4] == PNG


@OLD_MATPLOTLIB_CALLS
def test_arviz_pair_plot_shows_the_divergences_of_one_point(corr_nuts, tmp_path):
    # The PPCA has no divergences; mark five draws of row 7 as divergent to see them plotted.
    data = corr_nuts.copy(deep=True) if ARVIZ_1 else corr_nuts.copy()
    data.sample_stats["diverging"].values[0, :5, 1] = True  # (chain, draw, point): row 7 is the second
    one = data.sel(point=7)  # every group, sample_stats included, at row 7
    assert one.sample_stats.diverging.dims == ("chain", "draw")
    if ARVIZ_1:
        pc = az.plot_pair(one, var_names=["z"], visuals={"divergence": True})
        ax = pc.viz["plot"].values[1, 0]  # z[7, 1] against z[7, 0]
        # Per chain, a scatter of the draws, then one of its divergent draws (in another colour).
        assert sum(len(c.get_offsets()) for c in ax.collections) == 1200 + 5
        pc.savefig(tmp_path / "pair.png")
    else:
        ax = az.plot_pair(one, var_names=["z"], divergences=True)
        assert [len(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "o"] == [5]
        ax.figure.savefig(tmp_path / "pair.png")
    assert (tmp_path / "pair.png").read_bytes()[:4] == PNG


@OLD_MATPLOTLIB_CALLS
def test_arviz_forest_plot_of_guide_against_nuts(corr_guide, corr_nuts, tmp_path):
    if ARVIZ_1:
        pc = az.plot_forest({"guide": corr_guide, "NUTS": corr_nuts}, var_names=["z"], combined=True)
        interval = pc.viz["twig"]["z"]  # one 94% interval line per model, point and latent dimension
        assert interval.model.values.tolist() == ["guide", "NUTS"]
        assert dict(interval.sizes) == {"model": 2, "point": 2, "latent": 2}
        pc.savefig(tmp_path / "forest.png")
    else:
        axes = az.plot_forest([corr_guide, corr_nuts], model_names=["guide", "NUTS"], var_names=["z"], combined=True)
        assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["NUTS", "guide"]
        axes[0].figure.savefig(tmp_path / "forest.png")
    assert (tmp_path / "forest.png").read_bytes()[:4] == PNG


def test_arviz_concatenates_guide_and_reference_draws(corr_guide, corr_nuts):
    # The sampler's statistics belong to the reference alone: drop them, then put the
    # reference's chains after the guide's (observed and constant data are shared).
    if ARVIZ_1:
        reference = corr_nuts.drop_nodes("sample_stats")
        both = xr.concat([corr_guide, reference], dim="chain", data_vars="minimal")
    else:
        reference = corr_nuts.copy()
        del reference.sample_stats
        both = az.concat(corr_guide, reference, dim="chain")
    assert groups(both) == DRAW_GROUPS | DATA_GROUPS
    for name in DRAW_GROUPS:
        joint = group(both, name)
        assert joint.sizes["chain"] == 8
        for chains, source in ((slice(0, 4), corr_guide), (slice(4, 8), reference)):
            xr.testing.assert_equal(joint.isel(chain=chains).drop_vars("chain"), group(source, name).drop_vars("chain"))
    assert dict(both.observed_data.sizes) == {"point": 2, "feature": 4}
    assert az.summary(both).shape[0] == 4


def test_arviz_netcdf_round_trip_keeps_every_group(corr_nuts, tmp_path):
    path = tmp_path / "nuts.nc"
    corr_nuts.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert isinstance(back, xr.DataTree if ARVIZ_1 else az.InferenceData)
    assert groups(back) == groups(corr_nuts) == DRAW_GROUPS | DATA_GROUPS | {"sample_stats"}
    for name in groups(corr_nuts):
        xr.testing.assert_identical(group(back, name), group(corr_nuts, name))
    assert back.attrs["inference"] == corr_nuts.attrs["inference"]
    assert list(back.attrs["sample_dims"]) == ["chain", "draw"]


def test_figures_show_the_draws_they_are_given(corr_guide, corr_nuts, tmp_path, monkeypatch):
    from matplotlib.patches import Ellipse

    from pyro_vae.posterior import plots

    drawn = []
    real_save = plots.save_png
    monkeypatch.setattr(plots, "save_png", lambda fig, path, **kw: (drawn.append(fig), real_save(fig, path, **kw)))
    guide = corr_guide
    draws = {
        name: d.posterior.z.values.reshape(-1, 2, 2) for name, d in (("guide", guide), ("NUTS", corr_nuts))
    }  # (N, B, D)
    plot_marginals([guide, corr_nuts], ["guide", "NUTS"], tmp_path / "m.png")
    plot_forest([guide, corr_nuts], ["guide", "NUTS"], tmp_path / "f.png")
    plot_latent_ellipses(guide, corr_nuts, tmp_path / "l.png")
    for name in ("m.png", "f.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:4] == PNG
    marginals, forest, ellipses = drawn

    # Marginals: one panel per point and dimension, two histograms (filled and outline)
    # per posterior in each.
    panels = marginals.axes
    assert [ax.get_title() for ax in panels] == ["z[3, 0]", "z[3, 1]", "z[7, 0]", "z[7, 1]"]
    assert all(len(ax.patches) == 4 for ax in panels)
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == ["guide", "NUTS"]

    # Forest: per posterior and row, the median as a marker, and two interval lines.
    (ax,) = forest.axes
    medians = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(medians) == 8 and len(ax.collections) == 16
    for k, line in enumerate(medians):  # guide's four rows, then NUTS's
        name, (b, j) = ("guide", "NUTS")[k // 4], divmod(k % 4, 2)
        assert line.get_xdata()[0] == pytest.approx(float(np.median(draws[name][:, b, j])), rel=1e-6)

    # Latent ellipses: per point, the reference's draws, the guide's 1- and 2-sigma
    # ellipses around mu with half-axes k sigma, and mu itself.
    assert len(ellipses.axes) == 2
    mu, sigma = guide.constant_data["mu"].values, guide.constant_data["sigma"].values  # (B, 2)
    for b, ax in enumerate(ellipses.axes):
        (points,) = ax.collections
        np.testing.assert_allclose(points.get_offsets(), draws["NUTS"][:, b], rtol=1e-6)
        patches = [p for p in ax.patches if isinstance(p, Ellipse)]
        np.testing.assert_allclose(
            [(p.width, p.height) for p in patches], [2 * k * sigma[b] for k in (1, 2)], rtol=1e-6
        )
        assert all(p.center == pytest.approx(tuple(mu[b])) for p in patches)

    three = ppca_vae(torch.randn(4, 3), torch.zeros(4), S)
    g3 = guide_posterior(three, X_CORR[:1], 20)
    with pytest.raises(DataError, match="2-D latent"):
        plot_latent_ellipses(g3, g3, tmp_path / "x.png")


# ------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    from pyro_vae.runs.train import train_run

    config = RunConfig(model=ModelConfig(z_dim=2, hidden=(16,)), train=TrainConfig(epochs=2))
    return train_run(config, tmp_path_factory.mktemp("runs") / "run", progress=False).run_dir


def test_cli_inspect_writes_arviz_files_tables_and_figures(digits_run, capsys):
    args = [
        "inspect",
        str(digits_run),
        "--index",
        "0",
        "4",
        "--method",
        "sir",
        "--samples",
        "40",
        "--chains",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "guide_mean" in out and "sir_mean" in out and "approximation_gap" in out
    assert "sir_pareto_k" in out and "sir_r_hat" not in out  # the weights' figures, not the draws'
    # A model trained for 2 epochs has a poor guide: if the weights say so, one line says it.
    verdicts = [line for line in err.splitlines() if "importance resampling" in line]
    prefix = "pyro-vae: warning: importance resampling from the guide is unreliable"
    assert all(line.startswith(prefix) for line in verdicts)
    assert "Traceback" not in err
    folder = digits_run / "inspect"
    for name in ("guide.nc", "sir.nc", "summary.csv", "points.csv", "marginals.png", "forest.png", "latent.png"):
        assert (folder / name).is_file(), name
    # The seed diagram's point clouds for the chosen rows (2-D latent): a PNG of real size.
    assert (folder / "clouds.png").read_bytes()[:4] == PNG and (folder / "clouds.png").stat().st_size > 10_000
    guide = az.from_netcdf(str(folder / "guide.nc"))
    assert groups(guide) == DRAW_GROUPS | DATA_GROUPS
    assert dict(guide.posterior.z.sizes) == {"chain": 2, "draw": 40, "point": 2, "latent": 2}
    assert dict(guide.posterior_predictive.x.sizes) == {"chain": 2, "draw": 40, "point": 2, "feature": 64}
    assert set(np.unique(guide.observed_data.x.values)) <= {0.0, 1.0}  # binarized, as in training

    # A second run does not overwrite without being asked to.
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    # With --overwrite and --mcmc, NUTS replaces importance resampling (no stale sir.nc).
    mcmc = [
        "inspect",
        str(digits_run),
        "--index",
        "3",
        "--mcmc",
        "--samples",
        "20",
        "--warmup",
        "20",
        "--chains",
        "2",
        "--overwrite",
        "--no-progress",
    ]
    assert main(mcmc) == 0
    out = capsys.readouterr().out
    assert "NUTS" in out and "s per data point" in out and "nuts_r_hat" in out
    assert (folder / "nuts.nc").is_file() and not (folder / "sir.nc").exists()
    nuts = az.from_netcdf(str(folder / "nuts.nc"))
    assert set(nuts.sample_stats.data_vars) == NUTS_STATS


def test_cli_inspect_rejects_bad_indices_and_counts(digits_run, capsys, tmp_path):
    base = ["inspect", str(digits_run), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--index", "100000"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(base + ["--index", "-1"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(base + ["--index", "2", "2"]) == 2
    assert "repeats" in capsys.readouterr().err
    assert main(base + ["--index", "2", "--samples", "0"]) == 2
    assert "--samples" in capsys.readouterr().err
    assert main(base + ["--index", "2", "--split", "test"]) == 2  # digits has no test split
    assert "no test split" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_example_runs_in_smoke_mode(tmp_path):
    # One intra-op thread, as in the rest of this file: the smoke run's tensors are tiny.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "inspect_with_arviz.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "guide_mean" in proc.stdout and "amortization_gap" in proc.stdout
    assert (tmp_path / "inspect" / "latent.png").is_file()


def test_gaps_benchmark_runs_in_smoke_mode(tmp_path):
    import json

    out = tmp_path / "gaps.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gaps.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["gaps"]["num_points"] == 20 and "approximation_gap" in report["gaps"]["mean"]
    assert report["nuts"]["seconds_per_point"] > 0 and len(report["nuts"]["summary_table"]) == 4
