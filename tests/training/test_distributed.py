"""Tests of data-parallel training (pyro_vae.training.distributed): DDP on CPU with Gloo, loopback only.

The multi-process tests launch ``python -m torch.distributed.run`` (torchrun) on
127.0.0.1 with two processes, each running this file as a script (``worker`` at the
bottom), and check what the ranks report. The single-process tests use a one-rank Gloo
group inside pytest, which goes through the same DDP code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from pyro_vae import distributed
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.inference.objectives import Objective, TraceELBO
from pyro_vae.model.build import build_vae
from pyro_vae.training import parallel
from pyro_vae.training.loop import fit

ROOT = Path(__file__).resolve().parents[2]
#: Generous bound on a job's start-up (torch + pyro imports on two busy shared cores).
STARTUP_S = 60.0


# ----------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``torchrun --nproc_per_node 2`` on loopback; returns the result and its wall time."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYRO_VAE_DIST_TIMEOUT="60")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep Gloo's pairs on loopback
    for _ in range(3):  # another process may take the free port before torchrun binds it
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            *args,
        ]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if "EADDRINUSE" not in result.stderr:
            break
    return result, time.perf_counter() - start


def _param_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _halves_data() -> torch.Tensor:
    """32 distinct-enough binary rows of 8 features (two prototypes plus noise)."""
    g = torch.Generator().manual_seed(5)
    protos = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    flip = (torch.rand(32, 8, generator=g) < 0.2).float()
    return (protos[torch.arange(32) % 2] + flip) % 2


class PerDatumSeeded(Objective):
    """Trace_ELBO with the noise fixed per data point: eps is drawn from a seed made of
    the row's bytes, so a data point gets the same eps in any batch on any rank.

    The batch loss is ``(num_data / B) * sum_i (-elbo_i)``, written as the mean over rows
    of the one-row losses ``num_data * (-elbo_i)``: the same estimator as ``TraceELBO``.
    """

    def __init__(self) -> None:
        self.inner = TraceELBO(1)

    def loss(self, vae, x, num_data, beta=1.0):
        terms = []
        for row in x:
            seed = int.from_bytes(hashlib.sha256(row.cpu().numpy().tobytes()).digest()[:6], "little")
            torch.manual_seed(seed)
            terms.append(self.inner.loss(vae, row[None], num_data, beta))
        return torch.stack(terms).mean()


def _halves_fit(batch_size: int) -> tuple[torch.nn.Module, list[float]]:
    """Two epochs of plain SGD with the per-datum-seeded objective; SGD (not Adam, whose
    first step is nearly lr * sign(g)) makes the update proportional to the gradient.
    Returns the model and the training loss that fit reported for each epoch."""
    x = _halves_data()
    torch.manual_seed(11)
    vae = build_vae(ModelConfig(x_dim=8, z_dim=2, hidden=(6,)))
    config = TrainConfig(epochs=2, batch_size=batch_size, seed=3)
    history = fit(
        vae,
        x,
        None,
        config,
        objective=PerDatumSeeded(),
        optimizer=torch.optim.SGD(vae.parameters(), lr=0.05),
        progress=False,
    )
    return vae, [h.train_loss for h in history]


def _first_step_gradients(rows: torch.Tensor, num_data: int, replica=None) -> dict[str, torch.Tensor]:
    """The gradient of one per-datum-seeded loss on ``rows``: through ``replica`` (a
    DataParallel, which all-reduces it) or, without one, of this process alone."""
    torch.manual_seed(11)
    vae = build_vae(ModelConfig(x_dim=8, z_dim=2, hidden=(6,)))
    if replica is None:
        loss = PerDatumSeeded().loss(vae, rows, num_data)
    else:
        wrapped = replica(vae)  # kept alive through backward: its reducer does the all-reduce
        loss = wrapped.loss(rows, num_data, 1.0)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in vae.named_parameters()}


def _one_rank_group(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))


# ------------------------------------------------------------------ in-process tests
def test_defaults_without_a_process_group():
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.rank_seed(123, 0) == 123 and distributed.rank_seed(123, 1) != 123
    assert distributed.run_on_main(lambda: "x") == "x"
    assert type(parallel.parallelism(None, None, torch.zeros(1, 1), 1)) is parallel.Parallelism
    distributed.barrier()  # no group: returns at once
    assert not distributed.init_from_env(5)  # not under torchrun: nothing to join


def test_timeout_resolution(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.resolve_timeout() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed.resolve_timeout() == 12.5
    assert distributed.resolve_timeout(3) == 3.0  # the flag wins over the environment
    for bad in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="--dist-timeout must be a positive"):
            distributed.resolve_timeout(bad)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=distributed.TIMEOUT_ENV):
        distributed.resolve_timeout()


def test_one_rank_group_trains_exactly_like_one_process(tmp_path, tiny_binary):
    """World size 1 goes through DDP, the sharding and the all-reduces, and must give the
    bit-identical parameters and history of plain training (rank 0 keeps the seed)."""
    config = TrainConfig(epochs=2, batch_size=16, seed=4)
    model = ModelConfig(x_dim=6, z_dim=2, hidden=(8,))

    def run() -> tuple[str, list]:
        torch.manual_seed(0)
        vae = build_vae(model)
        optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
        # Two calls on the same model, as a resume does: the first call's DDP is gone.
        history = fit(
            vae,
            tiny_binary[:48],
            tiny_binary[48:],
            TrainConfig(epochs=1, batch_size=16, seed=4),
            optimizer=optimizer,
            progress=False,
        )
        history = fit(
            vae, tiny_binary[:48], tiny_binary[48:], config, optimizer=optimizer, history=history, progress=False
        )
        return _param_hash(vae), [(h.train_loss, h.val_elbo) for h in history]

    plain = run()
    _one_rank_group(tmp_path)
    try:
        assert distributed.world_size() == 1
        in_group = run()
    finally:
        dist.destroy_process_group()
    assert in_group == plain


def test_unused_parameter_is_found_and_training_works(tmp_path, tiny_binary):
    """A parameter the loss never touches would make DDP's reducer fail on the second
    step; the probe finds it and turns on ``find_unused_parameters``."""
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    vae.decoder.spare = torch.nn.Parameter(torch.zeros(3))  # never used by model or guide
    _one_rank_group(tmp_path)
    try:
        objective = TraceELBO(1)
        assert parallel.parallelism(vae, objective, tiny_binary[:2], 64).find_unused_parameters
        history = fit(vae, tiny_binary, None, TrainConfig(epochs=2, batch_size=16), progress=False)
        assert len(history) == 2 and all(torch.isfinite(torch.tensor(h.train_loss)) for h in history)
        assert torch.equal(vae.decoder.spare, torch.zeros(3))
        torch.manual_seed(0)
        used = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
        assert not parallel.DataParallel(used, objective, tiny_binary[:2], 64).find_unused_parameters
    finally:
        dist.destroy_process_group()


def test_data_parallel_needs_a_group(tiny_binary):
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,)))
    with pytest.raises(ConfigError, match="torchrun"):
        parallel.DataParallel(vae, TraceELBO(1), tiny_binary[:2], 64)


# ------------------------------------------------------------------ two-process tests
def test_two_ranks_train_resume_and_match_one_process(tmp_path):
    """One torchrun job, two ranks: the CLI trains and resumes, the 2 x B/2 check and
    every component combination run. See ``_worker_main`` for what each rank records."""
    result, _ = _torchrun([str(Path(__file__)), "worker", "main", str(tmp_path)], timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["status"] == reports[1]["status"] == [0, 0, 2, 0], result.stderr[-3000:]
    run_dir = tmp_path / "run"

    # Parameters bit-identical across ranks at every step (each loss call sees the
    # parameters the previous step left) and after the last step of each fit.
    steps = reports[0]["hashes"]
    assert len(steps) >= 30 and steps == reports[1]["hashes"]
    assert reports[0]["after_fit"] == reports[1]["after_fit"] and len(reports[0]["after_fit"]) == 2

    # The loss falls; the resumed run continued to epoch 3, exactly as a run that was
    # never interrupted (same losses, bit-identical weights).
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in lines]
    assert len(losses) == 3 and losses[-1] < losses[0]
    straight = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[1:]
    assert [line.split(",")[:3] for line in straight] == [line.split(",")[:3] for line in lines]
    resumed, uninterrupted = (load_file(tmp_path / d / "model.safetensors") for d in ("run", "straight"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)

    # On a memory-mapped file each rank reads only its shard's rows (the first epoch's
    # 3 minibatches of 10 per rank: disjoint halves of the 60 training rows), and trains
    # exactly as on the same rows in memory, validation included.
    first_epoch = [{row for batch in r["mapped"]["read"][:3] for row in batch} for r in reports]
    assert len(first_epoch[0]) == len(first_epoch[1]) == 30 and not first_epoch[0] & first_epoch[1]
    assert first_epoch[0] | first_epoch[1] == set(range(60)) and all(len(r["mapped"]["read"]) == 6 for r in reports)
    for r in reports:
        assert (
            r["mapped"]["histories"]["mapped"]
            == r["mapped"]["histories"]["memory"]
            == reports[0]["mapped"]["histories"]["memory"]
        )

    # Only rank 0 wrote run files; a second `train --out RUN` failed on both ranks.
    assert reports[1]["writes"] == []
    written = {Path(p).name for p in reports[0]["writes"]}
    assert {
        "config.json",
        "model.safetensors",
        "training_state.pt",
        "metrics.csv",
        "summary.json",
        "loss.png",
    } <= written

    # 2 processes x batch B/2 == 1 process x batch B, with the noise fixed per data point
    # (four SGD steps; float32, so a tolerance a little above rounding)...
    reference, reference_losses = _halves_fit(batch_size=16)
    for r in (0, 1):
        ranked = torch.load(tmp_path / f"halves-{r}.pt", weights_only=True)
        for name, p in reference.state_dict().items():
            torch.testing.assert_close(ranked[name], p, rtol=1e-5, atol=1e-6, msg=name)
        # ...and the training loss fit reports on every rank is the one-process loss of the
        # global batch (the mean over processes, weighted by the global rows), not the
        # rank's own half: no sampling error, since both see the same data and noise.
        assert reports[r]["halves_losses"] == pytest.approx(reference_losses, rel=1e-5, abs=0)
    # The comparisons are sensitive: one process with batch B/2 (twice the steps, each
    # half the size) ends elsewhere, with another loss in the second epoch.
    alone, alone_losses = _halves_fit(batch_size=8)
    assert any(not torch.allclose(alone.state_dict()[k], v, atol=1e-4) for k, v in reference.state_dict().items())
    assert alone_losses[1] != pytest.approx(reference_losses[1], rel=1e-3)

    # DDP's gradient scaling, one step, no optimizer: the gradient each rank holds after
    # backward through DataParallel on its 8 rows of a 16-row batch is the one-process
    # gradient of all 16 rows (the mean over ranks of num_data / 8-scaled losses), not
    # the sum over ranks (twice as large) nor the rank's own half.
    x = _halves_data()[:16]
    whole = _first_step_gradients(x, 32)
    for r in (0, 1):
        ranked = torch.load(tmp_path / f"grads-{r}.pt", weights_only=True)
        assert ranked.keys() == whole.keys()
        for name, g in whole.items():
            torch.testing.assert_close(ranked[name], g, rtol=1e-5, atol=1e-6, msg=name)
    own_half = _first_step_gradients(x[0::2], 32)
    assert any(not torch.allclose(own_half[k], g, atol=1e-4) for k, g in whole.items())

    # Every prior, guide, likelihood and objective trains data-parallel: finite loss,
    # parameters identical on both ranks.
    combos = reports[0]["components"]
    assert combos and all(c["ok"] for c in combos), [c for c in combos if not c["ok"]]
    # ... and so does every model family, with its labels sharded alongside the rows.
    assert {"--condition-on labels", "--condition-on semisupervised", "--top-dim 2"} <= {c["what"] for c in combos}


@pytest.mark.parametrize("failure", ["raise", "stall"])
def test_a_failing_rank_ends_the_job(tmp_path, failure):
    """Rank 1 raises (or hangs) at its 4th step; the job exits non-zero within the
    timeout (5 s here) instead of hanging, and says which rank stopped."""
    timeout = 5
    result, seconds = _torchrun([str(Path(__file__)), "worker", failure, str(tmp_path), str(timeout)], timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert seconds < timeout + STARTUP_S, seconds
    if failure == "raise":
        assert "injected failure on rank 1" in output
    else:
        # Rank 0 gave up waiting for rank 1 in a collective after --dist-timeout.
        assert "pyro-vae: error (rank 0 of 2)" in output and "Timed out" in output, output[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_scaling_benchmark_smoke(tmp_path):
    """benchmarks/scaling.py --smoke: one process and a two-process torchrun job on CPU."""
    out = tmp_path / "scaling.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["mode"], r["processes"]) for r in report["results"]}
    assert rows == {("plain", 1), ("ddp", 2)}
    for r in report["results"]:
        assert r["examples_per_s"] > 0 and r["efficiency"] > 0
    assert "| processes |" in out.with_suffix(".md").read_text()


# -------------------------------------------------------------- the torchrun workers
def _record_writes_under(folder: Path, writes: list[str]) -> None:
    """Record every file creation, write or rename under ``folder`` (audit hooks see
    ``open`` from Python and ``os.open``, ``os.rename``/``os.replace``, ``os.remove``)."""
    root = str(folder.resolve())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            paths = [path] if writing else []
        elif event in ("os.rename", "os.remove", "os.mkdir"):
            paths = [args[0], args[1]] if event == "os.rename" else [args[0]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, os.PathLike)) and os.path.abspath(os.fspath(p)).startswith(root):
                writes.append(os.fspath(p))

    sys.addaudithook(hook)


class _Recording(Objective):
    """Wraps an objective; records a hash of the parameters at each loss call."""

    hashes: list[str] = []

    def __init__(self, inner: Objective) -> None:
        self.inner = inner
        self.supports_beta = inner.supports_beta

    def loss(self, vae, x, num_data, beta=1.0):
        _Recording.hashes.append(_param_hash(vae))
        return self.inner.loss(vae, x, num_data, beta)

    def check(self, vae) -> None:
        self.inner.check(vae)


class _Failing(Objective):
    """Wraps an objective; on rank 1, the 4th loss call raises or hangs."""

    calls = 0

    def __init__(self, inner: Objective, how: str) -> None:
        self.inner, self.how = inner, how
        self.supports_beta = inner.supports_beta

    def loss(self, vae, x, num_data, beta=1.0):
        _Failing.calls += 1
        if distributed.rank() == 1 and _Failing.calls == 5:  # the probe is call 1
            if self.how == "raise":
                raise RuntimeError("injected failure on rank 1")
            time.sleep(600)
        return self.inner.loss(vae, x, num_data, beta)

    def check(self, vae) -> None:
        self.inner.check(vae)


def _component_runs(rank: int) -> list[dict]:
    """Train every prior, guide, likelihood and objective (one at a time, the others at
    their defaults) for one short epoch; compare the parameters across ranks."""
    from pyro_vae.inference import objectives
    from pyro_vae.model import build

    x = _halves_data()
    runs = []
    for field, table in (
        ("prior", build.PRIORS),
        ("guide", build.GUIDES),
        ("likelihood", build.LIKELIHOODS),
        ("elbo", objectives.OBJECTIVES),
    ):
        for name in sorted(table):
            model = ModelConfig(x_dim=8, z_dim=2, hidden=(6,), prior_components=3)
            train = TrainConfig(epochs=1, batch_size=4, particles=2, seed=1)
            if field == "elbo":
                train.elbo = name
            else:
                setattr(model, field, name)
            try:
                objectives.check_compatible(model, train)
            except ConfigError:
                continue  # a pair refused before training (the semi-supervised ELBO needs its own VAE)
            torch.manual_seed(rank)  # different on purpose: DDP must broadcast rank 0's weights
            vae = build_vae(model)
            vae.likelihood.check_support(x)
            history = fit(vae, x, x[:8], train, objective=objectives.build_objective(train), progress=False)
            hashes = [None, None]
            dist.all_gather_object(hashes, _param_hash(vae))
            finite = all(torch.isfinite(torch.tensor([h.train_loss, h.val_elbo])).all() for h in history)
            runs.append({"what": f"--{field} {name}", "ok": bool(finite and hashes[0] == hashes[1])})
    # The model families, each with what it trains on: a label per row (a conditional
    # VAE), labels known for every other row (M2, its enumerated objective), a second
    # stochastic layer.
    labels = torch.arange(len(x)) % 2  # the prototype of each row
    known = torch.where(torch.arange(len(x)) % 4 == 0, labels, torch.full_like(labels, -1))
    families = (
        ("--condition-on labels", {"condition": "labels", "num_classes": 2}, "trace", labels),
        ("--condition-on semisupervised", {"condition": "semisupervised", "num_classes": 2}, "semisupervised", known),
        ("--top-dim 2", {"top_dim": 2, "top_hidden": (4,)}, "trace", None),
    )
    for what, fields, elbo, y in families:
        model = ModelConfig(x_dim=8, z_dim=2, hidden=(6,), **fields)
        train = TrainConfig(epochs=1, batch_size=4, seed=1, elbo=elbo)
        objectives.check_compatible(model, train)
        torch.manual_seed(rank)
        vae = build_vae(model)
        val_y = None if y is None else y[:8]
        history = fit(
            vae, x, x[:8], train, objective=objectives.build_objective(train), y=y, val_y=val_y, progress=False
        )
        hashes = [None, None]
        dist.all_gather_object(hashes, _param_hash(vae))
        finite = all(torch.isfinite(torch.tensor([h.train_loss, h.val_elbo])).all() for h in history)
        runs.append({"what": what, "ok": bool(finite and hashes[0] == hashes[1])})
    return runs


def _mapped_runs(out: Path) -> dict:
    """Train on a memory-mapped .npy and on the same rows as tensors; record the rows this
    rank's minibatches read from the file."""
    import numpy as np

    from pyro_vae.data import datasets as D
    from pyro_vae.data.rows import ArrayRows

    path = out / "mapped.npy"
    if distributed.rank() == 0:
        np.save(path, np.random.default_rng(0).integers(0, 2, size=(80, 8)).astype(np.uint8))
    distributed.barrier()
    read: list[list[int]] = []

    class Recording(ArrayRows):
        def read(self, index):
            if not isinstance(index, slice):  # a minibatch (fit's shape checks read slices)
                read.append(np.asarray(index).tolist())
            return super().read(index)

    histories = {}
    for storage in ("memory", "mapped"):
        data = D.load_dataset(str(path), storage=storage, seed=0, val_fraction=0.25)  # 60 training rows
        if data.mapped:
            train, val = Recording(data.train._array, index=data.train._index, file=data.train.file), data.val
        else:
            train, val = torch.from_numpy(data.train), torch.from_numpy(data.val)
        torch.manual_seed(0)
        vae = build_vae(ModelConfig(x_dim=8, z_dim=2, hidden=(6,)))
        history = fit(vae, train, val, TrainConfig(epochs=2, batch_size=10, seed=1), progress=False)
        histories[storage] = [[h.train_loss, h.val_elbo] for h in history]
    return {"read": read, "histories": histories}


