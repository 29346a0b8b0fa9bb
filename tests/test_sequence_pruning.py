"""Sequence models through prune and ONNX export: a small ViT, a text CNN over int64 ids, an LSTM over image rows,
and a model with an op the pruner does not know (a barrier). Plain torch models with zeroed weights: what masking
gives the pruner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import fx, nn

from svdcompress.errors import ExportError, UnsupportedOpError
from svdcompress.export import export_model
from svdcompress.pruning.structural import PruneResult, prune

torch.set_num_threads(1)

TOL = 1e-4


def _sparsify(model: nn.Module, seed: int, density: float = 0.1) -> nn.Module:
    """Zero ~90% of every weight matrix (what masking leaves), at random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "pos" not in name and "cls" not in name:
                p.mul_((torch.rand(p.shape, generator=g) < density).to(p.dtype))
    return model.eval()


def _assert_exact(res: PruneResult, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref, got = res.masked(x), res.model(x)
    scale = max(1.0, float(ref.abs().max()))
    assert float((ref - got).abs().max()) <= TOL * scale


# -- a small ViT for 28x28 images: 4x4 patches, class token, position embedding, 2 pre-norm blocks


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        att = att.softmax(dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, approximate: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 50, dim) * 0.1)
        self.blocks = nn.Sequential(Block(dim, heads, hidden, "none"), Block(dim, heads, hidden, "tanh"))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, 49, dim)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _vit() -> nn.Module:
    torch.manual_seed(0)
    model = _sparsify(TinyViT(), seed=1)
    with torch.no_grad():
        for blk in model.blocks:  # type: ignore[union-attr]
            blk.fc1.weight[:24] = 0.0  # dead hidden units: rows of fc1 (their bias folds into fc2)
            blk.fc2.weight[:, 40:] = 0.0  # hidden units fc2 never reads
        model.blocks[0].attn.proj.weight[:, 8:16] = 0.0  # head 1 of block 0: its output is never read
        model.blocks[1].attn.qkv.weight[64 + 16 : 64 + 24] = 0.0  # head 2 of block 1: its values are zero
        model.blocks[1].attn.qkv.bias[64 + 16 : 64 + 24] = 0.0
    return model


# -- a text classifier over int64 token ids


class TextCNN(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 24, c1: int = 32, c2: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.conv1 = nn.Conv1d(dim, c1, 3, padding=1)
        self.conv2 = nn.Conv1d(c1, c2, 3)
        self.fc = nn.Linear(c2, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids).transpose(1, 2)  # (B, dim, L)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.amax(dim=2))  # max over time


def _text() -> nn.Module:
    torch.manual_seed(0)
    model = TextCNN()
    _sparsify(model, seed=2, density=0.3)
    with torch.no_grad():
        model.emb.weight[:, :6] = 0.0  # embedding dims no word uses
        model.conv1.weight[:8] = 0.0  # dead filters
        model.conv2.weight[:6] = 0.0
        model.fc.weight[:, -4:] = 0.0
    return model.eval()


def _ids(n: int = 6, length: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(seed))


# -- an LSTM over the 28 rows of an image


class RowLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(28, 28)
        self.lstm = nn.LSTM(28, 64, batch_first=True)
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.pre(x.squeeze(1)))  # (B, 28, 64)
        return self.fc2(torch.relu(self.fc1(out[:, -1])))


def _lstm() -> nn.Module:
    torch.manual_seed(0)
    model = RowLSTM()
    _sparsify(model, seed=3)
    with torch.no_grad():
        model.fc1.weight[:16] = 0.0  # dead hidden units after the LSTM
        model.lstm.weight_hh_l0[:, 40:] = 0.0  # LSTM units 40.. feed no gate of the recurrence
        model.fc1.weight[:, 52:] = 0.0  # ... and units 52.. not fc1 either: they go
        model.lstm.weight_ih_l0[:, :3] = 0.0  # input features the LSTM never reads: rows of `pre` go
    return model.eval()


