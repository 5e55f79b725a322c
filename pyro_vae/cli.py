"""Command line: ``pyro-vae train|evaluate|encode|sample|inspect`` (also ``python -m pyro_vae``).

The flags of ``train`` are generated from the config dataclasses, so each default lives
in :mod:`pyro_vae.config` only. Every user error prints one line and exits with status 2.

``train`` also runs data-parallel under ``torchrun`` (``torchrun --nproc_per_node N -m
pyro_vae train ...``): it joins the process group torchrun describes, only rank 0 prints
and writes, and ``--dist-timeout`` bounds how long a rank waits for the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import KEEP_CHOICES, DataConfig, ModelConfig, RunConfig, TrainConfig
from .data.transforms import BINARIZE_MODES
from .errors import ConfigError, PyroVAEError
from .files import UnverifiedFolderWarning
from .inference.bounds import DEFAULT_MAX_ELEMENTS
from .inference.evaluation import DEFAULT_IW_SAMPLES
from .inference.objectives import OBJECTIVES
from .model.build import CONDITIONS, GUIDES, LIKELIHOODS, NETWORKS, PRIORS
from .model.nn import ACTIVATIONS
from .training import distributed

__all__ = ["main", "build_parser"]

# flag -> (config section, field, argparse kwargs). The default shown in --help is read
# from the dataclass; argparse's own default stays None so that we can tell which flags
# the user gave (``--resume`` accepts only a few).
_TRAIN_FLAGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "--data": ("data", "data", {"metavar": "NAME|PATH", "help": "digits (built in), mnist, or a .npy/.npz/.csv file"}),
    "--data-dir": (
        "data",
        "data_dir",
        {"metavar": "DIR", "help": "folder of the MNIST IDX files (env PYRO_VAE_DATA_DIR)"},
    ),
    "--binarize": ("data", "binarize", {"choices": BINARIZE_MODES, "help": "how 0/1 observations are made"}),
    "--threshold": ("data", "threshold", {"type": float, "help": "cut-off for --binarize threshold"}),
    "--val-fraction": (
        "data",
        "val_fraction",
        {"type": float, "help": "share of rows held out for validation when the data has no validation split"},
    ),
    "--val-data": ("data", "val_data", {"metavar": "PATH", "help": "a file of validation rows"}),
    "--test-data": (
        "data",
        "test_data",
        {"metavar": "PATH", "help": "a file of test rows (scored by pyro-vae evaluate)"},
    ),
    "--label-fraction": (
        "data",
        "label_fraction",
        {"type": float, "help": "share of training labels a semi-supervised VAE sees"},
    ),
    "--image-shape": (
        "data",
        "image_shape",
        {
            "type": int,
            "nargs": 2,
            "metavar": ("H", "W"),
            "help": "height and width of image rows, for figures (default: from the data)",
        },
    ),
    "--z-dim": ("model", "z_dim", {"type": int, "help": "latent dimensions"}),
    "--hidden": (
        "model",
        "hidden",
        {"type": int, "nargs": "*", "metavar": "WIDTH", "help": "encoder layer widths (decoder: reversed)"},
    ),
    "--net": (
        "model",
        "net",
        {
            "choices": sorted(NETWORKS),
            "help": "encoder and decoder: dense layers, or convolutions over image rows (--hidden then gives channels, e.g. 32 64)",
        },
    ),
    "--activation": ("model", "activation", {"choices": sorted(ACTIVATIONS), "help": "hidden non-linearity"}),
    "--likelihood": ("model", "likelihood", {"choices": sorted(LIKELIHOODS), "help": "p(x|z)"}),
    "--prior": ("model", "prior", {"choices": sorted(PRIORS), "help": "p(z)"}),
    "--guide": ("model", "guide", {"choices": sorted(GUIDES), "help": "q(z|x)"}),
    "--prior-components": (
        "model",
        "prior_components",
        {"type": int, "help": "K: Gaussians of --prior mixture, pseudo-inputs of --prior vamp"},
    ),
    "--flow-layers": (
        "model",
        "flow_layers",
        {"type": int, "help": "autoregressive layers of --prior flow and --guide flow"},
    ),
    "--top-dim": (
        "model",
        "top_dim",
        {"type": int, "help": "size of a second stochastic layer z2 above z (0: one layer)"},
    ),
    "--top-hidden": (
        "model",
        "top_hidden",
        {"type": int, "nargs": "*", "metavar": "WIDTH", "help": "widths between z and z2"},
    ),
    "--condition-on": (
        "model",
        "condition",
        {
            "choices": sorted(CONDITIONS),
            "help": "labels: a conditional VAE, q(z|x, y) and p(x|z, y), on the data's class labels",
        },
    ),
    "--guide-rank": ("model", "guide_rank", {"type": int, "help": "rank of the covariance factor of --guide lowrank"}),
    "--epochs": ("train", "epochs", {"type": int, "help": "passes over the training data (with --resume: total)"}),
    "--batch-size": (
        "train",
        "batch_size",
        {"type": int, "help": "data points per step (under torchrun: per process)"},
    ),
    "--lr": ("train", "lr", {"type": float, "help": "Adam learning rate"}),
    "--seed": ("train", "seed", {"type": int, "help": "seed of every random draw"}),
    "--elbo": ("train", "elbo", {"choices": sorted(OBJECTIVES), "help": "training objective"}),
    "--particles": ("train", "particles", {"type": int, "help": "samples of z per data point in the objective"}),
    "--beta": ("train", "beta", {"type": float, "help": "weight of the KL term (beta-VAE when > 1)"}),
    "--kl-warmup": ("train", "kl_warmup", {"type": int, "help": "epochs of linear KL warm-up (0: none)"}),
    "--eval-particles": ("train", "eval_particles", {"type": int, "help": "samples of z for the validation ELBO"}),
    "--keep": (
        "train",
        "keep",
        {"choices": KEEP_CHOICES, "help": "the model a run keeps: best (by validation ELBO) or last epoch"},
    ),
    "--patience": (
        "train",
        "patience",
        {"type": int, "help": "stop after this many epochs without a better validation ELBO (0: never)"},
    ),
    "--device": ("train", "device", {"help": "cpu or cuda"}),
}
_RESUMABLE = {"--epochs", "--device", "--patience", "--lr"}
_SECTIONS: dict[str, ModelConfig | DataConfig | TrainConfig] = {
    "model": ModelConfig(),
    "data": DataConfig(),
    "train": TrainConfig(),
}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-vae``."""
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs: train, evaluate, encode, sample."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every subcommand takes --threads: the models here are small, and torch's default of
    # one thread per core slows them down badly when another process shares the cores.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default: 1, fastest for small models; raise it for "
        "large batches on an otherwise idle machine)",
    )
    add = functools.partial(sub.add_parser, parents=[common])

    train = add("train", help="train a VAE (default: the built-in digits data)")
    for flag, (section, name, kwargs) in _TRAIN_FLAGS.items():
        default = getattr(_SECTIONS[section], name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        helptext = kwargs["help"] if shown in (None, "") else f"{kwargs['help']} (default: {shown})"
        train.add_argument(flag, dest=_dest(flag), default=None, **{**kwargs, "help": helptext})
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default: a fresh folder under runs/)")
    train.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out, replacing its run files")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    train.add_argument(
        "--no-divergence-guard",
        action="store_true",
        help="keep training when the loss rises past 1000 x max(|best|, 1) above its best epoch's "
        "(by default that stops the run, keeping the last good checkpoint)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--dist-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="under torchrun: seconds a rank waits for the others before the job fails "
        f"(default: env {distributed.TIMEOUT_ENV} or {distributed.DEFAULT_TIMEOUT_S:g})",
    )

    evaluate = add(
        "evaluate",
        help="held-out ELBO, log p(x) (K-sample importance bound), KL, reconstruction, active units",
        description="Evaluate a run on its held-out data (the test set, else the validation rows) and "
        "write RUN_DIR/evaluation.json: per data point and averaged, the ELBO, the importance-sampled "
        "estimate of log p(x) with K draws of z (the IWAE bound), the KL and reconstruction terms; and "
        "the active latent units (Cov_x(E_q[z_u]) > 0.01).",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument(
        "--iw-samples",
        dest="iw_samples",
        type=int,
        default=DEFAULT_IW_SAMPLES,
        metavar="K",
        help=f"draws of z per data point; the published standard is 5000 (default: {DEFAULT_IW_SAMPLES})",
    )
    evaluate.add_argument(
        "--max-elements",
        type=int,
        default=DEFAULT_MAX_ELEMENTS,
        metavar="N",
        help=f"memory budget of one vectorized pass, in numbers per tensor (default: {DEFAULT_MAX_ELEMENTS})",
    )
    evaluate.add_argument("--device", default=None, help="cpu or cuda (default: the run's)")
    evaluate.add_argument("--data", default=None, metavar="NAME|PATH", help="score this data instead of the run's")
    evaluate.add_argument(
        "--data-dir", default=None, metavar="DIR", help="folder of the MNIST IDX files, with --data mnist"
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "validation", "train"),
        default=None,
        help="which split to score (default: test if the data has one, else validation)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    encode = add("encode", help="write mu(x) and sigma(x) for every row of a data set")
    encode.add_argument("run_dir", metavar="RUN_DIR")
    encode.add_argument("--data", default=None, metavar="NAME|PATH", help="data to encode (default: the run's)")
    encode.add_argument("--data-dir", default=None, metavar="DIR", help="folder of the MNIST IDX files")
    encode.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default="all",
        help="for a named data set: which rows (default: all, in the order train, val, test)",
    )
    encode.add_argument("--out", required=True, metavar="FILE", help="output .npz or .csv")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    sample = add("sample", help="draw x from the model: z ~ p(z), x = mean of p(x|z)")
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("-n", "--num", type=int, default=64, help="number of samples (default: 64)")
    sample.add_argument("--out", required=True, metavar="FILE", help="output .png (a grid) or .npy (the means)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    inspect = add(
        "inspect",
        help="compare the guide q(z|x) with the exact posterior p(z|x): a few inputs (ArviZ), or a whole split",
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR")
    which = inspect.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, nargs="+", metavar="I", help="rows of the data to inspect")
    which.add_argument(
        "--all",
        action="store_true",
        help="every row of the split: survey.csv (guide against exact, per point), survey_summary.csv, survey.png",
    )
    which.add_argument("--rows", default=None, metavar="A:B", help="rows A to B-1 of the split, as --all")
    inspect.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default=None,
        help="which rows --index counts (default: test if the data has one, else val)",
    )
    inspect.add_argument(
        "--method",
        choices=("grid", "nuts", "sir"),
        default=None,
        help="the reference for p(z|x): grid (quadrature, exact; z_dim <= 2), nuts, or sir (importance "
        "resampling from the guide) (default: grid for z_dim <= 2, else sir)",
    )
    inspect.add_argument("--mcmc", action="store_true", help="the same as --method nuts")
    inspect.add_argument("--samples", type=int, default=500, metavar="N", help="draws per chain (default: 500)")
    inspect.add_argument("--chains", type=int, default=4, help="chains per point (default: 4)")
    inspect.add_argument(
        "--warmup", type=int, default=None, metavar="N", help="NUTS warm-up steps per chain (default: --samples)"
    )
    inspect.add_argument("--seed", type=int, default=None, help="seed of every draw (default: the run's)")
    inspect.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/inspect)")
    inspect.add_argument("--overwrite", action="store_true", help="replace the files of an earlier inspection in --out")
    inspect.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    sections = {k: dataclasses.asdict(v) for k, v in _SECTIONS.items()}
    for flag, (section, name, _) in _TRAIN_FLAGS.items():
        value = getattr(args, _dest(flag))
        if value is not None:
            sections[section][name] = tuple(value) if isinstance(value, list) else value
    if args.no_divergence_guard:
        sections["train"]["divergence_guard"] = False
    return RunConfig.from_dict(sections)


