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
harness sleeps a few ms, outside the timed region, after each OpenVINO sample at more than one thread.

Method: each contender is warmed up, then a round robin of timed samples interleaves the
contenders so that machine drift hits all alike. A sample averages enough calls to last
about ``sample_ms``. ONNX Runtime sessions are created with intra-op spinning off, since a
spinning ORT worker steals the core from whatever is timed next (DESIGN.md §5).

Every record carries ``speedup_vs_best_dense``: the faster (lower median) of ``ort-dense`` and
``openvino-dense`` at the same batch size and thread count, divided by the contender's median. For
``csr-runtime`` it also carries the multiply-adds the runtime executes per item, the GMAC/s they make,
their fraction of the machine's practical peak (a one-thread-per-thread-count sgemm measured in the same
process, see :func:`sgemm_peak`) and the memory-bandwidth floor of the weight bytes it reads.

:func:`bench` leaves the process as it found it: the torch thread count and the caller's model
train/eval flags are restored on return, also after an error.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import atomic_path
from .masking import mask_model
from .svdo import DEFAULT_THRESHOLD

__all__ = [
    "CONTENDERS",
    "DENSE_REFERENCES",
    "BenchConfig",
    "BenchReport",
    "BenchResult",
    "bench",
    "copy_bandwidth",
    "cpu_simd_flags",
    "machine_info",
    "sgemm_peak",
    "torch_threads",
]

