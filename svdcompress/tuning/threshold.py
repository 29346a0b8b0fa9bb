"""Choose the log α threshold on held-out data: sweep, score, and pick the most compressed model that keeps
its accuracy.

The sweep's candidates are log α quantiles, not a fixed grid: each threshold lies between two distinct log α
values of the model, so every candidate keeps a different number of weights, and they are spread evenly in
log(kept) over the whole range where kept counts change. Scoring starts at the paper's 3 and walks toward more
compression until two candidates in a row lose more than allowed (or, if 3 already does, toward less until one
keeps its accuracy). A second round adds quantiles between the best candidate that keeps its accuracy and the
next more compressed one, which fails; a few less compressed candidates are scored to draw the curve. Each
candidate is scored on the data with exactly the masked model :func:`svdcompress.mask_model` builds at that
threshold (the one ``prune`` and ``export`` start from); log α is computed once.

The pick: the largest compression whose accuracy is at least the reference's minus ``max_drop`` points, the
reference being the model as trained (θ, no mask, eval mode) on the same data. Test splits may not choose
(:func:`svdcompress.tuning.dataspec.check_selectable`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..checkpoint import DEFAULT_THRESHOLD
from ..checkpoint.conventions import Convention, keep_rule, log_alpha
from ..errors import InvalidInputError, NoSVDOLayersError
from ..nn.architecture import ResolvedModel, load_model
from ..pruning.masking import check_threshold, dense_copy, layers_of_model, mask_model
from .dataspec import DataSpec, check_selectable, load_data

__all__ = ["METRICS", "TuneResult", "TuneRow", "tune"]

METRICS = ("accuracy",)
"""What :func:`tune` can score: top-1 accuracy, in percent."""

_BATCH = 250
_CURVE = 4  # candidates less compressed than the best passing one, scored anyway to draw the curve


@dataclass
class TuneRow:
    """One candidate threshold: what it keeps and how it scores (accuracy in percent)."""

    threshold: float
    kept: int
    weights: int
    compression: float  # weights / kept, the paper's |W| / |W ≠ 0| over the SVDO layers
    accuracy: float
    latency_us: float | None = None  # CSR runtime, batch 1, median; only when measured


@dataclass
class TuneResult:
    """The sweep, the reference and the pick.

    Attributes:
        threshold: the chosen threshold.
        rows: every candidate scored, by ascending threshold.
        reference_accuracy: the unthresholded model (θ, no mask, eval mode) on the same data, percent.
        data: the data spec the threshold was chosen on, canonical form (``fashion-mnist:val``).
        examples: how many examples were scored.
        input_shape: one example's shape, as the data holds it.
        data_sha256: for a data file, the SHA-256 of its bytes, so the record names exactly what was used.
        source: the checkpoint (or the model's class name).
        warnings: reasons to distrust the pick (e.g. the model was trained on the data it was chosen on).
    """

    threshold: float
    rows: list[TuneRow]
    reference_accuracy: float
    data: str
    max_drop: float
    metric: str = "accuracy"
    examples: int = 0
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)
    data_sha256: str | None = None

    @property
    def chosen(self) -> TuneRow:
        """The row of the chosen threshold."""
        return next(r for r in self.rows if r.threshold == self.threshold)

    def few(self, n: int = 5) -> list[float]:
        """Up to ``n`` thresholds worth a closer look (e.g. timing), ascending: the pick, the paper's 3 if it was
        scored, then candidates spread over those within a few points of the reference accuracy."""
        picks = [self.threshold] + [r.threshold for r in self.rows if r.threshold == DEFAULT_THRESHOLD]
        margin = max(2.0, 4 * self.max_drop)
        near = [r for r in self.rows if math.isfinite(r.compression) and r.accuracy >= self.reference_accuracy - margin]
        near.sort(key=lambda r: r.compression)
        step = (len(near) - 1) / max(1, n - 1)
        picks += [near[round(i * step)].threshold for i in range(n) if near]
        return sorted(list(dict.fromkeys(picks))[: max(1, n)])  # first come: the pick, then 3, then the spread

    def selection(self) -> dict[str, Any]:
        """What an artifact records about how its threshold was chosen (JSON-able)."""
        from .._version import __version__

        c = self.chosen
        return {
            "method": "svdcompress tune",
            "threshold": self.threshold,
            "data": self.data,
            **({"data_sha256": self.data_sha256} if self.data_sha256 else {}),
            "examples": self.examples,
            "metric": self.metric,
            "max_drop": self.max_drop,
            "reference_accuracy": self.reference_accuracy,
            "accuracy": c.accuracy,
            "compression": _json_float(c.compression),
            "kept": c.kept,
            "weights": c.weights,
            "candidates": len(self.rows),
            "svdcompress": __version__,
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: the fields, ``rows`` as dicts and the ``chosen`` row; infinite compression as None."""
        rows = [{**asdict(r), "compression": _json_float(r.compression)} for r in self.rows]
        return {
            "source": self.source,
            "data": self.data,
            "data_sha256": self.data_sha256,
            "examples": self.examples,
            "input_shape": list(self.input_shape),
            "metric": self.metric,
            "max_drop": self.max_drop,
            "reference_accuracy": self.reference_accuracy,
            "threshold": self.threshold,
            "chosen": {**asdict(self.chosen), "compression": _json_float(self.chosen.compression)},
            "rows": rows,
            "warnings": list(self.warnings),
        }

    def format_table(self) -> str:
        """One line per candidate (the pick marked), the reference and the choice."""
        latency = any(r.latency_us is not None for r in self.rows)
        head = ["threshold", "kept", "compr.", "accuracy", "Δ points", *(["latency µs"] if latency else []), ""]
        body = []
        for r in self.rows:
            lat = [] if not latency else ["" if r.latency_us is None else f"{r.latency_us:,.1f}"]
            body.append(
                [
                    _fmt_t(r.threshold),
                    f"{r.kept:,}",
                    _fmt_x(r.compression),
                    f"{r.accuracy:.2f}%",
                    f"{r.accuracy - self.reference_accuracy:+.2f}",
                    *lat,
                    "← chosen" if r.threshold == self.threshold else "",
                ]
            )
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == len(cells) - 1 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        c = self.chosen
        out = [
            f"{self.source}: {self.metric} on {self.data} ({self.examples:,} examples); reference (θ, no mask) "
            f"{self.reference_accuracy:.2f}%; allowed drop {self.max_drop:g} points",
            line(head),
            "  ".join("-" * w for w in widths[:-1]),
            *(line(b) for b in body),
            f"chosen threshold {_fmt_t(self.threshold)}: {_fmt_x(c.compression)} compression "
            f"({c.kept:,} of {c.weights:,} weights kept), {c.accuracy:.2f}% on {self.data} "
            f"({c.accuracy - self.reference_accuracy:+.2f} points)",
        ]
        out += [f"warning: {w}" for w in self.warnings]
        return "\n".join(out)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Accuracy vs compression (log axis), the allowed drop shaded, the pick marked; latency on a second
        axis when measured. The suffix picks the image format.

        Raises:
            MissingDependencyError: matplotlib is not installed. InvalidInputError: a suffix it cannot write.
        """
        from .._plot import image_format, pyplot, save_figure

        image_format(path)
        plt = pyplot()
        rows = [r for r in sorted(self.rows, key=lambda r: r.compression) if math.isfinite(r.compression)]
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        xs, ys = [r.compression for r in rows], [r.accuracy for r in rows]
        ax.plot(xs, ys, "o-", color="#4477aa", ms=3, lw=1, label=f"masked model on {self.data}")
        floor = self.reference_accuracy - self.max_drop
        ax.axhline(self.reference_accuracy, color="#228833", lw=1, label=f"reference {self.reference_accuracy:.2f}%")
        ax.axhspan(floor, self.reference_accuracy, color="#228833", alpha=0.08, lw=0)
        ax.axhline(floor, color="#228833", lw=1, ls="--", label=f"allowed: −{self.max_drop:g} points")
        c = self.chosen
        ax.plot(
            [c.compression], [c.accuracy], "*", color="#cc3311", ms=14, label=f"chosen: threshold {_fmt_t(c.threshold)}"
        )
        ax.annotate(
            f"{_fmt_x(c.compression)}, {c.accuracy:.2f}%",
            (c.compression, c.accuracy),
            textcoords="offset points",
            xytext=(8, -14),
            fontsize=8,
        )
        ax.set_xscale("log")
        ax.set_xlabel("compression |W| / |W≠0|")
        ax.set_ylabel("accuracy (%)")
        bottom = floor - max(3.0, 6 * self.max_drop)  # the knee in view; far worse candidates are off the scale
        ax.set_ylim(max(0.0, bottom), min(100.0, max(ys) + 0.5))
        below = sum(y < bottom for y in ys)
        if below:
            ax.text(
                0.99,
                0.02,
                f"{below} candidate(s) below {bottom:.1f}% not shown",
                transform=ax.transAxes,
                ha="right",
                fontsize=7,
                color="#666666",
            )
        timed = [r for r in rows if r.latency_us is not None]
        if timed:
            ax2 = ax.twinx()
            ax2.plot([r.compression for r in timed], [r.latency_us for r in timed], "s:", color="#aa3377", ms=4)
            ax2.set_ylabel("CSR runtime latency, batch 1 (µs)", color="#aa3377")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title(f"threshold sweep: {self.source} on {self.data} ({self.examples:,} examples)", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)


def _json_float(x: float) -> float | None:
    return None if math.isinf(x) else x


def _fmt_x(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:,.1f}×"


def _fmt_t(t: float) -> str:
    return f"{t:.6g}"


@dataclass
class _Layer:
    """One SVDO layer: θ in PyTorch layout, log α (computed once), its convention, and the plain copy to set
    (``target``, the submodule ``module`` of the copy, and its parameter ``attr``: ``weight``, or an LSTM's
    ``weight_ih_l0``, ...)."""

    name: str
    theta: torch.Tensor
    log_alpha: torch.Tensor
    convention: Convention
    target: nn.Module
    module: str = ""
    attr: str = "weight"

    def weight(self) -> torch.Tensor:
        return cast(torch.Tensor, getattr(self.target, self.attr))


def _module_and_attr(layer_name: str, kind: str) -> tuple[str, str]:
    """Where a layer of :func:`~svdcompress.pruning.masking.layers_of_model` lives in the masked copy: an LSTM's
    matrices are named ``lstm.weight_ih_l0`` (module ``lstm``, parameter ``weight_ih_l0``), the others by their
    module."""
    if kind == "lstm":
        module, _, attr = layer_name.rpartition(".")
        return module, attr
    return layer_name, "weight"


class _Sweep:
    """A plain copy of the model whose weights are re-masked in place, threshold after threshold.

    The layers are those :func:`svdcompress.mask_model` masks (:func:`~svdcompress.pruning.masking.layers_of_model`),
    and ``weight = θ · keep_rule(log α, θ, t)`` is its arithmetic, so the model scored at ``t`` is, weight for
    weight, the one ``mask_model(model, t)`` returns (:meth:`check` proves it for the pick).
    """

    def __init__(self, model: nn.Module, convention: str | None) -> None:
        self.convention = convention
        self.model = dense_copy(model, convention=convention)  # eval mode; SVDO layers are plain, holding θ
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in layers_of_model(model, convention):
                theta = layer.theta.detach()  # (out, in) or (out, in, kh, kw)
                la = log_alpha(theta, layer.log_sigma2.detach(), layer.convention)
                module, attr = _module_and_attr(layer.name, layer.kind)
                target = self.model.get_submodule(module) if module else self.model
                self.layers.append(_Layer(layer.name, theta, la, layer.convention, target, module, attr))
        if not self.layers:
            raise NoSVDOLayersError(
                f"{type(model).__name__}: the module has no SVDO layers (weight + log_sigma2); there is no "
                "threshold to tune"
            )
        self.weights = sum(layer.theta.numel() for layer in self.layers)
        self.nonzero = sum(int((layer.theta != 0).sum()) for layer in self.layers)  # what keeping all keeps

    @torch.no_grad()
    def set(self, threshold: float) -> int:
        """Mask the copy at ``threshold``; return how many weights it keeps."""
        kept = 0
        for layer in self.layers:
            keep = keep_rule(layer.log_alpha, layer.theta, threshold, layer.convention)
            kept += int(keep.sum())
            layer.weight().copy_(layer.theta * keep.to(layer.theta.dtype))
        return kept

    def check(self, model: nn.Module, threshold: float) -> None:
        """The copy masked at ``threshold`` holds the weights ``mask_model(model, threshold)`` builds: what prune
        and export will start from (and ``mask_model`` warns, as they do, when the file's convention is open)."""
        from ..errors import SvdcompressError

        self.set(threshold)
        masked = mask_model(model, threshold, convention=self.convention)
        for layer in self.layers:
            ours = layer.weight()
            theirs = getattr(masked.get_submodule(layer.module) if layer.module else masked, layer.attr)
            if not (isinstance(theirs, torch.Tensor) and torch.equal(ours, theirs)):
                raise SvdcompressError(
                    f"internal error: tune's masked {layer.name or 'model'} differs from mask_model's at threshold "
                    f"{threshold:g}; please report it"
                )

    def pooled(self) -> np.ndarray:
        """Sorted log α of every weight with θ ≠ 0 (θ = 0 is never kept), in the dtype the masks compare in."""
        parts = [layer.log_alpha[layer.theta != 0].reshape(-1) for layer in self.layers]
        dtype = torch.float32 if all(p.dtype == torch.float32 for p in parts) else torch.float64
        return np.sort(torch.cat([p.to(dtype) for p in parts]).numpy())


def _between(lo: float, hi: float, dtype: type[np.floating[Any]]) -> float:
    """The shortest decimal strictly between two adjacent distinct log α values, as the masks compare it
    (a float32 tensor compares with the threshold rounded to float32), so ``<`` and ``<=`` conventions agree."""
    mid = (lo + hi) / 2
    for digits in range(0, 12):
        r = round(mid, digits)
        if lo < dtype(r) < hi:
            return float(r)
    return float(hi)  # adjacent floats: nothing lies between; ``<`` keeps exactly the values up to ``lo``


class _Candidates:
    """Thresholds between distinct log α values, indexed by how many weights (θ ≠ 0) they keep."""

    def __init__(self, pooled: np.ndarray) -> None:
        self.dtype: type[np.floating[Any]] = np.float32 if pooled.dtype == np.float32 else np.float64
        self.values, counts = np.unique(pooled, return_counts=True)
        self.kept = np.cumsum(counts)  # kept[i]: weights with log α <= values[i]

    def at(self, i: int) -> float:
        """The threshold keeping ``kept[i]`` weights: between values[i] and values[i + 1], or above the last."""
        if i + 1 < len(self.values):
            return _between(float(self.values[i]), float(self.values[i + 1]), self.dtype)
        top = float(self.values[-1])
        return float(math.floor(top) + 1)  # a round number above every log α: keeps everything

    def spread(self, lo_kept: float, hi_kept: float, n: int) -> list[int]:
        """Indices of up to ``n`` boundaries whose kept counts are log-spaced over ``[lo_kept, hi_kept]``."""
        if not len(self.values) or n <= 0:
            return []
        targets = np.geomspace(max(1.0, lo_kept), max(1.0, hi_kept), n)
        idx = np.searchsorted(self.kept, targets, side="left").clip(0, len(self.values) - 1)
        return sorted({int(i) for i in idx})


def _check_max_drop(max_drop: float) -> float:
    try:
        value = float(max_drop)
    except (TypeError, ValueError):
        raise InvalidInputError(f"max_drop must be a number of accuracy points like 0.5, got {max_drop!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise InvalidInputError(f"max_drop must be between 0 and 100 accuracy points (e.g. 0.5), got {max_drop!r}")
    return value


def _fits(module: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str, input_shape: tuple[int, ...] | None) -> None:
    """The data must fit the model's input, and its outputs must be class scores for these labels."""
    per_example = tuple(x.shape[1:])
    if input_shape is not None and per_example != tuple(input_shape):
        raise InvalidInputError(
            f"data spec {spec}: examples have shape {per_example} but the model takes {tuple(input_shape)} per "
            f"example; give data shaped for this model (e.g. x.reshape(-1, {', '.join(map(str, input_shape))}))"
        )
    try:
        with torch.no_grad():
            out = module(x[:2])
    except Exception as e:  # shape mismatches surface as RuntimeError (or anything) from inside the model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidInputError(
            f"data spec {spec}: examples of shape {per_example} do not run through {type(module).__name__} "
            f"({first}); give data shaped for this model"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != min(2, len(x)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidInputError(
            f"data spec {spec}: the model's output for a batch of {min(2, len(x))} has shape {shape}; tune scores "
            "classifiers, whose output is class scores of shape (N, C)"
        )
    classes = int(out.shape[1])
    top = int(y.max())
    if top >= classes:
        raise InvalidInputError(
            f"data spec {spec}: labels go up to {top} but the model outputs {classes} class scores (labels must "
            f"be 0..{classes - 1}); is this data for this model?"
        )


@torch.no_grad()
def _fast_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout, and the model's convolutions with them, when the model runs that way
    and gives the same outputs: oneDNN's convolutions are ~1.5× faster so. Else ``x`` as it was.

    Only the layout changes, not a value: the masks are set into these weights as into any other.
    """
    if x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return x
    before = model(x[:8])
    _conv_layout(model, torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    try:
        after = model(xc[:8])
        if isinstance(after, torch.Tensor) and torch.allclose(after, before, rtol=1e-4, atol=1e-5):
            return xc
    except Exception:  # e.g. a .view() that needs contiguous activations: keep the model as it was written
        pass
    _conv_layout(model, torch.contiguous_format)
    return x


def _conv_layout(model: nn.Module, layout: torch.memory_format) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=layout)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return 100.0 * correct / len(x)


def _overlap_warning(meta: dict[str, Any], spec: DataSpec) -> list[str]:
    """The checkpoint's provenance says it was trained on the images the validation split holds."""
    from .dataspec import FASHION_MNIST_VAL, MNIST5K_VAL

    prov = meta.get("provenance") or {}
    if not isinstance(prov, dict) or spec.name is None or spec.split != "val":
        return []
    trained_on = str(prov.get("data", "")).lower().replace("_", "-")
    if trained_on != spec.name:
        return []
    held = {"fashion-mnist": (60000, FASHION_MNIST_VAL), "mnist5k": (4000, MNIST5K_VAL)}[spec.name]
    try:
        train_size = int(prov.get("train_size", 0))
    except (TypeError, ValueError):
        return []
    if train_size > held[0] - held[1]:
        return [
            f"the checkpoint's provenance says it was trained on {train_size:,} {spec.name} training images, which "
            f"include the {held[1]:,} of {spec}: that split is not held out for this model, so its accuracy is "
            "optimistic and the pick may cut too far; train on the :train split to choose honestly"
        ]
    return []


def tune(
    source: nn.Module | str | os.PathLike[str] | ResolvedModel,
    data: str | DataSpec = "fashion-mnist:val",
    *,
    max_drop: float = 0.5,
    metric: str = "accuracy",
    model: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    convention: str | None = None,
    thresholds: list[float] | None = None,
    candidates: int = 20,
    refine: int = 8,
    batch_size: int = _BATCH,
) -> TuneResult:
    """Choose the log α threshold on held-out data: the largest compression within ``max_drop`` points.

    Args:
        source: a trained SVDO ``nn.Module``, a checkpoint with SVDO layers, or what
            :func:`svdcompress.load_model` returned for one (its provenance is checked against ``data``).
        data: a data spec that is not a test split: ``"fashion-mnist:val"``, ``"mnist5k:val"``, or a
            ``FILE.npz`` with ``x`` and ``y`` (see :mod:`svdcompress.tuning.dataspec`).
        max_drop: accuracy points the pick may lose against the unthresholded model on the same data.
        metric: ``"accuracy"`` (top-1, percent).
        model: ``package.module:factory`` for a checkpoint that does not record its architecture.
        trust_pickle: allow a checkpoint that is a whole pickled model (unpickling runs code).
        input_shape: per-example input shape, if neither the checkpoint nor the data says it.
        convention: the project the SVDO layers come from, for ``weight`` + ``log_sigma2`` layers whose class does
            not say (as :func:`svdcompress.mask_model` takes it); pass the same to prune and export.
        thresholds: score exactly these thresholds instead of the quantile sweep.
        candidates: thresholds in the first round, log-spaced in kept weights over the whole range where kept
            counts change. Scoring starts at 3 and walks toward more compression until two in a row lose more
            than ``max_drop`` (past that knee more compression only loses more), or toward less until one passes.
        refine: thresholds added between the best passing candidate and the next, failing one.
        batch_size: examples per forward pass.

    Returns:
        A :class:`TuneResult`: ``.threshold``, ``.rows``, ``.format_table()``, ``.to_dict()``, ``.plot(path)``.

    Raises:
        InvalidInputError: a test split or unlabelled data, a bad ``max_drop`` or metric, data that does not fit
            the model, or a model whose outputs are not class scores.
        NoSVDOLayersError, CheckpointError: from loading ``source``.

    Example:
        >>> import tempfile, numpy as np, torch
        >>> from svdcompress.nn.zoo import lenet300
        >>> with tempfile.TemporaryDirectory() as d:
        ...     x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
        ...     np.savez(f"{d}/val.npz", x=x, y=np.arange(64) % 10)
        ...     result = tune(lenet300(svdo=True), f"{d}/val.npz", candidates=6, refine=2)
        >>> result.chosen.accuracy >= result.reference_accuracy - 0.5
        True
    """
    if metric not in METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    max_drop = _check_max_drop(max_drop)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    spec = check_selectable(data)
    meta: dict[str, Any] = {}
    if isinstance(source, nn.Module):
        module, name, shape = source, type(source).__name__, input_shape
    else:
        if isinstance(source, ResolvedModel):
            resolved, name = source, str(source.checkpoint.path)
        else:
            resolved, name = (
                load_model(
                    source,
                    model=model,
                    trust_pickle=trust_pickle,
                    input_shape=input_shape,
                    require_svdo=True,
                    convention=convention,
                ),
                str(source),
            )
        module, shape, meta = resolved.module, input_shape or resolved.input_shape, resolved.meta
    x, y = load_data(spec)
    if y is None:  # check_selectable refused unlabelled specs; a guard for the type checker
        raise InvalidInputError(f"data spec {spec.text!r} has no labels")
    sweep = _Sweep(module, convention)
    _fits(sweep.model, x, y, str(spec), shape)
    x = _fast_layout(sweep.model, x)
    reference = _accuracy(sweep.model, x, y, batch_size)  # before any mask: θ as trained, eval mode

    scored: dict[float, TuneRow] = {}

    def score(t: float) -> TuneRow:
        if t not in scored:
            kept = sweep.set(t)
            # Keeping every θ ≠ 0 is the reference model itself (θ = 0 adds nothing): no need to run it again.
            acc = reference if kept == sweep.nonzero else _accuracy(sweep.model, x, y, batch_size)
            scored[t] = TuneRow(t, kept, sweep.weights, sweep.weights / kept if kept else math.inf, acc)
        return scored[t]

    def passes(r: TuneRow) -> bool:
        return r.accuracy >= reference - max_drop - 1e-9

    if thresholds is not None:
        for t in thresholds:
            score(check_threshold(t))
    else:
        cands = _Candidates(sweep.pooled())
        coarse = cands.spread(1.0, float(sweep.nonzero), candidates)  # by ascending kept
        paper = score(DEFAULT_THRESHOLD)
        if passes(paper):
            # The pick is 3 or more compressed: walk down until two in a row fail (past the knee, more
            # compression only loses more).
            failed = 0
            for i in (i for i in reversed(coarse) if int(cands.kept[i]) < paper.kept):
                failed = 0 if passes(score(cands.at(i))) else failed + 1
                if failed == 2:
                    break
        else:
            # The pick is less compressed than 3: walk up until one passes (keeping every weight always does).
            for i in (i for i in coarse if int(cands.kept[i]) > paper.kept):
                if passes(score(cands.at(i))):
                    break
        best = max((r for r in scored.values() if passes(r)), key=lambda r: r.compression)
        tighter = [r.kept for r in scored.values() if r.kept < best.kept]
        if tighter and refine > 0:  # between the best that passes and the next, failing one
            lo = max(tighter)
            for i in cands.spread(lo, best.kept, refine + 2):
                if lo < int(cands.kept[i]) < best.kept:
                    score(cands.at(i))
        # Less compressed candidates than one that passes cannot be picked; a few draw the curve (keeping
        # everything costs nothing: it is the reference).
        looser = [i for i in coarse if int(cands.kept[i]) > best.kept]
        for k in range(1, _CURVE + 1) if looser else ():
            score(cands.at(looser[round(k * (len(looser) - 1) / _CURVE)]))
    rows = sorted(scored.values(), key=lambda r: r.threshold)
    ok = [r for r in rows if passes(r)]
    if not ok:  # only with explicit thresholds: the quantile sweep always scores one that keeps every weight
        raise InvalidInputError(
            f"none of the thresholds given keeps accuracy on {spec} within {max_drop:g} points of the reference "
            f"{reference:.2f}%; add larger thresholds or allow a larger drop"
        )
    # Largest compression; among equals (the same kept count), the larger threshold, which is further from the
    # log α values it separates.
    pick = max(ok, key=lambda r: (r.compression, r.threshold))
    sweep.check(module, pick.threshold)
    return TuneResult(
        threshold=pick.threshold,
        rows=rows,
        reference_accuracy=reference,
        data=str(spec),
        max_drop=max_drop,
        metric=metric,
        examples=len(x),
        source=name,
        warnings=_overlap_warning(meta, spec),
        input_shape=list(x.shape[1:]),
        data_sha256=None if spec.path is None else hashlib.sha256(spec.path.read_bytes()).hexdigest(),
    )
