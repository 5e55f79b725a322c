"""The grid's exact answers as ground truth for NUTS, importance resampling and the IWAE bound.

A small non-linear VAE (tanh decoder, Bernoulli likelihood, float64) whose posteriors are
not Gaussian in closed form: :func:`posterior_quadrature` gives log p(x), the ELBO and
the posterior mean and sd of each point to about 1e-4 (its error estimate; the
closed-form tests in tests/inference/test_quadrature.py show it is conservative), far
below the Monte Carlo errors here. Every sampler must agree with it within
``Z_MAX = 4`` standard errors: with about 50 comparisons per test, a correct sampler
fails one by chance with probability about 50 * 6e-5 = 3e-3 (and the seeds are fixed).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_vae import ConfigError, ModelConfig, build_vae
from pyro_vae.inference.bounds import collect_log_weights
from pyro_vae.inference.gaps import LogMarginal
from pyro_vae.inference.quadrature import grid_nodes, posterior_quadrature
from pyro_vae.posterior.grid import GridProposal, grid_posterior
from pyro_vae.posterior.samplers import exact_posterior, importance_posterior
from pyro_vae.posterior.schema import az

#: Largest disagreement allowed, in standard errors (see the module docstring).
Z_MAX = 4.0
#: Rows of x (the ``point`` coordinate).
INDEX = [10, 11, 12, 13]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: extra threads only add synchronisation on a busy shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    """The VAE, four binary inputs, and their quadrature (tol 1e-6)."""
    torch.manual_seed(3)
    vae = build_vae(ModelConfig(x_dim=8, z_dim=2, hidden=(8,), activation="tanh")).double()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.startswith(("decoder", "likelihood")):
                p.mul_(3.0)  # a decoder strong enough to make the posteriors narrower than the prior and skewed
        # A guide that ignores x and is wider than every posterior: importance weights stay bounded.
        vae.variational.loc.weight.zero_()
        vae.variational.loc.bias.zero_()
        vae.variational.raw_scale.weight.zero_()
        vae.variational.raw_scale.bias.fill_(math.log(math.expm1(1.5)))
    x = torch.bernoulli(torch.full((4, 8), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    return vae, x, posterior_quadrature(vae, x, tol=1e-6)


def moments(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sd and their Monte Carlo standard errors (ArviZ, from the bulk ESS), each ``(point, latent)``."""
    z = data.posterior.z
    mean = z.mean(("chain", "draw")).values
    sd = z.std(("chain", "draw")).values
    se_mean = az.mcse(data, var_names=["z"], method="mean").z.values
    se_sd = az.mcse(data, var_names=["z"], method="sd").z.values
    return mean, sd, se_mean, se_sd


def assert_matches_grid(data, exact, label: str) -> None:
    mean, sd, se_mean, se_sd = moments(data)
    z_mean = (mean - exact.mean.numpy()) / se_mean
    z_sd = (sd - exact.sd.numpy()) / se_sd
    assert np.abs(z_mean).max() < Z_MAX, f"{label}: mean off by {z_mean.round(1)} standard errors"
    assert np.abs(z_sd).max() < Z_MAX, f"{label}: sd off by {z_sd.round(1)} standard errors"


def test_posteriors_are_not_gaussian_shaped_like_the_guide(model):
    # The ground truth is worth having: posteriors narrower than the guide, correlated.
    vae, x, exact = model
    assert (exact.sd < 1.2).all() and (exact.kl > 0.3).all()
    corr = exact.cov[:, 0, 1] / exact.sd.prod(-1)
    assert corr.abs().max() > 0.2
    assert (exact.error < 1e-6).all()


def test_block_nuts_matches_the_grid(model):
    # All four points and their four chains in one product-space block (the default):
    # 4 x 300 draws per point (bulk ESS about 1000); MCSE from ArviZ.
    vae, x, exact = model
    data = exact_posterior(vae, x, 300, warmup_steps=150, num_chains=4, index=INDEX, seed=1)
    assert data.attrs["block_size"] == 4 and data.attrs["batch_chains"] == 1
    assert float(az.rhat(data, var_names=["z"]).z.max()) < 1.01
    assert int(data.sample_stats.diverging.sum()) == 0
    assert_matches_grid(data, exact, "block NUTS")
    # The per-point energy sums to the block's Hamiltonian: finite, one value per point.
    assert np.isfinite(data.sample_stats.energy.values).all()


def test_per_point_nuts_and_blocks_give_each_point_the_same_marginal(model):
    # The old algorithm (each point and chain alone) and blocks of two (chains batched
    # in, and chains run in turn): every layout agrees with the grid, so with each other.
    vae, x, exact = model
    layouts = {
        "per point": {"block_size": 1, "batch_chains": False},
        "blocks of 2, chains batched": {"block_size": 2, "batch_chains": True},
        "blocks of 2, chains in turn": {"block_size": 2, "batch_chains": False},
    }
    for label, layout in layouts.items():
        data = exact_posterior(vae, x[:2], 200, warmup_steps=100, num_chains=2, index=INDEX[:2], seed=2, **layout)
        assert data.attrs["block_size"] == layout["block_size"]
        half = type(exact)(**{**exact.__dict__, "mean": exact.mean[:2], "cov": exact.cov[:2]})
        assert_matches_grid(data, half, label)


