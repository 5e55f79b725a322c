"""The command line end to end on tiny data, and every bad input's exit status 2."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.data.datasets import load_digits

FAST = ["--epochs", "2", "--hidden", "16", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    x, labels = load_digits()
    np.save(folder / "digits.npy", x[:240])
    np.save(folder / "wide.npy", np.random.default_rng(0).random((20, 65), dtype=np.float32))
    bad = x[:50].copy()
    bad[3, 5] = np.nan
    np.save(folder / "nan.npy", bad)
    np.save(folder / "big.npy", x[:50] * 16)  # pixel counts 0..16, outside [0, 1]
    (folder / "empty.csv").write_text("")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(data_dir / "digits.npy"), "--out", str(run), *FAST]) == 0
    return run


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_prints_the_elbo_and_the_run_directory(tmp_path, data_dir, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", str(data_dir / "digits.npy"), "--out", str(run), "--z-dim", "3", *FAST]) == 0
    out = capsys.readouterr().out
    assert "held-out ELBO per data point:" in out and f"run directory: {run}" in out
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["z_dim"] == 3 and config["model"]["hidden"] == [16]
    assert config["model"]["x_dim"] == 64 and config["data"]["image_shape"] == [8, 8]  # 64 features: a square
    assert not (run / "latent.png").exists()  # only drawn for a 2-D latent


def test_evaluate_encode_sample(trained, tmp_path, data_dir, capsys):
    assert main(["evaluate", str(trained), "--iw-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "validation split of" in out and "24 rows" in out and "ELBO" in out and "{" not in out  # no JSON dump

    assert main(["encode", str(trained), "--data", str(data_dir / "digits.npy"), "--out", str(tmp_path / "e.npz")]) == 0
    enc = np.load(tmp_path / "e.npz")
    assert enc["loc"].shape == enc["scale"].shape == (240, 2) and (enc["scale"] > 0).all()

    assert main(["encode", str(trained), "--out", str(tmp_path / "e.csv")]) == 0
    csv = np.loadtxt(tmp_path / "e.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3, 4, 5))
    assert (tmp_path / "e.csv").read_text().startswith("split,row,mu_1,mu_2,sigma_1,sigma_2")
    assert csv.shape == (240, 5)  # the run's own data (train + val): row, mu, sigma
    splits = np.loadtxt(tmp_path / "e.csv", delimiter=",", skiprows=1, usecols=0, dtype=str)
    assert (splits == "train").sum() == 216 and (splits == "val").sum() == 24

    assert main(["sample", str(trained), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (5, 64) and ((samples >= 0) & (samples <= 1)).all()
    assert main(["sample", str(trained), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_python_dash_m_works_the_same(trained, tmp_path):
    """``python -m pyro_vae`` and the ``pyro-vae`` console script: the same exit status,
    the same output (up to the file named) and the same file, for a command that works
    and for one that fails."""
    script = Path(sys.executable).with_name("pyro-vae")
    assert script.is_file(), f"no console script beside {sys.executable}: pip install -e ."

    def both(*args: str) -> list[subprocess.CompletedProcess]:
        runs = []
        for name, launcher in (("module", [sys.executable, "-m", "pyro_vae"]), ("script", [str(script)])):
            argv = [a.replace("OUT", str(tmp_path / name)) for a in args]
            proc = subprocess.run([*launcher, *argv], capture_output=True, text=True, timeout=120)
            proc.stdout, proc.stderr = (
                text.replace(str(tmp_path / name), "OUT") for text in (proc.stdout, proc.stderr)
            )
            runs.append(proc)
        return runs

    module, console = both("sample", str(trained), "-n", "3", "--seed", "5", "--out", "OUT.npy")
    assert module.returncode == console.returncode == 0, module.stderr + console.stderr
    assert module.stdout == console.stdout and module.stderr == console.stderr
    a, b = np.load(tmp_path / "module.npy"), np.load(tmp_path / "script.npy")
    assert a.shape == (3, 64) and np.array_equal(a, b)

    module, console = both("sample", str(tmp_path / "no-such-run"), "--out", "OUT-2.npy")
    assert module.returncode == console.returncode == 2
    assert module.stderr == console.stderr and "no-such-run" in module.stderr
    assert module.stdout == console.stdout == ""


def _mnist_dir(tmp_path, corrupt: bool):
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = lambda *dims: bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)  # noqa: E731
    for prefix, n in (("train", 20), ("t10k", 5)):
        images = header(n, 4, 4) + bytes(n * 16)
        if corrupt and prefix == "train":
            images = images[:-7]  # truncated
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header(n) + bytes(n)))
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_features", "expected x of shape (batch, 64), got (20, 65)"),
        ("nan", "NaN"),
        ("outside_support", "needs data in [0, 1]"),
        ("empty", "empty"),
        ("missing_idx", "train-images-idx3-ubyte"),
        ("corrupt_idx", "truncated"),
        ("non_empty_out", "exists and is not empty; pass --overwrite"),
        ("mismatched_config", "config.json' does not match its checksum in manifest.json"),  # edited by hand
        ("unknown_name", "invalid choice"),
        ("bad_value", "--z-dim must be >= 1"),
        ("existing_encode_out", "exists; pass --overwrite"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_touches_nothing(case, message, tmp_path, data_dir, trained, capsys):
    run = tmp_path / "out"
    d = lambda name: str(data_dir / name)  # noqa: E731
    argv = {
        "wrong_features": ["encode", str(trained), "--data", d("wide.npy"), "--out", str(tmp_path / "e.npz")],
        "nan": ["train", "--data", d("nan.npy"), "--out", str(run), *FAST],
        "outside_support": ["train", "--data", d("big.npy"), "--out", str(run), *FAST],
        "empty": ["train", "--data", d("empty.csv"), "--out", str(run), *FAST],
        "missing_idx": ["train", "--data", "mnist", "--data-dir", str(tmp_path), "--out", str(run), *FAST],
        "corrupt_idx": [
            "train",
            "--data",
            "mnist",
            "--data-dir",
            str(_mnist_dir(tmp_path, True)) if case == "corrupt_idx" else "",
            "--out",
            str(run),
            *FAST,
        ],
        "non_empty_out": ["train", "--data", d("digits.npy"), "--out", str(trained), *FAST],
        "mismatched_config": ["evaluate", str(tmp_path / "copy")],
        "unknown_name": ["train", "--likelihood", "gamma", "--out", str(run)],
        "bad_value": ["train", "--z-dim", "0", "--out", str(run)],
        "existing_encode_out": ["encode", str(trained), "--out", str(tmp_path / "exists.npz")],
    }[case]
    if case == "mismatched_config":
        (tmp_path / "copy").mkdir()
        for f in trained.iterdir():
            (tmp_path / "copy" / f.name).write_bytes(f.read_bytes())
        raw = json.loads((tmp_path / "copy" / "config.json").read_text())
        raw["model"]["z_dim"] = 3
        (tmp_path / "copy" / "config.json").write_text(json.dumps(raw))
    if case == "existing_encode_out":
        (tmp_path / "exists.npz").write_bytes(b"keep me")
    before_run, before_tmp = snapshot(trained), snapshot(tmp_path)
    if case == "unknown_name":
        with pytest.raises(SystemExit) as exc:
            main(argv)
        status = exc.value.code
    else:
        status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert message in err, err
    if case != "unknown_name":
        assert err.startswith("pyro-vae: error: ") and len(err.splitlines()) == 1
    assert snapshot(trained) == before_run
    assert snapshot(tmp_path) == before_tmp
    assert not run.exists()


def test_resume_rejects_changed_settings(trained, capsys):
    assert main(["train", "--resume", str(trained), "--z-dim", "4"]) == 2
    assert "--resume takes its settings from RUN_DIR/config.json" in capsys.readouterr().err


def test_overwrite_replaces_a_run(tmp_path, data_dir):
    run = tmp_path / "r"
    assert main(["train", "--data", str(data_dir / "digits.npy"), "--out", str(run), *FAST]) == 0
    (run / "notes.txt").write_text("mine")
    assert (
        main(["train", "--data", str(data_dir / "digits.npy"), "--out", str(run), "--overwrite", "--seed", "3", *FAST])
        == 0
    )
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3
    assert (run / "notes.txt").read_text() == "mine"  # files that are not the run's are left alone


def test_threads_option(trained, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["sample", str(trained), "-n", "2", "--out", str(tmp_path / "t.npy"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["sample", str(trained), "-n", "2", "--out", str(tmp_path / "u.npy"), "--threads", "0"]) == 2
        assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
