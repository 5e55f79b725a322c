"""Save and load run directories: JSON config, safetensors weights, atomic writes.

Nothing here unpickles arbitrary objects: weights are read with ``safetensors`` and the
training state with ``torch.load(weights_only=True)``, so a run directory from an
untrusted source cannot execute code. Every file is written atomically
(:func:`pyro_vae.files.atomic_write`), so a kill mid-write leaves the previous version
intact, and a run directory is checksummed (``manifest.json``): every file is read with
:func:`pyro_vae.files.read_verified`, so a damaged or edited file is refused with one line
that names it and says what to do, instead of giving wrong results.

``training_state.pt`` also holds a copy of the config and of the kept model's weights,
so ``--resume`` can rebuild ``config.json`` and ``model.safetensors`` from it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import safetensors.torch
import torch
from safetensors import SafetensorError

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, StorageError
from ..files import atomic_write, read_verified, start_manifest
from ..model.build import build_vae
from ..model.vae import VAE

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "STATE_FILE",
    "MAX_CONFIG_BYTES",
    "save_config",
    "config_from_json",
    "load_config",
    "save_weights",
    "save_state_dict",
    "load_state_into",
    "load",
    "load_run",
    "weights_bytes",
    "save_training_state",
    "training_state_bytes",
    "load_training_state",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
#: A config.json is about 1 KB; a larger file is not one (and is not parsed).
MAX_CONFIG_BYTES = 1 << 20

# What to do about a damaged file, for the messages of the readers.
_CONFIG_FIX = (
    "settings change only through the flags of `pyro-vae train --resume RUN`; to get the run's own "
    "config.json back, delete it and run `pyro-vae train --resume RUN`, which rebuilds it from training_state.pt"
)
_WEIGHTS_FIX = "run `pyro-vae train --resume RUN`, which rewrites it from training_state.pt, or retrain"
_STATE_FIX = (
    "this run cannot be continued (its optimizer state is lost); model.safetensors, if intact, still "
    "serves evaluate, encode and sample; to train further, start a new run"
)


def _read(path: Path, fix: str) -> bytes:
    """A run file's bytes, verified against the run's manifest."""
    try:
        return read_verified(path, fix=fix.replace("RUN", str(path.parent)))
    except OSError as err:
        raise StorageError(
            f"cannot read {str(path)!r}: {err.strerror or err}; check the permissions of the file and its folder",
            err.errno,
        ) from None


def save_config(run_dir: str | os.PathLike, config: RunConfig) -> None:
    """Write ``config.json`` atomically, starting the run's ``manifest.json`` if it has none."""
    run_dir = Path(run_dir)
    start_manifest(run_dir, adopt=True)
    atomic_write(run_dir / CONFIG_FILE, config.to_json())


def config_from_json(text: str | bytes, source: str) -> RunConfig:
    """Parse and check the text of a ``config.json`` (types, then :data:`pyro_vae.config.LIMITS`).

    Raises:
        CheckpointError: Not JSON, nested too deeply, or not a valid config.
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source} is not valid JSON ({err}); restore it or retrain") from None
    except RecursionError:
        raise CheckpointError(
            f"{source} is not a config: its JSON is nested too deeply; restore it or retrain"
        ) from None
    try:
        config = RunConfig.from_dict(raw)
        config.validate()  # every size within LIMITS before anything is built from it
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source} does not describe a model: {err}") from None
    return config


def load_config(run_dir: str | os.PathLike) -> RunConfig:
    """Read ``config.json`` of a run directory, verified and checked against the limits.

    Raises:
        CheckpointError: The folder or file is missing, damaged, or not a valid config.
        StorageError: The file cannot be read (permissions).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist; pass the folder a training run wrote")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is missing: {str(run_dir)!r} is not a pyro-vae run directory (or its training "
            "was stopped before it wrote config.json); pass the folder printed at the end of `pyro-vae train`"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{str(path)!r} holds {path.stat().st_size:,} bytes, far more than a config; restore it or retrain"
        )
    return config_from_json(_read(path, _CONFIG_FIX), repr(str(path)))


def save_weights(run_dir: str | os.PathLike, vae: VAE, metadata: dict[str, str] | None = None) -> None:
    """Write the model's ``state_dict`` as ``model.safetensors``, atomically."""
    save_state_dict(run_dir, vae.state_dict(), metadata)


