"""svdcompress: turn Sparse Variational Dropout models into artifacts that are really small and fast.

Pipeline, one module per stage: checkpoint → conventions → analysis → masking → structured
(graph) → export → runtime → bench.

The public names below are imported lazily (PEP 562), so that ``import svdcompress.runtime`` in a
deployment process loads the runtime alone, not the training layers or the model zoo.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("svdcompress")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

# public name -> defining submodule
_EXPORTS: dict[str, str] = {
    "AnalysisReport": "analysis",
    "LayerReport": "analysis",
    "analyze": "analysis",
    "BenchConfig": "bench",
    "BenchReport": "bench",
    "bench": "bench",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "SVDOLayer": "conventions",
    "find_svdo_layers": "conventions",
    "CheckpointError": "errors",
    "ExportError": "errors",
    "NoSVDOLayersError": "errors",
    "OutputExistsError": "errors",
    "SvdcompressError": "errors",
    "UnsupportedOpError": "errors",
    "VerificationError": "errors",
    "ExportResult": "export",
    "export_csr": "export",
    "export_model": "export",
    "InvalidInputError": "errors",
    "InputShapeError": "errors",
    "MissingDependencyError": "errors",
    "BundleError": "errors",
    "export_onnx": "export",
    "apply_masks_": "masking",
    "mask_model": "masking",
    "bundled_checkpoint": "models",
    "load_model": "models",
    "load_pruned": "pt2",
    "save_pruned": "pt2",
    "PruneConfig": "structured",
    "PruneReport": "structured",
    "PruneResult": "structured",
    "prune": "structured",
    "Conv2dSVDO": "svdo",
    "ELBOLoss": "svdo",
    "LinearSVDO": "svdo",
    "kl_divergence": "svdo",
    "sparsify": "svdo",
    "TuneResult": "tuning",
    "tune": "tuning",
}

__all__ = [
    "AnalysisReport",
    "BenchConfig",
    "BenchReport",
    "BundleError",
    "CheckpointError",
    "Conv2dSVDO",
    "ELBOLoss",
    "ExportError",
    "ExportResult",
    "InputShapeError",
    "InvalidInputError",
    "LayerReport",
    "LinearSVDO",
    "MissingDependencyError",
    "NoSVDOLayersError",
    "OutputExistsError",
    "PruneConfig",
    "PruneReport",
    "PruneResult",
    "SVDOLayer",
    "SvdcompressError",
    "TuneResult",
    "UnsupportedOpError",
    "VerificationError",
    "__version__",
    "analyze",
    "apply_masks_",
    "bench",
    "bundled_checkpoint",
    "export_csr",
    "export_model",
    "export_onnx",
    "find_svdo_layers",
    "kl_divergence",
    "load_checkpoint",
    "load_model",
    "load_pruned",
    "mask_model",
    "prune",
    "save_checkpoint",
    "save_pruned",
    "sparsify",
    "tune",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'svdcompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .analysis import AnalysisReport, LayerReport, analyze
    from .bench import BenchConfig, BenchReport, bench
    from .checkpoint import load_checkpoint, save_checkpoint
    from .conventions import SVDOLayer, find_svdo_layers
    from .errors import (
        BundleError,
        CheckpointError,
        ExportError,
        InputShapeError,
        InvalidInputError,
        MissingDependencyError,
        NoSVDOLayersError,
        OutputExistsError,
        SvdcompressError,
        UnsupportedOpError,
        VerificationError,
    )
    from .export import ExportResult, export_csr, export_model, export_onnx
    from .masking import apply_masks_, mask_model
    from .models import bundled_checkpoint, load_model
    from .pt2 import load_pruned, save_pruned
    from .structured import PruneConfig, PruneReport, PruneResult, prune
    from .svdo import Conv2dSVDO, ELBOLoss, LinearSVDO, kl_divergence, sparsify
    from .tuning import TuneResult, tune
