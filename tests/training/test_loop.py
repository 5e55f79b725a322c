"""Training: the held-out ELBO improves, runs are reproducible, resume continues exactly."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pyro_vae import (
    DataConfig,
    DataError,
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
from pyro_vae.inference.objectives import Objective, TraceELBO
from pyro_vae.runs.checkpoint import WEIGHTS_FILE, load_training_state
from pyro_vae.training.loop import EpochRecord, best_epoch, should_stop


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
    for (k, v), w in zip(full.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True):
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
    assert {
        "config.json",
        "model.safetensors",
        "training_state.pt",
        "metrics.csv",
        "summary.json",
        "loss.png",
        "reconstructions.png",
        "samples.png",
        "latent.png",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert result.config.model.x_dim == 64
    assert math.isfinite(result.val_elbo)


# --------------------------------------------------------------------- the KL schedule
class _Recording(Objective):
    """TraceELBO that records the KL weight and the minibatch of every loss call."""

    def __init__(self) -> None:
        self.inner = TraceELBO(1)
        self.calls: list[tuple[float, torch.Tensor]] = []

    def loss(self, vae, x, num_data, beta=1.0, **kwargs):
        self.calls.append((float(beta), x.detach().clone()))
        return self.inner.loss(vae, x, num_data, beta, **kwargs)


def _betas_per_epoch(history_lengths: list[int], calls: list[tuple[float, torch.Tensor]]) -> list[set[float]]:
    """The set of KL weights used in each epoch, split where ``on_epoch_end`` saw the calls."""
    bounds = [0, *history_lengths]
    return [{beta for beta, _ in calls[a:b]} for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    "beta, warmup, weights",
    [
        (1.0, 0, [1.0, 1.0, 1.0]),
        (2.0, 0, [2.0, 2.0, 2.0]),
        (1.0, 1, [1.0, 1.0, 1.0]),  # one epoch of warm-up is no warm-up
        (1.0, 3, [1 / 3, 2 / 3, 1.0, 1.0, 1.0]),
        (2.0, 4, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]),
    ],
)
def test_kl_weight_rises_linearly_from_beta_over_warmup_to_beta(beta, warmup, weights):
    # Exact: epoch e (0-based) of a warm-up of W epochs weighs the KL by beta * min(1, (e + 1) / W).
    config = TrainConfig(beta=beta, kl_warmup=warmup)
    assert [config.kl_weight(e) for e in range(len(weights))] == pytest.approx(weights, rel=1e-12, abs=0)


def test_fit_weights_the_kl_term_by_the_schedule_in_every_epoch_and_after_a_resume(tiny_binary):
    """The weight each epoch's loss calls get: an off-by-one warm-up, a warm-up or beta
    that fit ignores, or a resume that restarts the warm-up all give other numbers."""
    config = TrainConfig(epochs=5, batch_size=16, beta=2.0, kl_warmup=3)
    expected = [{2 / 3}, {4 / 3}, {2.0}, {2.0}, {2.0}]
    objective = _Recording()
    ends: list[int] = []
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    fit(
        vae,
        tiny_binary,
        config=config,
        objective=objective,
        progress=False,
        on_epoch_end=lambda h: ends.append(len(objective.calls)),
    )
    assert len(objective.calls) == 5 * 4  # 64 rows in batches of 16: 4 steps per epoch
    per_epoch = _betas_per_epoch(ends, objective.calls)
    assert [sorted(s) for s in per_epoch] == [pytest.approx(sorted(s), rel=1e-12) for s in expected]

    # Resumed after epoch 2 (the history carries the epoch count): epochs 3-5 weigh as above.
    resumed, ends = _Recording(), []
    history = fit(
        build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,))),
        tiny_binary,
        config=TrainConfig(epochs=2, batch_size=16, beta=2.0, kl_warmup=3),
        progress=False,
    )
    fit(
        vae,
        tiny_binary,
        config=config,
        objective=resumed,
        history=history,
        progress=False,
        on_epoch_end=lambda h: ends.append(len(resumed.calls)),
    )
    assert [sorted(s) for s in _betas_per_epoch(ends, resumed.calls)] == [
        pytest.approx(sorted(s), rel=1e-12) for s in expected[2:]
    ]


def test_the_reported_loss_is_affine_in_the_kl_weight_with_the_kl_as_slope(tiny_binary):
    """fit's reported loss is reconstruction + beta x KL on the same draws: a loss that
    ignored beta would not move with it."""

    def first_epoch_loss(beta: float) -> float:
        torch.manual_seed(0)
        vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
        # One step over all 64 rows; its loss is computed before the step, so every beta
        # sees the same model and (same seed) the same eps.
        return fit(vae, tiny_binary, config=TrainConfig(epochs=1, batch_size=64, beta=beta), progress=False)[
            0
        ].train_loss

    l1, l2, l3 = (first_epoch_loss(b) for b in (1.0, 2.0, 3.0))
    slope = l2 - l1  # the Monte Carlo KL term, mean over points of log q(z|x) - log p(z)
    assert l3 - l1 == pytest.approx(2 * slope, rel=1e-4)  # affine: float32 rounding only

    # The slope estimates KL(q(z|x) || p(z)) averaged over the 64 points, from one draw
    # per point. Its standard error, sqrt(sum_i var_i) / 64, comes from 2,000 draws per
    # point of the same term; tolerance 5 SE.
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    with torch.no_grad():
        q, p = vae.posterior(tiny_binary), vae.prior()
        z = q.sample((2000,))  # (2000, 64, 2)
        terms = q.log_prob(z) - p.log_prob(z)  # (2000, 64)
        kl = float(torch.distributions.kl_divergence(q, p.expand(q.batch_shape)).mean())
    se = float(terms.var(0).sum().sqrt() / 64)
    assert kl > 7 * se  # so a slope of 0 (beta ignored) lies outside the tolerance
    assert abs(slope - kl) < 5 * se, (slope, kl, se)


# ------------------------------------------------------------- binarization in training
#: Rows of the binarization tests: 6 exact 0/1 columns spell the row number (a
#: Bernoulli draw or a threshold keeps them), then GREY_FEATURES columns of grey value P.
P, GREY_FEATURES = 0.3, 40


def _grey_rows() -> np.ndarray:
    ids = ((np.arange(64)[:, None] >> np.arange(6)) & 1).astype(np.float32)  # (64, 6)
    return np.concatenate([ids, np.full((64, GREY_FEATURES), P, dtype=np.float32)], axis=1)


def _seen_by_the_model(tmp_path, monkeypatch, binarize: str, likelihood: str = "bernoulli", threshold: float = 0.5):
    """Train a run on the grey rows (3 epochs); what the objective saw, per epoch: {row: grey columns}."""
    path = tmp_path / "grey.npy"
    np.save(path, _grey_rows())
    seen: list[torch.Tensor] = []
    real_loss = TraceELBO.loss

    def recording(self, vae, x, num_data, beta=1.0, **kwargs):
        seen.append(x.detach().clone())
        return real_loss(self, vae, x, num_data, beta, **kwargs)

    monkeypatch.setattr(TraceELBO, "loss", recording)
    config = RunConfig(
        model=ModelConfig(z_dim=2, hidden=(8,), likelihood=likelihood),
        data=DataConfig(data=str(path), binarize=binarize, threshold=threshold),
        train=TrainConfig(epochs=3, batch_size=16, seed=2),
    )
    result = train_run(config, tmp_path / "run", progress=False)
    rows = torch.cat(seen)  # (3 * n_train, 46)
    n_train = rows.shape[0] // 3
    assert rows.shape[0] == 3 * n_train and n_train >= 50
    ids = (rows[:, :6] * 2 ** torch.arange(6)).sum(1).long()  # the row numbers, exact
    epochs = []
    for e in range(3):
        part = slice(e * n_train, (e + 1) * n_train)
        epoch = dict(zip(ids[part].tolist(), rows[part, 6:], strict=True))
        assert len(epoch) == n_train  # every training row once per epoch
        epochs.append(epoch)
    assert epochs[0].keys() == epochs[1].keys() == epochs[2].keys()
    return epochs, result


@pytest.mark.parametrize("mode", ["dynamic", "auto"])  # auto: dynamic for the Bernoulli likelihood
def test_dynamic_binarization_draws_fresh_bernoulli_data_every_epoch(tmp_path, monkeypatch, mode):
    epochs, _ = _seen_by_the_model(tmp_path, monkeypatch, mode)
    n = len(epochs[0]) * GREY_FEATURES  # Bernoulli draws per epoch (about 57 rows x 40)
    for epoch in epochs:
        values = torch.stack(list(epoch.values()))
        assert set(values.unique().tolist()) <= {0.0, 1.0}
        # The mean of n draws of Bernoulli(P): s.e. sqrt(P (1 - P) / n) ~ 0.0096 at n ~ 2,300;
        # tolerance 4 s.e. (a threshold at 0.5 gives 0, one at 0.25 gives 1).
        se = math.sqrt(P * (1 - P) / n)
        assert abs(float(values.mean()) - P) < 4 * se, float(values.mean())
    # The same row in two epochs: independent draws differ in a fraction 2 P (1 - P) = 0.42
    # of its grey values (s.e. sqrt(0.42 x 0.58 / n) ~ 0.010; tolerance 4 s.e.). Draws
    # reused from one epoch to the next differ in none.
    q = 2 * P * (1 - P)
    for a, b in ((0, 1), (1, 2)):
        changed = torch.stack([(epochs[a][r] != epochs[b][r]).float() for r in epochs[a]]).mean()
        assert abs(float(changed) - q) < 4 * math.sqrt(q * (1 - q) / n), (a, b, float(changed))


def test_threshold_binarization_is_fixed_and_cuts_at_the_threshold(tmp_path, monkeypatch):
    epochs, _ = _seen_by_the_model(tmp_path, monkeypatch, "threshold", threshold=0.25)
    for epoch in epochs:
        # P = 0.3 > 0.25: every grey value becomes exactly 1, in every epoch (a dynamic
        # draw would give 0s, a cut at the default 0.5 would give only 0s).
        assert all(torch.equal(v, torch.ones(GREY_FEATURES)) for v in epoch.values())


def test_no_binarization_for_a_likelihood_of_real_values(tmp_path, monkeypatch):
    # `auto` with the continuous Bernoulli (support [0, 1]): the grey values as they are.
    epochs, result = _seen_by_the_model(tmp_path, monkeypatch, "auto", likelihood="cbernoulli")
    assert not result.vae.likelihood.needs_binary
    for epoch in epochs:
        assert all(torch.equal(v, torch.full((GREY_FEATURES,), P)) for v in epoch.values())


# ------------------------------------------------------------------ early stopping
def _records(val_elbos: list[float]) -> list[EpochRecord]:
    return [EpochRecord(e, 1.0, v, 0.1) for e, v in enumerate(val_elbos, 1)]


def test_best_epoch_is_the_first_highest_finite_validation_elbo():
    assert best_epoch(_records([-5.0, -4.0, -4.5, -4.0])) == 2  # a tie: the earlier epoch
    assert best_epoch(_records([-5.0, math.nan, -6.0])) == 1  # NaN is no score
    assert best_epoch(_records([math.nan, -6.0, -7.0])) == 2
    assert best_epoch(_records([math.nan, math.nan])) is None and best_epoch([]) is None


@pytest.mark.parametrize(
    "val_elbos, patience, stop",
    [
        ([-5.0, -4.0, -4.5], 1, True),  # one epoch without improvement, patience 1
        ([-5.0, -4.0, -4.5], 2, False),
        ([-5.0, -4.0, -4.5, -4.2], 2, True),  # exactly `patience` epochs since the best
        ([-5.0, -4.0, -4.5, -4.2], 3, False),
        ([-5.0, -4.0, -4.5, -3.0], 1, False),  # the last epoch is the best
        ([-5.0, -4.0, -4.5, -4.2], 0, False),  # 0: no early stopping
        ([math.nan, math.nan, math.nan], 1, False),  # no validation score: never
    ],
)
def test_should_stop_after_patience_epochs_without_a_better_validation_elbo(val_elbos, patience, stop):
    assert should_stop(_records(val_elbos), patience) is stop


def test_fit_stops_at_the_epoch_early_stopping_names(tiny_binary, monkeypatch):
    """The validation ELBO scripted per epoch: best at epoch 2, so patience 2 stops fit
    after epoch 4 (and patience 3 after epoch 5); on_epoch_end saw every epoch."""
    from pyro_vae.training import loop

    for patience, epochs_run in ((2, 4), (3, 5), (0, 6)):
        scores = iter([-5.0, -4.0, -4.5, -4.2, -4.1, -4.3])
        monkeypatch.setattr(loop, "evaluate_elbo", lambda *a, **k: next(scores))
        seen: list[int] = []
        history = fit(
            build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,))),
            tiny_binary,
            tiny_binary[:8],
            TrainConfig(epochs=6, batch_size=64, patience=patience),
            progress=False,
            on_epoch_end=lambda h: seen.append(len(h)),
        )
        assert [h.epoch for h in history] == list(range(1, epochs_run + 1)), patience
        assert seen == list(range(1, epochs_run + 1))
        assert [h.val_elbo for h in history] == [-5.0, -4.0, -4.5, -4.2, -4.1, -4.3][:epochs_run]


def test_fit_checks_that_conditions_match_the_rows(tiny_binary):
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    config = TrainConfig(epochs=1)
    with pytest.raises(DataError, match=r"^`y` must hold one condition per row of `train` \(64 rows\), got \(10,\)$"):
        fit(vae, tiny_binary, config=config, y=torch.zeros(10), progress=False)
    with pytest.raises(DataError, match=r"^`y` must hold one condition per row of `train` \(64 rows\), got list$"):
        fit(vae, tiny_binary, config=config, y=[0] * 64, progress=False)
    with pytest.raises(DataError, match=r"^`val_y` must hold one condition per row of `val` \(no rows\), got \(8,\)$"):
        fit(vae, tiny_binary, config=config, val_y=torch.zeros(8), progress=False)
