"""Training objectives: each returns a differentiable loss for one minibatch.

Interface: subclass :class:`Objective` and implement ``loss(vae, x, num_data, beta,
**program_kwargs)``, returning a scalar whose gradient is the negative full-data
objective's (minibatch estimate, scaled by ``num_data / B``); ``program_kwargs`` are
further keyword arguments of ``vae.model`` and ``vae.guide`` (e.g. labels). Two optional hooks: the class attribute
``supports_beta`` (``False`` when the objective cannot weight the KL term, so that
``beta != 1`` and KL warm-up are refused before training) and ``check(vae)``, which
raises :class:`~pyro_vae.errors.ConfigError` when the objective cannot train that model.

The objectives here:

- :class:`TraceELBO`: the ELBO with Monte Carlo estimates of every term.
  By default it runs as a graph traced once per batch shape
  (:class:`~pyro_vae.inference.traced.TracedLoss`):
  the same draws and gradients without Pyro's per-step Python overhead.
- :class:`TraceMeanFieldELBO`: the ELBO with the KL term in closed form (lower
  variance), for guide/prior pairs where torch has that KL.
- :class:`IWAE`: the importance-weighted bound of Burda et al. (2016), tighter than
  the ELBO as the number of particles K grows.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import Distribution, Independent, kl_divergence

from ..config import ModelConfig, TrainConfig, choose
from ..errors import ConfigError
from ..model.build import build_vae
from ..model.vae import VAE, local_params
from ..seeding import forked_rng
from .bounds import iwae_per_datum, log_weights
from .traced import TracedLoss

__all__ = [
    "Objective",
    "ObjectiveModule",
    "TraceELBO",
    "TraceMeanFieldELBO",
    "IWAE",
    "SemiSupervisedELBO",
    "OBJECTIVES",
    "build_objective",
    "check_compatible",
]


class Objective:
    """Base class of training objectives."""

    #: The objective can weight the latent (KL) term by ``beta`` (beta-VAE, warm-up).
    supports_beta: bool = True

    def loss(
        self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any
    ) -> torch.Tensor:  # pragma: no cover
        """Differentiable negative objective for the minibatch ``x``."""
        raise NotImplementedError

    def check(self, vae: VAE) -> None:
        """Raise :class:`ConfigError` if this objective cannot train ``vae`` (default: it can)."""

    def __call__(self, vae: VAE) -> "ObjectiveModule":
        """This objective fixed to ``vae``: a module whose ``forward`` is the loss.

        The shape of Pyro's ``Trace_ELBO()(model, guide)`` (an ``ELBOModule``): torch
        optimizers see ``module.parameters()``, and ``DistributedDataParallel`` wraps
        the module so that its gradient all-reduce runs.
        """
        return ObjectiveModule(vae, self)


class ObjectiveModule(nn.Module):
    """An objective fixed to one VAE: ``forward(x, num_data, beta, **kwargs)`` is the loss.

    Made by ``objective(vae)``; the VAE is its one submodule, so its parameters are the
    VAE's.
    """

    def __init__(self, vae: VAE, objective: Objective) -> None:
        super().__init__()
        self.vae = vae
        self.objective = objective

    def forward(self, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any) -> torch.Tensor:
        """``objective.loss(vae, x, num_data, beta, **program_kwargs)``: a scalar."""
        return self.objective.loss(self.vae, x, num_data, beta, **program_kwargs)


class TraceELBO(Objective):
    """The ELBO estimated by Pyro's ``Trace_ELBO`` with reparameterized draws.

    With ``jit=True`` (the default, ``--elbo trace``) the program is traced once per
    batch shape and each step runs the traced graph: the same draws and the same
    gradients as Pyro's ``Trace_ELBO.differentiable_loss`` (``jit=False``, ``--elbo
    trace-eager``), without Pyro's Python on every step. How, and what falls back to
    the eager program: :class:`TracedLoss`.

    Args:
        particles: Draws of z per data point, vectorized.
        jit: Run the traced graph (the eager program where it cannot be traced soundly).

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> x = torch.ones(3, 6)
        >>> _ = torch.manual_seed(0); traced = TraceELBO().loss(vae, x, num_data=3)
        >>> _ = torch.manual_seed(0); eager = TraceELBO(jit=False).loss(vae, x, num_data=3)
        >>> torch.allclose(traced, eager)
        True
    """

    def __init__(self, particles: int = 1, *, jit: bool = True) -> None:
        self.particles = particles
        self.jit = jit
        self._elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
        self._traced = TracedLoss(self) if jit else None

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any) -> torch.Tensor:
        # The traced graph takes x and a conditional VAE's y; other program arguments run eagerly.
        if self._traced is not None and set(program_kwargs) <= {"y"}:
            return self._traced.loss(vae, x, num_data, beta, program_kwargs.get("y"))
        return self.eager_loss(vae, x, num_data, beta, **program_kwargs)

    def eager_loss(
        self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any
    ) -> torch.Tensor:
        """Pyro's ``Trace_ELBO.differentiable_loss``, run as a Python program."""
        with local_params():
            return self._elbo.differentiable_loss(
                vae.model, vae.guide, x, num_data=num_data, beta=beta, **program_kwargs
            )


