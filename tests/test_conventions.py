"""Each public SVDO convention, re-created from its published formula and saved the way its project saves.

Every reference below is written here from the project's formula (log α, eps, clip, comparison), not
taken from svdcompress: ``analyze``'s kept counts must equal each project's own mask. The weights are
built so that log α is bimodal (a kept mode near −4, a dropped mode near +6), and row 0 of every layer
holds the boundary cases: log α exactly at 3, log α beyond the clip, and |θ| = 1e-4 where the eps decides.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from svdcompress import analyze
from svdcompress.checkpoint.formats import load_checkpoint, save_checkpoint
from svdcompress.cli import main
from svdcompress.errors import CheckpointError, ConventionWarning, InvalidInputError, NoSVDOLayersError
from svdcompress.nn.layers import LinearSVDO, SVDOModule

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

_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


class _Train:
    """What the re-created layers share: local-reparameterisation training with the approximate KL, and the
    boundary weights written into row 0. Their eval-mode forward is each project's own (``project_eval``), from
    its published formula; ``eval_weight`` is the weight that forward uses, in PyTorch layout."""

    theta_name = "weight"
    var_name = "log_sigma2"
    in_out = False  # θ stored (in, out) / TF (kh, kw, in, out)
    half = False  # the variance is stored as log σ
    threshold = 3.0
    training: bool

    def _torch(self, name: str) -> torch.Tensor:
        t: torch.Tensor = getattr(self, name)
        if self.in_out:
            return t.t() if t.dim() == 2 else t.permute(3, 2, 0, 1)
        return t

    def _bias_t(self) -> torch.Tensor | None:
        b = next(
            (getattr(self, n) for n in ("bias", "b", "biases") if isinstance(getattr(self, n, None), torch.Tensor)),
            None,
        )
        return None if b is None else b.reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.project_eval(x)
        theta, v = self._torch(self.theta_name), self._torch(self.var_name)
        ls2 = 2 * v if self.half else v
        if theta.dim() == 2:
            mean, var = F.linear(x, theta, self._bias_t()), F.linear(x * x, ls2.exp())
        else:
            mean, var = F.conv2d(x, theta, self._bias_t()), F.conv2d(x * x, ls2.exp())
        return mean + (var + 1e-8).sqrt() * torch.randn_like(mean)

    def kl(self) -> torch.Tensor:
        theta, v = self._torch(self.theta_name), self._torch(self.var_name)
        la = ((2 * v if self.half else v) - torch.log(theta * theta + 1e-8)).clamp(-8, 8)
        return -(_K1 * torch.sigmoid(_K2 + _K3 * la) - 0.5 * F.softplus(-la) - _K1).sum()

    @torch.no_grad()
    def inject_boundaries(self) -> None:
        """Row 0: log α exactly 3 (θ = ±1), log α 20 (beyond every clip), and |θ| = 1e-4 with log σ² = -15
        (log α 2.73 with eps 1e-8 inside θ², 3.42 without it)."""
        theta, v = self._torch(self.theta_name), self._torch(self.var_name)
        scale = 0.5 if self.half else 1.0
        for i, (t, s) in enumerate(zip((1.0, -1.0, 1.0, 1e-4), (3.0, 3.0, 20.0, -15.0), strict=True)):
            idx = (0, *np.unravel_index(i, tuple(theta.shape[1:])))
            theta[idx], v[idx] = t, s * scale

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eval_weight(self) -> torch.Tensor:
        raise NotImplementedError


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.clone())


class LinearARD(_Train, nn.Module):
    """pytorch-ard 0.2.4's LinearARD: weight (out, in), log_sigma2, bias; log α = log σ² − 2·log(|w| + 1e-15)
    clipped ±10; eval zeroes w where log α ≥ threshold (``torch.ge``)."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__()
        self.weight = _param(theta)
        self.log_sigma2 = _param(ls2)
        self.bias = nn.Parameter(torch.zeros(theta.shape[0]))

    def eval_weight(self) -> torch.Tensor:
        la = torch.clamp(self.log_sigma2 - 2 * torch.log(torch.abs(self.weight) + 1e-15), -10, 10)
        return torch.where(torch.ge(la, self.threshold), torch.zeros_like(self.weight), self.weight)

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.eval_weight(), self.bias)


class Conv2dARD(_Train, nn.Conv2d):
    """pytorch-ard 0.2.4's Conv2dARD: an nn.Conv2d (no bias) plus log_sigma2; the same formula clipped ±8."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__(theta.shape[1], theta.shape[0], theta.shape[2:], bias=False)
        with torch.no_grad():
            self.weight.copy_(theta)
        self.log_sigma2 = _param(ls2)

    def eval_weight(self) -> torch.Tensor:
        la = torch.clamp(self.log_sigma2 - 2 * torch.log(torch.abs(self.weight) + 1e-15), -8, 8)
        return torch.where(torch.ge(la, self.threshold), torch.zeros_like(self.weight), self.weight)

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.eval_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class Linear(_Train, nn.Module):
    """BayesWatch's variational-dropout Linear: weight, log_sigma2, bias; log α = log σ² − log(w² + 1e-8)
    clamped ±8; eval keeps w where log α < threshold."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__()
        self.weight = _param(theta)
        self.log_sigma2 = _param(ls2)
        self.bias = nn.Parameter(torch.zeros(theta.shape[0]))

    def eval_weight(self) -> torch.Tensor:
        la = torch.clamp(self.log_sigma2 - torch.log(self.weight**2 + 1e-8), -8, 8)
        return self.weight * (la < self.threshold).float()

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.eval_weight(), self.bias)


