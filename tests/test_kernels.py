"""Every runtime kernel against its PyTorch reference, through the public path: torch model → export_csr → load.

Convolutions (stride, padding incl. "same"/"valid", dilation, groups incl. depthwise) with every fusable
activation and a following max/avg pool, and Linear chains, are drawn by hypothesis over weight densities
from 0 to 1 (empty rows, all-zero layers, fully dense) and batches of 1 to 64; each bundle runs with the
sparse and the dense kernels, on one thread and on two. The reference is the same torch model in float64:
``F.conv2d`` + activation + ``F.max_pool2d``/``F.avg_pool2d``, ``F.linear``, ... Tolerance: 1e-5 relative,
with an absolute term of 1e-5 × max(1, max |reference|).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from torch import nn

from svdcompress import runtime
from svdcompress.export import export_csr
from svdcompress.ops import InputGather

torch.set_num_threads(1)

RTOL = 1e-5
KERNELS = ("sparse", "dense")
THREADS = (1, 2)
# The profile's examples (tests/conftest.py: "ci" 100, derandomized; "thorough" 2000), a fifth more here: each
# example is cheap once the kernels are compiled.
_SETTINGS = settings(max_examples=settings.default.max_examples * 6 // 5)

# Batch sizes around the runtime's regime switches (one example / batch-blocked, partial interleaved blocks).
BATCH = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64]), st.integers(1, 64))

ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "gelu",
    "gelu_tanh",
    "tanh",
    "sigmoid",
    "elu",
    "hardtanh",
    "silu",
    "softplus",
    "mish",
    "selu",
    "hardswish",
    "relu6",
)


def make_activation(name: str, draw: Any) -> nn.Module:
    """The torch module of activation ``name``; attributes drawn with ``draw`` (a hypothesis draw)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(draw(st.sampled_from([0.01, 0.2, -0.5, 1.5])))
    if name == "elu":
        return nn.ELU(draw(st.sampled_from([1.0, 0.3, 2.5])))
    if name == "hardtanh":
        lo = draw(st.sampled_from([-1.0, -0.25, -3.0]))
        return nn.Hardtanh(lo, lo + draw(st.sampled_from([0.5, 2.0, 5.0])))
    if name == "softplus":
        return nn.Softplus(beta=draw(st.sampled_from([1.0, 2.0, 0.5])), threshold=draw(st.sampled_from([20.0, 1.0])))
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    return {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "silu": nn.SiLU,
        "mish": nn.Mish,
        "selu": nn.SELU,
        "hardswish": nn.Hardswish,
        "relu6": nn.ReLU6,
    }[name]()


def sparsify_(
    layer: nn.Conv2d | nn.Linear, density: float, empty_rows: float, gen: torch.Generator, scale: float = 1.0
) -> None:
    """Keep each weight with probability ``density``, then zero a fraction ``empty_rows`` of whole output rows."""
    with torch.no_grad():
        w = layer.weight
        w.mul_(scale * (torch.rand(w.shape, generator=gen) < density).to(w.dtype))
        rows = torch.rand(w.shape[0], generator=gen) < empty_rows
        w[rows] = 0.0
        if layer.bias is not None:
            layer.bias.uniform_(-1.0, 1.0, generator=gen)


def assert_matches(got: Any, ref: torch.Tensor, msg: str) -> None:
    """``got`` (numpy or torch) equals ``ref`` (float64) to :data:`RTOL`, atol scaled to the output."""
    got_t = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
    assert got_t.dtype == torch.float32, msg
    atol = RTOL * max(1.0, float(ref.abs().max())) if ref.numel() else RTOL
    torch.testing.assert_close(got_t.double(), ref, rtol=RTOL, atol=atol, msg=lambda m: f"{msg}\n{m}")


def check_bundle(
    model: nn.Module, path: Path, input_shape: tuple[int, ...], batches: tuple[int, ...], seed: int = 0, what: str = ""
) -> None:
    """Export ``model``, then run the bundle with each kernel and thread count against float64 torch."""
    model = model.eval()
    export_csr(model, path, input_shape=input_shape, force=True)
    ref_model = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(seed)
    for batch in batches:
        x = torch.randn(batch, *input_shape, generator=gen)
        with torch.no_grad():
            ref = ref_model(x.double())
        for kernel in KERNELS:
            for threads in THREADS:
                m = runtime.load(path, kernel=kernel, threads=threads)
                assert set(m.layer_kernels.values()) <= {kernel}
                assert_matches(m(x.numpy()), ref, f"{what} kernel={kernel} threads={threads} batch={batch}")