def test_importance_resampling_matches_the_grid(model):
    # 20,000 proposals from the guide, 4 x 1000 resampled draws. The resampled mean's
    # standard error: sd * sqrt(1 / ESS_weights + 1 / draws) (the weights' own noise,
    # then the resampling's).
    vae, x, exact = model
    data = importance_posterior(vae, x, 1000, num_chains=4, num_proposals=20_000, index=INDEX, seed=3)
    ess = data.sample_stats.ess.values  # (point,)
    assert (ess > 2000).all() and (data.sample_stats.pareto_k.values < 0.5).all()
    mean = data.posterior.z.mean(("chain", "draw")).values
    se = exact.sd.numpy() * np.sqrt(1 / ess[:, None] + 1 / 4000)
    assert np.abs((mean - exact.mean.numpy()) / se).max() < Z_MAX
    # log p(x) from the same weights.
    se_log_px = 1 / np.sqrt(ess)  # delta method: se of log(mean w) ~ sqrt(1 / ESS) for this spread of weights
    assert np.abs((data.sample_stats.log_marginal.values - exact.log_marginal.numpy()) / se_log_px).max() < Z_MAX


def test_iwae_bound_and_elbo_match_the_grid(model):
    # K = 20,000 draws of the guide per point: the IWAE estimate of log p(x) and the
    # Monte Carlo ELBO, each within Z_MAX of its own standard error of the exact values.
    # (The IWAE bias, about var(w) / (2 K mean(w)^2) = se^2 / 2, is far below its se.)
    vae, x, exact = model
    with torch.no_grad():
        lw = collect_log_weights(vae, x, 20_000)  # (K, B)
    iwae = LogMarginal.from_log_weights(lw)
    assert ((iwae.estimate - exact.log_marginal).abs() / iwae.se).max() < Z_MAX
    elbo, elbo_se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    assert ((elbo - exact.elbo).abs() / elbo_se).max() < Z_MAX
    # Their difference estimates the gap, KL(q || p(z|x)): the grid's, within both errors.
    gap_se = (iwae.se**2 + elbo_se**2).sqrt()
    assert (((iwae.estimate - elbo) - exact.kl).abs() / gap_se).max() < Z_MAX


def test_grid_posterior_draws_and_exact_values(model):
    vae, x, exact = model
    data = grid_posterior(vae, x, 500, num_chains=4, index=INDEX, seed=4, exact=exact)
    stats = data.sample_stats
    np.testing.assert_allclose(stats.log_marginal.values, exact.log_marginal.numpy())
    np.testing.assert_allclose(stats.kl.values, exact.kl.numpy())
    np.testing.assert_allclose(stats.exact_mean.values, exact.mean.numpy())
    np.testing.assert_allclose(stats.exact_sd.values, exact.sd.numpy())
    # The grid's proposal is the posterior up to its cells: nearly even weights.
    assert (stats.pareto_k.values < 0.3).all() and (stats.ess.values > 0.8 * 4 * 2000).all()
    mean = data.posterior.z.mean(("chain", "draw")).values
    se = exact.sd.numpy() / math.sqrt(2000)  # 2000 draws resampled from 8000 near-even proposals
    assert np.abs((mean - exact.mean.numpy()) / se).max() < Z_MAX
    assert list(data.posterior.point.values) == INDEX


def test_grid_proposal_log_prob_is_a_density():
    # The piecewise-constant density integrates to 1 over its cells, and sample() draws from it.
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    x = torch.ones(2, 6)
    exact = posterior_quadrature(vae, x)
    boxes = exact.boxes
    z, _ = grid_nodes(boxes, 33, dtype=torch.float32)  # (N, 2, 2)
    log_mass = -((z - exact.mean.float()) ** 2).sum(-1).T  # (2, N): any masses
    q = GridProposal(log_mass, boxes, 33)
    draws = q.sample((4000,))  # (4000, 2, 2)
    assert draws.shape == (4000, 2, 2)
    lp = q.log_prob(draws)
    assert torch.isfinite(lp).all()
    cell = (2 * boxes.half_width / 32).prod(-1)  # (2,)
    total = (q.log_prob(z).exp() * cell).sum(0)  # (2,): one node per cell
    torch.testing.assert_close(total.double(), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)


def test_grid_posterior_needs_a_small_latent():
    vae = build_vae(ModelConfig(x_dim=6, z_dim=3, hidden=(4,)))
    with pytest.raises(ConfigError, match="z_dim=3"):
        grid_posterior(vae, torch.ones(1, 6), 10)
