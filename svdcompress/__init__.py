"""svdcompress: turn Sparse Variational Dropout models into artifacts that are really small and fast.

Pipeline, one module per stage: checkpoint → conventions → analysis → masking → structured
(graph) → export → runtime → bench.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .analysis import AnalysisReport, LayerReport, analyze
from .checkpoint import load_checkpoint, save_checkpoint
from .conventions import SVDOLayer, find_svdo_layers
from .errors import (
    CheckpointError,
    ExportError,
    NoSVDOLayersError,
    OutputExistsError,
    SvdcompressError,
    UnsupportedOpError,
    VerificationError,
)
from .masking import apply_masks_, mask_model
from .models import bundled_checkpoint, load_model
from .svdo import Conv2dSVDO, ELBOLoss, LinearSVDO, kl_divergence, sparsify

try:
    __version__ = version("svdcompress")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "AnalysisReport",
    "CheckpointError",
    "Conv2dSVDO",
    "ELBOLoss",
    "ExportError",
    "LayerReport",
    "LinearSVDO",
    "NoSVDOLayersError",
    "OutputExistsError",
    "SVDOLayer",
    "SvdcompressError",
    "UnsupportedOpError",
    "VerificationError",
    "__version__",
    "analyze",
    "apply_masks_",
    "bundled_checkpoint",
    "find_svdo_layers",
    "kl_divergence",
    "load_checkpoint",
    "load_model",
    "mask_model",
    "save_checkpoint",
    "sparsify",
]
