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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, RunConfig
from ..data.datasets import BUILT_IN_DATA, Dataset, load_dataset
from ..data.rows import Rows, sample_rows
from ..data.transforms import BatchTransform, binarize, resolve_binarize
from ..errors import (
    CheckpointError,
    ConfigError,
    DataError,
    StorageError,
    TrainingDivergedError,
)
from ..files import (
    FolderLock,
    atomic_write,
    atomic_write_many,
    check_folder,
    clean_strays,
    has_manifest,
    start_manifest,
)
from ..inference.evaluation import evaluate_elbo
from ..inference.objectives import check_compatible
from ..model.build import build_vae
from ..model.vae import VAE
from ..seeding import forked_rng
from ..training.batches import streamed_mean
from ..training.distributed import (
    barrier,
    is_initialized,
    is_main_process,
    local_rank,
    run_on_main,
)
from ..training.guards import DivergenceGuard
from ..training.loop import EpochRecord, best_epoch, fit, should_stop
from .checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    config_from_json,
    load_config,
    load_run,
    load_state_into,
    load_training_state,
    save_config,
    training_state_bytes,
    weights_bytes,
)
from .figures import plot_history, plot_latent, plot_reconstructions, plot_samples
from .rundir import claim_run_dir, lock_run_dir, storage_error

