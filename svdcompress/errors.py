"""Exception classes. Every error svdcompress raises on user input derives from SvdcompressError."""

from __future__ import annotations

__all__ = [
    "AccuracyDropError",
    "BundleError",
    "CheckpointError",
    "ConventionWarning",
    "ExportError",
    "InputShapeError",
    "InvalidInputError",
    "MissingDependencyError",
    "NoSVDOLayersError",
    "OutputExistsError",
    "SvdcompressError",
    "UnsupportedOpError",
    "VerificationError",
]


class SvdcompressError(Exception):
    """Base class: the CLI turns it into one line on stderr and exit code 1.

    ``param`` names the Python parameter the error concerns (``"input_shape"``, ``"threshold"``, ``"data"``, ...),
    when one does; the command line maps it to its flag. The message itself names parameters as Python does
    (``threshold='auto'``, ``data=``), never as flags.
    """

    default_param: str | None = None
    """The parameter an error of this class concerns when the raise site names none."""

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param if param is not None else self.default_param


class InvalidInputError(SvdcompressError, ValueError):
    """An argument or input value is unusable (wrong shape, unknown option, non-finite threshold, ...).

    Also a :class:`ValueError`, so code that catches ``ValueError`` around svdcompress keeps working.
    """


class InputShapeError(InvalidInputError):
    """The example input of the given ``input_shape`` does not run through the model.

    The CLI reports it as a bad ``--input-shape`` value (exit 2), like a missing one.
    """

    default_param = "input_shape"


class MissingDependencyError(SvdcompressError):
    """An optional package a feature needs is not installed (e.g. matplotlib for plots); the message says
    which extra to install."""


class BundleError(SvdcompressError):
    """A CSR bundle cannot be read, fails validation, or uses an op this runtime does not know."""


class CheckpointError(SvdcompressError):
    """A file cannot be read as a checkpoint, or a tensor in it is unusable."""


class NoSVDOLayersError(CheckpointError):
    """The checkpoint was read, but no SVDO layer convention was recognised in it."""


class UnsupportedOpError(SvdcompressError):
    """The model graph holds an operation the structural pruner does not understand."""


class VerificationError(SvdcompressError):
    """A transformed model's outputs differ from the masked dense model's beyond tolerance."""


class ExportError(SvdcompressError):
    """An artifact could not be written or failed its check."""


class AccuracyDropError(ExportError):
    """A quantised artifact loses more accuracy on the data given than allowed; nothing was written."""


class OutputExistsError(ExportError):
    """The output path exists (pass ``force=True``) or is the input file itself."""

    default_param = "path"


class ConventionWarning(UserWarning):
    """The file's names fit several conventions whose formulas disagree on some weight: pass ``convention=``."""
