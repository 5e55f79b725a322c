"""Conditions: what a conditional VAE sees besides x and z (a class label, a covariate).

Interface (all a new condition needs): subclass :class:`Condition`, set ``out_features``,
and implement ``forward(y) -> features`` of shape ``(B, out_features)`` and
``check(y)``, raising :class:`~pyro_vae.errors.DataError` with the fix for a ``y`` it
cannot take. A conditional :class:`~pyro_vae.model.vae.VAE` appends these features to
the encoder's output (so the guide is q(z|x, y)) and to z at the decoder's input (so the
likelihood is p(x|z, y)), as in Pyro's ``examples/cvae``.

- :class:`OneHot`: a categorical label in ``0..num_classes-1``;
- :class:`Covariates`: real-valued covariates, used as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

__all__ = ["Condition", "OneHot", "Covariates"]


class Condition(nn.Module):
    """Base class of conditions y -> features.

    Args:
        out_features: Size of the features.
    """

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def check(self, y: torch.Tensor, rows: int) -> None:  # pragma: no cover - abstract
        """Raise :class:`DataError` unless ``y`` holds one condition for each of ``rows`` rows."""
        raise NotImplementedError

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Features of shape ``y.shape[:1] + (out_features,)``."""
        raise NotImplementedError

    def example(self, rows: int) -> torch.Tensor:  # pragma: no cover - abstract
        """A valid ``y`` for ``rows`` rows (for probing shapes and supports)."""
        raise NotImplementedError


class OneHot(Condition):
    """A class label ``y`` in ``0..num_classes-1`` as a one-hot vector.

    Example:
        >>> OneHot(3)(torch.tensor([0, 2]))
        tensor([[1., 0., 0.],
                [0., 0., 1.]])
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise DataError(f"a label condition needs at least 2 classes, got {num_classes}")
        super().__init__(num_classes)
        self.num_classes = num_classes

    def check(self, y: torch.Tensor, rows: int) -> None:
        if not isinstance(y, torch.Tensor) or y.shape != (rows,):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise DataError(f"expected `y` as {rows} integer labels, shape ({rows},), got {shape}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise DataError(f"expected integer labels in `y`, got {y.dtype}; pass y.long()")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(
                f"labels in `y` must be in 0..{self.num_classes - 1}, got {int(y.min())}..{int(y.max())}; "
                "this model was trained on that many classes"
            )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.num_classes).float()  # (B, C)

    def example(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, dtype=torch.long)


class Covariates(Condition):
    """Real-valued covariates ``y`` of shape ``(B, dim)``, used as they are.

    Example:
        >>> Covariates(2)(torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """

    def check(self, y: torch.Tensor, rows: int) -> None:
        if not isinstance(y, torch.Tensor) or y.shape != (rows, self.out_features):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise DataError(f"expected `y` of shape ({rows}, {self.out_features}), got {shape}")
        if not torch.isfinite(y).all():
            raise DataError("`y` holds NaN or inf; clean or impute the covariates")

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.float()

    def example(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.out_features)
