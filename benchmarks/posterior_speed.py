"""The exact posterior of many held-out points: NUTS in blocks against per-point NUTS.

``pyro_vae.posterior.samplers.exact_posterior`` samples a block of points jointly (Pyro's
NUTS on the product space of the block, chains batched in); until issue 14 it ran one
NUTS per point and chain, one after the other. This script measures both in the same
process, on models it trains itself (small budgets):

- **digits, z_dim = 2** (the built-in data, default architecture): 100 held-out
  points. Per-point NUTS (``block_size=1, batch_chains=False``: the old algorithm; its
  speed is the old code's) on the first ``--baseline-points`` of them, 500 draws and
  500 warm-up steps x 4 chains as in the issue; then every block size of
  ``--block-sizes`` with the chains batched, and the largest with the chains run one
  after the other (unless ``--no-in-turn``), all with the same draws (default 750 +
  250 warm-up x 4 chains: ``--draws``, ``--warmup``). The target: minimum bulk ESS >= 400 and R-hat <= 1.01 for every point, in under 60 s,
  at >= 15 times the per-point rate of effective draws per second.
- **MNIST, z_dim = 10** (``--data-dir`` or ``PYRO_VAE_DATA_DIR``): 100 test points,
  150 + 150 draws x 4 chains for every run by default (``--mnist-draws``,
  ``--mnist-warmup``; a decoder pass costs 5 times the digits model's); target >= 10 times the per-point rate.

For every run: wall time, effective draws per second (the sum over points of each
point's smallest bulk ESS, over the run's time), ESS per second per point (the
point's smallest bulk ESS over the run's time per point: min and median), the
smallest bulk and tail ESS, the largest R-hat and how many points exceed 1.01,
divergences (and on how many points), and the step size and leapfrog steps per
transition (shared by the points of a block). The load of the machine before and
after is recorded, and the CPU time of each run beside its wall time: the runs take
the CPU one at a time, but other work on a shared machine slows them. Each experiment
keeps its own command, date and load; ``--skip-digits`` runs the MNIST part alone and
keeps the digits results already in ``--out``.

Run:
    OMP_NUM_THREADS=1 python benchmarks/posterior_speed.py --data-dir /path/to/mnist
    python benchmarks/posterior_speed.py --smoke          # tiny models, seconds
    python benchmarks/posterior_speed.py --device cuda --skip-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.data.datasets import load_dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.files import atomic_write
from pyro_vae.model.build import build_vae
from pyro_vae.posterior.samplers import default_block_size, exact_posterior
from pyro_vae.posterior.schema import az
from pyro_vae.runs.train import make_transform, resolve_device
from pyro_vae.seeding import forked_rng
from pyro_vae.training.loop import fit

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR", help="MNIST IDX files (default: env PYRO_VAE_DATA_DIR)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--points", type=int, default=100, help="held-out points per model (default: 100)")
    parser.add_argument("--baseline-points", type=int, default=5, help="points of the per-point runs (default: 5)")
    parser.add_argument(
        "--block-sizes",
        type=int,
        nargs="+",
        default=[10, 25, 100],
        metavar="B",
        help="digits block sizes (default: 10 25 100)",
    )
    parser.add_argument(
        "--mnist-block-sizes",
        type=int,
        nargs="+",
        default=[25, 100],
        metavar="B",
        help="MNIST block sizes (default: 25 100)",
    )
    parser.add_argument("--draws", type=int, default=750, help="digits: draws kept per chain (default: 750)")
    parser.add_argument("--warmup", type=int, default=250, help="digits: warm-up steps per chain (default: 250)")
    parser.add_argument("--mnist-draws", type=int, default=150, help="MNIST: draws kept per chain (default: 150)")
    parser.add_argument("--mnist-warmup", type=int, default=150, help="MNIST: warm-up steps per chain (default: 150)")
    parser.add_argument(
        "--no-in-turn", action="store_true", help="skip the digits run with the chains one after the other"
    )
    parser.add_argument("--skip-mnist", action="store_true", help="only the digits model")
    parser.add_argument(
        "--skip-digits", action="store_true", help="only the MNIST model; the digits results already in --out are kept"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"folder of posterior_speed.json/.md (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models and draws; digits only (z_dim 2 and 10)")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
        report = run(args, device)
    except PyroVAEError as err:
        print(f"posterior_speed: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        report = keep_earlier(report, out / "posterior_speed.json")
    atomic_write(out / "posterior_speed.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "posterior_speed.md", markdown(report))
    print(f"wrote {out / 'posterior_speed.json'} and {out / 'posterior_speed.md'}")


# ---------------------------------------------------------------------------- set-up
def trained(
    data_name: str, z_dim: int, hidden: tuple[int, ...], epochs: int, args: argparse.Namespace, device: torch.device
):
    """A VAE trained briefly on ``data_name``, and its first held-out points, binarized."""
    data = load_dataset(data_name, args.data_dir if data_name == "mnist" else None)
    config = RunConfig(
        model=ModelConfig(x_dim=data.x_dim, z_dim=z_dim, hidden=hidden),
        train=TrainConfig(epochs=epochs, batch_size=128, seed=args.seed, device=str(device)),
    )
    torch.manual_seed(args.seed)
    vae = build_vae(config.model).to(device)
    train = torch.from_numpy(data.train).to(device)
    start = time.perf_counter()
    fit(vae, train, config=config.train, transform=make_transform(config, vae), progress=False)
    seconds = time.perf_counter() - start
    held, split = (data.test, "test") if data.test is not None else (data.val, "val")
    with forked_rng(device, seed=args.seed):
        x = torch.bernoulli(torch.from_numpy(held[: args.points]).to(device))
    vae.eval()
    model = {
        "data": data_name,
        "split": split,
        "z_dim": z_dim,
        "hidden": list(hidden),
        "epochs": epochs,
        "train_rows": int(train.shape[0]),
        "train_seconds": round(seconds, 1),
    }
    return vae, x, model


def measure(
    vae, x, *, label: str, draws: int, warmup: int, chains: int, block_size: int, batch_chains: bool, seed: int
) -> dict:
    """One exact_posterior call over all rows of ``x``: time, ESS, R-hat, divergences."""
    start, cpu = time.perf_counter(), time.process_time()
    data = exact_posterior(
        vae,
        x,
        draws,
        warmup_steps=warmup,
        num_chains=chains,
        seed=seed,
        block_size=block_size,
        batch_chains=batch_chains,
    )
    seconds = time.perf_counter() - start
    row = summarize(data, seconds)
    # CPU time of this process: on a shared machine it depends on the load less than
    # the wall time does (contention for the caches still inflates it).
    row["cpu_seconds"] = round(time.process_time() - cpu, 2)
    row.update(label=label, block_size=block_size, batch_chains=batch_chains, draws=draws, warmup=warmup, chains=chains)
    print(
        f"  {label:<32} {seconds:7.1f} s ({row['cpu_seconds']:.1f} CPU s)  eff. draws/s {row['eff_draws_per_s']:8.1f}  min ESS {row['min_ess_bulk']:6.0f}"
        f"  max R-hat {row['max_r_hat']:.4f} ({row['points_r_hat_over_1_01']} > 1.01)  divergences {row['divergences']}"
        f"  steps/transition {row['mean_n_steps']:.1f}",
        flush=True,
    )
    return row


def summarize(data, seconds: float) -> dict:
    """Per-point diagnostics of one run, pooled into the benchmark's columns."""
    points = data.posterior.sizes["point"]
    ess = az.ess(data, var_names=["z"]).z.min("latent").values  # (B,): each point's weakest dimension
    tail = az.ess(data, var_names=["z"], method="tail").z.min("latent").values
    r_hat = az.rhat(data, var_names=["z"]).z.max("latent").values
    stats = data.sample_stats
    divergences = stats.diverging.sum(("chain", "draw")).values  # (B,)
    per_point = ess / (seconds / points)  # ESS per second of this point's share of the run
    return {
        "points": int(points),
        "seconds": round(seconds, 2),
        "eff_draws_per_s": float(ess.sum() / seconds),
        "ess_per_s_per_point_min": float(per_point.min()),
        "ess_per_s_per_point_median": float(np.median(per_point)),
        "min_ess_bulk": float(ess.min()),
        "median_ess_bulk": float(np.median(ess)),
        "min_ess_tail": float(tail.min()),
        "max_r_hat": float(r_hat.max()),
        "points_r_hat_over_1_01": int((r_hat > 1.01).sum()),
        "divergences": int(divergences.sum()),
        "points_with_divergences": int((divergences > 0).sum()),
        "mean_step_size": float(stats.step_size.mean()),
        "mean_n_steps": float(stats.n_steps.mean()),
        "mean_tree_depth": float(stats.tree_depth.mean()),
    }


