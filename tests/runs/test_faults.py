"""Fault injection: what a run directory promises under kills, damage, races and I/O faults.

The command-line guide's table "What a run directory promises" (docs/guides/cli.md) is this file's summary. Every test
runs tiny runs (80 rows, one hidden layer of 8, 2 epochs); the figure functions are
replaced by stubs that write a few bytes through the same ``atomic_write`` (matplotlib
costs far more than the writes under test, and the write windows stay the same).

Kills, races and permissions run in forked children: ``SIGKILL`` at a chosen write, two
processes at once, and, when the tests run as root (who ignores permissions), a child
that drops to ``nobody`` so that a read-only folder is really read-only.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback

import numpy as np
import pytest
import torch
import tqdm.auto
import tqdm.std

import pyro_vae.runs.evaluate  # noqa: F401  (imported before any fork: children run it)
import pyro_vae.runs.export  # noqa: F401
from pyro_vae.cli import main
from pyro_vae.data.datasets import load_digits
from pyro_vae.errors import CheckpointError, IntegrityError
from pyro_vae.files import LOCK_FILE, MANIFEST, atomic_write, check_folder, clean_strays
from pyro_vae.runs import train as train_module
from pyro_vae.runs.checkpoint import load_run, load_training_state, save_training_state
from pyro_vae.runs.train import resume_run

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork, /proc and flock semantics of Linux")

FAST = ["--epochs", "2", "--hidden", "8", "--batch-size", "40", "--z-dim", "3", "--no-progress"]
FIGURES = ("loss.png", "reconstructions.png", "samples.png")
FINAL = ("summary.json", *FIGURES)


def _stub_figure(*args, **kwargs):
    atomic_write(args[-1], b"\x89PNG stub " + str(args[-1]).encode())


@pytest.fixture(scope="module", autouse=True)
def _stub_figures():
    with pytest.MonkeyPatch.context() as m:
        # fsync only matters when the machine loses power, which no test can stage; a kill
        # leaves the page cache as it was. Without it these tests run several times faster.
        m.setattr(os, "fsync", lambda fd: None)
        # Forking a process with threads can deadlock the child. The only thread here is
        # tqdm's monitor, which a progress bar starts even when disabled: none, then.
        for cls in {tqdm.std.tqdm, tqdm.auto.tqdm}:
            monitor = cls.__dict__.get("monitor")
            if monitor is not None:
                monitor.exit()
            m.setattr(cls, "monitor", None)
            m.setattr(cls, "monitor_interval", 0)
        for name in ("plot_history", "plot_reconstructions", "plot_samples", "plot_latent"):
            m.setattr(train_module, name, _stub_figure)
        m.setattr(pyro_vae.runs.export, "plot_samples", _stub_figure)
        yield


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    # World-readable, for the tests that run as nobody.
    folder = tempfile.mkdtemp(prefix="pyro-vae-faults-")
    os.chmod(folder, 0o755)
    x, _ = load_digits()
    np.save(os.path.join(folder, "d.npy"), x[:80])
    yield os.path.join(folder, "d.npy")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def scratch():
    """A folder that a child running as nobody can enter (pytest's tmp_path is root-only)."""
    folder = tempfile.mkdtemp(prefix="pyro-vae-faults-")
    os.chmod(folder, 0o777)
    yield folder
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(folder, ignore_errors=True)


def train_argv(data_file, run, *extra):
    return ["train", "--data", data_file, "--out", str(run), *FAST, *extra]


def in_child(fn, *, unprivileged=False, timeout=120):
    """Run ``fn()`` (returning an exit status) in a forked process.

    Returns:
        ``(status, signal, output)``: the exit status or the signal that killed it, and
        what it wrote to stdout and stderr.
    """
    out = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        sys.stdout = sys.stderr = buffer = io.StringIO()
        try:
            if unprivileged and os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)  # nobody: permissions apply again
            code = fn()
        except BaseException:
            buffer.write(traceback.format_exc())
        finally:
            out.write(buffer.getvalue().encode())
            out.flush()
            os._exit(code if isinstance(code, int) else 70)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("a child process hung")
        time.sleep(0.005)
    out.seek(0)
    text = out.read().decode()
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status), text
    return os.WEXITSTATUS(status), None, text


def one_error_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), text
    return lines[0]


def snapshot(folder):
    return {
        p: open(os.path.join(folder, p), "rb").read()
        for p in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, p))
    }


