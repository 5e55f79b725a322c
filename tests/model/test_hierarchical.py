"""The two-layer VAE (z2 -> z1 -> x): sites, gradients, bounds, save/load, every prior and guide."""

from __future__ import annotations

import itertools

import pytest
import torch
from pyro import poutine

from pyro_vae import ConfigError, ModelConfig, RunConfig, TrainConfig, build_vae, load_run, train_run
from pyro_vae.inference.bounds import elbo_per_datum, iwae_per_datum, log_weights
from pyro_vae.inference.objectives import TraceELBO
from pyro_vae.model.build import GUIDES, PRIORS
from pyro_vae.model.hierarchical import TOP_SITE, HierarchicalVAE
from pyro_vae.model.vae import LATENT_SITE

CASES = [(p, g) for p, g in itertools.product(PRIORS, GUIDES) if p != "vamp"]


def config(prior: str = "normal", guide: str = "diagonal") -> ModelConfig:
    return ModelConfig(
        x_dim=6,
        z_dim=3,
        hidden=(8,),
        activation="tanh",
        prior=prior,
        guide=guide,
        top_dim=2,
        top_hidden=(5,),
        prior_components=3,
    )


@pytest.mark.uses_param_store  # poutine.trace of the programs, in Pyro's default mode
@pytest.mark.parametrize("prior,guide", CASES, ids=["-".join(c) for c in CASES])
def test_contract(prior, guide, tiny_binary, tmp_path):
    vae = build_vae(config(prior, guide))
    assert isinstance(vae, HierarchicalVAE) and vae.prior.z_dim == 2 and vae.z_dim == 3
    x = tiny_binary[:10]
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    latents = {n for n, s in model_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"}
    assert latents == {LATENT_SITE, TOP_SITE}
    assert guide_tr.nodes[LATENT_SITE]["value"].shape == (10, 3) and guide_tr.nodes[TOP_SITE]["value"].shape == (10, 2)
    loss = TraceELBO(particles=2).loss(vae, x, num_data=40)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    # The bounds sum both layers; IWAE >= ELBO per point on the same draws.
    log_w = log_weights(vae, x, 20)
    assert (iwae_per_datum(log_w) >= elbo_per_datum(log_w) - 1e-5).all()
    assert vae.sample_latent((4,)).shape == (4, 3) and vae.decode(vae.sample_latent((4,))).batch_shape == (4,)


def test_refused_combinations():
    with pytest.raises(ConfigError, match="`top_dim`"):
        build_vae(ModelConfig(x_dim=6, top_dim=2, prior="vamp"))
    with pytest.raises(ConfigError, match="`top_dim`"):
        build_vae(ModelConfig(x_dim=6, top_dim=2, condition="labels", num_classes=3))


def test_a_two_layer_run_saves_and_loads(tmp_path):
    run = train_run(
        RunConfig(model=ModelConfig(z_dim=4, hidden=(16,), top_dim=2, top_hidden=(8,)), train=TrainConfig(epochs=2)),
        tmp_path / "run",
        progress=False,
    )
    _, loaded = load_run(run.run_dir)
    x = torch.bernoulli(torch.full((3, 64), 0.3))
    for a, b in zip(run.vae.encode(x), loaded.encode(x), strict=True):
        assert torch.equal(a, b)
