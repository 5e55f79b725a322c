"""A training run end to end: data -> model -> fit -> run directory.

This is what ``pyro-vae train`` does, callable from Python: :func:`train_run` starts a
run, :func:`resume_run` goes on from the last checkpoint. A run directory holds

- ``config.json``: the :class:`~pyro_vae.config.RunConfig` (rebuilds the model);
- ``model.safetensors``: the weights, rewritten after every epoch;
- ``training_state.pt``: weights, optimizer state and history, for ``--resume``;
- ``metrics.csv``: epoch, train loss, validation ELBO per data point, seconds;
- ``summary.json``: the final held-out ELBO and wall time;
- figures: ``loss.png``, ``reconstructions.png``, ``samples.png`` and, for a 2-D
  latent, ``latent.png``;
- ``evaluation.json``, once ``pyro-vae evaluate`` has run
  (:func:`pyro_vae.runs.evaluate.evaluate_run`): held-out ELBO, importance-sampled
  log p(x), KL and reconstruction terms, active units.

The data is loaded and the model built before anything is written, so a bad option
leaves the disk untouched; an existing non-empty directory is only reused with
``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig, RunConfig
from ..data.datasets import BUILT_IN_DATA, Dataset, load_dataset
from ..data.transforms import BatchTransform, binarize, resolve_binarize
from ..errors import CheckpointError, ConfigError, DataError
from ..files import atomic_write
from ..inference.objectives import check_compatible
from ..model.build import build_vae
from ..model.vae import VAE
from ..seeding import forked_rng
from ..training.distributed import (
    barrier,
    is_initialized,
    is_main_process,
    local_rank,
    run_on_main,
)
from ..training.loop import EpochRecord, best_epoch, fit, should_stop
from .checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    load_config,
    load_run,
    load_training_state,
    save_config,
    save_training_state,
    save_weights,
)
from .figures import plot_history, plot_latent, plot_reconstructions, plot_samples

__all__ = ["RunResult", "train_run", "resume_run", "load_data", "make_transform", "resolve_device"]

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
#: Written by ``pyro-vae evaluate`` (:func:`evaluate_run`); derived, so replaced atomically.
EVALUATION_FILE = "evaluation.json"
FIGURES = ("loss.png", "reconstructions.png", "samples.png", "latent.png")
#: Every file a run writes; ``overwrite=True`` removes exactly these.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, METRICS_FILE, SUMMARY_FILE, EVALUATION_FILE) + FIGURES


@dataclass
class RunResult:
    """What a finished run returns.

    Attributes:
        run_dir: Where the run's files are.
        config: The full configuration (``x_dim`` and ``image_shape`` filled in).
        vae: The trained model (eval mode).
        history: One record per epoch.
        val_elbo: Validation ELBO per data point of the kept model.
        seconds: Wall time of this call.
        kept_epoch: The epoch whose weights are the run's model (``config.train.keep``).
    """

    run_dir: Path
    config: RunConfig
    vae: VAE
    history: list[EpochRecord]
    val_elbo: float
    seconds: float
    kept_epoch: int | None = None


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, checking that CUDA exists when asked for.

    Raises:
        ConfigError: The device string is invalid or CUDA is not available.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"`device` {name!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device` {name} was asked for but no CUDA GPU is available here; use `device` cpu")
    if device.type == "cuda" and device.index is None and is_initialized():
        # One GPU per process under torchrun: LOCAL_RANK picks it.
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank()} has no GPU: this machine has {torch.cuda.device_count()}; "
                f"launch torchrun with --nproc_per_node {torch.cuda.device_count()} or fewer"
            )
        device = torch.device("cuda", local_rank())
    return device


def load_data(config: RunConfig) -> Dataset:
    """Load the data set named in ``config.data`` with its validation (and test) split."""
    d = config.data
    return load_dataset(
        d.data, d.data_dir, val_fraction=d.val_fraction, seed=config.train.seed,
        val_data=d.val_data, test_data=d.test_data, image_shape=tuple(d.image_shape) or None,
    )


def resolve_paths(config: DataConfig) -> DataConfig:
    """``config`` with every data path made absolute, so a run works from any directory.

    Example:
        >>> resolve_paths(DataConfig(data="digits")).data
        'digits'
    """
    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    data = config.data if config.data in BUILT_IN_DATA else absolute(config.data)
    return dataclasses.replace(
        config, data=data, data_dir=absolute(config.data_dir),
        val_data=absolute(config.val_data), test_data=absolute(config.test_data),
    )


def _warn_if_far_from_unit_scale(config: RunConfig, vae: VAE, data: Dataset) -> None:
    """One warning when real-valued data far from unit scale meets the normal likelihood.

    Its learned scales start at 1 and a standard Normal prior's decoder starts near 0,
    so raw 0..255 grey levels (say) train very slowly; the fix is to rescale the data.
    """
    if config.model.likelihood != "normal":
        return
    sd, mean = float(data.train.std()), float(np.abs(data.train.mean()))
    if sd > 10 or sd < 0.1 or mean > 10:
        warnings.warn(
            f"data {config.data.data!r} has mean {data.train.mean():.4g} and sd {sd:.4g}: far from unit scale, "
            "where the normal likelihood's scales start; standardize it ((x - mean) / sd per feature) or "
            "rescale it to about [0, 1] before training",
            DataScaleWarning,
            stacklevel=3,
        )


class DataScaleWarning(UserWarning):
    """The data's scale is far from what the likelihood starts from."""


