"""Save and load run directories: JSON config, safetensors weights, atomic writes.

Nothing here unpickles arbitrary objects: weights are read with ``safetensors`` and the
training state with ``torch.load(weights_only=True)``, so a run directory from an
untrusted source cannot execute code. Every file is written atomically
(:func:`pyro_vae.files.atomic_write`), so a kill mid-write leaves the previous version
intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..files import atomic_write
from ..model.build import build_vae
from ..model.vae import VAE

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "STATE_FILE",
    "save_config",
    "load_config",
    "save_weights",
    "load",
    "load_run",
    "save_training_state",
    "load_training_state",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


def save_config(run_dir: str | os.PathLike, config: RunConfig) -> None:
    """Write ``config.json`` atomically."""
    atomic_write(Path(run_dir) / CONFIG_FILE, config.to_json())


def load_config(run_dir: str | os.PathLike) -> RunConfig:
    """Read ``config.json`` of a run directory.

    Raises:
        CheckpointError: The folder or file is missing, or the JSON is damaged.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist; pass the folder a training run wrote")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is missing: {str(run_dir)!r} is not a pyro-vae run directory (or its training "
            "never started); pass the folder printed at the end of `pyro-vae train`"
        )
    try:
        raw = json.loads(path.read_text())
        return RunConfig.from_dict(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({err}); restore it or retrain") from None
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r} does not describe a model: {err}") from None


def save_weights(run_dir: str | os.PathLike, vae: VAE, metadata: dict[str, str] | None = None) -> None:
    """Write the model's ``state_dict`` as ``model.safetensors``, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    atomic_write(Path(run_dir) / WEIGHTS_FILE, safetensors.torch.save(tensors, metadata=metadata))


def _load_state_into(vae: VAE, state: dict[str, torch.Tensor], source: Path) -> None:
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
        raise CheckpointError(f"{str(path)!r} is missing: the run saved no weights yet; train it (or `resume` it) first")
    try:
        state = safetensors.torch.load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{str(path)!r} is damaged ({err}); use a copy or retrain") from None
    try:
        vae = build_vae(config.model)
    except ConfigError as err:
        raise CheckpointError(f"config.json in {str(run_dir)!r} cannot be built: {err}") from None
    _load_state_into(vae, state, path)
    vae.eval()
    return config, vae.to(device)


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """The trained VAE of a run directory (in eval mode), rebuilt from its config.

    Example:
        >>> vae = load("runs/my-run")  # doctest: +SKIP
    """
    return load_run(run_dir, device)[1]


def save_training_state(
    run_dir: str | os.PathLike, vae: VAE, optimizer: torch.optim.Optimizer, history: list[dict[str, float]]
) -> None:
    """Write everything ``--resume`` needs (weights, optimizer, history) as one atomic file."""
    state = {
        "model": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "history": history,
    }
    atomic_write(Path(run_dir) / STATE_FILE, lambda f: torch.save(state, f))


def load_training_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the state :func:`save_training_state` wrote, without executing code.

    Raises:
        CheckpointError: The file is missing or damaged.
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: nothing to resume from; start a new run instead")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or unsafe files
        raise CheckpointError(f"{str(path)!r} is damaged or unsafe to load ({type(err).__name__}); retrain") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "history"} <= set(state):
        raise CheckpointError(f"{str(path)!r} is not a pyro-vae training state; retrain")
    return state
