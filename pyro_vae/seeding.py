"""Randomness that stays where it is used: torch's global generator forked for a block."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["forked_rng"]


@contextlib.contextmanager
def forked_rng(device: torch.device | str | None = None, seed: int | None = None) -> Iterator[None]:
    """Fork torch's random state for the block (the CPU's, and ``device``'s on CUDA).

    Draws inside do not move the caller's random stream; with ``seed`` they are
    reproducible.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> with forked_rng(seed=1):
        ...     _ = torch.rand(3)
        >>> torch.equal(torch.rand(1), torch.manual_seed(0) and torch.rand(1))
        True
    """
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
