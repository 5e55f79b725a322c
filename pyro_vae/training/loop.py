"""The one training loop: SVI with a Pyro objective and a ``torch.optim`` optimizer.

``fit`` is the easy path. It is SVI in the form Pyro itself uses in
``pyro.contrib.gp.util.train``: the objective's ``differentiable_loss`` (``Trace_ELBO``
by default) and a torch optimizer over ``vae.parameters()``, so that no parameter lives
in Pyro's global param store and two models in one process never share anything.

Randomness is re-seeded from ``(seed, epoch)`` at the start of every epoch, which makes
a run resumed at epoch k draw exactly what an uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.rows import Rows, TensorRows
from ..data.transforms import BatchTransform
from ..errors import DataError, TrainingDivergedError
from ..inference.evaluation import evaluate_elbo
from ..inference.objectives import Objective, build_objective
from ..model.vae import VAE, local_params
from ..seeding import forked_rng
from .batches import default_prefetch, minibatches
from .parallel import parallelism

__all__ = ["EpochRecord", "fit", "epoch_seed", "best_epoch", "should_stop"]


@dataclass
class EpochRecord:
    """One line of the training history.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: Mean negative training objective per data point over the epoch.
        val_elbo: ELBO per data point on the validation data (NaN without it).
        seconds: Wall time of the epoch, validation included.
    """

    epoch: int
    train_loss: float
    val_elbo: float
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def best_epoch(history: Sequence[EpochRecord]) -> int | None:
    """The 1-based epoch with the highest validation ELBO (the first of ties), or None.

    Example:
        >>> best_epoch([EpochRecord(1, 3.0, -5.0, 0.1), EpochRecord(2, 2.0, -4.0, 0.1), EpochRecord(3, 2.5, -4.5, 0.1)])
        2
    """
    scored = [h for h in history if math.isfinite(h.val_elbo)]
    if not scored:
        return None
    return max(scored, key=lambda h: (h.val_elbo, -h.epoch)).epoch


def should_stop(history: Sequence[EpochRecord], patience: int) -> bool:
    """Early stopping: ``patience`` epochs (> 0) have passed without a better validation ELBO.

    Example:
        >>> records = [EpochRecord(e, 1.0, v, 0.1) for e, v in enumerate([-5.0, -4.0, -4.5, -4.2], 1)]
        >>> should_stop(records, 2), should_stop(records, 3)
        (True, False)
    """
    best = best_epoch(history)
    return patience > 0 and best is not None and history[-1].epoch - best >= patience


def _check_rows(y: torch.Tensor | None, x: torch.Tensor | Rows | None, name: str, rows_name: str) -> None:
    if y is not None and (x is None or not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        expected = "no rows" if x is None else f"{x.shape[0]} rows"
        raise DataError(f"`{name}` must hold one condition per row of `{rows_name}` ({expected}), got {got}")


#: Rows of the training data whose observations :func:`fit` checks before training.
_PROBE_ROWS = 256


def _check_observations(
    vae: VAE, source: Rows, device: torch.device, transform: BatchTransform | None, seed: int
) -> None:
    """One clear error, before any step, for observations the likelihood cannot score.

    The first rows, transformed as the minibatches will be (in a forked random stream,
    so training draws the same numbers), must be in the likelihood's support, and 0/1
    for one that needs binary data (Pyro would fail inside the trace otherwise).
    """
    probe = source.gather(slice(0, min(_PROBE_ROWS, source.shape[0])), device)
    if transform is not None:
        with forked_rng(device, seed=seed):
            probe = transform(probe)
    vae.likelihood.check_support(probe)
    if getattr(vae.likelihood, "needs_binary", False):
        bad = (probe != 0) & (probe != 1)
        if bool(bad.any()):
            where = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise DataError(
                f"the {type(vae.likelihood).__name__} needs 0/1 observations, but the training data holds "
                f"{float(probe[where]):.4g} (row {where[0]}); binarize the minibatches "
                "(fit(..., transform=lambda x: binarize(x, 'dynamic')); the command line does this by default) "
                "or use the continuous Bernoulli likelihood for values in [0, 1]"
            )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def fit(
    vae: VAE,
    train: torch.Tensor | Rows,
    val: torch.Tensor | Rows | None = None,
    config: TrainConfig | None = None,
    *,
    objective: Objective | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    transform: BatchTransform | None = None,
    history: list[EpochRecord] | None = None,
    on_epoch_end: Optional[Callable[[list[EpochRecord]], None]] = None,
    check_epoch: Optional[Callable[[list[EpochRecord]], None]] = None,
    progress: bool = True,
    y: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    prefetch: bool | None = None,
) -> list[EpochRecord]:
    """Train ``vae`` by stochastic variational inference.

    Args:
        vae: The model to train, in place.
        train: Training data ``(N, x_dim)``: a tensor on the model's device, or
            :class:`~pyro_vae.data.rows.Rows` (e.g. a memory-mapped file from
            ``load_dataset(..., storage="mapped")``), whose minibatches are read,
            converted to float32 and moved to the model's device one at a time. The
            same seed gives the same minibatches and the same history either way.
        val: Validation data (a tensor or rows); its ELBO per data point is recorded
            each epoch, streamed in blocks for rows.
        config: Epochs, batch size, learning rate, seed, objective, particles, KL weight.
        objective: The loss; default the one ``config.elbo`` names (``Trace_ELBO``).
        optimizer: Default ``Adam(vae.parameters(), lr=config.lr)``; pass one back in
            (with its state loaded) to resume.
        transform: Applied to each minibatch before the model sees it (binarization).
        history: Records of earlier epochs; training goes on after the last of them.
        on_epoch_end: Called with the history after each epoch (e.g. to checkpoint), on
            the main process only.
        check_epoch: Called with the history after each epoch on every process, before
            ``on_epoch_end``; it raises to stop training (e.g. a divergence guard). It
            must decide from the history alone, so that every process decides alike.
        progress: Show a progress bar with the running loss.
        y: For a conditional VAE, the condition of each training row (e.g. its label),
            on the model's device; the minibatches take theirs.
        val_y: The same for the validation rows.
        prefetch: For rows, assemble the next minibatch in a background thread while
            the current one trains; default by device
            (:data:`pyro_vae.training.batches.PREFETCH`: measured, not assumed).

    Under an initialized ``torch.distributed`` process group (e.g. launched with
    ``torchrun``), ``fit`` trains data-parallel with DDP (see
    :mod:`pyro_vae.training.distributed`): every process passes the same ``train``, takes its
    shard of each epoch's permutation, and ``config.batch_size`` is per process (global
    batch = world size x batch size). ``on_epoch_end`` and the progress bar run on rank
    0 only; the returned history (global loss, validation ELBO) is the same on every rank.

    With ``config.patience > 0`` training stops early once that many epochs have
    passed without a better validation ELBO (:func:`should_stop`); the decision
    depends on the history alone, so a resumed run stops where an uninterrupted one
    would.

    Returns:
        The history: one :class:`EpochRecord` per epoch, earlier ones included.

    Raises:
        DataError: The data does not fit the model.
        TrainingDivergedError: The loss became NaN or inf. Parameters are left as they
            were before the failing step, and ``on_epoch_end`` has saved the epochs
            that completed.
    """
    config = config or TrainConfig()
    config.validate()
    # A tensor is read where it lies, as train[rows]; rows go to the model's device.
    source = train if isinstance(train, Rows) else TensorRows(train)
    model_device = next(vae.parameters()).device
    device = source.device if source.device is not None else model_device
    vae.check_x(source.gather(slice(0, 1), device))
    _check_observations(vae, source, device, transform, config.seed)
    if val is not None:
        vae.check_x(val.gather(slice(0, 1), model_device) if isinstance(val, Rows) else val[:1])
    _check_rows(y, train, "y", "train")
    _check_rows(val_y, val, "val_y", "val")
    if objective is None:
        objective = build_objective(config)
    optimizer = optimizer or torch.optim.Adam(vae.parameters(), lr=config.lr)
    history = list(history or [])
    num_data = train.shape[0]
    first_epoch = len(history)
    prefetch = default_prefetch(device) if prefetch is None else prefetch
    # Pyro's module-local parameter mode for the loop only: the program reads the VAE's
    # own tensors and writes nothing to the global param store.
    with local_params():
        # This process alone, or one replica of a torch.distributed job (DDP).
        probe = {} if y is None else {"y": y[:2]}
        replicas = parallelism(vae, objective, source.gather(slice(0, 2), device), num_data, transform, **probe)
        bar = tqdm(
            total=config.epochs,
            initial=first_epoch,
            disable=not (progress and replicas.is_main),
            unit="epoch",
            dynamic_ncols=True,
        )
        try:
            for epoch in range(first_epoch, config.epochs):
                start = time.perf_counter()
                vae.train()
                generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
                torch.manual_seed(replicas.seed(epoch_seed(config.seed, epoch)))
                # Each rank gathers only its shard's rows; rows read from a file keep the
                # permutation on the host, where the gather happens.
                order = replicas.shard(torch.randperm(num_data, generator=generator))
                if source.device is not None:
                    order = order.to(source.device)
                total, seen = 0.0, 0
                beta = config.kl_weight(epoch)
                batches = minibatches(source, order, config.batch_size, device, prefetch=prefetch)
                for step, (rows, xb) in enumerate(batches):
                    if transform is not None:
                        xb = transform(xb)
                    loss = replicas.loss(xb, num_data, beta, **({} if y is None else {"y": y[rows.to(y.device)]}))
                    # Averaged over processes, so that every rank takes the same decision.
                    mean_loss = float(replicas.mean(loss.detach()))  # one device sync per step
                    if not math.isfinite(mean_loss):
                        raise TrainingDivergedError(
                            f"the loss became {mean_loss} at epoch {epoch + 1}, step {step + 1}; the model "
                            f"keeps its parameters from before that step ({epoch} epochs completed): lower `lr` "
                            "or check the data for extreme values"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    # The loss estimates the full-data objective: per data point it is / N,
                    # and the global batch has world_size times this process's rows.
                    total += mean_loss * xb.shape[0] * replicas.world_size / num_data
                    seen += xb.shape[0] * replicas.world_size
                val_elbo = math.nan
                if val is not None:
                    val_elbo = replicas.shard_mean(
                        lambda x, x_y, seed: evaluate_elbo(
                            vae,
                            x,
                            particles=config.eval_particles,
                            seed=seed,
                            transform=transform,
                            y=x_y,
                        ),
                        val,
                        val_y,
                        config.seed,
                    )
                history.append(EpochRecord(epoch + 1, total / seen, val_elbo, time.perf_counter() - start))
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1].train_loss:.3f}", val_elbo=f"{val_elbo:.3f}")
                if check_epoch is not None:
                    check_epoch(history)
                if on_epoch_end is not None and replicas.is_main:
                    on_epoch_end(history)
                if should_stop(history, config.patience):  # the same decision on every rank
                    break
        finally:
            bar.close()
    return history