def _describe(d: Distribution) -> str:
    if isinstance(d, Independent):
        return f"Independent({_describe(d.base_dist)})"
    return type(d).__name__


class TraceMeanFieldELBO(Objective):
    """The ELBO with the KL term KL(q(z|x) || p(z)) in closed form: Pyro's ``TraceMeanField_ELBO``.

    Same expectation as :class:`TraceELBO`, lower variance. Pyro silently falls back
    to a Monte Carlo KL when torch has no closed form; this class refuses instead
    (:meth:`check`), so that ``--elbo meanfield`` always means the analytic KL. Which
    pairs have one is asked of ``torch.distributions.kl_divergence`` on the model's
    own distributions: a diagonal Normal guide with a (learned) Normal prior has, a
    mixture, VampPrior or flow prior, or a full-covariance, low-rank or flow guide
    against a diagonal prior, has not.

    Args:
        particles: Draws of z per data point for the reconstruction term, vectorized.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> TraceMeanFieldELBO().loss(vae, torch.ones(3, 6), num_data=3).shape
        torch.Size([])
    """

    def __init__(self, particles: int = 1) -> None:
        self.particles = particles
        self._elbo = TraceMeanField_ELBO(
            num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
        )
        # Models already checked, so the check runs once per model, not per step.
        self._checked: weakref.WeakSet[VAE] = weakref.WeakSet()

    def check(self, vae: VAE) -> None:
        """Raise :class:`ConfigError` unless torch has KL(q || p) in closed form for ``vae``.

        Raises:
            ConfigError: The guide's and the prior's distributions have no analytic KL.
        """
        device = next(vae.parameters()).device
        with torch.no_grad():
            y = None if vae.condition is None else vae.condition.example(1).to(device)
            q = vae.posterior(torch.zeros(1, vae.x_dim, device=device), y)  # batch (1,)
            p = vae.prior()
            try:
                # Expanded as the data plate expands it in the model.
                kl_divergence(q, p.expand(q.batch_shape))
            except NotImplementedError:
                raise ConfigError(
                    f"the guide's {_describe(q)} and the prior's {_describe(p)} have no analytic KL "
                    "divergence, which the mean-field ELBO needs; use `elbo` trace"
                ) from None
        self._checked.add(vae)

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any) -> torch.Tensor:
        if vae not in self._checked:
            self.check(vae)
        with local_params():
            return self._elbo.differentiable_loss(
                vae.model, vae.guide, x, num_data=num_data, beta=beta, **program_kwargs
            )


class IWAE(Objective):
    """The importance-weighted bound: ``log (1/K) sum_k p(x, z_k) / q(z_k|x)`` per data point.

    Computed from :func:`pyro_vae.inference.bounds.log_weights` with K vectorized,
    reparameterized draws; the loss is the negative sum over the minibatch, scaled by
    ``num_data / B``. With K = 1 it is the ELBO; it tightens towards log p(x) as K
    grows (Burda et al., 2016). It has the value of Pyro's ``RenyiELBO(alpha=0)``,
    which in Pyro 1.9 has no ``differentiable_loss``.

    The bound is of the unweighted model, so it takes no KL weight:
    ``supports_beta`` is ``False`` and ``beta != 1`` is an error.

    Args:
        particles: K, draws of z per data point.

    Raises:
        ConfigError: ``particles < 1``.

    Example:
        >>> from pyro_vae.model.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> IWAE(particles=5).loss(vae, torch.ones(3, 6), num_data=3).shape
        torch.Size([])
    """

    supports_beta = False

    def __init__(self, particles: int = 1) -> None:
        if particles < 1:
            raise ConfigError(f"`particles` must be >= 1 for the IWAE bound, got {particles}")
        self.particles = particles

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any) -> torch.Tensor:
        if beta != 1.0:
            raise ConfigError(
                f"the IWAE bound has no KL weight, got beta {beta}; use `beta` 1 `kl_warmup` 0 or `elbo` trace"
            )
        log_w = log_weights(vae, x, self.particles, **program_kwargs)  # (K, B)
        return -iwae_per_datum(log_w).sum() * (num_data / x.shape[0])