__all__ = ["RunResult", "train_run", "resume_run", "load_data", "make_transform", "resolve_device", "encode_rows"]

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
        repaired: Files a resume rebuilt because they were missing, damaged or stale.
        complete: A resume found the run complete and trained nothing.
    """

    run_dir: Path
    config: RunConfig
    vae: VAE
    history: list[EpochRecord]
    val_elbo: float
    seconds: float
    kept_epoch: int | None = None
    repaired: tuple[str, ...] = ()
    complete: bool = False


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
        d.data,
        d.data_dir,
        val_fraction=d.val_fraction,
        seed=config.train.seed,
        val_data=d.val_data,
        test_data=d.test_data,
        image_shape=(d.image_shape[0], d.image_shape[1]) if d.image_shape else None,
    )


def resolve_paths(config: DataConfig) -> DataConfig:
    """``config`` with every data path made absolute, so a run works from any directory.

    Example:
        >>> resolve_paths(DataConfig(data="digits")).data
        'digits'
    """

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    def maybe_absolute(path: str | None) -> str | None:
        return None if path is None else absolute(path)

    data = config.data if config.data in BUILT_IN_DATA else absolute(config.data)
    return dataclasses.replace(
        config,
        data=data,
        data_dir=maybe_absolute(config.data_dir),
        val_data=maybe_absolute(config.val_data),
        test_data=maybe_absolute(config.test_data),
    )


def num_classes(config: RunConfig, data: Dataset) -> int:
    """The number of label classes a ``labels`` condition needs (0 without one).

    Raises:
        DataError: The model is conditioned on labels and the data has none.
    """
    if config.model.condition == "none":
        return config.model.num_classes
    found = [y for y in (data.train_labels, data.val_labels, data.test_labels) if y is not None]
    if data.train_labels is None or data.val_labels is None:
        raise DataError(
            f"`condition` labels needs a label for every training and validation row, but {config.data.data!r} "
            "has none for some; save the data with labels (numpy.savez(path, x=X, y=labels)) or train without "
            "`condition`"
        )
    return max(config.model.num_classes, max(int(y.max()) for y in found) + 1)


def conditions(config: RunConfig, data: Dataset, device: torch.device) -> dict[str, torch.Tensor]:
    """``{"train": y, "val": y, "test": y}``: the labels the model sees, on ``device``.

    A conditional VAE sees every label. A semi-supervised VAE sees the training labels
    of a random ``label_fraction`` of the rows (the same rows for a given seed), ``-1``
    elsewhere, and no held-out label: its validation ELBO bounds log p(x), with the
    label summed out.
    """
    if config.model.condition == "none":
        return {}
    splits = {"train": data.train_labels, "val": data.val_labels, "test": data.test_labels}
    labels = {name: torch.from_numpy(y).to(device) for name, y in splits.items() if y is not None}
    if config.model.condition == "semisupervised":
        generator = torch.Generator().manual_seed(config.train.seed)
        keep = torch.rand(len(labels["train"]), generator=generator).to(device) < config.data.label_fraction
        unknown = {name: torch.full_like(y, -1) for name, y in labels.items()}
        labels = {**unknown, "train": torch.where(keep, labels["train"], unknown["train"])}
    return labels


def _warn_if_far_from_unit_scale(config: RunConfig, vae: VAE, data: Dataset) -> None:
    """One warning when real-valued data far from unit scale meets the normal likelihood.

    Its learned scales start at 1 and a standard Normal prior's decoder starts near 0,
    so raw 0..255 grey levels (say) train very slowly; the fix is to rescale the data.
    """
    if config.model.likelihood != "normal":
        return
    # Rows read from a file are judged on a sample of them: a warning needs no full pass.
    x = sample_rows(data.train) if isinstance(data.train, Rows) else data.train
    sd, mean = float(x.std()), float(np.abs(x.mean()))
    if sd > 10 or sd < 0.1 or mean > 10:
        warnings.warn(
            f"data {config.data.data!r} has mean {x.mean():.4g} and sd {sd:.4g}: far from unit scale, "
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
        # Rows read from a file are checked a block at a time (the error names the block).
        blocks = x.chunks() if isinstance(x, Rows) else [(None, x)]
        for span, block in blocks:
            try:
                vae.likelihood.check_support(torch.from_numpy(block))
            except DataError as err:
                where = (
                    ""
                    if span is None
                    else f" (rows {span.start}..{span.stop - 1}, counted from the first of that block)"
                )
                raise DataError(f"{split} data {config.data.data!r}{where}: {err}") from None
    needs_binary = vae.likelihood.needs_binary
    if needs_binary and config.data.binarize == "none" and not _all_binary(data.train):
        raise ConfigError(
            f"`likelihood` {config.model.likelihood} needs 0/1 data but {config.data.data!r} has values "
            "between 0 and 1 and `binarize` none was given; use `binarize` dynamic or threshold, "
            "or a likelihood for [0, 1] data"
        )


@torch.no_grad()
def encode_rows(vae: VAE, x: np.ndarray | Rows, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(x) and sigma(x) of every row, ``(N, z_dim)`` each on the model's device; rows read
    from a file are encoded a block at a time (:func:`~pyro_vae.data.rows.chunk_rows`)."""
    device = next(vae.parameters()).device
    if not isinstance(x, Rows):
        return vae.encode(torch.from_numpy(x).to(device), y)
    locs, scales = [], []
    for span, block in x.chunks():
        loc, scale = vae.encode(torch.from_numpy(block).to(device), None if y is None else y[span])
        locs.append(loc)
        scales.append(scale)
    return torch.cat(locs), torch.cat(scales)


def _all_binary(x: np.ndarray | Rows) -> bool:
    if isinstance(x, Rows):
        return all(np.isin(block, (0.0, 1.0)).all() for _, block in x.chunks())
    return bool(np.isin(x, (0.0, 1.0)).all())


def kept_epoch(history: list[EpochRecord], keep: str) -> int | None:
    """The epoch whose weights a run keeps as its model: the best or the last."""
    if not history:
        return None
    best = best_epoch(history) if keep == "best" else None
    return best if best is not None else history[-1].epoch


