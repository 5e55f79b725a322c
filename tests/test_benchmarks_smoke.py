"""Smoke runs of benchmarks/speed.py, quality.py, data_scale.py and families.py (tiny sizes, generated data),
and the reference VAE's equivalence to pyro_vae's estimator.

The benchmarks themselves are not tests; these check that they run end to end and write
what the README says they write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.inference.objectives import TraceELBO
from pyro_vae.model.build import build_vae

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from reference_vae import ReferenceVAE  # noqa: E402


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_speed_smoke(tmp_path):
    stdout = _run("speed.py", "--smoke", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "speed.json").read_text())
    table = [r for r in rows if r["experiment"] == "batch_size"]
    assert {(r["arch"], r["batch_size"]) for r in table} == {("784-400-50", 8), ("784-200-200-50", 8)}
    for r in table:
        for key in (
            "device",
            "arch",
            "batch_size",
            "examples_per_s",
            "reference_examples_per_s",
            "ratio",
            "peak_rss_mb",
        ):
            assert key in r
        assert r["examples_per_s"] > 0 and r["reference_examples_per_s"] > 0 and r["ratio"] > 0
    assert table[0]["peak_rss_mb"] >= table[0]["baseline_rss_mb"] > 0  # the memory child ran
    assert {r["experiment"] for r in rows} == {"batch_size", "particles", "z_dim", "data_size"}
    assert "| ratio |" in (tmp_path / "speed.md").read_text() and "ratio" in stdout


def test_quality_smoke(tmp_path):
    _run("quality.py", "--smoke", "--out", str(tmp_path))
    _run("quality.py", "--smoke", "--out", str(tmp_path), "--elbo", "iwae", "--particles", "3")
    rows = json.loads((tmp_path / "quality.json").read_text())
    assert [(r["model"], r["objective"]) for r in rows] == [
        ("pyro_vae", "trace"),
        ("reference (plain PyTorch)", "trace"),
        ("pyro_vae", "iwae"),
        ("reference (plain PyTorch)", "iwae"),
    ]
    for r in rows:
        assert r["test_elbo"] <= r["test_log_px"] < 0 and r["iw_samples"] == 20 and r["command"].startswith("python")
        # The ELBO is reconstruction - KL, from the same draws (float rounding only).
        assert r["test_elbo"] == pytest.approx(r["test_reconstruction"] - r["test_kl"], abs=1e-6)
        assert r["test_kl"] >= 0
    # The table shows the measured rows, in order, with their own numbers; the published
    # figures (constants of the script, so checking them proves nothing about this run)
    # follow as reference rows that carry no measurement.
    body = [line for line in (tmp_path / "quality.md").read_text().splitlines()[2:] if line.startswith("|")]
    measured, published = body[: len(rows)], body[len(rows) :]
    for line, r in zip(measured, rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["model"] and cells[1].startswith(r["objective"])
        assert float(cells[5]) == pytest.approx(r["test_elbo"], abs=0.005)
        assert float(cells[6].split()[0].strip("*")) == pytest.approx(r["test_log_px"], abs=0.005)
        assert float(cells[7]) == pytest.approx(r["test_kl"], abs=0.005)
    assert len(published) == 2 and all("Burda et al." in line for line in published)
    assert all(line.split("|")[6].strip() == "" for line in published)  # no test ELBO of ours


@pytest.mark.parametrize("arch", [((400,), "relu"), ((200, 200), "tanh")])
def test_reference_computes_pyro_vaes_estimator(arch):
    # Same weights, same random state: the reference's loss is Pyro's Trace_ELBO loss (it
    # draws the same eps) and its gradients agree to float rounding.
    hidden, activation = arch
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(x_dim=784, z_dim=50, hidden=hidden, activation=activation))
    reference = ReferenceVAE(784, hidden, 50, activation)
    reference.load_state_dict({k: v for k, v in vae.state_dict().items() if not k.startswith("prior.")})
    x = torch.bernoulli(torch.rand(16, 784))
    torch.manual_seed(1)
    ours = TraceELBO(jit=False).loss(vae, x, 1000)
    torch.manual_seed(1)
    theirs = reference.loss(x, 1000)
    assert torch.allclose(ours, theirs, rtol=1e-5)
    g_ours = dict(
        zip((n for n, _ in vae.named_parameters()), torch.autograd.grad(ours, list(vae.parameters())), strict=True)
    )
    g_theirs = dict(
        zip(
            (n for n, _ in reference.named_parameters()),
            torch.autograd.grad(theirs, list(reference.parameters())),
            strict=True,
        )
    )
    assert g_ours.keys() == g_theirs.keys()
    for name in g_ours:
        scale = float(g_ours[name].abs().max())
        assert torch.allclose(g_ours[name], g_theirs[name], rtol=1e-3, atol=1e-4 * scale), name


def test_data_scale_smoke(tmp_path):
    _run("data_scale.py", "--smoke", "--out", str(tmp_path / "data_scale"), "--dir", str(tmp_path / "data"))
    rows = json.loads((tmp_path / "data_scale.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["mapped", "mapped+prefetch", "memory", "torchrun x2"]
    for r in rows:
        assert r["VmHWM_mb"] > 0 and r["examples_per_s"] > 0 and r["first_step_s"] > 0
    assert rows[-1]["VmHWM_sum_mb"] >= rows[-1]["VmHWM_mb"] and rows[0]["vs_memory"] > 0
    assert "| peak RSS / process |" in (tmp_path / "data_scale.md").read_text()
    assert not any((tmp_path / "data").iterdir())  # the generated data is deleted


def test_families_smoke(tmp_path):
    stdout = _run("families.py", "--smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "families.json").read_text())
    m2, layers = report["experiments"]["m2"], report["experiments"]["two_layer"]
    # M2: a learning curve of test errors, one per epoch.
    assert [row["epoch"] for row in m2["curve"]] == [1, 2]
    assert all(0.0 <= row["test_error"] <= 1.0 for row in m2["curve"])
    assert m2["labelled"] == 20 and m2["alpha"] > 0
    # Both depths trained for the same epochs; IWAE log p(x) bounds the ELBO from above.
    one, two = layers["models"]["one_layer"], layers["models"]["two_layer"]
    assert one["train"]["epochs"] == two["train"]["epochs"] == 2
    for model in (one, two):
        assert model["test_log_px"] >= model["test_elbo"]
    assert "M2, 20 labels" in (tmp_path / "families.md").read_text()
    assert (tmp_path / "families.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in stdout
