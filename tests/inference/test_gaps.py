"""refine_per_point: per-point Gaussians beat the amortized guide, and the model is untouched."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import (
    MLP,
    VAE,
    ConfigError,
    ModelConfig,
    NormalLikelihood,
    TrainConfig,
    build_vae,
    fit,
    refine_per_point,
)
from pyro_vae.inference.bounds import collect_log_weights
from pyro_vae.inference.gaps import gaussian_log_weights
from pyro_vae.model.nn import SCALE_FLOOR


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: extra threads only add synchronisation on a busy shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def trained_vae(guide: str = "diagonal"):
    g = torch.Generator().manual_seed(1)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    x = (protos[torch.randint(0, 2, (64,), generator=g)] + (torch.rand(64, 6, generator=g) < 0.1).float()) % 2
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(16,), activation="tanh", guide=guide))
    # Few epochs: the encoder is still rough, so the per-point fit has room to improve.
    fit(vae, x, config=TrainConfig(epochs=10, batch_size=16, lr=1e-2), progress=False)
    return vae, x


def test_refined_elbo_beats_the_amortized_one_and_only_per_point_parameters_change():
    vae, x = trained_vae()
    vae.train()
    vae.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    rng = torch.get_rng_state()
    fit_ = refine_per_point(vae, x[:32], steps=200, lr=0.05, num_particles=8, eval_particles=2000)
    # The model: bit-identical weights, no .grad, flags and mode as they were.
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in vae.parameters())
    assert vae.training
    assert torch.equal(torch.get_rng_state(), rng)
    # Shapes: one row per data point.
    assert fit_.loc.shape == fit_.scale.shape == (32, 2) and bool((fit_.scale > 0).all())
    assert fit_.elbo.shape == fit_.amortized_elbo.shape == fit_.gap.shape == (32,)
    # The refined Gaussians start at the amortized ones and climb, so the average gap is
    # positive, and by more than noise: its standard error comes from the per-draw
    # spread of both sets of log-weights (2000 draws per point each, 32 points), and the
    # mean gap must exceed 5 of them (a refinement that does nothing gives 0 +- 1 SE).
    with torch.no_grad():
        local = gaussian_log_weights(vae, x[:32], fit_.loc, fit_.scale, 2000)  # (2000, 32)
        amortized = collect_log_weights(vae, x[:32], 2000)  # (2000, 32)
    se = math.sqrt(float((local.var(0) + amortized.var(0)).sum()) / 2000) / 32
    assert float(fit_.gap.mean()) > 5 * se, (fit_.gap, se)


def test_refinement_is_reproducible_and_starts_at_the_encoder():
    vae, x = trained_vae()
    a = refine_per_point(vae, x[:4], steps=20, eval_particles=50, seed=3)
    b = refine_per_point(vae, x[:4], steps=20, eval_particles=50, seed=3)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.elbo, b.elbo)
    start = refine_per_point(vae, x[:4], steps=1, lr=1e-8, eval_particles=50)
    loc, scale = vae.encode(x[:4])
    assert torch.allclose(start.loc, loc.detach(), atol=1e-6) and torch.allclose(start.scale, scale.detach(), atol=1e-6)


def test_refinement_works_for_any_guide_family():
    vae, x = trained_vae("fullcov")
    fit_ = refine_per_point(vae, x[:8], steps=20, eval_particles=100)
    assert fit_.loc.shape == (8, 2) and torch.isfinite(fit_.gap).all()


def test_refinement_rejects_bad_arguments():
    vae, x = trained_vae()
    with pytest.raises(ConfigError, match="`eval_particles` must be >= 1"):
        refine_per_point(vae, x, eval_particles=0)
    with pytest.raises(ConfigError, match="`steps` must be > 0"):
        refine_per_point(vae, x, steps=0)
    assert math.isfinite(float(refine_per_point(vae, x[:2], steps=1, eval_particles=2).elbo.sum()))


def test_refinement_closes_the_closed_form_amortization_gap():
    """Probabilistic PCA with orthogonal columns of W: the exact posterior is a diagonal
    Gaussian, so the best per-point Gaussian is the posterior itself and the amortization
    gap is KL(q_amortized || p(z|x)) in closed form."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    w = q[:, :2] @ torch.diag(torch.tensor([2.0, 1.0]))  # (5, 2), orthogonal columns
    b, s = 0.5 * torch.randn(5, generator=g), 0.5
    vae = VAE(MLP(5, []), MLP(2, []), NormalLikelihood(2, 5), z_dim=2)
    precision = torch.eye(2) + w.T @ w / s**2  # diagonal
    cov = torch.linalg.inv(precision)
    gain = cov @ w.T / s**2  # posterior mean = gain (x - b)
    # The amortized guide: the mean shifted by 0.3 and 1.5 times the posterior sd.
    guide_sd = 1.5 * cov.diag().sqrt()
    with torch.no_grad():
        vae.likelihood.loc.weight.copy_(w)
        vae.likelihood.loc.bias.copy_(b)
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(s - SCALE_FLOOR)))
        vae.variational.loc.weight.copy_(gain)
        vae.variational.loc.bias.copy_(-gain @ b + 0.3)
        vae.variational.raw_scale.weight.zero_()
        vae.variational.raw_scale.bias.copy_(torch.log(torch.expm1(guide_sd - SCALE_FLOOR)))
    x = torch.randn(4, 2, generator=g) @ w.T + b + s * torch.randn(4, 5, generator=g)
    fit_ = refine_per_point(vae, x, steps=400, eval_particles=4000)
    # KL(N(m + 0.3, (1.5 sd)^2) || N(m, sd^2)) per dimension: (2.25 - 1 - log 2.25) / 2 + 0.3^2 / (2 sd^2).
    sd = cov.diag().sqrt()
    truth = float((0.5 * (2.25 - 1 - math.log(2.25)) + 0.09 / (2 * sd**2)).sum())  # the same for every x
    with torch.no_grad():
        local = gaussian_log_weights(vae, x, fit_.loc, fit_.scale, 4000)  # (4000, 4)
        amortized = collect_log_weights(vae, x, 4000)  # (4000, 4)
    # Per point: s.e. sqrt((var_local + var_amortized) / 4000) (the local log-weights of the
    # exact posterior are constant, so this is ~0.01 nats); tolerance 4 s.e. plus 0.005
    # nats for the optimiser's last iterate (an ELBO loss second order in its error).
    se = ((local.var(0) + amortized.var(0)) / 4000).sqrt()  # (4,)
    assert truth > 0.5
    assert ((fit_.gap - truth).abs() < 4 * se + 0.005).all(), (fit_.gap, truth, se)
