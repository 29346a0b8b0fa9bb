"""Conv1dSVDO, EmbeddingSVDO and LSTMSVDO: sparsify, training, one weight sample per sequence, analyze (live, from
a state_dict, from an svdcompress checkpoint) and mask_model, exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import svdcompress
from svdcompress import UnsupportedOpError
from svdcompress.checkpoint.formats import save_checkpoint
from svdcompress.nn.layers import ELBOLoss, example_noise, sparsify, standard_normal, svdo_layers
from svdcompress.nn.sequence import LSTMSVDO, Conv1dSVDO, EmbeddingSVDO

VOCAB, CLASSES, SEQ = 30, 3, 7


class TextCNN(nn.Module):
    """Embedding over token ids, two Conv1d, max over time, Linear (the issue's text classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.conv1 = nn.Conv1d(8, 12, 3, padding=1)
        self.conv2 = nn.Conv1d(12, 12, 3, dilation=2, padding=2)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx).transpose(1, 2)  # (B, dim, T)
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        return self.fc(h.amax(dim=2))


class TextLSTM(nn.Module):
    """Embedding, a two-layer batch_first LSTM, the last step, Linear."""

    def __init__(self, batch_first: bool = True, num_layers: int = 2) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(VOCAB, 6)
        self.lstm = nn.LSTM(6, 10, num_layers=num_layers, batch_first=batch_first)
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx if self.batch_first else idx.t())
        out, _ = self.lstm(h)
        return self.fc(out[:, -1] if self.batch_first else out[-1])


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    return x, (x[:, 0] % CLASSES)  # the label is in the first token: the LSTM must carry it to the end