class Conv2d(_Train, nn.Module):
    """BayesWatch's variational-dropout Conv2d: the Linear's formula on a (out, in, kh, kw) kernel."""

    def __init__(self, theta: torch.Tensor, ls2: torch.Tensor) -> None:
        super().__init__()
        self.weight = _param(theta)
        self.log_sigma2 = _param(ls2)
        self.bias = nn.Parameter(torch.zeros(theta.shape[0]))
        self.stride, self.padding, self.dilation, self.groups = 1, 0, 1, 1

    eval_weight = Linear.eval_weight

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.eval_weight(), self.bias)


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
    from svdcompress.pruning.masking import mask_model

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
    # vd_functions.calculate_log_alpha(eps=1e-8, (-8, 8)); zero where > thr. The eps decides row 0's |θ| = 1e-4
    # weight: soskek's code has had it since commit fb913a6 (2017-04-28), and this test fails without it.
    ref = _ref_square(1e-8, 8.0, strict_drop=True)
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


def test_numenta_central_data_state_dict_is_one_flat_group(tmp_path: Path) -> None:
    """Issue 24: every weight of a VDropCentralData state_dict is known, only the per-layer slices are not: one
    flat group, counted as compute_z_logalpha() < threshold, with a note that --model gives one row per layer."""
    net = _CentralNet()
    (w1, s1), (w2, s2) = _bimodal((16, 12), 17), _bimodal((4, 16), 18)
    with torch.no_grad():
        net.vdrop_data.z_mu.copy_(torch.cat([w1.flatten(), w2.flatten()]))
        net.vdrop_data.z_logvar.copy_(torch.cat([s1.flatten(), s2.flatten()]))
    f = tmp_path / "central.pt"
    torch.save(net.state_dict(), f)
    ref = _ref_square(1e-8, None, strict_drop=False)
    per_layer = {thr: [_kept(ref(w1, s1, thr), w1), _kept(ref(w2, s2, thr), w2)] for thr in THRESHOLDS}
    _bimodality(per_layer, [192, 64])
    for thr in THRESHOLDS:
        with pytest.warns(ConventionWarning, match=r"VDropCentralData.*one group.*model=package\.module:factory"):
            report = analyze(f, threshold=thr)
        assert [(r.name, r.kind, r.shape, r.weights) for r in report.layers] == [("vdrop_data", "flat", [256], 256)]
        assert report.layers[0].kept == sum(per_layer[thr])
        assert report.layers[0].convention == "nupic"
        # With the network's factory: one row per layer, the same weights kept.
        live = analyze(f, threshold=thr, model=_factory(_CentralNet))
        assert [(r.name, r.kept) for r in live.layers] == list(zip(["fc1", "fc2"], per_layer[thr], strict=True))
        assert not live.warnings
    res = CliRunner().invoke(main, ["analyze", str(f)])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.stdout.splitlines() if line.startswith("vdrop_data"))
    assert row.split()[:5] == ["vdrop_data", "flat", "256", "256", f"{sum(per_layer[3.0])}"]
    notes = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("warning: ") and "pass --model package.module:factory" in notes[0]
    res = CliRunner().invoke(main, ["analyze", str(f), "--model", _factory(_CentralNet), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["layers"]
    assert [(r["name"], r["kind"], r["kept"]) for r in rows] == [
        ("fc1", "linear", per_layer[3.0][0]),
        ("fc2", "linear", per_layer[3.0][1]),
    ]
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

    def kl(self) -> torch.Tensor:
        la = (self.z_logvar - torch.log(self.z_mu**2 + 1e-8)).clamp(-8, 8)
        return -(_K1 * torch.sigmoid(_K2 + _K3 * la) - 0.5 * F.softplus(-la) - _K1).sum()


class _VDropLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, central: _CentralData, index: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.central_data = [central]  # a list, so the central module is not registered twice
        self.data_index = index
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.threshold = 3.0

    def _slice(self, t: torch.Tensor) -> torch.Tensor:
        start = sum(self.central_data[0].z_chunk_sizes[: self.data_index])
        return t[start : start + self.in_features * self.out_features].view(self.out_features, self.in_features)

    def theta(self) -> torch.Tensor:
        return self._slice(self.central_data[0].z_mu)

    def ls2(self) -> torch.Tensor:
        return self._slice(self.central_data[0].z_logvar)

    def eval_weight(self) -> torch.Tensor:
        """VDropCentralData.compute_z_logalpha() < threshold: z_logvar − log(z_mu² + 1e-8), no clip."""
        w = self.theta()
        return w * ((self.ls2() - (w.square() + 1e-8).log()) < self.threshold).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.eval_weight(), self.bias)
        mean, var = F.linear(x, self.theta(), self.bias), F.linear(x * x, self.ls2().exp())
        return mean + (var + 1e-8).sqrt() * torch.randn_like(mean)

    @torch.no_grad()
    def inject_boundaries(self) -> None:
        self.theta()[0, :4] = torch.tensor([1.0, -1.0, 1.0, 1e-4])
        self.ls2()[0, :4] = torch.tensor([3.0, 3.0, 20.0, -15.0])


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


# --- every convention through prune → export → ONNX Runtime, against the project's own eval-mode output
#
# Each project's layer is re-created above or here from its published formula, a tiny net built of it is trained
# (local reparameterisation, the approximate KL) until log α is bimodal, the boundary weights go into row 0 of
# every layer, and the net is saved the way its project saves. ``export --format onnx --model FACTORY`` must then
# give what the project's own eval-mode forward gives, log_softmax included, at the paper's threshold and at
# the project's clip; and the masked weights prune and export start from must be the project's, weight for
# weight (the |θ| = 1e-4 weight where eps decides is far below the output tolerance).

_FACTORIES = types.ModuleType("svdcompress_test_convention_factories")
sys.modules[_FACTORIES.__name__] = _FACTORIES


def _factory(fn: Callable[[], nn.Module]) -> str:
    """Register ``fn`` for ``--model``; returns its import path."""
    setattr(_FACTORIES, fn.__name__, fn)
    return f"{_FACTORIES.__name__}:{fn.__name__}"


_MLP, _IMG = (12,), (1, 6, 6)


def _data(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes; only 4 input features (a 2×2 patch of the image) carry them, so the rest's weights drop."""
    g = torch.Generator().manual_seed(seed)
    n = 256
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 4, generator=g) * 2.0
    x = torch.randn(n, *shape, generator=g)
    if len(shape) == 1:
        x[:, :4] += centers[y]
    else:
        x[:, 0, 1:3, 1:3] += centers[y].reshape(n, 2, 2)
    return x, y


def _svdo_parts(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, _Train | SVDOModule | _VDropLinear)]


