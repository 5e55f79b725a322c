"""Held-out evaluation: the importance-sampled log p(x) against a closed form, its bounds,
chunking, memory, active units, the traced Trace_ELBO, and ``pyro-vae evaluate``.

Ground truth is probabilistic PCA built from the library's own parts: a linear decoder
(``MLP(z_dim, [])``) with a Normal likelihood is p(x) = N(b, W W^T + s^2 I) exactly, and
with W's columns orthogonal its posterior is a diagonal Normal whose mean is linear in x,
so a linear encoder with the diagonal guide can represent it exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_vae.cli import main
from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.inference.bounds import (
    chunk_plan,
    draw_width,
    elbo_per_datum,
    iwae_per_datum,
    log_weight_terms,
    log_weights,
    logmeanexp_chunks,
)
from pyro_vae.inference.evaluation import evaluate, posterior_means, unit_activity
from pyro_vae.inference.objectives import TraceELBO
from pyro_vae.model.build import GUIDES, LIKELIHOODS, PRIORS, build_vae
from pyro_vae.model.likelihoods import NormalLikelihood
from pyro_vae.model.nn import MLP, SCALE_FLOOR
from pyro_vae.model.vae import VAE

X_DIM, Z_DIM, NOISE = 5, 2, 0.5


def _raw(scale: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus_scale: the raw value whose scale is ``scale``."""
    return torch.log(torch.expm1(scale - SCALE_FLOOR))


class PPCA:
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I) with orthogonal columns of W, in float64."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 0.7], dtype=torch.float64)  # (X, Z), W^T W = diag(4, 0.49)
        self.b = torch.randn(X_DIM, generator=g, dtype=torch.float64)
        m = self.W.T @ self.W + NOISE**2 * torch.eye(Z_DIM, dtype=torch.float64)  # diagonal
        self.post_gain = torch.linalg.solve(m, self.W.T)  # (Z, X): E[z|x] = gain (x - b)
        self.post_scale = NOISE / torch.sqrt(torch.diagonal(m))  # (Z,)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + NOISE**2 * torch.eye(X_DIM, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)  # (N,)

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, Z_DIM, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + NOISE * torch.randn(n, X_DIM, generator=g, dtype=torch.float64)

    def vae(self, loc_shift: float = 0.0, scale_factor: float = 1.0) -> VAE:
        """The VAE of this model; its guide is the exact posterior, optionally shifted and widened."""
        vae = VAE(MLP(X_DIM, []), MLP(Z_DIM, []), NormalLikelihood(Z_DIM, X_DIM), z_dim=Z_DIM).double()
        with torch.no_grad():
            vae.likelihood.loc.weight.copy_(self.W)
            vae.likelihood.loc.bias.copy_(self.b)
            vae.likelihood.raw_scale.fill_(float(_raw(torch.tensor(NOISE, dtype=torch.float64))))
            vae.variational.loc.weight.copy_(self.post_gain)
            vae.variational.loc.bias.copy_(-self.post_gain @ self.b + loc_shift)
            vae.variational.raw_scale.weight.zero_()
            vae.variational.raw_scale.bias.copy_(_raw(self.post_scale * scale_factor))
        return vae.eval()


@pytest.fixture(scope="module")
def ppca() -> PPCA:
    return PPCA()


# ----------------------------------------------------------- log p(x) against the truth


def test_exact_guide_gives_exact_log_px_in_every_chunking(ppca):
    # With q(z|x) = p(z|x) every weight p(x, z_k) / q(z_k|x) equals p(x): ELBO, IWAE and
    # the closed form agree to rounding, whatever K and however the draws are chunked.
    x = ppca.sample(6)
    exact = ppca.log_px(x).numpy()
    vae = ppca.vae()
    for iw_samples, max_elements in ((1, 10**6), (100, 10**6), (100, 40), (37, 60)):
        result = evaluate(vae, x, iw_samples=iw_samples, max_elements=max_elements)
        np.testing.assert_allclose(result.log_px, exact, atol=1e-9)
        np.testing.assert_allclose(result.elbo, exact, atol=1e-9)
        np.testing.assert_allclose(result.reconstruction - result.kl, result.elbo, atol=1e-9)


def test_kl_term_matches_the_closed_form(ppca):
    x = ppca.sample(40)
    vae = ppca.vae(loc_shift=0.3, scale_factor=1.4)
    result = evaluate(vae, x, iw_samples=4000)
    with torch.no_grad():
        q = vae.posterior(x)
        exact = torch.distributions.kl_divergence(q, vae.prior().expand(q.batch_shape)).numpy()  # (N,)
        # The Monte Carlo KL over K = 4000 draws: its SE per point is the spread of
        # log q - log p over draws / sqrt(K); allow 5 SE.
        spread = (-log_weight_terms(vae, x, 4000).latent).std(0).numpy()  # (N,)
    np.testing.assert_array_less(np.abs(result.kl - exact), 5 * spread / math.sqrt(4000) + 1e-12)