def _worker_main(out: Path) -> None:
    from pyro_vae import cli
    from pyro_vae.inference import objectives
    from pyro_vae.runs import train as runner

    distributed.init_from_env(60)
    rank = distributed.rank()
    run_dir = out / "run"
    writes: list[str] = []
    _record_writes_under(out / "run", writes)
    make_trace = objectives.OBJECTIVES["trace"]
    objectives.OBJECTIVES["trace"] = lambda t: _Recording(make_trace(t))
    after_fit = []
    plain_fit = runner.fit

    def recording_fit(vae, *args, **kwargs):
        history = plain_fit(vae, *args, **kwargs)
        after_fit.append(_param_hash(vae))
        return history

    runner.fit = recording_fit
    flags = ["--hidden", "16", "--batch-size", "64", "--no-progress"]
    status = [cli.main(["train", "--epochs", "2", "--out", str(run_dir), *flags])]
    status.append(cli.main(["train", "--resume", str(run_dir), "--epochs", "3", "--no-progress"]))
    status.append(cli.main(["train", "--epochs", "1", "--out", str(run_dir), *flags]))  # not empty: refused
    objectives.OBJECTIVES["trace"] = make_trace
    runner.fit = plain_fit
    # The same three epochs without the interruption, for comparison with the resumed run.
    status.append(cli.main(["train", "--epochs", "3", "--out", str(out / "straight"), *flags]))

    halves, halves_losses = _halves_fit(batch_size=8)  # per process: global batch 16
    torch.save(halves.state_dict(), out / f"halves-{rank}.pt")
    grads = _first_step_gradients(
        _halves_data()[:16][rank::2],
        32,
        replica=lambda vae: parallel.DataParallel(vae, PerDatumSeeded(), _halves_data()[:2], 32),
    )
    torch.save(grads, out / f"grads-{rank}.pt")
    components = _component_runs(rank)
    report = {
        "hashes": _Recording.hashes,
        "after_fit": after_fit,
        "writes": sorted(set(writes)),
        "status": status,
        "components": components,
        "halves_losses": halves_losses,
        "mapped": _mapped_runs(out),
    }
    (out / f"report-{rank}.json").write_text(json.dumps(report))
    distributed.barrier()
    distributed.exit_process(0)


def _worker_failure(out: Path, how: str, timeout: str) -> int:
    from pyro_vae import cli
    from pyro_vae.inference import objectives

    make_trace = objectives.OBJECTIVES["trace"]
    objectives.OBJECTIVES["trace"] = lambda t: _Failing(make_trace(t), how)
    argv = ["train", "--hidden", "8", "--epochs", "3", "--batch-size", "32", "--out", str(out / "run")]
    return cli.main([*argv, "--no-progress", "--dist-timeout", timeout])


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    scenario, folder = sys.argv[2], Path(sys.argv[3])
    if scenario == "main":
        _worker_main(folder)
    else:
        raise SystemExit(_worker_failure(folder, scenario, sys.argv[4]))
