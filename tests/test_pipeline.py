"""End to end on the bundled, really trained SVDO LeNets: prune, export, run, bench, via the API and the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import svdcompress
from svdcompress import runtime
from svdcompress.benchmark.harness import CONTENDERS, OPENVINO_CONTENDERS
from svdcompress.cli import main
from svdcompress.nn.architecture import load_model
from svdcompress.pruning.pt2 import load_pruned
from svdcompress.tuning.datasets import FASHION_MNIST_DIR, load_dataset

BUNDLED = ["lenet300", "lenet5"]


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    """Real test images: Fashion-MNIST's 10,000 (what the bundled nets were trained on).

    Without them (conftest prints a loud warning), MNIST-5k's 5,000 real digits, else generated images.
    """
    if (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        return load_dataset("fashion-mnist", "test")[0]
    try:
        return torch.cat([load_dataset("mnist5k", "test")[0], load_dataset("mnist5k", "train")[0]])
    except svdcompress.SvdcompressError:
        return torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=BUNDLED)
def pruned(request: pytest.FixtureRequest) -> tuple[str, svdcompress.PruneResult]:
    name = request.param
    resolved = load_model(svdcompress.bundled_checkpoint(name))
    assert resolved.input_shape == (1, 28, 28)
    return name, svdcompress.prune(resolved.module, input_shape=resolved.input_shape)


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + 1000]) for i in range(0, len(x), 1000)])


def test_pruned_predictions_equal_masked_on_every_test_example(pruned, test_images: torch.Tensor) -> None:
    name, result = pruned
    ref = _logits(result.masked, test_images)
    out = _logits(result.model, test_images)
    assert torch.equal(out.argmax(1), ref.argmax(1)), name
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    rep = result.report
    assert rep.params_after < rep.params_before / 3, f"{name}: structural pruning should remove most parameters"
    assert any(row.units_after < row.units_before for row in rep.layers)


def test_csr_bundle_predictions_equal_masked_on_2000_test_images(
    pruned, test_images: torch.Tensor, tmp_path: Path
) -> None:
    name, result = pruned
    x = test_images[:2000]
    assert len(x) == 2000
    ref = _logits(result.masked, x)
    csr = tmp_path / f"{name}.csr"
    svdcompress.export_csr(result.model, csr, input_shape=(1, 28, 28), reference=result.masked)
    for kernel in runtime.KERNELS:
        for threads in (1, 2):
            model = runtime.load(csr, kernel=kernel, threads=threads)
            got = torch.cat([torch.from_numpy(model(x[i : i + 500].numpy())) for i in range(0, len(x), 500)])
            assert torch.equal(got.argmax(1), ref.argmax(1)), (name, kernel, threads)
            torch.testing.assert_close(
                got,
                ref,
                rtol=1e-4,
                atol=1e-4 * float(ref.abs().max()),
                msg=lambda m, k=kernel, t=threads: f"{name} kernel={k} threads={t}: {m}",
            )


def test_fused_single_example_pass_matches_masked_and_steps(pruned, test_images: torch.Tensor, tmp_path: Path) -> None:
    """At batch 1 a sequential net with convolutions runs as one fused kernel call (when it measures faster at
    load). Forced on here, it must give the steps' results and the masked model's predictions, image by image.
    An MLP (reshape + one Linear chain) gets none: its chain step is already one call."""
    from svdcompress.runtime._single import single_pass

    name, result = pruned
    x = test_images[:300]
    ref = _logits(result.masked, x)
    csr = tmp_path / f"{name}.csr"
    svdcompress.export_csr(result.model, csr, input_shape=(1, 28, 28), reference=result.masked)
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in result.model.modules())
    for kernel in runtime.KERNELS:
        model = runtime.load(csr, kernel=kernel)
        fused = single_pass(model._plan)
        if not has_conv:
            assert fused is None and model._plan.single is None, name
            continue
        assert fused is not None, f"{name}: a plain conv/reshape/linear sequence must fuse"
        xs = x.numpy()
        got = np.concatenate([fused(xs[i : i + 1]) for i in range(len(xs))])
        steps = np.concatenate([model._run(xs[i : i + 1]) for i in range(len(xs))])
        np.testing.assert_allclose(got, steps, rtol=1e-5, atol=1e-5 * float(np.abs(steps).max()), err_msg=name)
        assert torch.equal(torch.from_numpy(got).argmax(1), ref.argmax(1)), (name, kernel)


def test_onnx_matches_masked_on_test_images(pruned, test_images: torch.Tensor, tmp_path: Path) -> None:
    import onnxruntime as ort

    name, result = pruned
    x = test_images[:2000]
    ref = _logits(result.masked, x)
    for sparse in (False, True):
        path = tmp_path / f"{name}-{sparse}.onnx"
        svdcompress.export_onnx(result.model, path, input_shape=(1, 28, 28), reference=result.masked, sparse=sparse)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        assert torch.equal(got.argmax(1), ref.argmax(1))
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("name", BUNDLED)
def test_cli_prune_writes_a_source_free_program(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.pt2"
    res = CliRunner().invoke(main, ["prune", f"bundled:{name}", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["max_abs_diff"] <= report["tolerance"] * max(1.0, report["output_scale"])
    resolved = load_model(svdcompress.bundled_checkpoint(name))
    masked = svdcompress.mask_model(resolved.module)
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(load_pruned(out)(x), masked(x), rtol=1e-4, atol=1e-3)
    # Again without --force: refused, file untouched.
    before = out.read_bytes()
    again = CliRunner().invoke(main, ["prune", f"bundled:{name}", "-o", str(out)])
    assert again.exit_code == 1 and "--force" in again.output and out.read_bytes() == before


@pytest.mark.parametrize("name", BUNDLED)
def test_smallest_artifact_beats_parameter_compression(name: str, tmp_path: Path) -> None:
    compression = svdcompress.analyze(svdcompress.bundled_checkpoint(name)).total["compression"]
    masked = svdcompress.mask_model(load_model(svdcompress.bundled_checkpoint(name)).module)
    dense = 4 * sum(p.numel() for p in masked.parameters())
    ratios = {}
    for fmt, dtype in (("onnx", "fp32"), ("onnx-sparse", "fp32"), ("csr", "fp32"), ("csr", "fp16")):
        out = tmp_path / f"{name}-{fmt}-{dtype}"
        res = CliRunner().invoke(main, ["export", f"bundled:{name}", "--format", fmt, "--dtype", dtype, "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert "parameter compression" in res.output
        ratios[(fmt, dtype)] = dense / out.stat().st_size
    assert max(ratios.values()) >= compression, (ratios, compression)


def test_runtime_runs_a_bundle_in_a_fresh_process(tmp_path: Path) -> None:
    bundle = tmp_path / "lenet5.csr"
    assert CliRunner().invoke(main, ["export", "bundled:lenet5", "--format", "csr", "-o", str(bundle)]).exit_code == 0
    x = torch.rand(4, 1, 28, 28)
    np.save(tmp_path / "x.npy", x.numpy())
    masked = svdcompress.mask_model(load_model(svdcompress.bundled_checkpoint("lenet5")).module)
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", masked(x).numpy())
    script = (
        "import sys, numpy as np, svdcompress.runtime as rt\n"
        f"m = rt.load({str(bundle)!r})\n"
        f"y = m(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"assert np.allclose(y, np.load({str(tmp_path / 'ref.npy')!r}), rtol=1e-4, atol=1e-4)\n"
        "model_code = ('torch', 'svdcompress.nn.zoo', 'svdcompress.nn.layers', 'svdcompress.pruning.structural')\n"
        "bad = [k for k in sys.modules if k.startswith(model_code)]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_cli_bench_writes_records(tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = CliRunner().invoke(
        main,
        [
            "bench",
            "bundled:lenet300",
            "--batch-sizes",
            "1,4",
            "--repeats",
            "3",
            "--json-out",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    names = {r["contender"] for r in data["results"]}
    expected = {"torch-dense", "ort-dense", "torch-masked", "torch-pruned", "ort-compact", "ort-sparse", "csr-runtime"}
    openvino = {"openvino-dense", "openvino-compact"}
    assert expected | openvino == set(CONTENDERS) and openvino == set(OPENVINO_CONTENDERS)
    if importlib.util.find_spec("openvino") is not None:  # the peers extra
        expected |= openvino
    else:
        assert "skipping openvino-dense, openvino-compact" in res.output
    assert names == expected
    assert {(r["contender"], r["batch_size"]) for r in data["results"]} == {(c, b) for c in expected for b in (1, 4)}
    row = data["results"][0]
    for key in (
        "contender",
        "batch_size",
        "threads",
        "median_us",
        "p90_us",
        "items_per_s",
        "artifact_bytes",
        "speedup_vs_ort_dense",
        "speedup_vs_torch_dense",
        "speedup_vs_best_dense",
        "best_dense",
    ):
        assert key in row
    for r in data["results"]:
        assert r["speedup_vs_best_dense"] is not None and r["speedup_vs_best_dense"] > 0, r
        assert r["best_dense"] in {"ort-dense", "openvino-dense"} & expected, r
    csr = [r for r in data["results"] if r["contender"] == "csr-runtime"]
    assert all(r["macs_per_item"] and r["gmac_per_s"] and r["fraction_of_peak"] for r in csr), csr
    assert {"machine", "versions"} <= set(data)
    assert "| contender |" in res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(main, ["bench", "bundled:lenet300", "--contenders", "nope"])
    assert bad.exit_code == 2 and "unknown contender" in bad.output


_ARD_MODULE = '''
import torch
from torch import nn


class LinearARD(nn.Module):
    """Shaped like pytorch-ard 0.2.4's layer: weight, log_sigma2, bias."""

    def __init__(self, i, o):
        super().__init__()
        self.in_features, self.out_features = i, o
        self.weight = nn.Parameter(torch.randn(o, i) * 0.3)
        self.log_sigma2 = nn.Parameter(torch.full((o, i), -10.0))
        self.bias = nn.Parameter(torch.randn(o) * 0.1)

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def make():
    return nn.Sequential(LinearARD(12, 16), nn.ReLU(), LinearARD(16, 8), nn.Tanh(), LinearARD(8, 3))
