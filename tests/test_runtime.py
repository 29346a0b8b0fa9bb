"""The CSR runtime: source-free loading, kernel choice, layouts, and robustness to bad files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from svdcompress import masking, runtime, zoo
from svdcompress.errors import ExportError
from svdcompress.export import export_csr

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
    """Linear chains that stay feature-major through BN, add and cat; one layer dense enough to run dense."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(40, 64)
        self.bn = nn.BatchNorm1d(64)  # fc1 has two readers, so this BN cannot fold and runs feature-major
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
    path = tmp_path_factory.mktemp("b") / "lenet5.svdz"
    export_csr(model, path, input_shape=MNIST)
    return path, model


# (torch itself imports torch.fx, so only our own modules are checked.)
_MODEL_CODE = ("svdcompress.zoo", "svdcompress.svdo", "svdcompress.masking", "svdcompress.checkpoint",
               "svdcompress.structured", "svdcompress.graph", "svdcompress.export", "svdcompress.models")

_SCRIPT = """
import sys, numpy as np
{prelude}
import torch
torch.set_num_threads(1)
from svdcompress.runtime import load
m = load({path!r}, threads=1)
y = m(np.load({x!r}))
np.testing.assert_allclose(y.numpy(), np.load({ref!r}), rtol=1e-4, atol=1e-5)
bad = sorted(n for n in sys.modules if n.startswith({banned!r}))
assert not bad, "model code imported: " + ", ".join(bad)
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
    x = torch.randn(3, *MNIST)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", model(x).numpy())
    script = _SCRIPT.format(prelude=prelude, path=str(path), x=str(tmp_path / "x.npy"),
                            ref=str(tmp_path / "ref.npy"), banned=_MODEL_CODE)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)


def test_runtime_module_imports_no_model_code(lenet5_bundle: tuple[Path, nn.Module], tmp_path: Path) -> None:
    proc = _run_fresh(lenet5_bundle, tmp_path, _BARE_PACKAGE)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_import_svdcompress_runtime_pulls_no_model_code(
    lenet5_bundle: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    proc = _run_fresh(lenet5_bundle, tmp_path, "")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("batch", [1, 5])
def test_kernels_agree(tmp_path: Path, batch: int) -> None:
    for name, model, shape in [("lenet300", masked_zoo("lenet300"), MNIST), ("wide", wide_mlp(), (40,))]:
        path = tmp_path / f"{name}.svdz"
        export_csr(model, path, input_shape=shape)
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            ref = model(x)
        outs = {k: runtime.load(path, kernel=k)(x) for k in runtime.KERNELS}
        for k, y in outs.items():
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5, msg=f"{name} kernel={k}")
        torch.testing.assert_close(outs["dense"], outs["sparse"], rtol=1e-5, atol=1e-6)


def test_layer_kernels_and_nnz(tmp_path: Path, lenet5_bundle: tuple[Path, nn.Module]) -> None:
    path = tmp_path / "wide.svdz"
    model = wide_mlp()
    export_csr(model, path, input_shape=(40,))
    auto = runtime.load(path)
    assert auto.layer_kernels == {"fc1": "csr", "fc2": "csr", "fc3": "dense", "fc4": "csr"}
    assert auto.nnz == {n: int(getattr(model, n).weight.count_nonzero()) for n in ("fc1", "fc2", "fc3", "fc4")}
    assert set(runtime.load(path, kernel="dense").layer_kernels.values()) == {"dense"}
    assert set(runtime.load(path, kernel="sparse").layer_kernels.values()) == {"csr"}
    lenet5 = runtime.load(lenet5_bundle[0], kernel="sparse")
    assert lenet5.layer_kernels["conv1"] == "dense" and lenet5.layer_kernels["conv2"] == "dense"  # convs: dense
    assert lenet5.manifest["format"] == "svdcompress-csr"
    assert "fc1=csr" in repr(lenet5)


def test_inputs_and_outputs(lenet5_bundle: tuple[Path, nn.Module]) -> None:
    m = runtime.load(lenet5_bundle[0])
    x = np.random.default_rng(0).standard_normal((2, *MNIST))  # float64 numpy is accepted
    y = m(x)
    assert y.shape == (2, 10) and y.dtype == torch.float32 and y.is_contiguous()
    y.add_(1.0)  # an ordinary tensor, not an inference-mode one
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        m(torch.randn(2, 784))


def test_load_is_fast(lenet5_bundle: tuple[Path, nn.Module]) -> None:
    runtime.load(lenet5_bundle[0])  # warm imports and torch's one-time CSR set-up
    start = time.perf_counter()
    runtime.load(lenet5_bundle[0])
    assert time.perf_counter() - start < 0.5


def test_bad_arguments_and_files(tmp_path: Path, lenet5_bundle: tuple[Path, nn.Module]) -> None:
    with pytest.raises(ValueError, match=r"'fast'.*auto, sparse, dense"):
        runtime.load(lenet5_bundle[0], kernel="fast")
    not_zip = tmp_path / "x.svdz"
    not_zip.write_bytes(b"hello")
    with pytest.raises(ExportError, match="cannot read CSR bundle"):
        runtime.load(not_zip)
    with pytest.raises(ExportError, match="cannot read CSR bundle"):
        runtime.load(tmp_path / "missing.svdz")
    with zipfile.ZipFile(lenet5_bundle[0]) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    for field, value, message in [("format_version", 99, "newer than this runtime"),
                                  ("format", "other", "not a CSR bundle")]:
        bad = tmp_path / f"{field}.svdz"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("manifest.json", json.dumps({**manifest, field: value}))
            for n, data in members.items():
                zf.writestr(n, data)
        with pytest.raises(ExportError, match=message):
            runtime.load(bad)
