"""``pyro-vae evaluate``: a trained run scored on its held-out data, ``evaluation.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import Dataset
from ..errors import ConfigError
from ..files import atomic_write
from ..inference.bounds import DEFAULT_MAX_ELEMENTS
from ..inference.evaluation import DEFAULT_IW_SAMPLES, evaluate
from .checkpoint import load_config, load_run
from .train import (
    EVALUATION_FILE,
    conditions,
    load_data,
    make_transform,
    resolve_device,
    resolve_paths,
)

__all__ = ["SPLITS", "held_out", "evaluate_run"]


def held_out(data: Dataset) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The held-out split used for evaluation: the test set if the data has one, else validation."""
    if data.test is not None:
        return data.test, data.test_labels, "test"
    return data.val, data.val_labels, "validation"


#: The splits ``evaluate_run`` can score.
SPLITS = ("test", "validation", "train")


def _split_rows(data: Dataset, split: str | None) -> tuple[np.ndarray, str]:
    if split is None:
        x, _, name = held_out(data)
        return x, name
    rows = {"test": data.test, "validation": data.val, "val": data.val, "train": data.train}
    if split not in rows:
        raise ConfigError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
    if rows[split] is None:
        raise ConfigError(f"the data {data.name!r} has no {split} split; choose `split` validation or train")
    return rows[split], {"val": "validation"}.get(split, split)


def evaluate_run(
    run_dir: str | Path,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    device: str | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    data: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    progress: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained run on held-out data and write ``RUN_DIR/evaluation.json``.

    Per data point and averaged: the ELBO, the importance-sampled estimate of log p(x)
    with ``iw_samples`` draws, the KL and reconstruction terms; and the active units
    (see :func:`pyro_vae.inference.evaluation.evaluate`). By default the run's test split
    is scored when its data has one (published numbers are test-set numbers), else its
    validation split. The draws and the binarization use the run's seed, so repeated
    calls agree.

    Args:
        run_dir: The run directory.
        iw_samples: K, draws of z per data point (5000 is the published standard).
        device: ``cpu`` or ``cuda``; default the run's.
        max_elements: Memory budget of one vectorized pass (numbers per tensor).
        data: Score this data instead (a file, or a named data set), with the run's
            validation fraction and seed; its features must match the model's.
        data_dir: Folder of the IDX files when ``data`` is ``mnist``.
        split: ``test``, ``validation`` or ``train``; default test if there is one, else
            validation.
        progress: Show a progress bar.
        write: Write ``evaluation.json`` (replacing an earlier one atomically).

    Returns:
        The JSON's content: ``data``, ``split`` and ``num_points`` scored, the averages
        (``elbo_per_datum``, ``log_px_per_datum``, ``kl_per_datum``,
        ``reconstruction_per_datum``, ``active_units``, ...), ``unit_activity`` and the
        ``per_datum`` lists.

    Raises:
        CheckpointError: The run directory is missing or damaged.
        ConfigError: ``iw_samples < 1``, the split does not exist or the device is
            unavailable.
        DataError: The data does not fit the model.
    """
    config = load_config(run_dir)
    dev = resolve_device(device or config.train.device)
    config, vae = load_run(run_dir, dev)
    if data is not None:
        config.data = resolve_paths(
            dataclasses.replace(config.data, data=data, data_dir=data_dir, val_data=None, test_data=None)
        )
    dataset = load_data(config)
    x, split = _split_rows(dataset, split)
    y = conditions(config, dataset, dev).get({"validation": "val"}.get(split, split))
    xt = torch.from_numpy(x).to(dev)
    vae.check_x(xt)
    vae.likelihood.check_support(xt)
    result = evaluate(
        vae,
        xt,
        iw_samples=iw_samples,
        max_elements=max_elements,
        seed=config.train.seed,
        transform=make_transform(config, vae),
        progress=progress,
        y=y,
    )
    report = {"data": config.data.data, "split": split, "condition": config.model.condition, **result.to_dict()}
    truth = {"test": dataset.test_labels, "validation": dataset.val_labels, "train": dataset.train_labels}[split]
    if hasattr(vae, "predict") and truth is not None:  # a semi-supervised VAE's classifier
        with torch.no_grad():
            predicted = vae.predict(xt).cpu().numpy()
        report["accuracy"] = float((predicted == truth).mean())
    if write:
        atomic_write(Path(run_dir) / EVALUATION_FILE, json.dumps(report, indent=1) + "\n")
    return report
