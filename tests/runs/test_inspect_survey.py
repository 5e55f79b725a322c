"""``pyro-vae inspect``: the reference by --method (default by z_dim), and --all / --rows over a split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data.datasets import load_dataset
from pyro_vae.model.build import build_vae
from pyro_vae.runs import survey
from pyro_vae.runs.survey import SURVEY_FILES, parse_rows, survey_points

PNG = b"\x89PNG"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: extra threads only add synchronisation on a busy shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """Runs on the digits with z_dim 2 and 3 (1 epoch each), whose test split is 12 digits rows."""
    from pyro_vae.runs.train import train_run

    root = tmp_path_factory.mktemp("inspect")
    test_rows = root / "test.npy"
    np.save(test_rows, load_dataset("digits").val[:12])
    found = {}
    for z_dim in (2, 3):
        config = RunConfig(
            model=ModelConfig(z_dim=z_dim, hidden=(16,)),
            data=DataConfig(test_data=str(test_rows)),
            train=TrainConfig(epochs=1),
        )
        found[z_dim] = train_run(config, root / f"z{z_dim}", progress=False).run_dir
    return found


def test_method_defaults_by_z_dim_and_each_method_writes_its_reference(runs, tmp_path, capsys):
    base = ["--index", "0", "3", "--samples", "20", "--chains", "2", "--no-progress"]
    # z_dim 2: the grid by default (exact); its table carries log p(x) and KL by quadrature.
    assert main(["inspect", str(runs[2]), *base, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "reference: quadrature on adaptive grids" in out and "grid_kl" in out and "grid_mean" in out
    assert (tmp_path / "a" / "grid.nc").is_file()
    points = pd.read_csv(tmp_path / "a" / "points.csv", index_col=0)
    assert list(points.index) == [0, 3] and (points["grid_kl"] >= 0).all()
    # z_dim 3: importance resampling by default.
    assert main(["inspect", str(runs[3]), *base, "--out", str(tmp_path / "b")]) == 0
    assert "sir_mean" in capsys.readouterr().out and (tmp_path / "b" / "sir.nc").is_file()
    # Each method by name.
    for method in ("nuts", "sir", "grid"):
        # NUTS adapts its mass matrix only after a few dozen warm-up steps: give it 100.
        args = ["inspect", str(runs[2]), *base, "--warmup", "100", "--method", method, "--out", str(tmp_path / method)]
        assert main(args) == 0, method
        assert f"{method}_mean" in capsys.readouterr().out
        assert (tmp_path / method / f"{method}.nc").is_file()


def test_bad_method_and_rows_give_one_line_and_exit_2(runs, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--no-progress"]
    cases = [
        (
            ["inspect", str(runs[3]), "--index", "0", "--method", "grid", *out],
            "at most 2 dimensions, this model has z_dim=3: use --method nuts or sir",
        ),
        (["inspect", str(runs[3]), "--all", "--method", "grid", *out], "z_dim=3"),
        (["inspect", str(runs[2]), "--rows", "3-5", *out], "--rows must look like A:B (e.g. 0:500), got '3-5'"),
        (["inspect", str(runs[2]), "--rows", "5:5", *out], "--rows 5:5 selects no row of the 12"),
        (["inspect", str(runs[2]), "--rows", "0:4", "--method", "sir", "--mcmc", *out], "--mcmc is --method nuts"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pyro-vae: error") and message in err[0], (args, err)
    # --all and --index exclude each other (argparse's own message).
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(runs[2]), "--all", "--index", "1"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_all_writes_the_survey_of_the_whole_split(runs, tmp_path, capsys):
    folder = tmp_path / "survey"
    assert main(["inspect", str(runs[2]), "--all", "--out", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rows 0-11 of the test split" in out and "KL(q || p)" in out and "largest KL" in out
    assert sorted(p.name for p in folder.iterdir()) == sorted(SURVEY_FILES)
    table = pd.read_csv(folder / "survey.csv", index_col="point")
    assert list(table.index) == list(range(12))
    for column in (
        "log_px",
        "elbo",
        "gap",
        "kl",
        "mean_error_0",
        "mean_error_1",
        "sd_ratio_0",
        "sd_ratio_1",
        "max_abs_mean_error",
        "min_sd_ratio",
        "max_sd_ratio",
        "quadrature_error",
    ):
        assert column in table, column
    # The grid is exact: the gap log p(x) - ELBO is KL(q || p), non-negative.
    np.testing.assert_allclose(table["gap"], table["kl"], atol=1e-9)
    assert (table["kl"] >= 0).all() and (table["sd_ratio_0"] > 0).all()
    summary = pd.read_csv(folder / "survey_summary.csv", index_col="statistic")
    assert {"q0", "q0.5", "q1", "mean"} <= set(summary.index)
    assert summary.loc["q1", "kl"] == pytest.approx(table["kl"].max())
    png = (folder / "survey.png").read_bytes()
    assert png[:4] == PNG and len(png) > 30_000
    # A second run needs --overwrite.
    assert main(["inspect", str(runs[2]), "--all", "--out", str(folder), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_rows_of_the_val_split_with_labels_and_sir(runs, tmp_path, capsys):
    folder = tmp_path / "rows"
    args = [
        "inspect",
        str(runs[3]),
        "--rows",
        "5:13",
        "--split",
        "val",
        "--samples",
        "50",
        "--chains",
        "2",
        "--out",
        str(folder),
        "--no-progress",
    ]
    assert main(args) == 0
    assert "against sir for 8 points" in capsys.readouterr().out
    table = pd.read_csv(folder / "survey.csv", index_col="point")
    assert list(table.index) == list(range(5, 13))
    assert {"label", "log_px_se", "elbo_se", "pareto_k", "ess", "mean_error_2", "sd_ratio_2"} <= set(table.columns)
    summary = pd.read_csv(folder / "survey_summary.csv", index_col="statistic")
    assert any(name.startswith("label ") for name in summary.index)  # the means per label


def test_survey_goes_in_chunks_and_the_chunks_do_not_change_the_answer(monkeypatch):
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=6, z_dim=2, hidden=(8,), activation="tanh"))
    x = torch.bernoulli(torch.full((7, 6), 0.5), generator=torch.Generator().manual_seed(1))
    whole = survey_points(vae, x, chunk_size=100)
    sizes = []
    chunk = survey._chunk

    def recording(vae, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return chunk(vae, x, *args, **kwargs)

    monkeypatch.setattr(survey, "_chunk", recording)
    parts = survey_points(vae, x, np.arange(20, 27), chunk_size=3)
    assert sizes == [3, 3, 1]  # memory grows with the chunk, not with the rows
    assert list(parts.points.index) == list(range(20, 27))
    np.testing.assert_allclose(parts.points.to_numpy(), whole.points.to_numpy(), rtol=1e-5, atol=1e-6)


def test_parse_rows():
    assert parse_rows("2:5", 10) == range(2, 5)
    assert parse_rows("-3:", 10) == range(7, 10)
    assert parse_rows(" : ", 10) == range(10)
    with pytest.raises(Exception, match="A:B"):
        parse_rows("7", 10)
