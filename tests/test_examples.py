"""The core examples run (in their fast --smoke mode), so the README never lies."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Two printed values, each rounded to 4 decimals, differ from the unrounded ones by at most 1e-4 together.
ROUNDING = 1e-4


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split()]


def test_seed_diagram_prints_per_input_mu_sigma_and_matching_moments(tmp_path):
    figure = tmp_path / "seed_diagram.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed_diagram.py"), "--smoke", "--figure", str(figure)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout

    # mu(x), sigma(x) per input: outputs of the encoder that differ between inputs and between heads' rows.
    rows = re.findall(r"^[01](?: [01]){5}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    assert len(rows) == 5
    mus = {(float(a), float(b)) for a, b, _, _ in rows}
    assert len(mus) == 5, "mu(x) should differ from input to input"
    assert all(float(a) != float(b) for a, b, _, _ in rows), "mu_1 should differ from mu_2"

    # N = 10,000 draws z = mu + sigma * eps for one input, by hand and by the guide. Each
    # draw's coordinate d has sd sigma_d, so the standard error of its mean is
    # sigma_d / sqrt(N) (sigma / 100 here) and that of its sd sigma_d / sqrt(2 (N - 1))
    # (about sigma / 141). Tolerance: 5 standard errors, plus the rounding of the print.
    n = int(re.search(r"^(\d+) samples of z", out, re.M).group(1))
    assert n == 10_000
    means = re.findall(r"dimension (\d):\s+mu\s+=\s+(\S+)\s+(\S+)\s+\((\S+)\)\s+(\S+)", out)
    sds = re.findall(r"dimension (\d):\s+sigma\s+=\s+(\S+)\s+(\S+) \(sd of z\)\s+\((\S+)\)\s+(\S+)", out)
    assert len(means) == len(sds) == 2
    for (_, mu, mean, _, guide_mean), (_, sigma, sd, _, guide_sd) in zip(means, sds, strict=True):
        mu, mean, guide_mean, sigma, sd, guide_sd = map(float, (mu, mean, guide_mean, sigma, sd, guide_sd))
        se_mean, se_sd = sigma / math.sqrt(n), sigma / math.sqrt(2 * (n - 1))
        for m in (mean, guide_mean):
            assert abs(m - mu) <= 5 * se_mean + ROUNDING, (m, mu, se_mean)
        for s in (sd, guide_sd):
            assert abs(s - sigma) <= 5 * se_sd + ROUNDING, (s, sigma, se_sd)

    # The figure's clouds: N draws per input (4,000 in the example: s.e. sigma / 63 for a
    # mean, sigma / 89 for an sd), same 5-standard-error tolerance, every input and dimension.
    n_cloud = int(re.search(r"^(\d+) draws of q\(z\|x\) per input", out, re.M).group(1))
    clouds = re.findall(r"^ +([01]{6}) +\|([^|\n]+)\|([^|\n]+)$", out, re.M)
    assert len(clouds) == 5
    for _, locs, scales in clouds:
        mu1, mu2, mean1, mean2 = _floats(locs)
        sigma1, sigma2, sd1, sd2 = _floats(scales)
        for mu, mean, sigma, sd in ((mu1, mean1, sigma1, sd1), (mu2, mean2, sigma2, sd2)):
            assert abs(mean - mu) <= 5 * sigma / math.sqrt(n_cloud) + ROUNDING, (mean, mu)
            assert abs(sd - sigma) <= 5 * sigma / math.sqrt(2 * (n_cloud - 1)) + ROUNDING, (sd, sigma)

    # The figure: written where asked, a non-empty PNG.
    assert f"figure written to {figure}" in out
    data = figure.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
