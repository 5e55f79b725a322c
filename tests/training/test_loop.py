"""Training: the held-out ELBO improves, runs are reproducible, resume continues exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_vae import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainingDivergedError,
    build_vae,
    evaluate_elbo,
    fit,
    load,
    resume_run,
    train_run,
)
from pyro_vae.data.datasets import load_digits
from pyro_vae.runs.checkpoint import WEIGHTS_FILE, load_training_state


@pytest.fixture
def digits_npy(tmp_path):
    x, _ = load_digits()
    path = tmp_path / "digits300.npy"
    np.save(path, x[:300])
    return path


def small_config(data: str, epochs: int = 3, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(z_dim=2, hidden=(32,)),
        data=DataConfig(data=data),
        train=TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, **train),
    )


def test_training_raises_the_held_out_elbo():
    x, _ = load_digits()
    x = torch.from_numpy(x)
    train, val = x[:1400], x[1400:]
    vae = build_vae(ModelConfig(x_dim=64, z_dim=4, hidden=(64,)))
    binarize = torch.bernoulli
    before = evaluate_elbo(vae, val, transform=binarize, particles=4)
    history = fit(vae, train, val, TrainConfig(epochs=8, batch_size=64, lr=3e-3), transform=binarize, progress=False)
    after = evaluate_elbo(vae, val, transform=binarize, particles=4)
    # Untrained: about -45 nats; 8 epochs reach about -30. A 5-nat margin is far above
    # the Monte Carlo error of a 4-particle estimate over 397 points (~0.1 nat).
    assert after > before + 5, (before, after)
    assert len(history) == 8 and all(math.isfinite(h.train_loss) for h in history)
    assert history[-1].train_loss < history[0].train_loss


def test_the_same_seed_gives_the_same_run(tmp_path, digits_npy):
    a = train_run(small_config(str(digits_npy)), tmp_path / "a", progress=False)
    b = train_run(small_config(str(digits_npy)), tmp_path / "b", progress=False)
    c = train_run(small_config(str(digits_npy), seed=1), tmp_path / "c", progress=False)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert [h.train_loss for h in a.history] != [h.train_loss for h in c.history]


def test_resume_continues_the_same_history(tmp_path, digits_npy):
    full = train_run(small_config(str(digits_npy), epochs=4), tmp_path / "full", progress=False)
    train_run(small_config(str(digits_npy), epochs=2), tmp_path / "part", progress=False)
    resumed = resume_run(tmp_path / "part", epochs=4, progress=False)
    strip = lambda hs: [(h.epoch, h.train_loss, h.val_elbo) for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    for (k, v), w in zip(full.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(v, w), k
    assert (tmp_path / "part" / "metrics.csv").read_text().count("\n") == 5  # header + 4 epochs


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, digits_npy, monkeypatch):
    run = tmp_path / "run"
    train_run(small_config(str(digits_npy), epochs=2), run, progress=False)
    good_weights = (run / WEIGHTS_FILE).read_bytes()
    good_state = load_training_state(run)

    from pyro_vae.inference.objectives import TraceELBO

    real_loss = TraceELBO.loss
    calls = {"n": 0}

    def poisoned(self, vae, x, num_data, beta=1.0):
        calls["n"] += 1
        loss = real_loss(self, vae, x, num_data, beta)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(TraceELBO, "loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 3.*last good checkpoint"):
        resume_run(run, epochs=4, progress=False)
    assert (run / WEIGHTS_FILE).read_bytes() == good_weights
    assert load_training_state(run)["history"] == good_state["history"]
    assert torch.isfinite(torch.cat([p.flatten() for p in load(run).parameters()])).all()


def test_run_directory_contents(tmp_path, digits_npy):
    result = train_run(small_config(str(digits_npy), epochs=2), tmp_path / "run", progress=False)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "training_state.pt", "metrics.csv", "summary.json",
            "loss.png", "reconstructions.png", "samples.png", "latent.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert result.config.model.x_dim == 64
    assert math.isfinite(result.val_elbo)