def test_iwae_estimate_converges_to_the_exact_log_px_as_k_grows(ppca):
    # A guide that is off (shifted by 0.3, 1.4x too wide) leaves the ELBO well below
    # log p(x); the importance-weighted bound closes the gap as K grows. e_K = mean over
    # N = 50 points of (estimate - exact log p(x)).
    x = ppca.sample(50)
    exact = ppca.log_px(x).numpy()
    vae = ppca.vae(loc_shift=0.3, scale_factor=1.4)
    error = {}
    for k in (1, 10, 100, 2000):
        result = evaluate(vae, x, iw_samples=k, seed=k)
        error[k] = float((result.log_px - exact).mean())  # signed: the bound is below
        assert (result.elbo <= result.log_px + 1e-12).all()
    # Monte Carlo SE of e_K: the normalized weights here have a spread of about 0.8, so one
    # point's estimate varies by about 0.8 / sqrt(K) and the mean over 50 points by
    # 0.11 / sqrt(K): 0.035 at K = 10, 0.011 at 100, 0.0025 at 2000. The thresholds are
    # the bias Var(w) / 2K (0.3 / K) plus 4 of those SE.
    assert error[1] < -0.5  # the gap to close
    assert abs(error[10]) < 0.03 + 4 * 0.035
    assert abs(error[100]) < 0.003 + 4 * 0.011
    assert abs(error[2000]) < 0.01


def test_elbo_never_exceeds_the_iwae_bound_on_the_same_draws():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=3, hidden=(8,)))
    x = torch.bernoulli(torch.rand(20, 6))
    with torch.no_grad():
        log_w = log_weights(vae, x, 50)  # (50, 20)
    # Jensen, exactly, draw for draw.
    assert (elbo_per_datum(log_w) <= iwae_per_datum(log_w) + 1e-6).all()
    result = evaluate(vae, x, iw_samples=50)
    assert (result.elbo <= result.log_px).all()


@pytest.mark.uses_param_store  # Pyro's own tools, in Pyro's default mode
def test_evaluation_is_pyros_renyi_elbo_alpha_0_on_the_same_draws():
    # In one pass (default budget), evaluate draws exactly what RenyiELBO(alpha=0) draws
    # from the same seed: the sum of log p(x) estimates is minus its loss.
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    x = torch.bernoulli(torch.rand(8, 6))
    renyi = RenyiELBO(alpha=0, num_particles=9, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(4)
    expected = -renyi.loss(vae.model, vae.guide, x)
    result = evaluate(vae, x, iw_samples=9, seed=4)
    assert float(result.log_px.sum()) == pytest.approx(expected, rel=1e-6)


def test_log_weight_terms_add_up_to_log_weights():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), prior="mixture"))
    x = torch.bernoulli(torch.rand(4, 6))
    torch.manual_seed(1)
    terms = log_weight_terms(vae, x, 7)
    torch.manual_seed(1)
    assert torch.allclose(terms.reconstruction + terms.latent, log_weights(vae, x, 7), atol=1e-5)


# --------------------------------------------------------------------- chunking, memory


def test_chunked_and_unchunked_estimates_agree(ppca):
    x = ppca.sample(20)
    vae = ppca.vae(loc_shift=0.3, scale_factor=1.4)
    whole = evaluate(vae, x, iw_samples=3000, seed=1)  # one pass
    chunked = evaluate(vae, x, iw_samples=3000, max_elements=500, seed=2)  # 100 draws of 1 point per pass
    # Different draws: the estimates agree to Monte Carlo error. Per point, the SE of the
    # ELBO is sd(log w) / sqrt(K) and that of log p(x) at most sd(w / mean w) / sqrt(K);
    # the difference of two estimates may be off by 5 SE * sqrt(2).
    with torch.no_grad():
        log_w = log_weights(vae, x, 3000)  # (K, N)
        w = torch.softmax(log_w, 0) * 3000  # normalized weights, mean 1
    se_elbo = (log_w.std(0) / math.sqrt(3000)).numpy()
    se_log_px = (w.std(0) / math.sqrt(3000)).numpy()
    assert (np.abs(chunked.elbo - whole.elbo) < 5 * math.sqrt(2) * se_elbo).all()
    assert (np.abs(chunked.log_px - whole.log_px) < 5 * math.sqrt(2) * se_log_px).all()
    # The arithmetic of chunking is exact on the same numbers.
    a = torch.randn(1000, 7, dtype=torch.float64) * 30
    assert torch.allclose(logmeanexp_chunks(a.split(33)), iwae_per_datum(a), atol=1e-10)


