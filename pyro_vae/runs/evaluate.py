"""``pyro-vae evaluate``: a trained run scored on its held-out data, ``evaluation.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import Dataset
from ..data.rows import Rows, chunk_rows
from ..errors import ConfigError
from ..files import atomic_write
from ..inference.bounds import DEFAULT_MAX_ELEMENTS
from ..inference.evaluation import DEFAULT_IW_SAMPLES, Evaluation, evaluate, posterior_means
from ..model.vae import VAE
from ..seeding import forked_rng
from ..training.batches import block_seed
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


def held_out(data: Dataset) -> tuple[np.ndarray | Rows, np.ndarray | None, str]:
    """The held-out split used for evaluation: the test set if the data has one, else validation."""
    if data.test is not None:
        return data.test, data.test_labels, "test"
    return data.val, data.val_labels, "validation"


#: The splits ``evaluate_run`` can score.
SPLITS = ("test", "validation", "train")


def _split_rows(data: Dataset, split: str | None) -> tuple[np.ndarray | Rows, str]:
    if split is None:
        x, _, name = held_out(data)
        return x, name
    rows = {"test": data.test, "validation": data.val, "val": data.val, "train": data.train}
    if split not in rows:
        raise ConfigError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
    chosen = rows[split]
    if chosen is None:
        raise ConfigError(f"the data {data.name!r} has no {split} split; choose `split` validation or train")
    return chosen, {"val": "validation"}.get(split, split)


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
    kwargs: dict[str, Any] = {
        "iw_samples": iw_samples,
        "max_elements": max_elements,
        "transform": make_transform(config, vae),
        "progress": progress,
    }
    if isinstance(x, Rows):  # read from a file: a block at a time
        result = _evaluate_rows(vae, x, y, config.train.seed, dev, **kwargs)
    else:
        xt = torch.from_numpy(x).to(dev)
        vae.check_x(xt)
        vae.likelihood.check_support(xt)
        result = evaluate(vae, xt, seed=config.train.seed, y=y, **kwargs)
    report = {"data": config.data.data, "split": split, "condition": config.model.condition, **result.to_dict()}
    truth = {"test": dataset.test_labels, "validation": dataset.val_labels, "train": dataset.train_labels}[split]
    if hasattr(vae, "predict") and truth is not None:  # a semi-supervised VAE's classifier
        with torch.no_grad():
            blocks = x.chunks() if isinstance(x, Rows) else [(None, x)]
            predicted = np.concatenate([vae.predict(torch.from_numpy(b).to(dev)).cpu().numpy() for _, b in blocks])
        report["accuracy"] = float((predicted == truth).mean())
    if write:
        atomic_write(Path(run_dir) / EVALUATION_FILE, json.dumps(report, indent=1) + "\n")
    return report


def _evaluate_rows(
    vae: VAE, x: Rows, y: torch.Tensor | None, seed: int, device: torch.device, **kwargs: Any
) -> Evaluation:
    """:func:`~pyro_vae.inference.evaluation.evaluate` over rows read a block at a time.

    Rows that fit in one block (:func:`~pyro_vae.data.rows.chunk_rows`) are one call with
    ``seed``: the result of the same rows as a tensor. Larger ones are evaluated block by
    block (block ``i`` seeded with :func:`~pyro_vae.training.batches.block_seed`), the
    per-row results concatenated, and the unit activity (a variance over all rows) pooled
    from each block's variance and mean of E_q[z | x].
    """
    step = chunk_rows(x.x_dim)
    parts: list[Evaluation] = []
    means: list[torch.Tensor] = []
    for block, lo in enumerate(range(0, len(x), step)):
        span = slice(lo, min(lo + step, len(x)))
        xb, yb = x.gather(span, device), None if y is None else y[span]  # (b, D)
        vae.check_x(xb)
        vae.likelihood.check_support(xb)
        parts.append(evaluate(vae, xb, seed=block_seed(seed, block), y=yb, **kwargs))
        if len(x) > step:
            with forked_rng(device, seed=block_seed(seed, block)), torch.no_grad():
                transform = kwargs.get("transform")
                means.append(posterior_means(vae, xb if transform is None else transform(xb), y=yb).double().mean(0))
    if len(parts) == 1:
        return parts[0]
    # Law of total variance, with each block's unbiased variance: sum of squares within
    # blocks plus between them, over N - 1.
    counts = torch.tensor([float(p.num_points) for p in parts], dtype=torch.float64)  # (blocks,)
    within = torch.stack([torch.from_numpy(p.unit_activity).double() for p in parts])  # (blocks, z_dim)
    block_means = torch.stack(means).cpu()  # (blocks, z_dim)
    grand = (counts[:, None] * block_means).sum(0) / counts.sum()
    squares = ((counts[:, None] - 1) * within + counts[:, None] * (block_means - grand) ** 2).sum(0)
    return Evaluation(
        iw_samples=parts[0].iw_samples,
        elbo=np.concatenate([p.elbo for p in parts]),
        log_px=np.concatenate([p.log_px for p in parts]),
        kl=np.concatenate([p.kl for p in parts]),
        reconstruction=np.concatenate([p.reconstruction for p in parts]),
        unit_activity=(squares / (counts.sum() - 1)).numpy(),
        seconds=sum(p.seconds for p in parts),
    )
