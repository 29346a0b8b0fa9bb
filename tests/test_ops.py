"""The op registry end to end: every op in :data:`svdcompress.ops.OPS` prunes, and every op the bundle can
express goes prune → CSR export → runtime and reproduces the masked model; the others are refused, with the
registry's reason, by ``prune(require_csr=True)`` and by CSR export."""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from svdcompress import runtime
from svdcompress.errors import ExportError, UnsupportedOpError
from svdcompress.export import export_csr
from svdcompress.ops import OPS, Op, lookup
from svdcompress.pruning.structural import prune

torch.set_num_threads(1)


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _conv_net(mid: nn.Module, head_in: int = 4 * 3 * 3) -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Sequential(nn.Conv2d(2, 4, 3), mid, nn.Flatten(), nn.Linear(head_in, 3)), (2, 5, 5)


def _mlp(mid: nn.Module, tail: nn.Module | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    layers = [nn.Linear(6, 5), mid, nn.Linear(5, 3)]
    return nn.Sequential(*layers, *([tail] if tail is not None else [])), (6,)


class _Residual(nn.Module):
    def __init__(self, combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.head, self.combine = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3), combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.combine(self.a(x), self.b(x)))


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 2), nn.Linear(6, 3), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


class _Rnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # (N, 2, 4)
        return self.head(out[:, -1])


# One small model per registry entry, using one of its forms.
MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "linear": lambda: _mlp(nn.ReLU()),
    "conv2d": lambda: _conv_net(nn.ReLU()),
    "conv1d": lambda: (nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(12, 3)), (2, 5)),
    "batchnorm": lambda: _mlp(nn.BatchNorm1d(5)),
    "gather": lambda: _mlp(nn.ReLU()),  # with gather_inputs=True
    "relu": lambda: _mlp(_Fn(F.relu)),
    "relu6": lambda: _mlp(nn.ReLU6()),
    "sigmoid": lambda: _mlp(_Fn(torch.sigmoid)),
    "tanh": lambda: _mlp(nn.Tanh()),
    "silu": lambda: _mlp(nn.SiLU()),
    "leaky_relu": lambda: _mlp(nn.LeakyReLU(0.2)),
    "elu": lambda: _mlp(_Fn(lambda x: F.elu(x, 0.5))),
    "gelu": lambda: _mlp(nn.GELU(approximate="tanh")),
    "hardtanh": lambda: _mlp(nn.Hardtanh(-0.5, 0.7)),
    "mish": lambda: _mlp(nn.Mish()),
    "selu": lambda: _mlp(nn.SELU()),
    "hardswish": lambda: _mlp(nn.Hardswish()),
    "softplus": lambda: _mlp(nn.Softplus(beta=2, threshold=10)),
    "prelu": lambda: _conv_net(nn.PReLU(4)),
    "hardsigmoid": lambda: _mlp(nn.Hardsigmoid()),
    "celu": lambda: _mlp(nn.CELU()),
    "clamp": lambda: _mlp(_Fn(lambda x: x.clamp(-0.5, 0.5))),
    "neg": lambda: _mlp(_Fn(torch.neg)),
    "log_softmax": lambda: _mlp(nn.ReLU(), nn.LogSoftmax(dim=1)),
    "softmax": lambda: _mlp(nn.ReLU(), _Fn(lambda x: F.softmax(x, dim=-1))),
    "identity": lambda: _mlp(nn.Identity()),
    "dropout": lambda: _mlp(nn.Dropout(0.3)),
    "max_pool2d": lambda: _conv_net(nn.MaxPool2d(2, 1), 4 * 2 * 2),
    "avg_pool2d": lambda: _conv_net(nn.AvgPool2d(2, 1), 4 * 2 * 2),
    "adaptive_avg_pool2d": lambda: _conv_net(nn.AdaptiveAvgPool2d(2), 4 * 2 * 2),
    "pool1d": lambda: (nn.Sequential(nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 3)), (2, 5)),
    "adaptive_max_pool": lambda: _conv_net(nn.AdaptiveMaxPool2d(3)),
    "mean": lambda: (nn.Sequential(nn.Conv2d(2, 4, 3), _Fn(lambda x: x.mean((2, 3))), nn.Linear(4, 3)), (2, 5, 5)),
    "reshape": lambda: _conv_net(nn.ReLU()),
    "add": lambda: (_Residual(operator.add), (6,)),
    "sub_mul_div": lambda: (_Residual(operator.mul), (6,)),
    "cat": lambda: (_Cat(), (6,)),
    "embedding": lambda: (nn.Sequential(nn.Embedding(10, 6), nn.Flatten(), nn.Linear(18, 3)), (3,)),
    "lstm": lambda: (_Rnn(), (2, 3)),
    "layer_norm": lambda: _mlp(nn.LayerNorm(5)),
    "pointwise_math": lambda: _mlp(_Fn(torch.erf)),
    "reduce": lambda: (nn.Sequential(nn.Conv2d(2, 4, 3), _Fn(lambda x: x.amax((2, 3))), nn.Linear(4, 3)), (2, 5, 5)),
    "transpose": lambda: (nn.Sequential(_Fn(lambda x: x.transpose(1, 2)), nn.Flatten(), nn.Linear(20, 3)), (4, 5)),
    "movedim": lambda: (nn.Sequential(_Fn(lambda x: x.movedim(1, 2)), nn.Flatten(), nn.Linear(20, 3)), (4, 5)),
    "index": lambda: _mlp(_Fn(lambda x: x[:, :])),
    "expand": lambda: _mlp(_Fn(lambda x: x.expand(x.shape[0], -1))),
    "matmul": lambda: (nn.Sequential(_Fn(lambda x: x @ x), nn.Flatten(), nn.Linear(16, 3)), (4, 4)),
    "split": lambda: (nn.Sequential(_Fn(lambda x: torch.chunk(x, 2, 1)[0]), nn.Linear(3, 3)), (6,)),
}


