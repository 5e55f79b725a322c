"""What each objective adds up: scaling, the classification term, the module form, the checks.

Each test closes a blind spot that mutation testing (``tools/mutation.py``) found in
``pyro_vae/inference/objectives.py``. The comparisons are exact (the same seed gives
the same draws on both sides), so no sampling error enters.
"""

from __future__ import annotations

import pytest
import torch

from pyro_vae import ConfigError, ModelConfig, TrainConfig, build_vae
from pyro_vae.inference.objectives import (
    IWAE,
    SemiSupervisedELBO,
    TraceELBO,
    TraceMeanFieldELBO,
    check_compatible,
)


def _seeded(fn, seed: int = 4):
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("objective", [TraceELBO(), TraceELBO(jit=False), TraceMeanFieldELBO(), IWAE(3)])
def test_every_objective_scales_a_minibatch_to_the_full_data(objective, tiny_binary):
    """The loss of B rows standing for N is N / B times their sum: 10 times at N = 10 B."""
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    x = tiny_binary[:8]
    own = _seeded(lambda: objective.loss(vae, x, num_data=8))
    full = _seeded(lambda: objective.loss(vae, x, num_data=80))
    torch.testing.assert_close(full, 10 * own, rtol=1e-5, atol=1e-4)


def test_the_objective_as_a_module_is_its_loss_on_the_vaes_parameters(tiny_binary):
    """``objective(vae)`` (Pyro's ``ELBOModule`` shape) computes ``objective.loss`` exactly."""
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    objective = TraceELBO(jit=False)
    module = objective(vae)
    assert list(module.parameters()) == list(vae.parameters())
    x = tiny_binary[:8]
    torch.testing.assert_close(
        _seeded(lambda: module(x, 64, 0.5)), _seeded(lambda: objective.loss(vae, x, 64, 0.5)), rtol=0, atol=0
    )


def test_the_semi_supervised_objective_adds_alpha_log_q_of_each_known_label(tiny_binary):
    """``loss(alpha) - loss(0)`` is ``-alpha * sum log q(y|x)`` over the known rows, scaled by N / B.

    Label 0 is a known label (only -1 means unknown); the draws of the ELBO part are the
    same on both sides, so the difference is exact up to float rounding.
    """
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), condition="semisupervised", num_classes=3))
    x, y = tiny_binary[:6], torch.tensor([0, -1, 2, 0, -1, 1])
    with_term = _seeded(lambda: SemiSupervisedELBO(alpha=2.0).loss(vae, x, 60, y=y))
    without = _seeded(lambda: SemiSupervisedELBO(alpha=0.0).loss(vae, x, 60, y=y))
    known = y >= 0
    log_q = vae.classify(x[known]).gather(-1, y[known].unsqueeze(-1)).sum()
    torch.testing.assert_close(with_term - without, -2.0 * log_q * (60 / 6), rtol=1e-5, atol=1e-4)
    # No labels at all: the ELBO part alone.
    torch.testing.assert_close(
        _seeded(lambda: SemiSupervisedELBO(alpha=2.0).loss(vae, x, 60)),
        _seeded(lambda: SemiSupervisedELBO(alpha=0.0).loss(vae, x, 60)),
    )


def test_the_semi_supervised_objective_refuses_other_vaes_saying_what_it_trains(tiny_binary):
    plain = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    with pytest.raises(ConfigError) as error:
        SemiSupervisedELBO().loss(plain, tiny_binary[:4], 4)
    assert str(error.value) == "the semi-supervised ELBO trains a semi-supervised VAE (`condition` semisupervised)"


def test_the_mean_field_check_probes_a_conditional_vae_with_its_condition():
    """The analytic-KL check builds q(z|x, y) for a conditional VAE: it must pass one row of y."""
    cvae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), condition="labels", num_classes=3))
    TraceMeanFieldELBO().check(cvae)  # a diagonal guide and a standard prior: no error
    check_compatible(ModelConfig(condition="labels", num_classes=3), TrainConfig(elbo="meanfield"))


def test_compatibility_of_a_convolutional_model_is_checked_before_its_image_shape_is_known():
    """``net`` conv without an image shape yet (it comes from the data): the check builds
    a stand-in on 8 x 8 images, and still refuses a pair with no analytic KL."""
    check_compatible(ModelConfig(net="conv"), TrainConfig(elbo="meanfield"))
    # Known sizes are the model's own: 28 x 28 images of 784 pixels.
    check_compatible(ModelConfig(net="conv", x_dim=784, image_shape=(28, 28)), TrainConfig(elbo="meanfield"))
    with pytest.raises(ConfigError, match="no analytic KL"):
        check_compatible(ModelConfig(net="conv", prior="mixture"), TrainConfig(elbo="meanfield"))


def test_objectives_default_to_the_configs_one_particle():
    assert TraceELBO().particles == TraceMeanFieldELBO().particles == IWAE().particles == TrainConfig().particles == 1


def test_the_module_form_has_the_losss_default_weight(tiny_binary):
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    objective = TraceELBO(jit=False)
    x = tiny_binary[:8]
    torch.testing.assert_close(
        _seeded(lambda: objective(vae)(x, 64)), _seeded(lambda: objective.loss(vae, x, 64)), rtol=0, atol=0
    )


def test_the_mean_field_elbo_with_particles_is_pyros_with_one_data_plate(tiny_binary):
    """K vectorized particles left of the one data plate: Pyro's estimator, draw for draw."""
    from pyro.infer import TraceMeanField_ELBO

    from pyro_vae.model.vae import local_params

    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    x = tiny_binary[:8]
    pyros = TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)

    def reference():
        with local_params():
            return pyros.differentiable_loss(vae.model, vae.guide, x, num_data=64)

    torch.testing.assert_close(_seeded(lambda: TraceMeanFieldELBO(3).loss(vae, x, 64)), _seeded(reference))


def test_objective_errors_are_whole():
    with pytest.raises(ConfigError) as error:
        SemiSupervisedELBO(alpha=-1.0)
    assert str(error.value) == "`alpha` must be >= 0, got -1.0"


def test_a_convolutional_model_of_known_width_is_checked_at_that_width():
    """784 features, no image shape yet: the check builds its 8 x 8 stand-in (64 features), not 784 on 8 x 8."""
    check_compatible(ModelConfig(net="conv", x_dim=784), TrainConfig(elbo="meanfield"))
