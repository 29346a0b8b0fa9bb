"""One call from a checkpoint (or a live SVDO model) to a verified artifact: what ``svdcompress export`` runs."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, cast

import torch
from torch import nn

from .._inputs import check_input_shape
from .._io import check_output_path
from ..errors import InvalidInputError, NoSVDOLayersError
from ..masking import check_threshold
from ..svdo import DEFAULT_THRESHOLD
from ._common import ExportResult

__all__ = ["FORMATS", "export_model", "posterior_sigma"]

FORMATS = ("onnx", "onnx-sparse", "csr")
"""Artifact formats :func:`export_model` writes."""


def posterior_sigma(
    model: nn.Module, threshold: float = DEFAULT_THRESHOLD, convention: str | None = None
) -> dict[str, float]:
    """Module name → median posterior standard deviation σ = exp(log σ² / 2) of the weights it keeps.

    For the SVDO layers of ``model`` (every convention, each masked by its own formula); what ``bits="auto"``
    sizes each layer's quantisation step by.
    """
    from ..conventions import keep_mask
    from ..masking import layers_of_model

    out: dict[str, float] = {}
    for layer in layers_of_model(model, convention):
        keep = keep_mask(layer.theta, layer.log_sigma2, check_threshold(threshold), layer.convention)
        if bool(keep.any()):
            out[layer.name] = float(torch.exp(layer.log_sigma2.detach()[keep].double() / 2).median())
    return out


def export_model(
    source: nn.Module | str | os.PathLike[str],
    fmt: str,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...] | None = None,
    model: str | None = None,
    trust_pickle: bool = False,
    threshold: float | str = DEFAULT_THRESHOLD,
    dtype: str = "fp32",
    opset: int = 17,
    force: bool = False,
    bits: int | str | None = None,
    convention: str | None = None,
    data: str | None = None,
    max_drop: float = 0.5,
) -> ExportResult:
    """Mask, structurally prune and export ``source`` as ``fmt``, verified against the masked model.

    Args:
        source: a trained SVDO ``nn.Module``, or a checkpoint file with SVDO layers (see
            :func:`svdcompress.load_model`).
        fmt: ``"onnx"`` (compact dense), ``"onnx-sparse"`` (sparse initializers) or ``"csr"`` (CSR bundle).
        path: the output file.
        input_shape: per-example input shape, e.g. ``(1, 28, 28)``; optional for checkpoints that record it.
        model: ``package.module:factory`` building the architecture of a checkpoint that does not record one.
        trust_pickle: allow a checkpoint that is a whole pickled model (unpickling runs code).
        threshold: log α above which a weight is noise, or ``"auto"``: chosen on ``data`` by
            :func:`svdcompress.tune` (the largest compression within ``max_drop`` accuracy points of the
            unthresholded model); the artifact records the threshold and how it was chosen (the CSR manifest's
            ``threshold_selection``, ONNX ``metadata_props``), and so does the result.
        dtype: ``"fp32"`` or ``"fp16"`` weight storage.
        opset: ONNX opset (ONNX formats only).
        force: overwrite an existing output.
        bits: CSR only: quantise the kept weights to ``16`` (fp16), 2-8 bits, or ``"auto"``: per layer the
            fewest bits whose error stays within the posterior σ of its kept weights (see
            :func:`~svdcompress.export.export_csr`); σ comes from the SVDO layers' log σ².
        convention: the project the checkpoint comes from, when its names fit several (``weight`` +
            ``log_sigma2``: ``"pytorch-ard"``, ``"bayeswatch"``, ``"svdcompress"``); every layer is masked by
            its convention's formula, eps, clip and comparison, as :func:`svdcompress.analyze` counts it.
        data: with ``threshold="auto"``: the held-out data spec (``"fashion-mnist:val"``, ``"FILE.npz"``, ...);
            test splits are refused.
        max_drop: with ``threshold="auto"``: the accuracy points the pick may lose.

    Returns:
        The :class:`ExportResult`, with ``parameter_compression`` filled in.

    Raises:
        InvalidInputError: unknown ``fmt``, a bad ``input_shape`` or none known, a non-finite ``threshold``.
        NoSVDOLayersError: a checkpoint file without SVDO layers.
        CheckpointError, UnsupportedOpError, ExportError, VerificationError: from the stages it runs; for
            ``fmt="csr"`` an op the bundle cannot express is refused by the pruner, before any work.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from svdcompress.zoo import lenet300
        >>> with tempfile.TemporaryDirectory() as d:
        ...     res = export_model(lenet300(svdo=True), "onnx", Path(d) / "m.onnx", input_shape=(1, 28, 28))
        >>> res.format
        'onnx'
    """
    from ..analysis import ConventionWarning, analyze
    from ..models import load_model
    from ..structured import prune
    from .csr import export_csr
    from .onnx import export_onnx

    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if bits is not None and fmt != "csr":
        raise InvalidInputError(f"bits= quantises CSR bundles only; got format {fmt!r}")
    auto = isinstance(threshold, str) and threshold == "auto"
    if auto:
        from ..dataspec import check_selectable

        if data is None:
            raise InvalidInputError(
                "threshold='auto' chooses the threshold on held-out data: pass data='fashion-mnist:val' (or "
                "'mnist5k:val', or 'FILE.npz' with x and y); test splits are refused"
            )
        spec = check_selectable(data)  # before any work
    elif data is not None:
        raise InvalidInputError(
            "data= is used to choose the threshold with threshold='auto'; export_model() got a number"
        )
    else:
        threshold = check_threshold(cast(float, threshold))  # a string other than 'auto' is refused there
    shape = None if input_shape is None else check_input_shape(input_shape)
    provenance: dict[str, object] = {}
    # checked before the slow part; the exporter checks again right before writing
    check_output_path(path, force=force, inputs=() if isinstance(source, nn.Module) else (source,))
    if isinstance(source, nn.Module):
        module = source
    else:
        resolved = load_model(
            source,
            model=model,
            trust_pickle=trust_pickle,
            input_shape=shape,
            require_svdo=True,
            convention=convention,
        )
        module, shape = resolved.module, resolved.input_shape
        provenance = dict(resolved.meta.get("provenance") or {})
        if shape is None:
            raise InvalidInputError(
                f"{source}: the checkpoint does not record its input shape; pass input_shape, e.g. 1,28,28"
            )
    if shape is None:
        raise InvalidInputError("export_model() of a module needs input_shape (per example, e.g. (1, 28, 28))")
    selection: dict[str, Any] | None = None
    if auto:
        from ..tuning import tune

        tuned = tune(
            module if isinstance(source, nn.Module) else resolved,
            spec,
            max_drop=max_drop,
            input_shape=shape,
            convention=convention,
        )
        threshold, selection = tuned.threshold, tuned.selection()
    threshold = float(threshold)
    result = prune(module, threshold=threshold, input_shape=shape, require_csr=fmt == "csr", convention=convention)
    # Everything that can fail runs before the artifact is renamed into place: a failure leaves no file.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConventionWarning)  # prune's masking has issued it
            compression: float | None = float(analyze(module, threshold, convention=convention).total["compression"])
    except NoSVDOLayersError:  # a plain model with zeroed weights (Python API only): no log α to count
        compression = None
    if fmt == "csr":
        res = export_csr(
            result.model,
            path,
            input_shape=shape,
            reference=result.masked,
            dtype=dtype,
            force=force,
            threshold=threshold,
            provenance=provenance,
            bits=bits,
            sigma=posterior_sigma(module, threshold, convention) if bits == "auto" else None,
            threshold_selection=selection,
        )
    else:
        res = export_onnx(
            result.model,
            path,
            input_shape=shape,
            reference=result.masked,
            sparse=fmt == "onnx-sparse",
            opset=opset,
            dtype=dtype,
            force=force,
            metadata=None if selection is None else _onnx_metadata(threshold, selection),
        )
    return dataclasses.replace(
        res, parameter_compression=compression, threshold=threshold, threshold_selection=selection
    )


def _onnx_metadata(threshold: float, selection: dict[str, Any]) -> dict[str, str]:
    """ONNX ``metadata_props`` (strings only): the threshold and, as JSON, how it was chosen."""
    return {
        "svdcompress.threshold": repr(threshold),
        "svdcompress.threshold_selection": json.dumps(selection, sort_keys=True),
    }
