"""Training objectives: each returns a differentiable loss for one minibatch.

Interface: subclass :class:`Objective` and implement ``loss(vae, x, num_data, beta)``,
returning a scalar whose gradient is the negative full-data objective's (minibatch
estimate, scaled by ``num_data / B``). Two optional hooks: the class attribute
``supports_beta`` (``False`` when the objective cannot weight the KL term, so that
``beta != 1`` and KL warm-up are refused before training) and ``check(vae)``, which
raises :class:`~pyro_vae.errors.ConfigError` when the objective cannot train that model.

The objectives here:

- :class:`TraceELBO`: the ELBO with Monte Carlo estimates of every term.
- :class:`JitTraceELBO`: the same ``Trace_ELBO``, bit for bit, run as a graph traced
  once per batch shape, without Pyro's per-step Python overhead (``--elbo trace``).
- :class:`TraceMeanFieldELBO`: the ELBO with the KL term in closed form (lower
  variance), for guide/prior pairs where torch has that KL.
- :class:`IWAE`: the importance-weighted bound of Burda et al. (2016), tighter than
  the ELBO as the number of particles K grows.
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from typing import Callable

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_identically_zero
from torch.distributions import Distribution, Independent, kl_divergence

from .bounds import iwae_per_datum, log_weights
from .errors import ConfigError
from .vae import VAE

__all__ = ["Objective", "TraceELBO", "JitTraceELBO", "TraceMeanFieldELBO", "IWAE"]


class Objective:
    """Base class of training objectives."""

    #: The objective can weight the latent (KL) term by ``beta`` (beta-VAE, warm-up).
    supports_beta: bool = True

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:  # pragma: no cover
        """Differentiable negative objective for the minibatch ``x``."""
        raise NotImplementedError

    def check(self, vae: VAE) -> None:
        """Raise :class:`ConfigError` if this objective cannot train ``vae`` (default: it can)."""


class TraceELBO(Objective):
    """The ELBO estimated by Pyro's ``Trace_ELBO`` with reparameterized draws.

    Args:
        particles: Draws of z per data point, vectorized.
    """

    def __init__(self, particles: int = 1) -> None:
        self.particles = particles
        self._elbo = Trace_ELBO(
            num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
        )

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        return self._elbo.differentiable_loss(vae.model, vae.guide, x, num_data, beta)


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
        >>> from pyro_vae.build import build_vae
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
            q = vae.posterior(torch.zeros(1, vae.x_dim, device=device))  # batch (1,)
            p = vae.prior()
            try:
                # Expanded as the data plate expands it in the model.
                kl_divergence(q, p.expand(q.batch_shape))
            except NotImplementedError:
                raise ConfigError(
                    f"the guide's {_describe(q)} and the prior's {_describe(p)} have no analytic KL "
                    "divergence, which the mean-field ELBO needs; use --elbo trace"
                ) from None
        self._checked.add(vae)

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        if vae not in self._checked:
            self.check(vae)
        return self._elbo.differentiable_loss(vae.model, vae.guide, x, num_data, beta)


class IWAE(Objective):
    """The importance-weighted bound: ``log (1/K) sum_k p(x, z_k) / q(z_k|x)`` per data point.

    Computed from :func:`pyro_vae.bounds.log_weights` with K vectorized,
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
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> IWAE(particles=5).loss(vae, torch.ones(3, 6), num_data=3).shape
        torch.Size([])
    """

    supports_beta = False

    def __init__(self, particles: int = 1) -> None:
        if particles < 1:
            raise ConfigError(f"--particles must be >= 1 for the IWAE bound, got {particles}")
        self.particles = particles

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        if beta != 1.0:
            raise ConfigError(
                f"the IWAE bound has no KL weight, got beta {beta}; use --beta 1 --kl-warmup 0 or --elbo trace"
            )
        log_w = log_weights(vae, x, self.particles)  # (K, B)
        return -iwae_per_datum(log_w).sum() * (num_data / x.shape[0])


#: Traced graphs kept per :class:`JitTraceELBO` (least recently used dropped first).
JIT_CACHE_SIZE = 16


class _EagerOnly:
    """Marks a signature that runs eagerly, with the reason (shown once)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class JitTraceELBO(TraceELBO):
    """Pyro's ``Trace_ELBO`` traced once per batch shape: same draws, same gradients, less overhead.

    The first step with a new *signature* (batch shape, dtype and device, ``num_data``,
    ``beta``, train/eval mode and the model's parameter and buffer tensors) runs the
    guide and the model through Pyro once under ``torch.jit.trace``, with every
    parameter and buffer as an input of the graph. The graph records the random draws
    (``aten::normal``), so each call draws afresh from torch's global generator exactly
    as the Pyro program would; later steps run it with no Pyro Python at all. It runs
    unoptimized (``torch.jit.optimized_execution(False)``): the same kernels in the same
    order as :class:`TraceELBO`, so for the same random state the gradients are
    identical bit for bit and the loss agrees to float rounding (Pyro sums the loss
    through Python floats).

    Why not Pyro's ``JitTrace_ELBO``: in Pyro 1.9.2 it reads parameters from the global
    param store (``KeyError`` under ``module_local_params``), keys its graphs on the
    number of arguments rather than their shapes (a smaller last minibatch would reuse
    the first one's plate size), and its ``differentiable_loss`` returns twice the
    gradient. ``torch.compile`` breaks Pyro's trace into many graphs and is slower.

    Whatever cannot be traced soundly runs through :class:`TraceELBO` instead, with one
    warning naming the reason: a guide site that needs a score-function term (not
    reparameterized), a tracer warning (Python control flow on tensor values, which a
    trace would freeze), an error while tracing, or a torch without ``torch.jit.trace``.
    With Pyro's validation on, the first step of each signature also runs the eager
    program once (no gradient, random state restored), so its checks still raise.

    A trace freezes everything that is not a parameter, a buffer or ``x``: components
    must be functions of those (every component in this package is).

    Args:
        particles: Draws of z per data point, vectorized.

    Example:
        >>> from pyro_vae.build import build_vae
        >>> from pyro_vae.config import ModelConfig
        >>> vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(4,)))
        >>> x = torch.ones(3, 6)
        >>> _ = torch.manual_seed(0); a = JitTraceELBO().loss(vae, x, num_data=3)
        >>> _ = torch.manual_seed(0); b = TraceELBO().loss(vae, x, num_data=3)
        >>> torch.allclose(a, b)
        True
    """

    def __init__(self, particles: int = 1) -> None:
        super().__init__(particles)
        self._graphs: weakref.WeakKeyDictionary[VAE, OrderedDict[tuple, Callable | _EagerOnly]] = (
            weakref.WeakKeyDictionary()
        )
        self._warned: set[str] = set()

    def loss(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0) -> torch.Tensor:
        inputs = (*vae.parameters(), *vae.buffers())
        key = (tuple(x.shape), x.dtype, x.device, int(num_data), float(beta), vae.training, tuple(map(id, inputs)))
        graphs = self._graphs.setdefault(vae, OrderedDict())
        graph = graphs.get(key)
        if graph is None:
            graph = self._trace(vae, x, num_data, beta, inputs)
            graphs[key] = graph
            while len(graphs) > JIT_CACHE_SIZE:
                graphs.popitem(last=False)
        else:
            graphs.move_to_end(key)
        if isinstance(graph, _EagerOnly):
            if graph.reason not in self._warned:
                self._warned.add(graph.reason)
                warnings.warn(f"--elbo trace runs eagerly (no traced graph) for this model: {graph.reason}", stacklevel=2)
            return super().loss(vae, x, num_data, beta)
        with torch.jit.optimized_execution(False):
            loss, surrogate = graph(x, *inputs)
        # Trace_ELBO's value with its gradient (the surrogate's), without a device sync.
        return loss + (surrogate - surrogate.detach())

    def _loss_and_surrogate(self, vae: VAE, x: torch.Tensor, num_data: int, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        # Trace_ELBO.differentiable_loss with tensors where it takes Python floats (a trace
        # would freeze those): the loop of Pyro's JitTrace_ELBO, for reparameterized sites.
        loss = torch.zeros((), dtype=x.dtype, device=x.device)
        surrogate_loss = 0.0
        for model_trace, guide_trace in self._elbo._get_traces(vae.model, vae.guide, (x, num_data, beta), {}):
            elbo_particle = 0.0
            surrogate_elbo_particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo_particle = elbo_particle + site["log_prob_sum"].detach()
                    surrogate_elbo_particle = surrogate_elbo_particle + site["log_prob_sum"]
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    _, score_function_term, entropy_term = site["score_parts"]
                    if not is_identically_zero(score_function_term):
                        raise _NotTraceable(f"guide site {name!r} is not reparameterized (it needs a score-function term)")
                    elbo_particle = elbo_particle - site["log_prob_sum"].detach()
                    if not is_identically_zero(entropy_term):
                        surrogate_elbo_particle = surrogate_elbo_particle - entropy_term.sum()
            loss = loss - elbo_particle / self.particles
            surrogate_loss = surrogate_loss + (-surrogate_elbo_particle) / self.particles
        return loss, surrogate_loss

    def _trace(
        self, vae: VAE, x: torch.Tensor, num_data: int, beta: float, inputs: tuple[torch.Tensor, ...]
    ) -> Callable | _EagerOnly:
        if not hasattr(torch.jit, "trace"):
            return _EagerOnly("this torch has no torch.jit.trace")
        devices = [x.device] if x.device.type == "cuda" else []
        if pyro.is_validation_enabled():
            # The trace runs without Pyro's checks (they branch on tensor values): run them once here.
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                super().loss(vae, x, num_data, beta)

        def fn(x: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # The tensors are the model's own parameters and buffers: the tracer sees the
            # model use them and makes them inputs of the graph.
            return self._loss_and_surrogate(vae, x, num_data, beta)

        # The trace draws random numbers; the caller's stream must be left as it was.
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                graph = torch.jit.trace(fn, (x, *inputs), check_trace=False)
            except _NotTraceable as err:
                return _EagerOnly(str(err))
            except PyroVAEError:
                raise
            except Exception as err:  # any failure of the tracer: the eager program still works
                first = (str(err).strip().splitlines() or [""])[0]
                return _EagerOnly(f"torch.jit.trace failed ({type(err).__name__}: {first})")
        frozen = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        if frozen:
            first = str(frozen[0].message).strip().splitlines()[0]
            return _EagerOnly(f"the program branches on tensor values, which a trace would freeze ({first})")
        return graph


class _NotTraceable(Exception):
    """Raised inside a trace when the program needs the eager Trace_ELBO."""
