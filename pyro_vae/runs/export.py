"""``pyro-vae encode`` and ``pyro-vae sample``: a trained run's mu(x), sigma(x) and draws, to files."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..config import RunConfig
from ..data.formats import ARRAY_SUFFIXES, load_array, read_splits
from ..data.rows import Rows
from ..errors import ConfigError
from ..files import atomic_write
from ..seeding import forked_rng
from .checkpoint import load_run
from .figures import plot_samples
from .outputs import check_output_file
from .train import encode_rows, load_data, resolve_paths

__all__ = ["ENCODE_SPLITS", "encode_run", "sample_run"]

#: The splits ``encode_run`` can encode.
ENCODE_SPLITS = ("train", "val", "test", "all")


class _Rows(NamedTuple):
    parts: list[np.ndarray | Rows]  # the chosen splits' rows, (N_i, D) each, N in all
    split: np.ndarray  # (N,) the split each row comes from
    row: np.ndarray  # (N,) its row in that split
    labels: np.ndarray | None  # (N,) or None


def _rows(config: RunConfig, data: str | None, data_dir: str | None, split: str) -> _Rows:
    name = data or config.data.data
    if data is not None and Path(name).suffix in ARRAY_SUFFIXES and read_splits(name) is None:
        x, labels = load_array(name)
        return _Rows([x], np.full(len(x), "file"), np.arange(len(x)), labels)
    if data is not None:
        config = dataclasses.replace(
            config,
            data=resolve_paths(
                dataclasses.replace(config.data, data=name, data_dir=data_dir, val_data=None, test_data=None)
            ),
        )
    dataset = load_data(config)
    every = {
        "train": (dataset.train, dataset.train_labels),
        "val": (dataset.val, dataset.val_labels),
        "test": (dataset.test, dataset.test_labels),
    }
    splits = {s: (x, labels) for s, (x, labels) in every.items() if x is not None}
    if split not in ENCODE_SPLITS:
        raise ConfigError(f"`split` must be one of {', '.join(ENCODE_SPLITS)}, got {split!r}")
    chosen = [s for s in splits if split == "all" or s == split]
    if not chosen:
        raise ConfigError(f"the data {name!r} has no {split} split; choose `split` train, val or all")
    xs = [splits[s][0] for s in chosen]
    has_labels = all(splits[s][1] is not None for s in chosen)
    return _Rows(
        xs,
        np.concatenate([np.full(len(x), s) for s, x in zip(chosen, xs, strict=True)]),
        np.concatenate([np.arange(len(x)) for x in xs]),
        np.concatenate([splits[s][1] for s in chosen]) if has_labels else None,
    )


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

    Every row carries its split (``train``, ``val``, ``test``; ``file`` for a plain
    array file), its row number in that split and, when the data has labels, its label.

    Args:
        run_dir: A trained run.
        out: ``.npz`` (arrays ``loc``, ``scale``, ``split``, ``row`` and ``label``) or
            ``.csv`` (columns ``split``, ``row``, ``label``, ``mu_1..``, ``sigma_1..``).
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
    rows = _rows(config, data, data_dir, split)
    for part in rows.parts:  # rows read from a file are checked and encoded a block at a time
        for _, block in part.chunks() if isinstance(part, Rows) else [(None, part)]:
            x = torch.from_numpy(block)
            vae.check_x(x)
            vae.likelihood.check_support(x)
    y = None
    if vae.condition is not None:  # a conditional VAE encodes each row with its label
        if rows.labels is None:
            raise ConfigError(
                "this run's VAE is conditioned on labels, but the data to encode has none; pass data with labels"
            )
        y = torch.from_numpy(rows.labels)
    ends = np.cumsum([0] + [len(part) for part in rows.parts])
    encoded = [
        encode_rows(vae, part, None if y is None else y[lo:hi])
        for part, lo, hi in zip(rows.parts, ends[:-1], ends[1:], strict=True)
    ]
    loc, scale = (torch.cat(t).numpy() for t in zip(*encoded, strict=True))  # (N, z_dim) each
    if out.suffix == ".npz":
        arrays: dict[str, Any] = {"loc": loc, "scale": scale, "split": rows.split, "row": rows.row}
        if rows.labels is not None:
            arrays["label"] = rows.labels
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(out, buffer.getvalue())
    else:
        names = ["split", "row"] + ["label"] * (rows.labels is not None)
        names += [f"mu_{d + 1}" for d in range(vae.z_dim)] + [f"sigma_{d + 1}" for d in range(vae.z_dim)]
        lines = [",".join(names)]
        for i in range(len(loc)):
            ids = [str(rows.split[i]), str(int(rows.row[i]))]
            if rows.labels is not None:
                ids.append(str(int(rows.labels[i])))
            lines.append(",".join(ids + [format(float(v), ".7g") for v in (*loc[i], *scale[i])]))
        atomic_write(out, "\n".join(lines) + "\n")
    return len(loc), vae.z_dim


@torch.no_grad()
def sample_run(
    run_dir: str | os.PathLike, out: str | os.PathLike, *, num: int, seed: int = 0, overwrite: bool = False
) -> None:
    """Draw ``num`` data points from the model: z ~ p(z), x = the mean of p(x|z).

    Writes ``.npy`` (an ``(num, x_dim)`` array) or ``.png`` (tiles in the run's image shape).

    Raises:
        PyroVAEError: A bad output, count or run directory (nothing is written).
    """
    out = check_output_file(out, (".png", ".npy"), overwrite=overwrite)
    if num < 1:
        raise ConfigError(f"the number of samples must be >= 1, got {num}")
    config, vae = load_run(run_dir)
    y = None
    if vae.condition is not None:  # draws for every class in turn
        y = (
            vae.condition.example(num)
            if config.model.condition != "labels"
            else torch.arange(num) % config.model.num_classes
        )
    with forked_rng(seed=seed):
        z = vae.sample_latent((num,))  # (n, z_dim)
    means = vae.decode(z, y).mean.numpy()  # (n, x_dim)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, means)
        atomic_write(out, buffer.getvalue())
    else:
        plot_samples(means, config.data.image_shape, out)
