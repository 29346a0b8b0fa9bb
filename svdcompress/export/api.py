"""One call from a checkpoint (or a live SVDO model) to a verified artifact: what ``svdcompress export`` runs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._inputs import INPUT_DTYPES, example_inputs as example_batch, vocabulary
from .._io import check_output_path
from ..checkpoint import DEFAULT_THRESHOLD
from ..errors import AccuracyDropError, InvalidInputError, NoSVDOLayersError
from ..pruning.masking import check_threshold
from ..runtime import quant as Q
from ._common import ExportResult

__all__ = ["FORMATS", "INPUT_DTYPES", "export_model", "posterior_sigma", "vocabulary"]

_log = logging.getLogger("svdcompress.export")

FORMATS = ("onnx", "onnx-sparse", "csr")
"""Artifact formats :func:`export_model` writes."""


def posterior_sigma(
    model: nn.Module, threshold: float = DEFAULT_THRESHOLD, convention: str | None = None
) -> dict[str, float]:
    """Module name → median posterior standard deviation σ = exp(log σ² / 2) of the weights it keeps.

    For the SVDO layers of ``model`` (every convention, each masked by its own formula); what ``bits="auto"``
    sizes each layer's quantisation step by.
    """
    from ..checkpoint.conventions import keep_mask
    from ..pruning.masking import layers_of_model

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
    max_quant_drop: float = 0.3,
    round_to: int | str | None = None,
    example_inputs: torch.Tensor | None = None,
    input_dtype: str = "float32",
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
            fewest bits whose RMS error stays within √c·σ, σ the median posterior σ of its kept weights (from
            the SVDO layers' log σ²) and c = :data:`~svdcompress.runtime.quant.AUTO_C` (see
            :func:`~svdcompress.export.export_csr`). Without ``data`` the accuracy is not checked (logged on
            the ``svdcompress.export`` logger).
        convention: the project the checkpoint comes from, when its names fit several (``weight`` +
            ``log_sigma2``: ``"pytorch-ard"``, ``"bayeswatch"``, ``"svdcompress"``); every layer is masked by
            its convention's formula, eps, clip and comparison, as :func:`svdcompress.analyze` counts it.
        data: held-out labelled data (``"fashion-mnist:val"``, ``"FILE.npz"``, ...; test splits are refused):
            with ``threshold="auto"`` the threshold is chosen on it; with ``bits`` (2-8 or ``"auto"``) the
            quantised bundle's accuracy on it is checked against the fp32 SVDO model's before the file is
            written (``ExportResult.accuracy``).
        max_drop: with ``threshold="auto"``: the accuracy points the pick may lose.
        max_quant_drop: with ``bits`` and ``data``: the accuracy points quantisation may lose against the fp32
            pruned model at the same threshold; more fails the export and leaves no file.
        round_to: keep extra dead (exact) units so that every pruned layer's width is a multiple of this (ONNX
            Runtime runs ragged widths slower); ``"auto"``: time :data:`ROUND_TO_CANDIDATES` in ONNX Runtime on
            this machine and keep the fastest (recorded in the ONNX ``metadata_props``). Default:
            :data:`ONNX_ROUND_TO` for the ONNX formats, 1 for a CSR bundle (its kernels gain nothing from it).
        example_inputs: a batch ``(N, ...)`` to trace, prune and verify with, as :func:`~svdcompress.prune` takes
            it: e.g. int64 token ids for a model that starts with an embedding. Its shape gives ``input_shape``.
        input_dtype: without ``example_inputs``: ``"float32"`` (seeded standard-normal inputs) or ``"int64"``
            (seeded ids below the smallest embedding's vocabulary). Integer inputs ``(N, L)`` get a dynamic
            sequence axis in ONNX where the model takes other lengths (``ExportResult.dynamic_axes``); a CSR
            bundle of such a model declares ``input_dtype: int64`` and is run on ids of the exported length.

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
        >>> from svdcompress.nn.zoo import lenet300
        >>> with tempfile.TemporaryDirectory() as d:
        ...     res = export_model(lenet300(svdo=True), "onnx", Path(d) / "m.onnx", input_shape=(1, 28, 28))
        >>> res.format
        'onnx'
    """
    from ..checkpoint.analysis import analyze
    from ..errors import ConventionWarning
    from ..pipeline import prepare
    from ..pruning.structural import prune
    from .csr import export_csr
    from .onnx import export_onnx

    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", param="fmt")
    if bits is not None and fmt != "csr":
        raise InvalidInputError(f"bits= quantises CSR bundles only; got format {fmt!r}", param="bits")
    auto = isinstance(threshold, str) and threshold == "auto"
    quantised = bits is not None and bits not in (16, "16")
    if not (math.isfinite(max_quant_drop) and 0 <= max_quant_drop <= 100):
        raise InvalidInputError(
            f"max_quant_drop must be between 0 and 100 accuracy points, got {max_quant_drop!r}", param="max_quant_drop"
        )
    if data is not None and not (auto or quantised):
        raise InvalidInputError(
            "data= chooses the threshold (threshold='auto') or checks a quantised bundle's accuracy (bits=2..8 or "
            "'auto'); export_model() got neither",
            param="data",
        )
    dtype_in = _input_dtype(example_inputs, input_dtype)
    # checked before the slow part; the exporter checks again right before writing
    check_output_path(path, force=force, inputs=() if isinstance(source, nn.Module) else (source,))
    if isinstance(source, nn.Module) and input_shape is None and example_inputs is None:
        raise InvalidInputError(
            "export_model() of a module needs input_shape (per example, e.g. (1, 28, 28)) or example_inputs",
            param="input_shape",
        )
    prepared = prepare(
        source,
        threshold=threshold,
        data=data,
        max_drop=max_drop,
        input_shape=input_shape,
        example_inputs=example_inputs,
        model=model,
        trust_pickle=trust_pickle,
        convention=convention,
        data_checks_threshold_only=False,
    )
    module, shape, threshold = prepared.module, prepared.input_shape, prepared.threshold
    if (
        fmt == "csr"
        and not dtype_in.is_floating_point
        and not any(isinstance(m, nn.Embedding) for m in module.modules())
    ):
        raise InvalidInputError(
            f"integer inputs are token ids, which a CSR bundle reads with an nn.Embedding, and "
            f"{type(module).__name__} has none: export it with input_dtype float32",
            param="input_dtype",
        )
    spec, provenance, selection = prepared.data, prepared.provenance, prepared.selection()
    example = example_inputs
    if example is None and not dtype_in.is_floating_point:
        example = example_batch(shape, _EXAMPLES, dtype=dtype_in, high=vocabulary(module))
    if round_to is None:
        round_to = 1 if fmt == "csr" else ONNX_ROUND_TO
    if isinstance(round_to, str) and round_to != "auto":
        raise InvalidInputError(f"round_to must be a number of channels or 'auto', got {round_to!r}", param="round_to")
    if round_to == "auto" and fmt == "csr":
        round_to = 1  # the CSR runtime has no preference for round widths: extra dead channels only cost time
    if round_to == "auto" and example is not None and not example.is_floating_point():
        round_to = ONNX_ROUND_TO  # the timing runs on seeded float inputs; ids need the model's vocabulary
    rounding: dict[str, Any] | None = None
    if round_to == "auto":
        round_to, rounding = _choose_round_to(module, shape, threshold, convention, opset)
    result = prune(
        module,
        threshold=threshold,
        input_shape=shape,
        example_inputs=example,
        require_csr=fmt == "csr",
        convention=convention,
        round_to=round_to,
    )
    # Everything that can fail runs before the artifact is renamed into place: a failure leaves no file.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConventionWarning)  # prune's masking has issued it
            compression: float | None = float(analyze(module, threshold, convention=convention).total["compression"])
    except NoSVDOLayersError:  # a plain model with zeroed weights (Python API only): no log α to count
        compression = None
    if fmt == "csr":
        sigma = posterior_sigma(module, threshold, convention) if bits == "auto" else None
        check = _accuracy_check(result.masked, spec, max_quant_drop, path, bits) if quantised and data else None
        # bits="auto" checked on data: a bundle that loses too much is retried with quantisation noise held to
        # a quarter, then a sixteenth, of the default fraction of σ² before the export gives up
        tries = AUTO_C_RETRIES if bits == "auto" and check is not None else AUTO_C_RETRIES[:1]
        for i, c in enumerate(tries):
            try:
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
                    sigma=sigma,
                    threshold_selection=selection,
                    check=check,
                    auto_c=c,
                    example_inputs=example,
                )
                break
            except AccuracyDropError:
                if i == len(tries) - 1:
                    raise
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
            metadata=_onnx_metadata(threshold, selection, rounding),
            example_inputs=example,
        )
    if quantised and data is None:
        _log.info(
            "%s: quantised to bits=%s without data: accuracy was not checked; pass data= (held-out, e.g. "
            "'fashion-mnist:val') to check it before the file is written",
            res.path,
            bits,
        )
    return dataclasses.replace(
        res,
        parameter_compression=compression,
        threshold=threshold,
        threshold_selection=selection,
        round_to=int(round_to),
        round_to_selection=rounding,
    )