def _train(net: nn.Module, shape: tuple[int, ...], out: str = "logits", steps: int = 150) -> nn.Module:
    """Train briefly with a strong KL so that log α is bimodal; then the boundary weights; returns it in eval."""
    torch.manual_seed(0)
    x, y = _data(shape)
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    regularised = [m for m in net.modules() if callable(getattr(m, "kl", None))]
    net.train()
    for step in range(steps):
        o = net(x)
        nll = (
            F.nll_loss(o, y)
            if out == "log_softmax"
            else F.nll_loss(torch.log(o + 1e-9), y)
            if out == "softmax"
            else F.cross_entropy(o, y)
        )
        loss = nll + min(1.0, step / 50) * sum(m.kl() for m in regularised) / 500
        opt.zero_grad()
        loss.backward()
        opt.step()
    las = []
    for _, m in _svdo_parts(net):
        theta, ls2 = _theta_ls2(m)
        las.append((ls2 - torch.log(theta**2 + 1e-8)).detach().reshape(-1))
        if isinstance(m, SVDOModule):
            _inject(m)
        else:
            m.inject_boundaries()  # type: ignore[operator]
    la = torch.cat(las)
    assert float((la < 0).float().mean()) > 0.05 and float((la > 5).float().mean()) > 0.1, "log α is not bimodal"
    return net.eval()


def _theta_ls2(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """θ and log σ² of a re-created layer, PyTorch layout (what the training and the bimodality check use)."""
    if isinstance(m, _Train):
        v = m._torch(m.var_name)
        return m._torch(m.theta_name), 2 * v if m.half else v
    if isinstance(m, _VDropLinear):
        return m.theta(), m.ls2()
    assert isinstance(m, SVDOModule)
    return m.weight, m.log_sigma2


def _set_threshold(net: nn.Module, thr: float) -> None:
    for _, m in _svdo_parts(net):
        m.threshold = thr


def _eval_weight(m: nn.Module) -> torch.Tensor:
    if isinstance(m, SVDOModule):
        return m.masked_weight()
    return m.eval_weight()  # type: ignore[operator]


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return out


def _pipeline(
    tmp_path: Path,
    ckpt: Path,
    shape: tuple[int, ...],
    thresholds: tuple[float, ...],
    reference: Callable[[torch.Tensor, float], torch.Tensor],
    weights: Callable[[float], dict[str, torch.Tensor]],
    *,
    model: str | None = None,
    trust_pickle: bool = False,
    convention: str | None = None,
    analyzed: bool = True,
    prune_too: bool = False,
) -> None:
    """export --format onnx at each threshold: ONNX Runtime's output is the project's eval output (``reference``),
    and the masked model prune/export start from holds the project's eval weights (``weights``, by module name).
    ``analyze`` keeps as many weights as the project does; with ``prune_too`` the .pt2 of ``prune`` is checked."""
    from svdcompress.nn.architecture import load_model
    from svdcompress.pruning.masking import mask_model
    from svdcompress.pruning.pt2 import load_pruned

    flags = [*(["--model", model] if model else []), *(["--trust-pickle"] if trust_pickle else [])]
    flags += ["--convention", convention] if convention else []
    flags += ["--input-shape", ",".join(map(str, shape))]
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    for thr in thresholds:
        with torch.no_grad():
            ref = reference(x, thr)
        tol = 1e-4 * max(1.0, float(ref.abs().max()))
        out = tmp_path / f"export_{thr:g}.onnx"
        res = CliRunner().invoke(
            main, ["export", str(ckpt), "--format", "onnx", "-o", str(out), "--threshold", str(thr), *flags]
        )
        assert res.exit_code == 0, res.output
        assert "warning" not in res.stderr, res.stderr
        diff = float(np.abs(_ort(out, x) - ref.numpy()).max())
        assert diff <= tol, (thr, diff, tol)
        resolved = load_model(ckpt, model=model, trust_pickle=trust_pickle, input_shape=shape, convention=convention)
        masked = mask_model(resolved.module, thr, convention=convention)
        expected = weights(thr)
        for name, w in expected.items():
            got = masked.get_submodule(name).weight
            assert got.shape == w.shape and torch.equal(got != 0, w != 0) and torch.equal(got, w), (thr, name)
        if analyzed:  # the file alone: a bare pytorch-ard state_dict warns that BayesWatch would read it otherwise
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConventionWarning)
                report = analyze(ckpt, thr, trust_pickle=trust_pickle, convention=convention)
            assert report.total["kept"] == sum(int(w.count_nonzero()) for w in expected.values()), thr
        if prune_too:
            pt2 = tmp_path / f"prune_{thr:g}.pt2"
            res = CliRunner().invoke(main, ["prune", str(ckpt), "-o", str(pt2), "--threshold", str(thr), *flags])
            assert res.exit_code == 0, res.output
            with torch.no_grad():
                diff = float((load_pruned(pt2)(x) - ref).abs().max())
            assert diff <= tol, (thr, diff, tol)


def _by_module(net: nn.Module) -> Callable[[float], dict[str, torch.Tensor]]:
    """The project's eval weights of ``net``'s SVDO layers at a threshold, by module name."""

    def weights(thr: float) -> dict[str, torch.Tensor]:
        _set_threshold(net, thr)
        with torch.no_grad():
            return {name: _eval_weight(m).detach().clone() for name, m in _svdo_parts(net)}

    return weights


def _evaluated(net: nn.Module) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The project's own eval-mode output at a threshold."""

    def run(x: torch.Tensor, thr: float) -> torch.Tensor:
        _set_threshold(net, thr)
        out: torch.Tensor = net.eval()(x)
        return out

    return run


