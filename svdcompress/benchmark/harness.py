"""Time every way of running an SVDO model on a CPU, side by side, in one process.

Contenders (names are part of the output format):

- ``torch-dense``: the original dense network (theta, no mask) in PyTorch;
- ``ort-dense``: the same in ONNX Runtime;
- ``torch-masked``: SVDO weights thresholded, zeros kept in dense tensors;
- ``torch-pruned``: structurally pruned (dead units removed), PyTorch;
- ``ort-compact``: the pruned model as ONNX in ONNX Runtime;
- ``ort-sparse``: the same graph with sparse initializers (ORT densifies them at load);
- ``csr-runtime``: the CSR bundle in :mod:`svdcompress.runtime`;
- ``openvino-dense``: the ONNX file ``ort-dense`` runs, compiled by OpenVINO's CPU plugin;
- ``openvino-compact``: the ONNX file ``ort-compact`` runs, compiled by OpenVINO's CPU plugin.

The OpenVINO contenders need the ``peers`` extra (``pip install 'svdcompress[peers]'``); without
``openvino`` they are skipped with one printed note. They are compiled with the LATENCY hint, one
stream, ``inference_num_threads`` set to the thread count asked, fp32 inference precision (OpenVINO
would otherwise run bf16 on CPUs that have it) and CPU pinning off (pinned threads would fight the
other engines' threads for fixed cores). Each call reuses one infer request: the input is bound as a
zero-copy tensor, ``infer()`` runs without arguments and the output tensor's buffer is returned, which
measured the lowest per-call cost of the Python API's calling forms. OpenVINO's threading runtime
(oneTBB) keeps idle workers busy-waiting for about a millisecond after a multi-threaded call, so the
harness waits a few ms, outside the timed region, after each OpenVINO sample at more than one thread.
PyTorch's OpenMP workers spin for ~10 ms after a multi-threaded call, so torch samples at more than one
thread are followed by a 15 ms wait, also untimed. The timing thread busy-waits through these pauses
rather than sleeping: a core left idle runs the next contender's calls slower for several ms.

Method: each contender is warmed up, then a round robin of timed samples interleaves the
contenders so that machine drift hits all alike. A sample averages enough calls to last
about ``sample_ms``, after half as many untimed calls: on this VM a core that sat idle (after a settle
sleep, or between a model's own thread hand-offs) runs the next calls up to 3× slower, so without them
the contender timed after a sleeping one paid for it. ONNX Runtime sessions are created with intra-op
spinning off, since a spinning ORT worker steals the core from whatever is timed next (README.md, Benchmarks).

Every record carries ``speedup_vs_best_dense``: the faster (lower median) of ``ort-dense`` and
``openvino-dense`` at the same batch size and thread count, divided by the contender's median. For
``csr-runtime`` it also carries the multiply-adds the runtime executes per item, the GMAC/s they make,
their fraction of the machine's practical peak (a one-thread-per-thread-count sgemm measured in the same
process, see :func:`sgemm_peak`) and the memory-bandwidth floor of the weight bytes it reads.

:func:`bench` leaves the process as it found it: the torch thread count and the caller's model
train/eval flags are restored on return, also after an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_path
from ..errors import InputShapeError
from . import contenders as C
from .config import CONTENDERS, DENSE_REFERENCES, OPENVINO_CONTENDERS, BenchConfig
from .machine import copy_bandwidth, cpu_simd_flags, machine_info, sgemm_peak, time_once, torch_threads

__all__ = [
    "CONTENDERS",
    "DENSE_REFERENCES",
    "OPENVINO_CONTENDERS",
    "BenchConfig",
    "BenchReport",
    "BenchResult",
    "bench",
    "copy_bandwidth",
    "cpu_simd_flags",
    "csr_latency",
    "machine_info",
    "sgemm_peak",
    "torch_threads",
]

_log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    contender: str
    batch_size: int
    threads: int
    median_us: float
    p90_us: float
    items_per_s: float
    artifact_bytes: int
    speedup_vs_ort_dense: float | None = None
    speedup_vs_torch_dense: float | None = None
    accuracy: float | None = None
    # The faster of ort-dense and openvino-dense (same batch and threads) over this contender's median.
    speedup_vs_best_dense: float | None = None
    best_dense: str | None = None
    # csr-runtime only: multiply-adds executed per item, the GMAC/s they make at this median, the sgemm peak
    # measured at the same thread count, their ratio, and the memory-bandwidth floor of one call.
    macs_per_item: int | None = None
    gmac_per_s: float | None = None
    peak_gmac_per_s: float | None = None
    fraction_of_peak: float | None = None
    bandwidth_floor_us: float | None = None
    times_bandwidth_floor: float | None = None  # median / floor: 1.0 would stream the weights at copy bandwidth


@dataclass
class BenchReport:
    results: list[BenchResult]
    machine: dict[str, Any]
    versions: dict[str, str]
    model: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [asdict(r) for r in self.results],
            "machine": self.machine,
            "versions": self.versions,
            "model": self.model,
            "accuracy": self.accuracy,
            "floor": self.floor,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    def markdown(self) -> str:
        """A markdown table: one row per contender, batch size and thread count."""
        m = self.machine
        simd = ", ".join(m.get("simd", [])) or "unknown"
        lines = [
            f"CPU: {m.get('cpu', '?')} ({m.get('logical_cores', '?')} logical cores; SIMD: {simd}); fp32; median of "
            f"{m.get('repeats', '?')} interleaved samples; speed-up = reference median / contender median; "
            f"best dense = the faster of {' and '.join(DENSE_REFERENCES)} at the same batch size and threads.",
            "",
            "| contender | batch | threads | median µs | p90 µs | items/s | × vs best dense | × vs ort-dense "
            "| × vs torch-dense | GMAC/s (of peak); × bandwidth floor | artifact kB | accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.results:
            acc = "" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
            gmac = ""
            if r.gmac_per_s is not None:
                gmac = f"{r.gmac_per_s:,.2f}"
                if r.fraction_of_peak is not None:
                    gmac += f" ({100 * r.fraction_of_peak:.1f}%)"
            if r.times_bandwidth_floor is not None:
                gmac += f"{'; ' if gmac else ''}{r.times_bandwidth_floor:,.1f}× floor"
            lines.append(
                f"| {r.contender} | {r.batch_size} | {r.threads} | {r.median_us:,.1f} | {r.p90_us:,.1f} | "
                f"{r.items_per_s:,.0f} | {_fx(r.speedup_vs_best_dense)} | {_fx(r.speedup_vs_ort_dense)} | "
                f"{_fx(r.speedup_vs_torch_dense)} | {gmac} | {r.artifact_bytes / 1000:,.1f} | {acc} |"
            )
        f = self.floor
        if f:
            per = f"{f['nnz']:,} nonzeros in sparse layers, 4 B per element in dense ones"
            if f.get("source") == "runtime":
                per = (
                    "values + indices + indptr of sparse layers and 4 B per element of dense ones, as the runtime "
                    "reports"
                )
            lines += [
                "",
                f"Memory-bandwidth floor for csr-runtime: {f['weight_bytes']:,} B of weights read per call "
                f"({per}) ÷ {f['copy_gb_per_s']:.1f} GB/s copy bandwidth ({f['threads']} thread) = "
                f"{f['floor_us']:.1f} µs per call.",
            ]
            if f.get("macs_per_item") is not None:
                lines.append(f"csr-runtime executes {f['macs_per_item']:,} multiply-adds per item.")
        peaks = m.get("sgemm_peak_gmac_per_s")
        if peaks:
            desc = ", ".join(f"{v:,.1f} GMAC/s at {k} thread(s)" for k, v in peaks.items())
            lines.append(f"Practical peak (best fp32 sgemm {m.get('sgemm_n', '?')}², measured in this run): {desc}.")
        if self.model.get("skipped"):
            lines += ["", *(f"Skipped {k}: {v}." for k, v in self.model["skipped"].items())]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Latency vs batch size, log-log, one line per contender and one panel per thread count.

        Panels share the y-axis; the x ticks are the batch sizes measured; each contender has its own marker
        and line style, so overlapping lines stay apart; the legend sits below the panels. The image format
        follows the suffix.

        Raises:
            MissingDependencyError: matplotlib is not installed (``pip install 'svdcompress[plot]'``).
            InvalidInputError: a suffix matplotlib cannot write.
        """
        from .._plot import image_format, pyplot, save_figure

        image_format(path)  # before drawing anything
        plt = pyplot()
        from matplotlib.ticker import FixedLocator, NullLocator

        threads = sorted({r.threads for r in self.results})
        contenders = list(dict.fromkeys(r.contender for r in self.results))
        batches = sorted({r.batch_size for r in self.results})
        fig, axes = plt.subplots(
            1, len(threads), figsize=(5.5 * len(threads), 4.6), squeeze=False, sharey=True, sharex=True
        )
        markers = "osD^vP*Xh<>"
        styles = ["-", "--", "-.", ":"]
        for ax, t in zip(axes[0], threads, strict=True):
            for i, c in enumerate(contenders):
                rows = sorted(
                    (r for r in self.results if r.contender == c and r.threads == t), key=lambda r: r.batch_size
                )
                ax.plot(
                    [r.batch_size for r in rows],
                    [r.median_us for r in rows],
                    marker=markers[i % len(markers)],
                    linestyle=styles[i % len(styles)],
                    markerfacecolor="none" if i % 2 else None,
                    label=c,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(batches))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_xlabel("batch size")
            ax.set_title(f"{self.model.get('name', 'model')}, {t} thread(s)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("median latency per batch (µs)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 5), 1, 1))
        return save_figure(fig, path)


