"""Resolve what the user gave into what the stages take: a model, its input shape, a float threshold, provenance.

:func:`prepare` is the one place that turns a checkpoint file or a live module into an SVDO ``nn.Module``
(through :func:`svdcompress.load_model`), settles the per-example input shape, checks the data spec, chooses
``threshold="auto"`` on held-out data (through :func:`svdcompress.tune`) and gathers the provenance an artifact
records. The stage functions after it (:func:`svdcompress.pruning.structural.prune`, the exporters, the benchmark)
take the resolved float threshold only. :func:`prune` here is the public ``svdcompress.prune``: :func:`prepare`
followed by the structural pruner.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._inputs import check_input_shape
from .checkpoint import DEFAULT_THRESHOLD
from .checkpoint.analysis import AnalysisReport, analyze as analyze_layers
from .errors import InvalidInputError
from .nn.architecture import ResolvedModel, load_model
from .pruning.masking import check_threshold
from .pruning.structural import PruneConfig, PruneResult, prune as prune_model
from .tuning.dataspec import DataSpec, check_selectable
from .tuning.threshold import TuneResult, tune

__all__ = ["DEFAULT_MAX_DROP", "PipelinePruneResult", "Prepared", "analyze", "prepare", "prune"]

DEFAULT_MAX_DROP = 0.5
"""Accuracy points ``threshold="auto"`` may lose against the unthresholded model, unless told otherwise."""

_AUTO_NEEDS_DATA = (
    "threshold='auto' chooses the threshold on held-out data: pass data='fashion-mnist:val' (or 'mnist5k:val', "
    "or 'FILE.npz' with x and y); test splits are refused"
)


@dataclass
class Prepared:
    """What :func:`prepare` resolved: everything a stage needs, nothing it has to decide again."""

    module: nn.Module
    """The SVDO model (not modified by any stage)."""
    input_shape: tuple[int, ...]
    """Per-example input shape, without the batch axis."""
    threshold: float
    """The log α threshold, finite; chosen on ``data`` when ``threshold="auto"`` was asked."""
    convention: str | None = None
    tuned: TuneResult | None = None
    """With ``threshold="auto"``: the sweep that chose the threshold."""
    data: DataSpec | None = None
    """The checked data spec, if one was given."""
    resolved: ResolvedModel | None = None
    """The checkpoint's resolution (None for a live module)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """What the checkpoint recorded of its training (data, split sizes, ...), for artifacts to carry on."""

    def selection(self) -> dict[str, Any] | None:
        """How the threshold was chosen (``TuneResult.selection()``), or None for a threshold given as a number."""
        return None if self.tuned is None else self.tuned.selection()


def prepare(
    source: nn.Module | str | os.PathLike[str] | ResolvedModel,
    *,
    threshold: float | str = DEFAULT_THRESHOLD,
    data: str | DataSpec | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    input_shape: tuple[int, ...] | None = None,
    example_inputs: torch.Tensor | None = None,
    model: str | None = None,
    trust_pickle: bool = False,
    convention: str | None = None,
    data_checks_threshold_only: bool = True,
) -> Prepared:
    """Resolve ``source`` and ``threshold`` for the stages: checks first, then the slow work.

    Args:
        source: a trained SVDO ``nn.Module``, a checkpoint file with SVDO layers, or what :func:`load_model`
            returned for one.
        threshold: a finite log α threshold, or ``"auto"``: chosen on ``data`` by :func:`svdcompress.tune`
            (the largest compression within ``max_drop`` accuracy points of the unthresholded model).
        data: held-out labelled data (``"fashion-mnist:val"``, ``"FILE.npz"``; test splits are refused).
        max_drop: with ``threshold="auto"``, the accuracy points the pick may lose.
        input_shape: per-example input shape; taken from ``example_inputs`` or the checkpoint when not given.
        example_inputs: a batch whose shape gives the input shape.
        model: ``package.module:factory`` building the architecture of a checkpoint that does not record one.
        trust_pickle: allow a checkpoint that is a whole pickled model (unpickling runs code).
        convention: the project the checkpoint comes from, when its names fit several.
        data_checks_threshold_only: refuse ``data`` with a numeric threshold (the caller has no other use for
            it); the exporter, which also checks quantised bundles on data, passes False.

    Raises:
        InvalidInputError: ``"auto"`` without data, data with a number, a test split that would choose, a
            non-finite threshold, no input shape known (each with ``param`` set).
        NoSVDOLayersError, CheckpointError: from loading a checkpoint.

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> p = prepare(lenet300(svdo=True), input_shape=(1, 28, 28))
        >>> p.threshold, p.input_shape
        (3.0, (1, 28, 28))
    """
    auto = isinstance(threshold, str) and threshold == "auto"
    if auto and data is None:
        raise InvalidInputError(_AUTO_NEEDS_DATA, param="data")
    if data is not None and not auto and data_checks_threshold_only:
        raise InvalidInputError(
            "data= is used to choose the threshold with threshold='auto'; got a number", param="data"
        )
    spec = None if data is None else check_selectable(data)  # before any work
    number = None if auto else check_threshold(threshold)  # a string other than 'auto' is refused there
    shape = None if input_shape is None else check_input_shape(input_shape)
    if shape is None and isinstance(example_inputs, torch.Tensor):
        shape = tuple(example_inputs.shape[1:])
    resolved: ResolvedModel | None = None
    if isinstance(source, nn.Module):
        module = source
    else:
        if isinstance(source, ResolvedModel):
            resolved = source
        else:
            resolved = load_model(
                source,
                model=model,
                trust_pickle=trust_pickle,
                input_shape=shape,
                require_svdo=True,
                convention=convention,
            )
        module = resolved.module
        shape = shape or resolved.input_shape
    if shape is None:
        where = "the module" if resolved is None else f"{resolved.checkpoint.path}: the checkpoint"
        raise InvalidInputError(
            f"{where} does not record its input shape; pass input_shape (per example, e.g. 1,28,28)",
            param="input_shape",
        )
    tuned = None
    if auto:
        tuned = tune(
            module if resolved is None else resolved,
            spec,  # type: ignore[arg-type]  # not None: auto without data was refused above
            max_drop=max_drop,
            input_shape=shape,
            convention=convention,
        )
        number = tuned.threshold
    assert number is not None  # internal invariant: a number was given, or auto chose one
    provenance = {} if resolved is None else dict(resolved.meta.get("provenance") or {})
    return Prepared(
        module=module,
        input_shape=shape,
        threshold=float(number),
        convention=convention,
        tuned=tuned,
        data=spec,
        resolved=resolved,
        provenance=provenance,
    )


