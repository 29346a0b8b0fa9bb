"""Sequence models through prune and ONNX export: a small ViT, a text CNN over int64 ids, an LSTM over image rows,
and a model with an op the pruner does not know (a barrier). Plain torch models with zeroed weights: what masking
gives the pruner."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svdcompress.pruning.structural import PruneResult, prune

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
        assert rows[f"blocks.{i}.attn.qkv"].units_after == 96  # split into heads: kept
    assert res.report.params_after < res.report.params_before


def test_text_cnn_over_int64_ids_prunes_exactly() -> None:
    res = prune(_text(), example_inputs=_ids())
    _assert_exact(res, _ids(seed=5))
    rows = {r.name: r for r in res.report.layers}
    assert rows["emb"].units_after <= 24 - 6
    assert rows["conv1"].units_after <= 32 - 8
    assert rows["conv2"].units_after <= 32 - 6
    assert res.report.params_after < res.report.params_before


def test_lstm_is_kept_whole_and_the_rest_is_pruned() -> None:
    res = prune(_lstm(), input_shape=(1, 28, 28))
    _assert_exact(res, torch.randn(3, 1, 28, 28))
    rows = {r.name: r for r in res.report.layers}
    assert rows["fc1"].units_after <= 48 - 16
    assert any("lstm: LSTM is kept whole" in n for n in res.report.notes), res.report.notes
