"""Time every way of running an SVDO model on a CPU, side by side, in one process.

Contenders (names are part of the output format):

- ``torch-dense``: the original dense network (theta, no mask) in PyTorch;
- ``ort-dense``: the same in ONNX Runtime;
- ``torch-masked``: SVDO weights thresholded, zeros kept in dense tensors;
- ``torch-pruned``: structurally pruned (dead units removed), PyTorch;
- ``ort-compact``: the pruned model as ONNX in ONNX Runtime;
- ``ort-sparse``: the same graph with sparse initializers (ORT densifies them at load);
- ``csr-runtime``: the CSR bundle in :mod:`svdcompress.runtime`.

Method: each contender is warmed up, then a round robin of timed samples interleaves the
contenders so that machine drift hits all alike. A sample averages enough calls to last
about ``sample_ms``. ONNX Runtime sessions are created with intra-op spinning off, since a
spinning ORT worker steals the core from whatever is timed next (DESIGN.md §5).
"""

from __future__ import annotations

import json
import os
import platform
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

from ._io import atomic_path
from .masking import mask_model
from .svdo import DEFAULT_THRESHOLD

__all__ = ["CONTENDERS", "BenchConfig", "BenchReport", "BenchResult", "bench", "copy_bandwidth", "machine_info"]

