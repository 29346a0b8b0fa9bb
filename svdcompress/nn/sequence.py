"""SVDO layers for sequence models: 1-D convolution, embedding, LSTM.

They follow :mod:`svdcompress.nn.layers`: θ is stored as ``weight`` (the LSTM: ``weight_ih_l{k}`` /
``weight_hh_l{k}``, as ``nn.LSTM`` names them), log σ² next to it (``log_sigma2``, ``log_sigma2_ih_l{k}``,
``log_sigma2_hh_l{k}``), log α = log σ² − log(θ² + 1e-8), a weight is kept where log α < threshold, the KL is the
paper's approximation, and in eval mode each layer computes deterministically with θ · mask: exactly what the
plain ``nn.Conv1d`` / ``nn.Embedding`` / ``nn.LSTM`` that :func:`svdcompress.mask_model` makes of it computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import DEFAULT_THRESHOLD
from ..checkpoint.conventions import keep_rule
from ..errors import InvalidInputError, UnsupportedOpError
from .layers import SVDOBase, SVDOModule, log_alpha_of, standard_normal

__all__ = ["LSTMSVDO", "Conv1dSVDO", "EmbeddingSVDO", "conv1d_from", "embedding_from", "lstm_from"]


class Conv1dSVDO(SVDOModule):
    """1-D convolution with a per-weight dropout rate (Molchanov, Ashukha, Vetrov, "Variational Dropout
    Sparsifies Deep Neural Networks", ICML 2017). ``weight`` is θ, (out, in/groups, k); training samples the
    pre-activations (local reparameterisation), one independent sample per output position."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        log_sigma2_init: float = -10.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (int(kernel_size),)
        self.stride = (int(stride),)
        self.padding = (int(padding),)
        self.dilation = (int(dilation),)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, int(kernel_size)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_svdo(log_sigma2_init, threshold)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv1d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv(x, self.masked_weight(), self.bias)
        mean = self._conv(x, self.weight, self.bias)  # (batch, out, length)
        var = self._conv(x * x, torch.exp(self.log_sigma2), None)
        return self._noisy(mean, var)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, threshold={self.threshold}"
        )


