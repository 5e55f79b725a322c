"""The README's Python snippets run as written, and its two commands are the ones CI uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.uses_param_store  # the SVI snippet trains in Pyro's default mode
def test_python_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no Python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README


def test_ci_runs_the_readme_test_command():
    test_command = 'pip install -c constraints.txt -e ".[dev]" && python -m pytest -q'
    assert test_command in README
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e . && pyro-vae train" in README