def _train(net: nn.Module, steps: int = 30) -> tuple[float, float]:
    """A few Adam steps of the ELBO; the first and last loss."""
    x, y = _data()
    torch.manual_seed(1)
    loss_fn = ELBOLoss(net, train_size=5000)  # as if the 64 examples were a batch of a larger set
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    net.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def _make_noisy(net: nn.Module) -> None:
    """Half the weights of every layer become noise (log σ² = 5), so masks and dead units are real."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, layer in svdo_layers(net):
            for _, w, s2 in layer.svdo_pairs():
                s2.copy_(torch.where(torch.rand(w.shape, generator=g) < 0.5, 5.0, -12.0))
        emb = net.get_submodule("emb")
        assert isinstance(emb, EmbeddingSVDO)
        emb.log_sigma2[3:6] = 8.0  # three dead words


@pytest.mark.parametrize("factory", [TextCNN, TextLSTM, lambda: TextLSTM(batch_first=False, num_layers=1)])
def test_sequence_layers_train_analyze_and_mask_exactly(factory: type[nn.Module], tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = sparsify(factory())
    kinds = {name: type(m) for name, m in svdo_layers(net)}
    assert kinds["emb"] is EmbeddingSVDO
    assert (kinds.get("conv1") is Conv1dSVDO) or (kinds.get("lstm") is LSTMSVDO)
    la_before = {name: [s2 - torch.log(w**2 + 1e-8) for _, w, s2 in m.svdo_pairs()] for name, m in svdo_layers(net)}
    la_before = {k: [t.detach().clone() for t in v] for k, v in la_before.items()}

    first, last = _train(net)
    assert last < 0.7 * first, (first, last)
    for name, m in svdo_layers(net):  # every layer's log α moved, in every weight matrix
        for before, (_, w, s2) in zip(la_before[name], m.svdo_pairs(), strict=True):
            assert (before - (s2 - torch.log(w**2 + 1e-8))).abs().max() > 0.05, name

    _make_noisy(net)
    x, _ = _data(8)
    net.eval()
    masked = svdcompress.mask_model(net)
    with torch.no_grad():
        assert torch.equal(masked(x), net(x)), "masked model != SVDO eval output"
    plain = {name: type(m) for name, m in masked.named_modules() if name in kinds}
    assert plain["emb"] is nn.Embedding
    assert plain.get("conv1", nn.Conv1d) is nn.Conv1d and plain.get("lstm", nn.LSTM) is nn.LSTM
    assert not any(n.startswith("log_sigma2") or ".log_sigma2" in n for n, _ in masked.named_parameters())

    # analyze: the live module, its state_dict and an svdcompress checkpoint give the same rows
    expected = {}
    for name, m in svdo_layers(net):
        for pname, keep in m.masks().items():
            expected[name if pname == "weight" else f"{name}.{pname}"] = int(keep.sum())
    live = svdcompress.analyze(net)
    assert {r.name: r.kept for r in live.layers} == expected
    kind = {r.name: r.kind for r in live.layers}
    assert kind["emb"] == "embedding"
    assert all(kind[n] == "lstm" for n in expected if ".weight_" in n)
    emb_row = next(r for r in live.layers if r.name == "emb")
    assert emb_row.dead_outputs >= 3 and emb_row.outputs == VOCAB  # the dead words
    from_sd = svdcompress.analyze(net.state_dict(), convention="svdcompress")  # a bare state_dict cannot say
    ckpt = save_checkpoint(tmp_path / "seq.pt", net, arch="test-seq")
    from_file = svdcompress.analyze(ckpt)
    for report in (from_sd, from_file):
        assert {r.name: r.kept for r in report.layers} == expected
        assert all(r.convention == "svdcompress" for r in report.layers if ".weight_" in r.name)
    assert from_file.to_dict()["total"]["kept"] == sum(expected.values())


def test_lstm_uses_one_weight_sample_per_sequence_at_every_step() -> None:
    torch.manual_seed(0)
    lstm = LSTMSVDO(4, 5, log_sigma2_init=-3.0).train()
    x = torch.randn(6, 3, 4)  # (T, B, in)
    seeds = torch.tensor([11, 12, 13])
    with example_noise(seeds):
        out, _ = lstm(x)
    # Rebuild sequence 1's weight sample from the same seeds and run it through a plain nn.LSTM: equal at every
    # step, so one sample served all six steps (fresh noise per step would not match).
    with example_noise(seeds):
        eps_ih = standard_normal((3, 20, 4), lstm.weight_ih_l0, "ih")
        eps_hh = standard_normal((3, 20, 5), lstm.weight_hh_l0, "hh")
    ref = nn.LSTM(4, 5)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(lstm.weight_ih_l0 + torch.exp(0.5 * lstm.log_sigma2_ih_l0) * eps_ih[1])
        ref.weight_hh_l0.copy_(lstm.weight_hh_l0 + torch.exp(0.5 * lstm.log_sigma2_hh_l0) * eps_hh[1])
        ref.bias_ih_l0.copy_(lstm.bias_ih_l0)
        ref.bias_hh_l0.copy_(lstm.bias_hh_l0)
        ref_out, _ = ref(x[:, 1:2])
    torch.testing.assert_close(out[:, 1:2], ref_out, rtol=1e-5, atol=1e-6)
    # The sample belongs to the sequence, not to its position in the batch: alone it gets the same output.
    with example_noise(seeds[1:2]):
        alone, _ = lstm(x[:, 1:2])
    torch.testing.assert_close(alone, out[:, 1:2], rtol=1e-5, atol=1e-6)
    # Different sequences get different samples.
    with example_noise(torch.tensor([11, 11, 13])):
        twin, _ = lstm(x[:, :1].expand(6, 3, 4))
    assert torch.equal(twin[:, 0], twin[:, 1]) and not torch.allclose(twin[:, 0], twin[:, 2])


def test_lstm_eval_is_the_masked_plain_lstm_unbatched_and_with_state() -> None:
    torch.manual_seed(0)
    lstm = LSTMSVDO(3, 4, num_layers=2, batch_first=True).eval()
    with torch.no_grad():
        for _, w, s2 in lstm.svdo_pairs():
            s2.copy_(torch.where(torch.rand_like(w) < 0.4, 6.0, -12.0))
    plain = svdcompress.mask_model(lstm)
    assert isinstance(plain, nn.LSTM) and plain.num_layers == 2 and plain.batch_first
    h0 = (torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        a, (ha, ca) = lstm(x, h0)
        b, (hb, cb) = plain(x, h0)
        assert torch.equal(a, b) and torch.equal(ha, hb) and torch.equal(ca, cb)
        u, _ = lstm(x[0])
        v, _ = plain(x[0])
        assert torch.equal(u, v) and u.shape == (5, 4)
    assert int((plain.weight_hh_l1 == 0).sum()) >= int((~lstm.masks()["weight_hh_l1"]).sum())


def test_sparsify_refuses_what_it_cannot_convert_and_says_why() -> None:
    holder = nn.Module()
    holder.rnn = nn.LSTM(3, 4, bidirectional=True)
    with pytest.raises(UnsupportedOpError, match=r"LSTM 'rnn' has bidirectional=True.*bidirectional=False"):
        sparsify(holder)
    holder = nn.Module()
    holder.rnn = nn.LSTM(3, 4, proj_size=2)
    with pytest.raises(UnsupportedOpError, match="proj_size=2"):
        sparsify(holder)
    holder = nn.Module()
    holder.emb = nn.Embedding(5, 3, max_norm=1.0)
    with pytest.raises(UnsupportedOpError, match=r"Embedding 'emb' has max_norm=1\.0"):
        sparsify(holder)
    holder = nn.Module()
    holder.conv = nn.Conv1d(2, 2, 3, padding="same")
    with pytest.raises(UnsupportedOpError, match=r"Conv1d 'conv'.*padding=N"):
        sparsify(holder)


def test_sparsify_keeps_the_function_of_sequence_layers() -> None:
    torch.manual_seed(0)
    for factory in (TextCNN, TextLSTM):
        plain = factory().eval()
        x, _ = _data(4)
        with torch.no_grad():
            ref = plain(x)
            exact = sparsify(copy.deepcopy(plain), log_sigma2_init=-40.0).eval()
            torch.testing.assert_close(exact(x), ref, rtol=1e-5, atol=1e-6)


class RowLSTM(nn.Module):
    """The issue's LSTM over the rows of an image: nn.LSTM(28, ...) on (batch, 28, 28), last step, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(28, 12, batch_first=True)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.squeeze(1))
        return self.fc(out[:, -1])


