"""Per-minibatch transforms of the data pipeline: binarization for 0/1 likelihoods.

A :data:`BatchTransform` maps a raw minibatch to the observations the model sees; the
training loop and the evaluations apply it to each block of rows, so dynamic
binarization draws fresh 0/1 data every epoch.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import DataError

__all__ = ["BatchTransform", "BINARIZE_MODES", "binarize", "resolve_binarize"]

#: Maps a raw minibatch to the observations the model sees (e.g. binarization).
BatchTransform = Callable[[torch.Tensor], torch.Tensor]

#: Accepted values of ``binarize``; ``auto`` is resolved by :func:`resolve_binarize`.
BINARIZE_MODES = ("auto", "dynamic", "threshold", "none")


def binarize(
    x: torch.Tensor,
    mode: str,
    *,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Turn grey values in [0, 1] into 0/1 values for a Bernoulli likelihood.

    Args:
        x: Data with values in [0, 1] for ``dynamic``; any shape.
        mode: ``dynamic`` (a fresh Bernoulli draw with probability ``x`` per value, done
            each epoch), ``threshold`` (``x > threshold``) or ``none`` (``x`` unchanged).
            Resolve ``auto`` first with :func:`resolve_binarize`.
        threshold: Cut-off for ``threshold`` mode.
        generator: Random generator for ``dynamic`` mode, for reproducible draws.

    Returns:
        A tensor of ``x``'s shape and dtype.

    Raises:
        DataError: ``mode`` is unknown, or ``dynamic`` mode got values outside [0, 1].

    Example:
        >>> binarize(torch.tensor([0.2, 0.5, 0.9]), "threshold")
        tensor([0., 0., 1.])
    """
    if mode == "none":
        return x
    if mode == "threshold":
        return (x > threshold).to(x.dtype)
    if mode == "dynamic":
        # NaN fails both comparisons, so it is caught here too.
        if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
            raise DataError(
                f"`binarize` dynamic needs values in [0, 1], got min {x.min().item():.4g} and max "
                f"{x.max().item():.4g}; rescale the data to [0, 1], or pass `likelihood` normal "
                "with `binarize` none"
            )
        return torch.bernoulli(x, generator=generator)
    raise DataError(
        f"unknown binarize mode {mode!r}; choose one of dynamic, threshold, none "
        "(resolve 'auto' with resolve_binarize first)"
    )


def resolve_binarize(mode: str, needs_binary: bool) -> str:
    """Resolve ``auto`` to the binarization that suits the likelihood.

    Args:
        mode: One of ``auto``, ``dynamic``, ``threshold``, ``none``.
        needs_binary: Whether the likelihood's support is {0, 1}
            (``Likelihood.needs_binary``).

    Returns:
        ``dynamic`` for ``auto`` with a likelihood that needs 0/1 data (dynamic
        binarization, as in the published MNIST benchmarks), ``none`` for ``auto``
        otherwise, else ``mode`` unchanged.

    Raises:
        DataError: ``mode`` is not one of the four choices.

    Example:
        >>> resolve_binarize("auto", True), resolve_binarize("auto", False)
        ('dynamic', 'none')
    """
    if mode not in BINARIZE_MODES:
        raise DataError(f"unknown `binarize` {mode!r}; choose one of {', '.join(BINARIZE_MODES)}")
    if mode == "auto":
        return "dynamic" if needs_binary else "none"
    return mode
