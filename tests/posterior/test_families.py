"""The posterior tools on the model families: conditional, semi-supervised (M2), two layers.

A conditional model is inspected given each point's condition y: q(z | x, y) against
p(z | x, y). The checks hold the samplers and the quadrature against each other, show
that the condition is used (another label gives another posterior), and that a model
with a second latent gets a clear refusal from NUTS and the grid and a working
importance resampling.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_vae import ConfigError, DataError, ModelConfig, RunConfig, TrainConfig, build_vae, fit
from pyro_vae.cli import main
from pyro_vae.inference.objectives import SemiSupervisedELBO
from pyro_vae.inference.quadrature import posterior_quadrature
from pyro_vae.posterior.samplers import exact_posterior, guide_posterior, importance_posterior
from pyro_vae.runs.inspect import default_method, inspect_points
from pyro_vae.runs.survey import survey_points
from pyro_vae.runs.train import train_run


@pytest.fixture(scope="module")
def labelled(tiny_binary_module):
    x = tiny_binary_module
    y = (x[:, 0] > 0.5).long()  # the prototype each row came from (up to noise)
    return x, y


@pytest.fixture(scope="module")
def tiny_binary_module():
    g = torch.Generator().manual_seed(1)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    which = torch.randint(0, 2, (64,), generator=g)
    flip = torch.rand(64, 6, generator=g) < 0.1
    return (protos[which] + flip.float()) % 2


@pytest.fixture(scope="module")
def cvae(labelled):
    x, y = labelled
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(16,), condition="labels", num_classes=2))
    fit(vae, x, config=TrainConfig(epochs=60, batch_size=16, lr=1e-2), y=y, progress=False)
    return vae.eval()


def _draws(data) -> np.ndarray:
    z = data.posterior.z.transpose("point", "chain", "draw", "latent").values
    return z.reshape(z.shape[0], -1, z.shape[-1])  # (B, draws, D)


def test_a_cvae_posterior_is_conditioned_on_y_in_every_tool(cvae, labelled):
    x, y = labelled[0][:3], labelled[1][:3]
    exact = posterior_quadrature(cvae, x, y=y)
    other = posterior_quadrature(cvae, x, y=1 - y)
    # The label changes the posterior: log p(x | y) and the posterior mean differ.
    assert not torch.allclose(exact.log_marginal, other.log_marginal, atol=1e-2)
    nuts = exact_posterior(cvae, x, 300, num_chains=2, y=y)
    sir = importance_posterior(cvae, x, 500, num_proposals=5000, y=y)
    sd = exact.cov.diagonal(dim1=-2, dim2=-1).sqrt().numpy()  # (B, 2)
    for data in (nuts, sir):
        # The draws of p(z | x, y) against the quadrature's exact mean: within 0.3 exact sds
        # (600-1000 draws, correlated for NUTS).
        assert np.all(np.abs(_draws(data).mean(1) - exact.mean.numpy()) < 0.3 * sd)
        np.testing.assert_array_equal(data.constant_data.y.values, y.numpy())
        assert data.constant_data.y.dims == ("point",)
    guide = guide_posterior(cvae, x, 2000, y=y)
    loc, scale = (t.detach().numpy() for t in cvae.encode(x, y))
    z = _draws(guide)  # (B, 8000, 2)
    assert np.all(np.abs(z.mean(1) - loc) < 5 * scale / np.sqrt(z.shape[1]))
    # The predictive draws are p(x | z, y): with the other label they would differ.
    np.testing.assert_allclose(guide.constant_data.mu.values, loc, rtol=1e-6)


def test_inspect_points_and_the_survey_take_the_condition(cvae, labelled):
    x, y = labelled[0][:4], labelled[1][:4]
    found = inspect_points(cvae, x, [10, 11, 12, 13], num_samples=100, gap_samples=500, y=y)
    assert found.reference_name == "grid"
    assert found.points["y"].tolist() == y.tolist()
    assert found.clouds is not None and found.clouds.labels[0].endswith(f"y = {int(y[0])}")
    survey = survey_points(cvae, x, method="grid", y=y)
    # The survey's exact KL is the inspection's (both the quadrature of p(z | x, y)).
    np.testing.assert_allclose(survey.points["kl"].values, found.points["grid_kl"].values, rtol=1e-6)
    with pytest.raises(DataError, match="one entry per row"):
        guide_posterior(cvae, x, 10, y=y[:2])


@pytest.fixture(scope="module")
def m2(labelled):
    x, y = labelled
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(16,), condition="semisupervised", num_classes=2))
    known = torch.where(torch.arange(len(y)) % 4 == 0, y, torch.full_like(y, -1))
    fit(
        vae,
        x,
        config=TrainConfig(epochs=20, batch_size=16, lr=1e-2),
        objective=SemiSupervisedELBO(),
        y=known,
        progress=False,
    )
    return vae.eval()


def test_m2_is_inspected_given_its_labels_and_refuses_nuts_for_unknown_ones(m2, labelled):
    x, y = labelled[0][:3], labelled[1][:3]
    # Every label known: z is the only latent, so NUTS and the grid apply.
    assert default_method(m2, x, y) == "grid"
    exact = posterior_quadrature(m2, x, y=y)
    nuts = exact_posterior(m2, x, 250, num_chains=2, y=y)
    sd = exact.cov.diagonal(dim1=-2, dim2=-1).sqrt().numpy()
    assert np.all(np.abs(_draws(nuts).mean(1) - exact.mean.numpy()) < 0.35 * sd)
    # An unknown label is a second latent: NUTS and the grid say so, importance resampling
    # sums it out.
    unknown = torch.tensor([y[0].item(), -1, y[2].item()])
    assert default_method(m2, x[1:2], unknown[1:2]) == "sir"
    with pytest.raises(ConfigError, match="also draws y"):
        exact_posterior(m2, x, 20, num_chains=1, y=unknown)
    with pytest.raises(ConfigError, match="also draws y"):
        posterior_quadrature(m2, x, y=unknown)
    sir = importance_posterior(m2, x, 50, num_proposals=2000, y=unknown)
    assert sir.posterior.z.sizes["point"] == 3
    # The predictive groups need a label: the classifier's guess where it is unknown.
    guess = int(m2.predict(x[1:2]))
    assert sir.constant_data.y.values.tolist() == [int(y[0]), guess, int(y[2])]


def test_two_layer_models_get_importance_resampling(tiny_binary_module):
    x = tiny_binary_module
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(16,), top_dim=2, top_hidden=(8,)))
    fit(vae, x, config=TrainConfig(epochs=10, batch_size=16, lr=1e-2), progress=False)
    vae.eval()
    assert default_method(vae, x[:2]) == "sir"
    with pytest.raises(ConfigError, match="also draws z2"):
        exact_posterior(vae, x[:2], 20, num_chains=1)
    found = inspect_points(vae, x[:2], num_samples=50, num_proposals=2000, gap_samples=200)
    assert found.reference_name == "sir"
    assert np.all(np.isfinite(found.points["kl_gaussian"].values))
    assert found.reference.posterior.z.sizes == {"chain": 4, "draw": 50, "point": 2, "latent": 2}


def test_inspect_from_the_command_line_on_a_conditional_run(tmp_path, capsys):
    config = RunConfig(model=ModelConfig(hidden=(16,), condition="labels"), train=TrainConfig(epochs=2, batch_size=128))
    run = tmp_path / "run"
    train_run(config, run, progress=False)
    out = tmp_path / "inspect"
    assert main(["inspect", str(run), "--index", "0", "3", "--samples", "40", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "given each row's label y" in said
    points = (out / "points.csv").read_text().splitlines()
    assert points[0].split(",")[:2] == ["point", "y"]
    labels = json.loads((run / "config.json").read_text())["model"]["num_classes"]
    assert all(0 <= int(line.split(",")[1]) < labels for line in points[1:])
    survey = tmp_path / "survey"
    assert main(["inspect", str(run), "--rows", "0:6", "--out", str(survey), "--no-progress"]) == 0
    assert "given each row's label y" in capsys.readouterr().out
