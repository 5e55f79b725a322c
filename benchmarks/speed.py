"""Training speed of pyro_vae against a plain-PyTorch reference, interleaved in one process.

For each device, architecture and batch size, ``pyro_vae.fit`` (default objective: Pyro's
``Trace_ELBO`` run as a traced graph) and the reference (:mod:`reference_vae`: identical
networks, estimator, optimizer and data pipeline, no Pyro) train on the same rows in
alternating blocks, starting from the same weights; ``fit`` with ``--elbo trace-eager``
(Pyro's ``Trace_ELBO`` as a Python program, every step) is the third contestant. Each
block is a whole ``fit`` epoch over the block's rows, so fit's own per-step work (shuffle,
binarization, the finite-loss check) is in the time. Reported per configuration:

- ``examples_per_s`` of pyro_vae and of the reference (the median block);
- ``ratio``: pyro_vae's time over the reference's for the same work, the median over
  rounds of the paired per-round ratio (1.0 is parity, larger is slower); an epoch is
  N / B identical steps, so this is the ratio of time per epoch; ``eager_ratio`` the same
  for ``--elbo trace-eager``;
- ``peak_rss_mb``: peak resident memory of a fresh process while it trains the block
  with that implementation alone (the peak is reset after the imports, the data and the
  model, on Linux), and ``baseline_rss_mb`` the resident memory at that moment (torch,
  Pyro and pyro_vae are imported in both); on CUDA also ``peak_cuda_mb``, the
  allocator's peak.

Then how time grows with the number of particles (vectorized), the latent size and the
data set size (time per epoch of full epochs), at 784-400-50 and batch 128. Results go
to ``benchmarks/results/speed.json`` (a list of rows) and ``speed.md`` (markdown tables).

    python benchmarks/speed.py --data-dir /path/to/mnist     # MNIST train images
    python benchmarks/speed.py --synthetic                   # generated data, same shape
    python benchmarks/speed.py --smoke --out /tmp/speed      # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyro
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reference_vae import ReferenceVAE, train_epoch  # noqa: E402

import pyro_vae  # noqa: E402, F401  (imported with torch and Pyro, so the memory baseline holds all three)
from pyro_vae.config import ModelConfig, TrainConfig  # noqa: E402
from pyro_vae.data.datasets import default_data_dir, load_mnist  # noqa: E402
from pyro_vae.data.transforms import binarize  # noqa: E402
from pyro_vae.inference.objectives import build_objective  # noqa: E402
from pyro_vae.model.build import build_vae  # noqa: E402
from pyro_vae.training.loop import fit  # noqa: E402

#: name -> (hidden widths, z_dim, activation)
ARCHS: dict[str, tuple[tuple[int, ...], int, str]] = {
    "784-400-50": ((400,), 50, "relu"),  # Pyro's VAE tutorial
    "784-200-200-50": ((200, 200), 50, "tanh"),  # Burda et al. 2015
}
X_DIM = 784
LR = 1e-3
IMPLS = ("pyro_vae", "reference", "pyro_vae_eager")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (default: env PYRO_VAE_DATA_DIR)")
    p.add_argument("--synthetic", action="store_true", help="generated data of MNIST's shape instead of MNIST")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda when present)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timed blocks per contestant (default: 7)")
    p.add_argument(
        "--block-rows", type=int, default=4096, help="rows per timed block, at least 8 steps (default: 4096)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--no-scaling", action="store_true", help="skip the particles / latent size / data size sweeps")
    p.add_argument("--particles", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--latent-sizes", type=int, nargs="+", default=[2, 10, 50, 200])
    p.add_argument("--data-sizes", type=int, nargs="+", default=[1000, 10000, 60000])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for speed.json and speed.md (default: benchmarks/results; with --smoke a temporary folder)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for the test suite)")
    p.add_argument("--child", nargs=4, metavar=("IMPL", "ARCH", "BATCH", "DEVICE"), help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------ contestants


class Contestant:
    """One implementation training one model; ``block(rows, seed)`` runs one epoch over ``rows``."""

    def __init__(
        self, impl: str, arch: str, device: torch.device, *, z_dim: int | None = None, particles: int = 1
    ) -> None:
        hidden, arch_z, activation = ARCHS[arch]
        z_dim = z_dim or arch_z
        torch.manual_seed(0)  # the same initial weights for every contestant
        vae = build_vae(ModelConfig(x_dim=X_DIM, z_dim=z_dim, hidden=hidden, activation=activation))
        self.impl, self.device, self.particles = impl, device, particles
        if impl == "reference":
            self.model: torch.nn.Module = ReferenceVAE(X_DIM, hidden, z_dim, activation)
            missing, unexpected = self.model.load_state_dict(vae.state_dict(), strict=False)
            assert not missing and all(k.startswith("prior.") for k in unexpected), (missing, unexpected)
        else:
            self.model = vae
            elbo = "trace" if impl == "pyro_vae" else "trace-eager"
            self.objective = build_objective(TrainConfig(elbo=elbo, particles=particles))
        self.model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)

    def block(self, rows: torch.Tensor, batch_size: int, seed: int) -> None:
        if self.impl == "reference":
            train_epoch(self.model, rows, self.optimizer, batch_size, seed=seed, particles=self.particles)
        else:
            config = TrainConfig(epochs=1, batch_size=batch_size, lr=LR, seed=seed, particles=self.particles)
            fit(
                self.model,
                rows,
                config=config,
                objective=self.objective,
                optimizer=self.optimizer,
                transform=lambda x: binarize(x, "dynamic"),
                progress=False,
            )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(
    contestants: dict[str, Contestant], rows: torch.Tensor, batch_size: int, rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per block of every contestant, alternating the order each round."""
    names = list(contestants)
    for name in names:  # warm-up: traces the graphs, fills caches
        contestants[name].block(rows, batch_size, seed=10_000)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(_timed(lambda name=name, r=r: contestants[name].block(rows, batch_size, seed=r), device))
    return times


