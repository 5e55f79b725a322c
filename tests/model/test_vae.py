"""The VAE as a Pyro program: sites, shapes, gradients, the guide's moments, isolation."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae import (
    MLP,
    VAE,
    BernoulliLikelihood,
    DataError,
    ModelConfig,
    NormalLikelihood,
    TrainConfig,
    build_vae,
    fit,
)
from pyro_vae.model.vae import DATA_PLATE, LATENT_SITE, OBS_SITE


def small_vae(x_dim: int = 6, z_dim: int = 2, likelihood: str = "bernoulli") -> VAE:
    return build_vae(ModelConfig(x_dim=x_dim, z_dim=z_dim, hidden=(5,), likelihood=likelihood))


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_model_and_guide_share_the_latent_site_and_shapes(tiny_binary):
    vae = small_vae()
    x = tiny_binary[:7]
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    guide_latents = {
        n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != DATA_PLATE
    }
    model_latents = {
        n for n, s in model_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != DATA_PLATE
    }
    assert guide_latents == model_latents == {LATENT_SITE}
    assert guide_tr.nodes[LATENT_SITE]["value"].shape == (7, 2)
    assert model_tr.nodes[LATENT_SITE]["fn"].batch_shape == (7,)
    assert model_tr.nodes[LATENT_SITE]["fn"].event_shape == (2,)
    assert model_tr.nodes[OBS_SITE]["is_observed"]
    assert model_tr.nodes[OBS_SITE]["fn"].event_shape == (6,)
    assert torch.equal(model_tr.nodes[OBS_SITE]["value"], x)


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_minibatch_plate_scales_to_the_full_data_set(tiny_binary):
    vae = small_vae()
    x = tiny_binary[:8]
    tr = poutine.trace(vae.model).get_trace(x, num_data=64)
    assert tr.nodes[OBS_SITE]["scale"] == pytest.approx(64 / 8)
    assert poutine.trace(vae.model).get_trace(x).nodes[OBS_SITE]["scale"] == 1.0


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_two_sample_trace_elbo_is_finite_with_gradients_everywhere(tiny_binary):
    vae = small_vae()
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
        vae.model, vae.guide, tiny_binary
    )
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(vae.named_parameters())
    assert any(name.startswith("encoder.") for name in params) and any(name.startswith("decoder.") for name in params)
    for name, p in params.items():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_encode_returns_exactly_the_guides_parameters(tiny_binary):
    vae = small_vae()
    x = tiny_binary[:5]
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 2)
    fn = poutine.trace(vae.guide).get_trace(x).nodes[LATENT_SITE]["fn"]
    normal = fn.base_dist if hasattr(fn, "base_dist") else fn
    while hasattr(normal, "base_dist"):
        normal = normal.base_dist
    assert torch.equal(normal.loc, loc) and torch.equal(normal.scale, scale)
    # Different inputs give different posteriors: mu and sigma are per input.
    two = vae.encode(torch.tensor([[1.0, 1, 1, 0, 0, 0], [0.0, 0, 0, 1, 1, 1]]))
    assert not torch.allclose(two[0][0], two[0][1]) and not torch.allclose(two[1][0], two[1][1])


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_guide_samples_have_mean_mu_and_sd_sigma(tiny_binary):
    """20,000 guide draws for one input: mean and sd each within 5 s.e. of loc and scale.

    The s.e. of the mean is scale / sqrt(N) (0.71 % of scale at N = 20,000); the s.e. of
    the sample sd of normal draws is scale / sqrt(2 (N - 1)) (0.50 %), so the sd must be
    within 2.5 % of scale (a guide whose sd is off by 5 %, e.g. softplus without its
    floor or a variance taken for the sd near 1, fails).
    """
    vae = small_vae()
    # Train briefly so that mu and sigma are not at their initial values.
    fit(vae, tiny_binary, config=TrainConfig(epochs=20, batch_size=16, lr=1e-2), transform=None, progress=False)
    n = 20_000
    x = tiny_binary[:1]
    loc, scale = (t[0].detach() for t in vae.encode(x))
    with torch.no_grad():
        z = poutine.trace(vae.guide).get_trace(x.expand(n, -1)).nodes[LATENT_SITE]["value"]  # (n, 2)
    se = scale / math.sqrt(n)
    assert ((z.mean(0) - loc).abs() < 5 * se).all(), (z.mean(0), loc, se)
    sd_se = scale / math.sqrt(2 * (n - 1))
    assert ((z.std(0) - scale).abs() < 5 * sd_se).all(), (z.std(0), scale, sd_se)


def test_decode_gives_the_likelihood_per_z():
    vae = small_vae(likelihood="normal")
    d = vae.decode(torch.zeros(4, 3, 2))
    assert d.batch_shape == (4, 3) and d.event_shape == (6,)
    assert d.mean.shape == (4, 3, 6)
    with pytest.raises(DataError, match="latent dimensions"):
        vae.decode(torch.zeros(3, 5))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 7), r"expected x of shape \(batch, 6\), got \(3, 7\)"),
        (torch.zeros(6), r"got \(6,\)"),
    ],
)
def test_wrong_shape_is_a_clear_data_error(bad, match):
    with pytest.raises(DataError, match=match):
        small_vae().encode(bad)


def test_composing_parts_by_hand():
    vae = VAE(MLP(6, [4]), MLP(3, [4]), NormalLikelihood(4, 6), z_dim=3)
    loc, scale = vae.encode(torch.randn(2, 6))
    assert loc.shape == (2, 3) and (scale > 0).all()
    with pytest.raises(ValueError, match="z_dim"):
        VAE(MLP(6, [4]), MLP(3, [4]), BernoulliLikelihood(4, 6))


def test_two_vaes_in_one_process_share_no_parameters(tiny_binary):
    """Regression: Pyro's global param store must not tie two models of the same class."""
    a, b = small_vae(), small_vae()
    ids_a = {id(p) for p in a.parameters()}
    assert not ids_a & {id(p) for p in b.parameters()}
    before_b = {k: v.clone() for k, v in b.state_dict().items()}
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    fit(a, tiny_binary, config=TrainConfig(epochs=2, batch_size=16), progress=False)
    assert all(torch.equal(before_b[k], v) for k, v in b.state_dict().items()), "training a changed b"
    assert any(not torch.equal(before_a[k], v) for k, v in a.state_dict().items()), "training a changed nothing"
    assert len(pyro.get_param_store().keys()) == 0
