"""The VAE as a Pyro program: ``model`` (prior and decoder) and ``guide`` (encoder).

``model(x)`` samples ``z ~ p(z)`` inside a plate over the data points and observes
``x ~ p(x | decoder(z))``; ``guide(x)`` samples ``z ~ q(z | encoder(x))`` at the same
site. These two programs are the only places that call ``pyro.sample``; everything else
(bounds, reconstruction, inspection) reaches the components through ``encode``,
``posterior`` and ``decode``.

Both work with Pyro's own tools in either of Pyro's parameter modes:

- Pyro's default (global param store): ``SVI(vae.model, vae.guide, pyro.optim.Adam(...),
  Trace_ELBO())``. The VAE's parameters are registered in the store under the VAE's
  ``name`` (unique per process by default, so two VAEs never share an entry).
- ``pyro.settings.set(module_local_params=True)``: parameters stay in the module; train
  with ``Trace_ELBO()(vae.model, vae.guide)`` (Pyro's ``ELBOModule``) and a torch
  optimizer. ``vae.model`` and ``vae.guide`` are ``nn.Module`` s whose parameters are
  the VAE's, so that form finds them.

Nothing here changes a Pyro setting; :func:`local_params` is the scoped mode the
library's own computations (``fit``, the bounds) run in, so that they never write to
the global param store.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from typing import Any, Callable, Iterator, overload

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from pyro.poutine.messenger import Messenger
from torch import nn

from ..errors import ConfigError, DataError
from .conditions import Condition
from .guides import DiagonalNormalGuide, Guide
from .likelihoods import Likelihood
from .nn import size_of
from .priors import Prior, StandardNormalPrior

__all__ = ["VAE", "PyroProgram", "program", "local_params", "DATA_PLATE", "LATENT_SITE", "OBS_SITE"]

#: Name of the plate over data points, shared by model and guide.
DATA_PLATE = "data"
#: Name of the latent sample site, shared by model and guide.
LATENT_SITE = "z"
#: Name of the observed sample site in the model.
OBS_SITE = "x"

# Default names: "vae", "vae_1", "vae_2", ... in the order the VAEs are built, so that
# the same script gives the same param-store names on every run.
_default_names = itertools.count()


def _next_name() -> str:
    n = next(_default_names)
    return "vae" if n == 0 else f"vae_{n}"


@contextlib.contextmanager
def local_params() -> Iterator[None]:
    """Run Pyro programs with parameters kept in their modules, for the block only.

    Inside, a VAE's ``pyro.param`` statements read the module's own tensors and write
    nothing to Pyro's global param store (``module_local_params``); the setting is
    restored on exit. The library's own loops and bounds run in it.

    Example:
        >>> import pyro
        >>> with local_params():
        ...     pyro.settings.get("module_local_params")
        True
    """
    if pyro.settings.get("module_local_params"):
        yield
        return
    with pyro.settings.context(module_local_params=True):
        yield


class ParamStoreConflict(Messenger):
    """Refuses a ``pyro.param`` whose name the global store holds for another tensor.

    With a plain ``nn.Module`` inside a ``PyroModule``, Pyro computes with the module's
    own tensors but puts the *stored* tensor of that name in the trace, so an SVI
    optimizer would silently train some other module's parameters. This raises instead.
    """

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    def _pyro_post_param(self, msg: dict) -> None:
        args = msg["args"]
        if len(args) < 2 or not isinstance(args[1], torch.Tensor):
            return
        value = msg["value"]
        stored = value.unconstrained() if hasattr(value, "unconstrained") else value
        if stored is not args[1]:
            raise ConfigError(
                f"Pyro's param store holds a parameter named {args[0]!r} that is not this VAE's "
                f"(VAE name {self.owner!r}): another module of that name ran first. Call "
                "pyro.clear_param_store() before training, or build the VAE with another name="
            )


class PyroProgram(nn.Module):
    """A VAE's model or guide as an ``nn.Module``: calling it runs the Pyro program.

    Its parameters are the VAE's own (the VAE is its one submodule), so that Pyro's
    ``ELBOModule`` (``Trace_ELBO()(vae.model, vae.guide)``), torch optimizers and any
    handler that takes a callable see one object. Get it as ``vae.model`` or
    ``vae.guide``; it is made once per VAE and attribute.
    """

    def __init__(self, vae: "VAE", fn: Callable[..., Any], name: str) -> None:
        super().__init__()
        self.vae = vae
        self._fn = fn
        self._name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        vae = self.vae
        if pyro.settings.get("module_local_params"):
            return self._fn(vae, *args, **kwargs)
        with ParamStoreConflict(vae.name):
            return self._fn(vae, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{type(self.vae).__name__}.{self._name} of {self.vae.name!r}"

    def __repr__(self) -> str:  # the VAE is printed by itself; here just say whose program
        return f"PyroProgram({self.extra_repr()})"


class program:
    """Decorator for a VAE method that is a Pyro program (``model``, ``guide``).

    ``vae.<name>`` is then a :class:`PyroProgram`: an ``nn.Module`` that runs the
    method with Pyro's module effects (as ``pyro.nn.pyro_method`` does). Subclasses
    override a program by defining the method again with this decorator.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = pyro_method(fn)
        self.name = fn.__name__
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]  # typeshed wants a callable; a descriptor works

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, vae: "VAE | None", owner: type | None = None) -> Any:
        if vae is None:
            return self
        programs = vae.__dict__.setdefault("_programs", {})
        found = programs.get(self.name)
        if found is None or found._fn is not self.fn:
            found = programs[self.name] = PyroProgram(vae, self.fn, self.name)
        return found

    def __set__(self, vae: "VAE", value: Any) -> None:
        raise AttributeError(f"{self.name} is the VAE's Pyro program; subclass VAE to change it")


