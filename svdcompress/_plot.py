"""Plot plumbing shared by the analysis and benchmark figures: is matplotlib there, which image format a
path asks for, and an atomic save. Checked before any work, so a missing extra or a bad suffix fails fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._io import atomic_path
from .errors import InvalidInputError, MissingDependencyError

__all__ = ["image_format", "pyplot", "require_matplotlib", "save_figure"]

_INSTALL = "pip install 'svdcompress[plot]'"


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, set to its non-interactive Agg backend.

    Raises:
        MissingDependencyError: matplotlib is not installed; the message names the extra that installs it.
    """
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(f"plotting needs matplotlib, which is not installed: {_INSTALL}") from None
    matplotlib.use("Agg")
    return matplotlib


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (see :func:`require_matplotlib`)."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    return plt


def image_format(path: str | os.PathLike[str]) -> str:
    """The image format matplotlib writes for ``path``'s suffix (``.png`` → ``"png"``).

    Raises:
        MissingDependencyError: matplotlib is not installed.
        InvalidInputError: no suffix, or one matplotlib cannot write (it would not silently get PNG bytes).

    Example:
        >>> image_format("hist.svg")
        'svg'
    """
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in supported:
        choices = ", ".join(f".{k}" for k in sorted(supported))
        found = f"suffix '.{suffix}'" if suffix else "no suffix"
        raise InvalidInputError(f"{path}: {found} is not an image format matplotlib writes; use one of {choices}")
    return suffix


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write ``fig`` in the format ``path``'s suffix names, atomically, and close it."""
    plt = pyplot()
    fmt = image_format(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
