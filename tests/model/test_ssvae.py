"""The semi-supervised VAE (M2): labels observed where known, enumerated where not."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae import ConfigError, DataError, ModelConfig, TrainConfig, build_vae, fit, load_dataset
from pyro_vae.cli import main
from pyro_vae.inference.bounds import elbo_per_datum, log_weights
from pyro_vae.inference.objectives import SemiSupervisedELBO, check_compatible


def m2(x_dim: int = 6, classes: int = 3):
    return build_vae(ModelConfig(x_dim=x_dim, z_dim=2, hidden=(8,), condition="semisupervised", num_classes=classes))


@pytest.mark.uses_param_store  # poutine.trace of the programs, in Pyro's default mode
def test_sites_masks_and_the_enumerated_label(tiny_binary):
    vae = m2()
    x, y = tiny_binary[:6], torch.tensor([0, -1, 2, -1, 1, -1])
    guide = poutine.trace(vae.guide).get_trace(x, y)
    site = guide.nodes["y_unobserved"]
    assert site["infer"]["enumerate"] == "parallel" and site["mask"].tolist() == [False, True, False, True, False, True]
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, y)
    assert model.nodes["y_observed"]["mask"].tolist() == [True, False, True, False, True, False]
    assert vae.classify(x).shape == (6, 3) and torch.allclose(vae.classify(x).exp().sum(-1), torch.ones(6))
    assert vae.predict(x).shape == (6,)
    with pytest.raises(DataError, match=r"labels in `y` must be in -1..2"):
        vae.guide(x, torch.tensor([0, 1, 2, 3, 0, 0]))
    with pytest.raises(DataError, match="known label"):
        vae.decode(torch.zeros(6, 2), y)
    with pytest.raises(ConfigError, match="`elbo` semisupervised"):
        check_compatible(ModelConfig(condition="semisupervised"), TrainConfig())
    with pytest.raises(ConfigError, match="semi-supervised VAE"):
        SemiSupervisedELBO().loss(build_vae(ModelConfig(x_dim=6, hidden=(8,))), x, 6)


@pytest.mark.uses_param_store  # Pyro's own Trace_ELBO, in Pyro's default mode
def test_library_bounds_count_its_masked_label_sites_as_trace_elbo_does(tiny_binary):
    vae = m2()
    x, y = tiny_binary[:12], torch.tensor([0, -1, 2, -1, 1, -1] * 2)
    pyro.set_rng_seed(4)
    expected = -Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x, y)
    pyro.set_rng_seed(4)
    assert float(elbo_per_datum(log_weights(vae, x, 1, y=y)).sum()) == pytest.approx(expected, rel=1e-6)


def test_the_enumerated_objective_sums_the_unknown_labels_out(tiny_binary):
    """With every label unknown and alpha = 0 the objective's value is -ELBO with y summed
    out exactly: its average over z draws matches the sampled-y estimate's average.

    300 single-draw estimates of each: their means agree within 5 standard errors of
    the difference (the enumerated one has the smaller spread).
    """
    vae = m2()
    x = tiny_binary[:4]
    enum = SemiSupervisedELBO(alpha=0.0)
    a = torch.stack([enum.loss(vae, x, 4).detach() for _ in range(300)])
    with torch.no_grad():
        b = torch.stack([-elbo_per_datum(log_weights(vae, x, 1)).sum() for _ in range(300)])
    se = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert (a.mean() - b.mean()).abs() < 5 * se, (a.mean(), b.mean(), se)
    assert a.std() < b.std()


def test_m2_learns_the_labels_from_a_tenth_of_them():
    """Digits with 10 % of the training labels: held-out accuracy far above chance (0.1)."""
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    x, y = torch.from_numpy(data.train), torch.from_numpy(data.train_labels)
    known = torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.1
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=64, z_dim=4, hidden=(64,), condition="semisupervised", num_classes=10))
    fit(
        vae,
        x,
        None,
        TrainConfig(epochs=8, lr=3e-3, elbo="semisupervised"),
        transform=torch.bernoulli,
        y=torch.where(known, y, torch.full_like(y, -1)),
        progress=False,
    )
    accuracy = float((vae.predict(torch.from_numpy(data.val)) == torch.from_numpy(data.val_labels)).float().mean())
    assert accuracy > 0.6, accuracy


def test_m2_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--condition-on", "semisupervised", "--elbo", "semisupervised", "--label-fraction", "0.1"]
    assert (
        main(["train", *flags, "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--out", str(run), "--no-progress"])
        == 0
    )
    assert main(["evaluate", str(run), "--iw-samples", "5", "--no-progress"]) == 0
    assert "label accuracy of the classifier" in capsys.readouterr().out
    report = json.loads((run / "evaluation.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0 and report["condition"] == "semisupervised"
    assert main(["train", "--condition-on", "semisupervised", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--elbo semisupervised" in capsys.readouterr().err