_EXAMPLES = 8  # the batch prune traces and verifies with, as for input_shape


def _input_dtype(example: torch.Tensor | None, name: str) -> torch.dtype:
    if example is not None:
        if not isinstance(example, torch.Tensor):
            raise InvalidInputError(
                f"example_inputs must be a tensor, got {type(example).__name__}", param="example_inputs"
            )
        return example.dtype
    if name not in INPUT_DTYPES:
        raise InvalidInputError(
            f"input_dtype {name!r} is not known; choose one of {', '.join(INPUT_DTYPES)}", param="input_dtype"
        )
    return INPUT_DTYPES[name]


AUTO_C_RETRIES = (Q.AUTO_C, Q.AUTO_C / 4, Q.AUTO_C / 16)
"""``bits="auto"`` with ``data``: the ``c`` values tried in turn until the bundle keeps its accuracy."""


def _accuracy_check(
    reference: nn.Module, spec: Any, max_drop: float, path: str | os.PathLike[str], bits: int | str | None
) -> Callable[[Any], dict[str, Any]]:
    """A check for :func:`export_csr`: the quantised bundle's accuracy on ``spec`` against ``reference`` (the fp32
    masked model), raising :class:`ExportError` when it loses more than ``max_drop`` points."""
    from ..tuning.dataspec import load_data

    known: dict[str, Any] = {}  # the data and the reference's accuracy, once for every bundle tried

    def check(bundle: Any) -> dict[str, Any]:
        if not known:
            x, y = load_data(spec)
            assert y is not None  # check_selectable refused unlabelled data
            with torch.no_grad():
                ref = np.concatenate([reference(x[i : i + 500]).argmax(1).numpy() for i in range(0, len(x), 500)])
            known.update(xs=x.numpy().astype(np.float32), ys=y.numpy())
            known["acc_ref"] = 100.0 * float((ref == known["ys"]).mean())
        xs, ys, acc_ref = known["xs"], known["ys"], known["acc_ref"]
        q_pred = [np.asarray(bundle(xs[i : i + 500])).argmax(1) for i in range(0, len(xs), 500)]
        acc_q = 100.0 * float((np.concatenate(q_pred) == ys).mean())
        drop = acc_ref - acc_q
        if drop > max_drop:
            fix = (
                "even with quantisation noise held to 1/16 of the default; give --bits 8"
                if bits == "auto"
                else "give more bits (or --bits auto)"
            )
            raise AccuracyDropError(
                f"{path}: the quantised bundle loses {drop:.2f} accuracy points on {spec} ({acc_q:.2f}% against "
                f"{acc_ref:.2f}% unquantised), more than the {max_drop:g} allowed; no file was written: {fix}, "
                "or allow more with --max-quant-drop"
            )
        return {
            "data": str(spec),
            "examples": len(xs),
            "fp32_accuracy": acc_ref,
            "accuracy": acc_q,
            "drop_points": drop,
            "max_drop": max_drop,
        }

    return check


