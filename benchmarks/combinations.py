"""Priors, guides, likelihoods and objectives side by side on the digits.

Trains each combination below with the same ``pyro-vae train`` command (same epochs,
latent size, seed and networks; only the component flags differ), then evaluates every
run on its validation rows with the same K draws per data point from the trained guide:

- the held-out ELBO, the mean over k of the log-weights ``log p(x, z_k) - log q(z_k|x)``;
- an importance-sampled estimate of ``log p(x)``, their log-mean-exp (the IWAE bound
  with K = 1000, :func:`pyro_vae.inference.bounds.iwae_per_datum`), a lower bound in
  expectation that is close to ``log p(x)`` when K is large.

Both are nats per data point, averaged over the validation rows, with the standard
error of that average (spread over points / sqrt(N)). Every row sees the same
validation rows and, for the Bernoulli likelihood, the same binarization (same seed),
so differences between rows are paired: the column "vs baseline" is the mean per-point
difference of log p(x) from the baseline's, with its paired standard error, which is
much smaller than the spread over points. The continuous Bernoulli models the grey
values, not the binarized digits: its numbers are densities of other data, not
comparable with the Bernoulli rows (shown as n/a).

Writes ``benchmarks/results/combinations.json`` and prints a Markdown table with the
command that trained each row.

Run:  python benchmarks/combinations.py                 (about 5 to 8 minutes on 1 CPU core)
      python benchmarks/combinations.py --only baseline vamp-500 --epochs 20
      python benchmarks/combinations.py --smoke         (2 epochs, K = 50; a few seconds each)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import shlex
import tempfile
import time
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.cli import main as cli_main
from pyro_vae.inference.bounds import elbo_per_datum, iwae_per_datum, log_weights
from pyro_vae.runs.checkpoint import load_run
from pyro_vae.runs.train import load_data, make_transform

#: name -> the flags that differ from the baseline (diagonal Normal guide, Normal prior,
#: Bernoulli likelihood, Trace_ELBO with one particle).
COMBINATIONS: dict[str, list[str]] = {
    "baseline": [],
    "meanfield": ["--elbo", "meanfield"],
    "iwae-10": ["--elbo", "iwae", "--particles", "10"],
    "learned": ["--prior", "learned"],
    "mixture-10": ["--prior", "mixture", "--prior-components", "10"],
    "vamp-500": ["--prior", "vamp", "--prior-components", "500"],
    "flow-prior": ["--prior", "flow", "--flow-layers", "2"],
    "fullcov": ["--guide", "fullcov"],
    "lowrank-2": ["--guide", "lowrank", "--guide-rank", "2"],
    "flow-guide": ["--guide", "flow", "--flow-layers", "2"],
    "cbernoulli": ["--likelihood", "cbernoulli"],
}

RESULTS = Path(__file__).resolve().parent / "results" / "combinations.json"


@torch.no_grad()
def evaluate(run_dir: Path, samples: int, chunk: int = 50) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Held-out ELBO and importance-sampled log p(x) of a run's validation rows.

    Returns:
        The averages (nats per data point) with their standard errors, the
        per-point log p(x) estimates ``(N,)``, and the data they score ``(N, x_dim)``.
    """
    config, vae = load_run(run_dir)
    x = torch.from_numpy(load_data(config).val)  # (N, x_dim)
    transform = make_transform(config, vae)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        if transform is not None:
            x = transform(x)  # one fixed binarization, shared by both estimates
        # In chunks of draws: a VampPrior's log-density holds K x N x components values.
        lw = torch.cat([log_weights(vae, x, min(chunk, samples - k)) for k in range(0, samples, chunk)])  # (K, N)
    elbo, log_px = elbo_per_datum(lw), iwae_per_datum(lw)  # (N,) each
    n = x.shape[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    return (
        {
            "heldout_elbo": float(elbo.mean()),
            "heldout_elbo_se": float(elbo.std() / math.sqrt(n)),
            "log_px": float(log_px.mean()),
            "log_px_se": float(log_px.std() / math.sqrt(n)),
            "gap": float((log_px - elbo).mean()),
            "num_val": n,
            "train_val_elbo": float(summary["val_elbo_per_datum"]),
            "train_seconds": float(summary["train_seconds_this_call"]),
        },
        log_px,
        x,
    )


def markdown(rows: list[dict], samples: int) -> str:
    lines = [
        f"| name | held-out ELBO | log p(x), IS K={samples} | log p(x) vs baseline | log p(x) - ELBO | train s | command |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        paired = "n/a" if r["vs_baseline"] is None else f"{r['vs_baseline']:+.2f} ± {r['vs_baseline_se']:.2f}"
        lines.append(
            f"| {r['name']} | {r['heldout_elbo']:.2f} ± {r['heldout_elbo_se']:.2f} | {r['log_px']:.2f} ± "
            f"{r['log_px_se']:.2f} | {paired} | {r['gap']:.2f} | {r['train_seconds']:.0f} | `{r['command']}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1000, help="K, draws per point for both estimates")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=sorted(COMBINATIONS),
        help="run these combinations only (the first is the reference)",
    )
    parser.add_argument("--runs-dir", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON results file")
    parser.add_argument("--smoke", action="store_true", help="2 epochs and K = 50, to check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.samples = 2, 50
    torch.set_num_threads(args.threads)

    names = args.only or list(COMBINATIONS)  # the first is the reference of the paired column
    common = ["--epochs", str(args.epochs), "--z-dim", str(args.z_dim), "--seed", str(args.seed)]
    rows = []
    reference: tuple[torch.Tensor, torch.Tensor] | None = None  # the first row's (log p(x), data)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)
        for name in names:
            run_dir = runs / name
            argv = ["train", *common, *COMBINATIONS[name], "--out", str(run_dir), "--overwrite", "--no-progress"]
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # keep the table readable
                status = cli_main(argv)
            if status != 0:
                raise SystemExit(f"{name}: pyro-vae {' '.join(argv)} exited with {status}")
            averages, log_px, x = evaluate(run_dir, args.samples)
            if reference is None:
                reference = (log_px, x)
            # Paired with the first row, when both score the same data.
            comparable = reference[1].shape == x.shape and torch.equal(reference[1], x)
            diff = log_px - reference[0] if comparable else None  # (N,)
            row = {
                "name": name,
                "command": "pyro-vae " + shlex.join([*argv[:-4], "--out", f"runs/{name}"]),
                "flags": COMBINATIONS[name],
                **averages,
                "vs_baseline": None if diff is None else float(diff.mean()),
                "vs_baseline_se": None if diff is None else float(diff.std() / math.sqrt(len(diff))),
                "wall_seconds": time.perf_counter() - start,
            }
            rows.append(row)
            print(
                f"{name}: ELBO {row['heldout_elbo']:.2f}, log p(x) {row['log_px']:.2f} ({row['wall_seconds']:.0f} s)",
                flush=True,
            )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "data": "digits (scikit-learn, 8x8), validation rows of a 0.9/0.1 split",
        "epochs": args.epochs,
        "z_dim": args.z_dim,
        "seed": args.seed,
        "samples": args.samples,
        "threads": args.threads,
        "versions": {"pyro_vae": pyro_vae.__version__, "pyro": pyro.__version__, "torch": torch.__version__},
        "machine": platform.platform(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print()
    print(markdown(rows, args.samples))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
