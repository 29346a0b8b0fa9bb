"""What the exporters share: the result record, dtype and tolerance rules, and output verification."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._inputs import example_inputs
from .._io import check_output_path
from .._verify import check_outputs, compare_outputs
from ..errors import ExportError

__all__ = ["DEFAULT_TOLERANCES", "DTYPES", "ExportResult"]

DTYPES = ("fp32", "fp16")
DEFAULT_TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2}
"""Default verification tolerance per weight dtype, on ``max|diff| / max(1, max|ref|)``.

fp16 weights carry a relative rounding error of ~5e-4 each; summed over hundreds of inputs per unit it
reaches ~1e-3 of the output scale, so fp16 gets 1e-2."""

_VERIFY_BATCH = 4
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how it checked out.

    Attributes:
        path: The artifact written.
        format: ``"onnx"``, ``"onnx-sparse"`` or ``"csr"``.
        file_bytes: Size of the artifact on disk.
        dense_fp32_bytes: 4 × the reference model's weight and bias element count: a dense fp32 checkpoint.
        bytes_ratio: ``dense_fp32_bytes / file_bytes``.
        max_abs_diff: Largest absolute output difference against the reference on the verification batch.
        parameter_compression: The paper's |W| / |W ≠ 0| of the SVDO model at the threshold used, when
            :func:`~svdcompress.export.export_model` knows it (None from the single-format exporters).
        quant: Per quantised layer of a CSR bundle: scheme, bits, RMS error and its target, bytes, step, σ.
        quant_drift: For a quantised bundle, ``max|bundle − reference| / max(1, max|reference|)`` on the
            verification batch (``max_abs_diff`` is then against the dequantised model).
        threshold: The log α threshold the masks came from, when :func:`~svdcompress.export.export_model` knows it.
        threshold_selection: How ``threshold="auto"`` chose it
            (:meth:`svdcompress.tuning.threshold.TuneResult.selection`);
            None for a threshold given as a number.
        accuracy: For a quantised bundle checked on data (``export_model(data=..., bits=...)``): the data spec,
            examples, the fp32 model's and the bundle's accuracy (%), the drop in points and the allowed drop.
        round_to: The channel multiple the pruned widths were rounded to (1: none), when
            :func:`~svdcompress.export.export_model` knows it.
        round_to_selection: How ``round_to="auto"`` chose it: the candidates' ONNX Runtime medians on this machine.
        dynamic_axes: ONNX: the input axes left free, e.g. ``{0: "batch", 1: "sequence"}``.
    """

    path: Path
    format: str
    file_bytes: int
    dense_fp32_bytes: int
    bytes_ratio: float
    max_abs_diff: float
    parameter_compression: float | None = None
    quant: dict[str, dict[str, Any]] | None = None
    quant_drift: float | None = None
    threshold: float | None = None
    threshold_selection: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    round_to: int | None = None
    round_to_selection: dict[str, Any] | None = None
    dynamic_axes: dict[int, str] | None = None

    def summary(self) -> str:
        """One line for logs and the CLI (kB = 1000 bytes).

        Example:
            >>> ExportResult(Path("m.csr"), "csr", 2048, 1024000, 500.0, 1e-6).summary()
            'm.csr: csr, 2.0 kB (dense fp32 1,024.0 kB, 500.0× smaller), max |diff| 1.0e-06'
            >>> ExportResult(Path("m.csr"), "csr", 2048, 1024000, 500.0, 1e-6, 61.9).summary().split(", ")[2]
            '500.0× smaller; parameter compression 61.9×)'
        """
        compression = (
            "" if self.parameter_compression is None else f"; parameter compression {self.parameter_compression:.1f}×"
        )
        return (
            f"{self.path}: {self.format}, {self.file_bytes / 1000:,.1f} kB "
            f"(dense fp32 {self.dense_fp32_bytes / 1000:,.1f} kB, {self.bytes_ratio:.1f}× smaller{compression}), "
            f"max |diff| {self.max_abs_diff:.1e}"
        )


def _resolve_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return dtype


def _resolve_tolerance(dtype: str, tolerance: float | None) -> float:
    tol = DEFAULT_TOLERANCES[dtype] if tolerance is None else float(tolerance)
    if not tol > 0:
        raise ExportError(f"tolerance must be > 0, got {tolerance!r}")
    return tol


def _check_eval(model: nn.Module, what: str) -> None:
    # A train-mode BatchNorm/Dropout/SVDO layer would be exported with batch statistics or noise; switching
    # the mode ourselves would silently mutate the caller's object. Only modules whose forward depends on
    # the mode count: fx.GraphModule creates plain holder modules in training mode.
    training = [
        name or "<root>"
        for name, m in model.named_modules()
        if m.training and (isinstance(m, _MODE_DEPENDENT) or hasattr(m, "log_sigma2"))
    ]
    if training:
        raise ExportError(f"{what} is in training mode ({', '.join(training[:3])}); call .eval() first")


def _prepare(
    model: nn.Module,
    reference: nn.Module | None,
    path: str | os.PathLike[str],
    dtype: str,
    tolerance: float | None,
    force: bool,
) -> tuple[str, float, Path, nn.Module]:
    """What every export checks before doing work: dtype, tolerance, output path, eval mode.

    Returns ``(dtype, tolerance, output path, reference model)``.
    """
    dt = _resolve_dtype(dtype)
    tol = _resolve_tolerance(dt, tolerance)
    out = check_output_path(path, force=force)
    ref = model if reference is None else reference
    _check_eval(model, "model")
    _check_eval(ref, "reference")
    return dt, tol, out, ref


def _dense_fp32_bytes(model: nn.Module) -> int:
    """4 bytes × every ``weight`` / ``bias`` parameter element of ``model`` (an LSTM's ``weight_ih_l0`` too)."""
    count = sum(
        p.numel() for name, p in model.named_parameters() if name.rsplit(".", 1)[-1].startswith(("weight", "bias"))
    )
    return 4 * int(count)


def _verify(
    run: Callable[[torch.Tensor], Any],
    reference: nn.Module,
    input_shape: tuple[int, ...],
    tolerance: float,
    what: str,
    example: torch.Tensor | None = None,
) -> float:
    """Compare ``run(x)`` with ``reference(x)`` on a seeded random batch (or ``example``); return max |diff| or raise.

    The rule is prune's (:func:`svdcompress._verify.check_outputs`): ``max|diff| <= tolerance ×
    max(1, max|ref|)``, so that logits in the hundreds are not held to an absolute 1e-4.
    """
    x = example_inputs(input_shape, _VERIFY_BATCH) if example is None else example  # (4, *input_shape)
    diff, scale = compare_outputs(reference, run, x, what, error=ExportError)
    check_outputs(diff, scale, tolerance, what, error=ExportError, hint="; no file was written")
    return diff