# ---------------------------------------------------------------------------------------------- conv2d


@st.composite
def conv_nets(draw: Any) -> tuple[nn.Module, tuple[int, int, int], int, int, str]:
    """(model, input_shape, batch, seed, description): Conv2d [+ activation] [+ pool]."""
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    if kind == "plain":
        groups, cin, cout = 1, draw(st.integers(1, 5)), draw(st.integers(1, 6))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    else:
        cin = draw(st.integers(1, 4))
        groups, cout = cin, cin * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad_kind = draw(st.sampled_from(["int", "same", "valid"]))
    padding: Any
    if pad_kind == "same":  # torch allows "same" with stride 1 only
        stride, padding = (1, 1), "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = "valid" if pad_kind == "valid" else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    pads = (0, 0) if not isinstance(padding, tuple) else padding
    if pad_kind != "same":
        oh = (h + 2 * pads[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * pads[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    else:
        oh, ow = h, w
    assume(oh >= 1 and ow >= 1)
    conv = nn.Conv2d(
        cin, cout, (kh, kw), stride=stride, padding=padding, dilation=dil, groups=groups, bias=draw(st.booleans())
    )
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    density = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    empty_rows = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
    sparsify_(conv, density, empty_rows, gen, scale=draw(st.sampled_from([1.0, 4.0])))
    layers: list[nn.Module] = [conv]
    act = draw(st.sampled_from((None, *ACTIVATIONS)))
    if act is not None:
        layers.append(make_activation(act, draw))
    pool = draw(st.sampled_from([None, "max", "avg"]))
    pdesc = ""
    if pool is not None:
        pk = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        ps = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        pp = (draw(st.integers(0, pk[0] // 2)), draw(st.integers(0, pk[1] // 2)))
        ceil = draw(st.booleans())
        if pool == "max":
            pd = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
            layers.append(nn.MaxPool2d(pk, ps, pp, dilation=pd, ceil_mode=ceil))
            pdesc = f"max k{pk} s{ps} p{pp} d{pd} ceil={ceil}"
        else:
            cip = draw(st.booleans())
            div = draw(st.sampled_from([None, None, 1, 3]))
            layers.append(nn.AvgPool2d(pk, ps, pp, ceil_mode=ceil, count_include_pad=cip, divisor_override=div))
            pdesc = f"avg k{pk} s{ps} p{pp} ceil={ceil} cip={cip} div={div}"
    model = nn.Sequential(*layers).eval()
    try:  # pooling parameters torch itself refuses on this plane size
        with torch.no_grad():
            model(torch.zeros(1, cin, h, w))
    except RuntimeError:
        assume(False)
    desc = (
        f"conv {cin}->{cout} k=({kh},{kw}) s={stride} p={padding} d={dil} g={groups} in=({h},{w}) "
        f"density={density:.3g} empty_rows={empty_rows} act={act} pool={pool} {pdesc}"
    )
    return model, (cin, h, w), draw(BATCH), seed, desc


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@_SETTINGS
@given(case=conv_nets())
def test_conv2d_act_pool_matches_torch(
    case: tuple[nn.Module, tuple[int, int, int], int, int, str], tmp_path: Path
) -> None:
    model, shape, batch, seed, desc = case
    check_bundle(model, tmp_path / "conv.csr", shape, (batch,), seed, desc)


# ---------------------------------------------------------------------------------------------- linear


@st.composite
def linear_chains(draw: Any) -> tuple[nn.Module, int, int, int, str]:
    """(model, in_features, batch, seed, description): Linear [act] Linear [act] ..."""
    sizes = draw(st.lists(st.integers(1, 70), min_size=2, max_size=4))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    desc = []
    for i in range(len(sizes) - 1):
        fc = nn.Linear(sizes[i], sizes[i + 1], bias=draw(st.booleans()))
        density = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
        empty = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
        sparsify_(fc, density, empty, gen, scale=draw(st.sampled_from([1.0, 4.0])))
        layers.append(fc)
        act = draw(st.sampled_from((None, *ACTIVATIONS)))
        if act is not None:
            layers.append(make_activation(act, draw))
        desc.append(f"linear {sizes[i]}->{sizes[i + 1]} density={density:.3g} empty_rows={empty} act={act}")
    return nn.Sequential(*layers).eval(), sizes[0], draw(BATCH), seed, "; ".join(desc)


@_SETTINGS
@given(case=linear_chains())
def test_linear_chain_matches_torch(case: tuple[nn.Module, int, int, int, str], tmp_path: Path) -> None:
    model, features, batch, seed, desc = case
    check_bundle(model, tmp_path / "mlp.csr", (features,), (batch,), seed, desc)


def test_linear_wide_indices_and_tiles(tmp_path: Path) -> None:
    """Above 65,536 inputs the column indices need 32 bits, and the batch tile shrinks below 64."""
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(70_000, 5), nn.ReLU(), nn.Linear(5, 3))
    sparsify_(model[0], 0.002, 0.0, gen)
    with torch.no_grad():
        model[0].weight[1, 69_999] = 0.5  # the last column is read
    check_bundle(model, tmp_path / "wide.csr", (70_000,), (1, 9, 64), what="wide")


@pytest.mark.parametrize("itype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_csr_row_dot_sums_as_the_scalar_loop(itype: Any) -> None:
    """The vector row dot (8 nonzeros per multiply-add, inputs inserted lane by lane) gives the bits of the scalar
    loop it replaced (8 partial sums, the rest into the first, then a fixed pairwise order), for every row length
    mod 8, rows that start unaligned, and every index width; and the sum is right (float64 reference)."""
    from numba import njit

    from svdcompress.runtime.kernels._intrinsics import csr_row_dot

    @njit(fastmath={"contract"})
    def scalar(vals: np.ndarray, idx: np.ndarray, x: np.ndarray, j: int, e: int) -> float:
        s = np.zeros(8, np.float32)
        while j + 8 <= e:
            for q in range(8):
                s[q] += vals[j + q] * x[idx[j + q]]
            j += 8
        while j < e:
            s[0] += vals[j] * x[idx[j]]
            j += 1
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))

    @njit
    def vector(vals: np.ndarray, idx: np.ndarray, x: np.ndarray, j: int, e: int) -> float:
        return csr_row_dot(vals, idx, x, np.uint64(j), np.uint64(e))

    rng = np.random.default_rng(7)
    cols = 200 if itype == np.uint8 else 3000
    x = rng.standard_normal(cols).astype(np.float32)
    vals = rng.standard_normal(400).astype(np.float32)
    idx = rng.integers(0, min(cols, 256 if itype == np.uint8 else cols), 400).astype(itype)
    idx[5] = cols - 1  # the last input is read
    for start in (0, 1, 3, 8, 13):
        for length in [*range(0, 20), 63, 64, 65, 250]:
            got, want = vector(vals, idx, x, start, start + length), scalar(vals, idx, x, start, start + length)
            assert np.float32(got).tobytes() == np.float32(want).tobytes(), (start, length)
            ref = float(np.dot(vals[start : start + length].astype(np.float64), x[idx[start : start + length]]))
            assert abs(got - ref) <= 1e-5 * (1 + np.abs(vals[start : start + length]).sum()), (start, length)


def test_linear_batched_transpose_edges(tmp_path: Path) -> None:
    """The batched chain transposes its input in 16×16 register blocks: unused 16-feature groups are skipped,
    a last partial group (100 = 6·16 + 4 features) and the examples past the last 16 of a block go element by
    element, and a batch spans more than one block of 64."""
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(100, 40), nn.ReLU(), nn.Linear(40, 7))
    sparsify_(model[0], 0.3, 0.0, gen)
    with torch.no_grad():
        model[0].weight[:, 16:48] = 0.0  # groups 1 and 2 unused
        model[0].weight[3, 99] = 0.75  # the partial group's last feature is read
    check_bundle(model, tmp_path / "edges.csr", (100,), (16, 19, 64, 83, 130), what="transpose edges")


# ---------------------------------------------------------------------------------------------- other ops


class BatchNormNotFoldable(nn.Module):
    """BatchNorm on the input, after an add, and on a conv output read twice: none of them can fold."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_conv = nn.BatchNorm2d(4)
        self.bn_add = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 12)
        self.bn_fc = nn.BatchNorm1d(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(self.bn_in(x))  # (N, 4, 6, 6), read by bn_conv and by the add
        r = self.bn_add(self.bn_conv(c) + c)
        h = self.fc(r.flatten(1))  # (N, 12), read by bn_fc and by the add
        return self.bn_fc(h) + h


class AddCat(nn.Module):
    """Residual adds and channel concatenations around convolutions, then Linear layers and a cat of features."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(8, 3, 1)
        self.fc1 = nn.Linear(3 * 5 * 5, 10)
        self.fc2 = nn.Linear(10, 6)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))  # (N, 4, 5, 5)
        b = self.c2(a) + a
        c = self.c3(torch.cat([a, b], dim=1))  # (N, 3, 5, 5)
        h = torch.tanh(self.fc1(torch.flatten(c, 1)))  # (N, 10)
        return self.fc3(torch.cat([h, self.fc2(h)], dim=1))


class Unfused(nn.Module):
    """An activation and pools the executor cannot fuse: their input is read twice, or is not a conv output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.act = nn.SiLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 2, 1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)  # (N, 3, 7, 7), read by act and by the add
        s = self.act(c) + c
        return torch.cat([self.pool(s), self.avg(s)], dim=1).view(x.shape[0], -1)


class PReLUs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.p1 = nn.PReLU(5, init=0.1)
        self.fc = nn.Linear(5 * 4 * 4, 7)
        self.p2 = nn.PReLU(init=-0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.p2(self.fc(self.p1(self.conv(x)).flatten(1)))


class ViewConv(nn.Module):
    """Features reshaped into planes and back: reshape both ways around a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.view(-1, 2, 6, 6)).reshape(x.shape[0], 48)