CONTENDERS = (
    "torch-dense",
    "ort-dense",
    "openvino-dense",
    "torch-masked",
    "torch-pruned",
    "ort-compact",
    "openvino-compact",
    "ort-sparse",
    "csr-runtime",
)
OPENVINO_CONTENDERS = ("openvino-dense", "openvino-compact")
# speedup_vs_best_dense divides the faster of these (same batch size and threads) by a contender's median.
DENSE_REFERENCES = ("ort-dense", "openvino-dense")
# oneTBB workers busy-wait about 1 ms after a multi-threaded OpenVINO call (measured: 1.1 ms of CPU time
# in the 10 ms after a 2-thread call, 0.1 ms after a 1-thread call); sleeping this long after each sample
# lets them go idle before the next contender is timed.
_OPENVINO_SETTLE_S = 0.005


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
            "| × vs torch-dense | GMAC/s (of peak); × bandwidth floor | artifact KB | accuracy |",
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
                f"{_fx(r.speedup_vs_torch_dense)} | {gmac} | {r.artifact_bytes / 1024:,.1f} | {acc} |"
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
        """Latency vs batch size, log-log, one line per contender and one panel per thread count."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        threads = sorted({r.threads for r in self.results})
        fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4), squeeze=False)
        for ax, t in zip(axes[0], threads, strict=True):
            for c in dict.fromkeys(r.contender for r in self.results):
                rows = sorted(
                    (r for r in self.results if r.contender == c and r.threads == t), key=lambda r: r.batch_size
                )
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


# /proc/cpuinfo flags that say which vector instructions kernels can use (x86 and Arm).
_SIMD_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "asimd", "sve", "neon", "vnni")


def cpu_simd_flags(flags: Sequence[str]) -> list[str]:
    """The SIMD-relevant entries of a CPU flag list (SSE/AVX/AVX-512/AMX/FMA/F16C on x86, NEON/SVE on Arm)."""
    return sorted({f for f in flags if f.startswith(_SIMD_PREFIXES)})


def machine_info() -> dict[str, Any]:
    """CPU model, its SIMD extensions (from ``/proc/cpuinfo`` flags), core count, platform and Python."""
    cpu = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu in ("unknown", platform.processor()):
                    cpu = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.split()
                if cpu != "unknown" and flags:
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "simd": cpu_simd_flags(flags),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    from . import __version__

    out = {
        "svdcompress": __version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }
    ov = _import_openvino()
    if ov is not None:
        out["openvino"] = str(ov.__version__)
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        pass
    return out


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count to ``n`` for the block; restore the previous count on exit."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def copy_bandwidth(threads: int = 1, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Memory copy bandwidth in bytes/s, STREAM convention (bytes read + bytes written).

    Runs with ``threads`` torch threads and restores the caller's thread count.
    """
    with torch_threads(threads):
        src = torch.ones(nbytes // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = min(_time_once(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * nbytes / best


def sgemm_peak(threads: int = 1, n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """The machine's practical fp32 peak in GMAC/s: the best of ``repeats`` n×n×n matrix products.

    Two BLAS libraries are timed and the faster one counts, since either may be the better-tuned one for a
    CPU: torch's (``torch.mm`` under :func:`torch_threads`, which torch honours reliably at any time) and
    numpy's (``np.matmul``, limited to ``threads`` with ``threadpoolctl`` when that is installed; without it
    numpy's BLAS cannot be limited reliably after import, so it is left out). Process state is restored.

    Returns:
        ``{"torch": GMAC/s, "numpy": GMAC/s (when measured), "peak": the larger}``.
    """
    macs = float(n) ** 3
    out: dict[str, float] = {}
    with torch_threads(threads):
        a = torch.rand(n, n, dtype=torch.float32)
        b = torch.rand(n, n, dtype=torch.float32)
        torch.mm(a, b)
        out["torch"] = macs / min(_time_once(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        an, bn = a.numpy(), b.numpy()
        with threadpool_limits(limits=threads, user_api="blas"):
            np.matmul(an, bn)
            out["numpy"] = macs / min(_time_once(lambda: np.matmul(an, bn)) for _ in range(repeats)) / 1e9
    out["peak"] = max(out.values())
    return out


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ort_session(path: Path, threads: int) -> Any:
    from .export.onnx import ort_session  # the shared set-up: spinning off (DESIGN.md §5)

    return ort_session(path, threads)


def _ort_runner(sess: Any) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = sess.run(None, {name: x})[0]
        return out

    return run


def _import_openvino() -> Any | None:
    """The ``openvino`` module, or None when it is not installed (the ``peers`` extra)."""
    try:
        return importlib.import_module("openvino")
    except ImportError:
        return None


def _openvino_compiled(ov: Any, path: Path, threads: int) -> Any:
    """``path`` compiled by OpenVINO's CPU plugin for one caller waiting on each result."""
    import openvino.properties as props
    import openvino.properties.hint as hint

    config = {
        hint.performance_mode: hint.PerformanceMode.LATENCY,
        props.inference_num_threads: threads,
        props.num_streams: 1,
        # fp32 like every other contender: on CPUs with bf16/AMX the plugin would otherwise infer in bf16.
        hint.inference_precision: ov.Type.f32,
        # Pinned inference threads would compete with the other engines' threads for fixed cores.
        hint.enable_cpu_pinning: False,
    }
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def _openvino_runner(ov: Any, compiled: Any) -> Callable[[np.ndarray], np.ndarray]:
    """One reused infer request: bind the input without a copy, ``infer()``, return the output buffer.

    Of the Python calling forms (``request.infer({0: x})``, ``infer(x, share_inputs=True,
    share_outputs=True)``, ``compiled(x)``, and this one) this had the lowest per-call cost. The returned
    array aliases the request's output buffer: the next call overwrites it.
    """
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        request.infer()
        out: np.ndarray = request.get_output_tensor(0).data
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
    settle_s: float = 0.0  # sleep after each timed sample, untimed, so busy-waiting workers go idle


@dataclass
class _Models:
    """The three PyTorch forms every thread count reuses; built once per benchmark."""

    dense: nn.Module
    masked: nn.Module
    pruned: nn.Module | None
    state_bytes: dict[str, int]
    info: dict[str, Any]


def _prepare_models(
    model: nn.Module, input_shape: tuple[int, ...], cfg: BenchConfig, workdir: Path, log: Callable[[str], None]
) -> _Models:
    from .structured import prune

    dense = _dense_original(model)
    masked = mask_model(model, cfg.threshold)
    info: dict[str, Any] = {}
    pruned = None
    if set(cfg.contenders) & {"torch-pruned", "ort-compact", "openvino-compact", "ort-sparse", "csr-runtime"}:
        log("pruning")
        result = prune(model, threshold=cfg.threshold, input_shape=input_shape)
        pruned = result.model
        info["prune"] = {
            "params_before": result.report.params_before,
            "params_after": result.report.params_after,
            "max_abs_diff": result.report.max_abs_diff,
        }
    forms = {"dense": dense, "masked": masked, **({"pruned": pruned} if pruned is not None else {})}
    sizes = {k: _state_bytes(m, workdir, k) for k, m in forms.items()}
    return _Models(dense, masked, pruned, sizes, info)


def _onnx_artifact(models: _Models, form: str, input_shape: tuple[int, ...], workdir: Path) -> Path:
    """The ONNX file for ``form`` ("dense", "compact" or "sparse"), exported once and shared by every engine."""
    from .export import export_onnx

    path = workdir / f"{form}.onnx"
    if not path.exists():
        src, ref = (models.dense, models.dense) if form == "dense" else (models.pruned, models.masked)
        assert src is not None  # _prepare_models prunes whenever a compact or sparse contender was asked for
        export_onnx(src, path, input_shape=input_shape, reference=ref, sparse=form == "sparse", force=True)
    return path


def _check_outputs(
    name: str, fn: Callable[[np.ndarray], np.ndarray], reference: nn.Module, input_shape: tuple[int, ...]
) -> None:
    """A third-party engine must compute what the model computes before its time means anything."""
    from .errors import VerificationError

    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = reference(x).numpy()
    out = np.array(fn(x.numpy()))
    diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if not diff <= tol:
        raise VerificationError(f"{name}: outputs differ from the PyTorch model by {diff:.3g} (tolerance {tol:.3g})")


def _build_contenders(
    models: _Models,
    input_shape: tuple[int, ...],
    cfg: BenchConfig,
    workdir: Path,
    threads: int,
    log: Callable[[str], None],
) -> tuple[list[_Contender], dict[str, Any]]:
    dense, masked, pruned = models.dense, models.masked, models.pruned
    out: list[_Contender] = []
    info: dict[str, Any] = dict(models.info)
    ov = _import_openvino()
    for name in cfg.contenders:
        log(f"preparing {name}")
        if name == "torch-dense":
            out.append(_Contender(name, _torch_runner(dense), False, models.state_bytes["dense"]))
        elif name == "torch-masked":
            out.append(_Contender(name, _torch_runner(masked), False, models.state_bytes["masked"]))
        elif name == "torch-pruned" and pruned is not None:
            out.append(_Contender(name, _torch_runner(pruned), False, models.state_bytes["pruned"]))
        elif name in ("ort-dense", "ort-compact", "ort-sparse"):
            path = _onnx_artifact(models, name.removeprefix("ort-"), input_shape, workdir)
            out.append(_Contender(name, _ort_runner(_ort_session(path, threads)), True, path.stat().st_size))
        elif name in OPENVINO_CONTENDERS:
            if ov is None:
                continue  # bench() printed a note and records the skip
            form = name.removeprefix("openvino-")
            path = _onnx_artifact(models, form, input_shape, workdir)
            run = _openvino_runner(ov, _openvino_compiled(ov, path, threads))
            _check_outputs(name, run, dense if form == "dense" else masked, input_shape)
            out.append(
                _Contender(name, run, True, path.stat().st_size, settle_s=_OPENVINO_SETTLE_S if threads > 1 else 0.0)
            )
        elif name == "csr-runtime" and pruned is not None:
            from .export import export_csr
            from .runtime import load as load_runtime

            path = workdir / "model.csr"
            if not path.exists():
                export_csr(pruned, path, input_shape=input_shape, reference=masked, threshold=cfg.threshold, force=True)
            rt = load_runtime(path, threads=threads)
            info.update(_runtime_info(rt))
            # The numba kernel runtime (it reports macs_per_item) works on numpy arrays and converts torch
            # tensors; the torch-based one it replaces works on tensors. Feed each its own type, as ORT gets numpy.
            native_numpy = getattr(rt, "macs_per_item", None) is not None
            out.append(_Contender(name, rt, native_numpy, path.stat().st_size))
        elif name not in CONTENDERS:
            from .errors import SvdcompressError

            raise SvdcompressError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    return out, info


def _runtime_info(rt: Any) -> dict[str, Any]:
    """What the loaded CSR runtime says it does per call.

    The kernel runtime exposes ``macs_per_item``, ``weight_bytes`` and ``layer_kernels`` ("sparse" | "dense");
    the torch-based one only ``layer_kernels`` ("csr" | "dense") and ``nnz``, from which the weight bytes are
    estimated (:func:`_runtime_weight_bytes`) and the multiply-adds are left unknown.
    """
    macs = getattr(rt, "macs_per_item", None)
    weight_bytes = getattr(rt, "weight_bytes", None)
    nnz = getattr(rt, "nnz", None)
    info: dict[str, Any] = {
        "csr_kernels": dict(getattr(rt, "layer_kernels", {}) or {}),
        "csr_macs_per_item": None if macs is None else int(macs),
    }
    if nnz is not None:
        info["csr_nnz"] = int(sum(nnz.values()))
    if weight_bytes is not None:
        info["csr_weight_bytes"], info["csr_weight_bytes_source"] = int(weight_bytes), "runtime"
    else:
        info["csr_weight_bytes"], info["csr_weight_bytes_source"] = _runtime_weight_bytes(rt), "estimate"
    return info


def _runtime_weight_bytes(rt: Any) -> int:
    """Bytes of weights the torch-based runtime streams per call: 8 per nonzero (fp32 value + int32 index) for
    CSR layers, 4 per element for layers it runs dense."""
    total = 0
    for name, kernel in rt.layer_kernels.items():
        if kernel in ("csr", "sparse"):
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

    The torch thread count and the train/eval flag of every module of ``model`` are restored on return.

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
    cfg = config or BenchConfig()
    shape = tuple(int(d) for d in input_shape)
    skipped: dict[str, str] = {}
    if set(cfg.contenders) & set(OPENVINO_CONTENDERS) and _import_openvino() is None:
        asked = [c for c in cfg.contenders if c in OPENVINO_CONTENDERS]
        reason = "openvino is not installed (pip install 'svdcompress[peers]')"
        skipped = dict.fromkeys(asked, reason)
        print(f"note: skipping {', '.join(asked)}: {reason}", file=sys.stderr, flush=True)
    training = {m: m.training for m in model.modules()}
    tmp_ctx = tempfile.TemporaryDirectory(prefix="svdcompress-bench-") if workdir is None else None
    try:
        with torch_threads(torch.get_num_threads()):
            model.eval()
            wd = Path(tmp_ctx.name if tmp_ctx is not None else str(workdir))
            wd.mkdir(parents=True, exist_ok=True)
            report = _run(model, shape, cfg, data, wd, progress, name, skipped)
    finally:
        for m, was_training in training.items():
            m.training = was_training
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return report


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
        models = _prepare_models(model, shape, cfg, wd, bar.set_postfix_str)
        for t in cfg.threads:
            with torch_threads(t):
                contenders, info = _build_contenders(models, shape, cfg, wd, t, bar.set_postfix_str)
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
    contenders: list[_Contender],
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
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[c.name].append((time.perf_counter() - t0) / n * 1e6)
            if c.settle_s:
                time.sleep(c.settle_s)
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
