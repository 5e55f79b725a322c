"""The guides' Python examples run as written, and every relative link in the docs resolves.

The site itself is built (with warnings as errors) by ``tools/check``; these checks need
nothing but the package, so they run with the suite on both Python lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *GUIDES]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.uses_param_store  # the training guide's SVI example trains in Pyro's default mode
@pytest.mark.parametrize(
    "page", [p for p in GUIDES if _python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT / "docs"))
)
def test_python_examples_run(page, monkeypatch, tmp_path):
    """Each page's blocks run in order in one namespace, as a reader would paste them."""
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {}
    try:
        for block in _python_blocks(page):
            exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs
    finally:
        import matplotlib.pyplot as plt  # only now: importing it picks a backend

        plt.close("all")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Links between the README, the changelog and the guides work in the repository."""
    text = page.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = [
        t
        for t in targets
        if not re.match(r"[a-z]+:", t) and not t.startswith("#") and not (page.parent / t.split("#")[0]).exists()
    ]
    assert not broken, f"{page.name}: links to missing files: {broken}"


def test_the_api_reference_documents_every_module():
    """A new module gets a place in docs/api (the reference is written per layer)."""
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "pyro_vae").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    documented = set(
        re.findall(r"\.\. automodule:: (\S+)", "".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.rst")))
    )
    assert not modules - documented, f"not in docs/api/*.rst: {sorted(modules - documented)}"
