"""The CSR runtime: torch-free and source-free loading, kernel choice, calling conventions, thread safety,
and a numba cache that works when the package directory is read-only."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest
import torch
from torch import nn

import svdcompress
from svdcompress import runtime
from svdcompress.errors import BundleError, InvalidInputError, SvdcompressError
from svdcompress.export import export_csr
from svdcompress.nn import zoo
from svdcompress.pruning import masking

MNIST = (1, 28, 28)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # training jobs share this 2-core machine


def masked_zoo(arch: str, shift: float = 5.1) -> nn.Module:
    """Masked zoo model; log σ² = log θ² + N(shift, 1) masks ~98% of weights at shift 5.1."""
    torch.manual_seed(0)
    model = zoo.build(arch, svdo=True)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "log_sigma2"):
                m.log_sigma2.copy_(torch.log(m.weight**2) + torch.randn_like(m.weight) + shift)
    return masking.mask_model(model, 3.0)


class WideMLP(nn.Module):
    """Linear chains through an unfoldable BN, an add and a cat; one layer dense enough to run dense."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(40, 64)
        self.bn = nn.BatchNorm1d(64)  # fc1 has two readers, so this BN cannot fold
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 32)
        self.fc4 = nn.Linear(128 + 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (N, 64)
        r = torch.relu(self.bn(h)) + self.fc2(h)  # (N, 64)
        return self.fc4(torch.cat([r, h, self.fc3(r)], dim=1))  # (N, 10)


def wide_mlp() -> nn.Module:
    torch.manual_seed(1)
    model = WideMLP()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                density = 0.5 if name == "fc3" else 0.05
                m.weight.mul_((torch.rand(m.weight.shape) < density).float())
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def lenet5_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.set_num_threads(1)
    model = masked_zoo("lenet5")
    path = tmp_path_factory.mktemp("b") / "lenet5.csr"
    export_csr(model, path, input_shape=MNIST)
    return path, model


@pytest.fixture(scope="module")
def lenet300_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """The bundled, trained LeNet-300-100 as a CSR bundle, and its masked dense model (the reference)."""
    from svdcompress.nn.architecture import load_model

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("b") / "lenet300.csr"
    svdcompress.export_model("bundled:lenet300", "csr", path)
    svdo = load_model(svdcompress.bundled_checkpoint("lenet300")).module
    return path, svdcompress.prune(svdo, input_shape=MNIST).masked.eval()


def _ref(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


# ---------------------------------------------------------------------------------------------- fresh processes

# Modules a served model must not pay for: torch (and fx, which export uses) and all model code.
_BANNED = (
    "torch",
    "onnx",
    "onnxruntime",
    "svdcompress.nn.zoo",
    "svdcompress.nn.layers",
    "svdcompress.pruning.masking",
    "svdcompress.checkpoint.formats",
    "svdcompress.pruning.structural",
    "svdcompress.pruning.tracing",
    "svdcompress.export",
    "svdcompress.nn.architecture",
    "svdcompress.ops",
    "svdcompress.benchmark.harness",
)

_SCRIPT = """
import sys, numpy as np
{prelude}
from svdcompress.runtime import load
m = load({path!r}, threads=1)
y = m(np.load({x!r}))
assert type(y) is np.ndarray and y.dtype == np.float32, type(y)
np.testing.assert_allclose(y, np.load({ref!r}), rtol=1e-4, atol=1e-5)
bad = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "onnx", "onnxruntime") or n.startswith({banned!r}))
assert not bad, "imported: " + ", ".join(bad)
print("ok")
"""

# Import svdcompress.runtime without executing svdcompress/__init__.py: tests what the runtime itself
# needs, as in a deployment that vendors only the runtime and errors modules.
_BARE_PACKAGE = """
import importlib.util, types
pkg = types.ModuleType("svdcompress")
pkg.__path__ = list(importlib.util.find_spec("svdcompress").submodule_search_locations)
sys.modules["svdcompress"] = pkg
"""


def _run_fresh(bundle: tuple[Path, nn.Module], tmp_path: Path, prelude: str) -> subprocess.CompletedProcess[str]:
    path, model = bundle
    x = np.random.default_rng(0).standard_normal((3, *MNIST)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", _ref(model, x))
    script = _SCRIPT.format(
        prelude=prelude, path=str(path), x=str(tmp_path / "x.npy"), ref=str(tmp_path / "ref.npy"), banned=_BANNED
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)


def test_load_and_call_never_import_torch(lenet5_bundle: tuple[Path, nn.Module], tmp_path: Path) -> None:
    proc = _run_fresh(lenet5_bundle, tmp_path, "")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_runtime_needs_only_its_own_modules(lenet5_bundle: tuple[Path, nn.Module], tmp_path: Path) -> None:
    proc = _run_fresh(lenet5_bundle, tmp_path, _BARE_PACKAGE)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_kernels_agree(tmp_path: Path, batch: int) -> None:
    for name, model, shape in [("lenet300", masked_zoo("lenet300"), MNIST), ("wide", wide_mlp(), (40,))]:
        path = tmp_path / f"{name}.csr"
        export_csr(model, path, input_shape=shape)
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        ref = torch.from_numpy(_ref(model, x))
        outs = {(k, t): runtime.load(path, kernel=k, threads=t)(x) for k in runtime.KERNELS for t in (1, 2)}
        for (k, t), y in outs.items():
            torch.testing.assert_close(torch.from_numpy(y), ref, rtol=1e-5, atol=1e-5, msg=f"{name} {k} {t}")


def _positions(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions per example of each conv/linear layer (1 for Linear)."""
    out: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: out.__setitem__(n, int(np.prod(o.shape[2:]))))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return out


def test_layer_kernels_nnz_and_macs(tmp_path: Path, lenet5_bundle: tuple[Path, nn.Module]) -> None:
    path = tmp_path / "wide.csr"
    model = wide_mlp()
    export_csr(model, path, input_shape=(40,))
    auto = runtime.load(path)
    names = {"fc1", "fc2", "fc3", "fc4"}
    assert set(auto.layer_kernels) == set(auto.layer_kernels_batched) == names
    assert set(auto.layer_kernels.values()) | set(auto.layer_kernels_batched.values()) <= {"sparse", "dense"}
    assert auto.nnz == {n: int(getattr(model, n).weight.count_nonzero()) for n in names}
    assert auto.threads == 1 and runtime.load(path, threads=2).threads == 2
    for kernel in ("sparse", "dense"):
        forced = runtime.load(path, kernel=kernel)
        assert set(forced.layer_kernels.values()) == set(forced.layer_kernels_batched.values()) == {kernel}

    lenet_path, lenet = lenet5_bundle
    pos = _positions(lenet, MNIST)
    sparse, dense = runtime.load(lenet_path, kernel="sparse"), runtime.load(lenet_path, kernel="dense")
    layers = {n: m for n, m in lenet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert sparse.nnz == {n: int(m.weight.count_nonzero()) for n, m in layers.items()}
    assert sparse.macs_per_item == sum(int(m.weight.count_nonzero()) * pos[n] for n, m in layers.items())
    assert dense.macs_per_item == sum(m.weight.numel() * pos[n] for n, m in layers.items())
    assert 0 < sparse.weight_bytes < dense.weight_bytes
    assert sparse.manifest["format"] == runtime.FORMAT_NAME and sparse.input_shape == MNIST
    assert sparse.output_shape == (10,)
    assert "fc1=sparse" in repr(sparse) and "conv1=dense" in repr(dense)


def test_fp16_bundle(tmp_path: Path, lenet5_bundle: tuple[Path, nn.Module]) -> None:
    model = lenet5_bundle[1]
    path = tmp_path / "half.csr"
    export_csr(model, path, input_shape=MNIST, dtype="fp16")
    x = np.random.default_rng(1).standard_normal((4, *MNIST)).astype(np.float32)
    ref = _ref(model, x)
    y = runtime.load(path)(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-2, atol=1e-2 * max(1.0, float(np.abs(ref).max())))


# ---------------------------------------------------------------------------------------------- calling


def test_numpy_in_numpy_out_torch_in_torch_out(lenet5_bundle: tuple[Path, nn.Module]) -> None:
    path, model = lenet5_bundle
    m = runtime.load(path)
    x64 = np.random.default_rng(0).standard_normal((2, *MNIST))  # float64 numpy is accepted
    y = m(x64)
    assert type(y) is np.ndarray and y.dtype == np.float32 and y.shape == (2, 10) and y.flags.c_contiguous
    y += 1.0  # writeable
    np.testing.assert_allclose(m(x64), _ref(model, x64.astype(np.float32)), rtol=1e-5, atol=1e-5)

    xt = torch.from_numpy(x64.astype(np.float32)).requires_grad_()
    yt = m(xt)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and yt.shape == (2, 10)
    assert yt.is_contiguous() and not yt.requires_grad
    yt.add_(1.0)  # an ordinary tensor, not an inference-mode one
    torch.testing.assert_close(m(xt[:, :, ::1]), torch.from_numpy(m(x64)))
    assert isinstance(m(xt.double()), torch.Tensor)

    nc = np.asfortranarray(x64.astype(np.float32))  # any layout
    np.testing.assert_array_equal(m(nc), m(np.ascontiguousarray(nc)))
    empty = m(np.zeros((0, *MNIST), np.float32))
    assert empty.shape == (0, 10) and empty.dtype == np.float32


@pytest.mark.parametrize("shape", [(2, 784), (2, 1, 28, 27), (1, 28, 28), (2, 1, 1, 28, 28), ()])
def test_wrong_input_shape(lenet5_bundle: tuple[Path, nn.Module], shape: tuple[int, ...]) -> None:
    m = runtime.load(lenet5_bundle[0])
    for x in (np.zeros(shape, np.float32), torch.zeros(shape)):
        with pytest.raises(InvalidInputError, match=r"\(N, 1, 28, 28\)"):
            m(x)
    with pytest.raises(ValueError):  # InvalidInputError is also a ValueError
        m(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel": "fast"},
        {"kernel": "csr"},
        {"kernel": None},
        {"threads": 0},
        {"threads": -1},
        {"threads": 1.5},
        {"threads": True},
        {"threads": "2"},
    ],
)
def test_bad_arguments(lenet5_bundle: tuple[Path, nn.Module], kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match="kernel" if "kernel" in kwargs else "threads"):
        runtime.load(lenet5_bundle[0], **kwargs)


def test_bad_files(tmp_path: Path, lenet5_bundle: tuple[Path, nn.Module]) -> None:
    not_zip = tmp_path / "x.csr"
    not_zip.write_bytes(b"hello")
    for path in (not_zip, tmp_path / "missing.csr", tmp_path):
        with pytest.raises(BundleError, match=str(path)) as info:
            runtime.load(path)
        assert isinstance(info.value, SvdcompressError)


# ---------------------------------------------------------------------------------------------- threads

_BATCHES = (1, 3, 16, 64)


def test_a_slow_load_says_why_and_a_fast_one_says_nothing(
    monkeypatch: pytest.MonkeyPatch, lenet5_bundle: tuple[Path, Any]
) -> None:
    """The command line hears why a load is slow (numba compiling on first use); a quick load leaves no note."""
    import time

    path = lenet5_bundle[0]
    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("svdcompress.runtime")
    handler = _Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        monkeypatch.setattr(runtime, "SLOW_LOAD_S", 0.0)  # every load of a conv net takes longer (kernel timing)
        runtime.load(path)
        assert len(lines) == 1 and "numba compiles" in lines[0]
        lines.clear()
        monkeypatch.setattr(runtime, "SLOW_LOAD_S", 60.0)
        runtime.load(path)
        time.sleep(0.05)
        assert lines == []  # the timer was cancelled when the load returned
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert runtime._slow_load_note() is None  # nobody listens to INFO: the library stays silent


def test_fused_single_pass_only_for_plain_sequences(tmp_path: Path) -> None:
    """A graph with an add and a cat (WideMLP) has no fused single-example pass; batch 1 runs as steps."""
    from svdcompress.runtime._single import single_pass

    torch.manual_seed(0)
    model = WideMLP().eval()
    path = tmp_path / "wide.csr"
    export_csr(model, path, input_shape=(40,))
    m = runtime.load(path)
    assert single_pass(m._plan) is None and m._plan.single is None
    x = np.random.default_rng(0).standard_normal((1, 40)).astype(np.float32)
    np.testing.assert_allclose(m(x), _ref(model, x), rtol=1e-4, atol=1e-5)


# LeNet-5 at batch 64 is split on the model's worker threads; LeNet-300-100 at 128 and 200 runs in numba's
# parallel region (runtime.PRANGE_MIN_MACS).
_CONCURRENT = [("lenet5", 2, _BATCHES), ("lenet5", 1, _BATCHES), ("lenet300", 2, (1, 16, 128, 200))]


@pytest.mark.parametrize(("net", "threads", "batches"), _CONCURRENT)
def test_concurrent_calls_equal_lone_calls(
    request: pytest.FixtureRequest, net: str, threads: int, batches: tuple[int, ...]
) -> None:
    """8 Python threads call one model at once, with different inputs and batch sizes: results are exact."""
    m = runtime.load(request.getfixturevalue(f"{net}_bundle")[0], threads=threads)
    rng = np.random.default_rng(threads)
    inputs = [rng.standard_normal((batches[i % 4], *MNIST)).astype(np.float32) for i in range(8)]
    alone = [m(x) for x in inputs]
    got: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for rep in range(4):
                x = inputs[(i + rep) % 8]  # every thread calls with several batch sizes
                got[(i, rep)] = m(x) if rep % 2 == 0 else m(torch.from_numpy(x)).numpy()
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in workers), "a call hung"
    assert not errors, errors
    for (i, rep), y in got.items():
        assert np.array_equal(y, alone[(i + rep) % 8]), (i, rep, float(np.abs(y - alone[(i + rep) % 8]).max()))
    assert len(got) == 32


def _count_parallel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the ``parts`` of every call of the parallel chain kernel."""
    from svdcompress.runtime import kernels

    calls: list[int] = []
    real = kernels.chain_batched_parallel

    def counted(*args: Any) -> None:
        calls.append(int(args[-1]))
        real(*args)

    monkeypatch.setattr(kernels, "chain_batched_parallel", counted)
    return calls


def test_chain_model_runs_in_one_parallel_region(
    lenet300_bundle: tuple[Path, nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled, trained LeNet-300-100, 2 threads: batches from PRANGE_MIN_MACS and two blocks of examples up run in
    numba's parallel region, with the same bits as one thread and within tolerance of the masked dense model;
    smaller batches run on the calling thread."""
    from svdcompress.runtime import kernels

    if kernels.parallel_layer() is None:
        pytest.skip(f"numba's threading layer here is not thread-safe ({numba.threading_layer()})")
    calls = _count_parallel_calls(monkeypatch)
    path, model = lenet300_bundle
    # kernel="sparse": with "auto" each load times the kernels, and two loads may pick differently for a layer
    # where they are close (fc3, 22% dense), which changes the bits though not the tolerance
    one, two = runtime.load(path, threads=1, kernel="sparse"), runtime.load(path, threads=2, kernel="sparse")
    rng = np.random.default_rng(7)
    for batch, parallel in ((16, False), (64, False), (200, True), (256, True)):
        assert (batch * two.macs_per_item >= runtime.PRANGE_MIN_MACS and batch > 64) == parallel
        x = rng.standard_normal((batch, *MNIST)).astype(np.float32)
        calls.clear()
        y1 = one(x)
        assert not calls
        y2 = two(x)
        assert calls == ([2] if parallel else []), (batch, calls)
        assert np.array_equal(y1, y2), batch
        np.testing.assert_allclose(y2, _ref(model, x), rtol=1e-4, atol=1e-5)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # the caller's team size is restored


def test_unsafe_threading_layer_falls_back_to_one_thread(
    lenet300_bundle: tuple[Path, nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On numba's workqueue layer (it aborts the process when two threads enter it together) nothing runs in
    a parallel region."""
    from svdcompress.runtime.kernels import sync

    calls = _count_parallel_calls(monkeypatch)
    monkeypatch.setattr(sync, "_layer", "workqueue")
    assert sync.parallel_layer() is None
    x = np.random.default_rng(8).standard_normal((256, *MNIST)).astype(np.float32)
    y = runtime.load(lenet300_bundle[0], threads=2, kernel="sparse")(x)  # "sparse": as in the test above
    assert not calls
    assert np.array_equal(y, runtime.load(lenet300_bundle[0], threads=1, kernel="sparse")(x))


def test_a_forked_child_does_not_enter_gnu_openmp(lenet300_bundle: tuple[Path, nn.Module]) -> None:
    """A server that warms a model up and then forks its workers (gunicorn --preload): numba terminates a
    child that opens a GNU OpenMP region its parent had used, so the child runs the call on its own thread."""
    from svdcompress.runtime import kernels

    m = runtime.load(lenet300_bundle[0], threads=2)
    x = np.random.default_rng(9).standard_normal((256, *MNIST)).astype(np.float32)
    want = m(x)  # the parent's parallel region (when the layer allows one)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's atexit handlers
        try:
            ok = np.array_equal(m(x), want)
            msg = f"{ok} {kernels.parallel_layer()}"
        except BaseException as exc:  # reported through the pipe
            msg = f"error {exc!r}"
        os.write(write, msg.encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        msg = f.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, msg)
    ok, layer = msg.split()
    assert ok == "True", msg
    if numba.threading_layer() == "omp":
        assert layer == "None", msg


# ---------------------------------------------------------------------------------------------- numba cache

_CACHE_SCRIPT = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import numpy as np
    import svdcompress.runtime as rt
    y = rt.load(sys.argv[1], kernel="sparse")(np.load(sys.argv[2]))
np.testing.assert_allclose(y, np.load(sys.argv[3]), rtol=1e-5, atol=1e-5)
# every compiled kernel of the runtime: numba dispatchers count cache hits and misses per signature
kernels = {id(f): f for name, mod in list(sys.modules.items()) if name.startswith("svdcompress.runtime")
           for f in vars(mod).values() if hasattr(f, "stats") and hasattr(f, "py_func")}
print(json.dumps({"file": rt.__file__,
                  "hits": sum(sum(f.stats.cache_hits.values()) for f in kernels.values()),
                  "misses": sum(sum(f.stats.cache_misses.values()) for f in kernels.values()),
                  "warnings": [str(w.message) for w in caught]}))
"""


def _read_only_runner(pkg_root: Path) -> list[str]:
    """argv prefix that runs a command with ``pkg_root`` read-only (a read-only bind mount when root)."""
    if os.geteuid() != 0:
        for d, _, files in os.walk(pkg_root):
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
            os.chmod(d, 0o555)
        return []
    # Root ignores permission bits: mount the copy read-only in a private mount namespace instead.
    unshare = shutil.which("unshare")
    probe = unshare and subprocess.run([unshare, "-m", "true"], capture_output=True, check=False).returncode == 0
    if not probe:
        pytest.skip("running as root without unshare(1): cannot make a directory read-only for root")
    p = str(pkg_root)
    return [
        str(unshare),
        "-m",
        "sh",
        "-c",
        f'mount --bind "{p}" "{p}" && mount -o remount,bind,ro "{p}" "{p}" && exec "$@"',
        "sh",
    ]


def test_stale_kernel_cache_is_dropped(tmp_path: Path) -> None:
    """numba checks a cached kernel against its own file only; a kernel that inlines a helper from an edited
    sibling module must recompile. The cache beside a stamp of other sources goes; a matching stamp keeps it."""
    from svdcompress.runtime import kernels

    d = tmp_path / "__pycache__"
    d.mkdir()
    cached = [d / "conv.conv2d-1.py311.nbi", d / "conv.conv2d-1.py311.1.nbc"]
    for f in cached:
        f.write_bytes(b"x")
    (d / "conv.cpython-311.pyc").write_bytes(b"keep")
    kernels.drop_stale_cache({d}, "aaaa")  # no stamp yet: compiled from unknown sources
    assert not any(f.exists() for f in cached) and (d / "conv.cpython-311.pyc").exists()
    assert (d / "svdcompress-kernels.stamp").read_text() == "aaaa"
    for f in cached:
        f.write_bytes(b"x")
    kernels.drop_stale_cache({d}, "aaaa")  # same sources: the cache stays
    assert all(f.exists() for f in cached)
    kernels.drop_stale_cache({d}, "bbbb")  # a kernel source changed
    assert not any(f.exists() for f in cached)
    assert len(kernels._cache_dirs()) == 1  # every kernel module caches beside the same sources


def _cache_script_args(tmp_path: Path) -> list[str]:
    """A small MLP's bundle, an input and the model's output for it, on disk: the arguments of _CACHE_SCRIPT."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    bundle = tmp_path / "mlp.csr"
    export_csr(model, bundle, input_shape=(30,))
    x = np.random.default_rng(0).standard_normal((1, 30)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", _ref(model, x))
    return [str(bundle), str(tmp_path / "x.npy"), str(tmp_path / "ref.npy")]


@pytest.mark.slow
def test_an_unwritable_numba_cache_dir_falls_back_with_a_warning(tmp_path: Path) -> None:
    """$NUMBA_CACHE_DIR naming a directory nobody can create (numba alone raises at import: "no locator
    available"): the runtime still loads and answers, caching in the user cache, and says so."""
    cache_home = tmp_path / "cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": "/dev/null/numba", "XDG_CACHE_HOME": str(cache_home)}
    argv = [sys.executable, "-c", _CACHE_SCRIPT, *_cache_script_args(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("NUMBA_CACHE_DIR=/dev/null/numba is not a writable directory" in w for w in run["warnings"]), run
    assert list((cache_home / "svdcompress-numba").rglob("*.nbi")), "nothing was cached in the fallback"


@pytest.mark.slow
@pytest.mark.parametrize("home", ["writable", "read-only"])
def test_numba_cache_works_with_a_read_only_package(tmp_path: Path, home: str) -> None:
    """A fresh process loads and calls a bundle twice. The package's __pycache__ cannot be written, so the
    first compiles into a user cache (under $HOME, or the temporary directory when $HOME is read-only too)
    and the second loads the machine code from there."""
    src = Path(svdcompress.__file__).parent
    pkg_root = tmp_path / "site"
    shutil.copytree(src, pkg_root / "svdcompress", ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    args = _cache_script_args(tmp_path)
    home_dir = (tmp_path if home == "writable" else pkg_root) / "home"  # pkg_root is made read-only
    home_dir.mkdir()
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home_dir), TMPDIR=str(tmp_dir), PYTHONPATH=str(pkg_root))
    prefix = _read_only_runner(pkg_root)
    try:
        runs = []
        for _ in range(2):
            proc = subprocess.run(
                [
                    *prefix,
                    sys.executable,
                    "-c",
                    _CACHE_SCRIPT,
                    *args,
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
                check=False,
                cwd=tmp_path,
            )
            assert proc.returncode == 0, proc.stderr
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        for d, _, _ in os.walk(pkg_root):
            os.chmod(d, 0o755)
    assert all(r["file"].startswith(str(pkg_root)) for r in runs), runs  # the read-only copy was imported
    assert not list(pkg_root.rglob("*.nbi")), "numba wrote into the read-only package"
    cache_root = home_dir if home == "writable" else tmp_dir
    assert list(cache_root.rglob("*.nbi")), f"no numba cache was written under {cache_root}"
    assert runs[0]["misses"] >= 1, runs  # the first process compiled (nothing was cached yet)...
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0, runs  # ...the second compiled nothing
    for r in runs:
        assert not [w for w in r["warnings"] if "cach" in w.lower()], r["warnings"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv(1) to run a child as uid 65534",
)
def test_a_cache_warmed_by_root_serves_an_unprivileged_user(tmp_path: Path) -> None:
    """The container case: root compiles the kernels into a 1777 ``$NUMBA_CACHE_DIR`` (numba makes its
    subfolder 0755), then uid 65534 loads the bundle. numba alone dies at import ("no locator available");
    here the process answers, warns once, and compiles nothing: it reads the kernels root compiled."""
    setpriv = shutil.which("setpriv")
    shared = Path(tempfile.mkdtemp(prefix="svdc-65534-"))  # pytest's tmp_path is root-only (0700)
    try:
        shared.chmod(0o755)
        args = [shutil.copy(a, shared) for a in _cache_script_args(tmp_path)]
        cache = shared / "numba-cache"
        cache.mkdir()
        cache.chmod(0o1777)
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "HOME": "/nonexistent", "TMPDIR": str(shared / "tmp")}
        env.pop("XDG_CACHE_HOME", None)
        (shared / "tmp").mkdir()
        (shared / "tmp").chmod(0o1777)
        argv = [sys.executable, "-c", _CACHE_SCRIPT, *args]
        root = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=shared)
        assert root.returncode == 0, root.stderr
        sub = [d for d in cache.iterdir() if d.is_dir()]
        assert sub and all(d.stat().st_mode & 0o022 == 0 for d in sub)  # root's 0755 subfolder: the hazard

        # uid 65534 with no write privilege; it keeps the right to read and search any folder, since the
        # interpreter may live under a folder only root can enter (/root/.pyenv)
        nobody = [
            str(setpriv),
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
        ]
        runs = []
        for _ in range(2):
            proc = subprocess.run(
                [*nobody, *argv], capture_output=True, text=True, env=env, timeout=300, check=False, cwd=shared
            )
            assert proc.returncode == 0, proc.stderr
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for run in runs:
            assert run["misses"] == 0 and run["hits"] >= 1, run  # root's kernels, read, not recompiled
            cache_warnings = [w for w in run["warnings"] if "NUMBA_CACHE_DIR" in w]
            assert len(cache_warnings) == 1 and "not writable by this user" in cache_warnings[0], run["warnings"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_warmup_compiles_what_a_bundle_runs(tmp_path: Path) -> None:
    """``svdcompress warmup BUNDLE`` fills the cache: a later process loads the bundle, calls it at batch 1 and
    in a batch, and compiles nothing. It prints the cache folder and its size; a missing bundle is one line."""
    args = _cache_script_args(tmp_path)
    cache = tmp_path / "cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    cli = [sys.executable, "-m", "svdcompress", "warmup"]
    proc = subprocess.run([*cli, args[0]], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "kernels compiled" in proc.stdout and str(cache) in proc.stdout and " MB" in proc.stdout, proc.stdout
    x64 = tmp_path / "x64.npy"
    np.save(x64, np.repeat(np.load(args[1]), 64, axis=0))
    ref64 = tmp_path / "ref64.npy"
    np.save(ref64, np.repeat(np.load(args[2]), 64, axis=0))
    script = _CACHE_SCRIPT.replace('kernel="sparse"', 'kernel="auto"')
    for x, ref in ((args[1], args[2]), (str(x64), str(ref64))):
        run = subprocess.run(
            [sys.executable, "-c", script, args[0], x, ref], capture_output=True, text=True, env=env, timeout=300
        )
        assert run.returncode == 0, run.stderr
        stats = json.loads(run.stdout.strip().splitlines()[-1])
        assert stats["misses"] == 0 and stats["hits"] >= 1, stats
    bad = subprocess.run([*cli, str(tmp_path / "nope.csr")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "nope.csr" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def _with_plan(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of bundle ``src`` whose manifest's kernel_plan went through ``edit`` (None removes it)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for zi in zin.infolist():
            data = zin.read(zi)
            if zi.filename == "manifest.json":
                m = json.loads(data)
                plan = edit(m.pop("kernel_plan"))
                if plan is not None:
                    m["kernel_plan"] = plan
                data = json.dumps(m).encode()
            zout.writestr(zi, data)
    return dst


def test_a_recorded_kernel_plan_is_used_on_its_cpu_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """export records the plan; a load on the same CPU times nothing and runs it; a plan from another CPU, or
    none, is chosen again (by timing), with the same outputs."""
    bundle = Path(_cache_script_args(tmp_path)[0])
    x = np.random.default_rng(1).standard_normal((70, 30)).astype(np.float32)
    same = runtime.load(bundle)
    assert same.kernels_timed == 0 and same.kernel_plan["cpu"] == runtime.plan_record.cpu_identity()

    def elsewhere(plan: dict[str, Any]) -> dict[str, Any]:
        for regimes in plan["layers"].values():  # the other machine chose dense everywhere
            for choice in regimes.values():
                choice["kernel"] = "dense"
        return {**plan, "cpu": {"name": "other-cpu", "features": "0" * 16, "model": "Other CPU"}}

    with caplog.at_level(logging.INFO, logger="svdcompress.runtime"):
        other = runtime.load(_with_plan(bundle, tmp_path / "other.csr", elsewhere))
    assert other.kernels_timed > 0 and "recorded on another CPU (Other CPU)" in caplog.text
    none = runtime.load(_with_plan(bundle, tmp_path / "none.csr", lambda plan: None))
    assert none.kernels_timed > 0
    forced = runtime.load(_with_plan(bundle, tmp_path / "forced.csr", lambda p: {**elsewhere(p), "cpu": p["cpu"]}))
    assert forced.kernels_timed == 0 and set(forced.layer_kernels.values()) == {"dense"}  # the record rules
    for m in (other, none, forced):
        np.testing.assert_allclose(m(x), same(x), rtol=1e-5, atol=1e-5)
