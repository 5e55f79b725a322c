"""Training objectives: IWAE against Pyro's RenyiELBO, the analytic-KL ELBO against the
Monte Carlo one, the bounds' ordering, and invalid combinations refused before training
(in Python and on the command line, exit status 2, nothing written)."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
from pyro.infer import RenyiELBO
from torch.distributions import kl_divergence

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.inference.bounds import elbo_per_datum, iwae_per_datum, log_weights
from pyro_vae.inference.objectives import (
    IWAE,
    TraceMeanFieldELBO,
    build_objective,
    check_compatible,
)
from pyro_vae.model.build import GUIDES, PRIORS, build_vae
from pyro_vae.runs.train import train_run
from pyro_vae.training.loop import fit


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: extra threads only add synchronisation on a busy shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def binary_data(n: int = 64, seed: int = 1) -> torch.Tensor:
    """n binary rows of 6 features: two prototypes with 10% of the bits flipped."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    flip = torch.rand(n, 6, generator=g) < 0.1
    return (protos[torch.randint(0, 2, (n,), generator=g)] + flip.float()) % 2


def small(prior: str = "normal", guide: str = "diagonal") -> pyro_vae.VAE:
    return build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(16,), activation="tanh", prior=prior, guide=guide))


@pytest.fixture(scope="module")
def trained() -> pyro_vae.VAE:
    """A tiny VAE trained briefly (fixed seed): its guide is decent but not exact."""
    torch.manual_seed(0)
    vae = small()
    fit(vae, binary_data(), config=TrainConfig(epochs=40, batch_size=16, lr=1e-2), progress=False)
    return vae.eval()


