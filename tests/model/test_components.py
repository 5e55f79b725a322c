"""The component contract: every prior x guide x likelihood in the build tables.

One parametrized test builds each combination from a :class:`ModelConfig` (tiny
networks, ``x_dim`` 6, ``z_dim`` 2) and checks what every combination must give: one
shared latent site, a finite loss, a finite non-zero gradient for every parameter, and
a save -> load round trip with identical outputs. Then each family on its own: every
prior's and guide's density integrates to 1 on a grid, the guides' draws agree with
their densities and closed forms, the mixture with one component is the Normal, and
the likelihoods' support checks and moments.

The data of each combination is drawn from that combination's own model, so it lies in
the likelihood's support whatever the likelihood is, with no names compared here.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.inference.bounds import log_weights
from pyro_vae.inference.objectives import build_objective
from pyro_vae.model.build import GUIDES, LIKELIHOODS, PRIORS, build_vae
from pyro_vae.model.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from pyro_vae.model.priors import LearnedNormalPrior, MixturePrior
from pyro_vae.model.vae import LATENT_SITE, OBS_SITE
from pyro_vae.runs.checkpoint import load_run, save_config, save_weights
from pyro_vae.runs.train import make_transform

X_DIM, Z_DIM, BATCH = 6, 2, 16
CONV_SHAPE = (2, 3)  # the 6 features as a 2 x 3 image, for the convolutional networks


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: extra threads only add synchronisation, which on a busy
    shared CPU costs far more than it saves (measured 30x per step on 2 loaded cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config(
    prior: str = "normal", guide: str = "diagonal", likelihood: str = "bernoulli", net: str = "mlp"
) -> ModelConfig:
    # tanh: no dead units, so every weight of a tiny random network gets a gradient.
    conv = {"net": "conv", "image_shape": CONV_SHAPE, "hidden": (2, 3)} if net == "conv" else {}
    return ModelConfig(
        **{
            "x_dim": X_DIM,
            "z_dim": Z_DIM,
            "hidden": (8,),
            "activation": "tanh",
            "prior": prior,
            "guide": guide,
            "likelihood": likelihood,
            "prior_components": 3,
            "flow_layers": 2,
            "guide_rank": 1,
            **conv,
        }
    )


def model_data(vae) -> torch.Tensor:
    """BATCH rows drawn from the model itself: in the likelihood's support by construction."""
    with torch.no_grad():
        return vae.decode(vae.prior().sample((BATCH,))).sample()  # (BATCH, X_DIM)


def latent_sites(trace: poutine.Trace) -> set[str]:
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


COMBINATIONS = [(*c, "mlp") for c in itertools.product(PRIORS, GUIDES, LIKELIHOODS)]
# The convolutional networks with every prior and guide (and the identity likelihood head).
COMBINATIONS += [(p, g, "bernoulli", "conv") for p, g in itertools.product(PRIORS, GUIDES)]


