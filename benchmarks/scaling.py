"""Data-parallel scaling: training examples per second for 1..N processes.

Measures ``pyro_vae.fit`` in three forms and writes a JSON file and a markdown table:

- ``plain``: one process, no process group (the baseline);
- ``ddp`` with N processes: ``torchrun --nproc_per_node N`` on this machine, Gloo on
  CPU or NCCL with one GPU per process (``--device cuda``).

Throughput counts the training rows of the timed epochs (not the padding the sharding
adds) over the wall time of rank 0 between two barriers; each configuration runs
``--repeats`` times and the best is kept (the machine may be shared). Speed-up is
relative to ``plain`` with the same threads per process; efficiency is speed-up /
processes. On a busy shared machine wall time says more about the neighbours than about
DDP, so the table also gives examples per CPU-second summed over the processes (training
work plus the cost of communication), which does not depend on how many cores were free. Each process holds ``--batch-size`` rows per step, so the global batch grows
with N: weak scaling of the batch, the usual data-parallel setting.

On CPU every process uses ``--threads`` torch threads (default 1: one core per
process), and one more ``plain`` row shows a single process with torch's default thread
count (all cores), the alternative use of the same machine. The JSON also records the
machine's *parallel capacity*: the summed speed of P independent single-threaded
matrix-multiply loops over the speed of one, the ceiling for any P-process speed-up
(on a shared or virtual machine it can be well below P).

``--batch-size`` takes several values: communication per step is fixed (one all-reduce
of the gradient) while compute grows with the batch, so larger per-process batches
scale better.

CPU, this machine (2 cores):

    python benchmarks/scaling.py --data mnist --data-dir /path/to/mnist --nprocs 1 2

One machine with 8 GPUs:

    python benchmarks/scaling.py --device cuda --data mnist --data-dir DIR --nprocs 1 2 4 8

``--smoke`` runs a seconds-long version (digits, tiny model, plain and 2 processes) for
the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "scaling.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nprocs", type=int, nargs="+", default=[1, 2], help="process counts to launch with torchrun (default: 1 2)"
    )
    p.add_argument("--device", default="cpu", help="cpu (Gloo) or cuda (NCCL, one GPU per process)")
    p.add_argument("--data", default="digits", help="digits, mnist or a .npy/.npz/.csv file (default: digits)")
    p.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (env PYRO_VAE_DATA_DIR)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="encoder widths (default: 256 128)")
    p.add_argument("--z-dim", type=int, default=2)
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[64],
        help="rows per step per process; several values make several groups of rows (default: 64)",
    )
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (default: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU (default: 1)")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration; the fastest is kept (default: 3)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a launch may take (default: 600)")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"JSON results; the table goes next to it as .md (default: {DEFAULT_OUT})",
    )
    p.add_argument("--smoke", action="store_true", help="seconds-long check: digits, tiny model, plain and 2 processes")
    p.add_argument("--worker", metavar="REPORT", type=Path, help=argparse.SUPPRESS)
    return p


def measure(args: argparse.Namespace, batch_size: int, threads: int) -> dict[str, Any]:
    """Train once and time it; under torchrun every rank calls this, rank 0 reports."""
    from pyro_vae import distributed
    from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from pyro_vae.model.build import build_vae
    from pyro_vae.runs.train import load_data, make_transform, resolve_device
    from pyro_vae.training.loop import fit

    if args.device == "cpu":
        torch.set_num_threads(threads)
    config = RunConfig(
        model=ModelConfig(z_dim=args.z_dim, hidden=tuple(args.hidden)),
        data=DataConfig(data=args.data, data_dir=args.data_dir),
        train=TrainConfig(epochs=args.warmup + args.epochs, batch_size=batch_size, device=args.device),
    )
    data = load_data(config)
    config.model = dataclasses.replace(config.model, x_dim=data.x_dim)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    vae = build_vae(config.model).to(device)
    train = torch.from_numpy(data.train).to(device)
    transform = make_transform(config, vae)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.train.lr)
    history = []
    if args.warmup:
        warm = dataclasses.replace(config.train, epochs=args.warmup)
        history = fit(vae, train, None, warm, optimizer=optimizer, transform=transform, progress=False)
    distributed.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(
        vae, train, None, config.train, optimizer=optimizer, transform=transform, history=history, progress=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cpu = torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)
    distributed.barrier()
    seconds = time.perf_counter() - start
    world = distributed.world_size()
    if world > 1:
        torch.distributed.all_reduce(cpu)  # CPU seconds of all processes together
    return {
        "processes": world,
        "device": str(device.type),
        "backend": torch.distributed.get_backend() if distributed.is_initialized() else "none",
        "threads_per_process": torch.get_num_threads(),
        "batch_per_process": batch_size,
        "global_batch": batch_size * world,
        "num_train": int(train.shape[0]),
        "timed_epochs": args.epochs,
        "seconds": seconds,
        "examples_per_s": args.epochs * train.shape[0] / seconds,
        "cpu_seconds_all_processes": float(cpu),
        "examples_per_cpu_s": args.epochs * train.shape[0] / float(cpu),
        "final_train_loss": history[-1].train_loss,
    }


def _worker(args: argparse.Namespace) -> None:
    from pyro_vae import distributed

    distributed.init_from_env(args.timeout)
    row = measure(args, args.batch_size[0], args.threads)
    if distributed.is_main_process():
        args.worker.write_text(json.dumps(row))
    distributed.exit_process(0)


_CAPACITY_LOOP = """
import time, torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
for _ in range(20):
    a @ a