# ------------------------------------------------------------------------------ IWAE


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_iwae_equals_pyros_renyi_elbo_with_alpha_0():
    vae, x = small(), binary_data(8)
    renyi = RenyiELBO(alpha=0, num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(3)
    expected = renyi.loss(vae.model, vae.guide, x)  # -sum_b log (1/K) sum_k w_kb
    torch.manual_seed(3)
    ours = IWAE(particles=7).loss(vae, x, num_data=8)
    # Same vectorized draws (same seed, same (K, B, z_dim) shape): equal up to rounding.
    assert float(ours.detach()) == pytest.approx(expected, rel=1e-6)


def test_iwae_scales_a_minibatch_to_the_full_data_set():
    vae, x = small(), binary_data(8)
    torch.manual_seed(0)
    lw = log_weights(vae, x, 5)
    torch.manual_seed(0)
    assert torch.allclose(IWAE(5).loss(vae, x, num_data=80), -iwae_per_datum(lw).sum() * 10)


def test_iwae_bounds_the_elbo_on_the_same_draws_and_grows_with_k(trained):
    x = binary_data(64, seed=2)
    with torch.no_grad():
        lw = log_weights(trained, x, 50)  # (50, 64)
        # Jensen, exactly, on the same draws.
        assert (iwae_per_datum(lw) >= elbo_per_datum(lw) - 1e-6).all()
        # On average over fresh draws the bound rises with K. R = 40 repeats of the mean
        # over 64 points for each K; the SE of each average is the spread over repeats
        # / sqrt(R), and the steps must exceed 4 SE of their difference.
        means = {}
        for k in (1, 5, 50):
            reps = torch.stack([iwae_per_datum(log_weights(trained, x, k)).mean() for _ in range(40)])  # (R,)
            means[k] = (float(reps.mean()), float(reps.std() / math.sqrt(40)))
    for lo, hi in ((1, 5), (5, 50)):
        diff = means[hi][0] - means[lo][0]
        assert diff > 4 * math.hypot(means[hi][1], means[lo][1]), means


def test_iwae_refuses_a_kl_weight():
    with pytest.raises(ConfigError, match="no KL weight, got beta 0.5"):
        IWAE(3).loss(small(), binary_data(4), num_data=4, beta=0.5)
    for bad in (TrainConfig(elbo="iwae", beta=4.0), TrainConfig(elbo="iwae", kl_warmup=10)):
        with pytest.raises(ConfigError, match="`elbo` iwae takes no KL weight"):
            build_objective(bad)


# ------------------------------------------------------------------ mean-field ELBO


@pytest.mark.parametrize("prior", ["normal", "learned"])
def test_meanfield_uses_the_closed_form_kl(prior):
    vae, x = small(prior), binary_data(8)
    torch.manual_seed(5)
    loss = TraceMeanFieldELBO().loss(vae, x, num_data=8, beta=2.0)
    # The same draw by hand: reconstruction by Monte Carlo, KL from torch's closed
    # form, weighted by beta as the model's poutine.scale weights the latent site.
    torch.manual_seed(5)
    q = vae.posterior(x)
    z = q.rsample()  # (8, 2)
    recon = vae.decode(z).log_prob(x).sum()
    kl = kl_divergence(q, vae.prior().expand(q.batch_shape)).sum()
    assert float(loss.detach()) == pytest.approx(float(-(recon - 2.0 * kl).detach()), rel=1e-5)


def test_analytic_and_monte_carlo_elbo_agree_in_expectation(trained):
    x = binary_data(64, seed=3)
    n = 20_000
    with torch.no_grad():
        lw = log_weights(trained, x, n)  # (n, 64)
        mc = float(lw.mean(0).sum())
        analytic = -float(TraceMeanFieldELBO(particles=n).loss(trained, x, num_data=64))
        # Standard errors of the two sums over points, sqrt(sum_b var_b / n): the Monte
        # Carlo ELBO's from its log-weights, the analytic one's from its only random
        # term, the reconstruction log p(x|z) (its per-draw variance from fresh draws).
        se_mc = float((lw.var(0) / n).sum().sqrt())
        recon = trained.decode(trained.posterior(x).sample((n,))).log_prob(x)  # (n, 64)
        se_analytic = float((recon.var(0) / n).sum().sqrt())
    # Independent draws: 4 SE of the difference.
    assert abs(analytic - mc) < 4 * math.hypot(se_mc, se_analytic), (analytic, mc, se_mc, se_analytic)


ANALYTIC = {("normal", "diagonal"), ("learned", "diagonal")}
PAIRS = [(p, g) for p in PRIORS for g in GUIDES]


@pytest.mark.parametrize("prior,guide", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_meanfield_is_refused_exactly_where_torch_has_no_kl(prior, guide):
    model = ModelConfig(z_dim=2, hidden=(8,), prior=prior, guide=guide, prior_components=3)
    state = torch.get_rng_state()
    if (prior, guide) in ANALYTIC:
        check_compatible(model, TrainConfig(elbo="meanfield"))
    else:
        with pytest.raises(
            ConfigError, match=r"^`elbo` meanfield with `prior` .* no analytic KL .*; use `elbo` trace$"
        ):
            check_compatible(model, TrainConfig(elbo="meanfield"))
    assert torch.equal(torch.get_rng_state(), state), "the probe model must not consume the global random stream"
    check_compatible(model, TrainConfig(elbo="trace"))  # the Monte Carlo ELBO trains everything


def test_meanfield_objective_refuses_in_the_training_loop_too():
    with pytest.raises(ConfigError, match="no analytic KL"):
        fit(small("mixture"), binary_data(8), config=TrainConfig(epochs=1, elbo="meanfield"), progress=False)


def test_a_run_checks_the_combination_before_it_writes(tmp_path):
    config = RunConfig(model=ModelConfig(prior="vamp"), train=TrainConfig(elbo="meanfield"))
    config.validate()  # every section is in range: the combination is the run's to check
    with pytest.raises(ConfigError, match="`prior` vamp and `guide` diagonal"):
        train_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ CLI

FAST = ["--epochs", "1", "--hidden", "16", "--batch-size", "64", "--no-progress"]

BAD = [
    (["--elbo", "meanfield", "--prior", "mixture"], "--elbo meanfield with --prior mixture and --guide diagonal"),
    (["--elbo", "meanfield", "--guide", "fullcov"], "Independent(Normal) have no analytic KL"),
    (["--prior", "mixture", "--prior-components", "0"], "--prior-components must be >= 1, got 0"),
    (["--flow-layers", "0"], "--flow-layers must be >= 1, got 0"),
    (["--guide", "lowrank", "--guide-rank", "3"], "--guide-rank must be between 1 and --z-dim 2, got 3"),
    (["--elbo", "iwae", "--beta", "4"], "--elbo iwae takes no KL weight"),
    (["--elbo", "iwae", "--kl-warmup", "10"], "--elbo iwae takes no KL weight"),
    (["--prior", "flow", "--z-dim", "1"], "flow prior needs --z-dim >= 2"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_cli_refuses_invalid_combinations_before_writing(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_refuses_unknown_component_names(tmp_path, capsys):
    for flag in ("--prior", "--guide", "--likelihood", "--elbo"):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--out", str(tmp_path / "run"), flag, "gamma"])
        assert exit_.value.code == 2
        assert f"argument {flag}: invalid choice: 'gamma'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_saves_every_choice_and_load_rebuilds_the_model(tmp_path):
    run = tmp_path / "run"
    flags = [
        "--prior",
        "vamp",
        "--prior-components",
        "7",
        "--guide",
        "flow",
        "--flow-layers",
        "3",
        "--likelihood",
        "cbernoulli",
        "--elbo",
        "iwae",
        "--particles",
        "3",
        "--z-dim",
        "2",
    ]
    assert main(["train", "--out", str(run), *FAST, *flags]) == 0
    config = json.loads((run / "config.json").read_text())
    assert {k: config["model"][k] for k in ("prior", "prior_components", "guide", "flow_layers", "likelihood")} == {
        "prior": "vamp",
        "prior_components": 7,
        "guide": "flow",
        "flow_layers": 3,
        "likelihood": "cbernoulli",
    }
    assert (config["train"]["elbo"], config["train"]["particles"]) == ("iwae", 3)
    vae = pyro_vae.load(run)
    assert isinstance(vae.prior, pyro_vae.VampPrior) and vae.prior.pseudo_inputs.shape == (7, 64)
    assert isinstance(vae.variational, pyro_vae.FlowGuide) and len(vae.variational.layers) == 3
    assert isinstance(vae.likelihood, pyro_vae.ContinuousBernoulliLikelihood)
    saved = safetensors.torch.load((run / "model.safetensors").read_bytes())
    assert all(torch.equal(saved[k], v) for k, v in vae.state_dict().items())


def test_cli_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for table in (PRIORS, GUIDES, pyro_vae.LIKELIHOODS, pyro_vae.OBJECTIVES):
        assert "{" + ",".join(sorted(table)) + "}" in out
    for flag in ("--prior-components", "--flow-layers", "--guide-rank"):
        assert flag in out


def test_unknown_names_in_python_fail_with_the_choices():
    with pytest.raises(ConfigError, match=r"unknown `prior` 'gamma'; choose one of flow, learned, mixture"):
        build_vae(ModelConfig(x_dim=6, prior="gamma"))
    with pytest.raises(ConfigError, match=r"unknown `elbo` 'renyi'; choose one of"):
        build_objective(TrainConfig(elbo="renyi"))
