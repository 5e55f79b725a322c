"""refine_per_point: per-point Gaussians beat the amortized guide, and the model is untouched."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    build_vae,
    fit,
    refine_per_point,
)


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
    # Both ELBOs use 2000 draws per point; a per-point SE is below ~0.05 nats here, so
    # the average over 32 points is known to ~0.01. The refined Gaussians start at the
    # amortized ones and climb: the average gap is >= 0 (tolerance 0.02 nats).
    assert float(fit_.gap.mean()) >= -0.02, fit_.gap
    assert float(fit_.gap.mean()) > 0.0


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