def _fx(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}×"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    from .._version import __version__

    out = {
        "svdcompress": __version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }
    ov = C.import_openvino()
    if ov is not None:
        out["openvino"] = str(ov.__version__)
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        pass
    return out


def _calibrate(fn: Callable[[], object], sample_ms: float, warmup: int) -> int:
    for _ in range(warmup):
        fn()
    t = min(time_once(fn) for _ in range(3))
    return max(1, min(1000, int(sample_ms / 1000 / max(t, 1e-7))))


def _bind(c: C.Contender, x: Any) -> Callable[[], object]:
    def call() -> object:
        return c.fn(x)

    return call


def _accuracy(c: C.Contender, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        out = c.fn(xb.numpy() if c.numpy_input else xb)
        pred = torch.as_tensor(np.asarray(out)).argmax(1)
        correct += int((pred == y[i : i + batch]).sum())
    return correct / len(x)


def bench(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    config: BenchConfig | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    name: str = "model",
    convention: str | None = None,
) -> BenchReport:
    """Benchmark ``model`` (an SVDO network) against its compressed forms.

    The torch thread count and the train/eval flag of every module of ``model`` are restored on return.

    Args:
        model: the trained SVDO model (svdcompress layers or any weight + log_sigma2 convention).
        input_shape: per-example input shape, e.g. ``(1, 28, 28)``.
        config: batch sizes, threads, repeats and contenders.
        data: optional ``(x, y)`` to report each contender's accuracy.
        workdir: where artifacts are written (a temporary directory by default).
        progress: show a progress bar on stderr.
        name: model name for the report and plot.
        convention: the project the SVDO layers come from (overrides ``config.convention``), for ``weight`` +
            ``log_sigma2`` layers whose class does not say; every layer is masked by its convention's formula.

    Returns:
        A :class:`BenchReport` (``.to_dict()``, ``.markdown()``, ``.plot(path)``).
    """
    cfg = config or BenchConfig()
    if convention is not None:
        cfg = dataclasses.replace(cfg, convention=convention)
    shape = tuple(int(d) for d in input_shape)
    skipped: dict[str, str] = {}
    if set(cfg.contenders) & set(OPENVINO_CONTENDERS) and C.import_openvino() is None:
        asked = [c for c in cfg.contenders if c in OPENVINO_CONTENDERS]
        reason = "openvino is not installed (pip install 'svdcompress[peers]')"
        skipped = dict.fromkeys(asked, reason)
        _log.warning("skipping %s: %s", ", ".join(asked), reason)
    training = {m: m.training for m in model.modules()}
    tmp_ctx = tempfile.TemporaryDirectory(prefix="svdcompress-bench-") if workdir is None else None
    try:
        with torch_threads(torch.get_num_threads()):
            model.eval()
            _check_runs(model, shape)
            wd = Path(tmp_ctx.name if tmp_ctx is not None else str(workdir))
            wd.mkdir(parents=True, exist_ok=True)
            report = _run(model, shape, cfg, data, wd, progress, name, skipped)
    finally:
        for m, was_training in training.items():
            m.training = was_training
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return report


def _check_runs(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One example through the model before any work, so a wrong input shape is one line, not a traceback
    from the first contender that runs it."""
    from .._inputs import example_inputs
    from ..pruning.tracing import expected_input

    try:
        with torch.no_grad():
            model(example_inputs(shape, 1))
    except Exception as exc:  # shape mismatches surface as RuntimeError (or anything) from inside the model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(
            f"the example input of shape {shape} (per example) does not run through {type(model).__name__}: "
            f"{first}; {expected_input(model)}"
        ) from None


def _run(
    model: nn.Module,
    shape: tuple[int, ...],
    cfg: BenchConfig,
    data: tuple[torch.Tensor, torch.Tensor] | None,
    wd: Path,
    progress: bool,
    name: str,
    skipped: dict[str, str],
) -> BenchReport:
    """The body of :func:`bench`, which restores the process state around it."""
    from tqdm import tqdm

    n_contenders = len([c for c in cfg.contenders if c not in skipped])
    total = len(cfg.threads) * len(cfg.batch_sizes) * cfg.repeats * n_contenders
    results: list[BenchResult] = []
    accuracy: dict[str, float] = {}
    info: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    with tqdm(total=total, desc="bench", file=sys.stderr, disable=not progress, unit="sample") as bar:
        models = C.prepare_models(model, shape, cfg, wd, bar.set_postfix_str)
        for t in cfg.threads:
            with torch_threads(t):
                contenders, info = C.build_contenders(models, shape, cfg, wd, t, bar.set_postfix_str)
                if data is not None and not accuracy:
                    bar.set_postfix_str("accuracy")
                    accuracy = {c.name: _accuracy(c, *data) for c in contenders}
                for b in cfg.batch_sizes:
                    bar.set_postfix_str(f"timing batch {b}, {t} thread(s)")
                    results += _time_batch(
                        contenders, torch.randn(b, *shape, generator=gen), t, cfg, bar.update, accuracy
                    )
    _add_speedups(results)
    mach = {**machine_info(), "repeats": cfg.repeats, "sample_ms": cfg.sample_ms, "warmup": cfg.warmup, "dtype": "fp32"}
    floor: dict[str, Any] = {}
    if "csr_weight_bytes" in info:
        floor_threads = min(cfg.threads)
        bw = copy_bandwidth(threads=floor_threads)
        floor = {
            "nnz": info.get("csr_nnz"),
            "bytes_per_nnz": 8,
            "weight_bytes": info["csr_weight_bytes"],
            "source": info["csr_weight_bytes_source"],
            "macs_per_item": info.get("csr_macs_per_item"),
            "copy_gb_per_s": bw / 1e9,
            "floor_us": info["csr_weight_bytes"] / bw * 1e6,
            "threads": floor_threads,
            "convention": "STREAM copy: (bytes read + bytes written) / s",
        }
        if floor["source"] == "runtime":
            del floor["bytes_per_nnz"]
        n = 1024
        peaks = {t: sgemm_peak(threads=t, n=n) for t in cfg.threads}
        mach["sgemm_n"] = n
        mach["sgemm_peak_gmac_per_s"] = {str(t): p["peak"] for t, p in peaks.items()}
        mach["sgemm_by_library_gmac_per_s"] = {str(t): p for t, p in peaks.items()}
        _add_compute_figures(
            results, info.get("csr_macs_per_item"), {t: p["peak"] for t, p in peaks.items()}, floor["floor_us"]
        )
    model_info = {"name": name, "input_shape": list(shape), "threshold": cfg.threshold, **info}
    if skipped:
        model_info["skipped"] = skipped
    return BenchReport(results, mach, _versions(), model_info, accuracy, floor)


def _time_batch(
    contenders: list[C.Contender],
    x: torch.Tensor,
    threads: int,
    cfg: BenchConfig,
    tick: Callable[[int], object],
    accuracy: dict[str, float],
) -> list[BenchResult]:
    """Round-robin timed samples of every contender on one input batch."""
    b = len(x)
    xn = x.numpy()
    calls = [(c, _bind(c, xn if c.numpy_input else x)) for c in contenders]
    inner = {c.name: _calibrate(fn, cfg.sample_ms, cfg.warmup) for c, fn in calls}
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(cfg.repeats):
        # Rotate the order each round so no contender always runs right after another.
        k = r % len(calls)
        for c, fn in calls[k:] + calls[:k]:
            n = inner[c.name]
            # Untimed warm-up calls (about half a sample) first: a core left idle by the previous contender's
            # settle sleep, or by its own threads, runs the next calls up to 3× slower on this VM (measured:
            # LeNet-300 at batch 256, 103 µs back to back, 340 µs after a 5 ms sleep), whoever comes next.
            for _ in range(max(1, n // 2)):
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[c.name].append((time.perf_counter() - t0) / n * 1e6)
            if c.settle_s:
                _settle(c.settle_s)
            tick(1)
    out = []
    for c in contenders:
        s = sorted(samples[c.name])
        med = statistics.median(s)
        p90 = s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]
        out.append(
            BenchResult(c.name, b, threads, med, p90, b / (med / 1e6), c.artifact_bytes, accuracy=accuracy.get(c.name))
        )
    return out


def _settle(seconds: float) -> None:
    """Wait ``seconds`` with the timing thread busy, so its core stays awake for the next contender: while the
    other engines' workers go idle, a sleep here left the core idle too, and the contender timed next ran up to
    3× slower for several ms (LeNet-300-100 at batch 256 after a 15 ms sleep: 343 µs, then ~130, against 103)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _add_speedups(results: list[BenchResult]) -> None:
    """Fill the speed-up fields: each reference's median over the contender's, same batch size and threads."""
    by_key = {(r.contender, r.batch_size, r.threads): r for r in results}
    for res in results:
        key = (res.batch_size, res.threads)
        for ref_name, attr in (("ort-dense", "speedup_vs_ort_dense"), ("torch-dense", "speedup_vs_torch_dense")):
            ref = by_key.get((ref_name, *key))
            if ref is not None:
                setattr(res, attr, ref.median_us / res.median_us)
        dense = [q for q in (by_key.get((n, *key)) for n in DENSE_REFERENCES) if q is not None]
        if dense:
            best = min(dense, key=lambda q: q.median_us)
            res.best_dense = best.contender
            res.speedup_vs_best_dense = best.median_us / res.median_us


def _add_compute_figures(
    results: list[BenchResult], macs_per_item: int | None, peak_gmac: dict[int, float], floor_us: float
) -> None:
    """csr-runtime records: multiply-adds per item, GMAC/s, fraction of the sgemm peak, bandwidth floor."""
    for r in results:
        if r.contender != "csr-runtime":
            continue
        r.bandwidth_floor_us = floor_us
        r.times_bandwidth_floor = r.median_us / floor_us if floor_us > 0 else None
        r.peak_gmac_per_s = peak_gmac.get(r.threads)
        if macs_per_item is None:
            continue
        r.macs_per_item = macs_per_item
        r.gmac_per_s = macs_per_item * r.batch_size / (r.median_us * 1e-6) / 1e9
        if r.peak_gmac_per_s:
            r.fraction_of_peak = r.gmac_per_s / r.peak_gmac_per_s


def csr_latency(
    model: nn.Module,
    thresholds: Sequence[float],
    *,
    input_shape: Sequence[int],
    convention: str | None = None,
    repeats: int = 30,
    sample_ms: float = 2.0,
    warmup: int = 5,
) -> dict[float, float]:
    """Threshold → median batch-1 latency in µs of ``model`` exported at it as a CSR bundle, on one thread.

    What ``svdcompress tune --latency`` shows beside a few candidates. Each sample times a calibrated run of
    back-to-back calls, as :func:`bench` does; bundles go to a temporary directory.
    """
    from .._inputs import example_inputs
    from ..export import export_model
    from ..runtime import load as load_bundle

    shape = tuple(int(d) for d in input_shape)
    x = example_inputs(shape, 1).numpy()  # (1, *input_shape)
    out: dict[float, float] = {}
    with tempfile.TemporaryDirectory(prefix="svdcompress-latency-") as d:
        for i, t in enumerate(thresholds):
            path = Path(d) / f"t{i}.csr"
            export_model(model, "csr", path, input_shape=shape, threshold=t, convention=convention)
            rt = load_bundle(path)

            def call(rt: Any = rt) -> object:
                return rt(x)

            n = _calibrate(call, sample_ms, warmup)
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(n):
                    call()
                samples.append((time.perf_counter() - t0) / n)
            out[float(t)] = statistics.median(samples) * 1e6
    return out