def test_chunk_plan_respects_the_budget():
    for n, k, width, budget in itertools.product((1, 7, 10_000), (1, 50, 5000), (3, 784), (1, 5000, 2**23)):
        batch, samples = chunk_plan(n, k, width, budget)
        assert 1 <= batch <= n and 1 <= samples <= k
        assert batch * samples * width <= max(budget, width)
    assert chunk_plan(10_000, 5000, 784) == (2, 5000)


def test_passes_never_exceed_the_budget_whatever_k(ppca):
    # The decoder is the widest part: count the draws it sees in one pass.
    x = ppca.sample(12)
    vae = ppca.vae()
    seen: list[int] = []
    hook = vae.decoder.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].shape[:-1].numel()))
    budget = 40 * X_DIM
    try:
        for k in (10, 1000):
            seen.clear()
            evaluate(vae, x, iw_samples=k, max_elements=budget)
            assert max(seen) <= budget // draw_width(vae, x)
    finally:
        hook.remove()


_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    import pyro_vae
    from pyro_vae.model.build import build_vae
    from pyro_vae.config import ModelConfig
    from pyro_vae.inference.evaluation import evaluate
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=784, z_dim=50, hidden=(200, 200), activation="tanh"))
    x = torch.bernoulli(torch.rand(4, 784))
    peaks = []
    for k in (20, 2000):
        evaluate(vae, x, iw_samples=k, max_elements=2**20)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB
    print(peaks[0], peaks[1])
    """
)


def test_peak_memory_does_not_grow_with_k():
    # Burda's MNIST architecture, 4 points, K = 20 then K = 2000 (8,000 draws, 25 MB of
    # logits if held at once) with a budget of 2**20 numbers (4 MiB) per tensor: the
    # second call may not raise the process's peak resident memory by more than 30 MiB.
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    small, large = map(float, out.stdout.split())
    assert large - small < 30, (small, large)


# ------------------------------------------------------------------------ active units


def test_active_units_on_a_constructed_encoder():
    # z_u's posterior mean is 0.5 * x_0 (variance 0.25), 0.05 * x_1 (0.0025), x_2 + x_3
    # (2) and a constant: units 0 and 2 are active, 1 and 3 are not.
    z_dim = 4
    vae = VAE(MLP(4, []), MLP(z_dim, [8]), NormalLikelihood(8, 4), z_dim=z_dim).double()
    with torch.no_grad():
        vae.variational.loc.weight.copy_(
            torch.tensor([[0.5, 0, 0, 0], [0, 0.05, 0, 0], [0, 0, 1.0, 1.0], [0, 0, 0, 0]], dtype=torch.float64)
        )
        vae.variational.loc.bias.fill_(0.3)
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    activity = unit_activity(vae, x, batch_size=128)
    expected = np.var((vae.encode(x)[0]).detach().numpy(), axis=0, ddof=1)
    np.testing.assert_allclose(activity.numpy(), expected, rtol=1e-9, atol=1e-12)
    result = evaluate(vae, x[:500], iw_samples=2)
    assert result.active_units == 2
    assert list(np.flatnonzero(result.unit_activity > 0.01)) == [0, 2]


def test_posterior_means_of_a_flow_guide_are_sample_means():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=3, hidden=(8,), guide="flow"))
    x = torch.rand(4, 6)
    means = posterior_means(vae, x, num_samples=4000)  # no closed form: 4000 draws per row
    with torch.no_grad():
        draws = vae.posterior(x).rsample((4000,))  # (4000, 4, 3)
    # Two independent sample means of 4000 draws: within 5 SE of their difference.
    se = draws.std(0) * math.sqrt(2 / 4000)
    assert ((means - draws.mean(0)).abs() < 5 * se).all()


def test_bad_arguments_are_refused(ppca):
    vae, x = ppca.vae(), ppca.sample(3)
    with pytest.raises(ConfigError, match="`iw_samples` must be >= 1"):
        evaluate(vae, x, iw_samples=0)
    with pytest.raises(ConfigError, match="max_elements"):
        evaluate(vae, x, max_elements=0)


# --------------------------------------------------------- the traced Trace_ELBO (speed)


@pytest.mark.parametrize(
    "prior,guide,likelihood",
    [
        *((p, "diagonal", "bernoulli") for p in PRIORS),
        *(("normal", g, "normal") for g in GUIDES),
        *(("learned", "diagonal", lik) for lik in LIKELIHOODS),
        ("vamp", "lowrank", "bernoulli"),  # the encoder's parameters used twice
    ],
)
def test_traced_trace_elbo_has_pyros_value_and_gradients(prior, guide, likelihood):
    # Every prior, guide and likelihood in the tables: the traced graph and Pyro's eager
    # Trace_ELBO, on the same random state, give the same loss (to float rounding: Pyro
    # sums it through Python floats) and the same gradients (bit for bit, except where a
    # parameter is used twice and autograd adds its two contributions in another order).
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=3, hidden=(5,), prior=prior, guide=guide, likelihood=likelihood))
    x = (
        torch.poisson(torch.rand(4, 6) * 3)
        if likelihood in ("poisson", "negbin")
        else torch.bernoulli(torch.rand(4, 6))
    )
    traced, eager = TraceELBO(particles=2), TraceELBO(particles=2, jit=False)
    params = list(vae.parameters())
    for step, (num_data, beta) in enumerate([(10, 1.0), (10, 1.0), (4, 0.3)]):
        results = []
        for objective in (traced, eager):
            torch.manual_seed(step)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no fallback to the eager program
                loss = objective.loss(vae, x, num_data, beta)
            results.append((loss.detach(), torch.autograd.grad(loss, params)))
        (l1, g1), (l2, g2) = results
        assert torch.allclose(l1, l2, rtol=1e-5, atol=1e-4)
        for a, b in zip(g1, g2, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
        if prior != "vamp":
            assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_traced_trace_elbo_keys_graphs_on_batch_shape_and_draws_like_pyro():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(5,)))
    traced, eager = TraceELBO(), TraceELBO(jit=False)
    for rows in (8, 3, 8):  # a smaller last minibatch gets its own graph (plate size, scale)
        x = torch.bernoulli(torch.rand(rows, 6))
        torch.manual_seed(1)
        a = traced.loss(vae, x, 100)
        after_traced = torch.rand(1)
        torch.manual_seed(1)
        b = eager.loss(vae, x, 100)
        assert torch.allclose(a, b, rtol=1e-6) and torch.equal(after_traced, torch.rand(1))


def test_traced_trace_elbo_falls_back_when_a_component_branches_on_values():
    class BranchingMLP(MLP):
        def forward(self, x):
            # Python control flow on a tensor value: a trace freezes one branch.
            return super().forward(x) if float(x[0, 0]) > 0 else -super().forward(x)

    torch.manual_seed(0)
    vae = VAE(BranchingMLP(4, [6]), MLP(2, [6]), NormalLikelihood(6, 4), z_dim=2)
    x = torch.randn(5, 4)
    x[0, 0], x[-1, 0] = 1.0, -1.0  # the trace sees the rows reversed: the other branch
    traced, eager = TraceELBO(), TraceELBO(jit=False)
    with pytest.warns(UserWarning, match="differs from Pyro"):
        traced.loss(vae, x, 5)
    for _ in range(2):  # from then on this signature runs the eager program
        torch.manual_seed(3)
        a = traced.loss(vae, x, 5)
        torch.manual_seed(3)
        assert torch.equal(a, eager.loss(vae, x, 5))


# ------------------------------------------------------------------------ CLI and runner


def test_pyro_vae_evaluate_writes_evaluation_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--z-dim", "3", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "validation split of" in out and "log p(x) >=" in out and "active units" in out
    report = json.loads((run / "evaluation.json").read_text())
    n = report["num_points"]
    assert report["split"] == "validation" and report["iw_samples"] == 20 and report["z_dim"] == 3
    assert set(report["per_datum"]) == {"elbo", "log_px", "kl", "reconstruction"}
    assert all(len(v) == n for v in report["per_datum"].values()) and len(report["unit_activity"]) == 3
    assert report["elbo_per_datum"] <= report["log_px_per_datum"]
    assert report["elbo_per_datum"] == pytest.approx(report["reconstruction_per_datum"] - report["kl_per_datum"])
    # Seeded by the run: a second evaluation replaces the file with the same numbers.
    first = report["per_datum"]["log_px"]
    assert main(["evaluate", str(run), "--iw-samples", "20", "--no-progress"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["per_datum"]["log_px"] == first
    assert main(["evaluate", str(run), "--iw-samples", "0"]) == 2
    assert "--iw-samples must be >= 1" in capsys.readouterr().err


def test_traced_trace_elbo_does_not_keep_models_alive():
    import gc
    import weakref

    objective = TraceELBO()
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    objective.loss(vae, torch.ones(3, 6), 3).backward()
    alive = weakref.ref(vae)
    del vae
    gc.collect()
    assert alive() is None
