"""Benchmark-style data end to end: named splits, test scoring, kept models, paths, shapes."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from pyro_vae import ConfigError, DataError, load_dataset
from pyro_vae.cli import main
from pyro_vae.data.datasets import resolve_image_shape
from pyro_vae.runs.checkpoint import load_run
from pyro_vae.runs.train import DataScaleWarning

FAST = ["--hidden", "16", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Digits as a benchmark set would come: one .npz with train/valid/test and labels."""
    folder = tmp_path_factory.mktemp("sets")
    x, y = load_dataset("digits", val_fraction=0.1).train, load_dataset("digits", val_fraction=0.1).train_labels
    np.savez(
        folder / "sets.npz",
        train=x[:300],
        train_labels=y[:300],
        valid=x[300:340],
        test=x[340:400],
        test_labels=y[340:400],
    )
    np.save(folder / "train.npy", x[:300])
    np.save(folder / "valid.npy", x[300:340])
    np.save(folder / "test.npy", x[340:400].reshape(60, 8, 8))
    return folder


def test_a_split_archive_gives_its_own_splits(sets):
    data = load_dataset(str(sets / "sets.npz"))
    assert (data.train.shape, data.val.shape, data.test.shape) == ((300, 64), (40, 64), (60, 64))
    assert data.train_labels.shape == (300,) and data.val_labels is None and data.test_labels.shape == (60,)
    assert data.image_shape == (8, 8)  # 64 features: a square image
    separate = load_dataset(str(sets / "train.npy"), val_data=str(sets / "valid.npy"), test_data=str(sets / "test.npy"))
    assert np.array_equal(separate.val, data.val) and np.array_equal(separate.test, data.test)
    # Without a validation split, a random 10 % of the training rows is held out, as before.
    assert load_dataset(str(sets / "train.npy")).val.shape == (30, 64)


def test_split_errors_name_the_problem(sets, tmp_path):
    np.savez(tmp_path / "no_train.npz", valid=np.zeros((3, 4)), test=np.zeros((3, 4)))
    with pytest.raises(DataError, match=r"holds the split\(s\) \['test', 'valid'\] but no 'train'"):
        load_dataset(str(tmp_path / "no_train.npz"))
    np.savez(tmp_path / "mixed.npz", train=np.zeros((3, 4)), test=np.zeros((3, 5)))
    with pytest.raises(DataError, match="different numbers of features"):
        load_dataset(str(tmp_path / "mixed.npz"))
    np.save(tmp_path / "narrow.npy", np.zeros((5, 10), dtype=np.float32))
    with pytest.raises(DataError, match="test rows .* have 10 features but the training rows 64"):
        load_dataset(str(sets / "train.npy"), test_data=str(tmp_path / "narrow.npy"))


def test_image_shapes():
    assert resolve_image_shape(784, None) == (28, 28) and resolve_image_shape(12, None) is None
    assert resolve_image_shape(560, [28, 20]) == (28, 20)
    with pytest.raises(ConfigError, match=r"`image_shape` \[3, 3\] does not fit rows of 10 features"):
        resolve_image_shape(10, (3, 3))


