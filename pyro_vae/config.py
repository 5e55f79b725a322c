"""Typed configuration: every default lives here, once.

The CLI builds its flags from these dataclasses' defaults, the checkpoint stores them as
JSON, and :func:`pyro_vae.model.build.build_vae` turns a :class:`ModelConfig` back into the
same architecture. Nothing else holds a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "KEEP_CHOICES", "choose"]

T = TypeVar("T")


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
        hidden: Encoder layer widths; the decoder uses them reversed.
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

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a value is out of range."""
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
    image_shape: tuple[int, ...] = ()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a value is out of range."""
        if self.binarize not in ("auto", "dynamic", "threshold", "none"):
            raise ConfigError(
                f"`binarize` must be one of auto, dynamic, threshold, none; got {self.binarize!r}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"`threshold` must be in (0, 1), got {self.threshold}")


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Pretty JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Rebuild from :meth:`to_dict` output, rejecting unknown keys.

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
        default = getattr(klass(), name)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"config {section}.{name} must be a list, got {value!r}")
            value = tuple(value)
        values[name] = value
    return klass(**values)
