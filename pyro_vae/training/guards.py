"""A guard against training that blows up without a NaN.

``fit`` stops on a NaN or infinite loss by itself. A loss that explodes to 1e10 and
stays finite is just as broken (a learning rate far too large, say), and without this
guard such a run would end with exit 0 and a meaningless model. The rule::

    an epoch diverges when its mean training loss per data point L satisfies
    L > best + factor * max(|best|, 1)

where ``best`` is the lowest of the untrained model's loss (``start_loss``, when known)
and the earlier epochs' mean training losses, and ``factor`` is 1000 by default.
Measured on the digits data, a learning rate of 0.1 overshoots to 30 times the
untrained loss in its first epoch and then trains normally; learning rates of 1 and 100
reach 1e7 and 1e19 times it. The factor leaves that first kind alone and stops the
others in their first epoch. ``max(|best|, 1)`` keeps the rule meaningful for losses
near zero and for negative losses (densities of continuous data).

The guard is a ``check_epoch`` hook of ``fit``: :func:`pyro_vae.runs.train.train_run` runs it
before each checkpoint (so a diverged epoch is never saved), and
``TrainConfig.divergence_guard = False`` (``--no-divergence-guard``) turns it off.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import TrainingDivergedError
from .loop import EpochRecord

__all__ = ["DIVERGENCE_FACTOR", "DivergenceGuard", "diverged"]

#: How far above its best the loss may rise, in units of ``max(|best|, 1)``.
DIVERGENCE_FACTOR = 1000.0


def diverged(loss: float, best: float, factor: float = DIVERGENCE_FACTOR) -> bool:
    """Whether ``loss`` rose past ``best + factor * max(|best|, 1)``.

    Example:
        >>> diverged(1311.5, 44.0), diverged(4.1e8, 44.0)
        (False, True)
    """
    return loss > best + factor * max(abs(best), 1.0)


class DivergenceGuard:
    """Raises :class:`TrainingDivergedError` when the last epoch's loss rose past the rule.

    Args:
        start_loss: The untrained model's loss per data point (the reference for the
            first epoch); ``None`` to compare with earlier epochs only.
        factor: The rule's factor.

    Example:
        >>> guard = DivergenceGuard(start_loss=44.0)
        >>> guard([EpochRecord(1, 29.3, -27.4, 0.1)])  # fine
        >>> guard([EpochRecord(1, 29.3, -27.4, 0.1), EpochRecord(2, 4e9, -1e8, 0.1)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pyro_vae.errors.TrainingDivergedError: the training loss rose to 4e+09 nats per data point in epoch 2, ...
    """

    def __init__(self, start_loss: float | None = None, factor: float = DIVERGENCE_FACTOR) -> None:
        self.start_loss = start_loss
        self.factor = factor

    def __call__(self, history: Sequence[EpochRecord]) -> None:
        if not history:
            return
        last = history[-1]
        earlier = [(h.train_loss, f"epoch {h.epoch}") for h in history[:-1] if math.isfinite(h.train_loss)]
        if self.start_loss is not None and math.isfinite(self.start_loss):
            earlier.append((self.start_loss, "the untrained model"))
        if not earlier:
            return
        best, where = min(earlier)
        if diverged(last.train_loss, best, self.factor):
            raise TrainingDivergedError(
                f"the training loss rose to {last.train_loss:.4g} nats per data point in epoch {last.epoch}, "
                f"past the divergence guard's bound of {best + self.factor * max(abs(best), 1.0):.4g} "
                f"(best {best:.4g}, {where}, + {self.factor:g} x max(|best|, 1))"
            )