_VOCAB = {"embedding": 10}  # models over int64 ids: the vocabulary size


def _x(name: str, shape: tuple[int, ...], n: int = 5, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if name in _VOCAB:
        return torch.randint(0, _VOCAB[name], (n, *shape), generator=g)
    return torch.randn(n, *shape, generator=g)


def _masked(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with a dead row and a dead column in every layer, random BN statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / 2)
                m.weight[0] = 0.0
                if m.weight.shape[1] > 1:
                    m.weight[:, -1] = 0.0
            elif isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))  # type: ignore[union-attr]
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # type: ignore[union-attr]
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
    return model.eval()


def test_every_op_has_a_model() -> None:
    assert sorted(MODELS) == sorted(op.name for op in OPS)


def _ops_of(model: nn.Module) -> set[str]:
    gm = fx.symbolic_trace(model)
    return {op.name for n in gm.graph.nodes if (op := lookup(gm, n)) is not None}


@pytest.mark.parametrize("op", [op for op in OPS if op.in_bundle], ids=lambda op: op.name)
def test_bundle_op_prunes_exports_and_runs(op: Op, tmp_path: Path) -> None:
    model, shape = MODELS[op.name]()
    model = _masked(model)
    assert op.name in _ops_of(model) or op.name == "gather"
    ids = _x(op.name, shape, seed=1) if op.name in _VOCAB else None
    result = prune(model, input_shape=shape, example_inputs=ids, require_csr=True, gather_inputs=op.name == "gather")
    if op.name == "gather":
        assert "gather" in _ops_of(result.model)
    res = export_csr(result.model, tmp_path / "m.csr", input_shape=shape, reference=result.masked, example_inputs=ids)
    x = _x(op.name, shape)
    got = torch.as_tensor(runtime.load(res.path)(x))
    with torch.no_grad():
        torch.testing.assert_close(got, result.masked(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", [op for op in OPS if not op.in_bundle], ids=lambda op: op.name)
def test_op_outside_the_bundle_prunes_but_is_refused_for_csr(op: Op, tmp_path: Path) -> None:
    model, shape = MODELS[op.name]()
    model = _masked(model)
    x = _x(op.name, shape)
    result = prune(model, example_inputs=x)  # prune alone accepts it (the result exports to ONNX)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), result.masked(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UnsupportedOpError, match=op.not_in_bundle.split(";")[0]):
        prune(model, example_inputs=x, require_csr=True)
    if op.name in _VOCAB:
        return  # export_csr feeds float examples: an id model is refused by prune(require_csr=True) above
    with pytest.raises(ExportError, match=op.not_in_bundle.split(";")[0]):
        export_csr(result.model, tmp_path / "m.csr", input_shape=shape, reference=result.masked)


def test_softmax_over_the_batch_axis_keeps_its_channels_and_is_refused_for_csr() -> None:
    model, shape = _mlp(nn.ReLU(), nn.Softmax(dim=0))
    model = _masked(model)
    result = prune(model, input_shape=shape)
    assert result.report.layers[-1].units_after == 3  # mixing across the batch: nothing there is folded
    with pytest.raises(UnsupportedOpError, match="other than the batch"):
        prune(model, input_shape=shape, require_csr=True)


def test_log_softmax_pins_its_inputs() -> None:
    model, shape = _mlp(nn.ReLU(), nn.LogSoftmax(dim=1))
    result = prune(_masked(model), input_shape=shape)
    assert result.report.layers[-1].units_after == 3  # the normalised outputs all stay, dead row included
