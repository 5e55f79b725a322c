"""The fast path of ``Trace_ELBO``: the program traced once per batch shape, then replayed.

:class:`TracedLoss` runs a :class:`~pyro_vae.inference.objectives.TraceELBO` as a
TorchScript graph: the same draws and the same gradients as Pyro's eager
``Trace_ELBO.differentiable_loss``, without Pyro's Python on every step. It is the one
place the package goes around Pyro for speed; every new graph is checked against Pyro's
own value on the same draws, and anything it cannot trace soundly runs Pyro's eager
program instead.
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from typing import Callable, Protocol

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_identically_zero

from ..errors import PyroVAEError
from ..model.vae import VAE, local_params
from ..seeding import forked_rng

__all__ = ["TracedLoss", "EagerTraceELBO", "JIT_CACHE_SIZE"]


class EagerTraceELBO(Protocol):
    """What :class:`TracedLoss` needs of the objective it speeds up (``TraceELBO``)."""

    particles: int
    _elbo: Trace_ELBO

    def eager_loss(
        self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, **program_kwargs: torch.Tensor
    ) -> torch.Tensor: ...


#: Traced graphs kept per model by :class:`TracedLoss` (least recently used dropped first).
JIT_CACHE_SIZE = 16

# Relative tolerance of the check of a new graph against the eager program (same draws).
# The two agree to float rounding (Pyro sums the loss through Python floats); a trace
# that froze a value-dependent branch is off by far more.
_JIT_CHECK_RTOL = 1e-4


class _Graph:
    """One traced graph and whether its first run has been checked against Pyro's."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.checked = False