'''


def test_foreign_convention_with_model_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytorch-ard model saved as {'net': state_dict} prunes and exports with --model pkg.module:factory."""
    (tmp_path / "ardnet.py").write_text(_ARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ardnet  # type: ignore[import-not-found]

    torch.manual_seed(0)
    net = ardnet.make()
    with torch.no_grad():
        for i in (0, 2, 4):
            ls2 = net[i].log_sigma2
            ls2.copy_(torch.where(torch.rand_like(ls2) < 0.8, 10.0, -10.0))  # ~80% noise
        net[0].log_sigma2[3:7] = 10.0  # whole dead rows: hidden units 3..6 emit a constant
    ckpt = tmp_path / "ard.pth"
    torch.save({"net": net.state_dict(), "acc": 0.5, "epoch": 7}, ckpt)

    no_model = CliRunner().invoke(main, ["prune", str(ckpt), "-o", str(tmp_path / "x.pt2")])
    assert no_model.exit_code == 1 and "--model" in no_model.output
    out = tmp_path / "ard.pt2"
    args = ["prune", str(ckpt), "--model", "ardnet:make", "--input-shape", "12", "-o", str(out), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["layers"][0]["units_after"] <= 12
    x = torch.randn(32, 12)
    masked = svdcompress.mask_model(net)
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(out)(x), masked(x), rtol=1e-4, atol=1e-5)
    onnx_out = tmp_path / "ard.onnx"
    res = CliRunner().invoke(
        main,
        ["export", str(ckpt), "--model", "ardnet:make", "--input-shape", "12", "--format", "onnx", "-o", str(onnx_out)],
    )
    assert res.exit_code == 0, res.output
    kept = svdcompress.analyze(ckpt).total["kept"]
    assert kept == sum(int(svdcompress.mask_model(net)[i].weight.count_nonzero()) for i in (0, 2, 4))
