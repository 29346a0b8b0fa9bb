"""svdcompress: turn Sparse Variational Dropout models into artifacts that are really small and fast.

One subpackage per pipeline stage, data flowing one way: ``checkpoint`` (read, recognise, analyze) → ``nn``
(SVDO layers, the zoo, a checkpoint's architecture) → ``pruning`` (mask, trace, remove dead units) → ``tuning``
(choose the threshold on data) → ``pipeline`` (resolve a source into a model and a threshold) → ``export``
(ONNX, CSR bundle) → ``runtime`` (run a bundle; numpy and numba only) → ``benchmark`` → ``cli``.

The public names below are imported lazily (PEP 562), so that ``import svdcompress.runtime`` in a
deployment process loads the runtime alone, not the training layers or the model zoo.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors  # no torch: the exception classes only
from ._version import __version__ as __version__

# The public API, one entry per defining module: the lazy-import table and ``__all__`` come from it, and a test
# checks that the TYPE_CHECKING imports below name the same things.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "errors": tuple(_errors.__all__),  # every exception class, as errors.py declares them
    "checkpoint.formats": ("load_checkpoint", "save_checkpoint"),
    "checkpoint.conventions": ("SVDOLayer", "find_svdo_layers"),
    "checkpoint.analysis": ("AnalysisReport", "LayerReport"),
    "checkpoint.bundled": ("bundled_checkpoint",),
    "nn.layers": ("Conv2dSVDO", "ELBOLoss", "LinearSVDO", "example_noise", "kl_divergence", "sparsify"),
    "nn.sequence": ("Conv1dSVDO", "EmbeddingSVDO", "LSTMSVDO"),
    "nn.architecture": ("load_model",),
    "pruning.masking": ("apply_masks_", "mask_model"),
    "pruning.structural": ("PruneConfig", "PruneReport", "PruneResult"),
    "pruning.pt2": ("load_pruned", "save_pruned"),
    "tuning.threshold": ("TuneResult", "tune"),
    "pipeline": ("Prepared", "analyze", "prepare", "prune"),
    "export": ("ExportResult", "export_csr", "export_model", "export_onnx"),
    "benchmark.config": ("BenchConfig",),
    "benchmark.harness": ("BenchReport", "bench"),
}

_EXPORTS: dict[str, str] = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'svdcompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; test_layout checks it matches _PUBLIC
    from .benchmark.config import BenchConfig as BenchConfig
    from .benchmark.harness import BenchReport as BenchReport, bench as bench
    from .checkpoint.analysis import AnalysisReport as AnalysisReport, LayerReport as LayerReport
    from .checkpoint.bundled import bundled_checkpoint as bundled_checkpoint
    from .checkpoint.conventions import SVDOLayer as SVDOLayer, find_svdo_layers as find_svdo_layers
    from .checkpoint.formats import load_checkpoint as load_checkpoint, save_checkpoint as save_checkpoint
    from .errors import (
        AccuracyDropError as AccuracyDropError,
        BundleError as BundleError,
        CheckpointError as CheckpointError,
        ConventionWarning as ConventionWarning,
        ExportError as ExportError,
        InputShapeError as InputShapeError,
        InvalidInputError as InvalidInputError,
        MissingDependencyError as MissingDependencyError,
        NoSVDOLayersError as NoSVDOLayersError,
        OutputExistsError as OutputExistsError,
        SvdcompressError as SvdcompressError,
        UnsupportedOpError as UnsupportedOpError,
        VerificationError as VerificationError,
    )
    from .export import (
        ExportResult as ExportResult,
        export_csr as export_csr,
        export_model as export_model,
        export_onnx as export_onnx,
    )
    from .nn.architecture import load_model as load_model
    from .nn.layers import (
        Conv2dSVDO as Conv2dSVDO,
        ELBOLoss as ELBOLoss,
        LinearSVDO as LinearSVDO,
        example_noise as example_noise,
        kl_divergence as kl_divergence,
        sparsify as sparsify,
    )
    from .nn.sequence import LSTMSVDO as LSTMSVDO, Conv1dSVDO as Conv1dSVDO, EmbeddingSVDO as EmbeddingSVDO
    from .pipeline import Prepared as Prepared, analyze as analyze, prepare as prepare, prune as prune
    from .pruning.masking import apply_masks_ as apply_masks_, mask_model as mask_model
    from .pruning.pt2 import load_pruned as load_pruned, save_pruned as save_pruned
    from .pruning.structural import PruneConfig as PruneConfig, PruneReport as PruneReport, PruneResult as PruneResult
    from .tuning.threshold import TuneResult as TuneResult, tune as tune