start, n = time.perf_counter(), 0
while time.perf_counter() - start < 5:
    a @ a
    n += 1
print(n / (time.perf_counter() - start))
"""


def parallel_capacity(processes: int) -> float:
    """Summed speed of ``processes`` concurrent single-threaded matmul loops over one loop's."""

    def run(k: int) -> float:
        procs = [
            subprocess.Popen([sys.executable, "-c", _CAPACITY_LOOP], stdout=subprocess.PIPE, text=True)
            for _ in range(k)
        ]
        return sum(float(p.communicate()[0]) for p in procs)

    return run(processes) / run(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: argparse.Namespace, nprocs: int, argv: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nprocs),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            str(Path(__file__).resolve()),
            *argv,
            "--worker",
            str(report),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            raise SystemExit(
                f"scaling: the {nprocs}-process job failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
            )
        return json.loads(report.read_text())


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| mode | processes | device | backend | threads/process | batch/process | global batch | examples/s "
        "| speed-up | efficiency | examples per CPU-s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['processes']} | {r['device']} | {r['backend']} | {r['threads_per_process']} | "
            f"{r['batch_per_process']} | {r['global_batch']} | {r['examples_per_s']:.0f} | {r['speedup']:.2f} | "
            f"{r['efficiency']:.2f} | {r['examples_per_cpu_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one torchrun rank of it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.worker is not None:
        _worker(args)
        return 0
    if args.smoke:
        args.data, args.data_dir, args.hidden, args.nprocs, args.batch_size = "digits", None, [16], [2], [64]
        args.epochs, args.warmup, args.repeats = 1, 0, 1
        argv += [
            "--data",
            "digits",
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--nprocs",
            "2",
            "--repeats",
            "1",
        ]
    default_threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    worker_argv = [a for a in argv if a != "--smoke"]

    def best(run) -> dict[str, Any]:
        runs = [run() for _ in range(args.repeats)]
        row = max(runs, key=lambda r: r["examples_per_s"])
        return {**row, "examples_per_s_all_repeats": [r["examples_per_s"] for r in runs]}

    rows = []
    for bs in args.batch_size:
        group = [{"mode": "plain", **best(lambda bs=bs: measure(args, bs, args.threads))}]
        for n in args.nprocs:
            group.append(
                {"mode": "ddp", **best(lambda n=n, bs=bs: _launch(args, n, [*worker_argv, "--batch-size", str(bs)]))}
            )
        if args.device == "cpu" and default_threads != args.threads and not args.smoke:
            group.append({"mode": "plain", **best(lambda bs=bs: measure(args, bs, default_threads))})
        for r in group:  # relative to one process with the same batch and threads
            r["speedup"] = r["examples_per_s"] / group[0]["examples_per_s"]
            r["efficiency"] = r["speedup"] / r["processes"]
        rows += group
    capacity = {}
    if args.device == "cpu" and not args.smoke:
        capacity = {str(n): parallel_capacity(n) for n in args.nprocs if n > 1}
    report = {
        "benchmark": "data-parallel scaling of pyro_vae.fit (DDP, torchrun)",
        "command": "python benchmarks/scaling.py " + " ".join(argv),
        "machine": {
            "cpu_count": os.cpu_count(),
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "load_average_1min_at_start": load,
            "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "parallel_capacity": capacity,
        },
        "config": {
            "data": args.data,
            "hidden": args.hidden,
            "z_dim": args.z_dim,
            "epochs": args.epochs,
            "warmup": args.warmup,
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = _table(rows)
    notes = "".join(
        f"\nParallel capacity of this machine for {n} processes: {c:.2f} (summed speed of {n} independent "
        "single-threaded matmul loops over one loop's; the ceiling for any speed-up).\n"
        for n, c in capacity.items()
    )
    load_note = (
        f"\nLoad average (1 min) at start {load:.2f}, at end {report['machine']['load_average_1min_at_end']:.2f}.\n"
    )
    args.out.with_suffix(".md").write_text(
        f"# Data-parallel scaling\n\n`{report['command']}`\n\n{table}{notes}{load_note}"
    )
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
