"""Each public SVDO convention, re-created from its published formula and saved the way its project saves.

Every reference below is written here from the project's formula (log α, eps, clip, comparison), not
taken from svdcompress: ``analyze``'s kept counts must equal each project's own mask. The weights are
built so that log α is bimodal (a kept mode near −4, a dropped mode near +6), and row 0 of every layer
holds the boundary cases: log α exactly at 3, log α beyond the clip, and |θ| = 1e-4 where the eps decides.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from svdcompress.analysis import ConventionWarning, analyze
from svdcompress.checkpoint import load_checkpoint, save_checkpoint
from svdcompress.cli import main
from svdcompress.errors import CheckpointError, InvalidInputError, NoSVDOLayersError
from svdcompress.svdo import LinearSVDO

THRESHOLDS = (3.0, 8.0, 9.0, -1.0)  # the paper's, at the ±8 clip, above it, and far below

Ref = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (theta, log-variance, threshold) -> keep


def _bimodal(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """theta and log sigma² (float32, PyTorch layout) with a bimodal log α and the boundary cases in row 0."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=g) * 0.3
    theta = torch.where(theta.abs() < 1e-3, torch.full_like(theta, 0.01), theta)
    dropped = torch.rand(shape, generator=g) < 0.5
    target = torch.where(dropped, 6.0 + torch.randn(shape, generator=g), -4.0 + torch.randn(shape, generator=g))
    ls2 = target + torch.log(theta * theta)
    flat_t, flat_s = theta.reshape(shape[0], -1), ls2.reshape(shape[0], -1)
    # log α exactly 3.0 in float32 (θ² + eps rounds to 1); log α 20 (beyond every clip); |θ| = 1e-4 with
    # log σ² = -15: log α is 2.73 with eps 1e-8 inside θ², 3.42 without it.
    flat_t[0, :4] = torch.tensor([1.0, -1.0, 1.0, 1e-4])
    flat_s[0, :4] = torch.tensor([3.0, 3.0, 20.0, -15.0])
    return theta, ls2


def _clip(x: torch.Tensor, to: float | None) -> torch.Tensor:
    return x if to is None else torch.clamp(x, -to, to)


# The projects' own masks, from their published formulas (θ and its log-variance as stored by the project).
def _ref_square(eps: float, clip: float | None, strict_drop: bool) -> Ref:
    """log σ² − log(θ² + eps), clipped; ``strict_drop``: zeroed only where log α > threshold."""

    def keep(theta: torch.Tensor, ls2: torch.Tensor, thr: float) -> torch.Tensor:
        la = _clip(ls2 - torch.log(theta**2 + eps) if eps else ls2 - torch.log(theta**2), clip)
        return ~(la > thr) if strict_drop else ~(la >= thr)

    return keep


def _ref_ard(clip: float) -> Ref:
    def keep(theta: torch.Tensor, ls2: torch.Tensor, thr: float) -> torch.Tensor:
        return ~torch.ge(_clip(ls2 - 2 * torch.log(torch.abs(theta) + 1e-15), clip), thr)

    return keep


def _ref_demo(theta: torch.Tensor, log_sigma: torch.Tensor, thr: float) -> torch.Tensor:
    return _clip(2.0 * log_sigma - 2.0 * torch.log(1e-16 + torch.abs(theta)), 10.0) < thr


def _kept(keep: torch.Tensor, theta: torch.Tensor) -> int:
    # analyze counts non-zero kept weights; the nets here hold no exact zeros, so this is the project's count.
    assert bool((theta != 0).all())
    return int(keep.sum())


def _check(path: Path, expected: dict[float, list[int]], name: str, **kw: object) -> None:
    """analyze's kept counts at every threshold equal the project's, read as convention ``name``, silently."""
    for thr in THRESHOLDS:
        report = analyze(path, threshold=thr, **kw)  # type: ignore[arg-type]  # trust_pickle / convention
        assert [r.kept for r in report.layers] == expected[thr], (name, thr)
        assert {r.convention for r in report.layers} == {name}
        assert not report.warnings


def _expected(layers: list[tuple[torch.Tensor, torch.Tensor, Ref]]) -> dict[float, list[int]]:
    return {thr: [_kept(ref(t, v, thr), t) for t, v, ref in layers] for thr in THRESHOLDS}


