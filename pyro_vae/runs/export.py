"""``pyro-vae encode`` and ``pyro-vae sample``: a trained run's mu(x), sigma(x) and draws, to files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import load_dataset
from ..data.formats import ARRAY_SUFFIXES, load_array
from ..errors import ConfigError
from ..files import atomic_write
from ..seeding import forked_rng
from .checkpoint import load_run
from .figures import plot_samples
from .outputs import check_output_file

__all__ = ["ENCODE_SPLITS", "encode_run", "sample_run"]

#: The splits ``encode_run`` can encode.
ENCODE_SPLITS = ("train", "val", "test", "all")


def _rows(config, data: str | None, data_dir: str | None, split: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    name = data or config.data.data
    if Path(name).suffix in ARRAY_SUFFIXES:
        return load_array(name)[0]
    dataset = load_dataset(name, data_dir or config.data.data_dir, val_fraction=config.data.val_fraction, seed=config.train.seed)
    splits = {"train": [dataset.train], "val": [dataset.val], "test": [dataset.test]}
    splits["all"] = [x for rows in splits.values() for x in rows]
    if split not in splits:
        raise ConfigError(f"split must be one of {', '.join(ENCODE_SPLITS)}, got {split!r}")
    chosen = [x for x in splits[split] if x is not None]
    if not chosen:
        raise ConfigError(f"the data {name!r} has no {split} split; choose split train, val or all")
    return np.concatenate(chosen)


@torch.no_grad()
def encode_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "all",
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write mu(x) and sigma(x) of every row to ``out`` (``.npz`` arrays or ``.csv`` columns).

    Args:
        run_dir: A trained run.
        out: ``.npz`` (arrays ``loc``, ``scale``) or ``.csv`` (columns ``mu_1..``, ``sigma_1..``).
        data: Data to encode (a name or a file); default the run's.
        data_dir: Folder of IDX files for ``mnist``.
        split: Which split of a named data set.
        overwrite: Replace an existing ``out``.

    Returns:
        ``(rows, z_dim)`` written.

    Raises:
        PyroVAEError: A bad output, run directory or data (nothing is written).
    """
    out = check_output_file(out, (".npz", ".csv"), overwrite=overwrite)
    config, vae = load_run(run_dir)
    x = torch.from_numpy(_rows(config, data, data_dir, split))
    vae.check_x(x)
    vae.likelihood.check_support(x)
    loc, scale = (t.numpy() for t in vae.encode(x))  # (N, z_dim) each
    if out.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, loc=loc, scale=scale)
        atomic_write(out, buffer.getvalue())
    else:
        header = ",".join([f"mu_{d + 1}" for d in range(vae.z_dim)] + [f"sigma_{d + 1}" for d in range(vae.z_dim)])
        text = io.StringIO()
        np.savetxt(text, np.concatenate([loc, scale], axis=1), delimiter=",", header=header, comments="", fmt="%.7g")
        atomic_write(out, text.getvalue())
    return len(loc), vae.z_dim


@torch.no_grad()
def sample_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, num: int, seed: int = 0, overwrite: bool = False) -> None:
    """Draw ``num`` data points from the model: z ~ p(z), x = the mean of p(x|z).

    Writes ``.npy`` (an ``(num, x_dim)`` array) or ``.png`` (tiles in the run's image shape).

    Raises:
        PyroVAEError: A bad output, count or run directory (nothing is written).
    """
    out = check_output_file(out, (".png", ".npy"), overwrite=overwrite)
    if num < 1:
        raise ConfigError(f"the number of samples must be >= 1, got {num}")
    config, vae = load_run(run_dir)
    with forked_rng(seed=seed):
        z = vae.prior().sample((num,))  # (n, z_dim)
    means = vae.decode(z).mean.numpy()  # (n, x_dim)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, means)
        atomic_write(out, buffer.getvalue())
    else:
        plot_samples(means, config.data.image_shape, out)