def baseline(vae, x, *, points: int, draws: int, warmup: int, chains: int, seed: int) -> dict:
    """Per-point NUTS, point by point: the old algorithm, timed per point."""
    rows = []
    for b in range(min(points, x.shape[0])):
        rows.append(
            measure(
                vae,
                x[b : b + 1],
                label=f"per-point NUTS, row {b}",
                draws=draws,
                warmup=warmup,
                chains=chains,
                block_size=1,
                batch_chains=False,
                seed=seed,
            )
        )
    rates = [r["eff_draws_per_s"] for r in rows]
    return {
        "points": len(rows),
        "draws": draws,
        "warmup": warmup,
        "chains": chains,
        "seconds_per_point": float(np.mean([r["seconds"] for r in rows])),
        "cpu_seconds_per_point": float(np.mean([r["cpu_seconds"] for r in rows])),
        "eff_draws_per_s": float(np.mean(rates)),  # per point, as every point runs alone
        "min_ess_bulk": float(min(r["min_ess_bulk"] for r in rows)),
        "max_r_hat": float(max(r["max_r_hat"] for r in rows)),
        "divergences": int(sum(r["divergences"] for r in rows)),
        "mean_n_steps": float(np.mean([r["mean_n_steps"] for r in rows])),
        "runs": rows,
    }


