"""``pyro-vae evaluate``: a trained run scored on its held-out data, ``evaluation.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import Dataset
from ..files import atomic_write
from ..inference.bounds import DEFAULT_MAX_ELEMENTS
from ..inference.evaluation import DEFAULT_IW_SAMPLES, evaluate
from .checkpoint import load_config, load_run
from .train import EVALUATION_FILE, load_data, make_transform, resolve_device

__all__ = ["held_out", "evaluate_run"]


def held_out(data: Dataset) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The held-out split used for evaluation: the test set if the data has one, else validation."""
    if data.test is not None:
        return data.test, data.test_labels, "test"
    return data.val, data.val_labels, "validation"


def evaluate_run(
    run_dir: str | Path,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    device: str | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    progress: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained run on its held-out data and write ``RUN_DIR/evaluation.json``.

    Per data point and averaged: the ELBO, the importance-sampled estimate of log p(x)
    with ``iw_samples`` draws, the KL and reconstruction terms; and the active units
    (see :func:`pyro_vae.inference.evaluation.evaluate`). The draws and the binarization use the
    run's seed, so repeated calls agree.

    Args:
        run_dir: The run directory.
        iw_samples: K, draws of z per data point (5000 is the published standard).
        device: ``cpu`` or ``cuda``; default the run's.
        max_elements: Memory budget of one vectorized pass (numbers per tensor).
        progress: Show a progress bar.
        write: Write ``evaluation.json`` (replacing an earlier one atomically).

    Returns:
        The JSON's content: the averages (``elbo_per_datum``, ``log_px_per_datum``,
        ``kl_per_datum``, ``reconstruction_per_datum``, ``active_units``, ...), the
        ``split`` evaluated, ``unit_activity`` and the ``per_datum`` lists.

    Raises:
        CheckpointError: The run directory is missing or damaged.
        ConfigError: ``iw_samples < 1`` or the device is unavailable.
    """
    config = load_config(run_dir)
    dev = resolve_device(device or config.train.device)
    config, vae = load_run(run_dir, dev)
    data = load_data(config)
    x, _, split = held_out(data)
    xt = torch.from_numpy(x).to(dev)
    vae.likelihood.check_support(xt)
    result = evaluate(
        vae,
        xt,
        iw_samples=iw_samples,
        max_elements=max_elements,
        seed=config.train.seed,
        transform=make_transform(config, vae),
        progress=progress,
    )
    report = {"split": split, **result.to_dict()}
    if write:
        atomic_write(Path(run_dir) / EVALUATION_FILE, json.dumps(report, indent=1) + "\n")
    return report