class VAE(PyroModule):
    """A variational autoencoder composed of five parts.

    Args:
        encoder: Network x -> features, with an ``out_features`` attribute
            (e.g. :class:`~pyro_vae.model.nn.MLP`).
        decoder: Network z -> features, with an ``out_features`` attribute.
        likelihood: Head turning decoder features into p(x|z)
            (:class:`~pyro_vae.model.likelihoods.Likelihood`).
        prior: p(z) (:class:`~pyro_vae.model.priors.Prior`); default Normal(0, I).
        guide: Head turning encoder features into q(z|x)
            (:class:`~pyro_vae.model.guides.Guide`); default diagonal Normal. Stored as
            ``self.variational`` because ``self.guide`` is the Pyro guide program.
        z_dim: Size of the latent vector (default: the prior's).
        name: Prefix of the VAE's entries in Pyro's global param store (default
            ``vae``, then ``vae_1``, ``vae_2``, ... in the order VAEs are built).
        condition: For a conditional VAE, what y is
            (:class:`~pyro_vae.model.conditions.Condition`): its features are appended to
            the encoder's output (q(z|x, y)) and to z at the decoder's input
            (p(x|z, y)), so the guide head takes ``encoder.out_features +
            condition.out_features`` inputs and the decoder ``z_dim +
            condition.out_features``.

    x may also come image-shaped, ``(B, H, W)`` or ``(B, C, H, W)`` with ``x_dim``
    values per row: it is flattened to ``(B, x_dim)``.

    Example:
        >>> from pyro_vae.model.nn import MLP
        >>> from pyro_vae.model.likelihoods import BernoulliLikelihood
        >>> vae = VAE(MLP(6, [4]), MLP(2, [4]), BernoulliLikelihood(4, 6), z_dim=2)
        >>> loc, scale = vae.encode(torch.rand(3, 6))
        >>> loc.shape, scale.shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        prior: Prior | None = None,
        guide: Guide | None = None,
        *,
        z_dim: int | None = None,
        name: str | None = None,
        condition: Condition | None = None,
    ) -> None:
        super().__init__(name=_next_name() if name is None else name)
        # A PyroModule built in Pyro's default mode has no local parameter state, which
        # Pyro's module_local_params mode needs when the module is entered; giving it an
        # empty one lets the same VAE run in both modes (fit runs in the local mode).
        if not hasattr(self._pyro_context, "param_state"):
            self._pyro_context.param_state = {"params": {}, "constraints": {}}
        if z_dim is None:
            if prior is None:
                raise ValueError("pass z_dim, or a prior that knows its z_dim")
            z_dim = prior.z_dim
        self.z_dim = z_dim
        self.x_dim = likelihood.x_dim
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior if prior is not None else StandardNormalPrior(z_dim)
        self.condition: Condition | None = condition
        c_dim = 0 if condition is None else condition.out_features
        self.variational = guide if guide is not None else DiagonalNormalGuide(size_of(encoder) + c_dim, z_dim)
        if self.prior.z_dim != z_dim or self.variational.z_dim != z_dim:
            raise ValueError(
                f"prior z_dim {self.prior.z_dim} and guide z_dim {self.variational.z_dim} must both be {z_dim}"
            )
        # Sizes that do not fit fail here, not at the first step. (A subclass with programs
        # of its own wires its parts its own way.)
        if type(self).model is VAE.__dict__["model"]:
            encoder_out = getattr(encoder, "out_features", None)
            _check_sizes("the guide head", self.variational, None if encoder_out is None else encoder_out + c_dim)
            _check_sizes("the likelihood head", likelihood, getattr(decoder, "out_features", None))
            _check_sizes("the decoder", decoder, z_dim + c_dim, attribute="in_features")

    @property
    def name(self) -> str:
        """Prefix of this VAE's parameter names in Pyro's global param store."""
        return self._pyro_name

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
        """The generative model p(z) p(x|z) (p(x|z, y) when conditional) for a batch ``x``.

        Args:
            x: Observed data ``(B, x_dim)``, one row per data point; ``None`` draws x
                from p(x|z) (prior predictive, e.g. ``Predictive(vae.model,
                num_samples=N)(None, num_points=B)``).
            y: The condition of each row, for a conditional VAE (else ``None``).
            num_data: Size of the full data set; the plate scales the log-density by
                ``num_data / B`` so that a minibatch estimates the full-data objective.
            beta: Weight of the latent site (``beta != 1`` gives a beta-VAE).
            num_points: B when ``x`` is ``None`` (default 1).

        Returns:
            The sampled latent ``z`` of shape ``(B, z_dim)`` (``(K, B, z_dim)`` under a
            vectorized particle plate).
        """
        x = self._flat(x)
        features = self._features(y, x.shape[0] if x is not None else num_points or 1)
        pz = self.prior()
        with self._data_plate(x, num_data, num_points):
            with poutine.scale(scale=beta):
                z = pyro.sample(LATENT_SITE, pz)
            pyro.sample(OBS_SITE, self.likelihood(self.decoder(_join(z, features))), obs=x)
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
        """The amortized guide q(z|x) for a batch ``x`` of shape ``(B, x_dim)``.

        Takes the same arguments as :meth:`model` and samples the same site ``z``.

        Raises:
            DataError: ``x`` is missing: the guide is a function of the data.
        """
        x = self._guide_data(x, "q(z|x)")
        qz = self.posterior(x, y)
        with self._data_plate(x, num_data, num_points):
            with poutine.scale(scale=beta):
                return pyro.sample(LATENT_SITE, qz)

    def _guide_data(self, x: torch.Tensor | None, guide: str) -> torch.Tensor:
        """The batch a guide program reads, as rows; a guide is a function of the data.

        Raises:
            DataError: ``x`` is missing (the message names the ``guide``, e.g. ``q(z|x)``).
        """
        if x is None:
            raise DataError(f"the guide {guide} needs data x; pass the batch the model observes")
        return self._flat(x)

    def _data_plate(self, x: torch.Tensor | None, num_data: int | None, num_points: int | None) -> pyro.plate:
        if x is None:
            return pyro.plate(DATA_PLATE, 1 if num_points is None else num_points, dim=-1)
        batch = x.shape[0]
        if num_points is not None and num_points != batch:
            raise DataError(f"num_points={num_points} but x has {batch} rows; pass one or the other")
        if num_data is None or num_data == batch:
            return pyro.plate(DATA_PLATE, batch, dim=-1)
        # The rows are already the minibatch: pass them as the subsample so the plate
        # scales by num_data / B without drawing (and ignoring) random indices.
        return pyro.plate(DATA_PLATE, num_data, subsample=torch.arange(batch, device=x.device), dim=-1)

    # ------------------------------------------------------------- the components
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(x) and sigma(x): the exact parameters the guide uses, one row per input.

        Args:
            x: Data of shape ``(B, x_dim)`` (or image-shaped).
            y: The condition of each row, for a conditional VAE.

        Returns:
            ``(loc, scale)``, each of shape ``(B, z_dim)``.
        """
        return self.variational.encode(self._guide_features(x, y))

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z|x) (q(z|x, y) when conditional): batch shape ``(B,)``, event shape ``(z_dim,)``."""
        return self.variational(self._guide_features(x, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(x|z) (p(x|z, y) when conditional): batch shape ``z.shape[:-1]``, event shape
        ``(x_dim,)``; ``.mean`` gives the expected reconstruction.

        ``y`` has one condition per row of the last batch dimension of ``z`` (the data
        points); leading dimensions of ``z`` (draws) share it.
        """
        if z.dim() < 1 or z.shape[-1] != self.z_dim:
            raise DataError(f"expected z with {self.z_dim} latent dimensions, got shape {tuple(z.shape)}")
        rows = z.shape[-2] if z.dim() > 1 else 1
        return self.likelihood(self.decoder(_join(z, self._features(y, rows))))

    def sample_latent(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """z drawn from the model's prior, shape ``sample_shape + (z_dim,)`` (what
        :meth:`decode` takes; a hierarchical VAE draws its lower layer through the upper)."""
        return self.prior().sample(torch.Size(sample_shape))

    def _guide_features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self._flat(x)
        self.check_x(x)
        h = self.encoder(x)  # (B, features)
        features = self._features(y, x.shape[0])
        return h if features is None else torch.cat([h, features], -1)

    def _features(self, y: torch.Tensor | None, rows: int) -> torch.Tensor | None:
        """The condition's features ``(rows, c_dim)``, or None for an unconditional VAE."""
        if self.condition is None:
            if y is not None:
                raise DataError("this VAE is not conditional: it takes no `y`; train one with a condition")
            return None
        if y is None:
            raise DataError("this VAE is conditional: pass `y`, the condition of each row (e.g. its label)")
        if not torch.jit.is_tracing():
            self.condition.check(y, rows)
        return self.condition(y)

    @overload
    def _flat(self, x: torch.Tensor) -> torch.Tensor: ...
    @overload
    def _flat(self, x: None) -> None: ...
    def _flat(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Image-shaped rows ``(B, ...)`` of ``x_dim`` values, flattened to ``(B, x_dim)``."""
        if x is None or not isinstance(x, torch.Tensor) or x.dim() <= 2:
            return x
        if x[0].numel() == self.x_dim:
            return x.reshape(x.shape[0], self.x_dim)
        return x

    def check_x(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` if ``x`` has the wrong shape for this model."""
        if torch.jit.is_tracing():  # a trace is made for fixed shapes (JitTrace_ELBO)
            return
        if not isinstance(x, torch.Tensor):
            raise DataError(f"expected x as a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor")
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise DataError(
                f"expected x of shape (batch, {self.x_dim}), got {tuple(x.shape)}: this model has "
                f"{self.x_dim} input features; pass data with that many columns or train a new model"
            )


def _join(z: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """z with the condition's features appended: ``(..., B, z_dim + c_dim)``."""
    if features is None:
        return z
    return torch.cat([z, features.expand(z.shape[:-1] + features.shape[-1:])], -1)


def _check_sizes(what: str, part: nn.Module, expected: int | None, *, attribute: str = "in_features") -> None:
    """Refuse parts whose sizes do not fit together, when they say their sizes."""
    got = getattr(part, attribute, None)
    if expected is not None and got is not None and got != expected:
        raise ConfigError(
            f"{what} takes {got} {attribute.replace('_', ' ')} but gets {expected}: build it for {expected} "
            "(the encoder's output, plus the condition's features for a conditional VAE)"
            if what != "the decoder"
            else f"the decoder takes {got} inputs but gets {expected} (z_dim plus the condition's features); "
            f"build it for {expected}"
        )