def _cmd_train(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from .runs.train import resume_run, train_run

    progress = not args.no_progress
    if args.resume:
        given = [f for f in _TRAIN_FLAGS if getattr(args, _dest(f)) is not None and f not in _RESUMABLE]
        given += ["--out"] * bool(args.out) + ["--overwrite"] * args.overwrite
        if given:
            raise ConfigError(
                f"--resume takes its settings from RUN_DIR/config.json; drop {', '.join(given)} "
                "(only --epochs, --device, --patience, --lr and --no-divergence-guard can change)"
            )
        result = resume_run(
            args.resume,
            epochs=args.epochs,
            device=args.device,
            patience=args.patience,
            lr=args.lr,
            divergence_guard=False if args.no_divergence_guard else None,
            progress=progress,
        )
    else:
        result = train_run(_config_from_args(args), args.out, overwrite=args.overwrite, progress=progress)
    last = result.history[-1]
    kept = f"epoch {result.kept_epoch}, the {result.config.train.keep} of {last.epoch}"
    say(f"held-out ELBO per data point: {result.val_elbo:.4f} nats ({kept}; {result.seconds:.1f} s)")
    if result.repaired:
        say(f"rebuilt from training_state.pt (they were missing, damaged or out of date): {', '.join(result.repaired)}")
    if result.complete:
        say(
            f"the run was already complete ({last.epoch} epochs){'' if result.repaired else ' and every file is intact'}; "
            f"pass --epochs N with N > {last.epoch} to train longer"
        )
    say(f"run directory: {result.run_dir}")


def _cmd_evaluate(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from .runs.evaluate import evaluate_run

    report = evaluate_run(
        args.run_dir,
        iw_samples=args.iw_samples,
        device=args.device,
        max_elements=args.max_elements,
        data=args.data,
        data_dir=args.data_dir,
        split=args.split,
        progress=not args.no_progress,
    )
    k = report["iw_samples"]
    say(f"{report['split']} split of {report['data']!r}: {report['num_points']} rows, nats per data point")
    rows = [
        ("ELBO", report["elbo_per_datum"]),
        (
            f"{'log p(x|y)' if report.get('condition') == 'labels' else 'log p(x)'} >= "
            f"(importance-weighted bound, K = {k})",
            report["log_px_per_datum"],
        ),
        ("reconstruction E_q[log p(x|z)]", report["reconstruction_per_datum"]),
        ("KL(q(z|x) || p(z))", report["kl_per_datum"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        say(f"  {name:<{width}}  {value:10.4f}")
    say(
        f"  {'active units (Cov_x(E_q[z_u]) > ' + format(report['active_unit_threshold'], 'g') + ')':<{width}}  "
        f"{report['active_units']:>4} of {report['z_dim']}"
    )
    if "accuracy" in report:
        say(f"  {'label accuracy of the classifier q(y|x)':<{width}}  {report['accuracy']:10.4f}")
    say(f"wrote {Path(args.run_dir) / 'evaluation.json'}")


def _cmd_encode(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from .runs.export import encode_run

    rows, z_dim = encode_run(
        args.run_dir, args.out, data=args.data, data_dir=args.data_dir, split=args.split, overwrite=args.overwrite
    )
    say(f"wrote mu(x) and sigma(x) of {rows} rows ({z_dim} latent dimensions) to {args.out}")


def _cmd_sample(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from .runs.export import sample_run

    sample_run(args.run_dir, args.out, num=args.num, seed=args.seed, overwrite=args.overwrite)
    say(f"wrote {args.num} samples to {args.out}")


def _cmd_inspect(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    import pandas as pd

    from .posterior.samplers import ImportanceSamplingWarning
    from .runs.inspect import (
        check_outputs,
        inspect_points,
        load_inputs,
        write_inspection,
    )

    for flag, value, least in (
        ("--samples", args.samples, 4),
        ("--chains", args.chains, 1),
        ("--warmup", args.warmup, 0),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if args.mcmc and args.method not in (None, "nuts"):
        raise ConfigError(f"--mcmc is --method nuts, but --method is {args.method}; pass one of them")
    method = "nuts" if args.mcmc else args.method
    out_dir = args.out or Path(args.run_dir) / "inspect"
    if args.all or args.rows is not None:
        from .runs.survey import check_survey_outputs, survey_run, write_survey

        out = check_survey_outputs(out_dir, overwrite=args.overwrite)  # before the long part
        surveyed, config, split, x = survey_run(
            args.run_dir,
            rows=args.rows,
            split=args.split,
            method=method,
            seed=args.seed,
            progress=not args.no_progress,
            num_samples=args.samples,
            num_chains=args.chains,
            warmup_steps=args.warmup,
        )
        written = write_survey(
            surveyed, out, images=x.cpu().numpy(), image_shape=config.data.image_shape or None, overwrite=args.overwrite
        )
        table = surveyed.points
        if config.model.condition != "none":
            say(_conditioned_on(config))
        with pd.option_context(
            "display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format
        ):
            say(
                f"rows {table.index[0]}-{table.index[-1]} of the {split} split of {config.data.data!r}: guide against "
                f"{surveyed.method} for {len(table)} points in {surveyed.seconds:.1f} s"
            )
            say(
                f"KL(q || p): mean {table['kl'].mean():.3f}, median {table['kl'].median():.3f}, largest "
                f"{table['kl'].max():.3f} nats; inference gap log p(x) - ELBO: mean {table['gap'].mean():.3f} nats"
            )
            say("the points with the largest KL(q || p):")
            say(surveyed.worst().drop(columns=table.filter(regex=r"^exact_mean_").columns).to_string())
        say(f"wrote {', '.join(p.name for p in written)} to {out}")
        return
    out = check_outputs(out_dir, overwrite=args.overwrite)  # before the long part
    config, vae, x, split, y = load_inputs(args.run_dir, args.index, split=args.split, seed=args.seed)
    seed = config.train.seed if args.seed is None else args.seed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImportanceSamplingWarning)
        found = inspect_points(
            vae,
            x,
            args.index,
            method=method,
            num_samples=args.samples,
            num_chains=args.chains,
            warmup_steps=args.warmup,
            seed=seed,
            progress=not args.no_progress,
            y=y,
        )
    for w in caught:  # the verdict on the importance weights as one line; anything else as Python shows it
        if issubclass(w.category, ImportanceSamplingWarning):
            print(f"pyro-vae: warning: {_as_flags(str(w.message))}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    written = write_inspection(found, out, overwrite=args.overwrite)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        say(f"rows {' '.join(map(str, args.index))} of the {split} split of {config.data.data!r}")
        if y is not None:
            say(_conditioned_on(config))
        say(found.describe_reference())
        say(found.table.to_string())
        say(found.points.to_string())
    say(f"wrote {', '.join(p.name for p in written)} to {out}")


def _conditioned_on(config: RunConfig) -> str:
    if config.model.condition == "labels":
        return "given each row's label y: q(z|x, y) against p(z|x, y)"
    return "given each row's label y (the classifier's guess where the data has none): q(z|x, y) against p(z|x, y)"


_COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "encode": _cmd_encode,
    "sample": _cmd_sample,
    "inspect": _cmd_inspect,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user error).

    Under torchrun, ``train`` joins the process group and, when done, ends the process
    with that status (:func:`pyro_vae.training.distributed.exit_process`) instead of returning.
    """
    args = build_parser().parse_args(argv)
    joined = False
    try:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        if args.command == "train":
            joined = distributed.init_from_env(args.dist_timeout)  # under torchrun only
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            _COMMANDS[args.command](args, print if distributed.is_main_process() else _silent)
    except PyroVAEError as err:
        print(f"pyro-vae: error{_where()}: {_as_flags(str(err))}", file=sys.stderr)
        status = 2
    except BrokenPipeError:
        # The reader of our output went away (`pyro-vae evaluate RUN | head -1`): the work
        # is done and written, so stop quietly, and keep Python from complaining at exit.
        _silence_stdout()
        status = 0
    except OSError as err:
        print(f"pyro-vae: error{_where()}: {_os_error(err)}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        kept = (
            "; files already written are intact: `pyro-vae train --resume RUN_DIR` continues from the last "
            "completed epoch"
            if args.command == "train"
            else ""
        )
        print(f"pyro-vae: interrupted{kept}", file=sys.stderr)
        return 130
    except Exception as err:
        if distributed.world_size() > 1:
            # Say which rank stopped and why before the traceback; a rank that lost a peer
            # ends here too ("Connection closed by peer" or a timeout of --dist-timeout).
            first = (str(err).strip().splitlines() or [""])[0]
            print(
                f"pyro-vae: error{_where()}: {type(err).__name__}: {first} (if another rank failed first, "
                "its message is the cause; torchrun stops the remaining ranks)",
                file=sys.stderr,
            )
        raise
    else:
        status = 0
    if joined:  # under torchrun this process is ours: leave the group and end it here
        distributed.exit_process(status)
    return status


#: Library arguments whose command-line flag is not ``--`` plus the name with dashes.
_FLAG_NAMES = {"num": "-n", "num_samples": "--samples", "num_chains": "--chains", "warmup_steps": "--warmup"}


def _as_flags(message: str) -> str:
    """The library's error message in command-line terms: `z_dim` becomes --z-dim.

    The library names its arguments in backticks; each becomes the flag that sets it.
    """
    return re.sub(r"`([a-z_]+)`", lambda m: _FLAG_NAMES.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


def _silent(_: str) -> None:
    """Output of ranks other than 0 under torchrun."""


def _os_error(err: OSError) -> str:
    """One line for a file-system failure the library did not describe itself."""
    name = f" {err.filename!r}" if getattr(err, "filename", None) else ""
    reason = err.strerror or str(err)
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{name}; check the permissions of the file and its folder, or choose another path"
    if err.errno == errno.EROFS:
        return f"read-only file system:{name}; choose a path on a writable disk"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the disk{' writing' + name if name else ''}; free some space and run the command again (files already written are intact)"
    return f"{reason}:{name}; check the path and run the command again"


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """Show the run directory's warnings as one ``pyro-vae: warning:`` line; others as Python does."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UnverifiedFolderWarning):
            print(f"pyro-vae: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def _where() -> str:
    if distributed.world_size() == 1:
        return ""
    return f" (rank {distributed.rank()} of {distributed.world_size()})"