def experiment(
    name: str,
    vae,
    x,
    model: dict,
    *,
    base: dict,
    block_sizes: list[int],
    draws: int,
    warmup: int,
    chains: int,
    seed: int,
    target_speedup: float | None,
    target: dict | None,
    in_turn: bool = True,
) -> dict:
    print(
        f"{name}: {x.shape[0]} {model['split']} points of {model['data']} (z_dim {model['z_dim']}), "
        f"trained {model['epochs']} epochs in {model['train_seconds']} s",
        flush=True,
    )
    reference = baseline(
        vae, x, points=base["points"], draws=base["draws"], warmup=base["warmup"], chains=chains, seed=seed
    )
    auto = default_block_size(chains)
    runs = []
    for size in sorted(set(block_sizes) | {min(auto, x.shape[0])}):
        label = f"blocks of {size}" + (" (default)" if size == min(auto, x.shape[0]) else "")
        runs.append(
            measure(
                vae,
                x,
                label=label,
                draws=draws,
                warmup=warmup,
                chains=chains,
                block_size=size,
                batch_chains=True,
                seed=seed,
            )
        )
    if in_turn:
        largest = max(block_sizes)
        runs.append(
            measure(
                vae,
                x,
                label=f"blocks of {largest}, chains in turn",
                draws=draws,
                warmup=warmup,
                chains=chains,
                block_size=largest,
                batch_chains=False,
                seed=seed,
            )
        )
    for row in runs:
        row["speedup"] = row["eff_draws_per_s"] / reference["eff_draws_per_s"]
    goal = None if target_speedup is None else {"speedup": target_speedup, **(target or {})}
    for row in runs:
        row["meets_target"] = meets(row, goal, row["seconds"])
        row["meets_target_in_cpu_time"] = meets(row, goal, row["cpu_seconds"])
    return {"model": model, "default_block_size": auto, "baseline": reference, "runs": runs, "target": goal}


def meets(row: dict, goal: dict | None, seconds: float) -> bool:
    """Whether a run meets the goal (speed-up, and where the goal names them: time, ESS, R-hat)."""
    return goal is not None and bool(
        row["speedup"] >= goal["speedup"]
        and seconds <= goal.get("seconds", float("inf"))
        and row["min_ess_bulk"] >= goal.get("min_ess_bulk", 0.0)
        and row["max_r_hat"] <= goal.get("max_r_hat", float("inf"))
    )


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def context(device: torch.device) -> dict:
    """Where and how an experiment ran: the command, the machine and its load before."""
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "device": str(device),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "load_average_before": load_average(),
        },
        "started": time.perf_counter(),
    }