def history(run):
    return [(h["epoch"], h["train_loss"], h["val_elbo"]) for h in load_training_state(run)["history"]]


def assert_intact(run):
    """Every file the manifest lists is there and matches; no temporary file is left."""
    found = check_folder(run)
    assert found is not None and not found.damaged and not found.missing, found
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_file):
    """An uninterrupted run: its history and weights, and its count of renames."""
    run = tmp_path_factory.mktemp("reference") / "run"
    counts = {"replace": [], "write": []}

    def count():
        _count_writes(str(run), counts)
        status = main(train_argv(data_file, run))
        with open(run / "counts.json.txt", "w") as f:  # not a run file: read back below
            json.dump(counts, f)
        return status

    status, sig, text = in_child(count)
    assert status == 0, text
    counts = json.loads((run / "counts.json.txt").read_text())
    (run / "counts.json.txt").unlink()
    _, vae = load_run(run)
    return {"history": history(run), "weights": vae.state_dict(), "counts": counts, "run": run}


def _target(path, run):
    return os.path.dirname(os.path.abspath(path)) == run


def _count_writes(run, counts):
    real_replace, real_write = os.replace, os.write

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if _target(dst, run):
            counts["replace"].append(os.path.basename(dst))

    def write(fd, data):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if _target(name, run) and name.endswith(".tmp"):
            counts["write"].append(os.path.basename(name).rsplit(".", 2)[0].lstrip("."))
        return real_write(fd, data)

    os.replace, os.write = replace, write


