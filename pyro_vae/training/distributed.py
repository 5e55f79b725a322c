"""The process group of a ``torchrun`` job: joining, leaving, ranks, rank-0 work.

:func:`init_from_env` joins the group ``torchrun`` describes in the environment (and
does nothing outside torchrun), with a timeout for collectives (``--dist-timeout``,
env ``PYRO_VAE_DIST_TIMEOUT``, default :data:`DEFAULT_TIMEOUT_S`): a rank stuck in a
collective gives up after it instead of hanging; a rank that raises exits non-zero and
``torchrun`` stops the others. :func:`run_on_main` runs file work on rank 0 and hands
every rank its result. How training uses the group (DDP, shards, seeds) is
:mod:`pyro_vae.training.parallel`.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from typing import Callable, NoReturn, TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError, PyroVAEError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "launched_by_torchrun",
    "resolve_timeout",
    "init_from_env",
    "shutdown",
    "exit_process",
    "is_initialized",
    "rank",
    "world_size",
    "local_rank",
    "is_main_process",
    "rank_seed",
    "run_on_main",
    "barrier",
]

#: Seconds a collective waits for the other ranks before it fails.
DEFAULT_TIMEOUT_S = 300.0
#: Environment variable that overrides :data:`DEFAULT_TIMEOUT_S`.
TIMEOUT_ENV = "PYRO_VAE_DIST_TIMEOUT"
#: The variables ``init_method="env://"`` reads; torchrun sets all of them.
_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


# ----------------------------------------------------------------- the process group
def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or a launcher setting the same
    ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` variables)."""
    return all(name in os.environ for name in _ENV_VARS)


def resolve_timeout(seconds: float | None = None) -> float:
    """The collective timeout in seconds: ``seconds``, else env ``PYRO_VAE_DIST_TIMEOUT``,
    else :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ConfigError: The value is not a positive number.

    Example:
        >>> resolve_timeout(20)
        20.0
    """
    source = "--dist-timeout"
    if seconds is None and os.environ.get(TIMEOUT_ENV):
        source = TIMEOUT_ENV
        try:
            seconds = float(os.environ[TIMEOUT_ENV])
        except ValueError:
            raise ConfigError(
                f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number; set it to the seconds a "
                "collective may wait (e.g. 300) or unset it"
            ) from None
    value = DEFAULT_TIMEOUT_S if seconds is None else float(seconds)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{source} must be a positive number of seconds, got {seconds}; e.g. 300")
    return value


def init_from_env(timeout_s: float | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    Uses Gloo for CPU tensors and, when this machine has CUDA GPUs, NCCL for CUDA tensors
    (backend ``"cpu:gloo,cuda:nccl"``), after selecting GPU ``LOCAL_RANK``. Does nothing
    outside torchrun or when a group already exists (e.g. one the caller initialized).

    Args:
        timeout_s: Seconds a collective waits for the other ranks before failing (see
            :func:`resolve_timeout`). With NCCL, PyTorch's watchdog enforces it and ends
            the process (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default).

    Returns:
        Whether this call created the group (then call :func:`shutdown` at the end).

    Raises:
        ConfigError: The timeout is not a positive number.
    """
    seconds = resolve_timeout(timeout_s)
    if not launched_by_torchrun() or is_initialized():
        return False
    backend = "gloo"
    if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    return True


def shutdown() -> None:
    """Leave the process group, if there is one."""
    if is_initialized():
        dist.destroy_process_group()


def exit_process(status: int = 0) -> NoReturn:
    """Leave the process group and end this process now with ``status``.

    The last line of a torchrun worker. It flushes stdout and stderr, destroys the
    group, and skips the interpreter's teardown (``os._exit``): there, torch 2.13's Gloo
    backend sometimes aborts a process whose work has succeeded ("terminate called
    without an active exception", SIGABRT; 2 of 30 two-process runs here), and torchrun
    would then report the job as failed. Everything pyro_vae writes is already on disk
    (atomic writes, fsync). ``atexit`` handlers do not run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    shutdown()
    os._exit(status)


def is_initialized() -> bool:
    """Whether a default process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 when unset): its GPU index."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes files and prints."""
    return rank() == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random draws in a run seeded with ``seed``.

    Rank 0 keeps ``seed``, so a one-process group draws what plain training draws.

    Example:
        >>> rank_seed(7, 0), rank_seed(7, 1) != 7
        (7, True)
    """
    return (seed + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or its error.

    Used for whatever touches the disk once per job (claiming the run directory, reading
    a checkpoint): the other ranks get the same answer without needing the same files,
    and a user error on rank 0 ends every rank with the same message instead of leaving
    them waiting in the next collective. Without a process group it just calls ``fn``.

    Raises:
        PyroVAEError: ``fn`` raised it on rank 0 (re-raised, same type, on every rank).
        RuntimeError: ``fn`` raised another exception on rank 0 (rank 0 re-raises the
            original).

    Example:
        >>> run_on_main(lambda: 3)
        3
    """
    if world_size() == 1:
        return fn()
    payload: list = [None]
    if is_main_process():
        try:
            payload[0] = ("ok", fn())
        except BaseException as err:
            portable = err if isinstance(err, PyroVAEError) else RuntimeError(f"{type(err).__name__}: {err}")
            payload[0] = ("error", portable)
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        if isinstance(value, PyroVAEError):
            raise value
        raise RuntimeError(f"rank 0 failed and this rank stops with it: {value}")
    return value


def barrier() -> None:
    """Wait for every rank. With Gloo, a rank that does not arrive within the timeout is
    named in the error (``monitored_barrier``)."""
    if world_size() == 1:
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(wait_all_ranks=True)
    else:
        dist.barrier()
