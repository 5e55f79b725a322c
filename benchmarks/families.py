"""Published MNIST anchors for two model families, at the budget a run can afford.

- **m2** (Kingma et al. 2014, "M2"): a semi-supervised VAE on MNIST with 100 labelled
  training images (10 per class, chosen by the seed) and the rest unlabelled; the
  test error of its classifier q(y|x) after every epoch (the learning curve), against
  the paper's 11.97 % (+- 1.71) for M2 alone with 100 labels. The paper's networks:
  one hidden layer of 500 softplus units in each, z_dim 50, Adam. Every minibatch
  must see labelled rows for the classifier to learn from 100 of them, so the
  labelled rows are repeated (``--label-repeats``) in the training rows; the
  classification weight per labelled row is set so that the term weighs what the
  paper's ``alpha = 0.1 N`` gives it over the labelled set
  (``SemiSupervisedELBO(alpha=0.1 * N / (100 * repeats))``).
- **two_layer** (Burda et al. 2015): the two-stochastic-layer VAE (784-100-100 tanh to
  z1 of 100, 50-50 tanh to z2 of 50) against the one-layer VAE of the same paper
  (784-200-200 tanh to z of 50), trained alike (dynamic binarization, batch 100, Adam
  1e-3, ``Trace_ELBO``) for the same epochs; validation ELBO per epoch, then the test
  log p(x) (importance-sampled, ``--iw-samples`` draws) of both. Published, after
  3,280 epochs: -86.76 one layer, -85.33 two layers.

Each experiment stops after the first epoch that ends past its ``--minutes`` of
training (or at ``--epochs``), so the budget is explicit; the results keep the
command, date, machine and seconds. Results go to ``families.json``, ``families.md``
and ``families.png`` (the learning curves) under ``--out``; an experiment skipped by
``--only`` keeps its earlier results.

Run:
    python benchmarks/families.py --data-dir /path/to/mnist --device cuda --minutes 4
    python benchmarks/families.py --smoke --out /tmp/families      # digits, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyro
import torch

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.data.datasets import load_dataset
from pyro_vae.data.transforms import binarize
from pyro_vae.errors import PyroVAEError
from pyro_vae.files import atomic_write
from pyro_vae.inference.evaluation import evaluate
from pyro_vae.inference.objectives import SemiSupervisedELBO
from pyro_vae.model.build import build_vae
from pyro_vae.model.vae import VAE
from pyro_vae.plotting import save_png, subplots
from pyro_vae.runs.train import resolve_device
from pyro_vae.seeding import forked_rng
from pyro_vae.training.loop import EpochRecord, fit

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Published numbers the experiments compare against.
M2_PUBLISHED_ERROR = 0.1197  # Kingma et al. 2014, Table 1: M2, 100 labels (+- 1.71 %)
BURDA_ONE_LAYER = -86.76  # Burda et al. 2015, Table 1: VAE k=1, one stochastic layer
BURDA_TWO_LAYER = -85.33  # the same, two stochastic layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, metavar="DIR", help="MNIST IDX files (env PYRO_VAE_DATA_DIR)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--only", choices=["m2", "two_layer"], default=None, help="run one experiment")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model (default: 10)")
    parser.add_argument("--epochs", type=int, default=1000, help="at most this many epochs per model")
    parser.add_argument("--label-repeats", type=int, default=50, help="copies of each labelled row (default: 50)")
    parser.add_argument("--iw-samples", type=int, default=5000, help="draws for the test log p(x) (default: 5000)")
    parser.add_argument("--test-rows", type=int, default=None, help="test images scored (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"results folder (default: {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true", help="the digits, tiny budgets: seconds")
    args = parser.parse_args()
    out = Path(args.out)
    try:
        device = resolve_device(args.device)
        report = run(args, device, out)
    except PyroVAEError as err:
        print(f"families: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    write(report, out)


# ---------------------------------------------------------------------------- the data
def mnist(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Training, validation and test rows with labels, on ``device`` (the digits under --smoke)."""
    data = load_dataset("digits" if args.smoke else "mnist", None if args.smoke else args.data_dir, seed=args.seed)
    test = data.test if data.test is not None else data.val
    test_labels = data.test_labels if data.test is not None else data.val_labels
    rows = len(test) if args.test_rows is None else min(args.test_rows, len(test))
    train_rows = 400 if args.smoke else len(data.train)  # the smoke run: seconds

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a)).to(device)

    return {
        "name": data.name,
        "train": tensor(data.train[:train_rows]),
        "train_labels": tensor(data.train_labels[:train_rows]),
        "val": tensor(data.val),
        "test": tensor(test[:rows]),
        "test_labels": tensor(test_labels[:rows]),
        "test_split": "test" if data.test is not None else "val",
    }


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` rows of every class, drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        rows = torch.nonzero(labels.cpu() == c).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(chosen).to(labels.device)


def dynamic(x: torch.Tensor) -> torch.Tensor:
    return binarize(x, "dynamic")


# ----------------------------------------------------------------------- training
def train_for(
    vae: VAE,
    train: torch.Tensor,
    val: torch.Tensor | None,
    config: TrainConfig,
    minutes: float,
    *,
    objective: Any = None,
    y: torch.Tensor | None = None,
    after_epoch: Callable[[VAE, int], dict[str, float]] | None = None,
) -> tuple[list[dict[str, float]], float]:
    """Train epoch by epoch until ``minutes`` are spent or ``config.epochs`` done.

    Returns the learning curve (one row per epoch: loss, validation ELBO and what
    ``after_epoch`` measures) and the training seconds (``after_epoch`` not counted).
    """
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    history: list[EpochRecord] = []
    curve: list[dict[str, float]] = []
    spent = 0.0
    for epoch in range(config.epochs):
        start = time.perf_counter()
        step = dataclasses.replace(config, epochs=epoch + 1)
        history = fit(
            vae,
            train,
            val,
            step,
            objective=objective,
            optimizer=optimizer,
            transform=dynamic,
            history=history,
            progress=False,
            y=y,
        )
        spent += time.perf_counter() - start
        record = history[-1]
        row = {"epoch": epoch + 1, "seconds": round(spent, 1), "loss": record.train_loss, "val_elbo": record.val_elbo}
        if after_epoch is not None:
            vae.eval()
            with torch.no_grad():
                row.update(after_epoch(vae, epoch))
        curve.append(row)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
        print(f"  epoch {epoch + 1}: {shown}", flush=True)
        if spent >= minutes * 60:
            break
    return curve, spent


def m2(args: argparse.Namespace, data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """M2 with 10 labels per class: the classifier's test error after every epoch."""
    per_class = 2 if args.smoke else 10
    known = labelled_subset(data["train_labels"], per_class, args.seed)
    unknown = torch.ones(len(data["train"]), dtype=torch.bool, device=device)
    unknown[known] = False
    repeats = args.label_repeats
    # The unlabelled rows once, the labelled rows `repeats` times.
    x = torch.cat([data["train"][unknown], data["train"][known].repeat(repeats, 1)])
    y = torch.cat(
        [
            torch.full((int(unknown.sum()),), -1, dtype=torch.long, device=device),
            data["train_labels"][known].repeat(repeats),
        ]
    )
    num_labelled = len(known)
    # Kingma et al.: alpha = 0.1 N on the mean over the labelled set, i.e. 0.1 N / L per
    # labelled image; each of those appears `repeats` times per epoch here.
    alpha = 0.1 * len(x) / (num_labelled * repeats)
    hidden = (16,) if args.smoke else (500,)
    model = ModelConfig(
        x_dim=x.shape[1],
        z_dim=4 if args.smoke else 50,
        hidden=hidden,
        activation="softplus",
        condition="semisupervised",
        num_classes=10,
    )
    torch.manual_seed(args.seed)
    vae = build_vae(model).to(device)
    config = TrainConfig(
        epochs=2 if args.smoke else args.epochs, batch_size=100, lr=3e-4, seed=args.seed, device=str(device)
    )

    def test_error(vae: VAE, epoch: int) -> dict[str, float]:
        with forked_rng(device, seed=args.seed):
            x_test = dynamic(data["test"])
        predicted = vae.predict(x_test)  # type: ignore[operator]
        return {"test_error": float((predicted != data["test_labels"]).double().mean())}

    print(
        f"m2: {num_labelled} labelled rows x {repeats} + {int(unknown.sum())} unlabelled, alpha {alpha:.3g}",
        flush=True,
    )
    curve, seconds = train_for(
        vae,
        x,
        None,
        config,
        args.minutes,
        objective=SemiSupervisedELBO(alpha=alpha),
        y=y,
        after_epoch=test_error,
    )
    errors = [row["test_error"] for row in curve]
    return {
        "data": data["name"],
        "labelled": num_labelled,
        "label_repeats": repeats,
        "alpha": alpha,
        "model": {"z_dim": model.z_dim, "hidden": list(hidden), "activation": "softplus"},
        "train": {"batch_size": config.batch_size, "lr": config.lr, "epochs": len(curve), "seconds": round(seconds, 1)},
        "curve": curve,
        "final_test_error": errors[-1],
        "best_test_error": min(errors),
        "published_test_error": M2_PUBLISHED_ERROR,
    }


def two_layer(args: argparse.Namespace, data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Burda et al.'s one- and two-layer VAEs, trained alike for the same epochs."""
    small = args.smoke
    configs = {
        # Burda et al.: 784-100-100-(z1 100)-50-50-(z2 50), tanh.
        "two_layer": ModelConfig(
            x_dim=data["train"].shape[1],
            z_dim=4 if small else 100,
            hidden=(16,) if small else (100, 100),
            top_dim=2 if small else 50,
            top_hidden=(8,) if small else (50, 50),
            activation="tanh",
        ),
        # Burda et al.: 784-200-200-(z 50), tanh.
        "one_layer": ModelConfig(
            x_dim=data["train"].shape[1],
            z_dim=2 if small else 50,
            hidden=(16,) if small else (200, 200),
            activation="tanh",
        ),
    }
    results: dict[str, Any] = {"data": data["name"], "test_split": data["test_split"], "models": {}}
    epochs = 2 if small else args.epochs
    for name, model in configs.items():
        torch.manual_seed(args.seed)
        vae = build_vae(model).to(device)
        config = TrainConfig(epochs=epochs, batch_size=100, lr=1e-3, seed=args.seed, device=str(device))
        print(f"{name}: hidden {list(model.hidden)}, z_dim {model.z_dim}, top_dim {model.top_dim}", flush=True)
        curve, seconds = train_for(vae, data["train"], data["val"], config, args.minutes)
        # The one-layer model trains as many epochs as the two-layer one managed.
        epochs = len(curve)
        vae.eval()
        iw = 50 if small else args.iw_samples
        found = evaluate(vae, data["test"], iw_samples=iw, seed=args.seed, transform=dynamic)
        results["models"][name] = {
            "hidden": list(model.hidden),
            "z_dim": model.z_dim,
            "top_dim": model.top_dim,
            "top_hidden": list(model.top_hidden) if model.top_dim else [],
            "weights": sum(p.numel() for p in vae.parameters()),
            "train": {"batch_size": 100, "lr": 1e-3, "epochs": len(curve), "seconds": round(seconds, 1)},
            "curve": curve,
            "test_rows": int(data["test"].shape[0]),
            "iw_samples": iw,
            "test_elbo": float(found.elbo.mean()),
            "test_log_px": float(found.log_px.mean()),
            "active_units": found.active_units,
            "published_log_px": BURDA_TWO_LAYER if name == "two_layer" else BURDA_ONE_LAYER,
        }
        print(f"  test ELBO {found.elbo.mean():.2f}, log p(x) (K={iw}) {found.log_px.mean():.2f}", flush=True)
    return results


# ------------------------------------------------------------------------- the run
def context(device: torch.device) -> dict[str, Any]:
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }


def run(args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    data = mnist(args, device)
    report: dict[str, Any] = {"smoke": args.smoke, "experiments": {}}
    for name, experiment in (("m2", m2), ("two_layer", two_layer)):
        if args.only not in (None, name):
            continue
        where, start = context(device), time.perf_counter()
        found = experiment(args, data, device)
        where["seconds"] = round(time.perf_counter() - start, 1)
        report["experiments"][name] = {"context": where, **found}
    earlier = out / "families.json"
    if not args.smoke and earlier.is_file():
        for name, exp in json.loads(earlier.read_text()).get("experiments", {}).items():
            report["experiments"].setdefault(name, exp)
    return report


# ---------------------------------------------------------------------- the report
def markdown(report: dict[str, Any]) -> str:
    lines = ["# Model families against published MNIST numbers, at an affordable budget", ""]
    exps = report["experiments"]
    if "m2" in exps:
        e = exps["m2"]
        c, t = e["context"], e["train"]
        lines += [
            f"## M2, {e['labelled']} labels (Kingma et al. 2014: {100 * e['published_test_error']:.2f} % test error)",
            "",
            f"`{c['command']}` on {c['date']} ({c['device']}{', ' + c['device_name'] if c['device_name'] else ''}, "
            f"torch {c['torch']}, pyro-ppl {c['pyro']}): {t['epochs']} epochs in {t['seconds']} s of training; "
            f"labelled rows repeated {e['label_repeats']} times, alpha {e['alpha']:.3g} per labelled row; "
            f"networks {e['model']['hidden']} {e['model']['activation']}, z_dim {e['model']['z_dim']}, "
            f"batch {t['batch_size']}, Adam {t['lr']}.",
            "",
            f"Test error of q(y|x): **{100 * e['final_test_error']:.2f} %** after the last epoch "
            f"(best {100 * e['best_test_error']:.2f} %), against {100 * e['published_test_error']:.2f} % published.",
            "",
            "| epoch | seconds | loss | test error |",
            "|---:|---:|---:|---:|",
            *[
                f"| {r['epoch']} | {r['seconds']} | {r['loss']:.2f} | {100 * r['test_error']:.2f} % |"
                for r in _thin(e["curve"])
            ],
            "",
        ]
    layers = [name for name in exps if name.startswith("two_layer")]
    if layers:
        lines += [
            "## One and two stochastic layers (Burda et al. 2015: -86.76 and -85.33 after 3,280 epochs)",
            "",
            "Burda et al.'s networks: 784-200-200 -> z 50 (one layer); 784-100-100 -> z1 100 -> 50-50 -> z2 50 (two).",
        ]
    for key in layers:
        e = exps[key]
        c = e["context"]
        lines += [
            "",
            f"`{c['command']}` on {c['date']} ({c['device']}{', ' + c['device_name'] if c['device_name'] else ''}, "
            f"torch {c['torch']}, pyro-ppl {c['pyro']}).",
            "",
            "| model | networks | weights | epochs | train s | val ELBO (last) | test ELBO | test log p(x) | published | active units |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in e["models"].items():
            nets = "-".join(map(str, m["hidden"])) + f" -> z {m['z_dim']}"
            if m["top_dim"]:
                nets += " -> " + "-".join(map(str, m["top_hidden"])) + f" -> z2 {m['top_dim']}"
            lines.append(
                f"| {name} | {nets} | {m['weights']:,} | {m['train']['epochs']} | {m['train']['seconds']} | "
                f"{m['curve'][-1]['val_elbo']:.2f} | {m['test_elbo']:.2f} | {m['test_log_px']:.2f} (K={m['iw_samples']}, "
                f"{m['test_rows']} rows) | {m['published_log_px']} | {m['active_units']} |"
            )
    lines.append("")
    return "\n".join(lines)


def _thin(curve: list[dict[str, float]], rows: int = 12) -> list[dict[str, float]]:
    if len(curve) <= rows:
        return curve
    picks = sorted({round(i * (len(curve) - 1) / (rows - 1)) for i in range(rows)})
    return [curve[i] for i in picks]


def figure(report: dict[str, Any]):  # noqa: ANN201
    exps = report["experiments"]
    fig, axes = subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if "m2" in exps:
        e = exps["m2"]
        epochs = [r["epoch"] for r in e["curve"]]
        ax.plot(epochs, [100 * r["test_error"] for r in e["curve"]], marker="o", ms=3, label="pyro_vae M2")
        ax.axhline(100 * e["published_test_error"], color="k", ls="--", lw=1, label="Kingma et al. 2014 (M2)")
        ax.set_title(f"M2, {e['labelled']} labels: test error of q(y|x)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.set_ylim(bottom=0)
        ax.legend()
    else:
        ax.set_axis_off()
    ax = axes[1]
    if "two_layer" in exps:
        e = exps["two_layer"]
        for name, m in e["models"].items():
            epochs = [r["epoch"] for r in m["curve"]]
            (line,) = ax.plot(epochs, [r["val_elbo"] for r in m["curve"]], marker="o", ms=3, label=f"{name}: val ELBO")
            ax.axhline(
                m["test_log_px"],
                color=line.get_color(),
                ls=":",
                lw=1.5,
                label=f"{name}: test log p(x) {m['test_log_px']:.2f}",
            )
            ax.axhline(
                m["published_log_px"],
                color=line.get_color(),
                ls="--",
                lw=1,
                label=f"{name}: published {m['published_log_px']}",
            )
        ax.set_title("one vs two stochastic layers (nats per image)")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "families.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "families.md", markdown(report))
    save_png(figure(report), out / "families.png")
    print(f"wrote {out / 'families.json'}, families.md and families.png")


if __name__ == "__main__":
    main()