def _metrics_text(history: list[EpochRecord], keep: str) -> str:
    kept = kept_epoch(history, keep)
    lines = ["epoch,train_loss,val_elbo,seconds,kept"]
    lines += [f"{h.epoch},{h.train_loss:.6f},{h.val_elbo:.6f},{h.seconds:.4f},{int(h.epoch == kept)}" for h in history]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def _write_figures(run_dir: Path, config: RunConfig, vae: VAE, data: Dataset, history: list[EpochRecord]) -> None:
    device = next(vae.parameters()).device
    plot_history([h.to_dict() for h in history], run_dir / "loss.png")
    image_shape = config.data.image_shape
    transform = make_transform(config, vae)
    val_y = conditions(config, data, device).get("val")
    with forked_rng(device, seed=config.train.seed):
        first = data.val.read(slice(0, 12)) if isinstance(data.val, Rows) else data.val[:12]
        x = torch.from_numpy(first).to(device)
        y = None if val_y is None else val_y[:12]
        if transform is not None:
            x = transform(x)  # the inputs as the model saw them (binarized)
        if config.model.condition == "semisupervised":
            y = vae.predict(x)  # no held-out label is known: the classifier's
        z = vae.posterior(x, y).sample()
        recon = vae.decode(z, y).mean
        plot_reconstructions(
            x.cpu().numpy(),
            recon.cpu().numpy(),
            image_shape,
            run_dir / "reconstructions.png",
            inputs_title="validation inputs, as the model sees them" + (" (binarized)" if transform else ""),
        )
        if config.model.condition != "none":  # one row of draws per class
            classes = config.model.num_classes
            per_class = max(1, 64 // classes)
            y = torch.arange(classes, device=device).repeat_interleave(per_class)
            samples = vae.decode(vae.sample_latent((len(y),)), y).mean
            plot_samples(
                samples.cpu().numpy(),
                image_shape,
                run_dir / "samples.png",
                columns=per_class,
                title=f"the mean of p(x|z, y) for z ~ p(z): one row per class y = 0..{classes - 1}",
            )
        else:
            samples = vae.decode(vae.sample_latent((64,))).mean
            plot_samples(samples.cpu().numpy(), image_shape, run_dir / "samples.png")
    if vae.z_dim == 2:
        loc, scale = encode_rows(vae, data.val, val_y)
        plot_latent(loc.cpu().numpy(), scale.cpu().numpy(), data.val_labels, run_dir / "latent.png")


def _final_files(
    run_dir: Path, config: RunConfig, vae: VAE, data: Dataset, history: list[EpochRecord], start: float
) -> None:
    """The figures and ``summary.json``: written at the end of a run, rebuilt by a resume that finds them missing."""
    keep = config.train.keep
    epoch = kept_epoch(history, keep)
    record = next((h for h in history if h.epoch == epoch), None)
    _write_figures(run_dir, config, vae, data, history)
    summary = {
        "epochs": len(history),
        "keep": keep,
        "kept_epoch": epoch,
        "val_elbo_per_datum": record.val_elbo if record is not None else float("nan"),
        "last_val_elbo_per_datum": history[-1].val_elbo if history else float("nan"),
        "stopped_early": len(history) < config.train.epochs,
        "train_seconds_this_call": time.perf_counter() - start,
        "num_train": int(data.train.shape[0]),
        "num_val": int(data.val.shape[0]),
        "num_test": None if data.test is None else int(data.test.shape[0]),
    }
    atomic_write(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def _diverged(message: str, saved: int | None, run_dir: Path) -> TrainingDivergedError:
    """The divergence error with the truth about what is on disk.

    ``fit``'s own message ends by saying which checkpoint "was kept", counting epochs of
    this call; only the run knows whether a checkpoint exists at all, so that clause is
    replaced here.
    """
    what = message.split("; the model keeps its parameters")[0]
    off = (
        "; or, if such a rise is expected, switch the guard off (TrainConfig.divergence_guard = False, "
        "--no-divergence-guard)"
        if "divergence guard" in what
        else ""
    )
    if saved is None:
        return TrainingDivergedError(
            f"{what}; no epoch completed before it, so there is no checkpoint: start again with a lower `lr` "
            f"(`overwrite` replaces this run's files), or check the data for extreme values{off}"
        )
    return TrainingDivergedError(
        f"{what}; the last good checkpoint (epoch {saved}) was kept: continue from it with a lower `lr` "
        f"(pyro-vae train --resume {run_dir} --lr LR), or check the data for extreme values{off}"
    )


def _write_failed(err: OSError, run_dir: Path, saved: int | None) -> StorageError:
    kept = f"the checkpoint of epoch {saved} is intact" if saved is not None else "files already written are intact"
    where = repr(err.filename) if getattr(err, "filename", None) else f"to {str(run_dir)!r}"
    return storage_error(err, f"write {where}", f"continue with `pyro-vae train --resume {run_dir}` ({kept})")


def _run(
    config: RunConfig,
    run_dir: Path,
    vae: VAE,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    history: list[EpochRecord],
    progress: bool,
    kept_state: dict[str, torch.Tensor] | None = None,
    start_loss: float | None = None,
) -> RunResult:
    start = time.perf_counter()
    device = next(vae.parameters()).device
    # Rows read from a file stay there: fit reads each minibatch (and validation block) on its own.
    train = data.train if isinstance(data.train, Rows) else torch.from_numpy(data.train).to(device)
    val = data.val if isinstance(data.val, Rows) else torch.from_numpy(data.val).to(device)
    transform = make_transform(config, vae)
    labels = conditions(config, data, device)  # a conditional VAE's y per split, else {}

    keep = config.train.keep
    # The kept model's weights and epoch (rank 0), for the end of the run and for the
    # copy in training_state.pt that lets a resume rebuild model.safetensors.
    kept: dict[str, Any] = {"state": kept_state, "epoch": kept_epoch(history, keep) if kept_state is not None else None}
    saved = {"epoch": history[-1].epoch if history else None}  # the checkpoint on disk
    guard = DivergenceGuard(start_loss) if config.train.divergence_guard else None

    def checkpoint(records: list[EpochRecord]) -> None:
        last = records[-1].epoch
        keep_this = kept_epoch(records, keep) == last
        if keep_this:
            kept["state"] = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            kept["epoch"] = last
        other = None if keep_this or kept["state"] is None else (kept["epoch"], kept["state"])
        files: dict[str, bytes | str] = {
            STATE_FILE: training_state_bytes(
                vae, optimizer, [r.to_dict() for r in records], config=config, kept=other, start_loss=start_loss
            )
        }
        if keep_this:
            files[WEIGHTS_FILE] = weights_bytes(vae.state_dict(), metadata={"epoch": str(last)})
        files[METRICS_FILE] = _metrics_text(records, keep)
        atomic_write_many(run_dir, files)  # one manifest update for the epoch's three files
        saved["epoch"] = last

    try:
        history = fit(
            vae,
            train,
            val,
            config.train,
            optimizer=optimizer,
            transform=transform,
            history=history,
            on_epoch_end=checkpoint,
            # On every process, before anything is written: a diverged epoch never becomes a checkpoint.
            check_epoch=guard,
            progress=progress,
            y=labels.get("train"),
            val_y=labels.get("val"),
        )
    except TrainingDivergedError as err:
        raise _diverged(str(err), saved["epoch"], run_dir) from None
    except OSError as err:
        raise _write_failed(err, run_dir, saved["epoch"]) from None
    vae.eval()
    # The run's model is the kept epoch's (rank 0 holds its weights; every rank gets them).
    state = run_on_main(lambda: kept["state"])
    if state is not None:
        vae.load_state_dict(state)
    epoch = kept_epoch(history, keep)
    record = next((h for h in history if h.epoch == epoch), None)
    val_elbo = record.val_elbo if record is not None else float("nan")
    if is_main_process():  # under torchrun only rank 0 writes (fit checkpoints on rank 0 too)
        try:
            _final_files(run_dir, config, vae, data, history, start)
        except OSError as err:
            raise _write_failed(err, run_dir, saved["epoch"]) from None
    barrier()  # every rank returns once the run directory is complete
    seconds = time.perf_counter() - start
    return RunResult(run_dir, config, vae, history, val_elbo, seconds, epoch)


def _optimizer(vae: VAE, config: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(vae.parameters(), lr=config.train.lr)


def _start_loss(config: RunConfig, vae: VAE, data: Dataset) -> float | None:
    """The untrained model's loss per data point (minus its validation ELBO), the
    divergence guard's first reference. Its draws come from a forked RNG, so training
    draws what it would draw without it."""
    if not config.train.divergence_guard:
        return None
    device = next(vae.parameters()).device
    y = conditions(config, data, device).get("val")
    transform = make_transform(config, vae)

    def elbo(x: torch.Tensor, x_y: torch.Tensor | None, seed: int) -> float:
        return evaluate_elbo(vae, x, particles=config.train.eval_particles, seed=seed, transform=transform, y=x_y)

    if isinstance(data.val, Rows):
        return -streamed_mean(elbo, data.val, y, config.train.seed, device)
    return -elbo(torch.from_numpy(data.val).to(device), y, config.train.seed)


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
        out: Run directory; default a fresh folder under ``runs/``. It is claimed
            atomically and exclusively (:func:`pyro_vae.runs.rundir.claim_run_dir`).
        overwrite: Reuse a non-empty ``out``, replacing its run files.
        progress: Show a progress bar.

    Raises:
        PyroVAEError: Bad data or options (nothing is written), another process holds
            ``out``, or the loss diverged (the last good checkpoint is kept).
        StorageError: A file could not be written (the last good checkpoint is kept).
    """
    config = dataclasses.replace(config) if config is not None else RunConfig()
    config.validate()
    check_compatible(config.model, config.train)
    device = resolve_device(config.train.device)
    config.data = resolve_paths(config.data)
    data = load_data(config)
    config.model = dataclasses.replace(
        config.model,
        x_dim=data.x_dim,
        num_classes=num_classes(config, data),
        image_shape=tuple(data.image_shape or ()) if config.model.net == "conv" else (),
    )
    config.data = dataclasses.replace(config.data, image_shape=tuple(data.image_shape or ()))
    config.validate()  # the sizes again, now with the data's x_dim, before the model is built
    torch.manual_seed(config.train.seed)  # the initial weights
    vae = build_vae(config.model).to(device)
    _check_data(config, vae, data)
    _warn_if_far_from_unit_scale(config, vae, data)
    start_loss = _start_loss(config, vae, data)
    held: dict[str, FolderLock] = {}  # the run directory's writer lock, on rank 0

    def claim() -> Path:
        run_dir, held["lock"] = claim_run_dir(
            out, overwrite=overwrite, run_files=RUN_FILES, stem=Path(config.data.data).stem or "data"
        )
        try:
            save_config(run_dir, config)
        except OSError as err:
            held.pop("lock").release()
            raise storage_error(err, f"write {str(run_dir / CONFIG_FILE)!r}", "choose a writable `out`") from None
        return run_dir

    # Under torchrun rank 0 claims the folder; every rank gets its name or its error.
    run_dir = run_on_main(claim)
    try:
        return _run(config, run_dir, vae, data, _optimizer(vae, config), [], progress, start_loss=start_loss)
    finally:
        if "lock" in held:
            held["lock"].release()


@dataclass
class _Found:
    """What a resume found in the run directory (read on rank 0, sent to every rank)."""

    config: RunConfig
    state: dict | None  # None: training never completed an epoch
    rebuild_config: bool  # config.json is missing and comes from training_state.pt
    broken: list[str]  # files the manifest lists that are missing or damaged


def _open_for_resume(run_dir: Path) -> _Found:
    if not has_manifest(run_dir) and (run_dir / CONFIG_FILE).is_file():
        # A run directory from before checksums: its files are taken as they are, from now on checked.
        start_manifest(run_dir, adopt=True)
    found = check_folder(run_dir)  # a damaged manifest.json stops here, with its own message
    broken = sorted(found.missing + found.damaged) if found is not None else []
    state = None
    if (run_dir / STATE_FILE).is_file():
        state = load_training_state(run_dir)  # damaged: refused, with what to do
    elif STATE_FILE in broken:
        raise CheckpointError(
            f"{str(run_dir / STATE_FILE)!r} was deleted: this run cannot be continued (its optimizer state is "
            "lost); model.safetensors, if intact, still serves evaluate, encode and sample; to train further, "
            "start a new run"
        )
    if (run_dir / CONFIG_FILE).is_file():
        return _Found(load_config(run_dir), state, False, broken)
    if state is not None and "config" in state:
        config = config_from_json(state["config"], f"the copy of config.json in {str(run_dir / STATE_FILE)!r}")
        return _Found(config, state, True, broken)
    if state is None:
        raise CheckpointError(
            f"{str(run_dir)!r} holds no run: its training was stopped before it wrote config.json; "
            f"start it again with `pyro-vae train --out {run_dir}`"
        )
    raise CheckpointError(
        f"{str(run_dir / CONFIG_FILE)!r} is missing and {STATE_FILE} holds no copy of it (an older run); "
        "restore config.json from a copy, or start a new run"
    )


def _repair(
    run_dir: Path,
    found: _Found,
    config: RunConfig,
    history: list[EpochRecord],
    kept_state: dict[str, torch.Tensor] | None,
) -> list[str]:
    """Rewrite the files derived from training_state.pt that are missing, damaged or stale.

    ``model.safetensors`` is rewritten from the kept weights and ``metrics.csv`` from the
    history when their bytes differ (a kill between two writes of one epoch leaves the
    weights one epoch behind); ``config.json`` from the state's copy when it is missing.
    """
    repaired = []
    if found.rebuild_config:
        save_config(run_dir, config)
        repaired.append(CONFIG_FILE)
    if not history:
        return repaired
    epoch = kept_epoch(history, config.train.keep)
    if kept_state is not None:
        weights = weights_bytes(kept_state, metadata={"epoch": str(epoch)})
        if WEIGHTS_FILE in found.broken or _bytes(run_dir / WEIGHTS_FILE) != weights:
            atomic_write(run_dir / WEIGHTS_FILE, weights)
            repaired.append(WEIGHTS_FILE)
    metrics = _metrics_text(history, config.train.keep)
    if METRICS_FILE in found.broken or _bytes(run_dir / METRICS_FILE) != metrics.encode():
        atomic_write(run_dir / METRICS_FILE, metrics)
        repaired.append(METRICS_FILE)
    return repaired


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def resume_run(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    device: str | None = None,
    patience: int | None = None,
    lr: float | None = None,
    divergence_guard: bool | None = None,
    progress: bool = True,
) -> RunResult:
    """Continue a run from its last checkpoint, up to ``epochs`` in all; or, for a run
    that is complete, rebuild its missing or damaged files.

    The resumed run draws the same random numbers an uninterrupted run would, so its
    history continues the same curve. ``epochs``, ``device``, ``patience``, ``lr`` and
    ``divergence_guard`` may change; the new values are saved in ``config.json`` (a new
    ``lr`` takes effect from the next epoch). Every file is verified first:

    - ``model.safetensors``, ``metrics.csv`` and a missing ``config.json`` are rebuilt
      from ``training_state.pt``; the figures and ``summary.json`` of a complete run
      are rebuilt when missing or damaged. ``RunResult.repaired`` names them.
    - A damaged ``training_state.pt`` or ``config.json`` is refused, with what to do.
    - A run whose first epoch never completed starts from the beginning.

    Raises:
        CheckpointError: The run directory is missing, damaged, inconsistent, or held by
            another process.
        StorageError: The run directory cannot be written.
    """
    run_dir = Path(run_dir)
    held: dict[str, FolderLock] = {}

    def open_run() -> _Found:
        held["lock"] = lock_run_dir(run_dir)
        try:
            clean_strays(run_dir)
            return _open_for_resume(run_dir)
        except BaseException:
            held.pop("lock").release()
            raise

    # Under torchrun rank 0 reads the files and sends them to every rank.
    found = run_on_main(open_run)
    try:
        return _resume(run_dir, found, epochs, device, patience, lr, divergence_guard, progress)
    finally:
        if "lock" in held:
            held["lock"].release()


def _resume(
    run_dir: Path,
    found: _Found,
    epochs: int | None,
    device: str | None,
    patience: int | None,
    lr: float | None,
    divergence_guard: bool | None,
    progress: bool,
) -> RunResult:
    start = time.perf_counter()
    config, state = found.config, found.state
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("epochs", epochs),
            ("device", device),
            ("patience", patience),
            ("lr", lr),
            ("divergence_guard", divergence_guard),
        )
        if value is not None
    }
    config.train = dataclasses.replace(config.train, **changes)
    config.train.validate()
    history = [EpochRecord(**h) for h in state["history"]] if state is not None else []
    if epochs is not None and epochs < len(history):
        raise ConfigError(
            f"the run already has {len(history)} epochs and `epochs` {epochs} asks for fewer; "
            f"pass `epochs` N with N > {len(history)} to train longer"
        )
    torch_device = resolve_device(config.train.device)
    data = load_data(config)
    if data.x_dim != config.model.x_dim:
        raise CheckpointError(
            f"the data {config.data.data!r} now has {data.x_dim} features but the run was trained on "
            f"{config.model.x_dim}; restore the original data file or start a new run"
        )
    torch.manual_seed(config.train.seed)  # the initial weights, as a fresh run draws them
    vae = build_vae(config.model)
    optimizer = _optimizer(vae, config)
    kept_state = None
    start_loss = None
    if state is not None:
        load_state_into(vae, state["model"], run_dir / STATE_FILE)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"the optimizer state in {str(run_dir / STATE_FILE)!r} does not match config.json ({err}); "
                "restore the original files or start a new run"
            ) from None
        for group in optimizer.param_groups:
            group["lr"] = config.train.lr  # config.json's learning rate, whatever the saved state says
        kept_state, start_loss = _kept_state(run_dir, state, history, config.train.keep), state.get("start_loss")
    vae.to(torch_device)
    if state is None:
        start_loss = _start_loss(config, vae, data)
    stopped = should_stop(history, config.train.patience)
    if stopped and (epochs is not None or patience is not None):
        raise ConfigError(
            f"the run stopped early after epoch {len(history)}: its validation ELBO last improved at epoch "
            f"{best_epoch(history)} and `patience` is {config.train.patience}; pass a larger `patience` "
            "(or 0) to train longer"
        )
    finished = len(history) >= config.train.epochs or stopped
    repaired = run_on_main(lambda: _repair(run_dir, found, config, history, kept_state)) if history else []
    if not finished:
        if changes and not found.rebuild_config:
            run_on_main(lambda: save_config(run_dir, config))
        result = _run(config, run_dir, vae, data, optimizer, history, progress, kept_state, start_loss)
        result.repaired = tuple(repaired)
        return result
    # A complete run: nothing to train; rebuild the final files if any is missing or damaged.
    if changes and not found.rebuild_config:
        run_on_main(lambda: save_config(run_dir, config))
    if kept_state is not None:
        vae.load_state_dict(kept_state)
    vae.eval()
    final = [SUMMARY_FILE, *_figure_names(vae)]
    if is_main_process() and (
        any(name in found.broken for name in final) or not all((run_dir / name).is_file() for name in final)
    ):
        try:
            _final_files(run_dir, config, vae, data, history, start)
        except OSError as err:
            raise _write_failed(err, run_dir, history[-1].epoch) from None
        repaired += final
    barrier()
    epoch = kept_epoch(history, config.train.keep)
    record = next((h for h in history if h.epoch == epoch), None)
    val_elbo = record.val_elbo if record is not None else float("nan")
    return RunResult(
        run_dir, config, vae, history, val_elbo, time.perf_counter() - start, epoch, tuple(repaired), complete=True
    )


def _figure_names(vae: VAE) -> list[str]:
    return [name for name in FIGURES if name != "latent.png" or vae.z_dim == 2]


def _kept_state(run_dir: Path, state: dict, history: list[EpochRecord], keep: str) -> dict[str, torch.Tensor] | None:
    """The kept model's weights: the last epoch's, or the copy the state holds of an earlier one."""
    epoch = kept_epoch(history, keep)
    if epoch is None:
        return None
    if epoch == history[-1].epoch:
        return state["model"]
    if "kept" in state and state["kept"].get("epoch") == epoch:
        return state["kept"]["model"]
    # A state written before it held that copy: the kept weights are model.safetensors.
    return run_on_main(lambda: load_run(run_dir)[1].state_dict())
