"""Runs on a memory-mapped data file: train, evaluate and encode give what the in-memory
path gives, and evaluation streamed in several blocks pools its statistics correctly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pyro_vae import ModelConfig, RunConfig, TrainConfig, train_run
from pyro_vae.config import DataConfig
from pyro_vae.data import datasets as D
from pyro_vae.runs import evaluate as E
from pyro_vae.runs.evaluate import evaluate_run
from pyro_vae.runs.export import encode_run


@pytest.fixture
def binary_file(tmp_path):
    """240 rows of 10 exact 0/1 features (so dynamic binarization draws nothing new)."""
    protos = np.array([[1] * 5 + [0] * 5, [0] * 5 + [1] * 5], dtype=np.float32)
    rng = np.random.default_rng(0)
    x = protos[rng.integers(0, 2, 240)]
    flip = rng.random(x.shape) < 0.1
    path = tmp_path / "binary.npy"
    np.save(path, np.where(flip, 1 - x, x).astype(np.float32))
    return path


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _without_seconds(report: dict) -> dict:
    return {k: v for k, v in report.items() if "seconds" not in k}


def test_a_run_on_a_mapped_file_trains_evaluates_and_encodes_as_in_memory(binary_file, tmp_path, monkeypatch):
    config = RunConfig(
        model=ModelConfig(z_dim=2, hidden=(8,)),
        data=DataConfig(data=str(binary_file)),
        train=TrainConfig(epochs=3, batch_size=32, seed=3),
    )
    memory = train_run(config, tmp_path / "memory", progress=False)
    memory_eval = evaluate_run(tmp_path / "memory", iw_samples=20)
    encode_run(tmp_path / "memory", tmp_path / "memory.npz", split="all")
    monkeypatch.setattr(D, "MAP_ABOVE_BYTES", 0)  # storage auto now maps even this small file
    assert D.load_dataset(str(binary_file)).mapped
    mapped = train_run(config, tmp_path / "mapped", progress=False)
    mapped_eval = evaluate_run(tmp_path / "mapped", iw_samples=20)
    encode_run(tmp_path / "mapped", tmp_path / "mapped.npz", split="all")

    assert _metrics(tmp_path / "mapped") == _metrics(tmp_path / "memory")
    assert mapped.val_elbo == memory.val_elbo and np.isfinite(mapped.val_elbo)
    assert _without_seconds(mapped_eval) == _without_seconds(memory_eval)
    with np.load(tmp_path / "memory.npz") as a, np.load(tmp_path / "mapped.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    summary = json.loads((tmp_path / "mapped" / "summary.json").read_text())
    assert summary["num_train"] + summary["num_val"] == 240


def test_evaluation_in_many_blocks_pools_the_unit_activity(binary_file, tmp_path, monkeypatch):
    config = RunConfig(
        model=ModelConfig(z_dim=2, hidden=(8,)),
        data=DataConfig(data=str(binary_file), val_fraction=0.5),
        train=TrainConfig(epochs=2, batch_size=32, seed=3),
    )
    train_run(config, tmp_path / "run", progress=False)
    whole = evaluate_run(tmp_path / "run", iw_samples=10, write=False)
    monkeypatch.setattr(D, "MAP_ABOVE_BYTES", 0)
    monkeypatch.setattr(E, "chunk_rows", lambda x_dim: 25)  # 120 validation rows: 5 blocks
    blocks = evaluate_run(tmp_path / "run", iw_samples=10, write=False)
    assert blocks["num_points"] == whole["num_points"] == 120
    # Exact 0/1 data: E_q[z | x] is the same in both (up to float32 rounding of other batch
    # shapes, about 1e-8), so the pooled variance is the whole one.
    np.testing.assert_allclose(blocks["unit_activity"], whole["unit_activity"], rtol=1e-6)
    assert blocks["elbo_per_datum"] != whole["elbo_per_datum"]  # other draws
    assert abs(blocks["elbo_per_datum"] - whole["elbo_per_datum"]) < 0.05 * abs(whole["elbo_per_datum"])


def test_inspect_reads_a_mapped_split_as_the_in_memory_one(binary_file, tmp_path, monkeypatch):
    """The inspection's rows of a mapped file are the in-memory rows, binarized alike."""
    from pyro_vae.runs.inspect import load_points

    config = RunConfig(
        model=ModelConfig(z_dim=2, hidden=(8,)),
        data=DataConfig(data=str(binary_file)),
        train=TrainConfig(epochs=1, batch_size=32, seed=3),
    )
    train_run(config, tmp_path / "run", progress=False)
    _, _, in_memory, split = load_points(tmp_path / "run", [0, 5, 7])
    monkeypatch.setattr(D, "MAP_ABOVE_BYTES", 0)
    _, _, mapped, mapped_split = load_points(tmp_path / "run", [0, 5, 7])
    assert mapped_split == split == "val"
    assert mapped.shape == (3, 10) and torch.equal(mapped, in_memory)
