"""The contenders ``bench`` times: how each form of the model is built, checked and called.

Each contender is a callable on one batch plus what it needs to be timed fairly (numpy or torch input, artifact
size, a settle time after each sample). See :mod:`svdcompress.benchmark.harness` for the list and the method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..pruning.masking import dense_copy, mask_model
from .config import CONTENDERS, OPENVINO_CONTENDERS

if TYPE_CHECKING:
    from .config import BenchConfig

__all__ = [
    "Contender",
    "Models",
    "build_contenders",
    "dense_original",
    "import_openvino",
    "openvino_compiled",
    "openvino_runner",
    "prepare_models",
    "runtime_info",
]

# oneTBB workers busy-wait about 1 ms after a multi-threaded OpenVINO call (measured: 1.1 ms of CPU time
# in the 10 ms after a 2-thread call, 0.1 ms after a 1-thread call); waiting this long after each sample
# lets them go idle before the next contender is timed (the harness busy-waits: bench._settle).
OPENVINO_SETTLE_S = 0.005
# torch's OpenMP workers busy-wait ~10 ms after every multi-threaded call (measured: 9-10.6 ms of CPU time in
# the 10 ms after a 2-thread LeNet-5 batch, 0.1 ms in each 10 ms after that): a core stolen from whatever
# is timed next. Waiting this long after each torch sample at more than one thread lets them go idle.
TORCH_SETTLE_S = 0.015


def ort_session(path: Path, threads: int) -> Any:
    from ..export.onnx import ort_session  # the shared set-up: spinning off (README.md, Benchmarks)

    return ort_session(path, threads)


def ort_runner(sess: Any) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = sess.run(None, {name: x})[0]
        return out

    return run


def import_openvino() -> Any | None:
    """The ``openvino`` module, or None when it is not installed (the ``peers`` extra)."""
    try:
        return importlib.import_module("openvino")
    except ImportError:
        return None


def openvino_compiled(ov: Any, path: Path, threads: int) -> Any:
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


def openvino_runner(ov: Any, compiled: Any) -> Callable[[np.ndarray], np.ndarray]:
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


def torch_runner(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(x)
        return out

    return run


def state_bytes(model: nn.Module, d: Path, name: str) -> int:
    p = d / f"{name}.pt"
    torch.save(model.state_dict(), p)
    return p.stat().st_size


def dense_original(model: nn.Module, convention: str | None = None) -> nn.Module:
    # Every weight kept: the network as trained, before any pruning.
    return dense_copy(model, convention=convention)


@dataclass
class Contender:
    name: str
    fn: Callable[[Any], Any]
    numpy_input: bool
    artifact_bytes: int
    settle_s: float = 0.0  # untimed wait after each timed sample, so other engines' spinning workers go idle


@dataclass
class Models:
    """The three PyTorch forms every thread count reuses; built once per benchmark."""

    dense: nn.Module
    masked: nn.Module
    pruned: nn.Module | None
    state_bytes: dict[str, int]
    info: dict[str, Any]


def prepare_models(
    model: nn.Module, input_shape: tuple[int, ...], cfg: BenchConfig, workdir: Path, log: Callable[[str], None]
) -> Models:
    from ..pruning.structural import prune

    dense = dense_original(model, cfg.convention)
    masked = mask_model(model, cfg.threshold, convention=cfg.convention)
    info: dict[str, Any] = {}
    pruned = None
    if set(cfg.contenders) & {"torch-pruned", "ort-compact", "openvino-compact", "ort-sparse", "csr-runtime"}:
        log("pruning")
        result = prune(model, threshold=cfg.threshold, input_shape=input_shape, convention=cfg.convention)
        pruned = result.model
        info["prune"] = {
            "params_before": result.report.params_before,
            "params_after": result.report.params_after,
            "max_abs_diff": result.report.max_abs_diff,
        }
    forms = {"dense": dense, "masked": masked, **({"pruned": pruned} if pruned is not None else {})}
    sizes = {k: state_bytes(m, workdir, k) for k, m in forms.items()}
    return Models(dense, masked, pruned, sizes, info)


def onnx_artifact(models: Models, form: str, input_shape: tuple[int, ...], workdir: Path) -> Path:
    """The ONNX file for ``form`` ("dense", "compact" or "sparse"), exported once and shared by every engine."""
    from ..export import export_onnx

    path = workdir / f"{form}.onnx"
    if not path.exists():
        src, ref = (models.dense, models.dense) if form == "dense" else (models.pruned, models.masked)
        assert src is not None  # prepare_models prunes whenever a compact or sparse contender was asked for
        export_onnx(src, path, input_shape=input_shape, reference=ref, sparse=form == "sparse", force=True)
    return path


def check_outputs(
    name: str, fn: Callable[[np.ndarray], np.ndarray], reference: nn.Module, input_shape: tuple[int, ...]
) -> None:
    """A third-party engine must compute what the model computes before its time means anything."""
    from ..errors import VerificationError

    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = reference(x).numpy()
    out = np.array(fn(x.numpy()))
    diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if not diff <= tol:
        raise VerificationError(f"{name}: outputs differ from the PyTorch model by {diff:.3g} (tolerance {tol:.3g})")


def build_contenders(
    models: Models,
    input_shape: tuple[int, ...],
    cfg: BenchConfig,
    workdir: Path,
    threads: int,
    log: Callable[[str], None],
) -> tuple[list[Contender], dict[str, Any]]:
    torch_settle = TORCH_SETTLE_S if threads > 1 else 0.0
    dense, masked, pruned = models.dense, models.masked, models.pruned
    out: list[Contender] = []
    info: dict[str, Any] = dict(models.info)
    ov = import_openvino()
    for name in cfg.contenders:
        log(f"preparing {name}")
        if name == "torch-dense":
            out.append(Contender(name, torch_runner(dense), False, models.state_bytes["dense"], settle_s=torch_settle))
        elif name == "torch-masked":
            out.append(
                Contender(name, torch_runner(masked), False, models.state_bytes["masked"], settle_s=torch_settle)
            )
        elif name == "torch-pruned" and pruned is not None:
            out.append(
                Contender(name, torch_runner(pruned), False, models.state_bytes["pruned"], settle_s=torch_settle)
            )
        elif name in ("ort-dense", "ort-compact", "ort-sparse"):
            path = onnx_artifact(models, name.removeprefix("ort-"), input_shape, workdir)
            out.append(Contender(name, ort_runner(ort_session(path, threads)), True, path.stat().st_size))
        elif name in OPENVINO_CONTENDERS:
            if ov is None:
                continue  # bench() printed a note and records the skip
            form = name.removeprefix("openvino-")
            path = onnx_artifact(models, form, input_shape, workdir)
            run = openvino_runner(ov, openvino_compiled(ov, path, threads))
            check_outputs(name, run, dense if form == "dense" else masked, input_shape)
            out.append(
                Contender(name, run, True, path.stat().st_size, settle_s=OPENVINO_SETTLE_S if threads > 1 else 0.0)
            )
        elif name == "csr-runtime" and pruned is not None:
            from ..export import export_csr
            from ..runtime import load as load_runtime

            path = workdir / "model.csr"
            if not path.exists():
                export_csr(pruned, path, input_shape=input_shape, reference=masked, threshold=cfg.threshold, force=True)
            rt = load_runtime(path, threads=threads)
            info.update(runtime_info(rt))
            # The numba kernel runtime (it reports macs_per_item) works on numpy arrays and converts torch
            # tensors; the torch-based one it replaces works on tensors. Feed each its own type, as ORT gets numpy.
            native_numpy = getattr(rt, "macs_per_item", None) is not None
            out.append(Contender(name, rt, native_numpy, path.stat().st_size))
        elif name not in CONTENDERS:
            from ..errors import SvdcompressError

            raise SvdcompressError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    return out, info


def runtime_info(rt: Any) -> dict[str, Any]:
    """What the loaded CSR runtime says it does per call.

    The kernel runtime exposes ``macs_per_item``, ``weight_bytes`` and ``layer_kernels`` ("sparse" | "dense");
    the torch-based one only ``layer_kernels`` ("csr" | "dense") and ``nnz``, from which the weight bytes are
    estimated (:func:`runtime_weight_bytes`) and the multiply-adds are left unknown.
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
        info["csr_weight_bytes"], info["csr_weight_bytes_source"] = runtime_weight_bytes(rt), "estimate"
    return info


def runtime_weight_bytes(rt: Any) -> int:
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