def save_state_dict(
    run_dir: str | os.PathLike, state: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a model ``state_dict`` as ``model.safetensors``, atomically."""
    atomic_write(Path(run_dir) / WEIGHTS_FILE, weights_bytes(state, metadata))


def weights_bytes(state: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of ``model.safetensors`` for a ``state_dict`` (the same tensors give the same bytes)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return safetensors.torch.save(tensors, metadata=metadata)


def load_state_into(vae: VAE, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """``vae.load_state_dict(state)``, or a :class:`CheckpointError` that names what differs.

    Raises:
        CheckpointError: Keys are missing or unexpected, or shapes differ (the first few of each).
    """
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch {wrong[:3]}" if wrong else "",
            )
            if part
        )
        raise CheckpointError(
            f"{str(source)!r} does not match the run's config.json ({detail}): the config was edited or "
            "files from different runs were mixed; restore the original config.json or retrain"
        )
    vae.load_state_dict(state)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[RunConfig, VAE]:
    """Rebuild the trained VAE of a run directory and return it with its config.

    Raises:
        CheckpointError: A file is missing or damaged, or the config does not match the weights.
    """
    config = load_config(run_dir)
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is missing: the run saved no weights yet, or they were deleted; train it, or run "
            f"`pyro-vae train --resume {run_dir}`, which rewrites them from training_state.pt"
        )
    data = _read(path, _WEIGHTS_FIX)
    try:
        state = safetensors.torch.load(data)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r} is damaged ({err}); {_WEIGHTS_FIX.replace('RUN', str(run_dir))}"
        ) from None
    try:
        vae = build_vae(config.model)
    except ConfigError as err:
        raise CheckpointError(f"config.json in {str(run_dir)!r} cannot be built: {err}") from None
    load_state_into(vae, state, path)
    vae.eval()
    return config, vae.to(device)


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """The trained VAE of a run directory (in eval mode), rebuilt from its config.

    Example:
        >>> vae = load("runs/my-run")  # doctest: +SKIP
    """
    return load_run(run_dir, device)[1]


def save_training_state(
    run_dir: str | os.PathLike,
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    *,
    config: RunConfig | None = None,
    kept: tuple[int, Mapping[str, torch.Tensor]] | None = None,
    start_loss: float | None = None,
) -> None:
    """Write everything ``--resume`` needs as one atomic file (:func:`training_state_bytes`)."""
    atomic_write(
        Path(run_dir) / STATE_FILE,
        training_state_bytes(vae, optimizer, history, config=config, kept=kept, start_loss=start_loss),
    )


def training_state_bytes(
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    *,
    config: RunConfig | None = None,
    kept: tuple[int, Mapping[str, torch.Tensor]] | None = None,
    start_loss: float | None = None,
) -> bytes:
    """The bytes of ``training_state.pt``: weights, optimizer, history, and copies for repairs.

    Args:
        vae: The model after the last epoch.
        optimizer: Its optimizer.
        history: One record per epoch.
        config: The run's config, kept as a copy from which ``config.json`` can be rebuilt.
        kept: ``(epoch, state_dict)`` of the kept model when it is not the last epoch's
            (``model.safetensors`` can then be rebuilt from this file alone).
        start_loss: The untrained model's loss, for the divergence guard of a resumed run.
    """
    state: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "history": history,
    }
    if config is not None:
        state["config"] = config.to_json()
    if kept is not None:
        state["kept"] = {"epoch": int(kept[0]), "model": {k: v.detach().cpu() for k, v in kept[1].items()}}
    if start_loss is not None:
        state["start_loss"] = float(start_loss)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_training_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the state :func:`save_training_state` wrote, verified, without executing code.

    Raises:
        CheckpointError: The file is missing, damaged, or not a training state.
        StorageError: The file cannot be read (permissions).
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: nothing to resume from; start a new run instead")
    data = _read(path, _STATE_FIX)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or unsafe files
        raise CheckpointError(f"{str(path)!r} is damaged or unsafe to load ({type(err).__name__}); retrain") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "history"} <= set(state):
        raise CheckpointError(f"{str(path)!r} is not a pyro-vae training state; retrain")
    return state
