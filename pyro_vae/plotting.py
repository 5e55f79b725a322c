"""Figures without pyplot: no display, no backend selection, no global state.

``matplotlib.figure.Figure`` objects made here are not registered with pyplot, so
making one neither opens a window nor touches the user's open figures or backend;
:func:`save_png` writes one atomically.
"""

from __future__ import annotations

import io
import os
from typing import Any

from matplotlib.figure import Figure

from .files import atomic_write

__all__ = ["new_figure", "subplots", "save_png"]


def new_figure(**kwargs: Any) -> Figure:
    """A figure outside pyplot (``Figure(**kwargs)``): no backend, no global state."""
    return Figure(**kwargs)


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a :func:`new_figure` and its axes.

    ``layout`` goes to the figure, everything else (``squeeze``, ``sharex``, ...) to
    ``Figure.subplots``.
    """
    fig = new_figure(figsize=figsize, layout=kwargs.pop("layout", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_png(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG atomically; ``dpi`` sets the pixels per inch."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write(path, buffer.getvalue())
