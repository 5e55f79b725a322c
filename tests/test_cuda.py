"""The same code on a CUDA device: training, Pyro's SVI, the bounds, the posteriors, runs.

Skipped where torch sees no GPU (CI has none); run on a machine with one:
``python -m pytest tests/test_cuda.py``. Every check compares with the CPU or with a
closed form, so a device-specific bug (a tensor left on the CPU, a generator on the
wrong device) fails here rather than in a user's run.
"""

from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.cli import main
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.data.datasets import load_dataset
from pyro_vae.inference.evaluation import evaluate
from pyro_vae.inference.quadrature import posterior_quadrature
from pyro_vae.model.build import build_vae
from pyro_vae.posterior.samplers import exact_posterior, guide_posterior, importance_posterior
from pyro_vae.runs.checkpoint import load
from pyro_vae.training.loop import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@contextlib.contextmanager
def _any_warnings():
    # An undertrained guide may make importance resampling warn; that is not under test here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    data = load_dataset("digits")
    return torch.from_numpy(data.train[:512]).to(CUDA)


def _trained(x: torch.Tensor, **model) -> torch.nn.Module:
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=x.shape[1], hidden=(32,), **model)).to(CUDA)
    fit(vae, torch.bernoulli(x), config=TrainConfig(epochs=3, batch_size=64, device="cuda"), progress=False)
    return vae.eval()


def test_fit_keeps_everything_on_the_device_and_lowers_the_loss(digits: torch.Tensor) -> None:
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=64, hidden=(32,))).to(CUDA)
    history = fit(vae, torch.bernoulli(digits), config=TrainConfig(epochs=4, batch_size=64), progress=False)
    assert all(p.device.type == CUDA.type for p in vae.parameters())
    assert history[-1].train_loss < history[0].train_loss
    assert all(np.isfinite(r.train_loss) for r in history)


@pytest.mark.uses_param_store
def test_pyro_svi_trains_the_model_on_the_device(digits: torch.Tensor) -> None:
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=64, hidden=(32,))).to(CUDA)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    x = torch.bernoulli(digits[:256])
    losses = [svi.step(x) for _ in range(60)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    pyro.clear_param_store()


def test_guide_draws_have_the_encoder_moments_on_the_device(digits: torch.Tensor) -> None:
    vae = _trained(digits)
    x = torch.bernoulli(digits[:4])
    data = guide_posterior(vae, x, 2000)
    z = data.posterior.z.values.reshape(-1, 4, 2)  # (draws, point, latent)
    with torch.no_grad():
        loc, scale = (t.cpu().numpy() for t in vae.encode(x))
    se = scale / np.sqrt(z.shape[0])
    assert np.all(np.abs(z.mean(0) - loc) < 5 * se)
    assert np.allclose(z.std(0), scale, rtol=0.1)


def test_bounds_on_the_device_match_the_cpu(digits: torch.Tensor) -> None:
    vae = _trained(digits)
    x = torch.bernoulli(digits[:32])
    on_gpu = evaluate(vae, x, iw_samples=64, seed=3)
    on_cpu = evaluate(vae.cpu(), x.cpu(), iw_samples=64, seed=3)
    vae.to(CUDA)
    # Different random streams per device: agreement within Monte Carlo error.
    assert abs(on_gpu.log_px.mean() - on_cpu.log_px.mean()) < 0.5
    assert np.all(on_gpu.elbo <= on_gpu.log_px + 1e-4)


def test_quadrature_on_the_device_matches_the_cpu_and_the_samplers(digits: torch.Tensor) -> None:
    vae = _trained(digits)
    x = torch.bernoulli(digits[:3])
    gpu = posterior_quadrature(vae, x)
    cpu = posterior_quadrature(vae.cpu(), x.cpu())
    vae.to(CUDA)
    assert torch.allclose(gpu.log_marginal.cpu(), cpu.log_marginal, atol=1e-3)
    assert torch.allclose(gpu.mean.cpu(), cpu.mean, atol=1e-3)
    nuts = exact_posterior(vae, x, 300, num_chains=2)
    exact_sd = gpu.cov.diagonal(dim1=-2, dim2=-1).sqrt().cpu().numpy()  # (B, 2)
    z = nuts.posterior.z.transpose("point", "chain", "draw", "latent").values.reshape(3, -1, 2)
    # 600 correlated draws per point: within 0.35 exact sds of the exact mean.
    assert np.all(np.abs(z.mean(1) - gpu.mean.cpu().numpy()) < 0.35 * exact_sd)
    with _any_warnings():
        sir = importance_posterior(vae, x, 500, num_proposals=4000)
    # The importance-sampled log p(x) against quadrature's, within the weights' error.
    ess = sir.sample_stats.ess.values
    error = np.abs(sir.sample_stats.log_marginal.values - gpu.log_marginal.cpu().numpy())
    assert np.all(error < 3.0 / np.sqrt(ess))


def test_cli_trains_on_the_device_and_the_run_loads_on_the_cpu(tmp_path) -> None:
    run = tmp_path / "run"
    status = main(["train", "--device", "cuda", "--epochs", "2", "--hidden", "32", "--out", str(run), "--no-progress"])
    assert status == 0
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "cuda"
    vae = load(run, "cpu")
    assert all(p.device.type == "cpu" for p in vae.parameters())
    assert main(["evaluate", str(run), "--iw-samples", "8", "--no-progress"]) == 0
