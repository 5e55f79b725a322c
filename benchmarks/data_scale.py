"""Data larger than memory: peak RSS, throughput and time to the first step of training
on memory-mapped uint8 images at 10^5, 10^6 and 10^7 rows.

For each size it writes a synthetic data set in MNIST's layout (IDX files of 28 x 28
uint8 images and their labels, plus 1,000 test images) on local disk, then trains
``pyro_vae.fit`` for ``--steps`` steps in a fresh process per measurement:

- ``mapped``: ``load_dataset("mnist", storage="mapped")``: the images stay in the file,
  each minibatch is gathered as uint8, scaled to [0, 1] and binarized on its own;
- ``mapped+prefetch``: the same with the next minibatch assembled in a background thread
  (``fit(..., prefetch=True)``);
- ``memory``: ``storage="memory"``, the float32 arrays in memory, as before (only where
  they fit: ``--memory-max-rows``);
- ``torchrun x2``: two processes of one ``torchrun`` job on the largest size, mapped, each
  reading its shard; their peak RSS is reported each and summed.

Every process reports its peak RSS (``VmHWM``, which counts the mapped file pages it
touched: an upper bound on what it holds, since those pages are shared with the page
cache and the other processes), the time from its start to the end of the first training
step (loading included), and examples per second over the steps after ``--warmup``. It
also times the assembly of one minibatch alone (gather, convert) in the same process, to
bound what any overlap of assembly with computation (threads, DataLoader workers) could
gain. Variants alternate within each round, ``--rounds`` rounds, medians reported, so
ratios come from the same run on the same (shared) machine.

Never run in CI: the 10^7-row file is 7.8 GB. Run (about 15 minutes on 2 cores):

    nice -n 5 python benchmarks/data_scale.py --rows 100000 1000000 10000000 --steps 300

``--smoke`` runs seconds-long sizes for checking the script. Generated data goes under
``--dir`` (default a fresh folder in the temporary directory) and is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "data_scale"
STARTED = time.perf_counter()  # the process's start, for the time to the first step


# ------------------------------------------------------------------ data


def write_idx(path: Path, rows: int, *, seed: int, block: int = 100_000) -> None:
    """``rows`` synthetic 28 x 28 uint8 images (IDX), written a block at a time.

    Blobs of ink on a blank page (MNIST's mix of zeros and bright pixels): a pool of
    ``block`` random images, written in a new random order per block (generating 10^7
    images afresh would take longer than the measurements).
    """
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(min(block, rows), 784), dtype=np.uint8)
    pool[rng.random(pool.shape) < 0.8] = 0
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.array([rows, 28, 28], dtype=">u4").tobytes())
        for lo in range(0, rows, block):
            n = min(block, rows - lo)
            f.write(pool[rng.permutation(len(pool))[:n]].tobytes())


def make_data(folder: Path, rows: int) -> Path:
    """A folder of MNIST-layout IDX files with ``rows`` training images."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "done").exists():
        return folder
    for prefix, n, seed in (("train", rows, 0), ("t10k", 1_000, 1)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", n, seed=seed)
        labels = np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + np.array([n], dtype=">u4").tobytes() + labels.tobytes()
        )
    (folder / "done").write_text("")
    return folder


# ------------------------------------------------------------------ one measurement (a child process)


class _Done(Exception):
    """Raised by the clock once enough steps have run: ends fit from inside."""


class _Clock:
    """The minibatch transform (dynamic binarization) that also times each step."""

    def __init__(self, steps: int, batch_size: int) -> None:
        from pyro_vae.data.transforms import binarize

        self.binarize = binarize
        self.steps, self.batch_size = steps, batch_size
        self.times: list[float] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.batch_size:  # DDP's probe of 2 rows is not a step
            self.times.append(time.perf_counter())
            if len(self.times) > self.steps:
                raise _Done
        return self.binarize(x, "dynamic")


def _status() -> dict[str, int]:
    """This process's memory from /proc, in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) // 1024
    return out


def worker(args: argparse.Namespace) -> None:
    """Load, train ``--steps`` steps, time a batch's assembly; print (or write) one JSON line."""
    torch.set_num_threads(args.threads)
    from pyro_vae.config import ModelConfig, TrainConfig
    from pyro_vae.data.datasets import load_dataset
    from pyro_vae.data.rows import Rows, TensorRows
    from pyro_vae.model.build import build_vae
    from pyro_vae.training import distributed
    from pyro_vae.training.loop import fit

    if args.distributed:
        distributed.init_from_env(300)
    data = load_dataset("mnist", args.data_dir, seed=0, storage=args.storage)
    train = data.train if isinstance(data.train, Rows) else torch.from_numpy(data.train)
    loaded = time.perf_counter() - STARTED
    after_load = _status()
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=784))
    clock = _Clock(args.steps, args.batch_size)
    try:
        fit(
            vae,
            train,
            None,
            TrainConfig(epochs=1, batch_size=args.batch_size, seed=0),
            transform=clock,
            progress=False,
            prefetch=args.prefetch,
        )
    except _Done:
        pass
    times = clock.times
    timed = times[args.steps] - times[args.warmup]
    # A batch's assembly alone: random rows, gathered and converted, as fit reads them.
    source = train if isinstance(train, Rows) else TensorRows(train)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for _ in range(50):
        source.gather(torch.from_numpy(rng.integers(0, len(source), args.batch_size)), torch.device("cpu"))
    assembly = (time.perf_counter() - start) / 50
    result = {
        "rank": distributed.rank(),
        "load_s": loaded,
        "first_step_s": times[1] - STARTED,
        "examples_per_s": (args.steps - args.warmup) * args.batch_size / timed,
        "step_ms": 1e3 * timed / (args.steps - args.warmup),
        "assembly_ms": 1e3 * assembly,
        "rss_after_load_mb": after_load["VmRSS"],
        **{f"{k}_mb": v for k, v in _status().items()},
        "mapped": data.mapped,
    }
    line = json.dumps(result)
    if args.distributed:
        Path(args.report.replace("RANK", str(distributed.rank()))).write_text(line)
        distributed.barrier()
        distributed.exit_process(0)
    print(line, flush=True)


