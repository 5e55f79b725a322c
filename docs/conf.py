"""Sphinx configuration: the guides in Markdown (MyST), the API reference from docstrings.

Built offline from the repository (no intersphinx, no remote theme):
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's package, also when it is not installed

project = "pyro_vae"
author = "the pyro_vae developers"
copyright = "2026, the pyro_vae developers"  # noqa: A001 - Sphinx's name

extensions = [
    "myst_parser",  # the guides are Markdown, readable on GitHub as they are
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings are Google style
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# The API reference documents each public name where users import it from.
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
# torch.nn.Module subclasses inherit a long docstring-free API; show only ours.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are also autodoc members

myst_heading_anchors = 3  # links to a guide's sections: guides/cli.md#the-run-directory

html_theme = "alabaster"
html_title = "pyro_vae"
html_static_path: list[str] = []


def _write_top_level_page() -> None:
    """docs/api/top_level.rst: every name of ``pyro_vae.__all__``, linked to where it is documented.

    Generated on each build from the package itself, so no public name can be left out.
    """
    import inspect

    import pyro_vae

    lines = [
        "Top-level names",
        "===============",
        "",
        "``import pyro_vae`` gives these names; each links to its documentation in the module",
        "that defines it (the layers below).",
        "",
    ]
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        if inspect.ismodule(obj):
            lines.append(f"- ``pyro_vae.{name}``: :mod:`{obj.__name__}`")
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            role = "class" if inspect.isclass(obj) else "func"
            lines.append(f"- ``pyro_vae.{name}``: :{role}:`{obj.__module__}.{obj.__qualname__}`")
        else:
            lines.append(f"- ``pyro_vae.{name}``: see the module that defines it")
    (Path(__file__).parent / "api" / "top_level.rst").write_text("\n".join(lines) + "\n")


_write_top_level_page()
