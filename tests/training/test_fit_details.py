"""What ``fit`` reports and whom it tells: the epoch's loss, the progress bar, its errors.

Each test closes a blind spot that mutation testing (``tools/mutation.py``) found in
``pyro_vae/training/loop.py``. The checks are exact: a stand-in objective with a known
value, or the same seed on both sides.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

from pyro_vae import DataError, ModelConfig, TrainConfig, TrainingDivergedError, build_vae, fit
from pyro_vae.data.rows import ArrayRows
from pyro_vae.inference.objectives import Objective


class RowSums(Objective):
    """A loss of known value: each row costs the sum of its values (scaled to the full data)."""

    def __init__(self, poison_at: int | None = None) -> None:
        self.calls = 0
        self.poison_at = poison_at

    def loss(self, vae, x, num_data, beta=1.0, **program_kwargs):
        self.calls += 1
        touch = sum(p.sum() for p in vae.parameters()) * 0.0  # a gradient for every parameter
        loss = x.sum() * (num_data / x.shape[0]) + touch
        return loss * float("nan") if self.calls == self.poison_at else loss


def tiny_vae():
    return build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))


def test_the_epoch_loss_is_the_mean_over_every_row_of_the_epoch(tiny_binary):
    """Four minibatches of 16: the recorded loss per data point is the mean row sum over
    all 64 rows (each row is seen once an epoch), not the last minibatch's share."""
    history = fit(
        tiny_vae(), tiny_binary, None, TrainConfig(epochs=2, batch_size=16), objective=RowSums(), progress=False
    )
    expected = float(tiny_binary.sum(1).mean())
    for record in history:
        assert record.train_loss == pytest.approx(expected, rel=1e-6)


def test_a_diverging_loss_says_where_and_what_to_do(tiny_binary):
    objective = RowSums(poison_at=5)  # epoch 2 (4 steps an epoch), its first step
    with pytest.raises(TrainingDivergedError) as error:
        fit(tiny_vae(), tiny_binary, None, TrainConfig(epochs=3, batch_size=16), objective=objective, progress=False)
    assert str(error.value) == (
        "the loss became nan at epoch 2, step 1; the model keeps its parameters from before that step "
        "(1 epochs completed): lower `lr` or check the data for extreme values"
    )


def test_progress_false_is_silent_and_the_bar_counts_epochs(tiny_binary, capsys):
    fit(tiny_vae(), tiny_binary, None, TrainConfig(epochs=2, batch_size=32), objective=RowSums(), progress=False)
    assert capsys.readouterr().err == ""
    fit(tiny_vae(), tiny_binary[:48], tiny_binary[48:], TrainConfig(epochs=2, batch_size=16), progress=True)
    bar = capsys.readouterr().err
    assert "2/2" in bar and "3/2" not in bar and "4/2" not in bar
    assert "loss=" in bar and "val_elbo=" in bar  # the bar shows both numbers of the epoch


def test_rows_train_exactly_as_the_tensor_they_hold(tiny_binary):
    """``fit`` reads :class:`ArrayRows` itself (not as a wrapped tensor): same seed, same history."""
    config = TrainConfig(epochs=2, batch_size=16, seed=3)

    def run(train, val):
        torch.manual_seed(0)
        vae = tiny_vae()
        history = fit(vae, train, val, config, progress=False)
        return [(h.train_loss, h.val_elbo) for h in history], [p.detach().clone() for p in vae.parameters()]

    array = tiny_binary.numpy()
    from_tensor = run(tiny_binary[:48], tiny_binary[48:])
    from_rows = run(ArrayRows(array[:48]), tiny_binary[48:])
    assert from_rows[0] == from_tensor[0]
    assert all(torch.equal(a, b) for a, b in zip(from_rows[1], from_tensor[1], strict=True))


def test_a_conditional_vae_is_validated_with_its_validation_labels(tiny_binary):
    """``val_y`` reaches the validation ELBO (a conditional VAE without it cannot score)."""
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), condition="labels", num_classes=3))
    y = torch.arange(64) % 3
    history = fit(
        vae,
        tiny_binary[:48],
        tiny_binary[48:],
        TrainConfig(epochs=1, batch_size=16),
        y=y[:48],
        val_y=y[48:],
        progress=False,
    )
    assert np.isfinite(history[0].val_elbo)


def test_a_conditional_vae_trains_in_a_process_group(tmp_path, tiny_binary):
    """Under torch.distributed, ``fit`` probes the model with two rows and their labels, and
    checks the ranks' row counts: a one-rank group trains a conditional VAE as one process does."""
    y = torch.arange(64) % 3
    config = TrainConfig(epochs=1, batch_size=16, seed=2)

    def run():
        torch.manual_seed(0)
        vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), condition="labels", num_classes=3))
        return [h.train_loss for h in fit(vae, tiny_binary, None, config, y=y, progress=False)]

    plain = run()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
    try:
        in_group = run()
    finally:
        dist.destroy_process_group()
    assert in_group == plain


def test_epoch_seeds_stay_signed_64_bit_for_every_allowed_seed():
    """Seeds up to 2**63 - 1 are allowed (config LIMITS); each epoch's seed must stay in the
    signed 64-bit range that torch stores and checkpoints hold, and differ between epochs."""
    from pyro_vae.training.loop import epoch_seed

    for seed in (0, 1, 2**62 + 12_345, 2**63 - 2):
        seeds = [epoch_seed(seed, epoch) for epoch in range(4)]
        assert all(0 <= s < 2**63 - 1 for s in seeds) and len(set(seeds)) == 4
    assert epoch_seed(2**63 - 2, 0) == (2**63 - 2) * 1_000_003 % (2**63 - 1)


def test_grey_levels_under_a_bernoulli_likelihood_get_one_clear_error():
    # fit from Python without the command line's binarization: stopped before any step,
    # with the fix named, instead of Pyro's support error from inside the trace.
    from pyro_vae.data.transforms import binarize

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
    grey = torch.rand(32, 6)
    before = [p.detach().clone() for p in vae.parameters()]
    with pytest.raises(DataError, match=r"needs 0/1 observations, but the training data holds .* \(row 0\); binarize"):
        fit(vae, grey, config=TrainConfig(epochs=1, batch_size=8), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters(), strict=True))
    # With the transform the same data trains.
    history = fit(
        vae,
        grey,
        config=TrainConfig(epochs=1, batch_size=8),
        transform=lambda x: binarize(x, "dynamic"),
        progress=False,
    )
    assert len(history) == 1