def _bimodality(expected: dict[float, list[int]], sizes: list[int]) -> None:
    """Both modes are populated: at threshold 3 roughly half the weights go."""
    for kept, n in zip(expected[3.0], sizes, strict=True):
        assert 0.25 * n < kept < 0.75 * n


# --- 1. the authors' Lasagne code: dense (in, out) without eps, conv with 1e-8; clip ±8; drop log α >= thr


def _lasagne_params() -> tuple[list[np.ndarray], list[tuple[torch.Tensor, torch.Tensor, Ref]]]:
    w_conv, s_conv = _bimodal((6, 1, 3, 3), 1)
    w_fc, s_fc = _bimodal((12, 54), 2)  # PyTorch layout; Lasagne stores the dense W as (in, out)
    params = [w_conv.numpy(), np.zeros(6, np.float32), s_conv.numpy()]
    params += [w_fc.T.numpy().copy(), np.zeros(12, np.float32), s_fc.T.numpy().copy()]
    refs = [
        (w_conv, s_conv, _ref_square(1e-8, 8.0, strict_drop=False)),
        (w_fc.T, s_fc.T, _ref_square(0.0, 8.0, strict_drop=False)),  # DenseVarDropOutARD: log(W ** 2)
    ]
    return params, refs


def _object_array(params: list[np.ndarray]) -> np.ndarray:
    arr = np.empty(len(params), dtype=object)
    for i, a in enumerate(params):
        arr[i] = a
    return arr


def test_lasagne_dense_has_no_eps(tmp_path: Path) -> None:
    params, refs = _lasagne_params()
    f = tmp_path / "lenet.npy"
    np.save(f, _object_array(params), allow_pickle=True)  # np.save(lasagne.layers.get_all_param_values(net))
    expected = _expected(refs)
    _bimodality(expected, [54, 648])
    _check(f, expected, "lasagne")
    # The |θ| = 1e-4 weight is dropped by the dense layer (no eps) and kept by the conv layer (eps 1e-8).
    report = analyze(f)
    assert report.layers[1].kept == _kept(refs[1][2](refs[1][0], refs[1][1], 3.0), refs[1][0])
    assert not bool(refs[1][2](torch.tensor([1e-4]), torch.tensor([-15.0]), 3.0))
    assert bool(refs[0][2](torch.tensor([1e-4]), torch.tensor([-15.0]), 3.0))


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc]  # the pure-Python pickler: its dispatch table is open
    """Writes bytes and str the way Python 2 wrote its ``str``: (SHORT_)BINSTRING opcodes."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]  # private but stable

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def _write_py2_npy(path: Path, params: list[np.ndarray]) -> bytes:
    """An object-array .npy as Python 2's np.save wrote it: protocol 2, Python 2 strings, numpy.core paths."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(_object_array(params))
    body = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (len(params),)})
        f.write(body)
    return body


@pytest.mark.parametrize("trust", [False, True])
def test_python2_lasagne_pickles_are_read(tmp_path: Path, trust: bool) -> None:
    params, refs = _lasagne_params()
    f = tmp_path / "py2.npy"
    body = _write_py2_npy(f, params)
    with pytest.raises(UnicodeDecodeError):  # what Python 3's default (ASCII) reading of Python 2 strings does
        pickle.loads(body)
    ckpt = load_checkpoint(f, trust_pickle=trust)
    assert ckpt.source == "lasagne-npy"
    for i, a in enumerate(params):
        np.testing.assert_array_equal(ckpt.tensors[str(i)].numpy(), a)
    _check(f, _expected(refs), "lasagne", trust_pickle=trust)