class EmbeddingSVDO(SVDOModule):
    """Embedding with a per-weight dropout rate: ``weight`` is θ, (num_embeddings, embedding_dim), one log σ² per
    entry (Lobacheva, Chirkova, Vetrov, "Bayesian Sparsification of Recurrent Neural Networks", 2017; the
    per-word view: Chirkova, Lobacheva, Vetrov, "Bayesian Compression for Natural Language Processing", EMNLP
    2018). A word whose whole row is noise is dead: its vector is zero after masking (``analyze`` counts it
    under "dead out"). A lookup is a product with a one-hot vector, so the local reparameterisation is exact:
    each token's vector is sampled as θ[w] + σ[w] · ε (the padding index, if any, is not noised)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        threshold: float = DEFAULT_THRESHOLD,
        log_sigma2_init: float = -10.0,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.padding_idx = padding_idx
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.bias = None
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()
        self._init_svdo(log_sigma2_init, threshold)

    def _lookup(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, w, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._lookup(idx, self.masked_weight())
        mean = self._lookup(idx, self.weight)
        std = self._lookup(idx, torch.exp(0.5 * self.log_sigma2))
        if self.padding_idx is not None:  # padding carries no word: no noise there (θ stays 0, as in nn.Embedding)
            std = std.masked_fill((idx == self.padding_idx).unsqueeze(-1), 0.0)
        return mean + std * standard_normal(tuple(mean.shape), mean, type(self).__name__)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, threshold={self.threshold}"


class LSTMSVDO(SVDOBase):
    """LSTM with a per-weight dropout rate on its input and recurrent weights (Lobacheva, Chirkova, Vetrov,
    "Bayesian Sparsification of Recurrent Neural Networks", ICML 2017 workshop on Learning to Generate Natural
    Language; arXiv:1708.00077).

    Parameters are named as in ``nn.LSTM`` (``weight_ih_l{k}`` (4H, in), ``weight_hh_l{k}`` (4H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}``; gates in PyTorch's order i, f, g, o), each weight with its
    ``log_sigma2_ih_l{k}`` / ``log_sigma2_hh_l{k}``. As in the paper, training draws ONE sample of the weights per
    sequence and uses it at every time step: the hidden state depends on the weights of all earlier steps, so
    sampling pre-activations afresh at each step (the local reparameterisation trick) would be a different
    model; the trick applies to the Linear, Conv and Embedding layers around it. The sample costs one
    (4H × in) and one (4H × H) noise matrix per sequence. Biases are deterministic. In eval mode the layer runs
    PyTorch's LSTM with θ · mask, exactly what the plain ``nn.LSTM`` of :func:`svdcompress.mask_model` computes.

    Single- and multi-layer, ``batch_first`` or not, unbatched (in, ) sequences, ``dropout`` between layers.
    Bidirectional LSTMs and ``proj_size`` are not supported.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        threshold: float = DEFAULT_THRESHOLD,
        log_sigma2_init: float = -10.0,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.threshold = float(threshold)
        k = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else hidden_size
            for kind, cols in (("ih", n_in), ("hh", hidden_size)):
                w = nn.Parameter(torch.empty(4 * hidden_size, cols).uniform_(-k, k))
                setattr(self, f"weight_{kind}_l{layer}", w)
                setattr(self, f"log_sigma2_{kind}_l{layer}", nn.Parameter(torch.full_like(w, log_sigma2_init)))
                if bias:
                    setattr(self, f"bias_{kind}_l{layer}", nn.Parameter(torch.empty(4 * hidden_size).uniform_(-k, k)))

    def _param(self, name: str) -> torch.Tensor:
        p = getattr(self, name)
        assert isinstance(p, torch.Tensor)
        return p

    def svdo_pairs(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        return [
            (f"weight_{kind}_l{k}", self._param(f"weight_{kind}_l{k}"), self._param(f"log_sigma2_{kind}_l{k}"))
            for k in range(self.num_layers)
            for kind in ("ih", "hh")
        ]

    def masked_weights(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        """θ · mask per weight tensor, named as in ``nn.LSTM``."""
        thr = self.threshold if threshold is None else threshold
        return {name: w * keep_rule(log_alpha_of(w, s2), w, thr).to(w.dtype) for name, w, s2 in self.svdo_pairs()}

    def _flat_weights(self, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        flat = []
        for k in range(self.num_layers):
            flat += [weights[f"weight_ih_l{k}"], weights[f"weight_hh_l{k}"]]
            if self.bias:
                flat += [self._param(f"bias_ih_l{k}"), self._param(f"bias_hh_l{k}")]
        return flat

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() not in (2, 3):
            raise InvalidInputError(
                f"LSTMSVDO: input of shape {tuple(x.shape)}; expected (seq, batch, {self.input_size}) "
                f"(batch_first: (batch, seq, {self.input_size})) or an unbatched (seq, {self.input_size})"
            )
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1 if not self.batch_first else 0)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        seq_first = x.transpose(0, 1) if self.batch_first else x  # (T, B, in)
        batch = seq_first.shape[1]
        if hx is None:
            zeros = seq_first.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (zeros, zeros)
        if self.training:
            out, h, c = self._sampled(seq_first, hx)
        else:
            out, h, c = torch.lstm(  # the kernel nn.LSTM runs: the masked nn.LSTM computes exactly this
                seq_first,
                hx,
                self._flat_weights(self.masked_weights()),
                self.bias,
                self.num_layers,
                0.0,
                False,
                False,
                False,
            )
        if self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out, h, c = out.squeeze(1 if not self.batch_first else 0), h.squeeze(1), c.squeeze(1)
        return out, (h, c)

    def _sampled(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training: one weight sample per sequence (per layer and weight matrix), shared by all time steps."""
        batch = x.shape[1]
        hs, cs = [], []
        for k in range(self.num_layers):
            w_ih, w_hh = self._param(f"weight_ih_l{k}"), self._param(f"weight_hh_l{k}")
            eps_ih = standard_normal((batch, *w_ih.shape), w_ih, f"LSTMSVDO.weight_ih_l{k}")
            eps_hh = standard_normal((batch, *w_hh.shape), w_hh, f"LSTMSVDO.weight_hh_l{k}")
            # θ + σ·ε per sequence, transposed for (1, in) @ (in, 4H): (B, in, 4H) and (B, H, 4H)
            s_ih = (w_ih + torch.exp(0.5 * self._param(f"log_sigma2_ih_l{k}")) * eps_ih).transpose(1, 2)
            s_hh = (w_hh + torch.exp(0.5 * self._param(f"log_sigma2_hh_l{k}")) * eps_hh).transpose(1, 2)
            gates_x = torch.einsum("tbi,big->tbg", x, s_ih)  # the input part of every step at once
            if self.bias:
                gates_x = gates_x + self._param(f"bias_ih_l{k}") + self._param(f"bias_hh_l{k}")
            h, c = hx[0][k], hx[1][k]
            outs = []
            for t in range(x.shape[0]):
                g = gates_x[t] + torch.bmm(h.unsqueeze(1), s_hh).squeeze(1)
                i, f, gg, o = g.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            x = torch.stack(outs)
            hs.append(h)
            cs.append(c)
            if self.dropout and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(hs), torch.stack(cs)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
            f"batch_first={self.batch_first}, dropout={self.dropout}, threshold={self.threshold}"
        )


def _copy(dst: torch.Tensor, src: torch.Tensor | None) -> None:
    if src is not None:
        with torch.no_grad():
            dst.copy_(src)


def conv1d_from(m: nn.Conv1d, log_sigma2_init: float, threshold: float, name: str = "") -> Conv1dSVDO:
    """The :class:`Conv1dSVDO` of a trained ``nn.Conv1d`` (θ = its weight)."""
    if not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
        raise UnsupportedOpError(
            f"sparsify: Conv1d '{name}' has padding={m.padding!r}, padding_mode={m.padding_mode!r}; "
            "Conv1dSVDO supports numeric zero padding: pass padding=N and padding_mode='zeros'"
        )
    new = Conv1dSVDO(
        m.in_channels,
        m.out_channels,
        m.kernel_size[0],
        m.stride[0],
        m.padding[0],
        m.dilation[0],
        m.groups,
        m.bias is not None,
        threshold,
        log_sigma2_init,
    )
    _copy(new.weight, m.weight)
    if new.bias is not None:
        _copy(new.bias, m.bias)
    return new.to(m.weight.device)


def embedding_from(m: nn.Embedding, log_sigma2_init: float, threshold: float, name: str = "") -> EmbeddingSVDO:
    """The :class:`EmbeddingSVDO` of a trained ``nn.Embedding`` (θ = its weight)."""
    if m.max_norm is not None:
        raise UnsupportedOpError(
            f"sparsify: Embedding '{name}' has max_norm={m.max_norm}, which renormalises θ in place at every "
            "lookup; EmbeddingSVDO does not support it: build the embedding with max_norm=None"
        )
    new = EmbeddingSVDO(
        m.num_embeddings,
        m.embedding_dim,
        m.padding_idx,
        m.scale_grad_by_freq,
        m.sparse,
        threshold,
        log_sigma2_init,
    )
    _copy(new.weight, m.weight)
    return new.to(m.weight.device)


def lstm_from(m: nn.LSTM, log_sigma2_init: float, threshold: float, name: str = "") -> LSTMSVDO:
    """The :class:`LSTMSVDO` of a trained ``nn.LSTM`` (θ = its weights, the same biases)."""
    if m.bidirectional or m.proj_size:
        what = "bidirectional=True" if m.bidirectional else f"proj_size={m.proj_size}"
        raise UnsupportedOpError(
            f"sparsify: LSTM '{name}' has {what}; LSTMSVDO supports unidirectional LSTMs without projection "
            "(single- or multi-layer, batch_first or not): build it with bidirectional=False, proj_size=0, or "
            "leave it dense (sparsify the other layers by calling sparsify on them)"
        )
    new = LSTMSVDO(
        m.input_size,
        m.hidden_size,
        m.num_layers,
        m.bias,
        m.batch_first,
        float(m.dropout),
        threshold,
        log_sigma2_init,
    )
    for pname, p in new.named_parameters():
        if not pname.startswith("log_sigma2"):
            _copy(p, getattr(m, pname))
    return new.to(next(m.parameters()).device)
