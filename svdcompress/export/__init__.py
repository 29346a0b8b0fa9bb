"""Artifacts: compact ONNX, sparse-initializer ONNX and the CSR bundle, each verified against a reference.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    >>> with tempfile.TemporaryDirectory() as d:
    ...     res = export_csr(model, Path(d) / "m.csr", input_shape=(8,))
    >>> res.format, res.dense_fp32_bytes
    ('csr', 144)
"""

from __future__ import annotations

from ._common import DEFAULT_TOLERANCES, DTYPES, ExportResult
from .api import FORMATS, export_model, posterior_sigma
from .csr import FORMAT_NAME, FORMAT_VERSION, export_csr
from .onnx import export_onnx

__all__ = [
    "DEFAULT_TOLERANCES",
    "DTYPES",
    "FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ExportResult",
    "export_csr",
    "export_model",
    "export_onnx",
    "posterior_sigma",
]