def test_python2_pickle_with_code_is_still_refused(tmp_path: Path) -> None:
    f = tmp_path / "evil.npy"
    with open(f, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        fh.write(b"\x80\x02cos\nsystem\nU\x04true\x85R.")
    with pytest.raises(CheckpointError, match=r"os\.system"):
        load_checkpoint(f)


# --- 2. weight + log_sigma2: pytorch-ard, BayesWatch and svdcompress


class LinearARD(nn.Module):
    """pytorch-ard 0.2.4's LinearARD state: weight (out, in), log_sigma2, bias."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(theta.clone())
        self.log_sigma2 = nn.Parameter(ls2.clone())
        self.bias = nn.Parameter(torch.zeros(theta.shape[0]))


class Conv2dARD(nn.Conv2d):
    """pytorch-ard 0.2.4's Conv2dARD: an nn.Conv2d plus log_sigma2."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__(theta.shape[1], theta.shape[0], theta.shape[2:], bias=False)
        with torch.no_grad():
            self.weight.copy_(theta)
        self.log_sigma2 = nn.Parameter(ls2.clone())


class Linear(nn.Module):
    """BayesWatch's variational-dropout Linear: weight, log_sigma2, bias; log α clamped ±8, kept where < 3."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(theta.clone())
        self.log_sigma2 = nn.Parameter(ls2.clone())
        self.bias = nn.Parameter(torch.zeros(theta.shape[0]))


class _Net(nn.Module):
    def __init__(self, conv: nn.Module | None, fc: nn.Module) -> None:
        super().__init__()
        if conv is not None:
            self.conv1 = conv
        self.fc1 = fc


def _ard_net() -> tuple[_Net, list[tuple[torch.Tensor, torch.Tensor, Ref]]]:
    wc, sc = _bimodal((6, 1, 3, 3), 3)
    wf, sf = _bimodal((10, 24), 4)
    return _Net(Conv2dARD(wc, sc), LinearARD(wf, sf)), [(wc, sc, _ref_ard(8.0)), (wf, sf, _ref_ard(10.0))]


def test_pytorch_ard_clips_linear_at_10_and_conv_at_8_and_saves_a_numpy_float(tmp_path: Path) -> None:
    net, refs = _ard_net()
    f = tmp_path / "ckpt_ard.t7"
    # examples/mnist/mnist_ard.py: 'compression' is 100. * get_dropped_params_ratio(model), a numpy.float64
    torch.save({"net": net.state_dict(), "acc": 98.5, "epoch": 3, "compression": np.float64(97.1)}, f)
    expected = _expected(refs)
    _bimodality(expected, [54, 240])
    assert expected[9.0][0] == 54 and expected[9.0][1] < 240  # threshold 9: conv (clip 8) keeps all, linear drops
    _check(f, expected, "pytorch-ard", convention="pytorch-ard")
    with pytest.warns(ConventionWarning, match="bayeswatch"):  # 1e-15 vs 1e-8 flips the |θ| = 1e-4 weight
        report = analyze(f)
    assert [r.kept for r in report.layers] == expected[3.0]
    # A pickled model names its classes: no ambiguity left.
    g = tmp_path / "whole.pt"
    torch.save({"net": net, "acc": 98.5}, g)
    _check(g, expected, "pytorch-ard", trust_pickle=True)


def _bayeswatch_refs() -> tuple[_Net, list[tuple[torch.Tensor, torch.Tensor, Ref]]]:
    wf, sf = _bimodal((10, 24), 5)
    return _Net(None, Linear(wf, sf)), [(wf, sf, _ref_square(1e-8, 8.0, strict_drop=False))]


def test_bayeswatch_pickled_module_is_known_by_its_class(tmp_path: Path) -> None:
    net, refs = _bayeswatch_refs()
    f = tmp_path / "bw.t7"
    torch.save({"net": net, "acc": 97.0, "epoch": 2}, f)  # reliable-train saves the module itself
    expected = _expected(refs)
    _bimodality(expected, [240])
    _check(f, expected, "bayeswatch", trust_pickle=True)


def test_bare_state_dicts_warn_and_convention_decides(tmp_path: Path) -> None:
    net, refs = _bayeswatch_refs()
    f = tmp_path / "bw_sd.pt"
    torch.save(net.state_dict(), f)
    expected = _expected(refs)
    _check(f, expected, "bayeswatch", convention="bayeswatch")
    with pytest.warns(ConventionWarning, match=r"pytorch-ard, bayeswatch, svdcompress") as rec:
        default = analyze(f, threshold=9.0)
    assert "convention=NAME" in str(rec[0].message)
    assert default.layers[0].convention == "pytorch-ard" and default.warnings
    # At threshold 9 pytorch-ard's linear clip (10) drops what BayesWatch's clip (8) keeps.
    assert default.layers[0].kept < expected[9.0][0]


def test_svdcompress_layers_saved_as_bare_state_dict(tmp_path: Path) -> None:
    theta, ls2 = _bimodal((10, 24), 6)
    layer = LinearSVDO(24, 10)
    with torch.no_grad():
        layer.weight.copy_(theta)
        layer.log_sigma2.copy_(ls2)
    model = nn.Sequential(layer)
    own = {thr: [int(layer.mask(thr).sum())] for thr in THRESHOLDS}  # svdcompress's own mask: no clip, eps 1e-8
    assert own[9.0][0] == 240 - 1  # only the log α = 20 weight is dropped: no clip
    f = tmp_path / "sd.pt"
    torch.save(model.state_dict(), f)
    _check(f, own, "svdcompress", convention="svdcompress")
    with pytest.warns(ConventionWarning):
        assert analyze(f).layers[0].convention == "pytorch-ard"
    g = tmp_path / "own.pt"
    save_checkpoint(g, model, arch="custom")  # a file written by svdcompress says so
    _check(g, own, "svdcompress")
    h = tmp_path / "whole.pt"
    torch.save(model, h)
    _check(h, own, "svdcompress", trust_pickle=True)
    # The live module and a masked copy agree with the file.
    assert analyze(model, threshold=9.0).layers[0].kept == own[9.0][0]


def test_foreign_live_modules_mask_by_their_class() -> None:
    from svdcompress.masking import mask_model

    net, refs = _ard_net()
    masked = mask_model(net, threshold=9.0)
    for (t, v, ref), m in zip(refs, (masked.conv1, masked.fc1), strict=True):
        assert int((m.weight != 0).sum()) == _kept(ref(t, v, 9.0), t)


# --- 3/4. kefirski: theta (in, out), no eps, clip ±8, zeroed only where log α > threshold


def test_kefirski_keeps_log_alpha_equal_to_threshold(tmp_path: Path) -> None:
    w1, s1 = _bimodal((16, 20), 7)
    w2, s2 = _bimodal((4, 16), 8)
    sd = {}
    for name, (w, s) in {"fc1": (w1, s1), "fc2": (w2, s2)}.items():
        sd[f"{name}.theta"] = w.T.contiguous()  # VariationalDropout(input_size, out_size).theta is (in, out)
        sd[f"{name}.log_sigma2"] = s.T.contiguous()
        sd[f"{name}.bias"] = torch.zeros(w.shape[0])
    f = tmp_path / "kefirski.pt"
    torch.save(sd, f)
    ref = _ref_square(0.0, 8.0, strict_drop=True)
    expected = _expected([(sd["fc1.theta"], sd["fc1.log_sigma2"], ref), (sd["fc2.theta"], sd["fc2.log_sigma2"], ref)])
    _bimodality(expected, [320, 64])
    assert expected[8.0] == expected[9.0]  # at the clip everything clipped to 8 is kept (8 > 8 is false)
    _check(f, expected, "kefirski")


# --- 6. TensorFlow names: state_of_sparsity and BayesWatch tf-variational-dropout


def _tf_vars(
    theta_name: str, bias_name: str
) -> tuple[dict[str, np.ndarray], list[tuple[torch.Tensor, torch.Tensor, Ref]]]:
    wc, sc = _bimodal((6, 1, 3, 3), 9)
    wf, sf = _bimodal((10, 24), 10)
    kc, lc = wc.permute(2, 3, 1, 0).contiguous(), sc.permute(2, 3, 1, 0).contiguous()  # (kh, kw, in, out)
    kf, lf = wf.T.contiguous(), sf.T.contiguous()  # (in, out)
    v = {
        f"conv1/{theta_name}": kc.numpy(),
        "conv1/log_sigma2": lc.numpy(),
        f"conv1/{bias_name}": np.zeros(6, np.float32),
        f"dense/{theta_name}": kf.numpy(),
        "dense/log_sigma2": lf.numpy(),
        f"dense/{bias_name}": np.full(10, 0.5, np.float32),
        "global_step": np.array(1000, np.int64),
    }
    ref = _ref_square(1e-8, 8.0, strict_drop=False)  # compute_log_alpha(value_limit=8.), mask log α < threshold
    return v, [(kc, lc, ref), (kf, lf, ref)]


@pytest.mark.parametrize(("theta_name", "bias_name"), [("kernel", "bias"), ("weights", "biases")])
@pytest.mark.parametrize("fmt", ["npz", "safetensors", "pt"])
def test_tensorflow_names(tmp_path: Path, theta_name: str, bias_name: str, fmt: str) -> None:
    v, refs = _tf_vars(theta_name, bias_name)
    f = tmp_path / f"tf.{fmt}"
    if fmt == "npz":
        np.savez(f, **v)
    elif fmt == "safetensors":
        save_file({k: torch.from_numpy(a) for k, a in v.items()}, str(f))
    else:
        torch.save({k: torch.from_numpy(a) for k, a in v.items()}, f)
    expected = _expected(refs)
    _bimodality(expected, [54, 240])
    _check(f, expected, "state-of-sparsity")
    report = analyze(f)
    assert [r.name for r in report.layers] == ["conv1", "dense"]
    assert [r.shape for r in report.layers] == [[6, 1, 3, 3], [10, 24]]
    assert [r.biases for r in report.layers] == [6, 10]


# --- 7. Chainer (soskek): save_npz of a trainer snapshot, '/'-joined keys, W (out, in), clip ±8, drop > thr


def test_chainer_save_npz(tmp_path: Path) -> None:
    wc, sc = _bimodal((6, 1, 3, 3), 11)
    wf, sf = _bimodal((10, 24), 12)
    m = "updater/model:main/predictor"
    arrays = {
        f"{m}/conv1/W": wc.numpy(),
        f"{m}/conv1/b": np.zeros(6, np.float32),
        f"{m}/conv1/log_sigma2": sc.numpy(),
        f"{m}/l1/W": wf.numpy(),
        f"{m}/l1/b": np.zeros(10, np.float32),
        f"{m}/l1/log_sigma2": sf.numpy(),
        # the optimizer's Adam state and the iteration counter ride along in a snapshot
        "updater/optimizer:main/predictor/l1/W/m": np.zeros((10, 24), np.float32),
        "updater/optimizer:main/predictor/l1/W/v": np.zeros((10, 24), np.float32),
        "updater/iteration": np.array(600),
    }
    f = tmp_path / "snapshot_iter_600"
    with open(f, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # chainer.serializers.save_npz(..., compression=True)
    ref = _ref_square(1e-8, 8.0, strict_drop=True)  # calculate_log_alpha(eps=1e-8, (-8, 8)); zero where > thr
    expected = _expected([(wc, sc, ref), (wf, sf, ref)])
    _bimodality(expected, [54, 240])
    _check(f, expected, "chainer")
    assert [r.name for r in analyze(f).layers] == [f"{m}/conv1", f"{m}/l1"]


# --- 8. numenta: VDropLinear2 (w_mu + w_logvar) and VDropCentralData


def test_numenta_vdrop_linear2(tmp_path: Path) -> None:
    wf, sf = _bimodal((10, 24), 13)
    f = tmp_path / "nupic.pt"
    torch.save({"classifier.w_mu": wf, "classifier.w_logvar": sf, "classifier.bias": torch.zeros(10)}, f)
    ref = _ref_square(1e-8, None, strict_drop=False)  # w_logvar - log(w_mu² + 1e-8) < threshold, no clip
    expected = _expected([(wf, sf, ref)])
    _bimodality(expected, [240])
    _check(f, expected, "nupic")


def test_numenta_central_data_says_why_it_cannot_be_read(tmp_path: Path) -> None:
    f = tmp_path / "central.pt"
    torch.save(
        {
            "vdrop_data.z_mu": torch.randn(24 * 10 + 10 * 4),
            "vdrop_data.z_logvar": torch.randn(24 * 10 + 10 * 4),
            "fc1.bias": torch.zeros(10),
            "fc2.bias": torch.zeros(4),
        },
        f,
    )
    with pytest.raises(NoSVDOLayersError, match=r"VDropCentralData.*z_chunk_sizes.*state_dict\(\) does not save"):
        analyze(f)
    # Bayesian Compression keeps its name.
    bc = {"fc1.weight_mu": torch.randn(4, 3), "fc1.weight_logvar": torch.randn(4, 3)}
    bc |= {"fc1.z_mu": torch.randn(3), "fc1.z_logvar": torch.randn(3)}
    g = tmp_path / "bc.pt"
    torch.save(bc, g)
    with pytest.raises(NoSVDOLayersError, match="Bayesian Compression"):
        analyze(g)


# --- the authors' PyTorch demo: W, log_sigma (not squared), bias (1, out); clip ±10


def test_authors_pytorch_demo(tmp_path: Path) -> None:
    wf, sf = _bimodal((10, 24), 14)
    log_sigma = sf / 2  # exact in float32: a power-of-two scale
    f = tmp_path / "demo.pt"
    torch.save({"l1.W": wf, "l1.log_sigma": log_sigma, "l1.bias": torch.zeros(1, 10)}, f)
    expected = {thr: [_kept(_ref_demo(wf, log_sigma, thr), wf)] for thr in THRESHOLDS}
    _bimodality(expected, [240])
    _check(f, expected, "svdo-demo")


# --- convention= / --convention


def test_convention_argument_is_checked(tmp_path: Path) -> None:
    v, _ = _tf_vars("kernel", "bias")
    f = tmp_path / "tf.npz"
    np.savez(f, **v)
    with pytest.raises(InvalidInputError, match="not known"):
        analyze(f, convention="nonsense")
    with pytest.raises(InvalidInputError, match="weight \\+ log_sigma2 pairs; the file has none"):
        analyze(f, convention="bayeswatch")


def test_cli_convention_and_warning(tmp_path: Path) -> None:
    net, refs = _bayeswatch_refs()
    f = tmp_path / "bw_sd.pt"
    torch.save(net.state_dict(), f)
    expected = _expected(refs)
    res = CliRunner().invoke(main, ["analyze", str(f), "--threshold", "9", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("warning: ")
    assert "--convention NAME" in res.stderr and "convention=" not in res.stderr
    res = CliRunner().invoke(main, ["analyze", str(f), "--threshold", "9", "--json", "--convention", "bayeswatch"])
    assert res.exit_code == 0 and res.stderr == ""
    import json

    data = json.loads(res.stdout)
    assert [r["kept"] for r in data["layers"]] == expected[9.0] and data["warnings"] == []
    res = CliRunner().invoke(main, ["analyze", str(f), "--convention", "nope"])
    assert res.exit_code == 2 and "bayeswatch" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["analyze", str(f), "--convention", "kefirski"])
    assert res.exit_code == 1 and "--convention 'kefirski' reads theta + log_sigma2" in res.output


class _CentralData(nn.Module):
    """VDropCentralData as numenta describes it: every layer's z_mu / z_logvar in one flat vector."""

    def __init__(self, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.z_chunk_sizes = [mu.numel() for mu, _ in chunks]
        self.z_mu = nn.Parameter(torch.cat([mu.flatten() for mu, _ in chunks]))
        self.z_logvar = nn.Parameter(torch.cat([lv.flatten() for _, lv in chunks]))


class _VDropLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, central: _CentralData, index: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.central_data = [central]  # a list, so the central module is not registered twice
        self.data_index = index
        self.bias = nn.Parameter(torch.zeros(out_features))


def test_numenta_central_data_is_read_from_the_live_model() -> None:
    (w1, s1), (w2, s2) = _bimodal((10, 24), 15), _bimodal((4, 10), 16)
    central = _CentralData([(w1, s1), (w2, s2)])
    model = nn.Module()
    model.vdrop_data = central
    model.fc1 = _VDropLinear(24, 10, central, 0)
    model.fc2 = _VDropLinear(10, 4, central, 1)
    ref = _ref_square(1e-8, None, strict_drop=False)  # compute_z_logalpha() < threshold
    for thr in THRESHOLDS:
        report = analyze(model, threshold=thr)
        assert [r.name for r in report.layers] == ["fc1", "fc2"]
        assert [r.kept for r in report.layers] == [_kept(ref(w1, s1, thr), w1), _kept(ref(w2, s2, thr), w2)]
        assert [r.shape for r in report.layers] == [[10, 24], [4, 10]]
