"""The CNNs beyond the LeNets (CIFAR-style ResNet, MobileNetV2-style, VGG-like with BN), given seeded SVDO
sparsity: every stage is exact against the masked model, and the synthetic sparsity is what it says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from svdcompress import analyze, export_model, mask_model, prune, runtime
from svdcompress.nn.zoo import mobilenet_v2, resnet, synthetic_svdo_, vgg_like

SHAPE = (3, 32, 32)
TOL = 1e-4  # × max(1, max |reference|): fp32 summed in other orders by every engine

NETS: dict[str, Callable[[], nn.Module]] = {
    "resnet": lambda: resnet(svdo=True, widths=(8, 16, 24, 32), blocks=(1, 1, 1, 1)),
    "mobilenet_v2": lambda: mobilenet_v2(svdo=True, width=0.25),
    "vgg_like": lambda: vgg_like(svdo=True, k=0.125),
}


def _close(got: np.ndarray | torch.Tensor, ref: torch.Tensor, what: str) -> None:
    got_t = torch.as_tensor(np.asarray(got)).double()
    atol = TOL * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(got_t, ref.double(), rtol=TOL, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_synthetic_sparsity_is_what_it_says(sparsity: float) -> None:
    net = synthetic_svdo_(resnet(svdo=True), sparsity=sparsity, dead_units=0.25, seed=1)
    report = analyze(net)
    assert abs(report.total["sparsity"] / 100 - sparsity) < 0.02
    convs = [r for r in report.layers if r.kind == "conv2d" and r.name != "stem.0"]
    assert sum(r.dead_outputs for r in convs) > 0.15 * sum(r.outputs for r in convs)
    again = synthetic_svdo_(resnet(svdo=True), sparsity=sparsity, dead_units=0.25, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_stage_is_exact(name: str, tmp_path: Path) -> None:
    net = synthetic_svdo_(NETS[name](), sparsity=0.9, seed=0)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = mask_model(net, 3.0).eval()(x)
    result = prune(net, input_shape=SHAPE)
    assert result.report.params_after < result.report.params_before  # dead units went
    with torch.no_grad():
        _close(result.model(x), ref, f"{name} pruned")
    import onnxruntime as ort

    onnx_path = tmp_path / f"{name}.onnx"
    export_model(net, "onnx", onnx_path, input_shape=SHAPE)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ref, f"{name} onnx")
    csr_path = tmp_path / f"{name}.csr"
    export_model(net, "csr", csr_path, input_shape=SHAPE)
    _close(runtime.load(csr_path)(x.numpy()), ref, f"{name} csr")


def _widths(model: nn.Module) -> list[int]:
    return [
        m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


@pytest.mark.parametrize("name", sorted(NETS))
def test_round_to_keeps_few_dead_channels_for_round_widths(name: str) -> None:
    net = synthetic_svdo_(NETS[name](), sparsity=0.9, seed=0)
    ragged = prune(net, input_shape=SHAPE)
    for multiple in (4, 8):
        rounded = prune(net, input_shape=SHAPE, round_to=multiple)
        originals = _widths(mask_model(net, 3.0))
        for before, after, orig in zip(_widths(ragged.model), _widths(rounded.model), originals, strict=True):
            assert after % multiple == 0 or after == orig, (before, after, orig)
            # at most one multiple above the ragged width rounded up: a dead unit kept for one layer's width can
            # keep another layer's inputs read, and that layer then rounds up from there
            assert before <= after <= -(-before // multiple) * multiple + multiple or after == orig
        assert rounded.report.max_abs_diff <= 1e-4 * max(1.0, rounded.report.output_scale)
        assert any(f"round_to={multiple}" in n for n in rounded.report.notes) or _widths(ragged.model) == _widths(
            rounded.model
        )


def test_round_to_is_checked_and_reaches_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from svdcompress import InvalidInputError
    from svdcompress.cli import main

    net = synthetic_svdo_(NETS["vgg_like"](), sparsity=0.9, seed=0)
    for bad in (0, 2.5, True, 4096):
        with pytest.raises(InvalidInputError, match="round_to"):
            prune(net, input_shape=SHAPE, round_to=bad)
    ckpt = tmp_path / "vgg.pt"
    from svdcompress import save_checkpoint

    save_checkpoint(ckpt, net, arch="vgg_like", arch_kwargs={"k": 0.125, "svdo": True}, input_shape=SHAPE)
    res = CliRunner().invoke(main, ["prune", str(ckpt), "-o", str(tmp_path / "p.pt2"), "--round-to", "0"])
    assert res.exit_code == 2 and "between 1 and 1024" in res.output
    res = CliRunner().invoke(main, ["prune", str(ckpt), "-o", str(tmp_path / "p.pt2"), "--round-to", "auto"])
    assert res.exit_code == 2 and "not a whole number" in res.output
    res = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--round-to", "auto"])
    assert res.exit_code == 0, res.output
    assert "round-to auto:" in res.output
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert int(props["svdcompress.round_to"]) in (1, 4, 8, 16)
    assert '"median_us"' in props["svdcompress.round_to_selection"]
