"""The trained SVDO checkpoints shipped with the package (``bundled:lenet5``, ``bundled:lenet300``), each with
its training log (``NAME-log.json``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ...errors import InvalidInputError, SvdcompressError

__all__ = ["BUNDLED", "bundled_checkpoint"]

BUNDLED = ("lenet300", "lenet5")


def bundled_checkpoint(name: str) -> Path:
    """Path of a trained SVDO checkpoint shipped with the package: ``"lenet5"`` or ``"lenet300"``.

    Example:
        >>> bundled_checkpoint("lenet5").name
        'lenet5.pt'
    """
    if name not in BUNDLED:
        raise InvalidInputError(f"no bundled checkpoint {name!r}; choose one of {', '.join(BUNDLED)}")
    path = Path(str(resources.files(__name__) / f"{name}.pt"))
    if not path.exists():
        raise SvdcompressError(f"{path}: bundled checkpoint missing from this installation; reinstall svdcompress")
    return path
