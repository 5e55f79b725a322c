"""Grid quadrature of p(z|x) for a small latent, against closed forms.

Ground truth is probabilistic PCA, a VAE with a linear decoder: z ~ N(0, I),
x | z ~ N(W z + b, s^2 I). Its posterior is Gaussian with precision
Lambda = I + W^T W / s^2 and mean Lambda^-1 W^T (x - b) / s^2, p(x) = N(b, W W^T + s^2 I),
and KL(q || p(z|x)) of a diagonal Gaussian guide has a closed form too. The trapezoidal
rule on a smooth density that has decayed at the box's edges converges faster than any
power of the spacing, so in float64 the quadrature must agree to far better than its
default ``tol`` (1e-3): the tests ask for 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import MLP, VAE, ConfigError, ModelConfig, NormalLikelihood, build_vae
from pyro_vae.inference.bounds import guide_log_density
from pyro_vae.inference.quadrature import GridBoxes, grid_nodes, posterior_quadrature
from pyro_vae.model.nn import SCALE_FLOOR


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: extra threads only add synchronisation on a busy shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def ppca(w: torch.Tensor, b: torch.Tensor, s: float, guide_loc: torch.Tensor, guide_sd: torch.Tensor) -> VAE:
    """PPCA as a VAE (float64), with a guide that ignores x: N(guide_loc, diag guide_sd^2)."""
    x_dim, z_dim = w.shape
    vae = VAE(MLP(x_dim, []), MLP(z_dim, []), NormalLikelihood(z_dim, x_dim), z_dim=z_dim).double()
    with torch.no_grad():
        vae.likelihood.loc.weight.copy_(w)
        vae.likelihood.loc.bias.copy_(b)
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(s - SCALE_FLOOR)))
        vae.variational.loc.weight.zero_()
        vae.variational.loc.bias.copy_(guide_loc)
        vae.variational.raw_scale.weight.zero_()
        vae.variational.raw_scale.bias.copy_(torch.log(torch.expm1(guide_sd - SCALE_FLOOR)))
    return vae


def closed_form(w, b, s, x, guide_loc, guide_sd):
    """Posterior mean (B, Z), covariance (Z, Z), log p(x) (B,) and KL(q || p(z|x)) (B,)."""
    precision = torch.eye(w.shape[1], dtype=w.dtype) + w.T @ w / s**2
    cov = torch.linalg.inv(precision)
    mean = (x - b) @ w @ cov.T / s**2
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(w.shape[0], dtype=w.dtype))
    diff = mean - guide_loc  # (B, Z)
    kl = 0.5 * (
        (precision.diag() * guide_sd**2).sum()
        + torch.einsum("bi,ij,bj->b", diff, precision, diff)
        - w.shape[1]
        - torch.logdet(precision)
        - 2 * guide_sd.log().sum()
    )
    return mean, cov, marginal.log_prob(x), kl


W2 = torch.tensor([[1.0, 0.5], [0.3, -1.0], [0.8, 0.8], [0.0, 0.4]], dtype=torch.float64)  # correlated posterior
B4 = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
X4 = torch.tensor([[1.0, 0.5, -0.3, 0.2], [-0.5, 1.2, 0.4, -0.8], [3.0, -2.0, 2.5, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("w", "guide_loc", "guide_sd"),
    [
        (W2, torch.tensor([0.2, -0.1]), torch.tensor([0.5, 0.3])),  # 2-D: a guide near the posterior
        (W2[:, :1], torch.tensor([0.3]), torch.tensor([0.4])),  # 1-D latent
        # The guide sits 40 sds from every posterior: the first box (guide's and prior's) still holds it.
        (W2, torch.tensor([12.0, -12.0]), torch.tensor([0.3, 0.3])),
    ],
    ids=["2d", "1d", "guide-far-off"],
)
def test_quadrature_matches_the_closed_form(w, guide_loc, guide_sd):
    guide_loc, guide_sd = guide_loc.double(), guide_sd.double()
    vae = ppca(w, B4, 0.5, guide_loc, guide_sd)
    exact = posterior_quadrature(vae, X4, tol=1e-8)
    mean, cov, log_px, kl = closed_form(w, B4, 0.5, X4, guide_loc, guide_sd)
    tol = 1e-6
    torch.testing.assert_close(exact.log_marginal, log_px, atol=tol, rtol=0)
    torch.testing.assert_close(exact.mean, mean, atol=tol, rtol=0)
    torch.testing.assert_close(exact.cov, cov.expand_as(exact.cov), atol=tol, rtol=0)
    torch.testing.assert_close(exact.kl, kl, atol=tol, rtol=tol)
    torch.testing.assert_close(exact.elbo, log_px - kl, atol=tol, rtol=tol)  # KL = log p(x) - ELBO
    assert (exact.error < 1e-8).all()
    assert exact.mean.dtype == torch.float64 and exact.cov.shape == (3, w.shape[1], w.shape[1])


def test_default_tolerance_is_met_and_float32_models_work():
    # The default tol (1e-3) in float32: errors of that size, not more.
    vae = ppca(
        W2, B4, 0.5, torch.tensor([0.2, -0.1], dtype=torch.float64), torch.tensor([0.5, 0.3], dtype=torch.float64)
    )
    mean, cov, log_px, kl = closed_form(
        W2, B4, 0.5, X4, torch.tensor([0.2, -0.1], dtype=torch.float64), torch.tensor([0.5, 0.3], dtype=torch.float64)
    )
    exact = posterior_quadrature(vae.float(), X4.float())
    assert (exact.error < 1e-3).all()
    sd = cov.diag().sqrt()
    assert ((exact.log_marginal - log_px).abs() < 1e-3).all()
    assert ((exact.mean - mean).abs() / sd < 1e-3).all()
    assert ((exact.sd - sd).abs() / sd < 1e-3).all()
    assert ((exact.kl - kl).abs() < 1e-3).all()


def test_nonlinear_model_kl_is_the_gap_and_memory_chunks_change_nothing():
    # A trained-looking non-linear model: the ELBO is below log p(x) (KL >= 0), and
    # integrating with a tiny memory budget (many passes) gives the same numbers.
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), activation="tanh"))
    x = torch.bernoulli(torch.full((4, 6), 0.5), generator=torch.Generator().manual_seed(1))
    exact = posterior_quadrature(vae, x)
    assert (exact.kl >= 0).all() and (exact.elbo <= exact.log_marginal).all()
    assert (exact.error < 1e-3).all() and torch.isfinite(exact.log_marginal).all()
    small = posterior_quadrature(vae, x, max_elements=5000)
    torch.testing.assert_close(small.log_marginal, exact.log_marginal, atol=1e-5, rtol=0)
    torch.testing.assert_close(small.mean, exact.mean, atol=1e-5, rtol=0)


def test_guide_log_density_is_the_guides_own_normal():
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    x = torch.rand(3, 6)
    z = torch.randn(5, 3, 2)
    loc, scale = vae.encode(x)
    expected = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)  # (5, 3)
    torch.testing.assert_close(guide_log_density(vae, z, x), expected)
    with pytest.raises(ConfigError, match=r"expected z of shape \(\.\.\., 3, 2\)"):
        guide_log_density(vae, torch.zeros(5, 2, 2), x)


def test_grid_nodes_weights_integrate_a_plane_exactly():
    # The trapezoid rule is exact for a linear function: the integral of 1 + z_0 over
    # [-1, 3] x [0, 2] (centre (1, 1), half-width (2, 1)) is 2 * (4 + 4) = 16.
    boxes = GridBoxes(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 1.0]]), torch.tensor([9]))
    z, log_w = grid_nodes(boxes, 9)  # (81, 1, 2), (81,)
    cell = (4 / 8) * (2 / 8)
    integral = (log_w.exp() * (1 + z[:, 0, 0])).sum() * cell
    assert integral.item() == pytest.approx(16.0)


def test_bad_arguments_say_what_to_do():
    three = build_vae(ModelConfig(x_dim=6, z_dim=3, hidden=(4,)))
    with pytest.raises(ConfigError, match=r"at most 2 dimensions, this model has z_dim=3: use `method` nuts or sir"):
        posterior_quadrature(three, torch.ones(1, 6))
    two = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    with pytest.raises(ConfigError, match="`tol` must be > 0, got 0"):
        posterior_quadrature(two, torch.ones(1, 6), tol=0)
    with pytest.raises(ConfigError, match="`max_nodes` must be >= 17, got 5"):
        posterior_quadrature(two, torch.ones(1, 6), max_nodes=5)