# ------------------------------------------------------------------ the parent


def _child(args: argparse.Namespace, data_dir: Path, storage: str, prefetch: bool, nprocs: int = 1) -> dict[str, Any]:
    flags = [
        "worker",
        "--data-dir",
        str(data_dir),
        "--storage",
        storage,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ] + ["--prefetch"] * prefetch
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    if nprocs == 1:
        out = subprocess.run([sys.executable, __file__, *flags], capture_output=True, text=True, env=env, check=False)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        report = str(Path(tmp) / "rank-RANK.json")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nprocs),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            __file__,
            *flags,
            "--distributed",
            "--report",
            report,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        ranks = [json.loads(Path(report.replace("RANK", str(r))).read_text()) for r in range(nprocs)]
    return {
        "ranks": ranks,
        "VmHWM_mb": max(r["VmHWM_mb"] for r in ranks),
        "VmHWM_sum_mb": sum(r["VmHWM_mb"] for r in ranks),
        "first_step_s": max(r["first_step_s"] for r in ranks),
        "examples_per_s": sum(r["examples_per_s"] for r in ranks),
        "step_ms": max(r["step_ms"] for r in ranks),
        "assembly_ms": max(r["assembly_ms"] for r in ranks),
        "load_s": max(r["load_s"] for r in ranks),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("worker")
    child.add_argument("--data-dir", required=True)
    child.add_argument("--storage", required=True)
    child.add_argument("--prefetch", action="store_true")
    child.add_argument("--distributed", action="store_true")
    child.add_argument("--report", default="")
    for p in (parser, child):
        p.add_argument("--steps", type=int, default=300)
        p.add_argument("--warmup", type=int, default=20)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--memory-max-rows", type=int, default=1_000_000, help="largest size the in-memory path runs at"
    )
    parser.add_argument(
        "--torchrun-rows", type=int, default=None, help="size of the two-process run; default the largest"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the data is generated (deleted after)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results prefix: writes .json and .md")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "worker":
        worker(args)
        return 0
    if args.smoke:
        args.rows, args.steps, args.warmup, args.rounds, args.batch_size = [3_000], 6, 2, 1, 16
    root = args.dir or Path(tempfile.mkdtemp(prefix="pyro_vae_data_scale_"))
    torchrun_rows = args.torchrun_rows or max(args.rows)
    results: list[dict[str, Any]] = []
    try:
        for rows in args.rows:
            start = time.perf_counter()
            folder = make_data(root / f"n{rows}", rows)
            print(f"{rows:,} rows: data written in {time.perf_counter() - start:.0f} s", flush=True)
            variants = [("mapped", "mapped", False), ("mapped+prefetch", "mapped", True)]
            if rows <= args.memory_max_rows:
                variants.append(("memory", "memory", False))
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
            for _ in range(args.rounds):
                for name, storage, prefetch in variants:
                    runs[name].append(_child(args, folder, storage, prefetch))
                    print(f"  {name}: {json.dumps(runs[name][-1])}", flush=True)
            if rows == torchrun_rows:
                runs["torchrun x2"] = [_child(args, folder, "mapped", False, nprocs=2)]
                print(f"  torchrun x2: {json.dumps(runs['torchrun x2'][-1])}", flush=True)
            memory = _median(runs["memory"])["examples_per_s"] if "memory" in runs else None
            for name, measured in runs.items():
                row = {
                    "rows": rows,
                    "file_gb": rows * 784 / 1e9,
                    "variant": name,
                    **_median(measured),
                    "runs": measured,
                }
                row["vs_memory"] = None if memory is None else row["examples_per_s"] / memory
                results.append(row)
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    meta = {
        "command": "python benchmarks/data_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rounds": args.rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_table(meta, results))
    print(_table(meta, results))
    return 0


def _table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        "# Data larger than memory (`benchmarks/data_scale.py`)",
        "",
        f"`{meta['command']}`; {meta['machine']}; torch {meta['torch']}; batch {meta['batch_size']}, "
        f"{meta['threads']} torch thread(s) per process, {meta['steps']} steps ({meta['warmup']} warm-up), "
        f"median of {meta['rounds']} round(s).",
        "",
        "| rows | file | variant | peak RSS / process | RSS after load | first step | examples/s | vs memory | step | batch assembly |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rss = f"{r['VmHWM_mb']:,.0f} MB"
        if "VmHWM_sum_mb" in r:
            rss += f" ({r['VmHWM_sum_mb']:,.0f} MB both)"
        after = f"{r['rss_after_load_mb']:,.0f} MB" if "rss_after_load_mb" in r else "-"
        ratio = "-" if r["vs_memory"] is None else f"{r['vs_memory']:.3f}"
        lines.append(
            f"| {r['rows']:,} | {r['file_gb']:.2f} GB | {r['variant']} | {rss} | {after} | {r['first_step_s']:.1f} s | "
            f"{r['examples_per_s']:,.0f} | {ratio} | {r['step_ms']:.2f} ms | {r['assembly_ms']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