def test_vit_prunes_dead_mlp_units_exactly() -> None:
    model = _vit()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    res = prune(model, example_inputs=x)
    _assert_exact(res, torch.randn(3, 1, 28, 28))
    rows = {r.name: r for r in res.report.layers}
    for i in (0, 1):
        assert rows[f"blocks.{i}.fc1"].units_before == 64
        assert rows[f"blocks.{i}.fc1"].units_after <= 64 - 24 - 1  # the dead rows and the unread ones go
        assert rows[f"blocks.{i}.attn.qkv"].units_after == 96 - 24  # one dead head: its q, k, v rows go
        assert rows[f"blocks.{i}.attn.proj"].weights_after == 32 * 24  # ... and its projection columns
    notes = "\n".join(res.report.notes)
    assert "removed 1 of 4 attention heads (1)" in notes and "removed 1 of 4 attention heads (2)" in notes
    assert res.report.params_after < res.report.params_before


class MixedHeads(nn.Module):
    """Attention whose heads are mixed (a softmax over the head axis): a dead head cannot simply go."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, 16)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, c // 4).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1)).softmax(dim=1)  # over the heads
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, c)).mean(1)


def test_heads_mixed_with_each_other_are_kept_with_a_note() -> None:
    torch.manual_seed(0)
    model = MixedHeads().eval()
    with torch.no_grad():
        model.proj.weight[:, 4:8] = 0.0  # head 1 unread by proj, but its scores shift the others' softmax
    res = prune(model, example_inputs=torch.randn(4, 6, 16))
    _assert_exact(res, torch.randn(3, 6, 16))
    assert {r.name: r.units_after for r in res.report.layers}["qkv"] == 48
    assert any("kept dead attention heads" in n for n in res.report.notes), res.report.notes


def test_text_cnn_over_int64_ids_prunes_exactly() -> None:
    res = prune(_text(), example_inputs=_ids())
    _assert_exact(res, _ids(seed=5))
    rows = {r.name: r for r in res.report.layers}
    assert rows["emb"].units_after <= 24 - 6
    assert rows["conv1"].units_after <= 32 - 8
    assert rows["conv2"].units_after <= 32 - 6
    assert res.report.params_after < res.report.params_before


def test_lstm_drops_unread_hidden_units_and_input_features() -> None:
    res = prune(_lstm(), input_shape=(1, 28, 28))
    _assert_exact(res, torch.randn(3, 1, 28, 28))
    rows = {r.name: r for r in res.report.layers}
    assert rows["fc1"].units_after <= 48 - 16
    assert rows["lstm"].units_before == 64 and rows["lstm"].units_after <= 52
    assert rows["pre"].units_after == 28 - 3
    assert res.report.params_after < res.report.params_before


class Recurrent(nn.Module):
    """A GRU's or an LSTM's last hidden state h_n (optionally with the cell state c_n) into a Linear."""

    def __init__(self, kind: str, use_cell: bool = False) -> None:
        super().__init__()
        self.kind, self.use_cell = kind, use_cell
        self.rnn = nn.LSTM(6, 10) if kind == "lstm" else nn.GRU(6, 10) if kind == "gru" else nn.RNN(6, 10)
        self.fc = nn.Linear(20 if use_cell else 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, 6), seq-first inside
        out = self.rnn(x.transpose(0, 1))
        if self.kind == "lstm":
            h, c = out[1]
            return self.fc(torch.cat([h[-1], c[-1]], dim=1) if self.use_cell else h[-1])
        return self.fc(out[1][-1])


@pytest.mark.parametrize(("kind", "use_cell"), [("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)])
def test_recurrent_units_nothing_reads_go_unless_the_cell_state_is_used(kind: str, use_cell: bool) -> None:
    torch.manual_seed(0)
    model = _sparsify(Recurrent(kind, use_cell), seed=5, density=0.6)
    with torch.no_grad():
        model.rnn.weight_hh_l0[:, 7:] = 0.0  # units 7..9: no recurrence reads them
        model.fc.weight[:, 7:10] = 0.0  # ... nor fc (h_n part)
    x = torch.randn(4, 5, 6)
    res = prune(model, example_inputs=x)
    _assert_exact(res, torch.randn(3, 5, 6))
    units = {r.name: r.units_after for r in res.report.layers}["rnn"]
    assert units == (10 if use_cell else 7), res.report.format_table()


# -- ONNX export: integer inputs, a dynamic sequence axis, checked in ONNX Runtime


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    from svdcompress.export.onnx import ort_session

    feed = x.numpy() if not x.is_floating_point() else x.float().numpy()
    (y,) = ort_session(path).run(None, {"input": feed})
    return torch.from_numpy(y)


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= TOL * max(1.0, float(ref.abs().max()))


def test_vit_and_lstm_export_to_onnx_and_match_in_onnx_runtime(tmp_path: Path) -> None:
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    for name, model in (("vit", _vit()), ("lstm", _lstm())):
        res = export_model(model, "onnx", tmp_path / f"{name}.onnx", input_shape=(1, 28, 28))
        assert res.dynamic_axes == {0: "batch"}  # images: only the batch is free
        with torch.no_grad():
            _close(_ort(res.path, x), model(x))


def test_text_cnn_exports_int64_ids_with_a_dynamic_sequence_axis(tmp_path: Path) -> None:
    model = _text()
    res = export_model(model, "onnx", tmp_path / "t.onnx", example_inputs=_ids())
    assert res.dynamic_axes == {0: "batch", 1: "sequence"}
    for length in (40, 17, 64):  # any length the convolutions accept
        ids = _ids(n=3, length=length, seed=length)
        with torch.no_grad():
            _close(_ort(res.path, ids), model(ids))
    # the same from a shape and a dtype, as the CLI gives them
    res2 = export_model(model, "onnx-sparse", tmp_path / "t2.onnx", input_shape=(40,), input_dtype="int64")
    assert res2.dynamic_axes == {0: "batch", 1: "sequence"}


def test_csr_export_of_a_gru_names_the_node(tmp_path: Path) -> None:
    # ViTs, text CNNs and one-layer LSTMs run in the CSR runtime (tests/test_sequence_csr.py); GRUs do not yet
    with pytest.raises(ExportError, match=r"node '_0' \(call_module '0' GRU\) cannot be written to a CSR bundle"):
        export_model(nn.Sequential(nn.GRU(28, 8)), "csr", tmp_path / "g.csr", input_shape=(5, 28))
    assert not list(tmp_path.iterdir())


# -- an op the pruner does not know: a barrier


def mystery(x: torch.Tensor) -> torch.Tensor:
    """Mixes channels (a flip and a roll along dim 1): tying channel c to channel c would be wrong here."""
    return torch.flip(x, [1]) * 0.5 + torch.roll(x, 1, 1)


fx.wrap("mystery")  # traced as one call_function the registry does not know


class WithBarrier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(mystery(torch.relu(self.fc1(x))))))


def _with_barrier() -> nn.Module:
    torch.manual_seed(0)
    model = _sparsify(WithBarrier(), seed=4, density=0.5)
    with torch.no_grad():
        model.fc1.weight[:5] = 0.0  # dead, but they reach the barrier: kept
        model.fc2.weight[:6] = 0.0  # dead, after the barrier: removed
    return model.eval()


def test_unknown_op_is_a_barrier_and_the_rest_is_pruned(tmp_path: Path) -> None:
    model = _with_barrier()
    res = prune(model, input_shape=(12,))
    _assert_exact(res, torch.randn(5, 12))
    rows = {r.name: r for r in res.report.layers}
    assert rows["fc1"].units_after == 16  # what reaches the barrier stays
    assert rows["fc2"].units_after <= 10  # behind it, the dead units go
    notes = "\n".join(res.report.notes)
    assert "barrier at node 'mystery' (call_function" in notes and "16 channel(s) that reach it are kept" in notes
    assert "fc1: kept 5 dead unit(s)" in notes and "barrier node 'mystery'" in notes
    with pytest.raises(UnsupportedOpError, match=r"node 'mystery' .* cannot be written to a CSR bundle"):
        prune(model, input_shape=(12,), require_csr=True)
    out = export_model(model, "onnx", tmp_path / "b.onnx", input_shape=(12,))
    x = torch.randn(3, 12)
    with torch.no_grad():
        _close(_ort(out.path, x), model(x))


# -- where channels go: permute / reshape / cat / index placements, each pruned exactly


class Placement(nn.Module):
    """(N, L, 8) -> Linear(8, 16) -> [placement] -> Linear(16 or 32, 6) -> mean over what is left."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(32 if kind == "cat_channels" else 16, 6)
        self.gamma = nn.Parameter(torch.linspace(0.5, 2.0, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))  # (N, L, 16)
        k = self.kind
        if k == "permute_conv":
            h = self.conv(h.permute(0, 2, 1)).permute(0, 2, 1)
        elif k == "transpose_conv":
            h = torch.relu(self.conv(h.transpose(1, 2))).transpose(-1, -2).contiguous()
        elif k == "reshape_time":  # merge batch and time: channels stay last
            n, length, c = h.shape
            h = h.reshape(n * length, c).relu().reshape(n, length, -1)
        elif k == "cat_time":
            h = torch.cat([h, torch.relu(self.b(x))], dim=1)  # channels tied across the operands
        elif k == "cat_channels":
            h = torch.cat([h, torch.relu(self.b(x))], dim=-1)
        elif k == "split_heads":  # the channel axis split in two: kept
            n, length, c = h.shape
            h = h.view(n, length, 4, c // 4).transpose(1, 2).softmax(-1).transpose(1, 2).reshape(n, length, c)
        elif k == "scale_by_size":  # the channel count is read as a number: the channels must stay
            h = h * h.shape[-1] ** -0.5
        elif k == "max_values":  # max over time, the (values, indices) form
            h = h - h.max(dim=1, keepdim=True).values + torch.max(h, 1)[0].unsqueeze(1)
        elif k == "sum_time":  # a bag of words: channel by channel, scaled by the length
            h = h.sum(1, keepdim=True) + h  # a dead unit's zero survives the sum; another constant does not
        elif k == "layer_scale":  # a (C,) parameter times the channels: they stay
            h = h * self.gamma
        elif k == "index_last":
            h = h[:, -1:, :] + h[:, :1]
        elif k == "unsqueeze_expand":
            h = h.unsqueeze(1).expand(-1, 2, -1, -1).amax(1)
        return self.head(h).mean(1)


PLACEMENTS = (
    "permute_conv",
    "transpose_conv",
    "reshape_time",
    "cat_time",
    "cat_channels",
    "split_heads",
    "scale_by_size",
    "index_last",
    "unsqueeze_expand",
    "max_values",
    "sum_time",
    "layer_scale",
)


@pytest.mark.parametrize("kind", PLACEMENTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_channel_placements_prune_exactly(kind: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = _sparsify(Placement(kind), seed=seed, density=0.4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dead = torch.randperm(16, generator=g)[:5]
        model.a.weight[dead] = 0.0  # dead units of the first layer
        model.a.bias[dead[:2]] = -1.0  # some with a zero constant after ReLU
        if kind == "cat_time":  # a channel of `a` is also a channel of `b` there: it goes when nothing reads it
            model.head.weight[:, dead] = 0.0
    x = torch.randn(4, 7, 8, generator=g)
    res = prune(model, example_inputs=x)
    _assert_exact(res, torch.randn(3, 7, 8, generator=g))
    a = {r.name: r for r in res.report.layers}["a"]
    if kind in ("split_heads", "scale_by_size", "layer_scale"):
        assert a.units_after == 16, res.report.notes  # softmax over a split channel axis, a size read: kept
    else:
        assert a.units_after < 16, res.report.format_table()


# -- the CLI: --input-dtype int64 with --input-shape giving the sequence length


class SvdoText(nn.Module):
    """Token ids -> nn.Embedding -> mean over time -> LinearSVDO: a checkpoint the CLI reads (it has an SVDO layer)."""

    def __init__(self) -> None:
        super().__init__()
        from svdcompress.nn.layers import LinearSVDO

        self.emb = nn.Embedding(50, 12)
        self.fc = LinearSVDO(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


def test_cli_exports_an_int64_model_with_a_dynamic_sequence(tmp_path: Path) -> None:
    import sys
    import types

    from click.testing import CliRunner

    from svdcompress.cli import main

    factories = types.ModuleType("svdcompress_test_sequence_factories")
    factories.svdo_text = SvdoText  # type: ignore[attr-defined]
    sys.modules[factories.__name__] = factories
    torch.manual_seed(0)
    net = SvdoText()
    with torch.no_grad():
        net.fc.log_sigma2.copy_(torch.where(torch.rand(3, 12) < 0.8, 8.0, -8.0))  # ~80% noise
    torch.save(net.state_dict(), tmp_path / "text.pt")
    args = ["export", str(tmp_path / "text.pt"), "--model", f"{factories.__name__}:svdo_text", "-o"]
    res = CliRunner().invoke(main, [*args, str(tmp_path / "t.onnx"), "--input-shape", "40", "--input-dtype", "int64"])
    assert res.exit_code == 0, res.output
    assert "dynamic input axes: 0 (batch), 1 (sequence)" in res.output
    ids = _ids(n=2, length=23)
    ids = ids % 50
    with torch.no_grad():
        _close(_ort(tmp_path / "t.onnx", ids), _masked_svdo(net)(ids))
    # prune: the same ids trace it, and the .pt2 program takes int64 ids
    from svdcompress.pruning.pt2 import load_pruned

    args[0] = "prune"
    res = CliRunner().invoke(main, [*args, str(tmp_path / "t.pt2"), "--input-shape", "40", "--input-dtype", "int64"])
    assert res.exit_code == 0, res.output
    ids = _ids(n=3, length=40) % 50
    with torch.no_grad():
        _close(load_pruned(tmp_path / "t.pt2")(ids), _masked_svdo(net)(ids))
    # csr: the bundle declares int64 ids and runs them in the runtime
    from svdcompress import runtime

    args[0] = "export"
    res = CliRunner().invoke(
        main, [*args, str(tmp_path / "t.csr"), "--format", "csr", "--input-shape", "40", "--input-dtype", "int64"]
    )
    assert res.exit_code == 0, res.output
    model = runtime.load(tmp_path / "t.csr")
    assert model.manifest["input_dtype"] == "int64"
    with torch.no_grad():
        _close(torch.from_numpy(model(ids.numpy())), _masked_svdo(net)(ids))


def _masked_svdo(net: nn.Module) -> nn.Module:
    from svdcompress.pruning.masking import mask_model

    return mask_model(net, 3.0).eval()


# -- random chains of sequence ops (hypothesis): prune is exact wherever the channels go

_STEPS = (
    "linear",  # Linear over the last dim
    "conv",  # permute to (N, C, L), Conv1d, permute back
    "cat_time",  # concatenated with itself (through a Linear) along time
    "cat_channels",  # ... along the channels
    "merge_batch",  # (N, L, C) -> (N * L, C) -> back
    "layernorm",  # over the channels: they stay
    "softmax_time",  # over time: channel by channel
    "max_sub",  # minus the max over time
    "heads",  # the channel axis split into 2 and merged back
    "mystery",  # a barrier
    "index",  # x[:, 1:] (time slice)
    "lstm",  # batch-first LSTM, its output sequence
)


class Chain(nn.Module):
    def __init__(self, steps: list[str], widths: list[int]) -> None:
        super().__init__()
        self.steps = steps
        self.mods = nn.ModuleDict()
        c = 6
        for i, (step, w) in enumerate(zip(steps, widths, strict=True)):
            if step in ("linear", "cat_channels"):
                self.mods[str(i)] = nn.Linear(c, w)
                c = c + w if step == "cat_channels" else w
            elif step == "cat_time":
                self.mods[str(i)] = nn.Linear(c, c)
            elif step == "conv":
                self.mods[str(i)] = nn.Conv1d(c, w, 3, padding=1)
                c = w
            elif step == "lstm":
                self.mods[str(i)] = nn.LSTM(c, w, batch_first=True)
                c = w
            elif step == "layernorm":
                self.mods[str(i)] = nn.LayerNorm(c)
            elif step == "heads" and c % 2:
                self.steps = [*self.steps[:i], "linear_even", *self.steps[i + 1 :]]
                self.mods[str(i)] = nn.Linear(c, c + 1)
                c += 1
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, 6)
        for i, step in enumerate(self.steps):
            m = self.mods[str(i)] if str(i) in self.mods else None  # noqa: SIM401  # nn.ModuleDict has no get()
            if step in ("linear", "linear_even"):
                x = torch.relu(m(x))  # type: ignore[misc]
            elif step == "conv":
                x = torch.relu(m(x.permute(0, 2, 1))).permute(0, 2, 1)  # type: ignore[misc]
            elif step == "cat_time":
                x = torch.cat([x, torch.tanh(m(x))], dim=1)  # type: ignore[misc]
            elif step == "cat_channels":
                x = torch.cat([x, torch.relu(m(x))], dim=-1)  # type: ignore[misc]
            elif step == "merge_batch":
                n, length = x.shape[0], x.shape[1]
                x = x.reshape(n * length, -1).sigmoid().reshape(n, length, -1)
            elif step == "layernorm":
                x = m(x)  # type: ignore[misc]
            elif step == "softmax_time":
                x = x.softmax(dim=1)
            elif step == "max_sub":
                x = x - x.max(dim=1, keepdim=True).values
            elif step == "heads":
                n, length = x.shape[0], x.shape[1]
                x = x.view(n, length, 2, -1).transpose(1, 2).softmax(-1).transpose(1, 2).reshape(n, length, -1)
            elif step == "mystery":
                x = mystery(x.transpose(1, 2)).transpose(1, 2)
            elif step == "index":
                x = x[:, 1:]
            elif step == "lstm":
                x, _ = m(x)  # type: ignore[misc]
        return self.head(x).amax(1)


@settings()  # the profile's (tests/conftest.py)
@given(
    steps=st.lists(st.sampled_from(_STEPS), min_size=1, max_size=5),
    widths=st.lists(st.integers(2, 9), min_size=5, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_random_sequence_chains_prune_exactly(steps: list[str], widths: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    model = _sparsify(Chain(steps, widths[: len(steps)]), seed=seed, density=0.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                m.weight[torch.rand(m.weight.shape[0], generator=g) < 0.3] = 0.0  # dead rows
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.LSTM):  # hidden units no gate reads
                m.weight_hh_l0[:, torch.rand(m.hidden_size, generator=g) < 0.4] = 0.0
    x = torch.randn(3, 8, 6, generator=g)  # 8 steps: five time slices leave 3
    res = prune(model, example_inputs=x)
    _assert_exact(res, 3 * torch.randn(4, 8, 6, generator=g))  # inputs the pruner never saw
    assert res.report.params_after <= res.report.params_before
    assert ("mystery" in steps) == any(n.startswith("barrier at node 'mystery'") for n in res.report.notes)