# 1. the authors' Lasagne code: a positional list mapped onto a factory's layers in order


class _LasagneConv(_Train, nn.Module):
    """Conv2DVarDropOutARD: W (out, in, kh, kw), b, ls2; log α = clip(ls2 − log(W² + 1e-8), ±8); deterministic
    output conv(x, switch(log α ≥ thresh, 0, W)) + b, cross-correlation (flip_filters=False)."""

    theta_name, var_name = "W", "ls2"

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(c_out, c_in, k, k) * 0.3)
        self.b = nn.Parameter(torch.zeros(c_out))
        self.ls2 = nn.Parameter(torch.full((c_out, c_in, k, k), -8.0))

    def eval_weight(self) -> torch.Tensor:
        la = torch.clamp(self.ls2 - torch.log(self.W**2 + 1e-8), -8, 8)
        return torch.where(la >= self.threshold, torch.zeros_like(self.W), self.W)

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.eval_weight()) + self.b.reshape(1, -1, 1, 1)


class _LasagneDense(_Train, nn.Module):
    """DenseVarDropOutARD: W (in, out), b, ls2; log α = clip(ls2 − log(W²), ±8), no eps; T.dot(x, switch(...)) + b."""

    theta_name, var_name, in_out = "W", "ls2", True

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_in, n_out) * 0.3)
        self.b = nn.Parameter(torch.zeros(n_out))
        self.ls2 = nn.Parameter(torch.full((n_in, n_out), -8.0))

    def _switched(self) -> torch.Tensor:
        la = torch.clamp(self.ls2 - torch.log(self.W**2), -8, 8)
        return torch.where(la >= self.threshold, torch.zeros_like(self.W), self.W)

    def eval_weight(self) -> torch.Tensor:
        return self._switched().t()

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self._switched() + self.b


class _LasagneBN(nn.Module):
    """BatchNormLayer at test time: (x − mean) · inv_std · gamma + beta; params beta, gamma, mean, inv_std."""

    def __init__(self, c: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.beta, self.gamma = torch.randn(c, generator=g) * 0.1, 1 + torch.randn(c, generator=g) * 0.1
        self.mean, self.inv_std = torch.randn(c, generator=g) * 0.1, 0.8 + 0.4 * torch.rand(c, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(shape)) * (self.inv_std * self.gamma).reshape(shape) + self.beta.reshape(shape)

    def params(self) -> list[torch.Tensor]:
        return [self.beta, self.gamma, self.mean, self.inv_std]


class _LasagneVGG(nn.Module):
    """The authors' VGG-like pattern, tiny: conv (linear) → BatchNorm → rectify → max-pool 2 → dense (linear) →
    BatchNorm → rectify → dense with softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1 = _LasagneConv(1, 4, 3), _LasagneBN(4, 1)
        self.fc1, self.bn2, self.fc2 = _LasagneDense(16, 8), _LasagneBN(8, 2), _LasagneDense(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv(x))), 2).flatten(1)  # DenseLayer flattens its input
        return F.softmax(self.fc2(F.relu(self.bn2(self.fc1(x)))), dim=1)

    def params(self) -> list[np.ndarray]:
        """lasagne.layers.get_all_param_values(net): per layer in order, W, b, ls2; beta, gamma, mean, inv_std."""
        ts = [self.conv.W, self.conv.b, self.conv.ls2, *self.bn1.params(), self.fc1.W, self.fc1.b, self.fc1.ls2]
        ts += [*self.bn2.params(), self.fc2.W, self.fc2.b, self.fc2.ls2]
        return [t.detach().numpy().copy() for t in ts]


def make_lasagne_vgg() -> nn.Module:
    """A user's PyTorch net for the list: plain layers, in the Lasagne net's order."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 4),
        nn.Softmax(dim=1),
    )


def test_pipeline_lasagne_list_maps_onto_a_factory_in_order(tmp_path: Path) -> None:
    net = _train(_LasagneVGG(), _IMG, out="softmax")
    f = tmp_path / "vgg.npy"
    _write_py2_npy(f, net.params())  # the authors' files: Python 2's np.save of the list
    layers = {"0": net.conv, "5": net.fc1, "8": net.fc2}

    def weights(thr: float) -> dict[str, torch.Tensor]:
        _set_threshold(net, thr)
        return {k: _eval_weight(m).detach().clone() for k, m in layers.items()}

    _pipeline(tmp_path, f, _IMG, (3.0, 8.0), _evaluated(net), weights, model=_factory(make_lasagne_vgg), prune_too=True)
    # The dense |θ| = 1e-4 weight (log α 3.42 without eps) is dropped, the conv one (2.73 with eps) kept.
    assert float(weights(3.0)["5"][0, 3]) == 0 and float(weights(3.0)["0"][0, 0, 1, 0]) != 0


def test_lasagne_list_onto_the_zoo_lenet300(tmp_path: Path) -> None:
    """``--model svdcompress.nn.zoo:lenet300`` builds the authors' LeNet-300-100 for their list (logits, no softmax)."""
    shapes = [(300, 784), (100, 300), (10, 100)]
    params, dense = [], []
    for i, shape in enumerate(shapes):
        w, s = _bimodal(shape, 20 + i)
        params += [w.T.numpy().copy(), np.full(shape[0], 0.05, np.float32), s.T.numpy().copy()]
        dense.append((w.T, s.T))
    f = tmp_path / "lenet300.npy"
    np.save(f, _object_array(params), allow_pickle=True)

    def lasagne_eval(x: torch.Tensor, thr: float) -> torch.Tensor:
        h = x.flatten(1)
        for i, (w, s) in enumerate(dense):
            la = torch.clamp(s - torch.log(w**2), -8, 8)
            h = h @ torch.where(la >= thr, torch.zeros_like(w), w) + 0.05
            h = torch.relu(h) if i < 2 else h
        return h

    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    out = tmp_path / "m.onnx"
    args = ["export", str(f), "--model", "svdcompress.nn.zoo:lenet300", "--input-shape", "1,28,28", "-o", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    ref = lasagne_eval(x, 3.0)
    assert float(np.abs(_ort(out, x) - ref.numpy()).max()) <= 1e-4 * max(1.0, float(ref.abs().max()))
    res = CliRunner().invoke(main, ["export", str(f), "--input-shape", "1,28,28", "-o", str(tmp_path / "n.onnx")])
    assert res.exit_code == 1 and "positional Lasagne list" in res.output and "--model" in res.output
    args[3], args[-1] = "svdcompress.nn.zoo:lenet5", str(tmp_path / "k.onnx")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "does not fit --model 'svdcompress.nn.zoo:lenet5'" in res.output
    assert "does not fit 'conv1' (Conv2d, weight (20, 1, 5, 5))" in res.output and "in order" in res.output


# factories for the list of _lasagne_params (conv 6×1×3×3, dense 54 → 12): one fits, two do not
def make_small_lasagne() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(54, 12))


