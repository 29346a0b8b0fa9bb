"""Per-layer sparsity report of an SVDO model: what a threshold on log alpha keeps and removes.

Works without the model's code: a checkpoint file, a state_dict or an ``nn.Module``.
Each layer is processed in row chunks, so memory stays near the size of one
theta + log sigma² pair even for very large checkpoints.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import release_pages
from ..errors import ConventionWarning, InvalidInputError
from . import DEFAULT_THRESHOLD
from .conventions import (
    SVDOLayer,
    central_data_layers,
    central_data_note,
    find_svdo_layers,
    keep_rule,
    log_alpha as _log_alpha,
    module_layers,
)
from .formats import load_checkpoint

__all__ = [
    "AnalysisReport",
    "ConventionWarning",
    "LayerReport",
    "ambiguity_warnings",
    "analyze",
    "layers_of",
    "live_layers",
]


_HIST_RANGE = (-15.0, 15.0)
_HIST_BINS = 60
_CHUNK_ELEMS = 1 << 20  # ~4 MB of float32 per chunk: the temporaries of one chunk stay ~40 MB
_EXACT_MEDIAN_MAX = 1 << 24


@dataclass
class LayerReport:
    """One row of the table. ``shape`` is PyTorch layout; ``dead_*`` count all-zero rows/filters and
    all-zero input columns/channels of the masked weight. A "flat" row (numenta's VDropCentralData read from a
    state_dict) has no rows or columns: ``outputs``, ``inputs`` and ``dead_*`` are 0."""

    name: str
    kind: str
    convention: str
    shape: list[int]
    weights: int
    kept: int
    sparsity: float  # percent of weights removed
    compression: float  # weights / kept
    outputs: int
    inputs: int
    dead_outputs: int
    dead_inputs: int
    biases: int
    log_alpha_min: float
    log_alpha_median: float
    log_alpha_max: float
    log_alpha_hist: list[int] = field(default_factory=list)


@dataclass
class AnalysisReport:
    """The whole report. ``total`` counts weights only; biases are reported apart (``total['biases']``)."""

    source: str
    threshold: float
    layers: list[LayerReport]
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> dict[str, Any]:
        weights = sum(r.weights for r in self.layers)
        kept = sum(r.kept for r in self.layers)
        biases = sum(r.biases for r in self.layers)
        return {
            "weights": weights,
            "kept": kept,
            "sparsity": 100.0 * (1 - kept / weights) if weights else 0.0,
            "compression": weights / kept if kept else math.inf,
            "biases": biases,
            "compression_with_biases": (weights + biases) / (kept + biases) if kept + biases else math.inf,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``{"layers": [...], "total": {...}, "threshold", "source", "hist_range", ...}``."""
        total = self.total
        for k in ("compression", "compression_with_biases"):
            if math.isinf(total[k]):
                total[k] = None  # JSON has no infinity: every weight is pruned
        layers = []
        for r in self.layers:
            d = asdict(r)
            if math.isinf(d["compression"]):
                d["compression"] = None
            layers.append(d)
        return {
            "source": self.source,
            "threshold": self.threshold,
            "layers": layers,
            "total": total,
            "biases_counted_separately": True,
            "hist_range": list(_HIST_RANGE),
            "hist_bins": _HIST_BINS,
            "meta": self.meta,
            "warnings": list(self.warnings),
        }

    def format_table(self) -> str:
        """The human table: one row per layer and a total row (the paper's |W| / |W≠0|)."""
        head = [
            "layer",
            "kind",
            "shape",
            "weights",
            "kept",
            "sparsity%",
            "compr.",
            "dead out",
            "dead in",
            "log α min/med/max",
        ]
        rows = []
        for r in self.layers:
            rows.append(
                [
                    r.name,
                    r.kind,
                    "×".join(map(str, r.shape)),
                    f"{r.weights:,}",
                    f"{r.kept:,}",
                    f"{r.sparsity:.2f}",
                    _fmt_x(r.compression),
                    "-" if r.kind == "flat" else f"{r.dead_outputs}/{r.outputs}",
                    "-" if r.kind == "flat" else f"{r.dead_inputs}/{r.inputs}",
                    f"{r.log_alpha_min:.1f} / {r.log_alpha_median:.1f} / {r.log_alpha_max:.1f}",
                ]
            )
        t = self.total
        rows.append(
            [
                "total",
                "",
                "",
                f"{t['weights']:,}",
                f"{t['kept']:,}",
                f"{t['sparsity']:.2f}",
                _fmt_x(t["compression"]),
                "",
                "",
                "",
            ]
        )
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        right = {3, 4, 5, 6, 7, 8}

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        sep = "  ".join("-" * w for w in widths)
        out = [f"{self.source}: threshold log α < {self.threshold:g}", line(head), sep]
        out += [line(r) for r in rows[:-1]] + [sep, line(rows[-1])]
        out.append(
            f"Weights only: {t['biases']:,} biases are counted apart "
            f"(compression with biases: {_fmt_x(t['compression_with_biases'])})."
        )
        return "\n".join(out)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write one log α histogram per layer, the threshold marked and the kept side shaded.

        The image format follows the suffix (``.png``, ``.svg``, ``.pdf``, ...).

        Raises:
            MissingDependencyError: matplotlib is not installed (``pip install 'svdcompress[plot]'``).
            InvalidInputError: a suffix matplotlib cannot write.
        """
        from .._plot import image_format, pyplot, save_figure

        image_format(path)  # before drawing anything
        plt = pyplot()
        n = len(self.layers)
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        lo, hi = _HIST_RANGE
        width = (hi - lo) / _HIST_BINS
        centers = [lo + width * (i + 0.5) for i in range(_HIST_BINS)]
        kept_color, removed_color = "#4477aa", "#bbbbbb"
        colors = [kept_color if c < self.threshold else removed_color for c in centers]
        t = f"{self.threshold:g}"
        for ax, r in zip(axes.flat, self.layers, strict=False):
            ax.axvspan(lo, self.threshold, color="#228833", alpha=0.08, lw=0)
            ax.bar(centers, r.log_alpha_hist, width=width, color=colors, log=True)
            ax.axvline(self.threshold, color="#cc3311", linestyle="--")
            ax.set_xlim(lo, hi)
            ax.set_title(f"{r.name}: {_fmt_x(r.compression)} kept {r.kept:,}/{r.weights:,}", fontsize=9)
            ax.set_xlabel("log α (clipped to ±15)")
            ax.set_ylabel("weights")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        from matplotlib.patches import Patch

        axes.flat[0].legend(
            handles=[
                Patch(color=kept_color, label=f"kept: log α < {t}"),
                Patch(color=removed_color, label=f"removed: log α ≥ {t}"),
                plt.Line2D([], [], color="#cc3311", linestyle="--", label=f"threshold {t}"),
            ],
            fontsize=7,
        )
        fig.suptitle(f"log α per layer: {self.source}", fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)


def _fmt_x(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}×"


def layers_of(model: nn.Module, convention: str | None = None) -> list[SVDOLayer]:
    """SVDO layers of a live module: every submodule holding a weight + log-variance pair of a known convention
    (:func:`svdcompress.checkpoint.conventions.module_layers`: an LSTM gives one per weight matrix), then
    numenta's VDropCentralData layers.

    The convention comes from ``convention`` (when it reads the layer's names), from the tag
    :func:`svdcompress.load_model` leaves when the file settled it, from the layer's class, else from its names.
    """
    out = []
    for name, m in model.named_modules():
        out += module_layers(m, name, convention)
    return out


_central_data_layers = central_data_layers  # the name it had here


def live_layers(model: nn.Module, convention: str | None = None) -> list[SVDOLayer]:
    """:func:`layers_of` and the VDropCentralData layers of ``model``, refused when there are none.

    Raises:
        NoSVDOLayersError: no SVDO layer in ``model``; the message lists the pairs looked for.
        InvalidInputError: ``convention`` reads none of its layers.
    """
    from ..errors import NoSVDOLayersError
    from .conventions import known_pairs

    layers = layers_of(model, convention) + central_data_layers(model)
    name = type(model).__name__
    if not layers:
        raise NoSVDOLayersError(
            f"{name}: the module has no SVDO layers (a submodule holding one of: {known_pairs()}); "
            "wrap a plain model with svdcompress.nn.layers.sparsify and train it first"
        )
    if convention is not None and not any(layer.convention.name == convention for layer in layers):
        raise InvalidInputError(f"{name}: convention={convention!r} reads none of the module's SVDO layers")
    return layers


@torch.no_grad()
def _flips(layer: SVDOLayer, threshold: float) -> dict[str, int]:
    """Per alternative convention: how many of the layer's weights it keeps where the chosen one drops, or
    the reverse. Chunked like the report."""
    theta, ls2 = layer.theta, layer.log_sigma2
    rows = max(1, _CHUNK_ELEMS // max(1, theta[0].numel()))
    out = dict.fromkeys((c.name for c in layer.alternatives), 0)
    for r0 in range(0, theta.shape[0], rows):
        th, s2 = theta[r0 : r0 + rows].float(), ls2[r0 : r0 + rows]
        keep = keep_rule(_log_alpha(th, s2, layer.convention), th, threshold, layer.convention)
        for c in layer.alternatives:
            out[c.name] += int((keep != keep_rule(_log_alpha(th, s2, c), th, threshold, c)).sum())
    return out


def ambiguity_warnings(name: str, layers: list[SVDOLayer], threshold: float) -> list[str]:
    """One message when the candidate formulas for the file's names disagree on some weight."""
    per_layer: dict[str, dict[str, int]] = {}
    for layer in layers:
        if layer.alternatives:
            flips = {k: v for k, v in _flips(layer, threshold).items() if v}
            if flips:
                per_layer[layer.name] = flips
    if not per_layer:
        return []
    chosen = next(layer.convention for layer in layers if layer.alternatives)
    options = [chosen, *next(layer.alternatives for layer in layers if layer.alternatives)]
    others = sorted({k for flips in per_layer.values() for k in flips})
    detail = "; ".join(
        f"{layer}: " + ", ".join(f"{flips[k]:,} under {k}" for k in others if k in flips)
        for layer, flips in per_layer.items()
    )
    formulas = "; ".join(f"{c.name}: {c.formula()}" for c in options)
    return [
        f"{name}: weight + log_sigma2 is written by {', '.join(c.name for c in options)} with different formulas "
        f"({formulas}), and they keep different weights ({detail}). Read as {chosen.name}; if the file comes from "
        f"another project, pass convention=NAME with one of {', '.join(c.name for c in options)}"
    ]


@torch.no_grad()
def _layer_report(layer: SVDOLayer, threshold: float) -> LayerReport:
    theta, ls2 = layer.theta, layer.log_sigma2  # (out, in[, kh, kw])
    is_flat = theta.dim() == 1  # VDropCentralData: one vector, chunked as (n, 1); it has no units
    if is_flat:
        theta, ls2 = theta.reshape(-1, 1), ls2.reshape(-1, 1)
    out_units, in_units = theta.shape[0], theta.shape[1]
    row_elems = max(1, theta[0].numel())
    rows_per_chunk = max(1, _CHUNK_ELEMS // row_elems)
    kept = 0
    row_alive = torch.zeros(out_units, dtype=torch.bool)
    col_alive = torch.zeros(in_units, dtype=torch.bool)
    hist = torch.zeros(_HIST_BINS, dtype=torch.int64)
    la_min, la_max = math.inf, -math.inf
    # Exact median for layers up to _EXACT_MEDIAN_MAX weights: log alpha goes into one preallocated buffer
    # (at most 64 MB) that is partitioned in place, instead of a list of chunks, their concatenation and a sort.
    exact_buf = torch.empty(theta.numel() if theta.numel() <= _EXACT_MEDIAN_MAX else 0)
    filled = 0
    for r0 in range(0, out_units, rows_per_chunk):
        th = theta[r0 : r0 + rows_per_chunk].float()
        la = _log_alpha(th, ls2[r0 : r0 + rows_per_chunk], layer.convention)  # (rows, in[, kh, kw])
        keep = keep_rule(la, th, threshold, layer.convention)
        kept += int(keep.sum())
        flat = keep.reshape(keep.shape[0], keep.shape[1], -1)  # (rows, in, k)
        row_alive[r0 : r0 + rows_per_chunk] = flat.any(dim=2).any(dim=1)
        col_alive |= flat.any(dim=2).any(dim=0)
        # torch.where, not la[isfinite]: boolean indexing builds int64 indices, 4× the chunk's size.
        is_finite = torch.isfinite(la)
        if bool(is_finite.any()):
            la_min = min(la_min, float(torch.where(is_finite, la, math.inf).min()))
            la_max = max(la_max, float(torch.where(is_finite, la, -math.inf).max()))
        if la.numel() and not bool(is_finite.all()):
            la_max = math.inf  # theta exactly 0 without eps (kefirski): log alpha is +inf
        hist += torch.histc(la.clamp(*_HIST_RANGE), bins=_HIST_BINS, min=_HIST_RANGE[0], max=_HIST_RANGE[1]).long()
        if exact_buf.numel():
            exact_buf[filled : filled + la.numel()] = la.reshape(-1)
            filled += la.numel()
        if theta.is_contiguous() and ls2.is_contiguous():  # rows of a transposed (TF layout) view: freed below
            release_pages(theta[r0 : r0 + rows_per_chunk])
            release_pages(ls2[r0 : r0 + rows_per_chunk])
    release_pages(theta)
    release_pages(ls2)
    if exact_buf.numel():
        # torch.median's value: the lower of the two middle elements.
        buf = exact_buf.numpy()
        k = (buf.size - 1) // 2
        buf.partition(k)
        median = float(buf[k])
    else:
        # Median from the histogram: accurate to one bin (0.5) for layers too big to sort.
        csum = torch.cumsum(hist, 0)
        idx = int(torch.searchsorted(csum, (csum[-1] + 1) // 2))
        lo, hi = _HIST_RANGE
        median = lo + (hi - lo) * (idx + 0.5) / _HIST_BINS
    weights = theta.numel()
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        convention=layer.convention.name,
        shape=list(layer.theta.shape),
        weights=weights,
        kept=kept,
        sparsity=100.0 * (1 - kept / weights) if weights else 0.0,
        compression=weights / kept if kept else math.inf,
        outputs=0 if is_flat else out_units,
        inputs=0 if is_flat else in_units,
        dead_outputs=0 if is_flat else int((~row_alive).sum()),
        dead_inputs=0 if is_flat else int((~col_alive).sum()),
        biases=0 if layer.bias is None else layer.bias.numel(),
        log_alpha_min=la_min,
        log_alpha_median=median,
        log_alpha_max=la_max,
        log_alpha_hist=hist.tolist(),
    )


def analyze(
    source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    trust_pickle: bool = False,
    convention: str | None = None,
    module: nn.Module | None = None,
) -> AnalysisReport:
    """Report per layer what ``log α < threshold`` keeps (each convention's own clip and comparison).

    When the file's names fit several conventions (``weight`` + ``log_sigma2``: pytorch-ard, BayesWatch,
    svdcompress) and nothing in it decides, pytorch-ard is assumed; if the candidates disagree on any
    weight, a :class:`ConventionWarning` is issued and the message is kept in ``report.warnings``.

    Args:
        source: a checkpoint path, an ``nn.Module`` with SVDO layers, or a flat state_dict.
        threshold: log alpha above which a weight is noise (3.0 in the paper).
        trust_pickle: allow arbitrary unpickling when reading a file (runs code; off by default).
        convention: the project the file comes from, one of
            :data:`svdcompress.checkpoint.conventions.CONVENTION_NAMES` (e.g. ``"bayeswatch"``); by default it is
            recognised from the names and, where they are ambiguous, from the file.
        module: the live network a checkpoint ``source`` was loaded into (:func:`svdcompress.load_model`): its
            layers are counted instead of the file's names, e.g. one row per layer for numenta's
            VDropCentralData, whose state_dict alone is counted as one flat group. ``svdcompress.analyze(path,
            model="pkg.mod:factory")`` builds it.

    Returns:
        An :class:`AnalysisReport`; ``.format_table()``, ``.to_dict()`` and ``.plot(path)`` render it.

    Raises:
        CheckpointError: unreadable file or unusable tensor. NoSVDOLayersError: no SVDO layer found.

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> report = analyze(lenet300(svdo=True), threshold=3.0)
        >>> [r.name for r in report.layers]
        ['fc1', 'fc2', 'fc3']
    """
    if not math.isfinite(threshold):
        raise InvalidInputError(f"threshold must be a finite number, got {threshold}")
    meta: dict[str, Any] = {}
    if module is not None and isinstance(source, (nn.Module, Mapping)):
        raise InvalidInputError("model= applies to a checkpoint file, not to a module or a state_dict", param="model")
    if isinstance(source, nn.Module):
        layers = live_layers(source, convention)
        name = type(source).__name__
    elif isinstance(source, Mapping):
        name = "<state_dict>"
        layers = find_svdo_layers(source, file=name, convention=convention)
    else:
        ckpt = load_checkpoint(source, trust_pickle=trust_pickle)
        name = str(ckpt.path)
        meta = {k: v for k, v in ckpt.meta.items() if k != "provenance"}
        if ckpt.meta.get("provenance"):
            meta["provenance"] = ckpt.meta["provenance"]
        if module is not None:
            layers = live_layers(module, convention)
        else:
            layers = find_svdo_layers(
                ckpt.tensors,
                file=name,
                source=ckpt.source,
                own=bool(ckpt.meta),
                classes=ckpt.classes,
                convention=convention,
            )
    notes = ambiguity_warnings(name, layers, threshold)
    notes += [central_data_note(name, layer) for layer in layers if layer.kind == "flat"]
    for note in notes:
        warnings.warn(note, ConventionWarning, stacklevel=2)
    return AnalysisReport(name, float(threshold), [_layer_report(layer, threshold) for layer in layers], meta, notes)
