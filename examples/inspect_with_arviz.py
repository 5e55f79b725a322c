"""Inspect a VAE's amortized posterior q(z|x) against the exact posterior p(z|x), with ArviZ.

Trains a small VAE with a 2-D latent on the built-in digits (or loads a run you trained
with ``pyro-vae train``), picks three held-out inputs and, for each,

1. draws z from the guide q(z|x) = Normal(mu(x), sigma(x)) and from the exact posterior
   of the trained model with Pyro's NUTS (weights fixed), both as ArviZ data;
2. prints ArviZ's summary of both side by side, with NUTS's R-hat and ESS, a Gaussian
   KL between them, and each point's inference gaps: approximation (what a Gaussian
   cannot express) and amortization (what sharing one encoder costs);
3. writes the netCDF files (``arviz.from_netcdf`` opens them), the tables and the
   figures (marginals, forest plot, NUTS draws with the guide's 1- and 2-sigma ellipses).

Run:
    python examples/inspect_with_arviz.py                 # train ~1 min, then inspect
    python examples/inspect_with_arviz.py --run RUN_DIR   # inspect an existing run
    python examples/inspect_with_arviz.py --smoke         # a few seconds, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.runs.checkpoint import load_run
from pyro_vae.runs.inspect import inspect_points, load_points, write_inspection
from pyro_vae.runs.train import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, metavar="RUN_DIR", help="inspect this run instead of training one")
    parser.add_argument("--data", default="digits", help="data to train on: digits (built in) or mnist")
    parser.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (env PYRO_VAE_DATA_DIR)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default: 100)")
    parser.add_argument("--index", type=int, nargs="+", default=[0, 1, 2], help="held-out rows to inspect")
    parser.add_argument("--samples", type=int, default=500, help="draws per chain (default: 500)")
    parser.add_argument("--out", default="inspect_example", help="output folder (default: inspect_example)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings that run in seconds (for CI)")
    args = parser.parse_args()
    out = Path(args.out)
    epochs, samples, warmup, chains, hidden = args.epochs, args.samples, args.samples, 4, (128,)
    if args.smoke:
        epochs, samples, warmup, chains, hidden = 2, 30, 30, 2, (16,)

    # 1. A trained model: load one, or train a small one with a 2-D latent.
    run_dir = args.run
    if run_dir is None:
        config = RunConfig(
            model=ModelConfig(z_dim=2, hidden=hidden),
            data=DataConfig(data=args.data, data_dir=args.data_dir),
            train=TrainConfig(epochs=epochs),
        )
        result = train_run(config, out / "run", overwrite=True, progress=not args.smoke)
        run_dir = result.run_dir
        print(f"trained {epochs} epochs: held-out ELBO {result.val_elbo:.2f} nats per data point ({run_dir})")
    config, _ = load_run(run_dir)

    # 2. Three held-out inputs, as the model saw them in training (binarized for Bernoulli).
    _, vae, x, split = load_points(run_dir, args.index)

    # 3. Guide and NUTS, compared (see pyro_vae.posterior for the pieces one by one).
    found = inspect_points(
        vae,
        x,
        args.index,
        mcmc=True,
        num_samples=samples,
        warmup_steps=warmup,
        num_chains=chains,
        gap_samples=500 if args.smoke else 5000,
        progress=not args.smoke,
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(f"\nrows {args.index} of the {split} split of {config.data.data!r}; {found.describe_reference()}")
        print("\nposterior mean and sd per latent dimension, guide beside NUTS (ArviZ summaries):")
        print(found.table.to_string())
        print("\nper point: Gaussian KL(guide || NUTS), log p(x), ELBOs and inference gaps (nats):")
        columns = [
            "kl_gaussian",
            "log_px",
            "elbo_amortized",
            "elbo_local",
            "approximation_gap",
            "amortization_gap",
            "nuts_divergences",
            "nuts_max_r_hat",
        ]
        print(found.points[columns].to_string())

    # 4. Files: netCDF for ArviZ, CSV tables, PNG figures.
    written = write_inspection(found, out / "inspect", overwrite=True)
    print(f"\nwrote {', '.join(p.name for p in written)} to {out / 'inspect'}")
    print("open them with: import arviz as az; az.from_netcdf('guide.nc')")


if __name__ == "__main__":
    main()
