"""Regression tests for the bugs of issue 24 (round three): each fails without its fix."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from svdcompress.checkpoint.formats import load_checkpoint
from svdcompress.cli.commands import _convention_notes, main
from svdcompress.errors import CheckpointError, ExportError

# --- 1: a warning under prune/export/bench hung the command --------------------------------------------------


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after ``seconds``: a hang fails the test instead of the run."""

    def _expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_other_warnings_are_replayed_once_after_the_command(recwarn: pytest.WarningsRecorder) -> None:
    # Replayed inside catch_warnings(record=True), showwarning appended to the list being replayed: endless.
    with _deadline(3), _convention_notes():
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["a library's warning"]


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_pickle_given_to_export_fails_in_one_line(protocol: int, tmp_path: Path) -> None:
    ckpt, out = tmp_path / "weights.pkl", tmp_path / "out.csr"
    tensors = {"fc1.weight": torch.randn(6, 4), "fc1.log_sigma2": torch.randn(6, 4), "fc1.bias": torch.zeros(6)}
    with open(ckpt, "wb") as f:
        pickle.dump(tensors, f, protocol=protocol)
    argv = [sys.executable, "-m", "svdcompress", "export", str(ckpt), "--format", "csr", "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # no torch warning about the pickle protocol, no traceback
    assert lines[0].startswith(f"Error: {ckpt}: is a plain Python pickle"), proc.stderr
    assert "torch.save" in lines[0]
    assert not out.exists()


def test_legacy_torch_file_with_a_newer_pickle_protocol_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "legacy4.pt"
    torch.save({"fc1.weight": torch.ones(2, 2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's pickle-protocol warning must not reach the user
        with pytest.raises(CheckpointError, match=r"legacy \(non-zip\) format with pickle protocol 4.*trust_pickle"):
            load_checkpoint(path)
    assert set(load_checkpoint(path, trust_pickle=True).tensors) == {"fc1.weight"}


# --- 3: a Lasagne list through --model whose layers are ports of the authors' Lasagne layers ---------------

_PORTS = types.ModuleType("svdcompress_test_issue24_factories")
sys.modules[_PORTS.__name__] = _PORTS


class _LasagnePort(nn.Module):
    """A PyTorch port of the authors' Lasagne SVDO layers: their names (W, b, log σ² as ``var``) and layout
    (dense W (in, out), conv W (out, in, kh, kw)), their eval-mode mask (dense log(W²), conv log(W² + 1e-8))."""

    def __init__(self, shape: tuple[int, ...], var: str) -> None:
        super().__init__()
        self.var = var
        self.W = nn.Parameter(torch.zeros(shape))
        self.b = nn.Parameter(torch.zeros(shape[1] if len(shape) == 2 else shape[0]))
        self.register_parameter(var, nn.Parameter(torch.full(shape, -10.0)))
        self.threshold = 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 0.0 if self.W.dim() == 2 else 1e-8
        log_alpha = (getattr(self, self.var) - torch.log(self.W**2 + eps)).clamp(-8.0, 8.0)
        w = self.W * (log_alpha < self.threshold)
        return x @ w + self.b if w.dim() == 2 else F.conv2d(x, w, self.b)


class _PortNet(nn.Module):
    def __init__(self, var: str) -> None:
        super().__init__()
        self.conv1 = _LasagnePort((4, 1, 3, 3), var)
        self.fc1 = _LasagnePort((64, 10), var)
        self.fc2 = _LasagnePort((10, 3), var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(F.relu(self.conv1(x)).flatten(1))))


def port_net_log_sigma2() -> nn.Module:
    return _PortNet("log_sigma2")


def port_net_ls2() -> nn.Module:
    return _PortNet("ls2")


_PORTS.port_net_log_sigma2 = port_net_log_sigma2  # type: ignore[attr-defined]
_PORTS.port_net_ls2 = port_net_ls2  # type: ignore[attr-defined]


def _lasagne_list(net: nn.Module, path: Path) -> None:
    """Fill ``net``'s ports with a bimodal log α and np.save them as the authors' code does: W, b, ls2 per layer."""
    g = torch.Generator().manual_seed(24)
    arrays = []
    for port in (net.conv1, net.fc1, net.fc2):
        w = torch.randn(port.W.shape, generator=g) * 0.3
        la = torch.where(torch.rand(w.shape, generator=g) < 0.5, 6.0, -4.0) + torch.randn(w.shape, generator=g)
        with torch.no_grad():
            port.W.copy_(w)
            port.b.copy_(torch.randn(port.b.shape, generator=g) * 0.1)
            getattr(port, port.var).copy_(la + torch.log(w**2))
        arrays += [port.W, port.b, getattr(port, port.var)]
    listed = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        listed[i] = a.detach().numpy().copy()
    np.save(path, listed, allow_pickle=True)


@pytest.mark.parametrize("var", ["log_sigma2", "ls2"])
def test_lasagne_list_onto_ports_of_lasagne_layers(var: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from svdcompress import analyze
    from svdcompress.nn.architecture import load_model

    net, ckpt, out = _PortNet(var).eval(), tmp_path / "lenet.npy", tmp_path / "m.onnx"
    _lasagne_list(net, ckpt)
    spec = f"{_PORTS.__name__}:port_net_{var}"
    res = CliRunner().invoke(
        main, ["export", str(ckpt), "--model", spec, "--format", "onnx", "-o", str(out), "--input-shape", "1,6,6"]
    )
    assert res.exit_code == 0, res.output
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()
    # The live model is counted as the file is (Lasagne's formula, dense W read as (in, out)).
    live = analyze(load_model(ckpt, model=spec, input_shape=(1, 6, 6)).module)
    counted = analyze(ckpt)
    assert [(r.kept, r.shape) for r in live.layers] == [(r.kept, r.shape) for r in counted.layers]
    assert [r.shape for r in counted.layers] == [[4, 1, 3, 3], [10, 64], [3, 10]]


# --- two realistic regressions the suite let through -----------------------------------------------------


class _TwoLayers(nn.Module):
    def __init__(self, density: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(40, 30), nn.Linear(30, 10)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                w = torch.randn(fc.weight.shape, generator=g) * 0.1
                keep = torch.randperm(w.numel(), generator=g)[: round(density * w.numel())]
                fc.weight.zero_().view(-1)[keep] = w.view(-1)[keep]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _huge_weight() -> nn.Module:
    model = _TwoLayers().eval()
    with torch.no_grad():
        model.fc2.weight[3, 7] = 70000.0  # above fp16's largest finite value, 65504
    return model


def test_csr_fp16_refuses_a_weight_beyond_the_fp16_range(tmp_path: Path) -> None:
    from svdcompress.export import export_csr

    out = tmp_path / "m.csr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not numpy's overflow warning, nor a bundle the runtime refuses
        with pytest.raises(ExportError, match=r"fc2\b.*fp16 range.*export as fp32"):
            export_csr(_huge_weight(), out, input_shape=(40,), dtype="fp16")
    assert not out.exists()


def test_onnx_fp16_refuses_a_weight_beyond_the_fp16_range(tmp_path: Path) -> None:
    from svdcompress.export import export_onnx

    out = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warning
        with pytest.raises(ExportError, match=r"fc2\.weight.*fp16 range.*export as fp32"):
            export_onnx(_huge_weight(), out, input_shape=(40,), dtype="fp16")
    assert not out.exists()


def test_onnx_sparse_keeps_a_41_percent_dense_layer_dense(tmp_path: Path) -> None:
    """COO costs a value plus an int64 index (8 bytes) per non-zero: at 41% density, 0.41 * (4 + 8) > 4 bytes per
    element, so the layer stays dense. Counting the index as int32 would move it and grow the file."""
    from svdcompress.export import export_onnx

    dense41, sparse30 = _TwoLayers(density=0.41).eval(), _TwoLayers(density=0.30).eval()
    plain = export_onnx(dense41, tmp_path / "plain.onnx", input_shape=(40,))
    sparse = export_onnx(dense41, tmp_path / "sparse.onnx", input_shape=(40,), sparse=True)
    assert sparse.file_bytes <= plain.file_bytes
    assert not onnx.load(str(sparse.path)).graph.sparse_initializer
    # At 30% density (0.30 * 12 < 4 bytes per element) COO is smaller; its indices are int64, as written.
    plain30 = export_onnx(sparse30, tmp_path / "plain30.onnx", input_shape=(40,))
    sparse30_res = export_onnx(sparse30, tmp_path / "sparse30.onnx", input_shape=(40,), sparse=True)
    assert sparse30_res.file_bytes < plain30.file_bytes
    proto = onnx.load(str(sparse30_res.path))
    assert {st.values.name for st in proto.graph.sparse_initializer} == {"fc1.weight", "fc2.weight"}
    assert {st.indices.data_type for st in proto.graph.sparse_initializer} == {onnx.TensorProto.INT64}