@dataclass
class PipelinePruneResult(PruneResult):
    """:func:`prune`'s result: the structural pruner's, plus what :func:`prepare` resolved."""

    prepared: Prepared | None = None

    @property
    def tuned(self) -> TuneResult | None:
        """With ``threshold="auto"``: the sweep that chose the threshold."""
        return None if self.prepared is None else self.prepared.tuned


def prune(
    source: nn.Module | str | os.PathLike[str],
    config: PruneConfig | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    data: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    model: str | None = None,
    trust_pickle: bool = False,
    **overrides: Any,
) -> PipelinePruneResult:
    """Mask ``source`` and remove every neuron and filter that can go without changing its outputs.

    :func:`prepare` (checkpoint, input shape, ``threshold="auto"`` on ``data``), then
    :func:`svdcompress.pruning.structural.prune`, which documents the pruning itself.

    Args:
        source: an SVDO ``nn.Module`` (or a plain one with zeroed weights), or a checkpoint file.
        config: options; ``overrides`` replace single fields, e.g. ``prune(m, threshold=2.0)``; the threshold
            may be ``"auto"`` (chosen on ``data``).
        example_inputs: a batch of inputs, shape ``(N, ...)``; also what the result is verified on.
        input_shape: the per-example input shape, when neither ``example_inputs`` nor the checkpoint gives it.
        data: with ``threshold="auto"``, the held-out data spec the threshold is chosen on; never a test split.
        max_drop: with ``threshold="auto"``, the accuracy points the pick may lose.
        model: ``package.module:factory`` for a checkpoint that does not record its architecture.
        trust_pickle: allow a checkpoint that is a whole pickled model.
        **overrides: :class:`PruneConfig` fields.

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> result = prune(lenet300(svdo=True), input_shape=(1, 28, 28))
        >>> result.report.params_after <= result.report.params_before
        True
    """
    base = config if config is not None else PruneConfig()
    threshold = overrides.pop("threshold", base.threshold)
    convention = overrides.get("convention", base.convention)
    if example_inputs is not None and not isinstance(example_inputs, torch.Tensor):
        raise InvalidInputError(
            f"example_inputs must be a tensor, got {type(example_inputs).__name__}", param="example_inputs"
        )
    if isinstance(source, nn.Module) and input_shape is None and example_inputs is None:
        raise InvalidInputError(
            "prune() needs example_inputs or input_shape (per example, e.g. (1, 28, 28)) to trace shapes and "
            "verify the pruned model",
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
    )
    result = prune_model(
        prepared.module,
        base,
        example_inputs=example_inputs,
        input_shape=prepared.input_shape,
        threshold=prepared.threshold,
        **overrides,
    )
    return PipelinePruneResult(
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(result)}, prepared=prepared
    )


def analyze(
    source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    trust_pickle: bool = False,
    convention: str | None = None,
    model: str | None = None,
) -> AnalysisReport:
    """Report per layer what ``log α < threshold`` keeps: :func:`svdcompress.checkpoint.analysis.analyze`, with
    ``model="package.module:factory"`` building the network of a checkpoint file first, so that its layers are
    counted from the live model (e.g. one row per layer for numenta's VDropCentralData, whose state_dict alone is
    one flat group).

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> [r.name for r in analyze(lenet300(svdo=True)).layers]
        ['fc1', 'fc2', 'fc3']
    """
    module = None
    if model is not None and not isinstance(source, (nn.Module, Mapping)):
        module = load_model(source, model=model, trust_pickle=trust_pickle, convention=convention).module
    elif model is not None:
        raise InvalidInputError("model= applies to a checkpoint file, not to a module or a state_dict", param="model")
    return analyze_layers(source, threshold, trust_pickle=trust_pickle, convention=convention, module=module)
