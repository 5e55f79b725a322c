"""The component examples run in their fast --smoke mode (so the README never lies)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    # One thread: the examples' tensors are small, and threads only contend on a busy CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--smoke"], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_custom_prior_example_trains_the_laplace_prior():
    out = run_example("custom_prior.py")
    for prior in ("normal", "laplace"):
        assert re.search(rf"--prior {prior}\s+held-out ELBO per data point after 2 epochs: -\d+\.\d+ nats", out), out
    assert "learned Laplace scales b_d:" in out
    # The analytic-KL check is asked of torch: it knows KL(Normal || Laplace), not the full-covariance one.
    assert "--guide diagonal: accepted (closed-form KL)" in out
    assert "--guide fullcov: refused:" in out and "use `elbo` trace" in out


def test_custom_guide_example_trains_the_student_t_guide():
    out = run_example("custom_guide.py")
    for name in ("DiagonalNormalGuide", "StudentTGuide"):
        pattern = rf"{name}\s+held-out ELBO per data point after 2 epochs \(trained on IWAE, K=5\): -\d+\.\d+ nats"
        assert re.search(pattern, out), out
    assert "learned degrees of freedom nu_d:" in out and "encode(x) for one digit: mu = " in out


def test_custom_network_example_trains_the_residual_encoder():
    out = run_example("custom_network.py")
    for name in ("MLP", "ResidualMLP"):
        assert re.search(rf"{name}\s+held-out ELBO per data point after 2 epochs: -\d+\.\d+ nats", out), out
