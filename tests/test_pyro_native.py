"""Pyro's own ways on the library's objects, and the library leaving Pyro's ways alone.

- Pyro's SVI with ``pyro.optim`` trains a VAE in Pyro's default (global param store)
  mode, with every ELBO that applies; two VAEs train independently; a name clash is an
  error, not a silent no-op.
- ``Trace_ELBO()(vae.model, vae.guide)`` (Pyro's ``ELBOModule``) trains with a torch
  optimizer, in either parameter mode; a VAE built in one mode runs in the other.
- ``Predictive`` draws the prior and posterior predictive.
- Importing and using pyro_vae changes no setting: every autoguide and the tutorial's
  ``PyroModule[nn.Linear]`` regression train by SVI in the same process.
- The library's bounds count masked and scaled sites as Pyro's ``Trace_ELBO`` does.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    autoguide,
)
from pyro.nn import PyroModule
from pyro.optim import Adam
from torch import nn

from pyro_vae import (
    IWAE,
    MLP,
    VAE,
    BernoulliLikelihood,
    ConfigError,
    DataError,
    DiagonalNormalGuide,
    ModelConfig,
    TrainConfig,
    build_vae,
    evaluate,
    fit,
)
from pyro_vae.inference.bounds import (
    elbo_per_datum,
    iwae_per_datum,
    log_weights,
    model_densities,
    weighted_draws,
)
from pyro_vae.model.vae import local_params, program

pytestmark = pytest.mark.uses_param_store  # these tests run Pyro's own SVI in its default mode


def small_vae() -> VAE:
    return build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: nn.Module) -> int:
    return sum(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def svi_losses(model, guide, elbo, x, steps: int, lr: float = 1e-2) -> list[float]:
    svi = SVI(model, guide, Adam({"lr": lr}), elbo)
    return [svi.step(x) for _ in range(steps)]


def falls(losses: list[float], window: int = 20) -> bool:
    return sum(losses[-window:]) / window < sum(losses[:window]) / window


# ------------------------------------------------------------------- import leaves Pyro alone
def test_import_changes_no_global_state():
    """In a fresh interpreter: Pyro settings, the param store, torch's threads and dtype,
    the warnings filters and matplotlib's backend are the same after importing pyro_vae
    (and its lazily imported posterior tools) as before."""
    code = """
import json, sys, warnings
import matplotlib, pyro, torch
def state():
    return {"pyro": {k: str(v) for k, v in pyro.settings.get().items()}, "store": list(pyro.get_param_store().keys()),
            "threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
            "warnings": len(warnings.filters), "backend": matplotlib.get_backend(),
            }