def make_transform(config: RunConfig, vae: VAE) -> BatchTransform | None:
    """The per-minibatch transform of the data pipeline (binarization), or ``None``.

    ``auto`` binarizes dynamically for a likelihood that ``needs_binary`` and leaves the
    data alone otherwise.
    """
    mode = resolve_binarize(config.data.binarize, vae.likelihood.needs_binary)
    if mode == "none":
        return None
    threshold = config.data.threshold
    return lambda x: binarize(x, mode, threshold=threshold)


def _check_data(config: RunConfig, vae: VAE, data: Dataset) -> None:
    for split, x in (("training", data.train), ("validation", data.val), ("test", data.test)):
        if x is None:
            continue
        try:
            vae.likelihood.check_support(torch.from_numpy(x))
        except DataError as err:
            raise DataError(f"{split} data {config.data.data!r}: {err}") from None
    needs_binary = vae.likelihood.needs_binary
    if needs_binary and config.data.binarize == "none" and not np.isin(data.train, (0.0, 1.0)).all():
        raise ConfigError(
            f"`likelihood` {config.model.likelihood} needs 0/1 data but {config.data.data!r} has values "
            "between 0 and 1 and `binarize` none was given; use `binarize` dynamic or threshold, "
            "or a likelihood for [0, 1] data"
        )


def _fresh_run_dir(config: RunConfig) -> Path:
    stem = Path(config.data.data).stem or "data"
    base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{stem}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _claim_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`out` {str(out)!r} is a file, not a directory; choose another `out`")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"output directory {str(out)!r} exists and is not empty; pass `overwrite` to replace its "
                "run files, `resume` to continue it, or choose another `out`"
            )
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def kept_epoch(history: list[EpochRecord], keep: str) -> int | None:
    """The epoch whose weights a run keeps as its model: the best or the last."""
    if not history:
        return None
    best = best_epoch(history) if keep == "best" else None
    return best if best is not None else history[-1].epoch


def _write_metrics(run_dir: Path, history: list[EpochRecord], keep: str) -> None:
    kept = kept_epoch(history, keep)
    lines = ["epoch,train_loss,val_elbo,seconds,kept"]
    lines += [f"{h.epoch},{h.train_loss:.6f},{h.val_elbo:.6f},{h.seconds:.4f},{int(h.epoch == kept)}" for h in history]
    atomic_write(run_dir / METRICS_FILE, "\n".join(lines) + "\n")