class SemiSupervisedELBO(Objective):
    """M2's objective: the ELBO with unknown labels summed out, plus a classification term.

    Pyro's ``TraceEnum_ELBO`` enumerates the guide's label site (``y_unobserved``, marked
    ``infer={"enumerate": "parallel"}``) so every unknown label's classes are summed
    exactly; the known labels are observed sites. Kingma et al. (2014) add
    ``alpha * log q(y | x)`` for the labelled rows, because the ELBO alone never trains
    the classifier on them; ``alpha`` weighs one labelled row's term against one row's
    ELBO (Pyro's ``examples/vae/ss_vae_M2.py`` uses 46 on MNIST).

    Args:
        alpha: Weight of the classification term per labelled row.

    Raises:
        ConfigError: ``alpha < 0``.
    """

    supports_beta = True

    def __init__(self, alpha: float = 50.0) -> None:
        if alpha < 0:
            raise ConfigError(f"`alpha` must be >= 0, got {alpha}")
        self.alpha = alpha
        self._elbo = TraceEnum_ELBO(max_plate_nesting=1)

    def check(self, vae: VAE) -> None:
        """Raise :class:`ConfigError` unless ``vae`` is a semi-supervised VAE."""
        if not hasattr(vae, "classify"):
            raise ConfigError("the semi-supervised ELBO trains a semi-supervised VAE (`condition` semisupervised)")

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: Any) -> torch.Tensor:
        self.check(vae)
        with local_params():
            loss = self._elbo.differentiable_loss(
                vae.model, vae.guide, x, num_data=num_data, beta=beta, **program_kwargs
            )
        y = program_kwargs.get("y")
        if y is not None and self.alpha > 0:
            known = y >= 0
            if bool(known.any()):
                log_q = vae.classify(x[known]).gather(-1, y[known].unsqueeze(-1))  # (L, 1)
                loss = loss - self.alpha * log_q.sum() * (num_data / x.shape[0])
        return loss


#: Objective factories: ``(train config) -> Objective``.
OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    # Pyro's Trace_ELBO run as a graph traced once per batch shape: the same draws and
    # gradients as "trace-eager", without Pyro's per-step Python (see TracedLoss).
    "trace": lambda t: TraceELBO(t.particles),
    "trace-eager": lambda t: TraceELBO(t.particles, jit=False),
    "meanfield": lambda t: TraceMeanFieldELBO(t.particles),
    "iwae": lambda t: IWAE(t.particles),
    # M2 (Kingma et al. 2014): unknown labels enumerated, a classification term on the known.
    "semisupervised": lambda t: SemiSupervisedELBO(),
}


def build_objective(config: TrainConfig) -> Objective:
    """The training objective named by ``config.elbo``.

    Raises:
        ConfigError: The name is unknown, or the objective takes no KL weight and
            ``beta != 1`` or a KL warm-up was asked for.
    """
    objective = choose(OBJECTIVES, config.elbo, "elbo")(config)
    if not objective.supports_beta and (config.beta != 1.0 or config.kl_warmup > 0):
        raise ConfigError(
            f"`elbo` {config.elbo} takes no KL weight, got `beta` {config.beta} and `kl_warmup` "
            f"{config.kl_warmup}; use `beta` 1 `kl_warmup` 0, or `elbo` trace for a beta-VAE"
        )
    return objective


def check_compatible(model: ModelConfig, train: TrainConfig) -> None:
    """Raise :class:`ConfigError` if the objective ``train.elbo`` cannot train the model ``model``.

    Builds the objective and a throw-away model (``x_dim`` 1 if not yet known; the
    global random state is left untouched) and asks the objective (its ``check``),
    so that e.g. ``elbo="meanfield"`` with a prior that has no analytic KL fails
    before training, whatever the components are called.

    Raises:
        ConfigError: A name is unknown, a value out of range, or the combination invalid.

    Example:
        >>> check_compatible(ModelConfig(prior="mixture"), TrainConfig(elbo="meanfield"))
        Traceback (most recent call last):
        ...
        pyro_vae.errors.ConfigError: `elbo` meanfield with `prior` mixture and `guide` diagonal: the guide's Independent(Normal) and the prior's MixtureSameFamily have no analytic KL divergence, which the mean-field ELBO needs; use `elbo` trace
    """
    objective = build_objective(train)
    if (model.condition == "semisupervised") != (train.elbo == "semisupervised"):
        raise ConfigError(
            "a semi-supervised VAE (`condition` semisupervised) trains with `elbo` semisupervised, and that "
            "objective trains only it; pass both or neither"
        )
    with forked_rng():
        # Sizes not yet known from the data get stand-ins: the check is about the families.
        shape = tuple(model.image_shape) or ((8, 8) if model.net == "conv" else ())
        x_dim = (
            model.x_dim
            if model.x_dim and not (model.net == "conv" and not model.image_shape)
            else max(1, 64 * bool(shape))
        )
        probe = build_vae(
            dataclasses.replace(model, x_dim=x_dim, num_classes=max(model.num_classes, 2), image_shape=shape)
        )
    try:
        objective.check(probe)
    except ConfigError as err:
        raise ConfigError(f"`elbo` {train.elbo} with `prior` {model.prior} and `guide` {model.guide}: {err}") from None
