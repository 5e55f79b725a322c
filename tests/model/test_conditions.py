"""Conditional VAEs: y as a first-class input of the programs, the bounds, fit and runs."""

from __future__ import annotations

import pytest
import torch

from pyro_vae import ConfigError, DataError, ModelConfig, RunConfig, TrainConfig, build_vae, evaluate, fit
from pyro_vae.data.datasets import load_dataset
from pyro_vae.inference.objectives import TraceELBO, TraceMeanFieldELBO, check_compatible
from pyro_vae.model.conditions import Covariates, OneHot
from pyro_vae.runs.train import train_run


def cvae(num_classes: int = 3, x_dim: int = 6) -> object:
    return build_vae(ModelConfig(x_dim=x_dim, z_dim=2, hidden=(8,), condition="labels", num_classes=num_classes))


def test_shapes_and_what_each_part_sees(tiny_binary):
    vae = cvae()
    x, y = tiny_binary[:5], torch.tensor([0, 1, 2, 0, 1])
    assert vae.decoder.in_features == 2 + 3 and vae.variational.in_features == 8 + 3
    loc, scale = vae.encode(x, y)
    assert loc.shape == scale.shape == (5, 2)
    assert not torch.allclose(vae.encode(x, y)[0], vae.encode(x, (y + 1) % 3)[0])  # q(z|x, y) depends on y
    px = vae.decode(torch.zeros(4, 5, 2), y)  # draws share their row's y
    assert px.batch_shape == (4, 5) and px.event_shape == (6,)
    assert not torch.allclose(px.mean[:, 0], vae.decode(torch.zeros(4, 5, 2), (y + 1) % 3).mean[:, 0])


def test_clear_errors_for_a_missing_or_wrong_y(tiny_binary):
    vae = cvae()
    with pytest.raises(DataError, match="this VAE is conditional: pass `y`"):
        vae.encode(tiny_binary[:2])
    with pytest.raises(DataError, match=r"labels in `y` must be in 0..2, got 0..3"):
        vae.encode(tiny_binary[:2], torch.tensor([0, 3]))
    with pytest.raises(DataError, match=r"expected `y` as 2 integer labels"):
        vae.encode(tiny_binary[:2], torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="integer labels"):
        vae.encode(tiny_binary[:2], torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match="not conditional"):
        build_vae(ModelConfig(x_dim=6, hidden=(8,))).encode(tiny_binary[:2], torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="`prior` vamp"):
        build_vae(ModelConfig(x_dim=6, hidden=(8,), condition="labels", num_classes=3, prior="vamp"))
    with pytest.raises(ConfigError, match="number of classes"):
        build_vae(ModelConfig(x_dim=6, hidden=(8,), condition="labels"))
    assert Covariates(2)(torch.ones(3, 2)).shape == (3, 2) and OneHot(4).example(2).tolist() == [0, 0]


def test_traced_loss_with_y_equals_pyros_trace_elbo(tiny_binary):
    """The fast path takes y as a graph input: same draws, same loss as the eager program."""
    vae = cvae()
    x, y = tiny_binary[:16], torch.arange(16) % 3
    traced, eager = TraceELBO(), TraceELBO(jit=False)
    for _ in range(2):  # the second call runs the checked graph
        torch.manual_seed(5)
        a = traced.loss(vae, x, num_data=64, y=y)
        torch.manual_seed(5)
        b = eager.loss(vae, x, num_data=64, y=y)
        assert torch.allclose(a, b, rtol=1e-5)
    check_compatible(ModelConfig(condition="labels"), TrainConfig(elbo="meanfield"))  # analytic KL still exists
    assert torch.isfinite(TraceMeanFieldELBO().loss(vae, x, 64, y=y))


def test_a_cvae_explains_held_out_digits_better_than_a_vae_given_their_labels():
    """log p(x|y) of a CVAE beats log p(x) of the same VAE without labels, per held-out digit.

    180 validation digits, K = 200 importance samples each; the paired difference's mean
    must exceed 5 standard errors of its mean (a label carries about log 10 = 2.3 nats
    about a digit, so the margin is large).
    """
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    train, val = torch.from_numpy(data.train), torch.from_numpy(data.val)
    ty, vy = torch.from_numpy(data.train_labels), torch.from_numpy(data.val_labels)
    config = TrainConfig(epochs=25, batch_size=64, lr=3e-3)
    base = ModelConfig(x_dim=64, z_dim=2, hidden=(64,))
    torch.manual_seed(0)
    plain = build_vae(base)
    fit(plain, train, val, config, transform=torch.bernoulli, progress=False)
    torch.manual_seed(0)
    conditional = build_vae(ModelConfig(**{**base.__dict__, "condition": "labels", "num_classes": 10}))
    history = fit(conditional, train, val, config, transform=torch.bernoulli, progress=False, y=ty, val_y=vy)
    assert history[-1].val_elbo > history[0].val_elbo
    with torch.random.fork_rng():
        torch.manual_seed(1)
        xv = torch.bernoulli(val)
    with_y = evaluate(conditional, xv, iw_samples=200, y=vy).log_px
    without = evaluate(plain, xv, iw_samples=200).log_px
    diff = with_y - without
    se = diff.std() / len(diff) ** 0.5
    assert diff.mean() > 5 * se and diff.mean() > 1.0, (diff.mean(), se)


def test_a_conditional_run_end_to_end(tmp_path):
    config = RunConfig(model=ModelConfig(hidden=(16,), condition="labels"), train=TrainConfig(epochs=2))
    result = train_run(config, tmp_path / "run", progress=False)
    assert result.config.model.num_classes == 10
    assert (tmp_path / "run" / "samples.png").stat().st_size > 5000
    from pyro_vae import load

    vae = load(tmp_path / "run")
    assert vae.condition is not None and vae.condition.num_classes == 10
