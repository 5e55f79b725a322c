"""A semi-supervised VAE with a discrete label (Kingma et al. 2014, "M2").

The label y is a latent variable where it is unknown and observed where it is known,
in one program: ``pyro.sample("y", ..., obs=y, obs_mask=known)``. The model is
p(z) p(y) p(x | z, y); the guide is q(y | x) q(z | x, y), a classifier and an amortized
Gaussian that also sees the label. Trained with Pyro's ``TraceEnum_ELBO`` the unknown
labels are summed out exactly (the guide's label site is enumerated); the auxiliary
term of M2, ``alpha * log q(y | x)`` on the labelled rows, trains the classifier on
them directly (:class:`~pyro_vae.inference.objectives.SemiSupervisedELBO`).

Labels are integers in ``0..num_classes-1``; ``-1`` marks an unknown one. The bounds of
the package (ELBO, IWAE, log p(x)) reach this model through the same Pyro traces as any
other (the unknown labels are then sampled from the classifier, and the masked sites
counted as Pyro counts them).
"""

from __future__ import annotations

from typing import cast

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from ..errors import DataError
from .guides import Guide
from .likelihoods import Likelihood
from .nn import size_of
from .priors import Prior
from .vae import LATENT_SITE, OBS_SITE, VAE, program

__all__ = ["LABEL_SITE", "SemiSupervisedVAE"]

#: Name of the label's sample site (Pyro adds ``_observed`` / ``_unobserved`` parts).
LABEL_SITE = "y"


class SemiSupervisedVAE(VAE):
    """M2: a VAE whose label is observed where known and inferred where not.

    Args:
        encoder: Network x -> features.
        decoder: Network (z, one-hot y) -> features; takes ``z_dim + num_classes`` inputs.
        likelihood: Head of p(x | z, y).
        guide: Head of q(z | x, y); takes ``encoder.out_features + num_classes`` inputs.
        num_classes: Number of label classes.
        prior: p(z); default Normal(0, I).
        z_dim: Size of z (default: the prior's).
        name: Prefix in Pyro's global param store.

    The classifier q(y | x) is a linear map of the encoder's features.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), condition="semisupervised", num_classes=3))
        >>> vae.classify(torch.rand(4, 6)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        guide: Guide,
        num_classes: int,
        prior: Prior | None = None,
        *,
        z_dim: int | None = None,
        name: str | None = None,
    ) -> None:
        if num_classes < 2:
            raise DataError(f"a semi-supervised VAE needs at least 2 label classes, got {num_classes}")
        super().__init__(encoder, decoder, likelihood, prior=prior, guide=guide, z_dim=z_dim, name=name)
        self.num_classes = num_classes
        self.classifier = nn.Linear(size_of(encoder), num_classes)

    # ----------------------------------------------------------------- Pyro program
    @program
    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
        *,
        num_points: int | None = None,
    ) -> torch.Tensor:
        """p(z) p(y) p(x | z, y): ``y`` labels where known, ``-1`` (or no ``y``) where not."""
        x = self._flat(x)
        rows = x.shape[0] if x is not None else num_points or 1
        labels, known = self._labels(y, rows, x)
        pz = self.prior()
        py = dist.Categorical(logits=torch.zeros(self.num_classes, device=known.device))
        with self._data_plate(x, num_data, num_points):
            with poutine.scale(scale=beta):
                z = pyro.sample(LATENT_SITE, pz)
            label = pyro.sample(LABEL_SITE, py, obs=labels, obs_mask=cast(torch.BoolTensor, known))
            h = self.decoder(torch.cat([z, self._one_hot(label, z)], -1))
            pyro.sample(OBS_SITE, self.likelihood(h), obs=x)
        return z

    @program
    def guide(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
        *,
        num_points: int | None = None,
    ) -> torch.Tensor:
        """q(y | x) where the label is unknown (enumerable), then q(z | x, y)."""
        x = self._guide_data(x, "q(z, y | x)")
        self.check_x(x)
        labels, known = self._labels(y, x.shape[0], x)
        h = self.encoder(x)  # (B, F)
        with self._data_plate(x, num_data, num_points):
            with poutine.mask(mask=cast(torch.BoolTensor, ~known)):
                guess = pyro.sample(
                    f"{LABEL_SITE}_unobserved",
                    dist.Categorical(logits=self.classifier(h)),
                    infer={"enumerate": "parallel"},
                )
            label = torch.where(known, labels, guess)  # (B,), or (C, B) when enumerated
            features = torch.cat([h.expand(label.shape + h.shape[-1:]), F.one_hot(label, self.num_classes).to(h)], -1)
            with poutine.scale(scale=beta):
                return pyro.sample(LATENT_SITE, self.variational(features))

    # ------------------------------------------------------------- the components
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y | x) of every class, ``(B, num_classes)``: the classifier of the guide."""
        x = self._flat(x)
        self.check_x(x)
        return torch.log_softmax(self.classifier(self.encoder(x)), -1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label of each row, ``(B,)``."""
        return self.classify(x).argmax(-1)

    def complete_labels(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One label per row: ``y`` where known, the classifier's guess where unknown (``-1``, or no ``y``).

        What needs a label for every row (p(x | z, y), a posterior given y) takes these.
        """
        if y is not None and not bool((y < 0).any()):
            return y
        guess = self.predict(x)
        return guess if y is None else torch.where(y >= 0, y, guess)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(x, y) and sigma(x, y); unknown labels (``-1`` or no ``y``) take the classifier's guess."""
        return self.variational.encode(self._guide_features(x, y))

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x, y), with the classifier's guess where the label is unknown."""
        return self.variational(self._guide_features(x, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(x | z, y); ``y`` is needed (one label per row of z's last batch dimension)."""
        if y is None or bool((y < 0).any()):
            raise DataError(
                "p(x | z, y) of a semi-supervised VAE needs a known label `y` for every row; "
                "use the classifier's, vae.predict(x), where it is unknown"
            )
        return self.likelihood(self.decoder(torch.cat([z, self._one_hot(y, z)], -1)))

    def _guide_features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self._flat(x)
        self.check_x(x)
        labels, known = self._labels(y, x.shape[0], x)
        h = self.encoder(x)
        label = torch.where(known, labels, self.classifier(h).argmax(-1))
        return torch.cat([h, F.one_hot(label, self.num_classes).to(h)], -1)

    def _one_hot(self, label: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(label.long(), self.num_classes).to(like)  # (..., B, C)
        return one_hot.expand(like.shape[:-1] + (self.num_classes,))

    def _labels(self, y: torch.Tensor | None, rows: int, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels with 0 where unknown, known mask)``, both ``(rows,)``."""
        device = x.device if x is not None else next(self.parameters()).device
        if y is None:
            return torch.zeros(rows, dtype=torch.long, device=device), torch.zeros(
                rows, dtype=torch.bool, device=device
            )
        if not torch.jit.is_tracing():
            if not isinstance(y, torch.Tensor) or y.shape != (rows,) or y.dtype.is_floating_point:
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise DataError(f"expected `y` as {rows} integer labels (-1: unknown), shape ({rows},), got {shape}")
            if y.numel() and (int(y.min()) < -1 or int(y.max()) >= self.num_classes):
                raise DataError(
                    f"labels in `y` must be in -1..{self.num_classes - 1} (-1: unknown), got {int(y.min())}..{int(y.max())}"
                )
        known = y >= 0
        return torch.where(known, y, torch.zeros_like(y)).long(), known