class _EagerOnly:
    """A signature that runs through Pyro's eager ``Trace_ELBO``, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _NotTraceable(Exception):
    """Raised while tracing when the program needs the eager ``Trace_ELBO``."""


def _fold_constants(graph: torch._C.Graph) -> None:
    # Pyro's plates and scales leave chains of scalar arithmetic on constants in the
    # trace (sizes, num_data / B); folding them once removes about 30 of 230 nodes that
    # every step would otherwise interpret. Folding runs the same kernels on the same
    # constants, and random ops are never folded, so the results do not change. These
    # TorchScript passes are internal: without them the graph is just a little slower.
    for name in ("_jit_pass_constant_propagation", "_jit_pass_dce"):
        optimize = getattr(torch._C, name, None)
        if optimize is not None:
            optimize(graph)


def _plus(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return term if total is None else total + term


def _tensor_slots(module: torch.nn.Module) -> list[tuple[dict, str]]:
    # The graph's inputs: every parameter and buffer once, read straight from the
    # modules' dicts, which costs far less per step than module.parameters().
    slots, seen = [], set()
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    slots.append((table, name))
    return slots


class TracedLoss:
    """Runs a :class:`TraceELBO` as a graph traced once per batch shape: same draws, same gradients.

    The first step with a new *signature* (batch shape, dtype and device, ``num_data``,
    ``beta``, train/eval mode, and the model's parameter and buffer tensors) runs the
    guide and the model through Pyro once under ``torch.jit.trace``, with every
    parameter and buffer as an input of the graph. The graph records the random draws
    (``aten::normal``), so every call draws afresh from torch's global generator, as
    the Pyro program would; later steps run the graph with no Pyro Python at all. The
    graph runs unoptimized (``torch.jit.optimized_execution(False)``): the same kernels
    in the same order as the eager program, so for the same random state the gradients
    agree bit for bit (to float rounding where a parameter is used twice, e.g. by a
    VampPrior) and the loss to float rounding (Pyro sums it through Python floats).

    The trace is made on other draws and the rows in reverse order, and the graph's
    first loss is checked against the eager program on the real draws (which also runs
    Pyro's validation, when enabled): a program whose Python branches on tensor values,
    which a trace would freeze, fails the check. That signature, and any program that
    cannot be traced soundly (a guide site needing a score-function term, an error while
    tracing, a torch without ``torch.jit.trace``), runs the eager program instead, with
    one warning that names the reason. A branch that happens to go the same way on both
    draws is not caught: components must compute from their parameters, buffers and
    inputs without branching on their values (every component in this package does),
    or train with ``--elbo trace-eager``.

    Why not Pyro's ``JitTrace_ELBO``: in Pyro 1.9.2 it reads parameters from the global
    param store (``KeyError`` in ``module_local_params`` mode, which ``fit`` runs in so
    that it never writes to the global store), keys its graphs on the
    number of arguments rather than their shapes (a smaller last minibatch would reuse
    the first one's plate size), and its ``differentiable_loss`` returns twice the
    gradient. ``torch.compile`` splits Pyro's program into many graphs and is slower
    than eager here.

    Args:
        objective: The :class:`TraceELBO` whose program is traced (its ``eager_loss``
            is the reference and the fallback).
    """

    def __init__(self, objective: EagerTraceELBO) -> None:
        self.objective = objective
        self._graphs: weakref.WeakKeyDictionary[VAE, OrderedDict[tuple, _Graph | _EagerOnly]] = (
            weakref.WeakKeyDictionary()
        )
        # Where each model keeps its parameters and buffers: (the module's dict, name).
        self._slots: weakref.WeakKeyDictionary[VAE, list[tuple[dict, str]]] = weakref.WeakKeyDictionary()
        self._warned: set[str] = set()

    def loss(
        self, vae: VAE, x: torch.Tensor, num_data: int, beta: float = 1.0, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of ``objective`` for the minibatch ``x`` (and its conditions ``y``), from
        the traced graph when it can."""
        slots = self._slots.get(vae)
        if slots is None:
            slots = self._slots[vae] = _tensor_slots(vae)
        # Read from the modules on every call: a parameter replaced by a new tensor (e.g. by
        # .to(device)) changes the key and gets its own graph.
        inputs = tuple(table[name] for table, name in slots)
        given = () if y is None else (y,)  # the graph's data inputs after x
        shapes = tuple((tuple(t.shape), t.dtype) for t in given)
        key = (
            tuple(x.shape),
            x.dtype,
            x.device,
            shapes,
            int(num_data),
            float(beta),
            vae.training,
            tuple(map(id, inputs)),
        )
        graphs = self._graphs.setdefault(vae, OrderedDict())
        graph = graphs.get(key)
        if graph is None:
            # A new signature: look for parameters and buffers afresh (submodules may have changed).
            slots = self._slots[vae] = _tensor_slots(vae)
            inputs = tuple(table[name] for table, name in slots)
            key = key[:-1] + (tuple(map(id, inputs)),)
            graph = graphs.get(key) or self._trace(vae, x, given, num_data, beta, inputs)
            graphs[key] = graph
            while len(graphs) > JIT_CACHE_SIZE:
                graphs.popitem(last=False)
        else:
            graphs.move_to_end(key)
        if isinstance(graph, _Graph):
            if graph.checked:
                return self._run(graph, x, given, inputs)
            kwargs = {} if y is None else {"y": y}
            with forked_rng(x.device):
                with torch.no_grad():
                    expected = self.objective.eager_loss(
                        vae, x, num_data, beta, **kwargs
                    )  # Pyro's own value (and checks)
            # (fork_rng restored the random state: the graph draws what Pyro just drew.)
            result = self._run(graph, x, given, inputs)
            if torch.allclose(result.detach(), expected, rtol=_JIT_CHECK_RTOL, atol=_JIT_CHECK_RTOL):
                graph.checked = True
                return result
            graph = graphs[key] = _EagerOnly(
                f"the traced loss {float(result.detach()):.6g} differs from Pyro's {float(expected):.6g} on the same "
                "draws (does a component branch on tensor values?)"
            )
            # Fall through: this step's loss is recomputed eagerly, on the next draws.
        if graph.reason not in self._warned:
            self._warned.add(graph.reason)
            warnings.warn(f"`elbo` trace runs without a traced graph for this model: {graph.reason}", stacklevel=2)
        return self.objective.eager_loss(vae, x, num_data, beta, **({} if y is None else {"y": y}))

    @staticmethod
    def _run(
        graph: _Graph, x: torch.Tensor, given: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            loss, surrogate = graph.fn(x, *given, *inputs)
        # Trace_ELBO's value with its gradient (the surrogate's), without a device sync.
        return loss + (surrogate - surrogate.detach())

    def _loss_and_surrogate(
        self, vae: VAE, x: torch.Tensor, y: torch.Tensor | None, num_data: int, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Trace_ELBO.differentiable_loss with tensors where it takes Python floats (a trace
        # would freeze those): the loop of Pyro's JitTrace_ELBO, for reparameterized sites.
        # Sums start from their first term (no adds of 0, no division by 1 particle): fewer
        # nodes for autograd, the same gradient bit for bit.
        particles = self.objective.particles
        loss: torch.Tensor | None = None
        surrogate_loss: torch.Tensor | None = None
        kwargs = {"y": y, "num_data": num_data, "beta": beta}
        for model_trace, guide_trace in self.objective._elbo._get_traces(vae.model, vae.guide, (x,), kwargs):
            elbo_particle: torch.Tensor | None = None
            surrogate_elbo_particle: torch.Tensor | None = None
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo_particle = _plus(elbo_particle, site["log_prob_sum"].detach())
                    surrogate_elbo_particle = _plus(surrogate_elbo_particle, site["log_prob_sum"])
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    _, score_function_term, entropy_term = site["score_parts"]
                    if not is_identically_zero(score_function_term):
                        raise _NotTraceable(
                            f"guide site {name!r} is not reparameterized (it needs a score-function term)"
                        )
                    elbo_particle = _plus(elbo_particle, -site["log_prob_sum"].detach())
                    if not is_identically_zero(entropy_term):
                        surrogate_elbo_particle = _plus(surrogate_elbo_particle, -entropy_term.sum())
            if elbo_particle is None or surrogate_elbo_particle is None:
                raise _NotTraceable("the program has no sample site")
            loss_particle, surrogate_particle = -elbo_particle, -surrogate_elbo_particle
            if particles != 1:
                loss_particle, surrogate_particle = loss_particle / particles, surrogate_particle / particles
            loss = _plus(loss, loss_particle)
            surrogate_loss = _plus(surrogate_loss, surrogate_particle)
        assert loss is not None and surrogate_loss is not None
        return loss, surrogate_loss

    def _trace(
        self,
        vae: VAE,
        x: torch.Tensor,
        given: tuple[torch.Tensor, ...],
        num_data: int,
        beta: float,
        inputs: tuple[torch.Tensor, ...],
    ) -> _Graph | _EagerOnly:
        if not hasattr(torch.jit, "trace"):
            return _EagerOnly("this torch has no torch.jit.trace")

        # The graph keeps this function alive: weak references let the model and this
        # object be freed (the function only runs while tracing, when both exist).
        owner, model = weakref.ref(self), weakref.ref(vae)

        def fn(x: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # The tensors are the conditions (if any), then the model's own parameters and
            # buffers: the tracer sees the model use them and makes them graph inputs.
            y = tensors[0] if given else None
            traced, traced_vae = owner(), model()
            assert traced is not None and traced_vae is not None  # alive while tracing
            return traced._loss_and_surrogate(traced_vae, x, y, num_data, beta)

        # Pyro's validation branches on tensor values, so the trace runs without it (the
        # check in loss() runs it). The tracer's warnings flag shape checks too, which the
        # signature makes safe; the check in loss() is what catches a frozen value.
        with forked_rng(x.device), pyro.validation_enabled(False), warnings.catch_warnings(), local_params():
            warnings.simplefilter("ignore")
            torch.manual_seed(torch.initial_seed() + 1)  # other draws than the checked step's
            try:
                # The rows reversed (x and its conditions alike): other values than the checked step's.
                traced = torch.jit.trace(fn, (x.flip(0), *(t.flip(0) for t in given), *inputs), check_trace=False)
                _fold_constants(traced.graph)
                return _Graph(traced)
            except _NotTraceable as err:
                return _EagerOnly(str(err))
            except PyroVAEError:
                raise
            except Exception as err:  # the tracer failed; the eager program may still work
                first = (str(err).strip().splitlines() or [""])[0]
                return _EagerOnly(f"torch.jit.trace failed ({type(err).__name__}: {first})")