CONTENDERS = ("torch-dense", "ort-dense", "torch-masked", "torch-pruned", "ort-compact", "ort-sparse", "csr-runtime")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``repeats`` timed samples per contender and setting, after ``warmup`` calls."""

    batch_sizes: tuple[int, ...] = (1, 16, 256)
    threads: tuple[int, ...] = (1,)
    repeats: int = 30
    warmup: int = 5
    sample_ms: float = 2.0
    contenders: tuple[str, ...] = CONTENDERS
    threshold: float = DEFAULT_THRESHOLD


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


@dataclass
class BenchReport:
    results: list[BenchResult]
    machine: dict[str, Any]
    versions: dict[str, str]
    model: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [asdict(r) for r in self.results], "machine": self.machine, "versions": self.versions,
                "model": self.model, "accuracy": self.accuracy, "floor": self.floor}

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    def markdown(self) -> str:
        """A markdown table: one row per contender, batch size and thread count."""
        m = self.machine
        lines = [
            f"CPU: {m.get('cpu', '?')} ({m.get('logical_cores', '?')} logical cores); fp32; median of "
            f"{m.get('repeats', '?')} interleaved samples; speed-up = reference median / contender median.",
            "",
            "| contender | batch | threads | median µs | p90 µs | items/s | × vs ort-dense | × vs torch-dense "
            "| artifact KB | accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.results:
            acc = "" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
            lines.append(
                f"| {r.contender} | {r.batch_size} | {r.threads} | {r.median_us:,.1f} | {r.p90_us:,.1f} | "
                f"{r.items_per_s:,.0f} | {_fx(r.speedup_vs_ort_dense)} | {_fx(r.speedup_vs_torch_dense)} | "
                f"{r.artifact_bytes / 1024:,.1f} | {acc} |"
            )
        if self.floor:
            f = self.floor
            lines += ["", f"Memory-bandwidth floor for csr-runtime: {f['weight_bytes']:,} B of weights "
                      f"({f['nnz']:,} nonzeros × {f['bytes_per_nnz']} B in CSR layers, 4 B per element in dense "
                      f"ones) ÷ {f['copy_gb_per_s']:.1f} GB/s copy bandwidth ({f['threads']} thread) = "
                      f"{f['floor_us']:.1f} µs per call."]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Latency vs batch size, log-log, one line per contender and one panel per thread count."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        threads = sorted({r.threads for r in self.results})
        fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4), squeeze=False)
        for ax, t in zip(axes[0], threads, strict=True):
            for c in dict.fromkeys(r.contender for r in self.results):
                rows = sorted((r for r in self.results if r.contender == c and r.threads == t),
                              key=lambda r: r.batch_size)
                ax.plot([r.batch_size for r in rows], [r.median_us for r in rows], marker="o", label=c)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel("median latency per batch (µs)")
            ax.set_title(f"{self.model.get('name', 'model')}, {t} thread(s)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        return Path(path)


def _fx(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}×"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    from . import __version__

    return {"svdcompress": __version__, "torch": torch.__version__, "onnxruntime": ort.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__}


def copy_bandwidth(threads: int = 1, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Memory copy bandwidth in bytes/s, STREAM convention (bytes read + bytes written)."""
    torch.set_num_threads(threads)
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_time_once(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * nbytes / best


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # A spinning idle worker steals the core from the next contender (DESIGN.md §5).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_runner(sess: Any) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = sess.run(None, {name: x})[0]
        return out

    return run


def _torch_runner(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(x)
        return out

    return run


def _state_bytes(model: nn.Module, d: Path, name: str) -> int:
    p = d / f"{name}.pt"
    torch.save(model.state_dict(), p)
    return p.stat().st_size


def _dense_original(model: nn.Module) -> nn.Module:
    # A threshold of +inf keeps every weight: the network as trained, before any pruning.
    return mask_model(model, threshold=float("inf"))


@dataclass
class _Contender:
    name: str
    fn: Callable[[Any], Any]
    numpy_input: bool
    artifact_bytes: int


@dataclass
class _Models:
    """The three PyTorch forms every thread count reuses; built once per benchmark."""

    dense: nn.Module
    masked: nn.Module
    pruned: nn.Module | None
    state_bytes: dict[str, int]
    info: dict[str, Any]


def _prepare_models(model: nn.Module, input_shape: tuple[int, ...], cfg: BenchConfig, workdir: Path,
                    log: Callable[[str], None]) -> _Models:
    from .structured import prune

    dense = _dense_original(model)
    masked = mask_model(model, cfg.threshold)
    info: dict[str, Any] = {}
    pruned = None
    if set(cfg.contenders) & {"torch-pruned", "ort-compact", "ort-sparse", "csr-runtime"}:
        log("pruning")
        result = prune(model, threshold=cfg.threshold, input_shape=input_shape)
        pruned = result.model
        info["prune"] = {"params_before": result.report.params_before, "params_after": result.report.params_after,
                         "max_abs_diff": result.report.max_abs_diff}
    forms = {"dense": dense, "masked": masked, **({"pruned": pruned} if pruned is not None else {})}
    sizes = {k: _state_bytes(m, workdir, k) for k, m in forms.items()}
    return _Models(dense, masked, pruned, sizes, info)


def _build_contenders(models: _Models, input_shape: tuple[int, ...], cfg: BenchConfig, workdir: Path,
                      threads: int, log: Callable[[str], None]) -> tuple[list[_Contender], dict[str, Any]]:
    from .export import export_csr, export_onnx
    from .runtime import load as load_runtime

    torch.set_num_threads(threads)
    dense, masked, pruned = models.dense, models.masked, models.pruned
    out: list[_Contender] = []
    info: dict[str, Any] = dict(models.info)
    for name in cfg.contenders:
        log(f"preparing {name}")
        if name == "torch-dense":
            out.append(_Contender(name, _torch_runner(dense), False, models.state_bytes["dense"]))
        elif name == "torch-masked":
            out.append(_Contender(name, _torch_runner(masked), False, models.state_bytes["masked"]))
        elif name == "torch-pruned" and pruned is not None:
            out.append(_Contender(name, _torch_runner(pruned), False, models.state_bytes["pruned"]))
        elif name in ("ort-dense", "ort-compact", "ort-sparse"):
            path = workdir / f"{name}.onnx"
            if not path.exists():
                src, ref = (dense, dense) if name == "ort-dense" else (pruned, masked)
                assert src is not None  # pruned exists whenever an ORT pruned contender was asked for
                export_onnx(src, path, input_shape=input_shape, reference=ref, sparse=name == "ort-sparse",
                            force=True)
            out.append(_Contender(name, _ort_runner(_ort_session(path, threads)), True, path.stat().st_size))
        elif name == "csr-runtime" and pruned is not None:
            path = workdir / "model.csr"
            if not path.exists():
                export_csr(pruned, path, input_shape=input_shape, reference=masked, threshold=cfg.threshold,
                           force=True)
            rt = load_runtime(path, threads=threads)
            info["csr_nnz"] = int(sum(rt.nnz.values()))
            info["csr_weight_bytes"] = _runtime_weight_bytes(rt)
            info["csr_kernels"] = dict(rt.layer_kernels)
            out.append(_Contender(name, rt, False, path.stat().st_size))
        elif name not in CONTENDERS:
            from .errors import SvdcompressError

            raise SvdcompressError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    return out, info


def _runtime_weight_bytes(rt: Any) -> int:
    """Bytes of weights the runtime streams per call: 8 per nonzero (fp32 value + int32 index) for CSR
    layers, 4 per element for layers it runs dense."""
    total = 0
    for name, kernel in rt.layer_kernels.items():
        if kernel == "csr":
            total += 8 * int(rt.nnz[name])
        else:
            entry = rt.manifest["layers"].get(f"{name}.weight") or rt.manifest["layers"].get(name) or {}
            total += 4 * int(np.prod(entry.get("matrix_shape", entry.get("shape", [0]))))
    return total


def _calibrate(fn: Callable[[], object], sample_ms: float, warmup: int) -> int:
    for _ in range(warmup):
        fn()
    t = min(_time_once(fn) for _ in range(3))
    return max(1, min(1000, int(sample_ms / 1000 / max(t, 1e-7))))


def _bind(c: _Contender, x: Any) -> Callable[[], object]:
    def call() -> object:
        return c.fn(x)

    return call


def _accuracy(c: _Contender, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
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
) -> BenchReport:
    """Benchmark ``model`` (an SVDO network) against its compressed forms.

    Args:
        model: the trained SVDO model (svdcompress layers or any weight + log_sigma2 convention).
        input_shape: per-example input shape, e.g. ``(1, 28, 28)``.
        config: batch sizes, threads, repeats and contenders.
        data: optional ``(x, y)`` to report each contender's accuracy.
        workdir: where artifacts are written (a temporary directory by default).
        progress: show a progress bar on stderr.
        name: model name for the report and plot.

    Returns:
        A :class:`BenchReport` (``.to_dict()``, ``.markdown()``, ``.plot(path)``).
    """
    from tqdm import tqdm

    cfg = config or BenchConfig()
    shape = tuple(int(d) for d in input_shape)
    model = model.eval()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="svdcompress-bench-") if workdir is None else None
    wd = Path(tmp_ctx.name if tmp_ctx is not None else str(workdir))
    wd.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    total = len(cfg.threads) * len(cfg.batch_sizes) * cfg.repeats * len(cfg.contenders)
    bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=not progress, unit="sample")
    results: list[BenchResult] = []
    accuracy: dict[str, float] = {}
    info: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    try:
        models = _prepare_models(model, shape, cfg, wd, bar.set_postfix_str)
        for t in cfg.threads:
            contenders, info = _build_contenders(models, shape, cfg, wd, t, bar.set_postfix_str)
            if data is not None and not accuracy:
                bar.set_postfix_str("accuracy")
                accuracy = {c.name: _accuracy(c, *data) for c in contenders}
            for b in cfg.batch_sizes:
                bar.set_postfix_str(f"timing batch {b}, {t} thread(s)")
                x = torch.randn(b, *shape, generator=gen)
                xn = x.numpy()
                calls = [(c, _bind(c, xn if c.numpy_input else x)) for c in contenders]
                inner = {c.name: _calibrate(fn, cfg.sample_ms, cfg.warmup) for c, fn in calls}
                samples: dict[str, list[float]] = {c.name: [] for c in contenders}
                for r in range(cfg.repeats):
                    # Rotate the order each round so no contender always runs right after another.
                    k = r % len(calls)
                    for c, fn in calls[k:] + calls[:k]:
                        n = inner[c.name]
                        t0 = time.perf_counter()
                        for _ in range(n):
                            fn()
                        samples[c.name].append((time.perf_counter() - t0) / n * 1e6)
                        bar.update(1)
                for c in contenders:
                    s = sorted(samples[c.name])
                    med = statistics.median(s)
                    p90 = s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]
                    results.append(BenchResult(c.name, b, t, med, p90, b / (med / 1e6), c.artifact_bytes,
                                               accuracy=accuracy.get(c.name)))
        for res in results:
            for ref_name, attr in (("ort-dense", "speedup_vs_ort_dense"), ("torch-dense", "speedup_vs_torch_dense")):
                ref = next((q for q in results if q.contender == ref_name and q.batch_size == res.batch_size
                            and q.threads == res.threads), None)
                if ref is not None:
                    setattr(res, attr, ref.median_us / res.median_us)
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    mach = {**machine_info(), "repeats": cfg.repeats, "sample_ms": cfg.sample_ms, "warmup": cfg.warmup,
            "dtype": "fp32"}
    floor: dict[str, Any] = {}
    if "csr_nnz" in info:
        bw = copy_bandwidth(threads=min(cfg.threads))
        floor = {"nnz": info["csr_nnz"], "bytes_per_nnz": 8, "weight_bytes": info["csr_weight_bytes"],
                 "copy_gb_per_s": bw / 1e9, "floor_us": info["csr_weight_bytes"] / bw * 1e6,
                 "threads": min(cfg.threads),
                 "convention": "STREAM copy: (bytes read + bytes written) / s"}
    model_info = {"name": name, "input_shape": list(shape), "threshold": cfg.threshold, **info}
    return BenchReport(results, mach, _versions(), model_info, accuracy, floor)