def _onnx_metadata(
    threshold: float, selection: dict[str, Any] | None, rounding: dict[str, Any] | None
) -> dict[str, str] | None:
    """ONNX ``metadata_props`` (strings only): the threshold and, as JSON, how it and ``round_to`` were chosen."""
    if selection is None and rounding is None:
        return None
    props = {"svdcompress.threshold": repr(threshold)}
    if selection is not None:
        props["svdcompress.threshold_selection"] = json.dumps(selection, sort_keys=True)
    if rounding is not None:
        props["svdcompress.round_to"] = str(rounding["round_to"])
        props["svdcompress.round_to_selection"] = json.dumps(rounding, sort_keys=True)
    return props


ONNX_ROUND_TO = 8
"""The ONNX formats' default ``round_to``: in ``benchmarks/results/round_to.md`` 8 was as fast as or faster than the
ragged widths on every model and batch, and the compact ONNX at least as fast as the dense one."""

ROUND_TO_CANDIDATES = (1, 4, 8, 16)
"""What ``round_to="auto"`` times in ONNX Runtime."""

_ROUND_TO_BATCHES = (1, 32)


def _choose_round_to(
    module: nn.Module, shape: tuple[int, ...], threshold: float, convention: str | None, opset: int
) -> tuple[int, dict[str, Any]]:
    """Prune at each of :data:`ROUND_TO_CANDIDATES`, time each compact ONNX in ONNX Runtime on this machine (one
    thread; batches 1 and 32, interleaved) and return the fastest (the lowest geometric mean of the two medians)
    with the record of what was timed. Candidates that give the same widths are timed once."""
    import tempfile
    import time

    from ..pruning.structural import prune
    from .onnx import export_onnx, ort_session

    widths: dict[tuple[int, ...], int] = {}
    files: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="svdcompress-round-to-") as d:
        for r in ROUND_TO_CANDIDATES:
            pruned = prune(module, threshold=threshold, input_shape=shape, convention=convention, round_to=r)
            key = tuple(int(p.shape[0]) for p in pruned.model.parameters())
            if key in widths:
                continue
            widths[key] = r
            files[r] = f"{d}/r{r}.onnx"
            export_onnx(pruned.model, files[r], input_shape=shape, reference=pruned.masked, opset=opset)
        sessions = {r: ort_session(f, threads=1) for r, f in files.items()}
        times: dict[int, list[float]] = {r: [] for r in sessions}
        rng = np.random.default_rng(0)
        for b in _ROUND_TO_BATCHES:
            x = rng.standard_normal((b, *shape)).astype(np.float32)
            samples: dict[int, list[float]] = {r: [] for r in sessions}
            for s in sessions.values():
                s.run(None, {s.get_inputs()[0].name: x})
            for rep in range(7):
                for r in list(sessions)[rep % len(sessions) :] + list(sessions)[: rep % len(sessions)]:
                    s = sessions[r]
                    feed = {s.get_inputs()[0].name: x}
                    t0 = time.perf_counter()
                    for _ in range(3):
                        s.run(None, feed)
                    samples[r].append((time.perf_counter() - t0) / 3 * 1e6)
            for r in sessions:
                times[r].append(float(np.median(samples[r])))
    score = {r: float(np.exp(np.mean(np.log(v)))) for r, v in times.items()}
    best = min(score, key=lambda r: (score[r], r))
    record = {
        "round_to": best,
        "chosen_by": "ONNX Runtime latency on this machine, 1 thread, geometric mean over batches",
        "batches": list(_ROUND_TO_BATCHES),
        "median_us": {str(r): [round(v, 1) for v in times[r]] for r in times},
    }
    return best, record