def test_train_on_named_splits_then_evaluate_the_test_split_from_anywhere(sets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(sets)  # relative paths, resolved when the run starts
    run = tmp_path / "run"
    assert main(["train", "--data", "sets.npz", "--epochs", "3", "--out", str(run), *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["data"] == str(sets / "sets.npz")  # stored absolute
    assert config["data"]["image_shape"] == [8, 8]
    monkeypatch.chdir(tmp_path)  # another working directory: the run still finds its data
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "test split of" in out and "60 rows" in out
    report = json.loads((run / "evaluation.json").read_text())
    assert report["split"] == "test" and report["num_points"] == 60
    # Any compatible data and split.
    assert (
        main(["evaluate", str(run), "--iw-samples", "5", "--data", str(sets / "train.npy"), "--split", "validation"])
        == 0
    )
    report = json.loads((run / "evaluation.json").read_text())
    assert report["split"] == "validation" and report["num_points"] == 30 and report["data"] == str(sets / "train.npy")
    assert main(["evaluate", str(run), "--data", str(sets / "train.npy"), "--split", "test"]) == 2
    assert "has no test split" in capsys.readouterr().err
    # A moved data file: one line that says which option fixes it.
    moved = tmp_path / "elsewhere.npz"
    os.replace(sets / "sets.npz", moved)
    try:
        assert main(["evaluate", str(run), "--iw-samples", "5"]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and "--data" in err
        assert main(["evaluate", str(run), "--iw-samples", "5", "--data", str(moved)]) == 0
    finally:
        os.replace(moved, sets / "sets.npz")


def _metrics(run):
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def test_keep_best_keeps_the_best_validation_epoch_and_resume_reproduces_it(sets, tmp_path):
    flags = ["--data", str(sets / "train.npy"), "--val-data", str(sets / "valid.npy"), "--lr", "0.03", *FAST]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--epochs", "8", "--out", str(straight), *flags]) == 0
    rows = _metrics(straight)
    best = max(rows, key=lambda r: r["val_elbo"])
    assert [r["epoch"] for r in rows if r["kept"] == 1] == [best["epoch"]]
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["keep"] == "best" and summary["kept_epoch"] == best["epoch"]
    assert summary["val_elbo_per_datum"] == pytest.approx(best["val_elbo"], abs=1e-6)
    # The saved model is the kept epoch's: its validation ELBO is the recorded one.
    from pyro_vae import evaluate_elbo
    from pyro_vae.runs.train import load_data, make_transform

    config, vae = load_run(straight)
    data = load_data(config)
    val_elbo = evaluate_elbo(
        vae, torch.from_numpy(data.val), seed=config.train.seed, transform=make_transform(config, vae)
    )
    assert val_elbo == pytest.approx(best["val_elbo"], abs=1e-4)
    # Interrupted after 4 epochs and resumed to 8: the same history and the same kept model.
    assert main(["train", "--epochs", "4", "--out", str(split), *flags]) == 0
    assert main(["train", "--resume", str(split), "--epochs", "8", "--no-progress"]) == 0
    assert _metrics(split) == [{**r, "seconds": s["seconds"]} for r, s in zip(rows, _metrics(split), strict=True)]
    _, resumed = load_run(split)
    for a, b in zip(vae.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_keep_last_and_patience(sets, tmp_path, capsys):
    flags = ["--data", str(sets / "train.npy"), "--val-data", str(sets / "valid.npy"), *FAST]
    last = tmp_path / "last"
    assert main(["train", "--epochs", "3", "--keep", "last", "--out", str(last), *flags]) == 0
    assert [r["kept"] for r in _metrics(last)] == [0, 0, 1]
    # A learning rate that overshoots: the validation ELBO stops improving and patience ends the run.
    stopped = tmp_path / "stopped"
    assert main(["train", "--epochs", "40", "--patience", "2", "--lr", "0.5", "--out", str(stopped), *flags]) == 0
    rows = _metrics(stopped)
    best = max(rows, key=lambda r: r["val_elbo"])["epoch"]
    assert len(rows) < 40 and rows[-1]["epoch"] - best == 2
    assert json.loads((stopped / "summary.json").read_text())["stopped_early"] is True
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped), "--epochs", "60", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stopped early" in err and "pass a larger --patience" in err


def test_normal_likelihood_on_raw_grey_levels_warns_with_the_fix(sets, tmp_path):
    x = np.load(sets / "train.npy") * 255.0
    np.save(tmp_path / "raw.npy", x)
    from pyro_vae import ModelConfig, RunConfig, TrainConfig, train_run
    from pyro_vae.config import DataConfig

    config = RunConfig(
        model=ModelConfig(likelihood="normal", hidden=(8,)),
        data=DataConfig(data=str(tmp_path / "raw.npy")),
        train=TrainConfig(epochs=1),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_run(config, tmp_path / "run", progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataScaleWarning)]
    assert len(messages) == 1 and "standardize" in messages[0] and "far from unit scale" in messages[0]
