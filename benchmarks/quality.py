"""Model quality on MNIST: test ELBO and test log-likelihood, beside the reference and the paper.

Trains pyro_vae with Burda et al.'s architecture (784-200-200-50, tanh, Bernoulli
likelihood, diagonal Normal guide) on the 60,000 MNIST training images, dynamically
binarized (a fresh Bernoulli draw of every pixel at every step), and the plain-PyTorch
reference (:mod:`reference_vae`, same networks, initial weights, estimator, optimizer,
data pipeline and budget). Both are then evaluated by :func:`pyro_vae.inference.evaluation.evaluate`
on the test images, binarized once with a fixed seed: the ELBO and the importance-sampled
estimate of log p(x) with K = 5000 draws per image, the KL and reconstruction terms,
and the active units. The published figures (Burda et al. 2015, Table 1, 3,280 epochs):
VAE 86.76 nats, IWAE (k = 50) 84.78 nats.

The default budget finishes within 30 minutes on a 2-core CPU:

    python benchmarks/quality.py --data-dir /path/to/mnist

Other objectives and priors run through the same script (the reference trains the same
objective; it has only the standard Normal prior, so it is left out for others):

    python benchmarks/quality.py --data-dir DIR --elbo iwae --particles 50
    python benchmarks/quality.py --data-dir DIR --prior vamp --prior-components 500

A GPU budget closer to the paper's (hours; see benchmarks/README.md):

    python benchmarks/quality.py --data-dir DIR --device cuda --epochs 3280 --batch-size 20

Results are added to ``benchmarks/results/quality.json`` (one row per model and setting,
replacing an earlier row of the same setting) and ``quality.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyro
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reference_vae import ReferenceVAE, train_epoch  # noqa: E402
from speed import machine_description  # noqa: E402

import pyro_vae  # noqa: E402, F401  (imported with torch and Pyro, so the memory baseline holds all three)
from pyro_vae.config import ModelConfig, TrainConfig  # noqa: E402
from pyro_vae.data.datasets import default_data_dir, load_mnist  # noqa: E402
from pyro_vae.data.transforms import binarize  # noqa: E402
from pyro_vae.inference.evaluation import DEFAULT_IW_SAMPLES, evaluate  # noqa: E402
from pyro_vae.inference.objectives import build_objective  # noqa: E402
from pyro_vae.model.build import build_vae  # noqa: E402
from pyro_vae.training.loop import fit  # noqa: E402

HIDDEN, Z_DIM, ACTIVATION = (200, 200), 50, "tanh"
#: Burda et al. 2015, Table 1: test log-likelihood of MNIST, k = 1 (VAE) and k = 50 (IWAE).
PUBLISHED = {"VAE (Burda et al. 2015)": -86.76, "IWAE k=50 (Burda et al. 2015)": -84.78}
DEFAULT_EPOCHS = 40


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (default: env PYRO_VAE_DATA_DIR)")
    p.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs of each model (default: {DEFAULT_EPOCHS})"
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--elbo", default="trace", help="pyro_vae objective: trace (the ELBO) or iwae (default: trace)")
    p.add_argument("--particles", type=int, default=1, help="K of the objective (iwae: 50 in the paper)")
    p.add_argument(
        "--prior", default="normal", help="pyro_vae prior (normal, vamp, ...); the reference has normal only"
    )
    p.add_argument(
        "--prior-components",
        type=int,
        default=ModelConfig().prior_components,
        help="pseudo-inputs of --prior vamp, Gaussians of --prior mixture",
    )
    p.add_argument(
        "--iw-samples", type=int, default=DEFAULT_IW_SAMPLES, help="K of the test log-likelihood (default: 5000)"
    )
    p.add_argument("--test-points", type=int, default=10_000, help="test images evaluated (default: all 10,000)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reference", action="store_true", help="train pyro_vae only")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for quality.json and quality.md (default: benchmarks/results; with --smoke a temporary folder)",
    )
    p.add_argument("--smoke", action="store_true", help="synthetic data, tiny sizes, seconds (for the test suite)")
    return p


def _data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    if args.smoke:
        g = torch.Generator().manual_seed(0)
        return (
            torch.rand(256, 784, generator=g) ** 3,
            torch.rand(32, 784, generator=g) ** 3,
            "synthetic (MNIST's shape)",
        )
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        raise SystemExit("quality.py: pass --data-dir DIR (MNIST IDX files) or set PYRO_VAE_DATA_DIR")
    train_x, _, test_x, _ = load_mnist(data_dir)
    return torch.from_numpy(train_x), torch.from_numpy(test_x), "MNIST, dynamically binarized"


def _evaluate(vae: pyro_vae.VAE, test: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    # The test images are binarized once, with the same seed for every model.
    result = evaluate(
        vae,
        test,
        iw_samples=args.iw_samples,
        seed=args.seed + 1,
        transform=lambda x: binarize(x, "dynamic"),
        progress=not args.smoke,
    )
    summary = result.summary()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "test_elbo": summary["elbo_per_datum"],
        "test_log_px": summary["log_px_per_datum"],
        "test_kl": summary["kl_per_datum"],
        "test_reconstruction": summary["reconstruction_per_datum"],
        "active_units": summary["active_units"],
        "eval_seconds": summary["seconds"],
        "process_peak_rss_mb": peak,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.epochs, args.iw_samples, args.test_points, args.batch_size = 1, 20, 32, 64
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="quality-smoke-")) if args.smoke else HERE / "results"
    pyro.enable_validation(False)
    device = torch.device(args.device)
    started = time.perf_counter()
    train, test, data_name = _data(args)
    train, test = train.to(device), test[: args.test_points].to(device)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        elbo=args.elbo,
        particles=args.particles,
    )
    objective = build_objective(config)
    torch.manual_seed(args.seed)
    vae = build_vae(
        ModelConfig(
            x_dim=784,
            z_dim=Z_DIM,
            hidden=HIDDEN,
            activation=ACTIVATION,
            prior=args.prior,
            prior_components=args.prior_components,
        )
    ).to(device)
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    setting = {
        "objective": args.elbo,
        "particles": args.particles,
        "prior": args.prior + (f" ({args.prior_components})" if args.prior in ("vamp", "mixture") else ""),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "iw_samples": args.iw_samples,
        "test_points": int(test.shape[0]),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "data": data_name,
        "machine": machine_description(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    rows = []

    t = time.perf_counter()
    history = fit(
        vae,
        train,
        config=config,
        objective=objective,
        transform=lambda x: binarize(x, "dynamic"),
        progress=not args.smoke,
    )
    train_seconds = time.perf_counter() - t
    rows.append(
        {
            **setting,
            "model": "pyro_vae",
            "train_seconds": train_seconds,
            "final_train_loss": history[-1].train_loss,
            **_evaluate(vae.eval(), test, args),
        }
    )
    print(_line(rows[-1]), flush=True)

    if not args.no_reference and args.prior == "normal" and args.elbo in ("trace", "trace-eager", "iwae"):
        reference = ReferenceVAE(784, HIDDEN, Z_DIM, ACTIVATION).to(device)
        reference.load_state_dict({k: v for k, v in initial.items() if not k.startswith("prior.")})
        optimizer = torch.optim.Adam(reference.parameters(), lr=args.lr)
        t = time.perf_counter()
        for epoch in range(args.epochs):
            loss = train_epoch(
                reference,
                train,
                optimizer,
                args.batch_size,
                seed=args.seed * 1000 + epoch,
                particles=args.particles,
                iwae=args.elbo == "iwae",
            )
        train_seconds = time.perf_counter() - t
        # Evaluated by the same code: its weights in a pyro_vae VAE of the same architecture.
        as_vae = build_vae(ModelConfig(x_dim=784, z_dim=Z_DIM, hidden=HIDDEN, activation=ACTIVATION)).to(device)
        as_vae.load_state_dict(
            {**reference.state_dict(), **{k: v for k, v in as_vae.state_dict().items() if k.startswith("prior.")}}
        )
        rows.append(
            {
                **setting,
                "model": "reference (plain PyTorch)",
                "train_seconds": train_seconds,
                "final_train_loss": loss,
                **_evaluate(as_vae.eval(), test, args),
            }
        )
        print(_line(rows[-1]), flush=True)

    total = time.perf_counter() - started
    for row in rows:
        row["script_wall_seconds"] = total
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "quality.json"
    keys = ("model", "objective", "particles", "prior", "epochs", "batch_size", "iw_samples", "test_points", "device")
    old = json.loads(path.read_text()) if path.exists() else []
    fresh = {tuple(r[k] for k in keys) for r in rows}
    merged = [r for r in old if tuple(r.get(k) for k in keys) not in fresh] + rows
    path.write_text(json.dumps(merged, indent=1) + "\n")
    table = markdown(merged)
    (args.out / "quality.md").write_text(table)
    print()
    print(table)
    print(f"wrote {path} and {args.out / 'quality.md'} ({total:.0f} s)")
    return 0


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['model']}: test ELBO {row['test_elbo']:.2f}, test log p(x) {row['test_log_px']:.2f} "
        f"(K={row['iw_samples']}), KL {row['test_kl']:.2f}, active units {row['active_units']}, "
        f"train {row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | objective | prior | epochs | batch | test ELBO | test log p(x) | KL | recon. | active units | train s | eval s | device, threads |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        objective = r["objective"] + (f" (k={r['particles']})" if r["particles"] > 1 else "")
        lines.append(
            f"| {r['model']} | {objective} | {r['prior']} | {r['epochs']} | {r['batch_size']} | {r['test_elbo']:.2f} | "
            f"**{r['test_log_px']:.2f}** (K={r['iw_samples']}, {r['test_points']} images) | {r['test_kl']:.2f} | "
            f"{r['test_reconstruction']:.2f} | {r['active_units']} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | "
            f"{r['device']}, {r['threads']} |"
        )
    for name, value in PUBLISHED.items():
        lines.append(f"| {name} | | normal | 3280 | | | **{value:.2f}** (K=5000) | | | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