def make_small_lasagne_prelu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.PReLU(), nn.Flatten(), nn.Linear(54, 12))


def make_small_lasagne_conv_only() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten())


def test_lasagne_mapping_checks_every_array_and_parameter(tmp_path: Path) -> None:
    from svdcompress.nn.architecture import load_model
    from svdcompress.pruning.masking import mask_model

    params, refs = _lasagne_params()
    f = tmp_path / "small.npy"
    np.save(f, _object_array(params), allow_pickle=True)
    resolved = load_model(f, model=_factory(make_small_lasagne), input_shape=(1, 5, 5))
    masked = mask_model(resolved.module, 3.0)
    for m, (t, v, ref) in zip((masked[0], masked[3]), refs, strict=True):
        torch.testing.assert_close(
            m.weight, (t * ref(t, v, 3.0)).reshape(m.weight.shape) if t.dim() == 4 else (t * ref(t, v, 3.0)).t()
        )
    with pytest.raises(CheckpointError, match=r"holds nothing for the factory's parameter\(s\) 1.weight"):
        load_model(f, model=_factory(make_small_lasagne_prelu))
    with pytest.raises(CheckpointError, match=r"arrays 3\.\.5 are left over after the factory's 1 layer"):
        load_model(f, model=_factory(make_small_lasagne_conv_only))


# 2. the authors' PyTorch demo: W, log_sigma, bias (1, out); clip ±10; F.log_softmax at the end


class _DemoLinearSVDO(_Train, nn.Module):
    """The demo's LinearSVDO: log α = clamp(2·log σ − 2·log(1e-16 + |W|), ±10); eval F.linear(x, W·(log α < thr))
    + bias."""

    theta_name, var_name, half = "W", "log_sigma", True

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(out_features, in_features) * 0.3)
        self.log_sigma = nn.Parameter(torch.full((out_features, in_features), -4.0))
        self.bias = nn.Parameter(torch.zeros(1, out_features))

    def eval_weight(self) -> torch.Tensor:
        la = torch.clamp(self.log_sigma * 2.0 - 2.0 * torch.log(1e-16 + torch.abs(self.W)), -10, 10)
        return self.W * (la < self.threshold).float()

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.eval_weight()) + self.bias


class DemoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = _DemoLinearSVDO(12, 16), _DemoLinearSVDO(16, 8), _DemoLinearSVDO(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def test_pipeline_authors_pytorch_demo(tmp_path: Path) -> None:
    net = _train(DemoNet(), _MLP, out="log_softmax")
    f = tmp_path / "demo.pt"
    torch.save(net.state_dict(), f)
    _pipeline(tmp_path, f, _MLP, (3.0, 10.0), _evaluated(net), _by_module(net), model=_factory(DemoNet))


# 3. pytorch-ard: {'net': state_dict, ..., 'compression': numpy.float64}; conv clip ±8, linear ±10; log_softmax


class ArdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2dARD(torch.randn(4, 1, 3, 3) * 0.3, torch.full((4, 1, 3, 3), -8.0))
        self.fc1 = LinearARD(torch.randn(4, 64) * 0.3, torch.full((4, 64), -8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc1(F.relu(self.conv1(x)).flatten(1)), dim=1)


def test_pipeline_pytorch_ard(tmp_path: Path) -> None:
    net = _train(ArdNet(), _IMG, out="log_softmax")
    f = tmp_path / "ckpt_ard.t7"
    torch.save({"net": net.state_dict(), "acc": 91.0, "epoch": 3, "compression": np.float64(60.2)}, f)
    # threshold 9: above the conv's clip (keeps every weight there), below the linear's
    _pipeline(tmp_path, f, _IMG, (3.0, 9.0), _evaluated(net), _by_module(net), model=_factory(ArdNet))


# 4. BayesWatch: torch.save({'net': model}) of the module itself; clip ±8; log_softmax


class BayesWatchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2d(torch.randn(4, 1, 3, 3) * 0.3, torch.full((4, 1, 3, 3), -8.0))
        self.fc1 = Linear(torch.randn(4, 64) * 0.3, torch.full((4, 64), -8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc1(F.relu(self.conv1(x)).flatten(1)), dim=-1)


def test_pipeline_bayeswatch_pickled_module(tmp_path: Path) -> None:
    net = _train(BayesWatchNet(), _IMG, out="log_softmax")
    f = tmp_path / "bw.t7"
    torch.save({"net": net, "acc": 90.0, "epoch": 5}, f)
    # no --model: the pickled module is the architecture, and its classes name the convention
    _pipeline(tmp_path, f, _IMG, (3.0, 8.0), _evaluated(net), _by_module(net), trust_pickle=True, prune_too=True)


class VariationalLinear(Linear):
    """A user's own name for a weight + log_sigma2 layer: its class says nothing about the formula."""


class _Mlp(nn.Module):
    def __init__(self, fc1: nn.Module, fc2: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def make_weight_log_sigma2_mlp() -> nn.Module:
    return _Mlp(
        VariationalLinear(torch.zeros(16, 12), torch.zeros(16, 12)),
        VariationalLinear(torch.zeros(4, 16), torch.zeros(4, 16)),
    )


@pytest.mark.parametrize("project", ["bayeswatch", "svdcompress"])
def test_pipeline_bare_weight_log_sigma2_follows_convention(tmp_path: Path, project: str) -> None:
    """A bare state_dict of weight + log_sigma2 and a factory whose classes do not say: --convention decides what
    prune and export mask, as it decides what analyze counts; without it they warn, like analyze."""
    if project == "bayeswatch":
        fc1, fc2 = (
            Linear(torch.randn(16, 12) * 0.3, torch.full((16, 12), -8.0)),
            Linear(torch.randn(4, 16) * 0.3, torch.full((4, 16), -8.0)),
        )
    else:
        fc1, fc2 = LinearSVDO(12, 16, log_sigma2_init=-8.0), LinearSVDO(16, 4, log_sigma2_init=-8.0)
    net = _train(_Mlp(fc1, fc2), _MLP, out="log_softmax")
    f = tmp_path / "sd.pt"
    torch.save(net.state_dict(), f)
    model = _factory(make_weight_log_sigma2_mlp)
    _pipeline(tmp_path, f, _MLP, (3.0, 9.0), _evaluated(net), _by_module(net), model=model, convention=project)
    res = CliRunner().invoke(
        main,
        ["export", str(f), "--model", model, "--input-shape", "12", "--threshold", "9", "-o", str(tmp_path / "x.onnx")],
    )
    assert res.exit_code == 0, res.output
    assert res.stderr.count("warning: ") == 1 and "--convention NAME" in res.stderr and "pytorch-ard" in res.stderr


@torch.no_grad()
def _inject(m: SVDOModule) -> None:
    """The boundary weights of :meth:`_Train.inject_boundaries`, in svdcompress's own layer."""
    m.weight[0, :4] = torch.tensor([1.0, -1.0, 1.0, 1e-4])
    m.log_sigma2[0, :4] = torch.tensor([3.0, 3.0, 20.0, -15.0])


# 5. TensorFlow (state_of_sparsity, BayesWatch tf-variational-dropout): '/'-joined names, (in, out) and
# (kh, kw, in, out) kernels, dumped to a named .npz or safetensors with the global step


class _TFDense(_Train, nn.Module):
    """matmul_eval: x @ (θ · (log α < thr)) + bias, log α = clip(log σ² − log(θ² + 1e-8), ±8); θ is (in, out)."""

    in_out = True

    def __init__(self, n_in: int, n_out: int, theta: str, bias: str) -> None:
        super().__init__()
        self.theta_name = theta
        setattr(self, theta, nn.Parameter(torch.randn(n_in, n_out) * 0.3))
        self.log_sigma2 = nn.Parameter(torch.full((n_in, n_out), -8.0))
        setattr(self, bias, nn.Parameter(torch.zeros(n_out)))

    def _masked(self) -> torch.Tensor:
        theta: torch.Tensor = getattr(self, self.theta_name)
        la = torch.clamp(self.log_sigma2 - torch.log(theta**2 + 1e-8), -8, 8)
        return theta * (la < self.threshold).float()

    def eval_weight(self) -> torch.Tensor:
        return self._masked().t() if self._masked().dim() == 2 else self._masked().permute(3, 2, 0, 1)

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._masked() + self._bias_t()


class _TFConv(_TFDense):
    """conv2d_eval: tf.nn.conv2d(x, θ · mask, 'VALID') + bias, θ (kh, kw, in, out); NCHW here."""

    def __init__(self, c_in: int, c_out: int, k: int, theta: str, bias: str) -> None:
        nn.Module.__init__(self)
        self.theta_name = theta
        setattr(self, theta, nn.Parameter(torch.randn(k, k, c_in, c_out) * 0.3))
        self.log_sigma2 = nn.Parameter(torch.full((k, k, c_in, c_out), -8.0))
        setattr(self, bias, nn.Parameter(torch.zeros(c_out)))
        self.stride, self.padding = 1, 0

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.eval_weight()) + self._bias_t().reshape(1, -1, 1, 1)  # type: ignore[union-attr]


class TFNet(nn.Module):
    def __init__(self, theta: str = "kernel", bias: str = "bias") -> None:
        super().__init__()
        self.conv1, self.dense = _TFConv(1, 4, 3, theta, bias), _TFDense(64, 4, theta, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(F.relu(self.conv1(x)).flatten(1))


def make_tf_kernel() -> nn.Module:
    return TFNet("kernel", "bias")


def make_tf_weights() -> nn.Module:
    return TFNet("weights", "biases")


@pytest.mark.parametrize(("names", "fmt"), [(("kernel", "bias"), "npz"), (("weights", "biases"), "safetensors")])
def test_pipeline_tensorflow_names(tmp_path: Path, names: tuple[str, str], fmt: str) -> None:
    net = _train(TFNet(*names), _IMG)
    variables = {k.replace(".", "/"): v.detach().contiguous() for k, v in net.state_dict().items()}
    variables["global_step"] = torch.tensor(1500, dtype=torch.int64)
    f = tmp_path / f"tf.{fmt}"
    if fmt == "npz":
        np.savez(f, **{k: v.numpy() for k, v in variables.items()})
    else:
        save_file(variables, str(f))
    factory = _factory(make_tf_kernel if names[0] == "kernel" else make_tf_weights)
    _pipeline(tmp_path, f, _IMG, (3.0, 8.0), _evaluated(net), _by_module(net), model=factory)


# 6. kefirski: theta (in, out), no eps, clip ±8, zeroed only where log α > threshold; forward(input, train=False)


class VariationalDropout(_Train, nn.Module):
    """kefirski's layer: log α = clip(log σ² − log θ²); eval addmm(bias, x, θ.masked_fill(log α > thr, 0))."""

    theta_name, in_out = "theta", True

    def __init__(self, input_size: int, out_size: int, log_sigma2: float = -8.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(input_size, out_size) * 0.3)
        self.bias = nn.Parameter(torch.zeros(out_size))
        self.log_sigma2 = nn.Parameter(torch.full((input_size, out_size), log_sigma2))

    @staticmethod
    def clip(x: torch.Tensor, to: float = 8) -> torch.Tensor:
        return x.masked_fill(x < -to, -to).masked_fill(x > to, to)

    def _dropped(self) -> torch.Tensor:
        return self.clip(self.log_sigma2 - torch.log(self.theta**2)) > self.threshold

    def eval_weight(self) -> torch.Tensor:
        return self.theta.masked_fill(self._dropped(), 0).t()

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.theta.masked_fill(self._dropped(), 0))


class VariationalDropoutModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.ModuleList([VariationalDropout(12, 16), VariationalDropout(16, 8), nn.Linear(8, 4)])

    def forward(self, input: torch.Tensor, train: bool = False) -> torch.Tensor:
        result = input
        for layer in self.fc[:-1]:
            result = F.elu(layer(result))
        out: torch.Tensor = self.fc[-1](result)
        if train:
            raise NotImplementedError("trained here through the layers' training mode")
        return out


def test_pipeline_kefirski(tmp_path: Path) -> None:
    net = _train(VariationalDropoutModel(), _MLP)
    f = tmp_path / "kefirski.pt"
    torch.save(net.state_dict(), f)
    # threshold 8 = the clip: kefirski keeps everything clipped to 8 (8 > 8 is false), the log α 20 weight too
    weights = _by_module(net)
    assert float(weights(8.0)["fc.0"][0, 2]) == 1.0 and float(weights(3.0)["fc.0"][0, 0]) == 1.0
    model = _factory(VariationalDropoutModel)
    _pipeline(tmp_path, f, _MLP, (3.0, 8.0), _evaluated(net), weights, model=model, prune_too=True)


# 7. numenta: VDropLinear2 (w_mu + w_logvar; the older pairs alike): logvar − log(w² + 1e-8) < thr, no clip


class VDropLinear2(_Train, nn.Module):
    def __init__(self, in_features: int, out_features: int, names: tuple[str, str]) -> None:
        super().__init__()
        self.theta_name, self.var_name = names
        setattr(self, names[0], nn.Parameter(torch.randn(out_features, in_features) * 0.3))
        setattr(self, names[1], nn.Parameter(torch.full((out_features, in_features), -8.0)))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def eval_weight(self) -> torch.Tensor:
        mu, logvar = getattr(self, self.theta_name), getattr(self, self.var_name)
        return mu * ((logvar - (mu.square() + 1e-8).log()) < self.threshold).float()

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.eval_weight(), self.bias)


def _nupic_net(names: tuple[str, str]) -> nn.Module:
    return _Mlp(VDropLinear2(12, 16, names), VDropLinear2(16, 4, names))


def make_nupic_w_mu_w_logvar() -> nn.Module:
    return _nupic_net(("w_mu", "w_logvar"))


def make_nupic_w_mu_w_logsigma2() -> nn.Module:
    return _nupic_net(("w_mu", "w_logsigma2"))


def make_nupic_weight_w_logvar() -> nn.Module:
    return _nupic_net(("weight", "w_logvar"))


@pytest.mark.parametrize(
    ("names", "make"),
    [
        (("w_mu", "w_logvar"), make_nupic_w_mu_w_logvar),
        (("w_mu", "w_logsigma2"), make_nupic_w_mu_w_logsigma2),
        (("weight", "w_logvar"), make_nupic_weight_w_logvar),
    ],
)
def test_pipeline_numenta_layers(tmp_path: Path, names: tuple[str, str], make: Callable[[], nn.Module]) -> None:
    net = _train(_nupic_net(names), _MLP, out="log_softmax")
    f = tmp_path / "nupic.pt"
    torch.save(net.state_dict(), f)
    _pipeline(tmp_path, f, _MLP, (3.0, 9.0), _evaluated(net), _by_module(net), model=_factory(make))


class _CentralNet(nn.Module):
    """Two VDropLinear layers over one VDropCentralData, as numenta's current code builds them."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        chunks = [(torch.randn(16, 12, generator=g) * 0.3, torch.full((16, 12), -8.0))]
        chunks.append((torch.randn(4, 16, generator=g) * 0.3, torch.full((4, 16), -8.0)))
        self.vdrop_data = _CentralData(chunks)
        self.fc1 = _VDropLinear(12, 16, self.vdrop_data, 0)
        self.fc2 = _VDropLinear(16, 4, self.vdrop_data, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def test_pipeline_numenta_central_data_through_a_factory(tmp_path: Path) -> None:
    """The file alone cannot be cut into layers; with the factory's live model it prunes and exports."""
    net = _train(_CentralNet(), _MLP)
    f = tmp_path / "central.pt"
    torch.save(net.state_dict(), f)
    _pipeline(tmp_path, f, _MLP, (3.0,), _evaluated(net), _by_module(net), model=_factory(_CentralNet), analyzed=False)
    from svdcompress.pruning.masking import mask_model

    masked = mask_model(net, 3.0)
    assert not hasattr(masked, "vdrop_data")  # no longer called: not counted as the masked model's parameters
    assert sum(p.numel() for p in masked.parameters()) == 16 * 12 + 16 + 4 * 16 + 4


# 8. Chainer (soskek): a trainer snapshot, save_npz with '/'-joined keys under the model's path; clip ±8, drop > thr


class _ChainerVD(_Train, nn.Module):
    """VariationalDropoutLinear / Convolution2D: W (out, in[, kh, kw]), b, log_sigma2;
    calculate_log_alpha(W, log_sigma2, eps=1e-8, thresholds=(-8, 8)); eval zeroes W where log α > thr."""

    theta_name = "W"

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(*shape) * 0.3)
        self.b = nn.Parameter(torch.zeros(shape[0]))
        self.log_sigma2 = nn.Parameter(torch.full(shape, -8.0))
        self.stride, self.padding = 1, 0

    def eval_weight(self) -> torch.Tensor:
        la = torch.clamp(self.log_sigma2 - torch.log(self.W**2 + 1e-8), -8.0, 8.0)
        return self.W * (la <= self.threshold).float()

    def project_eval(self, x: torch.Tensor) -> torch.Tensor:
        w = self.eval_weight()
        return F.linear(x, w, self.b) if w.dim() == 2 else F.conv2d(x, w, self.b)


class ChainerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.l1 = _ChainerVD((4, 1, 3, 3)), _ChainerVD((4, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1(F.relu(self.conv1(x)).flatten(1))


def test_pipeline_chainer_snapshot(tmp_path: Path) -> None:
    net = _train(ChainerNet(), _IMG)
    m = "updater/model:main/predictor"
    arrays = {f"{m}/{k.replace('.', '/')}": v.detach().numpy() for k, v in net.state_dict().items()}
    arrays["updater/optimizer:main/predictor/l1/W/m"] = np.zeros((4, 64), np.float32)  # Adam state: not the model
    arrays["updater/iteration"] = np.array(150)
    f = tmp_path / "snapshot_iter_150"
    with open(f, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    # threshold 8 = the clip: kept, since Chainer zeroes only where log α > threshold
    _pipeline(tmp_path, f, _IMG, (3.0, 8.0), _evaluated(net), _by_module(net), model=_factory(ChainerNet))


# --- log_softmax as a net's last op, in every spelling the projects use


@pytest.mark.parametrize(
    "head",
    [
        lambda y: F.log_softmax(y, dim=1),
        lambda y: F.log_softmax(y, -1),
        lambda y: torch.log_softmax(y, 1),
        lambda y: y.log_softmax(dim=1),
        nn.LogSoftmax(dim=1),
    ],
    ids=["F.log_softmax(dim=1)", "F.log_softmax(-1)", "torch.log_softmax", "Tensor.log_softmax", "nn.LogSoftmax"],
)
@pytest.mark.parametrize("fmt", ["onnx", "csr"])
def test_log_softmax_last_exports(tmp_path: Path, head: Callable[[torch.Tensor], torch.Tensor], fmt: str) -> None:
    from svdcompress.export import export_model

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = LinearSVDO(12, 16), LinearSVDO(16, 4)
            self.head = head if isinstance(head, nn.Module) else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc2(F.relu(self.fc1(x)))
            return self.head(y) if self.head is not None else head(y)

    net = Net()
    with torch.no_grad():
        for m in (net.fc1, net.fc2):
            m.log_sigma2.copy_(torch.where(torch.rand_like(m.log_sigma2) < 0.5, 6.0, -8.0) + torch.log(m.weight**2))
    net.eval()
    out = tmp_path / f"m.{fmt}"
    res = export_model(net, fmt, out, input_shape=_MLP)
    x = torch.randn(8, 12)
    with torch.no_grad():
        ref = net(x)
    if fmt == "onnx":
        got = _ort(out, x)
    else:
        from svdcompress.runtime import load

        got = np.asarray(load(out, threads=1)(x.numpy()))
    assert res.max_abs_diff <= 1e-4 and float(np.abs(got - ref.numpy()).max()) <= 1e-4 * max(
        1.0, float(ref.abs().max())
    )


# --- what prune and export say about a layer they cannot read, and about --convention


class _BayesByBackpropLinear(nn.Module):
    """Not SVDO: a mean and a softplus-parameterised std (rho)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(n_out, n_in))
        self.rho = nn.Parameter(torch.full((n_out, n_in), -5.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.mu)


def test_unrecognised_layer_is_named_with_the_conventions_tried() -> None:
    from svdcompress.errors import UnsupportedOpError
    from svdcompress.pruning.structural import prune

    model = nn.Sequential(LinearSVDO(12, 8), nn.ReLU(), _BayesByBackpropLinear(8, 4)).eval()
    with pytest.raises(UnsupportedOpError) as e:
        prune(model, input_shape=_MLP)
    msg = str(e.value)
    assert "module '2' (_BayesByBackpropLinear)" in msg and "not recognised as an SVDO layer" in msg
    assert "'mu', 'rho'" in msg and "W + log_sigma (svdo-demo)" in msg and "theta + log_sigma2 (kefirski)" in msg


def test_convention_on_prune_export_bench(tmp_path: Path) -> None:
    f = tmp_path / "sd.pt"
    torch.save(_Mlp(LinearSVDO(12, 16), LinearSVDO(16, 4)).state_dict(), f)
    model = _factory(make_weight_log_sigma2_mlp)
    base = ["--model", model, "--input-shape", "12"]
    for cmd in (
        ["prune", str(f), "-o", str(tmp_path / "p.pt2")],
        ["export", str(f), "-o", str(tmp_path / "e.onnx")],
        ["bench", str(f)],
    ):
        res = CliRunner().invoke(main, [*cmd, *base, "--convention", "nope"])
        assert res.exit_code == 2 and "bayeswatch" in res.output, res.output
        res = CliRunner().invoke(main, [*cmd, *base, "--convention", "kefirski"])  # reads no layer: before any work
        assert res.exit_code == 1 and "--convention 'kefirski' reads theta + log_sigma2" in res.output, res.output
    res = CliRunner().invoke(
        main, ["prune", str(f), "-o", str(tmp_path / "p.pt2"), *base, "--convention", "svdcompress"]
    )
    assert res.exit_code == 0 and "warning" not in res.stderr, res.output
    from svdcompress.benchmark.harness import BenchConfig
    from svdcompress.pruning.structural import PruneConfig

    with pytest.raises(InvalidInputError, match="not known"):
        PruneConfig(convention="nope")
    with pytest.raises(InvalidInputError, match="not known"):
        BenchConfig(convention="nope")
