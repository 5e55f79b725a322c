"""Inference gaps of a trained VAE over held-out points, and NUTS against the guide.

For every held-out point (up to ``--num-points``) this estimates, in nats,

- log p(x) by importance sampling (defensive mixture of the amortized guide and the
  best per-point Gaussian),
- the ELBO of the amortized guide and of the best per-point Gaussian,
- the approximation gap log p(x) - ELBO(q*) and the amortization gap ELBO(q*) - ELBO(q)
  (Cremer, Li & Duvenaud 2018),

and for the first ``--nuts-points`` of them runs NUTS (``pyro_vae.posterior.samplers.exact_posterior``)
for the side-by-side ArviZ summary of guide and exact posterior, timing it per point.
Everything goes to one JSON file (default ``benchmarks/results/gaps.json``).

Run:
    pyro-vae train --z-dim 2 --epochs 200 --out runs/digits2d --no-progress
    python benchmarks/gaps.py --run runs/digits2d
    python benchmarks/gaps.py --smoke              # trains a tiny model; seconds
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pyro_vae.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.inference.gaps import inference_gaps
from pyro_vae.runs.checkpoint import atomic_write
from pyro_vae.runs.evaluate import held_out
from pyro_vae.runs.inspect import inspect_points, load_points
from pyro_vae.runs.train import load_data, train_run

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gaps.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, metavar="RUN_DIR", help="a trained run (required unless --smoke)")
    parser.add_argument("--num-points", type=int, default=200, help="held-out points for the gaps (default: 200)")
    parser.add_argument("--nuts-points", type=int, default=3, help="points also sampled by NUTS (default: 3)")
    parser.add_argument("--samples", type=int, default=500, help="NUTS draws (and warm-up) per chain (default: 500)")
    parser.add_argument("--chains", type=int, default=4, help="NUTS chains per point (default: 4)")
    parser.add_argument("--is-samples", type=int, default=5000, help="importance samples per point for log p(x)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON file (default: {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true", help="train a tiny model and use tiny settings")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run
        if args.smoke:
            config = RunConfig(model=ModelConfig(z_dim=2, hidden=(16,)), train=TrainConfig(epochs=2))
            run_dir = train_run(config, Path(tmp) / "run", progress=False).run_dir
            args.num_points, args.nuts_points, args.samples, args.chains, args.is_samples = 20, 2, 30, 2, 500
        if run_dir is None:
            parser.error("--run RUN_DIR is required (or pass --smoke)")
        report = run(run_dir, args)
    report["seconds_total"] = time.perf_counter() - start
    report["command"] = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # NumPy scalars (float32 columns, int64 counts) become plain numbers.
    atomic_write(out, json.dumps(report, indent=2, default=lambda v: v.item()) + "\n")
    print(f"wrote {out}")


def run(run_dir: str | Path, args: argparse.Namespace) -> dict:
    """Gaps over the held-out points and NUTS on a few of them; returns the JSON report."""
    from pyro_vae.runs.checkpoint import load_config

    config = load_config(run_dir)
    rows, _, split = held_out(load_data(config))
    n = min(args.num_points, len(rows))
    index = list(range(n))
    _, vae, x, _ = load_points(run_dir, index, seed=args.seed)

    t = time.perf_counter()
    gaps = inference_gaps(vae, x, index=index, num_samples=args.is_samples, seed=args.seed)
    gap_seconds = time.perf_counter() - t
    means = gaps.mean()
    beyond = {
        name: int((getattr(gaps, name) < -3 * getattr(gaps, f"{name}_se")).sum())
        for name in ("approximation_gap", "amortization_gap", "inference_gap")
    }
    print(f"{n} {split} points of {config.data.data!r} (z_dim {config.model.z_dim}):")
    for name in ("log_px", "elbo_amortized", "elbo_local", "inference_gap", "approximation_gap", "amortization_gap"):
        print(f"  mean {name:<18} {means[name]:9.4f} +- {means[name + '_se']:.4f} nats")
    print(f"  points with a gap below -3 SE: {beyond}")

    found = inspect_points(
        vae,
        x[: args.nuts_points],
        index[: args.nuts_points],
        mcmc=True,
        num_samples=args.samples,
        num_chains=args.chains,
        gap_samples=args.is_samples,
        seed=args.seed,
        progress=False,
    )
    attrs = found.reference.attrs
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(found.describe_reference())
        print(found.table.to_string())
    return {
        "run_dir": str(run_dir),
        "data": config.data.data,
        "split": split,
        "model": {
            "z_dim": config.model.z_dim,
            "hidden": list(config.model.hidden),
            "likelihood": config.model.likelihood,
            "guide": config.model.guide,
            "prior": config.model.prior,
            "epochs": config.train.epochs,
        },
        "torch_threads": torch.get_num_threads(),
        "gaps": {
            "num_points": n,
            "importance_samples": args.is_samples,
            "mean": means,
            "points_below_minus_3_se": beyond,
            "min_log_px_ess": float(np.min(gaps.log_px_ess)),
            "seconds": gap_seconds,
            "per_point": {k: np.asarray(v).tolist() for k, v in gaps.table().items()},
        },
        "nuts": {
            "points": index[: args.nuts_points],
            "chains": args.chains,
            "draws_per_chain": args.samples,
            "warmup_per_chain": int(attrs["tuning_steps"]),
            "seconds_per_point": float(attrs["sampling_time_per_point"]),
            "divergences": int(found.reference.sample_stats.diverging.sum()),
            "max_r_hat": float(found.table["nuts_r_hat"].max()),
            "min_ess_bulk": float(found.table["nuts_ess_bulk"].min()),
            "summary_table": found.table.reset_index(names="variable").to_dict(orient="records"),
            "per_point": found.points.reset_index().to_dict(orient="records"),
        },
    }


if __name__ == "__main__":
    main()
