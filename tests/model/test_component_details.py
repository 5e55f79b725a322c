"""Details of the priors, guides and likelihoods that the contract tests do not reach.

Each test closes a blind spot that mutation testing (``tools/mutation.py``) found in
``pyro_vae/model/``: defaults a user constructing a component directly relies on, and
error messages checked whole (the fix they name included).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_vae import ConfigError, DataError, ModelConfig
from pyro_vae.model.guides import DiagonalNormalGuide, FlowGuide, FullCovarianceGuide
from pyro_vae.model.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from pyro_vae.model.priors import FlowPrior, MixturePrior, VampPrior


def _message(error_type, fn) -> str:
    with pytest.raises(error_type) as error:
        fn()
    return str(error.value)


def test_a_mixture_prior_built_directly_has_the_configs_default_size():
    """One default, in two places that must agree: the class and ``ModelConfig``."""
    assert MixturePrior(2).num_components == ModelConfig().prior_components == 10
    assert MixturePrior(2)().mixture_distribution.logits.shape == (10,)


def test_prior_errors_are_whole_and_name_the_fix():
    assert _message(ConfigError, lambda: MixturePrior(2, num_components=0)) == "`prior_components` must be >= 1, got 0"
    guide = DiagonalNormalGuide(4, 2)
    assert _message(ConfigError, lambda: VampPrior(2, 0, nn.Linear(6, 4), guide)) == (
        "`prior_components` must be >= 1, got 0"
    )
    assert _message(ConfigError, lambda: VampPrior(3, 5, nn.Linear(6, 4), guide)) == (
        "the VampPrior needs a guide with z_dim 3, got 2"
    )
    assert _message(ConfigError, lambda: VampPrior(2, 5, nn.Sequential(nn.Linear(6, 4)), guide)) == (
        "the VampPrior needs an encoder with an in_features attribute (e.g. pyro_vae.model.nn.MLP)"
    )
    assert VampPrior(2, 5, nn.Linear(6, 4), guide).pseudo_inputs.shape == (5, 6)


def test_saved_guides_hold_weights_only():
    """The full-covariance guide's index buffers follow from z_dim: a fresh instance
    recomputes them, so a checkpoint holds the weights alone (and loads strictly)."""
    guide = FullCovarianceGuide(4, 3)
    assert set(guide.state_dict()) == {"loc.weight", "loc.bias", "raw_tril.weight", "raw_tril.bias"}
    fresh = FullCovarianceGuide(4, 3)
    fresh.load_state_dict(guide.state_dict(), strict=True)
    h = torch.randn(5, 4)
    assert torch.equal(fresh(h).scale_tril, guide(h).scale_tril)


@pytest.mark.parametrize(
    "family",
    [
        BernoulliLikelihood,
        ContinuousBernoulliLikelihood,
        NormalLikelihood,
        PoissonLikelihood,
        NegativeBinomialLikelihood,
    ],
)
def test_an_identity_head_adds_no_linear_map(family):
    """With ``identity_head`` (a decoder with one output per feature) the decoder's output
    is the parameter itself: no linear layer, and p(x|z) moves with each input alone."""
    likelihood = family(6, 6, identity_head=True)
    assert not any(isinstance(m, nn.Linear) for m in likelihood.modules())
    h = torch.zeros(2, 6)
    h[0, 3] = 1.0
    mean = likelihood(h).mean  # (2, 6)
    moved = (mean[0] != mean[1]).nonzero().flatten().tolist()
    assert moved == [3]
    assert any(isinstance(m, nn.Linear) for m in family(4, 6).modules())


def test_count_likelihood_errors_are_whole_and_name_the_fix():
    message = _message(DataError, lambda: PoissonLikelihood(4, 3).check_support(torch.tensor([[1.0, -1.0, 0.5]])))
    assert message == (
        "the Poisson likelihood needs counts (non-negative integers), but 2 value(s) are not, the first in "
        "row 0; the data range is [-1, 1]; pass raw counts, or use `likelihood` normal for real-valued data"
    )


def test_a_flow_prior_built_directly_has_the_configs_depth_and_the_width_it_is_given():
    assert len(FlowPrior(2).layers) == ModelConfig().flow_layers == 2
    first = next(m for m in FlowPrior(2, hidden=7).modules() if isinstance(m, nn.Linear))
    assert first.out_features == 7


def test_a_flow_guide_built_directly_has_the_configs_depth():
    assert len(FlowGuide(4, 2).layers) == ModelConfig().flow_layers


def test_a_normal_likelihood_starts_at_unit_scale():
    """The documented start: p(x|z) = Normal(mean, 1) before training (``init_scale`` 1)."""
    scale = NormalLikelihood(4, 6)(torch.zeros(3, 4)).base_dist.scale  # (3, 6)
    torch.testing.assert_close(scale, torch.ones(3, 6))


def test_unit_interval_likelihood_errors_are_whole_and_name_the_fix():
    message = _message(DataError, lambda: BernoulliLikelihood(4, 3).check_support(torch.tensor([[0.0, 2.0, 1.0]])))
    assert message == (
        "the Bernoulli likelihood needs data in [0, 1], but 1 value(s) are not, the first in row 0; the data "
        "range is [0, 2]; rescale the data to [0, 1] or use `likelihood` normal for real-valued data"
    )