@pytest.mark.uses_param_store  # poutine.trace of the programs, in Pyro's default mode
@pytest.mark.parametrize("prior,guide,likelihood,net", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_contract(prior, guide, likelihood, net, tmp_path):
    config = tiny_config(prior, guide, likelihood, net)
    vae = build_vae(config)
    x = model_data(vae)
    vae.likelihood.check_support(x)

    # Shapes of the three components.
    pz, qz = vae.prior(), vae.posterior(x)
    assert (pz.batch_shape, pz.event_shape) == (torch.Size(), (Z_DIM,))
    assert (qz.batch_shape, qz.event_shape) == ((BATCH,), (Z_DIM,))
    assert qz.has_rsample and qz.rsample().shape == (BATCH, Z_DIM)
    assert vae.decode(qz.rsample((3,))).batch_shape == (3, BATCH)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (BATCH, Z_DIM) and bool((scale > 0).all())

    # Model and guide share exactly one latent site; the guide's draw is reparameterized.
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert latent_sites(guide_tr) == latent_sites(model_tr) == {LATENT_SITE}
    assert model_tr.nodes[OBS_SITE]["is_observed"]

    # A finite loss and a finite, non-zero gradient for every parameter, from the
    # default training objective (whatever --elbo's default names) with 2 particles.
    loss = build_objective(TrainConfig(particles=2)).loss(vae, x, num_data=4 * BATCH)
    assert torch.isfinite(loss)
    loss.backward()
    names = [n for n, _ in vae.named_parameters()]
    assert len(names) == len(set(names)) and len(list(vae.parameters())) == len(names)
    for name, p in vae.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient at {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    # Save -> load (a fresh build from config.json) gives the same model exactly.
    save_config(tmp_path, RunConfig(model=config))
    save_weights(tmp_path, vae)
    _, loaded = load_run(tmp_path)
    vae.eval()
    for a, b in zip(vae.encode(x), loaded.encode(x), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(1)
    expected = log_weights(vae, x, 3)  # (3, BATCH)
    torch.manual_seed(1)
    assert torch.equal(log_weights(loaded, x, 3), expected)
    assert torch.isfinite(expected).all()


# --------------------------------------------------------------------------- priors


def grid_2d(half_width: float = 10.0, step: float = 0.05) -> tuple[torch.Tensor, float]:
    """Cell centres of a square grid on [-half_width, half_width]^2 and the cell area."""
    axis = torch.arange(-half_width + step / 2, half_width, step)
    zz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)  # (G, 2)
    return zz, step * step


PRIOR_CASES = [(p, "diagonal") for p in PRIORS] + [("vamp", g) for g in GUIDES if g != "diagonal"]


@pytest.mark.parametrize("prior,guide", PRIOR_CASES, ids=["-".join(c) for c in PRIOR_CASES])
def test_prior_density_integrates_to_one(prior, guide, float64):
    vae = build_vae(tiny_config(prior, guide))
    zz, area = grid_2d()
    with torch.no_grad():
        pz = vae.prior()
        total = float(pz.log_prob(zz).exp().sum()) * area
        draws = pz.sample((5,))
    # A midpoint sum on a 0.05 grid over [-10, 10]^2 of a smooth density with
    # unit-scale features: the quadrature and the truncation errors are both << 1e-2.
    assert total == pytest.approx(1.0, abs=1e-2)
    assert draws.shape == (5, Z_DIM)


def test_mixture_with_one_component_is_the_normal(float64):
    mixture = MixturePrior(3, num_components=1)
    normal = LearnedNormalPrior(3)
    with torch.no_grad():
        normal.loc.copy_(mixture.locs[0])
        normal.raw_scale.copy_(mixture.raw_scales[0])
        z = torch.randn(50, 3) * 2
        assert torch.allclose(mixture().log_prob(z), normal().log_prob(z), atol=1e-12)


def test_mixture_and_flow_priors_refuse_bad_sizes():
    with pytest.raises(ConfigError, match="`prior_components` must be >= 1, got 0"):
        build_vae(tiny_config("mixture").__class__(**{**tiny_config("mixture").__dict__, "prior_components": 0}))
    with pytest.raises(ConfigError, match="flow prior needs `z_dim` >= 2"):
        build_vae(ModelConfig(x_dim=X_DIM, z_dim=1, hidden=(8,), prior="flow"))
    with pytest.raises(ConfigError, match="`guide_rank` must be between 1 and `z_dim` 2, got 3"):
        build_vae(ModelConfig(x_dim=X_DIM, z_dim=2, hidden=(8,), guide="lowrank", guide_rank=3))


def test_vamp_prior_shares_the_encoder_without_duplicating_it(tmp_path):
    vae = build_vae(tiny_config("vamp"))
    prior_params = dict(vae.prior.named_parameters())
    assert list(prior_params) == ["pseudo_inputs"]
    assert not any(k.startswith("prior.encoder") or k.startswith("prior._amortized") for k in vae.state_dict())
    # The prior's components move with the encoder: changing the encoder changes p(z).
    z = torch.zeros(1, Z_DIM)
    before = vae.prior().log_prob(z)
    with torch.no_grad():
        next(vae.encoder.parameters()).add_(1.0)
    assert not torch.equal(vae.prior().log_prob(z), before)
    # Pseudo-inputs start in the data range [0, 1], or at data rows on request.
    pseudo = vae.prior.pseudo_inputs.detach()
    assert 0 <= float(pseudo.min()) and float(pseudo.max()) <= 1
    data = torch.arange(60.0).reshape(10, 6)
    vae.prior.init_from_data(data, generator=torch.Generator().manual_seed(0))
    rows = {tuple(r.tolist()) for r in data}
    assert all(tuple(r.tolist()) in rows for r in vae.prior.pseudo_inputs.detach())


def test_deepcopy_keeps_the_vamp_prior_on_the_copied_encoder():
    import copy

    vae = build_vae(tiny_config("vamp", "flow"))
    vae.prior().log_prob(torch.zeros(2))  # a forward pass must leave nothing un-copyable behind
    clone = copy.deepcopy(vae)
    assert clone.prior._amortized[0] is clone.encoder and clone.prior._amortized[1] is clone.variational


# --------------------------------------------------------------------------- guides


@pytest.mark.parametrize("guide", list(GUIDES))
def test_guide_density_integrates_to_one_and_matches_its_draws(guide, float64):
    vae = build_vae(tiny_config(guide=guide))
    x = torch.rand(1, X_DIM)
    zz, area = grid_2d(half_width=8.0, step=0.04)
    with torch.no_grad():
        q = vae.posterior(x)  # batch (1,)
        density = q.log_prob(zz.unsqueeze(1)).exp().squeeze(1)  # (G,)
        mass = float(density.sum()) * area
        grid_mean = (density[:, None] * zz).sum(0) * area / mass  # (2,)
        centred = zz - grid_mean
        grid_cov = (density[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0) * area / mass
        n = 20_000
        draws = q.sample((n,)).squeeze(1)  # (n, 2)
    assert mass == pytest.approx(1.0, abs=1e-2)
    # Sample mean vs the density's mean: standard error sqrt(var / n) per coordinate, 5 SE.
    se = (grid_cov.diagonal() / n).sqrt()
    assert ((draws.mean(0) - grid_mean).abs() < 5 * se).all()
    # Sample covariance vs the density's: the SE of entry (i, j) is about
    # sqrt((S_ii S_jj + S_ij^2) / n); 5 SE.
    sample_cov = torch.cov(draws.T)
    var = grid_cov.diagonal()
    cov_se = ((var[:, None] * var[None, :] + grid_cov**2) / n).sqrt()
    assert ((sample_cov - grid_cov).abs() < 5 * cov_se).all()


@pytest.mark.parametrize("guide", [g for g in GUIDES if g != "flow"])
def test_gaussian_guides_match_their_closed_form(guide, float64):
    vae = build_vae(tiny_config(guide=guide))
    x = torch.rand(3, X_DIM)
    with torch.no_grad():
        q = vae.posterior(x)
        cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else torch.diag_embed(q.variance)  # (3, 2, 2)
        loc, scale = vae.encode(x)
        n = 20_000
        draws = q.sample((n,))  # (n, 3, 2)
    # encode gives the exact location and the marginal standard deviations.
    assert torch.allclose(loc, q.mean)
    assert torch.allclose(scale, cov.diagonal(dim1=-2, dim2=-1).sqrt())
    # Sample moments vs closed form, 5 standard errors (see the test above).
    var = cov.diagonal(dim1=-2, dim2=-1)
    assert ((draws.mean(0) - q.mean).abs() < 5 * (var / n).sqrt()).all()
    centred = draws - draws.mean(0)
    sample_cov = torch.einsum("nbi,nbj->bij", centred, centred) / (n - 1)
    cov_se = ((var[..., :, None] * var[..., None, :] + cov**2) / n).sqrt()
    assert ((sample_cov - cov).abs() < 5 * cov_se).all()


def test_full_covariance_guide_gives_a_positive_cholesky_diagonal():
    vae = build_vae(tiny_config(guide="fullcov"))
    with torch.no_grad():
        tril = vae.variational.scale_tril(vae.encoder(torch.rand(4, X_DIM) * 50))  # large inputs, still positive
    assert (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert torch.equal(tril, tril.tril())


# ----------------------------------------------------------------------- likelihoods

BAD_DATA = [
    (BernoulliLikelihood, [[0.0, 1.5]], r"Bernoulli likelihood needs data in \[0, 1\]"),
    (ContinuousBernoulliLikelihood, [[-0.1, 0.5]], r"continuous Bernoulli likelihood needs data in \[0, 1\]"),
    (PoissonLikelihood, [[1.0, 2.5]], r"Poisson likelihood needs counts \(non-negative integers\)"),
    (NegativeBinomialLikelihood, [[-1.0, 2.0]], r"negative binomial likelihood needs counts"),
    (NormalLikelihood, [[0.0, math.nan]], r"NaN or inf"),
]


@pytest.mark.parametrize("cls,values,message", BAD_DATA, ids=[c[0].__name__ for c in BAD_DATA])
def test_likelihood_support_checks_say_what_is_wrong(cls, values, message):
    with pytest.raises(DataError, match=message) as err:
        cls(4, 2).check_support(torch.tensor(values))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_data_pipeline_binarizes_only_for_binary_likelihoods(likelihood):
    vae = build_vae(tiny_config(likelihood=likelihood))
    transform = make_transform(RunConfig(model=tiny_config(likelihood=likelihood)), vae)
    assert (transform is not None) == vae.likelihood.needs_binary


def test_continuous_bernoulli_density_integrates_to_one(float64):
    lik = ContinuousBernoulliLikelihood(4, 3)
    d = lik(torch.randn(1, 4) * 3).base_dist  # (1, 3) independent features
    step = 1e-4
    u = torch.arange(step / 2, 1, step)[:, None, None]  # midpoints on [0, 1]
    mass = d.log_prob(u.expand(-1, 1, 3)).exp().sum(0) * step  # (1, 3)
    assert torch.allclose(mass, torch.ones(1, 3), atol=1e-6)


def test_negative_binomial_has_mean_mu_and_variance_mu_plus_mu2_over_theta(float64):
    lik = NegativeBinomialLikelihood(4, 3, init_theta=2.0)
    h = torch.randn(5, 4)
    d = lik(h).base_dist
    mu = torch.nn.functional.softplus(lik.raw_mean(h)) + 1e-4
    assert torch.allclose(lik.theta, torch.full((3,), 2.0))
    assert torch.allclose(d.mean, mu)
    assert torch.allclose(d.variance, mu + mu**2 / 2.0)


def test_count_likelihoods_accept_counts_and_score_them():
    counts = torch.tensor([[0.0, 3.0, 17.0]])
    for cls in (PoissonLikelihood, NegativeBinomialLikelihood):
        lik = cls(4, 3)
        lik.check_support(counts)
        assert torch.isfinite(lik(torch.zeros(1, 4)).log_prob(counts)).all()