@torch.no_grad()
def _write_figures(run_dir: Path, config: RunConfig, vae: VAE, data: Dataset, history: list[EpochRecord]) -> None:
    device = next(vae.parameters()).device
    plot_history([h.to_dict() for h in history], run_dir / "loss.png")
    image_shape = config.data.image_shape
    transform = make_transform(config, vae)
    with forked_rng(device, seed=config.train.seed):
        x = torch.from_numpy(data.val[:12]).to(device)
        if transform is not None:
            x = transform(x)  # the inputs as the model saw them (binarized)
        z = vae.posterior(x).sample()
        recon = vae.decode(z).mean
        plot_reconstructions(
            x.cpu().numpy(), recon.cpu().numpy(), image_shape, run_dir / "reconstructions.png",
            inputs_title="validation inputs, as the model sees them" + (" (binarized)" if transform else ""),
        )
        samples = vae.decode(vae.prior().sample((64,))).mean
        plot_samples(samples.cpu().numpy(), image_shape, run_dir / "samples.png")
    if vae.z_dim == 2:
        loc, scale = vae.encode(torch.from_numpy(data.val).to(device))
        plot_latent(loc.cpu().numpy(), scale.cpu().numpy(), data.val_labels, run_dir / "latent.png")


def _run(
    config: RunConfig,
    run_dir: Path,
    vae: VAE,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    history: list[EpochRecord],
    progress: bool,
    kept_state: dict[str, torch.Tensor] | None = None,
) -> RunResult:
    start = time.perf_counter()
    device = next(vae.parameters()).device
    train = torch.from_numpy(data.train).to(device)
    val = torch.from_numpy(data.val).to(device)
    transform = make_transform(config, vae)

    keep = config.train.keep
    kept = {"state": kept_state}  # the kept model's weights (rank 0), for the end of the run

    def checkpoint(records: list[EpochRecord]) -> None:
        save_training_state(run_dir, vae, optimizer, [r.to_dict() for r in records])
        if kept_epoch(records, keep) == records[-1].epoch:  # this epoch is the one to keep
            save_weights(run_dir, vae, metadata={"epoch": str(records[-1].epoch)})
            kept["state"] = {k: v.detach().clone() for k, v in vae.state_dict().items()}
        _write_metrics(run_dir, records, keep)

    history = fit(
        vae,
        train,
        val,
        config.train,
        optimizer=optimizer,
        transform=transform,
        history=history,
        on_epoch_end=checkpoint,
        progress=progress,
    )
    vae.eval()
    # The run's model is the kept epoch's (rank 0 holds its weights; every rank gets them).
    state = run_on_main(lambda: kept["state"])
    if state is not None:
        vae.load_state_dict(state)
    epoch = kept_epoch(history, keep)
    record = next((h for h in history if h.epoch == epoch), None)
    val_elbo = record.val_elbo if record is not None else float("nan")
    if is_main_process():  # under torchrun only rank 0 writes (fit checkpoints on rank 0 too)
        _write_figures(run_dir, config, vae, data, history)
        seconds = time.perf_counter() - start
        summary = {
            "epochs": len(history),
            "keep": keep,
            "kept_epoch": epoch,
            "val_elbo_per_datum": val_elbo,
            "last_val_elbo_per_datum": history[-1].val_elbo if history else float("nan"),
            "stopped_early": len(history) < config.train.epochs,
            "train_seconds_this_call": seconds,
            "num_train": int(data.train.shape[0]),
            "num_val": int(data.val.shape[0]),
            "num_test": None if data.test is None else int(data.test.shape[0]),
        }
        atomic_write(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    barrier()  # every rank returns once the run directory is complete
    seconds = time.perf_counter() - start
    return RunResult(run_dir, config, vae, history, val_elbo, seconds, epoch)


def _optimizer(vae: VAE, config: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(vae.parameters(), lr=config.train.lr)


def train_run(
    config: RunConfig | None = None,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train a new model and write its run directory.

    Args:
        config: What to train; default :class:`RunConfig()` (digits, Bernoulli, 2-D latent).
        out: Run directory; default a fresh folder under ``runs/``.
        overwrite: Reuse a non-empty ``out``, replacing its run files.
        progress: Show a progress bar.

    Raises:
        PyroVAEError: Bad data or options (nothing is written), or the loss diverged
            (the last good checkpoint is kept).
    """
    config = dataclasses.replace(config) if config is not None else RunConfig()
    config.validate()
    check_compatible(config.model, config.train)
    device = resolve_device(config.train.device)
    config.data = resolve_paths(config.data)
    data = load_data(config)
    config.model = dataclasses.replace(config.model, x_dim=data.x_dim)
    config.data = dataclasses.replace(config.data, image_shape=tuple(data.image_shape or ()))
    torch.manual_seed(config.train.seed)  # the initial weights
    vae = build_vae(config.model).to(device)
    _check_data(config, vae, data)
    _warn_if_far_from_unit_scale(config, vae, data)

    def claim() -> Path:
        run_dir = Path(out) if out is not None else _fresh_run_dir(config)
        _claim_run_dir(run_dir, overwrite)
        save_config(run_dir, config)
        return run_dir

    # Under torchrun rank 0 claims the folder; every rank gets its name or its error.
    run_dir = run_on_main(claim)
    return _run(config, run_dir, vae, data, _optimizer(vae, config), [], progress)


def resume_run(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    device: str | None = None,
    patience: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Continue a run from its last checkpoint, up to ``epochs`` in all.

    The resumed run draws the same random numbers an uninterrupted run would, so its
    history continues the same curve. ``epochs``, ``device`` and ``patience`` may
    change; the new values are saved in ``config.json``.

    Raises:
        CheckpointError: The run directory is missing, damaged or inconsistent.
    """
    run_dir = Path(run_dir)
    # Under torchrun rank 0 reads the files and sends them to every rank.
    config, state = run_on_main(lambda: (load_config(run_dir), load_training_state(run_dir)))
    if epochs is not None:
        config.train = dataclasses.replace(config.train, epochs=epochs)
        config.train.validate()
    if device is not None:  # a property of this call, not of the model: it may change
        config.train = dataclasses.replace(config.train, device=device)
    if patience is not None:
        config.train = dataclasses.replace(config.train, patience=patience)
        config.train.validate()
    device = resolve_device(config.train.device)
    data = load_data(config)
    if data.x_dim != config.model.x_dim:
        raise CheckpointError(
            f"the data {config.data.data!r} now has {data.x_dim} features but the run was trained on "
            f"{config.model.x_dim}; restore the original data file or start a new run"
        )
    vae = build_vae(config.model)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{STATE_FILE} in {str(run_dir)!r} does not match config.json ({str(err).splitlines()[0]}); "
            "restore the original files or start a new run"
        ) from None
    vae.to(device)
    optimizer = _optimizer(vae, config)
    optimizer.load_state_dict(state["optimizer"])
    history = [EpochRecord(**h) for h in state["history"]]
    if len(history) >= config.train.epochs:
        raise ConfigError(
            f"the run already has {len(history)} epochs and asks for {config.train.epochs}; "
            f"pass `epochs` N with N > {len(history)} to train longer"
        )
    if should_stop(history, config.train.patience):
        raise ConfigError(
            f"the run stopped early after epoch {len(history)}: its validation ELBO last improved at epoch "
            f"{best_epoch(history)} and `patience` is {config.train.patience}; pass a larger `patience` "
            "(or 0) to train longer"
        )
    run_on_main(lambda: save_config(run_dir, config))
    # The kept model so far (model.safetensors) stays kept unless a later epoch beats it.
    kept_state = run_on_main(lambda: load_run(run_dir)[1].state_dict())
    return _run(config, run_dir, vae, data, optimizer, history, progress, kept_state)
