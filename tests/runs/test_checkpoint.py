"""Checkpoints: exact round trips, atomic writes, no code execution, clear errors."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from pyro_vae import CheckpointError, ModelConfig, RunConfig, build_vae, load, load_run
from pyro_vae.errors import IntegrityError
from pyro_vae.files import MANIFEST, UnverifiedFolderWarning
from pyro_vae.runs.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    atomic_write,
    config_from_json,
    load_training_state,
    save_config,
    save_training_state,
    save_weights,
)


def saved_run(tmp_path, **model):
    config = RunConfig(model=ModelConfig(x_dim=6, z_dim=2, hidden=(5,), **model))
    vae = build_vae(config.model)
    save_config(tmp_path, config)
    save_weights(tmp_path, vae)
    return config, vae


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_save_then_load_gives_identical_encode_outputs(tmp_path):
    _, vae = saved_run(tmp_path)
    x = torch.rand(9, 6)
    loaded = load(tmp_path)
    for a, b in zip(vae.encode(x), loaded.encode(x), strict=True):
        assert torch.equal(a, b)
    assert type(loaded.likelihood) is type(vae.likelihood)


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")

    def crash(f):
        f.write(b"half of the new cont")
        raise KeyboardInterrupt  # a kill mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_config_that_does_not_match_the_weights(tmp_path):
    saved_run(tmp_path)
    # Rewritten through save_config, so that its checksum holds: only the shapes disagree.
    save_config(tmp_path, RunConfig(model=ModelConfig(x_dim=6, z_dim=2, hidden=(7,))))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="does not match the run's config.json.*shape mismatch"):
        load(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_hand_edited_config_is_refused_by_its_checksum(tmp_path):
    saved_run(tmp_path)
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    raw["train"]["lr"] = 0.5
    (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(IntegrityError, match=r"config.json' does not match its checksum in manifest.json.*delete it"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda d: (d / WEIGHTS_FILE).write_bytes(b"\x00" * 10),
            "model.safetensors' does not match its checksum.*--resume",
        ),
        (lambda d: (d / WEIGHTS_FILE).unlink(), "saved no weights"),
        (lambda d: (d / CONFIG_FILE).write_text("{not json"), "config.json' does not match its checksum"),
        (lambda d: (d / CONFIG_FILE).unlink(), "not a pyro-vae run directory"),
        (lambda d: (d / MANIFEST).write_text("{}"), "manifest.json' is damaged"),
    ],
)
def test_damaged_run_directories_give_clear_errors(tmp_path, damage, match):
    saved_run(tmp_path)
    damage(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_run(tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ('{"model": {"colour": 1}}', "unknown key"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"model": {"z_dim": "2"}}', "model.z_dim must be an integer, got '2'"),
        ('{"model": {"z_dim": 2.5}}', "model.z_dim must be an integer, got 2.5"),
        ('{"model": {"prior_components": 1e9}}', "prior_components must be an integer"),
        ('{"model": {"prior_components": 1000000000}}', "`prior_components` must be between 1 and 100,000"),
        ('{"model": {"hidden": [1000000000]}}', "`hidden` widths must be between 1 and 65,536"),
        ('{"model": {"hidden": [65536, 65536]}}', "could need up to .* weights"),
        ('{"train": {"seed": 1180591620717411303424}}', "`seed` must be between 0 and"),
        ('{"train": {"seed": -1}}', "`seed` must be between 0 and"),
        ('{"train": {"lr": NaN}}', "train.lr must be a finite number"),
        ('{"data": {"image_shape": [3]}}', "`image_shape` must be \\(height, width\\)"),
        ('{"model": {"x_dim": 64}, "data": {"image_shape": [7, 9]}}', "holds 63 pixels but the model has 64 features"),
    ],
)
def test_config_json_is_checked_before_anything_is_built(text, match):
    with pytest.raises(CheckpointError, match=match):
        config_from_json(text, "config.json")


def test_a_folder_without_manifest_is_read_with_a_warning(tmp_path):
    saved_run(tmp_path)
    (tmp_path / MANIFEST).unlink()  # as a run directory from before checksums
    with pytest.warns(UnverifiedFolderWarning, match="has no manifest.json"):
        load_run(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"model": {"colour": 1}}')
    with pytest.warns(UnverifiedFolderWarning), pytest.raises(CheckpointError, match="unknown key"):
        load_run(tmp_path)


def test_missing_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope")


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.filterwarnings("ignore::pyro_vae.files.UnverifiedFolderWarning")  # no manifest: a bare file
def test_training_state_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / STATE_FILE, "wb") as f:
        pickle.dump({"model": _Boom(), "optimizer": {}, "history": []}, f)
    with pytest.raises(CheckpointError, match="damaged or unsafe"):
        load_training_state(tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


def test_training_state_round_trip(tmp_path):
    _, vae = saved_run(tmp_path)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    vae.encode(torch.rand(3, 6))[0].sum().backward()
    opt.step()
    save_training_state(tmp_path, vae, opt, [{"epoch": 1, "train_loss": 1.0, "val_elbo": -1.0, "seconds": 0.1}])
    state = load_training_state(tmp_path)
    fresh = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(5,)))
    fresh.load_state_dict(state["model"])
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert state["history"][0]["epoch"] == 1
    for a, b in zip(vae.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
