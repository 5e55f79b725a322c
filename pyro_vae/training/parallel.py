"""How a process takes part in training: alone, or as one DDP replica under ``torchrun``.

Every process holds a full replica of the VAE and sees the full training data: a copy in
memory for a small data set, or the same memory-mapped file, whose pages the processes of
one machine share through the page cache (:mod:`pyro_vae.data.rows`). Each epoch, every
process draws the same permutation of the rows (seeded from ``(seed, epoch)``, exactly as
single-process training does) and takes its own shard of it, the positions
:class:`~torch.utils.data.DistributedSampler` gives it; so the data is reshuffled every
epoch, each row is seen by one process, and a process reads only its shard's rows.
``DistributedDataParallel`` averages the gradients.

**Why the loss runs inside a module's forward.** DDP arms its gradient all-reduce in
``DistributedDataParallel.forward`` (``Reducer.prepare_for_backward``). The VAE's loss is
computed by Pyro calling ``vae.model`` and ``vae.guide``, so wrapping the VAE in DDP and
calling those methods would bypass DDP: each process would silently train on its own
gradients. ``objective(vae)`` (:class:`~pyro_vae.inference.objectives.ObjectiveModule`,
the shape of Pyro's ``ELBOModule``) is a module whose ``forward`` *is* the objective's
loss; wrapped in DDP, every step goes through DDP's forward and its reducer sees the
whole graph, whatever the prior, guide, likelihood or objective.

**Scaling.** Each process's loss is ``num_data / B_local`` times the sum over its
``B_local`` rows: an unbiased estimate of the full-data objective, the same quantity a
single process estimates. DDP averages the gradients over the ``W`` processes, which
gives the gradient of the same estimate built from the global batch of ``W * B_local``
rows. ``batch_size`` is therefore *per process*, the global batch is ``W * batch_size``,
and the learning rate means what it means for a single process with that global batch:
to reproduce a single-process run with batch B on W processes, pass ``B / W``.

**Randomness.** The permutation is the same on every rank; the Monte Carlo draws (eps,
dynamic binarization) come from :func:`rank_seed`, different on every rank, equal to the
single-process stream on rank 0. DDP broadcasts rank 0's weights when it wraps the model,
so all replicas start equal and stay bit-identical.

The process group itself (joining, timeouts, rank-0 work) is
:mod:`pyro_vae.training.distributed`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..data.rows import Rows
from ..data.rows import part as rows_part
from ..data.transforms import BatchTransform
from ..errors import ConfigError, DataError
from ..inference.objectives import Objective
from ..model.vae import VAE
from ..seeding import forked_rng
from .batches import streamed_mean
from .distributed import is_initialized, rank_seed

__all__ = ["Parallelism", "DataParallel", "parallelism"]


class Parallelism:
    """How one process takes part in training; this base class is the single process.

    :func:`~pyro_vae.training.loop.fit` asks it for the rows of each epoch, the loss of each
    step and the mean of numbers over processes; :class:`DataParallel` answers for a
    replica of a torch.distributed job.

    Args:
        vae: The model.
        objective: The training objective.

    Example:
        >>> p = Parallelism(None, None)
        >>> p.world_size, p.is_main, p.shard(torch.arange(3)).tolist()
        (1, True, [0, 1, 2])
    """

    rank: int = 0
    world_size: int = 1

    def __init__(self, vae: VAE, objective: Objective) -> None:
        self.vae = vae
        self.objective = objective

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This process's seed for the random draws (eps, binarization) of an epoch seeded
        with ``seed``: ``seed`` itself on rank 0, a different stream on every other rank."""
        return rank_seed(seed, self.rank)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This process's rows of the epoch's permutation ``order`` ``(N,)``."""
        return order

    def loss(self, x: torch.Tensor, num_data: int, beta: float, **program_kwargs: Any) -> torch.Tensor:
        """The differentiable loss of this process's minibatch ``x`` (and e.g. its ``y``)."""
        return self.objective.loss(self.vae, x, num_data, beta, **program_kwargs)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over processes (the same tensor on every rank)."""
        return value

    def shard_mean(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor | None, int], float],
        x: torch.Tensor | Rows,
        y: torch.Tensor | None,
        seed: int,
    ) -> float:
        """Mean of the per-row statistic ``fn(rows, their y, seed)`` over all rows of ``x``,
        each process evaluating its own contiguous slice; :class:`~pyro_vae.data.rows.Rows`
        are read a block at a time (:func:`~pyro_vae.training.batches.streamed_mean`)."""
        return self._mean_of(fn, x, y, self.seed(seed))

    def _mean_of(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor | None, int], float],
        x: torch.Tensor | Rows,
        y: torch.Tensor | None,
        seed: int,
    ) -> float:
        if isinstance(x, Rows):
            return streamed_mean(fn, x, y, seed, next(self.vae.parameters()).device)
        return fn(x, y, seed)


class DataParallel(Parallelism):
    """One replica of a data-parallel job: DDP over ``objective(vae)``, an ``ObjectiveModule``.

    Wrapping broadcasts rank 0's parameters and buffers to every rank. Before wrapping,
    one loss on ``probe`` (in a forked RNG, gradients discarded) finds parameters the
    objective never uses; DDP is then built with ``find_unused_parameters`` (its reducer
    would otherwise wait for their gradients forever). Every component in this package
    uses all of its parameters, so this normally stays off and costs nothing per step.

    Buffers are synced once, at wrapping, not before every forward: every buffer in this
    package is a constant set in ``__init__`` (prior loc/scale, index tables), so the
    per-step broadcast DDP does by default would only add a collective to each step. A
    component with running statistics (batch norm) would need ``SyncBatchNorm``.

    Args:
        vae: The model, already on its device.
        objective: The training objective.
        probe: A few training rows, for the unused-parameter check.
        num_data: Number of training rows; must be the same on every rank.
        transform: The minibatch transform (applied to ``probe``).

    Raises:
        ConfigError: No process group is initialized.
        DataError: The ranks hold different numbers of training rows.
    """

    def __init__(
        self,
        vae: VAE,
        objective: Objective,
        probe: torch.Tensor,
        num_data: int,
        transform: BatchTransform | None = None,
        **probe_kwargs: Any,
    ) -> None:
        super().__init__(vae, objective)
        if not is_initialized():
            raise ConfigError(
                "DataParallel needs an initialized torch.distributed process group; launch with torchrun "
                "and call pyro_vae.training.distributed.init_from_env() first"
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = next(vae.parameters()).device
        low_high = torch.tensor([-num_data, num_data], dtype=torch.float64, device=self.device)
        dist.all_reduce(low_high, op=dist.ReduceOp.MAX)
        if -low_high[0] != low_high[1]:
            raise DataError(
                f"rank {self.rank} has {num_data} training rows but the ranks hold between "
                f"{int(-low_high[0])} and {int(low_high[1])}; every process must load the same training "
                "data (same `data`, `data_dir`, `val_fraction` and `seed`)"
            )
        names = _unused_parameters(vae, objective, probe, num_data, transform, **probe_kwargs)
        unused = torch.tensor([float(bool(names))], device=self.device)
        dist.all_reduce(unused, op=dist.ReduceOp.MAX)  # one answer for all ranks
        self.find_unused_parameters = bool(unused.item())
        device_ids = None
        if self.device.type == "cuda":
            device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        self.ddp = DistributedDataParallel(
            objective(vae),  # an ObjectiveModule: its forward is the loss
            device_ids=device_ids,
            find_unused_parameters=self.find_unused_parameters,
            # Gradients live in DDP's communication buckets: one copy less per step. They
            # must not be detached in place; fit clears them with zero_grad(set_to_none=True).
            gradient_as_bucket_view=True,
            **_NO_PER_STEP_BUFFER_SYNC,
        )

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        # DistributedSampler over the positions of the permutation: rank r gets positions
        # r, r + W, r + 2W, ..., padded (with the permutation's first positions) to the
        # same length on every rank, so every rank runs the same number of steps of the
        # same size. Step s of all ranks together covers the same rows as step s of one
        # process with W times the batch.
        # The sampler's positions are rank, rank + W, ... over the permutation repeated to
        # a multiple of W: computed here as one arange (its list of Python ints would
        # take seconds and hundreds of MB for 10^7 rows). Tested against the sampler.
        n = order.shape[0]
        total = -(-n // self.world_size) * self.world_size
        return order[torch.arange(self.rank, total, self.world_size, device=order.device) % n]

    def loss(self, x: torch.Tensor, num_data: int, beta: float, **program_kwargs: Any) -> torch.Tensor:
        return self.ddp(x, num_data, beta, **program_kwargs)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def shard_mean(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor | None, int], float],
        x: torch.Tensor | Rows,
        y: torch.Tensor | None,
        seed: int,
    ) -> float:
        part = rows_part(x, self.world_size, self.rank)
        part_y = None if y is None else torch.tensor_split(y, self.world_size)[self.rank]
        n = part.shape[0]
        value = self._mean_of(fn, part, part_y, self.seed(seed)) if n else 0.0
        stats = torch.tensor([value * n, n], dtype=torch.float64, device=self.device)
        dist.all_reduce(stats)
        return float(stats[0] / stats[1])


# torch >= 2.13 names it forward_sync_buffers (buffers still synced at construction);
# older versions call it broadcast_buffers (which also skips that first sync: harmless
# for buffers that are constants set identically in __init__ on every rank).
_NO_PER_STEP_BUFFER_SYNC: dict[str, Any] = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def _unused_parameters(
    vae: VAE,
    objective: Objective,
    probe: torch.Tensor,
    num_data: int,
    transform: BatchTransform | None,
    **probe_kwargs: Any,
) -> list[str]:
    """Names of trainable parameters that get no gradient from one loss on ``probe``."""
    named = [(name, p) for name, p in vae.named_parameters() if p.requires_grad]
    device = next(vae.parameters()).device
    with forked_rng(device):
        x = transform(probe) if transform is not None else probe
        loss = objective.loss(vae, x, num_data, 1.0, **probe_kwargs)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return [name for (name, _), g in zip(named, grads, strict=True) if g is None]


def parallelism(
    vae: VAE,
    objective: Objective,
    probe: torch.Tensor,
    num_data: int,
    transform: BatchTransform | None = None,
    **probe_kwargs: Any,
) -> Parallelism:
    """:class:`DataParallel` when a process group is initialized, else the single process.

    Example:
        >>> parallelism(None, None, torch.zeros(1, 1), 1).world_size
        1
    """
    if not is_initialized():
        return Parallelism(vae, objective)
    return DataParallel(vae, objective, probe, num_data, transform, **probe_kwargs)