def _paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


# ---------------------------------------------------------------------- peak memory


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM, the peak resident set, so that the
    # peak of the training alone is seen, not that of the imports before it.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(impl: str, arch: str, batch_size: int, device_name: str, block_rows: int) -> None:
    """Train one block in this (fresh) process and print its peak memory as JSON."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    rows = (torch.rand(block_rows, X_DIM) ** 3).to(device)  # values in [0, 1], mostly dark
    contestant = Contestant(impl, arch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset = _reset_peak_rss()
    baseline = _status_mb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    contestant.block(rows, batch_size, seed=0)
    _sync(device)
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"baseline_rss_mb": baseline, "peak_rss_mb": peak}
    if device.type == "cuda":
        report["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(report))


def peak_memory(
    impl: str, arch: str, batch_size: int, device: torch.device, block_rows: int, threads: int
) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        arch,
        str(batch_size),
        str(device),
        "--block-rows",
        str(block_rows),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ the sweeps


def batch_table(
    args: argparse.Namespace, data: torch.Tensor, device: torch.device, meta: dict[str, Any]
) -> list[dict[str, Any]]:
    rows_out = []
    for arch in args.archs:
        contestants = {impl: Contestant(impl, arch, device) for impl in IMPLS}
        for batch_size in args.batch_sizes:
            block = max(8 * batch_size, args.block_rows // batch_size * batch_size)
            rows = data[:block].to(device)
            times = interleaved(contestants, rows, batch_size, args.rounds, device)
            row = {
                **meta,
                "experiment": "batch_size",
                "device": device.type,
                "arch": arch,
                "batch_size": batch_size,
                "particles": 1,
                "z_dim": ARCHS[arch][1],
                "rows_per_block": block,
                "rounds": args.rounds,
                "examples_per_s": block / statistics.median(times["pyro_vae"]),
                "reference_examples_per_s": block / statistics.median(times["reference"]),
                "eager_examples_per_s": block / statistics.median(times["pyro_vae_eager"]),
                "ratio": _paired_ratio(times["pyro_vae"], times["reference"]),
                "eager_ratio": _paired_ratio(times["pyro_vae_eager"], times["reference"]),
                "ms_per_step": 1e3 * statistics.median(times["pyro_vae"]) / (block / batch_size),
                "reference_ms_per_step": 1e3 * statistics.median(times["reference"]) / (block / batch_size),
            }
            if not args.no_memory and not (args.smoke and rows_out):  # smoke: the first cell only
                mine = peak_memory("pyro_vae", arch, batch_size, device, block, args.threads)
                ref = peak_memory("reference", arch, batch_size, device, block, args.threads)
                row["peak_rss_mb"], row["reference_peak_rss_mb"] = mine["peak_rss_mb"], ref["peak_rss_mb"]
                # After the imports (torch, Pyro, pyro_vae: the same in both children) and the data.
                row["baseline_rss_mb"], row["reference_baseline_rss_mb"] = (
                    mine["baseline_rss_mb"],
                    ref["baseline_rss_mb"],
                )
                if device.type == "cuda":
                    row["peak_cuda_mb"], row["reference_peak_cuda_mb"] = mine["peak_cuda_mb"], ref["peak_cuda_mb"]
            else:
                row["peak_rss_mb"] = row["reference_peak_rss_mb"] = math.nan
            rows_out.append(row)
            print(_row_line(row), flush=True)
    return rows_out


def scaling(
    args: argparse.Namespace, data: torch.Tensor, device: torch.device, meta: dict[str, Any]
) -> list[dict[str, Any]]:
    arch, batch_size = "784-400-50", 128 if not args.smoke else 16
    out = []
    sweeps = [("particles", p, {"particles": p}) for p in args.particles]
    sweeps += [("z_dim", z, {"z_dim": z}) for z in args.latent_sizes]
    for experiment, value, kwargs in sweeps:
        contestants = {impl: Contestant(impl, arch, device, **kwargs) for impl in ("pyro_vae", "reference")}
        block = max(8 * batch_size, args.block_rows // batch_size * batch_size)
        times = interleaved(contestants, data[:block].to(device), batch_size, max(3, args.rounds // 2), device)
        out.append(_scaling_row(meta, experiment, value, arch, batch_size, device, block, times, kwargs))
        print(_row_line(out[-1]), flush=True)
    for n in args.data_sizes:
        contestants = {impl: Contestant(impl, arch, device) for impl in ("pyro_vae", "reference")}
        times = interleaved(contestants, data[:n].to(device), batch_size, 2, device)
        out.append(_scaling_row(meta, "data_size", n, arch, batch_size, device, n, times, {}))
        print(_row_line(out[-1]), flush=True)
    return out


def _scaling_row(meta, experiment, value, arch, batch_size, device, rows, times, kwargs) -> dict[str, Any]:
    return {
        **meta,
        "experiment": experiment,
        "value": value,
        "device": device.type,
        "arch": arch,
        "batch_size": batch_size,
        "particles": kwargs.get("particles", 1),
        "z_dim": kwargs.get("z_dim", ARCHS[arch][1]),
        "rows_per_block": rows,
        "seconds_per_block": statistics.median(times["pyro_vae"]),
        "reference_seconds_per_block": statistics.median(times["reference"]),
        "examples_per_s": rows / statistics.median(times["pyro_vae"]),
        "reference_examples_per_s": rows / statistics.median(times["reference"]),
        "ratio": _paired_ratio(times["pyro_vae"], times["reference"]),
        "peak_rss_mb": math.nan,
    }


# ------------------------------------------------------------------------- reporting


def _row_line(row: dict[str, Any]) -> str:
    label = f"{row['experiment']}={row.get('value', row['batch_size'])}"
    return (
        f"{row['device']:4s} {row['arch']:15s} {label:18s} pyro_vae {row['examples_per_s']:9.0f} ex/s   "
        f"reference {row['reference_examples_per_s']:9.0f} ex/s   ratio {row['ratio']:.3f}"
        + (f"   eager ratio {row['eager_ratio']:.3f}" if "eager_ratio" in row else "")
    )


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}, pyro {meta['pyro']}; {meta['threads']} CPU thread(s); "
        f"data: {meta['data']}; {meta['rounds']} interleaved rounds per cell, medians.",
        "",
        "| device | arch | batch | pyro_vae ex/s | reference ex/s | ratio | eager Trace_ELBO ratio | pyro_vae ms/step | ref ms/step | peak RSS MB, pyro_vae / ref (+ training over imports) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["experiment"] != "batch_size":
            continue
        mem = "-"
        if not math.isnan(r["peak_rss_mb"]):
            mem = (
                f"{r['peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} "
                f"(+{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} / +{r['reference_peak_rss_mb'] - r['reference_baseline_rss_mb']:.0f})"
            )
        if "peak_cuda_mb" in r:
            mem += f" (CUDA {r['peak_cuda_mb']:.0f} / {r['reference_peak_cuda_mb']:.0f})"
        lines.append(
            f"| {r['device']} | {r['arch']} | {r['batch_size']} | {r['examples_per_s']:.0f} | {r['reference_examples_per_s']:.0f} | "
            f"**{r['ratio']:.2f}** | {r['eager_ratio']:.2f} | {r['ms_per_step']:.2f} | {r['reference_ms_per_step']:.2f} | {mem} |"
        )
    for experiment, title in (
        ("particles", "particles K (vectorized)"),
        ("z_dim", "latent size"),
        ("data_size", "data set size N (s per epoch)"),
    ):
        sub = [r for r in rows if r["experiment"] == experiment]
        if not sub:
            continue
        lines += [
            "",
            f"Scaling with the {title}, {sub[0]['arch']}, batch {sub[0]['batch_size']}:",
            "",
            f"| device | {experiment} | pyro_vae s/block | reference s/block | rows/block | ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in sub:
            lines.append(
                f"| {r['device']} | {r['value']} | {r['seconds_per_block']:.3f} | {r['reference_seconds_per_block']:.3f} | "
                f"{r['rows_per_block']} | {r['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    n = max([args.block_rows * 2, *(args.data_sizes if not args.no_scaling else [])])
    if args.synthetic:
        torch.manual_seed(0)
        return torch.rand(n, X_DIM) ** 3, "synthetic (MNIST's shape)"
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        raise SystemExit("speed.py: pass --data-dir DIR (MNIST IDX files) or set PYRO_VAE_DATA_DIR, or use --synthetic")
    train_x, _, _, _ = load_mnist(data_dir)
    return torch.from_numpy(train_x[:n]), "MNIST train images"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # as in training: Pyro's checks are for debugging
    if args.child:
        impl, arch, batch, device = args.child
        _child(impl, arch, int(batch), device, args.block_rows)
        return 0
    if args.smoke:
        args.synthetic, args.batch_sizes, args.rounds, args.block_rows = True, [8], 1, 32
        args.particles, args.latent_sizes, args.data_sizes = [1, 2], [2], [64]
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="speed-smoke-")) if args.smoke else HERE / "results"
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    data, data_name = load_data(args)
    meta = {
        "machine": machine_description(),
        "threads": args.threads,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "data": data_name,
        "rounds": args.rounds,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in devices:
        device = torch.device(name)
        rows += batch_table(args, data, device, meta)
        if not args.no_scaling:
            rows += scaling(args, data, device, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows, meta)
    (args.out / "speed.md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.out / 'speed.json'} and {args.out / 'speed.md'} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