def _gather_net() -> nn.Module:
    index = torch.tensor([0, 3, 4, 10, 17, 63, 99])
    return nn.Sequential(InputGather(index, 100), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


def _with_bn_stats(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                sparsify_(m, 0.5, 0.2, gen)
    return model.eval()


OTHER_OPS: dict[str, tuple[Any, tuple[int, ...], set[str]]] = {
    # name: (model factory, input shape, ops the bundle must hold)
    "batchnorm-not-foldable": (BatchNormNotFoldable, (3, 6, 6), {"batchnorm", "add"}),
    "add-cat": (AddCat, (2, 5, 5), {"add", "cat", "reshape"}),
    "unfused-act-pool": (Unfused, (2, 9, 9), {"silu", "max_pool2d", "avg_pool2d", "add", "cat", "reshape"}),
    "softmax": (
        lambda: nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 5), nn.Softmax(dim=1)),
        (12,),
        {"softmax"},
    ),
    "log_softmax": (
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.LogSoftmax(dim=-1)),
        (3, 4),
        {"log_softmax", "reshape"},
    ),
    "prelu": (PReLUs, (3, 6, 6), {"prelu"}),
    "adaptive_avg_pool2d": (
        lambda: nn.Sequential(nn.Conv2d(2, 4, 2), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Linear(24, 3)),
        (2, 8, 10),
        {"adaptive_avg_pool2d"},
    ),
    "adaptive_avg_pool2d-1": (
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        (2, 7, 5),
        {"adaptive_avg_pool2d"},
    ),
    "reshape": (ViewConv, (72,), {"reshape"}),
    "gather": (_gather_net, (1, 10, 10), {"gather"}),
}


@pytest.mark.parametrize("name", list(OTHER_OPS))
def test_other_ops_match_torch(name: str, tmp_path: Path) -> None:
    factory, shape, ops = OTHER_OPS[name]
    torch.manual_seed(0)
    model = _with_bn_stats(factory(), seed=1)
    path = tmp_path / f"{name}.csr"
    check_bundle(model, path, shape, (1, 5, 64), what=name)
    held = {n["op"] for n in runtime.load(path).manifest["nodes"]}
    assert ops <= held, (name, held)
