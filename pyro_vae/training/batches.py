"""The minibatches of an epoch: each step's rows gathered, converted and moved on its own.

:func:`minibatches` turns an epoch's (sharded) permutation into ``(rows, x)`` pairs. A
tensor on its device is indexed as it always was (``train[rows]``). Rows read from a file
(:class:`~pyro_vae.data.rows.ArrayRows`) are gathered in their stored dtype, converted to
float32 and moved to the device one minibatch at a time, so memory holds a batch, not the
data set; with ``prefetch`` the next batch is assembled in a background thread while the
current one trains (NumPy's gather and conversion, and the copy to a GPU, release the
GIL), through pinned memory on CUDA.

Whether prefetching pays was measured (``benchmarks/data_scale.py``, the ``pipeline``
rows): see :data:`PREFETCH`.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import torch

from ..data.rows import Rows, chunk_rows

__all__ = ["PREFETCH", "minibatches", "default_prefetch", "block_seed", "streamed_mean"]

#: Whether ``fit`` assembles the next minibatch of rows read from a file in a background
#: thread, per device type. Measured on CPU (2 shared cores, MNIST-sized uint8 rows, the
#: default model, batch 64; ``benchmarks/results/data_scale.md``): a batch's gather and
#: conversion take 0.2-1.4 ms of a 15-20 ms step, and the thread, competing for the same
#: cores, was 2-7% slower than assembling in line at 10^5, 10^6 and 10^7 rows; so CPU
#: assembles in line (and DataLoader worker processes, which could at best hide the same
#: few percent, are not used). On CUDA the step is far shorter and the host work (gather,
#: convert, copy through pinned memory) can overlap the GPU's, so it is on; that was not
#: measured (no GPU here), and ``fit(..., prefetch=False)`` turns it off.
PREFETCH = {"cpu": False, "cuda": True}


def default_prefetch(device: torch.device) -> bool:
    """:data:`PREFETCH` for ``device`` (off for device types it does not name).

    Example:
        >>> default_prefetch(torch.device("cpu"))
        False
    """
    return PREFETCH.get(device.type, False)


def minibatches(
    source: Rows,
    order: torch.Tensor,
    batch_size: int,
    device: torch.device,
    *,
    prefetch: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, x)`` for each step of an epoch: ``rows`` the next ``batch_size`` entries of
    ``order``, ``x`` those rows as float32 on ``device``.

    Args:
        source: The training rows.
        order: This process's rows of the epoch, in order ``(M,)`` (on the source's
            device for rows that already live on one).
        batch_size: Rows per step (the last step takes what is left).
        device: Where ``x`` goes.
        prefetch: Assemble the next batch in a background thread (rows read from a file
            only; a tensor is indexed where it lies).

    Yields:
        ``(rows, x)`` with ``rows`` ``(B,)`` and ``x`` ``(B, D)``.

    Example:
        >>> from pyro_vae.data.rows import ArrayRows
        >>> import numpy as np
        >>> source = ArrayRows(np.arange(10, dtype=np.uint8).reshape(5, 2))
        >>> [x.tolist() for _, x in minibatches(source, torch.tensor([4, 0, 2]), 2, torch.device("cpu"))]
        [[[8.0, 9.0], [0.0, 1.0]], [[4.0, 5.0]]]
    """
    spans = [order[lo : lo + batch_size] for lo in range(0, order.shape[0], batch_size)]
    if source.device is not None or not prefetch or len(spans) < 2:
        for rows in spans:
            yield rows, source.gather(rows, device)
        return
    pin = device.type == "cuda"
    # One worker, one batch ahead: the rows of a step are read while the previous step
    # trains. Leaving the loop early (an error, a divergence) waits for that one read.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyro-vae-batches") as pool:
        pending: Future = pool.submit(source.gather, spans[0], device, pin=pin)
        for step, rows in enumerate(spans):
            x = pending.result()
            if step + 1 < len(spans):
                pending = pool.submit(source.gather, spans[step + 1], device, pin=pin)
            yield rows, x


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of a streamed statistic seeded with ``seed`` (block 0 keeps it).

    Example:
        >>> block_seed(5, 0), block_seed(5, 1) != 5
        (5, True)
    """
    return seed if block == 0 else (seed * 1_000_003 + block * 104_729) % (2**63 - 1)


def streamed_mean(
    fn: Callable[[torch.Tensor, "torch.Tensor | None", int], float],
    x: Rows,
    y: torch.Tensor | None,
    seed: int,
    device: torch.device,
    *,
    rows: int | None = None,
) -> float:
    """The mean over the rows of ``x`` of a per-row statistic, read a block at a time.

    ``fn(block, its y, seed)`` returns the statistic's mean over ``block`` (e.g.
    :func:`~pyro_vae.inference.evaluation.evaluate_elbo`). Rows that fit in one block
    (the split of a data set held in memory, or a small file) go in one call seeded with
    ``seed``, so the value is the one the same rows give as a tensor; larger ones go in
    blocks of :func:`~pyro_vae.data.rows.chunk_rows` (16 MiB of float32), block ``i``
    seeded with :func:`block_seed`, so memory holds one block and the value differs from
    one call over all rows by Monte Carlo noise only.

    Args:
        fn: The statistic.
        x: The rows.
        y: One condition per row, or None.
        seed: Seed of the draws.
        device: Where each block goes.
        rows: Rows per block; default :func:`~pyro_vae.data.rows.chunk_rows`.

    Example:
        >>> from pyro_vae.data.rows import ArrayRows
        >>> import numpy as np
        >>> x = ArrayRows(np.arange(10, dtype=np.uint8).reshape(5, 2))
        >>> streamed_mean(lambda b, _, s: float(b.mean()), x, None, 0, torch.device("cpu"), rows=2)
        4.5
    """
    step = rows or chunk_rows(x.x_dim)
    n = len(x)
    total = 0.0
    for block, lo in enumerate(range(0, n, step)):
        span = slice(lo, min(lo + step, n))
        part = x.gather(span, device)  # (b, D)
        total += fn(part, None if y is None else y[span], block_seed(seed, block)) * part.shape[0]
    return total / n
