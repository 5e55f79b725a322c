"""The core examples run (in their fast --smoke mode), so the README never lies."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_seed_diagram_prints_per_input_mu_sigma_and_matching_moments():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed_diagram.py"), "--smoke"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = re.findall(r"^[01](?: [01]){5}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    assert len(rows) == 5
    mus = {(float(a), float(b)) for a, b, _, _ in rows}
    assert len(mus) == 5, "mu(x) should differ from input to input"
    assert all(float(a) != float(b) for a, b, _, _ in rows), "mu_1 should differ from mu_2"
    assert "10000 samples of z" in out