before = state()
import pyro_vae
pyro_vae.guide_posterior  # the lazily imported ArviZ tools
after = state()
print(json.dumps([before, after]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == before


# ------------------------------------------------------------------------- SVI, pyro.optim
ELBOS = {
    "Trace_ELBO": Trace_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "TraceGraph_ELBO": TraceGraph_ELBO,
    "RenyiELBO": lambda: RenyiELBO(alpha=0.5, num_particles=2),
    "JitTrace_ELBO": JitTrace_ELBO,
}


@pytest.mark.parametrize("name", list(ELBOS))
def test_pyro_svi_with_pyro_optim_trains_the_vae(name, tiny_binary):
    vae = small_vae()
    before = snapshot(vae)
    losses = svi_losses(vae.model, vae.guide, ELBOS[name](), tiny_binary, steps=150)
    assert falls(losses), f"{name}: loss did not fall ({losses[:3]} ... {losses[-3:]})"
    assert changed(before, vae) == len(before), "SVI left some parameter untouched"
    # Pyro's param store holds the VAE's own tensors, under the VAE's name.
    store = pyro.get_param_store()
    assert {id(store[k].unconstrained()) for k in store.keys()} == {id(p) for p in vae.parameters()}
    assert all(k.startswith(vae.name + ".") for k in store.keys())


def test_two_vaes_of_one_config_train_independently_with_svi(tiny_binary):
    a, b = small_vae(), small_vae()
    assert a.name != b.name
    before_a, before_b = snapshot(a), snapshot(b)
    losses_a = svi_losses(a.model, a.guide, Trace_ELBO(), tiny_binary, steps=100)
    assert changed(before_b, b) == 0, "training a changed b"
    mid_a = snapshot(a)
    losses_b = svi_losses(b.model, b.guide, Trace_ELBO(), tiny_binary, steps=100)
    assert changed(mid_a, a) == 0, "training b changed a"
    assert changed(before_a, a) == len(before_a) and changed(before_b, b) == len(before_b)
    assert falls(losses_a) and falls(losses_b)


def test_a_param_store_name_clash_is_an_error_not_a_silent_no_op(tiny_binary):
    first = VAE(MLP(6, [8]), MLP(2, [8]), BernoulliLikelihood(8, 6), z_dim=2, name="same")
    second = VAE(MLP(6, [8]), MLP(2, [8]), BernoulliLikelihood(8, 6), z_dim=2, name="same")
    SVI(first.model, first.guide, Adam({"lr": 1e-2}), Trace_ELBO()).step(tiny_binary)
    with pytest.raises(ConfigError, match=r"param store holds a parameter named 'same\..*clear_param_store"):
        SVI(second.model, second.guide, Adam({"lr": 1e-2}), Trace_ELBO()).step(tiny_binary)
    # A deep copy has its original's name: the same error, and the fix works.
    clone = copy.deepcopy(first)
    with pytest.raises(ConfigError, match="another name="):
        SVI(clone.model, clone.guide, Adam({"lr": 1e-2}), Trace_ELBO()).step(tiny_binary)
    pyro.clear_param_store()
    before = snapshot(second)
    SVI(second.model, second.guide, Adam({"lr": 1e-2}), Trace_ELBO()).step(tiny_binary)
    assert changed(before, second) == len(before)


# ------------------------------------------------------------------ ELBOModule, both modes
@pytest.mark.parametrize("local", [False, True], ids=["global-params", "module-local-params"])
def test_elbo_module_trains_with_a_torch_optimizer(local, tiny_binary):
    vae = small_vae()  # built in Pyro's default mode in both cases
    with pyro.settings.context(module_local_params=local):
        elbo = Trace_ELBO()(vae.model, vae.guide)
        assert {id(p) for p in elbo.parameters()} == {id(p) for p in vae.parameters()}
        optim = torch.optim.Adam(elbo.parameters(), lr=1e-2)
        before = snapshot(vae)
        losses = []
        for _ in range(150):
            optim.zero_grad()
            loss = elbo(tiny_binary)
            loss.backward()
            optim.step()
            losses.append(float(loss))
    assert falls(losses) and changed(before, vae) == len(before)
    if local:
        assert not list(pyro.get_param_store().keys())


def test_programs_are_modules_of_the_vae():
    vae = small_vae()
    assert isinstance(vae.model, nn.Module) and isinstance(vae.guide, nn.Module)
    assert vae.model is vae.model and vae.model.vae is vae
    # Not registered in the VAE: its state_dict and module tree are the parts alone.
    assert not {"model", "guide"} & {name.split(".")[0] for name in vae.state_dict()}
    assert not {"model", "guide"} & {name.split(".")[0] for name, _ in vae.named_modules()}
    with pytest.raises(AttributeError, match="subclass VAE"):
        vae.model = None
    with pytest.raises(DataError, match="needs data x"):
        vae.guide(None)


# ---------------------------------------------------------------------------- fit, both modes
@pytest.mark.parametrize("local", [False, True], ids=["global-params", "module-local-params"])
def test_fit_trains_and_isolates_whatever_the_users_mode(local, tiny_binary):
    """fit keeps parameters in the module in both of Pyro's modes: the store stays empty
    and a second model is untouched (the traced and the eager objective)."""
    with pyro.settings.context(module_local_params=local):
        for elbo in ("trace", "trace-eager", "iwae"):
            a, b = small_vae(), small_vae()
            before_a, before_b = snapshot(a), snapshot(b)
            history = fit(
                a, tiny_binary, tiny_binary[:16], TrainConfig(epochs=3, batch_size=16, elbo=elbo), progress=False
            )
            assert changed(before_a, a) == len(before_a) and changed(before_b, b) == 0, elbo
            assert len(history) == 3
            evaluate(a, tiny_binary[:8], iw_samples=10)
            assert not list(pyro.get_param_store().keys()), f"{elbo} wrote to Pyro's param store"
        assert pyro.settings.get("module_local_params") is local


def test_a_user_svi_run_is_unaffected_by_library_calls_in_between(tiny_binary):
    """SVI state in the global store survives fit/evaluate on another model."""
    a = small_vae()
    svi = SVI(a.model, a.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(tiny_binary)
    keys = sorted(pyro.get_param_store().keys())
    other = small_vae()
    fit(other, tiny_binary, config=TrainConfig(epochs=1, batch_size=32), progress=False)
    evaluate(other, tiny_binary[:4], iw_samples=5)
    assert sorted(pyro.get_param_store().keys()) == keys
    svi.step(tiny_binary)


# ---------------------------------------------------------------------------------- Predictive
def test_prior_predictive_runs_the_model_without_data():
    vae = small_vae()
    draws = Predictive(vae.model, num_samples=7)(None, num_points=5)
    assert draws["z"].shape == (7, 5, 2) and draws["x"].shape == (7, 5, 6)
    assert set(draws["x"].unique().tolist()) <= {0.0, 1.0}
    assert Predictive(vae.model, num_samples=3, parallel=True)(None, num_points=4)["x"].shape == (3, 4, 6)
    assert Predictive(vae.model, num_samples=2)(None)["z"].shape == (2, 1, 2)  # one point by default
    with pytest.raises(DataError, match="num_points=3 but x has 4 rows"):
        vae.model(torch.zeros(4, 6), num_points=3)


def test_posterior_predictive_with_the_amortized_guide(tiny_binary):
    vae = small_vae()
    x = tiny_binary[:5]
    draws = Predictive(poutine.uncondition(vae.model), guide=vae.guide, num_samples=4)(x)
    assert draws["z"].shape == (4, 5, 2) and draws["x"].shape == (4, 5, 6)
    loc, scale = vae.encode(x)
    many = Predictive(poutine.uncondition(vae.model), guide=vae.guide, num_samples=4000, parallel=True)(x)["z"]
    # 4000 guide draws per point: the mean is within 5 s.e. (scale / sqrt(4000)) of mu(x).
    assert ((many.mean(0) - loc).abs() < 5 * scale / 4000**0.5).all()


# ------------------------------------------------------------ the user's other Pyro code
def regression_model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    s = pyro.sample("s", dist.LogNormal(-1.0, 0.5))
    with pyro.plate("n", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w + b, s), obs=y)


AUTOGUIDES = {
    "AutoDelta": autoguide.AutoDelta,
    "AutoNormal": autoguide.AutoNormal,
    "AutoDiagonalNormal": autoguide.AutoDiagonalNormal,
    "AutoMultivariateNormal": autoguide.AutoMultivariateNormal,
    "AutoLowRankMultivariateNormal": lambda m: autoguide.AutoLowRankMultivariateNormal(m, rank=2),
    "AutoLaplaceApproximation": autoguide.AutoLaplaceApproximation,
    "AutoIAFNormal": lambda m: autoguide.AutoIAFNormal(m, hidden_dim=[8]),
    "AutoStructured": autoguide.AutoStructured,
    "AutoGaussian": autoguide.AutoGaussian,
    "AutoNormalMessenger": autoguide.AutoNormalMessenger,
    "AutoHierarchicalNormalMessenger": autoguide.AutoHierarchicalNormalMessenger,
    "AutoRegressiveMessenger": autoguide.AutoRegressiveMessenger,
    "AutoGuideList": lambda m: _guide_list(m),
}


def _guide_list(model):
    guides = autoguide.AutoGuideList(model)
    guides.append(autoguide.AutoDiagonalNormal(poutine.block(model, expose=["w", "b"])))
    guides.append(autoguide.AutoDelta(poutine.block(model, expose=["s"])))
    return guides


@pytest.mark.parametrize("name", list(AUTOGUIDES))
def test_every_autoguide_trains_after_the_library_has_run(name, tiny_binary):
    # Use the library first, so that anything it might leave behind is there.
    vae = small_vae()
    fit(vae, tiny_binary, config=TrainConfig(epochs=1, batch_size=32), progress=False)
    evaluate(vae, tiny_binary[:4], iw_samples=5)
    pyro.clear_param_store()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = x @ torch.tensor([1.5, -2.0]) + 0.5 + 0.3 * torch.randn(200, generator=g)
    pyro.set_rng_seed(1)
    guide = AUTOGUIDES[name](regression_model)
    svi = SVI(regression_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(300)]
    assert falls(losses, 50), name
    assert len(pyro.get_param_store().keys()) > 0, f"{name} keeps its parameters in the global store"
    with torch.no_grad():
        w = torch.stack([guide(x)["w"] for _ in range(200)]).mean(0)  # guide draws of w
    # The posterior of w is sharp (200 points, noise 0.3): its mean is within 0.25 of the truth.
    assert torch.allclose(w, torch.tensor([1.5, -2.0]), atol=0.25), (name, w)


def test_pyro_module_linear_regression_tutorial_trains():
    """The tutorial's Bayesian regression with PyroModule[nn.Linear], in the same process."""

    class BayesianRegression(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = PyroModule[nn.Linear](2, 1)
            self.linear.weight = pyro.nn.PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
            self.linear.bias = pyro.nn.PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("obs", dist.Normal(mean, 0.3), obs=y)

    fit(small_vae(), torch.bernoulli(torch.full((32, 6), 0.5)), config=TrainConfig(epochs=1), progress=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = x @ torch.tensor([1.5, -2.0]) + 0.5 + 0.3 * torch.randn(200, generator=g)
    model = BayesianRegression()
    guide = autoguide.AutoDiagonalNormal(model)
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(800)]
    assert falls(losses, 50)
    w = guide.median()["linear.weight"].flatten()
    assert torch.allclose(w, torch.tensor([1.5, -2.0]), atol=0.15), w


# ------------------------------------------------------------- masks and scales in the bounds
NUM_CLASSES = 3


class LabelVAE(VAE):
    """A semi-supervised VAE (Kingma et al. 2014, M2, in miniature): a label y with
    ``obs_mask`` (observed where known, drawn from a classifier q(y|x) elsewhere)."""

    def __init__(self, x_dim: int = 6, z_dim: int = 2) -> None:
        encoder = MLP(x_dim, [8])
        super().__init__(
            encoder,
            MLP(z_dim + NUM_CLASSES, [8]),
            BernoulliLikelihood(8, x_dim),
            guide=DiagonalNormalGuide(8, z_dim),
            z_dim=z_dim,
        )
        self.classifier = nn.Linear(8, NUM_CLASSES)

    @program
    def model(self, x, y=None, known=None, weight: float = 1.0):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", self.prior())
            label = pyro.sample("y", dist.Categorical(logits=torch.zeros(NUM_CLASSES)), obs=y, obs_mask=known)
            h = self.decoder(torch.cat([z, F.one_hot(label, NUM_CLASSES).to(z)], -1))
            with poutine.scale(scale=weight):
                pyro.sample("x", self.likelihood(h), obs=x)

    @program
    def guide(self, x, y=None, known=None, weight: float = 1.0):
        h = self.encoder(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            with poutine.mask(mask=~known):
                pyro.sample("y_unobserved", dist.Categorical(logits=self.classifier(h)))
            pyro.sample("z", self.variational(h))


@pytest.fixture
def labelled(tiny_binary):
    y = torch.arange(tiny_binary.shape[0]) % NUM_CLASSES
    known = torch.arange(tiny_binary.shape[0]) % 4 != 0  # a quarter of the labels missing
    return tiny_binary, y, known


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_bounds_count_masked_and_scaled_sites_as_pyros_trace_elbo(labelled, weight):
    """Same draws (same seed): the library's ELBO equals -Trace_ELBO's loss to float
    rounding, masked label sites and a poutine.scale included; IWAE with K=1 equals it."""
    x, y, known = labelled
    vae = LabelVAE()
    kwargs = {"y": y, "known": known, "weight": weight}
    pyro.set_rng_seed(3)
    expected = -Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x, **kwargs)
    pyro.set_rng_seed(3)
    log_w = log_weights(vae, x, 1, **kwargs)  # (1, N)
    assert float(elbo_per_datum(log_w).sum()) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(iwae_per_datum(log_w), elbo_per_datum(log_w))
    pyro.set_rng_seed(3)
    assert float(IWAE(1).loss(vae, x, x.shape[0], y=y, known=known, weight=weight)) == pytest.approx(
        -expected, rel=1e-6
    )
    # A mask that dropped the label sites would change the value: they carry weight.
    draws = weighted_draws(vae, x, 4, **kwargs)
    assert draws.log_prior.shape == draws.log_proposal.shape == (4, x.shape[0])
    unknown = ~known
    assert (draws.log_proposal[:, known] != draws.log_proposal[:, unknown].mean()).any()


def test_vae_built_in_default_mode_runs_under_module_local_params(tiny_binary):
    vae = small_vae()
    with local_params():
        log_w = log_weights(vae, tiny_binary[:4], 3)
        loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, tiny_binary[:4])
    assert log_w.shape == (3, 4) and torch.isfinite(loss)
    assert not list(pyro.get_param_store().keys())


def test_model_densities_are_the_prior_and_likelihood_of_the_parts(tiny_binary):
    """The trace-based densities at given z equal the components' own log-densities."""
    vae = small_vae()
    x = tiny_binary[:5]
    z = torch.randn(3, 4, 5, 2)
    densities = model_densities(vae, z, x)
    assert densities.log_likelihood.shape == densities.log_prior.shape == (3, 4, 5)
    assert torch.allclose(densities.log_likelihood, vae.decode(z).log_prob(x), atol=1e-5)
    assert torch.allclose(densities.log_prior, vae.prior().log_prob(z), atol=1e-5)
    with pytest.raises(ConfigError, match=r"expected z of shape \(\.\.\., 5, 2\)"):
        model_densities(vae, torch.zeros(3, 4, 2), x)