def finish(exp: dict, where: dict) -> dict:
    """``exp`` with its context, the load after and the seconds it took."""
    where["machine"]["load_average_after"] = load_average()
    where["seconds"] = round(time.perf_counter() - where.pop("started"), 1)
    return {"context": where, **exp}


def keep_earlier(report: dict, path: Path) -> dict:
    """The experiments of an earlier report at ``path`` that this run skipped, added to ``report``."""
    if not path.is_file():
        return report
    earlier = json.loads(path.read_text())
    for name, exp in earlier.get("experiments", {}).items():
        if name in report["experiments"]:
            continue
        if "context" not in exp:  # an older report: one context for all its experiments
            exp = {
                "context": {
                    "command": earlier.get("command"),
                    "date": earlier.get("date"),
                    "machine": earlier.get("machine"),
                    "seconds": earlier.get("seconds_total"),
                },
                **exp,
            }
        report["experiments"][name] = exp
    return report


def run(args: argparse.Namespace, device: torch.device) -> dict:
    report: dict = {"smoke": args.smoke, "experiments": {}}
    if args.smoke:
        args.points = min(args.points, 6)
        small = {"chains": 2, "draws": 30, "warmup": 30, "seed": args.seed, "target_speedup": None, "target": None}
        base = {"points": 1, "draws": 20, "warmup": 20}
        for name, z_dim in (("digits_z2", 2), ("digits_z10", 10)):
            where = context(device)
            vae, x, model = trained("digits", z_dim, (16,), 2, args, device)
            report["experiments"][name] = finish(
                experiment(name, vae, x, model, base=base, block_sizes=[3], **small), where
            )
    else:
        if not args.skip_digits:
            where = context(device)
            vae, x, model = trained("digits", 2, ModelConfig().hidden, 50, args, device)
            report["experiments"]["digits_z2"] = finish(
                experiment(
                    "digits_z2",
                    vae,
                    x,
                    model,
                    base={"points": args.baseline_points, "draws": 500, "warmup": 500},
                    block_sizes=args.block_sizes,
                    draws=args.draws,
                    warmup=args.warmup,
                    chains=4,
                    seed=args.seed,
                    target_speedup=15.0,
                    target={"seconds": 60.0, "min_ess_bulk": 400.0, "max_r_hat": 1.01},
                    in_turn=not args.no_in_turn,
                ),
                where,
            )
        if not args.skip_mnist:
            where = context(device)
            vae, x, model = trained("mnist", 10, ModelConfig().hidden, 5, args, device)
            # Fewer draws: a decoder pass costs 5 times the digits model's, and the
            # rate of effective draws is what the target asks for.
            report["experiments"]["mnist_z10"] = experiment(
                "mnist_z10",
                vae,
                x,
                model,
                base={"points": max(1, args.baseline_points - 3), "draws": 150, "warmup": 150},
                block_sizes=args.mnist_block_sizes,
                draws=args.mnist_draws,
                warmup=args.mnist_warmup,
                chains=4,
                seed=args.seed,
                target_speedup=10.0,
                target={"max_r_hat": 1.01},
                in_turn=False,
            )
            report["experiments"]["mnist_z10"] = finish(report["experiments"]["mnist_z10"], where)
    return report