def _kill_at(run, *, replace=None, write=None):
    """In a child: SIGKILL right after the ``replace``-th rename into ``run``, or halfway
    through the ``write``-th write of a temporary file there."""
    real_replace, real_write = os.replace, os.write
    seen = {"replace": 0, "write": 0}

    def replace_(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if _target(dst, run):
            seen["replace"] += 1
            if seen["replace"] == replace:
                os.kill(os.getpid(), signal.SIGKILL)

    def write_(fd, data):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if _target(name, run) and name.endswith(".tmp"):
            seen["write"] += 1
            if seen["write"] == write:
                real_write(fd, bytes(data)[: max(1, len(data) // 2)])
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    os.replace, os.write = replace_, write_


def _recover_and_compare(run, data_file, reference, where):
    """After a kill: the directory verifies, and finishing it gives the uninterrupted run."""
    found = check_folder(run)
    if found is not None:
        assert not found.damaged and not found.missing, (where, found)
    if (run / "config.json").is_file():
        result = resume_run(run, progress=False)
    else:
        # Killed before config.json: no run yet. Resume says so; a new train takes the folder.
        with pytest.raises(CheckpointError, match="holds no run"):
            resume_run(run, progress=False)
        assert main(train_argv(data_file, run)) == 0, where
        result = None
    assert history(run) == reference["history"], where
    _, vae = load_run(run)
    for key, value in reference["weights"].items():
        assert torch.equal(vae.state_dict()[key], value), (where, key)
    assert all((run / name).is_file() for name in FINAL), where
    assert_intact(run)
    return result


def test_a_kill_inside_any_write_window_loses_nothing(tmp_path, data_file, reference):
    """SIGKILL after every rename of a run (file, pending manifest, committed manifest) and
    halfway through the first write of each file: the directory verifies, and resuming
    it gives the uninterrupted run bit for bit.

    The renames: the claim's manifest; config.json (pending manifest, file, manifest);
    each epoch's checkpoint (pending manifest, state, weights, metrics, manifest); each
    figure and summary.json (pending manifest, file, manifest). Windows that repeat one
    already hit are left out, to keep the test fast: the second and third figures (written
    as the first), and the second epoch's checkpoint but for the moment between its
    first and second file (new state, old weights and metrics).
    """
    renames = reference["counts"]["replace"]
    assert renames.count("training_state.pt") == 2 and renames.count("summary.json") == 1
    # A figure's rename with the manifest's pending and commit renames around it.
    dropped = {k + d for k, name in enumerate(renames, start=1) if name in FIGURES[1:] for d in (-1, 0, 1)}
    second = [k for k, name in enumerate(renames, start=1) if name == "training_state.pt"][1]
    commit = next(k for k in range(second + 1, len(renames) + 1) if renames[k - 1] == MANIFEST)
    dropped |= {second - 1, *range(second + 1, commit + 1)}
    points = [{"replace": k} for k in range(1, len(renames) + 1) if k not in dropped]
    # Halfway through a temporary file: the claim's manifest, config.json, a checkpoint's
    # first file and summary.json.
    first_write = {}
    for i, name in enumerate(reference["counts"]["write"], start=1):
        if name in (MANIFEST, "config.json", "training_state.pt", "summary.json"):
            first_write.setdefault(name, i)
    points += [{"write": j} for j in sorted(first_write.values())]
    assert len(points) >= 18
    for point in points:
        run = tmp_path / "_".join(f"{k}{v}" for k, v in point.items())

        def killed(point=point, run=run):
            _kill_at(str(run), **point)
            return main(train_argv(data_file, run))

        status, sig, text = in_child(killed)
        assert sig == signal.SIGKILL, (point, status, text)
        _recover_and_compare(run, data_file, reference, point)


def test_leftover_temporary_files_never_block_and_are_removed(tmp_path, data_file, reference):
    run = tmp_path / "run"
    run.mkdir()
    # What a kill during the first write of config.json leaves: a temporary file only.
    (run / ".config.json.abcd1234.tmp").write_text('{"model": ')
    assert main(train_argv(data_file, run)) == 0
    assert_intact(run)
    (run / ".training_state.pt.zz99yy88.tmp").write_bytes(b"\x00" * 1000)
    (run / ".model.safetensors.q1w2e3r4.tmp").write_bytes(b"\x00" * 1000)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert_intact(run)
    (run / ".metrics.csv.aaaaaaaa.tmp").write_text("x")
    assert main(train_argv(data_file, run, "--overwrite")) == 0
    assert_intact(run)
    # A live writer's temporary file (locked) is left alone.
    import fcntl

    fd = os.open(run / ".summary.json.livelive.tmp", os.O_CREAT | os.O_WRONLY, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert clean_strays(run) == []
        assert (run / ".summary.json.livelive.tmp").exists()
    finally:
        os.close(fd)
    assert clean_strays(run) == [".summary.json.livelive.tmp"]


FILES = (
    "config.json",
    "model.safetensors",
    "training_state.pt",
    "metrics.csv",
    "summary.json",
    *FIGURES,
    "evaluation.json",
    MANIFEST,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_file):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_argv(data_file, run)) == 0
    assert main(["evaluate", str(run), "--iw-samples", "2", "--no-progress"]) == 0
    return run


@pytest.mark.parametrize("name", FILES)
def test_a_flipped_byte_in_any_file_is_caught(name, finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    good = snapshot(run)
    data = bytearray((run / name).read_bytes())
    at = len(data) // 2
    data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
    (run / name).write_bytes(bytes(data))
    capsys.readouterr()
    if name == MANIFEST:
        with pytest.raises(IntegrityError, match="manifest.json' is damaged"):
            check_folder(run)
    else:
        assert check_folder(run).damaged == [name]
    # A reader of the file refuses it with one line naming it; the others are not fooled.
    evaluate = main(["evaluate", str(run), "--iw-samples", "2", "--no-progress"])
    err = capsys.readouterr().err
    if name in ("config.json", "model.safetensors", MANIFEST):
        assert evaluate == 2 and name in one_error_line(err)
    else:
        assert evaluate == 0, err
    # Resume rebuilds what it can from training_state.pt and refuses the rest.
    status = main(["train", "--resume", str(run), "--no-progress"])
    captured = capsys.readouterr()
    if name in ("config.json", "training_state.pt", MANIFEST):
        assert status == 2 and name in one_error_line(captured.err)
        assert "does not match its checksum" in captured.err or "is damaged" in captured.err
        return
    assert status == 0, captured.err
    if name == "evaluation.json":  # derived by `evaluate`, which rewrites it
        assert main(["evaluate", str(run), "--iw-samples", "2", "--no-progress"]) == 0
    else:
        assert "rebuilt from training_state.pt" in captured.out and name in captured.out
    assert_intact(run)
    if name in ("model.safetensors", "metrics.csv"):  # rebuilt from training_state.pt: the very bytes
        assert (run / name).read_bytes() == good[name]


def test_a_damaged_config_is_rebuilt_once_deleted(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    good = (run / "config.json").read_bytes()
    (run / "config.json").write_text((run / "config.json").read_text().replace('"lr": 0.001', '"lr": 0.5'))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "delete it and run `pyro-vae train --resume" in capsys.readouterr().err  # an edit is refused, not ignored
    (run / "config.json").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "config.json" in capsys.readouterr().out
    assert (run / "config.json").read_bytes() == good


def test_resume_of_a_finished_run_rebuilds_its_final_files(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name in FINAL:
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "summary.json" in out
    assert all((run / name).is_file() for name in FINAL)
    assert_intact(run)
    # Nothing missing: still a success, and nothing is rewritten.
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "every file is intact" in capsys.readouterr().out
    assert snapshot(run) == before


def test_resume_with_a_new_learning_rate_applies_it(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--lr", "0.0005", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.0005
    assert all(g["lr"] == 0.0005 for g in load_training_state(run)["optimizer"]["param_groups"])


def test_a_mismatched_training_state_is_named_in_full(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    from pyro_vae import ModelConfig, build_vae

    other = build_vae(ModelConfig(x_dim=64, z_dim=3, hidden=(9,)))
    save_training_state(run, other, torch.optim.Adam(other.parameters()), load_training_state(run)["history"])
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "training_state.pt' does not match the run's config.json (shape mismatch" in line


def _race(data_file, run, delay):
    """Two `train --out run` at once (the second ``delay`` s later); their outcomes."""
    go_r, go_w = os.pipe()

    def racer():
        os.read(go_r, 1)
        return main(train_argv(data_file, run))

    children = []
    for i in range(2):
        out = tempfile.TemporaryFile()
        pid = os.fork()
        if pid == 0:
            sys.stdout = sys.stderr = buffer = io.StringIO()
            code = 70
            try:
                if i == 1:
                    time.sleep(delay)
                code = racer()
            except BaseException:
                buffer.write(traceback.format_exc())
            out.write(buffer.getvalue().encode())
            out.flush()
            os._exit(code)
        children.append((pid, out))
    os.write(go_w, b"xx")
    results = []
    for pid, out in children:
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        results.append((os.WEXITSTATUS(status), out.read().decode()))
    os.close(go_r)
    os.close(go_w)
    return results


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_two_processes_on_one_out_one_wins_one_is_told(delay, data_file, tmp_path, reference):
    run = tmp_path / "run"
    results = _race(data_file, run, delay)
    statuses = sorted(status for status, _ in results)
    assert statuses == [0, 2], results
    loser = next(text for status, text in results if status == 2)
    line = one_error_line(loser)
    assert "in use by another pyro-vae process" in line or "exists and is not empty" in line
    assert_intact(run)
    assert history(run) == reference["history"]


def test_resume_while_training_is_refused(data_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(data_file, run)) == 0
    from pyro_vae.files import lock_folder

    lock = lock_folder(run)  # as a training process holds it
    try:
        status, _, text = in_child(lambda: main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]))
        assert status == 2 and f"pid {os.getpid()}" in one_error_line(text)
        status, _, text = in_child(lambda: main(train_argv(data_file, run, "--overwrite")))
        assert status == 2 and "in use by another pyro-vae process" in one_error_line(text)
    finally:
        lock.release()


def test_fresh_run_directories_never_collide(data_file, scratch):
    def fresh():
        os.chdir(scratch)
        return main(["train", "--data", data_file, *FAST])

    results = [in_child(fresh) for _ in range(2)]  # the same second: the second takes -2
    assert [status for status, _, _ in results] == [0, 0], results
    runs = sorted(os.listdir(os.path.join(scratch, "runs")))
    assert len(runs) == 2
    for name in runs:
        assert_intact(os.path.join(scratch, "runs", name))


def _read_only(folder):
    """Make ``folder`` and everything in it read-only (for its owner too)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        os.chmod(root, 0o555)


@pytest.mark.parametrize(
    "case",
    ["new_out_inside", "empty_out", "resume", "overwrite", "fresh_in_cwd", "evaluate", "encode", "sample"],
)
def test_a_read_only_folder_gets_one_line_and_loses_nothing(case, data_file, scratch):
    run = os.path.join(scratch, "run")
    assert main(train_argv(data_file, run)) == 0
    os.mkdir(os.path.join(scratch, "empty"))
    _read_only(scratch)
    before = {p: snapshot(os.path.join(scratch, p)) for p in ("run", "empty")}
    argv = {
        "new_out_inside": train_argv(data_file, os.path.join(scratch, "new")),
        "empty_out": train_argv(data_file, os.path.join(scratch, "empty")),
        "resume": ["train", "--resume", run, "--epochs", "3", "--no-progress"],
        "overwrite": train_argv(data_file, run, "--overwrite"),
        "fresh_in_cwd": ["train", "--data", data_file, *FAST],
        "evaluate": ["evaluate", run, "--iw-samples", "2", "--no-progress"],
        "encode": ["encode", run, "--out", os.path.join(scratch, "e.npz")],
        "sample": ["sample", run, "-n", "4", "--out", os.path.join(scratch, "s.png")],
    }[case]

    def attempt():
        os.chdir(scratch)
        return main(argv)

    status, _, text = in_child(attempt, unprivileged=True)
    line = one_error_line(text)
    assert status == 2
    assert "ermission denied" in line or "not writable" in line or "read-only" in line, line
    assert {p: snapshot(os.path.join(scratch, p)) for p in ("run", "empty")} == before
    assert not os.path.exists(os.path.join(scratch, "new"))


@pytest.mark.parametrize("case", ["data", "config"])
def test_an_unreadable_file_gets_one_line(case, data_file, scratch):
    run = os.path.join(scratch, "run")
    assert main(train_argv(data_file, run)) == 0
    data = os.path.join(scratch, "d.npy")
    shutil.copy(data_file, data)
    os.chmod(data if case == "data" else os.path.join(run, "config.json"), 0)
    argv = train_argv(data, os.path.join(scratch, "new")) if case == "data" else ["evaluate", run, "--no-progress"]
    status, _, text = in_child(lambda: main(argv), unprivileged=True)
    line = one_error_line(text)
    assert status == 2 and "Permission denied" in line and ("d.npy" if case == "data" else "config.json") in line


def _disk_full_after(run, writes):
    """``os.write`` into ``run`` fails with ENOSPC after ``writes`` writes, as on a full disk."""
    real = os.write
    seen = {"n": 0}

    def write(fd, data):
        if _target(os.readlink(f"/proc/self/fd/{fd}"), str(run)):
            seen["n"] += 1
            if seen["n"] > writes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    return write


@pytest.mark.parametrize("writes", [2, 9, 20])  # during config.json, epoch 1, the final files
def test_a_full_disk_keeps_the_last_checkpoint(writes, data_file, tmp_path, reference, monkeypatch, capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(os, "write", _disk_full_after(run, writes))
        status = main(train_argv(data_file, run))
    line = one_error_line(capsys.readouterr().err)
    assert status == 2 and "No space left on device" in line, line
    if (run / "config.json").exists():
        assert "--resume" in line
        assert_intact(run)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    else:
        assert main(train_argv(data_file, run)) == 0
    assert history(run) == reference["history"]
    assert_intact(run)


def test_a_full_disk_while_evaluating(finished, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    with monkeypatch.context() as m:
        m.setattr(os, "write", _disk_full_after(run, 0))
        status = main(["evaluate", str(run), "--iw-samples", "2", "--no-progress"])
    line = one_error_line(capsys.readouterr().err)
    assert status == 2 and "no space left on the disk" in line and "evaluation.json" in line
    assert snapshot(run) == before


def test_output_into_a_closed_pipe_ends_quietly(finished):
    def piped():
        read_end, write_end = os.pipe()
        os.close(read_end)
        os.dup2(write_end, 1)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        status = main(["evaluate", str(finished), "--iw-samples", "2", "--no-progress"])
        sys.stdout.flush()  # what Python does at exit: must not raise again
        return status

    status, _, text = in_child(piped)
    assert status == 0 and text == "", text


def test_divergence_without_a_nan_is_stopped_and_the_guard_can_be_turned_off(data_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(data_file, run, "--lr", "100")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "divergence guard" in line and "--no-divergence-guard" in line
    assert "no epoch completed before it, so there is no checkpoint" in line and "epoch 0" not in line
    assert main(train_argv(data_file, tmp_path / "off", "--lr", "100", "--no-divergence-guard")) == 0


def test_a_nan_in_the_first_epoch_says_there_is_no_checkpoint(data_file, tmp_path, monkeypatch, capsys):
    from pyro_vae.inference.objectives import TraceELBO

    real = TraceELBO.loss
    monkeypatch.setattr(TraceELBO, "loss", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    assert main(train_argv(data_file, tmp_path / "run")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "loss became nan at epoch 1" in line and "there is no checkpoint" in line and "(epoch 0)" not in line
    # The folder holds the config only; resume starts it from the beginning.
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0


def test_lock_file_and_manifest_are_the_only_additions(finished):
    names = set(os.listdir(finished))
    assert {MANIFEST, LOCK_FILE} <= names
    assert stat.S_ISREG(os.stat(finished / LOCK_FILE).st_mode)
