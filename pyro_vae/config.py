"""Typed configuration: every default lives here, once.

The CLI builds its flags from these dataclasses' defaults, the checkpoint stores them as
JSON, and :func:`pyro_vae.model.build.build_vae` turns a :class:`ModelConfig` back into the
same architecture. Nothing else holds a default.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "KEEP_CHOICES", "LIMITS", "MAX_WEIGHTS", "choose"]

T = TypeVar("T")

#: The sane range of every size and count, checked before anything is allocated
#: (a config.json can say anything): ``name: (lowest, highest)``, both included.
LIMITS: dict[str, tuple[int, int]] = {
    "x_dim": (0, 2**24),  # 16,777,216 features: a 4096 x 4096 image
    "z_dim": (1, 4096),
    "hidden layers": (0, 32),
    "hidden width": (1, 65_536),
    "prior_components": (1, 100_000),
    "flow_layers": (1, 64),
    "guide_rank": (1, 4096),
    "num_classes": (0, 100_000),
    "image_shape side": (1, 2**24),
    "epochs": (1, 1_000_000),
    "batch_size": (1, 2**24),
    "particles": (1, 100_000),
    "eval_particles": (1, 100_000),
    "kl_warmup": (0, 1_000_000),
    "patience": (0, 1_000_000),
    "seed": (0, 2**63 - 1),
}

#: The most weights a model may need, by :meth:`ModelConfig.weights_bound`: 2**30, 4 GiB
#: of float32 (Adam's moments take twice that again).
MAX_WEIGHTS = 2**30


def _check_range(name: str, value: int, what: str | None = None) -> None:
    low, high = LIMITS[what or name]
    if not low <= value <= high:
        raise ConfigError(f"`{name}` must be between {low:,} and {high:,}, got {value:,}")


def _check_limits(section: Any) -> None:
    """Every field of a config section that :data:`LIMITS` names, within its range."""
    for f in dataclasses.fields(section):
        if f.name in LIMITS:
            _check_range(f.name, getattr(section, f.name))


def choose(table: Mapping[str, T], name: str, option: str) -> T:
    """``table[name]``, or a :class:`ConfigError` that lists the choices of ``option``.

    Component names are looked up only through this function, at the edges (building
    a model or an objective from a config).

    Example:
        >>> choose({"normal": 1}, "normal", "prior")
        1
    """
    if name not in table:
        raise ConfigError(f"unknown `{option}` {name!r}; choose one of {', '.join(sorted(table))}")
    return table[name]


@dataclass
class ModelConfig:
    """The generative model p(z) p(x|z) and the guide q(z|x).

    Attributes:
        x_dim: Number of features of one data point (0 until filled in from the data).
        z_dim: Size of the latent vector z.
        hidden: Encoder layer widths (channels of each convolution for ``net="conv"``);
            the decoder uses them reversed.
        net: The encoder and decoder networks: ``mlp`` (dense layers) or ``conv``
            (stride-2 convolutions and transposed convolutions over image rows; the
            likelihood then reads the decoder's per-pixel output directly).
        image_shape: ``(H, W)`` of image rows for ``net="conv"`` (filled in from the
            data).
        top_dim: Size of a second stochastic layer z2 above z (``z_dim`` is then z1's):
            z2 -> z1 -> x, as in Burda et al. (2015); 0 for one layer. The prior is then
            p(z2).
        top_hidden: Widths of the networks between z1 and z2 (both directions).
        activation: Hidden-layer non-linearity (``relu``, ``tanh``, ``softplus``, ``elu``).
        likelihood: Name of the likelihood p(x|z) (see ``pyro_vae.model.build.LIKELIHOODS``).
        prior: Name of the prior p(z) (see ``pyro_vae.model.build.PRIORS``).
        guide: Name of the guide family q(z|x) (see ``pyro_vae.model.build.GUIDES``).
        prior_components: K, the number of Gaussians of the ``mixture`` prior and of
            pseudo-inputs of the ``vamp`` prior (ignored by the other priors).
        flow_layers: Number of autoregressive layers of the ``flow`` prior and the
            ``flow`` guide (ignored by the others).
        guide_rank: Number of correlated directions of the ``lowrank`` guide's
            covariance, 1 to ``z_dim`` (ignored by the other guides).
        condition: ``none``; ``labels`` for a conditional VAE on the data's class
            labels (q(z|x, y), p(x|z, y)); ``semisupervised`` for M2, the label a
            latent variable where unknown (see ``DataConfig.label_fraction``).
        num_classes: Number of label classes of a ``labels`` condition (filled in from
            the data).
    """

    x_dim: int = 0
    z_dim: int = 2
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    prior: str = "normal"
    guide: str = "diagonal"
    prior_components: int = 10
    flow_layers: int = 2
    guide_rank: int = 1
    condition: str = "none"
    num_classes: int = 0
    net: str = "mlp"
    image_shape: tuple[int, ...] = ()
    top_dim: int = 0
    top_hidden: tuple[int, ...] = (50, 50)

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a value is outside :data:`LIMITS`, or the model
        would need more than :data:`MAX_WEIGHTS` weights."""
        if self.x_dim < 0:
            raise ConfigError(f"`x_dim` must be >= 0 (0: set from the data), got {self.x_dim}")
        if self.z_dim < 1:
            raise ConfigError(f"`z_dim` must be >= 1, got {self.z_dim}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"`hidden` widths must all be >= 1, got {list(self.hidden)}")
        for name in ("prior_components", "flow_layers", "guide_rank"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {value}")
        _check_limits(self)
        low, high = LIMITS["hidden layers"]
        if len(self.hidden) > high:
            raise ConfigError(f"`hidden` may have at most {high} layers, got {len(self.hidden)}")
        low, high = LIMITS["hidden width"]
        if any(not low <= width <= high for width in self.hidden):
            raise ConfigError(f"`hidden` widths must be between {low:,} and {high:,}, got {list(self.hidden)}")
        if self.image_shape and (
            len(self.image_shape) != 2
            or min(self.image_shape) < 1
            or (self.x_dim and self.image_shape[0] * self.image_shape[1] != self.x_dim)
        ):
            raise ConfigError(
                f"`image_shape` must be two sizes H W with H * W = x_dim ({self.x_dim}), got {list(self.image_shape)}"
            )
        if self.top_dim < 0 or any(h < 1 for h in self.top_hidden):
            raise ConfigError(
                f"`top_dim` must be >= 0 and `top_hidden` widths >= 1, got {self.top_dim}, {list(self.top_hidden)}"
            )
        for name, value in (("top_dim", self.top_dim), *(("top_hidden width", h) for h in self.top_hidden)):
            if value > LIMITS["z_dim"][1] * 16:
                raise ConfigError(f"`{name.split()[0]}` {value} is out of bounds (at most {LIMITS['z_dim'][1] * 16:,})")
        weights = self.weights_bound()
        if weights > MAX_WEIGHTS:
            raise ConfigError(
                f"this model could need up to {weights:,} weights, more than the limit of {MAX_WEIGHTS:,} "
                f"(4 GiB of float32); use smaller `hidden` widths, `z_dim`, `prior_components` or `flow_layers`"
            )

    def weights_bound(self) -> int:
        """An upper estimate of the model's number of weights, whichever prior, guide and
        likelihood it uses, computed from the sizes alone (nothing is allocated).

        It counts the encoder and decoder matrices (the decoder with two outputs per
        feature), a prior table of ``prior_components`` rows of ``x_dim + 2 z_dim``
        numbers (pseudo-inputs or Gaussians) and the ``z_dim x z_dim`` blocks of the
        largest guide heads and flows.

        Example:
            >>> ModelConfig(x_dim=784).weights_bound() < 10**6
            True
        """
        x = max(self.x_dim, 1)
        widths = [x, *self.hidden, self.z_dim]
        encoder = sum(a * b for a, b in itertools.pairwise(widths))
        last = widths[-2]
        decoder = encoder + last * x  # the reversed stack, with a second output per feature
        prior = self.prior_components * (x + 2 * self.z_dim)
        blocks = self.z_dim**2 * (last // 2 + 1 + 30 * self.flow_layers) + 10 * self.z_dim * last * self.flow_layers
        # A condition's features (one per class of a label) join the encoder's output and z.
        classes = self.num_classes * (2 * self.z_dim + last + 10 * self.z_dim * self.flow_layers)
        return encoder + decoder + prior + blocks + classes


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared.

    Attributes:
        data: ``digits`` (built in, offline), ``mnist`` (IDX files in ``data_dir``) or a
            path to a ``.npy``, ``.npz`` or ``.csv`` file holding a 2-D array.
        data_dir: Folder of the IDX files for ``data="mnist"``; defaults to the
            ``PYRO_VAE_DATA_DIR`` environment variable.
        binarize: ``auto`` (``dynamic`` for the Bernoulli likelihood, else ``none``),
            ``dynamic`` (a fresh Bernoulli draw of every pixel each epoch), ``threshold``
            (fixed: ``x > threshold``) or ``none`` (keep values as they are).
        threshold: Cut-off for ``binarize="threshold"``.
        val_fraction: Fraction of the training rows held out for validation, in (0, 1)
            (checked where the data is split, :func:`pyro_vae.data.datasets.split_train_val`).
        val_data: A file of validation rows (else the source's validation split, else
            a random hold-out of ``val_fraction``).
        test_data: A file of test rows (else the source's test split, if any).
        label_fraction: For a semi-supervised VAE, the share of training rows whose
            label it sees (a random subset fixed by the seed); the rest are unknown.
        image_shape: ``(height, width)`` of image rows, used by every figure: given, or
            filled in from the data (3-D arrays, square images); empty for feature
            vectors that are not images.

    A run stores ``data``, ``data_dir``, ``val_data`` and ``test_data`` as absolute paths,
    so its directory works from any working directory.
    """

    data: str = "digits"
    data_dir: str | None = None
    binarize: str = "auto"
    threshold: float = 0.5
    val_fraction: float = 0.1
    val_data: str | None = None
    test_data: str | None = None
    label_fraction: float = 1.0
    image_shape: tuple[int, ...] = ()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a value is out of range."""
        if self.binarize not in ("auto", "dynamic", "threshold", "none"):
            raise ConfigError(f"`binarize` must be one of auto, dynamic, threshold, none; got {self.binarize!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"`threshold` must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"`label_fraction` must be in (0, 1], got {self.label_fraction}")
        if self.image_shape:
            if len(self.image_shape) != 2:
                raise ConfigError(f"`image_shape` must be (height, width) or empty, got {list(self.image_shape)}")
            for side in self.image_shape:
                _check_range("image_shape", side, "image_shape side")


#: Which weights a run keeps (:attr:`TrainConfig.keep`).
KEEP_CHOICES = ("best", "last")


@dataclass
class TrainConfig:
    """The optimisation: objective, optimizer and schedule.

    Attributes:
        epochs: Passes over the training data.
        batch_size: Data points per gradient step.
        lr: Adam learning rate.
        seed: Seed of every random draw (split, shuffling, binarization, eps).
        elbo: Name of the training objective (see ``pyro_vae.inference.objectives.OBJECTIVES``).
        particles: Monte Carlo samples of z per data point in the objective (vectorized).
        beta: Weight of the latent (KL) term; 1 is the ELBO, > 1 a beta-VAE.
        kl_warmup: Epochs over which the KL weight rises linearly from beta/kl_warmup
            to beta (0: no warm-up).
        eval_particles: Samples of z per data point for the validation ELBO.
        keep: Which weights a run keeps as its model: ``best`` (the epoch with the
            highest validation ELBO; the default, because a VAE that trains on past its
            best epoch overfits and its last weights are worse held-out) or ``last``.
            Training resumes from the last epoch either way.
        patience: Stop when the validation ELBO has not improved for this many epochs
            (0: train all ``epochs``).
        divergence_guard: Stop a run whose training loss rises far above its best
            without becoming NaN (the rule: :mod:`pyro_vae.training.guards`).
        device: ``cpu`` or ``cuda`` (or ``cuda:N``).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    elbo: str = "trace"
    particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    eval_particles: int = 1
    keep: str = "best"
    patience: int = 0
    divergence_guard: bool = True
    device: str = "cpu"

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a value is out of range."""
        for name in ("epochs", "batch_size", "particles", "eval_particles"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"`lr` must be > 0, got {self.lr}")
        if not self.beta > 0:
            raise ConfigError(f"`beta` must be > 0, got {self.beta}")
        if self.kl_warmup < 0:
            raise ConfigError(f"`kl_warmup` must be >= 0 epochs, got {self.kl_warmup}")
        if self.keep not in KEEP_CHOICES:
            raise ConfigError(f"`keep` must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}")
        if self.patience < 0:
            raise ConfigError(f"`patience` must be >= 0 epochs (0: no early stopping), got {self.patience}")
        _check_limits(self)
        for name in ("lr", "beta"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"`{name}` must be a finite number, got {getattr(self, name)}")

    def kl_weight(self, epoch: int) -> float:
        """The weight of the KL term in epoch ``epoch`` (0-based), warm-up included."""
        if self.kl_warmup == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.kl_warmup)


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Validate every section. Whether the objective can train the model is checked
        where a run starts (:func:`pyro_vae.inference.objectives.check_compatible`).

        Raises:
            ConfigError: A value is out of range.
        """
        self.model.validate()
        self.data.validate()
        self.train.validate()
        shape, x_dim = self.data.image_shape, self.model.x_dim
        if shape and x_dim and math.prod(shape) != x_dim:
            raise ConfigError(
                f"`image_shape` {list(shape)} holds {math.prod(shape)} pixels but the model has {x_dim} "
                "features; give an image shape whose height x width is the number of features"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Pretty JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Rebuild from :meth:`to_dict` output, rejecting unknown keys and wrong types.

        Types are strict, as JSON gives them: an integer must be a JSON integer (not
        ``"2"``, ``2.5`` or ``true``), a float any finite number, a list of integers a
        list. Ranges are checked by :meth:`validate`.

        Raises:
            ConfigError: A section or key is unknown or has the wrong type.
        """
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}")
        built = {}
        for name, klass in sections.items():
            built[name] = _section_from_dict(klass, raw.get(name, {}), name)
        return cls(**built)


def _section_from_dict(klass: type, raw: Any, section: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section {section!r} must be a JSON object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in config section {section!r}; known keys: {sorted(fields)}"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _typed(value, str(fields[name].type), f"{section}.{name}")
    return klass(**values)


def _typed(value: Any, annotation: str, where: str) -> Any:
    """``value`` checked against a field's annotation (a string: annotations are postponed)."""

    def wrong(expected: str) -> ConfigError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return ConfigError(f"config {where} must be {expected}, got {shown} ({type(value).__name__})")

    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None and optional:
        return None
    if base == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif base == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
    elif base == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise wrong("a finite number")
        value = float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise wrong("a string")
    elif base.startswith("tuple[int"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise wrong("a list of integers")
        value = tuple(value)
    return value