# -------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    lines = [
        "# Exact posteriors of many points: NUTS in blocks against per-point NUTS",
        "",
        (
            "Effective draws/s: the sum over points of each point's smallest bulk ESS over the run's wall time "
            "(for the per-point runs: the mean over points of each point's rate). ESS/s per point: that ESS over "
            "the run's time per point. Step size and steps per transition are shared by the points of a block. "
            "CPU s: the process's CPU time (one torch thread). On a shared machine the wall time grows with the "
            "load; the CPU time less so, though contention for the caches inflates it too (the per-point runs "
            "took 2.7 times the CPU time here that they took in wall time on the idle machine of issue 14)."
        ),
    ]
    for name, exp in report["experiments"].items():
        model, base, where = exp["model"], exp["baseline"], exp["context"]
        m = where["machine"]
        lines += [
            "",
            (
                f"## {name}: {model['data']} ({model['split']} split), z_dim {model['z_dim']}, "
                f"hidden {model['hidden']}, {model['epochs']} epochs"
            ),
            "",
            (
                f"`{where['command']}` on {where['date']}: {m['device']}, {m['cpus']} CPUs ({m['cpu']}), "
                f"{m['torch_threads']} torch thread(s), torch {m['torch']}, pyro-ppl {m['pyro']}; load average "
                f"(1, 5, 15 min) {m['load_average_before']} before and {m['load_average_after']} after; "
                f"{where['seconds']} s in all."
            ),
            "",
            (
                f"Per-point NUTS (the old algorithm) on {base['points']} points, {base['chains']} chains x "
                f"({base['warmup']} + {base['draws']}) steps: {base['seconds_per_point']:.1f} s "
                f"({_cpu({'cpu_seconds': base['cpu_seconds_per_point']} if 'cpu_seconds_per_point' in base else {})} "
                "CPU s) per point, "
                f"**{base['eff_draws_per_s']:.1f} effective draws/s**, min ESS {base['min_ess_bulk']:.0f}, "
                f"max R-hat {base['max_r_hat']:.4f}, {base['divergences']} divergences, "
                f"{base['mean_n_steps']:.1f} steps per transition. Default block size: {exp['default_block_size']}."
            ),
            "",
            (
                "| run | points | s (CPU s) | eff. draws/s | **speed-up** | ESS/s per point (min / median) | min ESS bulk / tail "
                "| max R-hat (points > 1.01) | divergences (points) | step size | steps/transition |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in exp["runs"]:
            lines.append(
                f"| {r['label']}, {r['chains']} x ({r['warmup']} + {r['draws']}) | {r['points']} | {r['seconds']:.1f} "
                f"({_cpu(r)}) "
                f"| {r['eff_draws_per_s']:.0f} | **{r['speedup']:.1f}x** | {r['ess_per_s_per_point_min']:.1f} / "
                f"{r['ess_per_s_per_point_median']:.1f} | {r['min_ess_bulk']:.0f} / {r['min_ess_tail']:.0f} "
                f"| {r['max_r_hat']:.4f} ({r['points_r_hat_over_1_01']}) | {r['divergences']} ({r['points_with_divergences']}) "
                f"| {r['mean_step_size']:.3f} | {r['mean_n_steps']:.1f} |"
            )
        target = exp["target"]
        if target is None:
            lines += ["", "No target: a smoke run."]
            continue
        met = [r["label"] for r in exp["runs"] if r["meets_target"]]
        goal = f">= {target['speedup']:g}x"
        if "seconds" in target:
            goal += f", under {target['seconds']:g} s"
        if "min_ess_bulk" in target:
            goal += f", min ESS >= {target['min_ess_bulk']:g}"
        if "max_r_hat" in target:
            goal += f", R-hat <= {target['max_r_hat']:g} for every point"
        lines += ["", f"Target {goal}: " + (f"met by {', '.join(met)}." if met else "not met.")]
        if "seconds" in target and any("meets_target_in_cpu_time" in r for r in exp["runs"]):
            met_cpu = [r["label"] for r in exp["runs"] if r.get("meets_target_in_cpu_time")]
            lines[-1] += " In CPU time: " + (f"met by {', '.join(met_cpu)}." if met_cpu else "not met.")
        if "cpu_seconds_per_point" in base:
            # Effective draws per CPU second against the baseline's: less sensitive to a load that changed.
            per_cpu = base["eff_draws_per_s"] * base["seconds_per_point"] / base["cpu_seconds_per_point"]
            lines[-1] += (
                " Speed-up per CPU second: "
                + ", ".join(
                    f"{r['label']} {r['eff_draws_per_s'] * r['seconds'] / r['cpu_seconds'] / per_cpu:.1f}x"
                    for r in exp["runs"]
                    if "cpu_seconds" in r
                )
                + "."
            )
    return "\n".join(lines) + "\n"


def _cpu(row: dict) -> str:
    return f"{row['cpu_seconds']:.1f}" if "cpu_seconds" in row else "n/a"


if __name__ == "__main__":
    main()
