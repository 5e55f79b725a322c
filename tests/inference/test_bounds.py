"""The bounds' plumbing that the estimates rest on: proposals, program arguments, errors.

Each test here closes a blind spot that mutation testing (``tools/mutation.py``) found
in ``pyro_vae/inference/bounds.py``: code that every estimate passes through, but that no
test of an estimate's value could tell from a broken version.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributions as td

from pyro_vae import ConfigError, ModelConfig, build_vae
from pyro_vae.inference.bounds import (
    _AsPyro,
    check_only_latent,
    collect_weighted,
    log_weight_terms,
    logmeanexp_chunks,
    other_latents,
    weighted_draws,
    weighted_passes,
)
from pyro_vae.model.hierarchical import TOP_SITE


def cvae():
    return build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), condition="labels", num_classes=3))


def test_a_plain_torch_proposal_is_used_as_given(tiny_binary):
    """A ``torch.distributions`` proposal replaces the guide: its draws, its exact log-density.

    Exact checks (same draws, no sampling error): the log-density the bounds count for
    the proposal is the proposal's own at the returned draws, and the draws come from
    the proposal (a location 50 away from anything the guide would produce).
    """
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    x = tiny_binary[:4]
    loc = torch.full((4, 2), 50.0)
    proposal = td.Independent(td.Normal(loc, torch.full((4, 2), 0.1)), 1)  # batch (4,), event (2,)
    draws = weighted_draws(vae, x, 3, proposal=proposal)
    assert draws.z.shape == (3, 4, 2)
    assert (draws.z - 50.0).abs().max() < 1.0  # 10 standard deviations of the proposal
    assert torch.allclose(draws.log_proposal, proposal.log_prob(draws.z), atol=1e-6)
    assert torch.allclose(draws.log_prior, vae.prior().log_prob(draws.z), atol=1e-5)


def test_the_torch_adapter_keeps_the_bases_shapes_draws_and_density():
    """``_AsPyro`` (a torch distribution seen through Pyro's interface) only delegates."""
    base = td.Independent(td.Normal(torch.zeros(4, 2), torch.ones(4, 2)), 1)
    adapted = _AsPyro(base)
    assert adapted.batch_shape == (4,) and adapted.event_shape == (2,)
    wide = adapted.expand(torch.Size((3, 4)))
    assert isinstance(wide, _AsPyro) and wide.batch_shape == (3, 4) and wide.event_shape == (2,)
    torch.manual_seed(0)
    a = adapted.sample(torch.Size((5,)))
    torch.manual_seed(0)
    assert torch.equal(a, base.sample(torch.Size((5,))))
    torch.manual_seed(0)
    b = adapted.rsample(torch.Size((5,)))
    torch.manual_seed(0)
    assert torch.equal(b, base.rsample(torch.Size((5,))))
    assert b.shape == (5, 4, 2)
    assert torch.equal(adapted.log_prob(a), base.log_prob(a))
    # A family without reparameterized draws: Pyro must see that too.
    discrete = _AsPyro(td.Independent(td.Bernoulli(torch.full((4, 2), 0.5)), 1))
    assert not discrete.has_rsample and discrete.sample(torch.Size((2,))).shape == (2, 4, 2)


def test_log_weight_terms_default_to_one_draw_and_pass_the_condition_on(tiny_binary):
    vae = cvae()
    x, y = tiny_binary[:5], torch.tensor([0, 1, 2, 0, 1])
    terms = log_weight_terms(vae, x, y=y)
    assert terms.reconstruction.shape == terms.latent.shape == (1, 5)
    torch.manual_seed(3)
    terms = log_weight_terms(vae, x, 4, y=y)
    torch.manual_seed(3)
    draws = weighted_draws(vae, x, 4, y=y)
    assert torch.allclose(terms.reconstruction + terms.latent, draws.log_weights, atol=1e-6)  # same draws


def test_passes_split_per_row_arguments_with_the_rows_and_pass_the_rest_whole(tiny_binary):
    """Labels (one per row) go with their rows; a scalar tensor (``beta``) goes to every pass.

    With one row per pass, the passes are exactly :func:`weighted_draws` on each row in
    turn from the same random state (same draws: the comparison is exact).
    """
    vae = cvae()
    x, y = tiny_binary[:5], torch.tensor([0, 1, 2, 0, 1])
    beta = torch.tensor(0.5)  # a 0-dim tensor: not one entry per row
    torch.manual_seed(7)
    passes = list(weighted_passes(vae, x, 3, plan=(1, 3), y=y, beta=beta, num_data=5))
    torch.manual_seed(7)
    expected = [weighted_draws(vae, x[i : i + 1], 3, y=y[i : i + 1], beta=beta, num_data=5) for i in range(5)]
    assert [p.rows for p in passes] == [slice(i, i + 1) for i in range(5)]
    for got, want in zip(passes, expected, strict=True):
        assert torch.equal(got.draws.log_weights, want.log_weights)
    # The labels matter: the same draws under other labels weigh differently.
    torch.manual_seed(7)
    shifted = list(weighted_passes(vae, x, 3, plan=(1, 3), y=(y + 1) % 3, beta=beta, num_data=5))
    assert not torch.equal(shifted[0].draws.log_weights, passes[0].draws.log_weights)


def test_logmeanexp_chunks_without_a_chunk_says_what_to_pass():
    with pytest.raises(ValueError) as error:
        logmeanexp_chunks([])
    assert str(error.value) == "logmeanexp_chunks got no chunk; pass at least one (K_i, B) tensor"


def test_collect_weighted_keeps_to_the_memory_budget_it_is_given(tiny_binary):
    """``collect_weighted`` runs the passes its ``max_elements`` allows, not the default's.

    With 60 numbers a pass holds one row (the default budget holds all five at once), so
    the draws are those of :func:`weighted_passes` under the same budget, and differ from
    the one-pass draws of the default budget: both comparisons are exact (same seed).
    """
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    x = tiny_binary[:5]
    torch.manual_seed(11)
    z, log_w = collect_weighted(vae, x, 10, max_elements=60)
    torch.manual_seed(11)
    passes = list(weighted_passes(vae, x, 10, max_elements=60))
    assert len(passes) > 1
    for p in passes:
        k = slice(p.start, p.start + p.draws.log_weights.shape[0])
        assert torch.equal(log_w[k, p.rows], p.draws.log_weights) and torch.equal(z[k, p.rows], p.draws.z)
    torch.manual_seed(11)
    z_default, _ = collect_weighted(vae, x, 10)
    assert not torch.equal(z_default, z)


def test_other_latents_are_the_model_sites_that_z_leaves_random(tiny_binary):
    """p(z | x) is a density of z alone only for a one-layer model: a second layer's z2
    stays random when z is set, and is named (plates and observations are not)."""
    x = tiny_binary[:3]
    assert other_latents(build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,))), x) == []
    two_layers = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), top_dim=2))
    assert other_latents(two_layers, x) == [TOP_SITE]
    with pytest.raises(ConfigError, match="NUTS"):
        check_only_latent(two_layers, x, "NUTS")
