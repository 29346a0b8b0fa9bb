"""Sequence models in the CSR runtime: a small ViT, a text CNN over int64 ids and an LSTM over image rows go prune →
CSR export → runtime and reproduce the masked model at batch 1 and 5; each op sequence models add (layer_norm,
matmul, softmax over any axis, gelu, transpose, reshape, indexing, cat, constants, broadcasting arithmetic,
reductions, embedding, lstm) is checked against torch on its own."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svdcompress import runtime
from svdcompress.errors import ExportError, InvalidInputError
from svdcompress.export import export_csr, export_model

torch.set_num_threads(1)


def _load_models() -> ModuleType:
    # tests/ is not a package and pytest runs with --import-mode=importlib: load the model builders by path.
    name = "svdcompress_sequence_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_sequence_pruning.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


_seq = _load_models()
_ids, _lstm, _text, _vit = _seq._ids, _seq._lstm, _seq._text, _seq._vit

TOL = 1e-4


def _close(got: np.ndarray, ref: torch.Tensor) -> None:
    assert got.shape == tuple(ref.shape)
    scale = max(1.0, float(ref.abs().max()))
    assert float(np.abs(got - ref.numpy()).max()) <= TOL * scale


@pytest.mark.parametrize("name", ["vit", "text", "lstm"])
def test_sequence_models_run_in_the_csr_runtime_exactly(name: str, tmp_path: Path) -> None:
    if name in ("vit", "lstm"):
        model = _vit() if name == "vit" else _lstm()
        res = export_model(model, "csr", tmp_path / "m.csr", input_shape=(1, 28, 28))
        x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    else:
        model = _text()
        res = export_model(model, "csr", tmp_path / "m.csr", example_inputs=_ids())
        x = _ids(n=5, seed=11)
    rt = runtime.load(res.path)
    assert rt.manifest["input_dtype"] == ("int64" if name == "text" else "float32")
    for batch in (1, 5):
        with torch.no_grad():
            _close(rt(x[:batch].numpy()), model(x[:batch]))
    # pruned: the bundle holds fewer weights than the model
    assert sum(rt.nnz.values()) < sum(int((p != 0).sum()) for p in model.parameters())


def test_a_sequence_model_is_safe_to_call_from_many_threads(tmp_path: Path) -> None:
    model = _vit()
    rt = runtime.load(export_model(model, "csr", tmp_path / "m.csr", input_shape=(1, 28, 28)).path)
    xs = [torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.no_grad():
        refs = [model(x) for x in xs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                _close(rt(xs[i].numpy()), refs[i])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_token_ids_are_checked_per_call(tmp_path: Path) -> None:
    rt = runtime.load(export_model(_text(), "csr", tmp_path / "m.csr", example_inputs=_ids()).path)
    with pytest.raises(InvalidInputError, match=r"token ids must be in 0\.\.99"):
        rt(np.full((2, 40), 100, np.int64))
    with pytest.raises(InvalidInputError, match=r"token ids must be in 0\.\.99"):
        rt(np.full((2, 40), -1, np.int64))
    with pytest.raises(InvalidInputError, match="takes int64 token ids, got float32"):
        rt(np.zeros((2, 40), np.float32))


# -- each op against torch


class _Fn(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor], **params: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            setattr(self, k, nn.Parameter(v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _r(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _attention(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    qkv = x.reshape(b, n, 3, 2, c // 6).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd): the batch on axis 1
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = ((q @ k.transpose(-2, -1)) * 0.5).softmax(dim=-1)
    return (att @ v).transpose(1, 2).reshape(b, n, c // 3)


class _Lstm(nn.Module):
    def __init__(self, batch_first: bool, bias: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.lstm = nn.LSTM(6, 5, batch_first=batch_first, bias=bias)
        with torch.no_grad():
            params = dict(self.lstm.named_parameters())
            params["weight_hh_l0"].mul_((torch.rand(20, 5) < 0.4).float())  # sparse recurrence
            params["weight_ih_l0"].mul_((torch.rand(20, 6) < 0.4).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 6)
        out: torch.Tensor
        if self.batch_first:
            out, _ = self.lstm(x)
            return out
        out, _ = self.lstm(x.transpose(0, 1))  # (T, N, 5): the batch on axis 1
        return out[-1]


OP_CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "layer_norm": (lambda: nn.LayerNorm(6), (4, 6)),
    "layer_norm_plain": (lambda: nn.LayerNorm(6, elementwise_affine=False, eps=1e-3), (3, 4, 6)),
    "linear_over_time": (lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), (4, 6)),
    "matmul": (lambda: _Fn(lambda m, x: x @ x.transpose(1, 2)), (4, 6)),
    "attention": (lambda: _Fn(_attention), (5, 12)),
    "softmax_1": (lambda: _Fn(lambda m, x: x.softmax(dim=1)), (4, 6)),
    "softmax_last": (lambda: _Fn(lambda m, x: F.softmax(x, dim=-1)), (3, 4, 6)),
    "log_softmax_2": (lambda: _Fn(lambda m, x: F.log_softmax(x, dim=2)), (3, 4, 6)),
    "gelu_erf": (lambda: nn.GELU(), (4, 6)),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), (4, 6)),
    "permute": (lambda: _Fn(lambda m, x: x.permute(0, 3, 1, 2)), (2, 3, 4)),
    "transpose": (lambda: _Fn(lambda m, x: x.transpose(1, 2)), (3, 5)),
    "flatten_2": (lambda: _Fn(lambda m, x: x.flatten(2)), (2, 3, 4)),
    "reshape_split": (lambda: _Fn(lambda m, x: x.reshape(x.shape[0], 4, 2, 3)), (4, 6)),
    "select": (lambda: _Fn(lambda m, x: x[:, 0]), (4, 6)),
    "select_last": (lambda: _Fn(lambda m, x: x[:, -1]), (4, 6)),
    "slice": (lambda: _Fn(lambda m, x: x[:, 1:5:2, ..., :3]), (6, 2, 5)),
    "torch_select": (lambda: _Fn(lambda m, x: torch.select(x, 2, 1)), (4, 6)),
    "cat_1": (lambda: _Fn(lambda m, x: torch.cat([x, x * 2.0], dim=1)), (4, 6)),
    "cat_last": (lambda: _Fn(lambda m, x: torch.cat([x, torch.relu(x)], dim=-1)), (4, 6)),
    "class_token": (
        lambda: _Fn(
            lambda m, x: torch.cat([m.cls.expand(x.shape[0], -1, -1), x], dim=1) + m.pos,
            cls=_r(1, 1, 6),
            pos=_r(1, 5, 6),
        ),
        (4, 6),
    ),
    "layer_scale": (lambda: _Fn(lambda m, x: x * m.gamma + m.beta, gamma=_r(6), beta=_r(6, seed=1)), (4, 6)),
    "add_broadcast": (lambda: _Fn(lambda m, x: x + x[:, :1]), (4, 6)),
    "scalars": (lambda: _Fn(lambda m, x: (2.0 - x) / 3.0 - 1.5 * x + x / (x * x + 1.0)), (4, 6)),
    "reduce_max": (lambda: _Fn(lambda m, x: x.amax(dim=2)), (3, 4, 6)),
    "reduce_mean_keep": (lambda: _Fn(lambda m, x: x.mean(dim=(1, 2), keepdim=True)), (3, 4, 6)),
    "reduce_sum": (lambda: _Fn(lambda m, x: torch.sum(x, -1)), (4, 6)),
    "reduce_min": (lambda: _Fn(lambda m, x: torch.amin(x, 1)), (4, 6)),
    "lstm_batch_first": (lambda: _Lstm(True), (7, 6)),
    "lstm_seq_first_no_bias": (lambda: _Lstm(False, bias=False), (7, 6)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3, padding=1, stride=2), nn.ReLU()), (3, 9)),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_op_matches_torch(case: str, seed: int, tmp_path: Path) -> None:
    make, shape = OP_CASES[case]
    torch.manual_seed(seed)
    model = make().eval()
    res = export_csr(model, tmp_path / "m.csr", input_shape=shape)
    rt = runtime.load(res.path)
    for batch in (1, 5):
        x = 3 * _r(batch, *shape, seed=seed + 10)
        with torch.no_grad():
            _close(rt(x.numpy()), model(x))


def test_embedding_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(20, 6, padding_idx=0)
    model = nn.Sequential(emb, nn.LayerNorm(6), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        emb.weight[:, :2] = 0.0  # sparse rows
    ids = torch.randint(0, 20, (4, 7), generator=torch.Generator().manual_seed(0))
    res = export_csr(model, tmp_path / "m.csr", input_shape=(7,), example_inputs=ids)
    rt = runtime.load(res.path)
    for batch in (1, 5):
        x = torch.randint(0, 20, (batch, 7), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            _close(rt(x.numpy()), model(x))
        with torch.no_grad():
            _close(rt(x).numpy(), model(x))  # torch int64 in, torch out


def test_what_the_lstm_op_cannot_run_is_refused_naming_the_node(tmp_path: Path) -> None:
    class HiddenState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 5, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h: torch.Tensor = self.rnn(x)[1][0][-1]  # h_n
            return h

    with pytest.raises(ExportError, match=r"node 'getitem' .*only the output sequence"):
        export_csr(HiddenState().eval(), tmp_path / "h.csr", input_shape=(7, 6))
    with pytest.raises(ExportError, match=r"node '_0' .*LSTM\) cannot .*one-layer unidirectional"):
        export_csr(nn.Sequential(nn.LSTM(6, 5, num_layers=2)).eval(), tmp_path / "d.csr", input_shape=(3, 6))
    assert not list(tmp_path.iterdir())