def test_tune_sweeps_lstm_weight_matrices(tmp_path: Path) -> None:
    """tune masks each LSTM matrix in place (lstm.weight_ih_l0 is a parameter of module lstm) and its pick is
    exactly mask_model's."""
    torch.manual_seed(0)
    net = sparsify(RowLSTM())
    _make_noisy_lstm(net)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = net.eval()(x).argmax(1)
    data = tmp_path / "rows.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    result = svdcompress.tune(net, str(data), max_drop=50.0)
    masked = svdcompress.mask_model(net, result.threshold)
    assert isinstance(masked.lstm, nn.LSTM)
    report = svdcompress.analyze(net, threshold=result.threshold)
    assert result.chosen.kept == report.to_dict()["total"]["kept"]


def _make_noisy_lstm(net: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, layer in svdo_layers(net):
            for _, w, s2 in layer.svdo_pairs():
                s2.copy_(torch.where(torch.rand(w.shape, generator=g) < 0.5, 5.0, -12.0))


def test_embedding_padding_is_not_noised_and_dropout_lstm_masks_quietly() -> None:
    emb = EmbeddingSVDO(6, 3, padding_idx=0, log_sigma2_init=0.0).train()
    out = emb(torch.tensor([[0, 2, 0]]))
    assert torch.equal(out[0, 0], torch.zeros(3)) and torch.equal(out[0, 2], torch.zeros(3))
    assert not torch.equal(out[0, 1], emb.weight[2])  # a word is noised
    holder = nn.Module()
    holder.rnn = nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    sparsify(holder)
    x = torch.randn(5, 2, 3)
    holder.eval()
    masked = svdcompress.mask_model(holder)
    with torch.no_grad():
        assert torch.equal(masked.rnn(x)[0], holder.rnn(x)[0])
    assert masked.rnn.dropout == 0.5
