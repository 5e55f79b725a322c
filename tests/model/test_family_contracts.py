"""The conditional and semi-supervised families with every prior, guide and likelihood.

The same contract as the plain VAE's (tests/model/test_components.py) and the two-layer
VAE's (tests/model/test_hierarchical.py): the programs' sites and shapes, a gradient to
every parameter from the family's own objective, IWAE >= ELBO per point on the same
draws, and a round trip through config.json and the weights. A combination the package
refuses must say so in one ConfigError that names the conflict.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from pyro import poutine

from pyro_vae import ConfigError, build_vae
from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.inference.bounds import elbo_per_datum, iwae_per_datum, log_weights
from pyro_vae.inference.objectives import SemiSupervisedELBO, TraceELBO
from pyro_vae.model.build import GUIDES, LIKELIHOODS, PRIORS
from pyro_vae.model.vae import LATENT_SITE, OBS_SITE

FAMILIES = ("labels", "semisupervised")
# Every prior and guide with each family; the likelihoods with the default prior and guide.
CASES = [(f, p, g, "bernoulli") for f, p, g in itertools.product(FAMILIES, PRIORS, GUIDES)] + [
    (f, "normal", "diagonal", lik) for f, lik in itertools.product(FAMILIES, LIKELIHOODS) if lik != "bernoulli"
]


def _data(likelihood: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 6, generator=g)
    if likelihood == "bernoulli":
        return (x > 0.5).float()
    if likelihood in ("poisson", "negbin"):
        return torch.floor(5 * x)
    return x


@pytest.mark.uses_param_store  # poutine.trace of the programs, in Pyro's default mode
@pytest.mark.parametrize("family,prior,guide,likelihood", CASES, ids=["-".join(c) for c in CASES])
def test_contract(family, prior, guide, likelihood, tmp_path):
    config = ModelConfig(
        x_dim=6,
        z_dim=2,
        hidden=(8,),
        prior=prior,
        guide=guide,
        likelihood=likelihood,
        prior_components=3,
        condition=family,
        num_classes=3,
    )
    try:
        vae = build_vae(config)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and prior in message, message  # one line naming what conflicts
        return
    x = _data(likelihood)
    y = torch.tensor([0, 1, 2] * 4)
    if family == "semisupervised":
        y = torch.where(torch.arange(12) % 3 == 0, y, torch.full_like(y, -1))  # a third of the labels known
    guide_tr = poutine.trace(vae.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
    assert guide_tr.nodes[LATENT_SITE]["value"].shape == (12, 2)
    assert model_tr.nodes[OBS_SITE]["is_observed"]
    objective = SemiSupervisedELBO() if family == "semisupervised" else TraceELBO(particles=2)
    loss = objective.loss(vae, x, 24, y=y)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    # The bounds come from the same traces; IWAE >= ELBO per point on the same draws.
    log_w = log_weights(vae, x, 16, y=y)
    assert log_w.shape == (16, 12) and torch.isfinite(log_w).all()
    assert (iwae_per_datum(log_w) >= elbo_per_datum(log_w) - 1e-5).all()
    # Rebuilt from its config with its weights: the same densities.
    saved = json.loads(json.dumps(RunConfig(model=config).to_dict()))  # as config.json holds it
    twin = build_vae(RunConfig.from_dict(saved).model)
    twin.load_state_dict(vae.state_dict())
    with torch.no_grad():
        loc, scale = vae.encode(x, y)
        twin_loc, twin_scale = twin.encode(x, y)
    assert torch.equal(loc, twin_loc) and torch.equal(scale, twin_scale)
