"""Channel-dependency graph of a traced model: which channels can be removed together, and what they hold.

Model of the graph: every tensor-valued node ``x`` has one *channel axis* (dim 1 after a convolution, the last
dim after a Linear or an embedding; :mod:`svdcompress.pruning.tracing` follows it through permutes, reshapes and
indexing) and one *slot* per channel along it. Ops that keep channels apart (activations, BatchNorm, pooling,
residual adds, depthwise convolutions, LayerNorm or softmax over time) tie slot ``c`` of their inputs to slot ``c``
of their output; ``cat`` ties ranges; ``flatten`` ties a channel to its block of ``H*W`` features; ops that mix
channels (matmul of activations, softmax or LayerNorm over the channels, an LSTM) or whose flow is unknown
(barriers) pin them. Tied slots form a *group* that can only be removed as a whole. For every slot the analysis
also records whether the value is a known constant (a dead row emits ``bias``; it stays constant through
per-channel ops, which is checked by running the op on a constant probe, so zero-padded average pooling is
caught), which layers read it and whether their weights for it are zero, and what pins it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .tracing import _VALUE, Kind, NodeInfo, classify_nodes, rnn_tensor, run_node

__all__ = ["ChannelGraph", "build_channel_graph", "layer_weight_bias"]

_CONV_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)


@dataclass
class ChannelGraph:
    """Result of :func:`build_channel_graph`: slots, their groups, constants, readers and pins.

    Slot arrays are indexed by global slot id; node ``n`` owns ``range(offset[n], offset[n] + C)``.
    """

    gm: fx.GraphModule
    infos: dict[str, NodeInfo]
    offset: dict[str, int]
    const: torch.Tensor  # (S,) float64, NaN where the slot's value is not a known constant
    group: torch.Tensor  # (S,) int64 group id, slots of one group are removed together
    pinned: torch.Tensor  # (S,) bool
    blocked: torch.Tensor  # (S,) bool: some layer reads the slot with a weight and cannot absorb it
    read_zero: torch.Tensor  # (S,) int64: number of readers whose weights for the slot are all zero
    read_live: torch.Tensor  # (S,) int64: number of readers with a non-zero weight for the slot
    reasons: dict[int, str]  # slot -> first pin or block reason, for notes
    dead_source: dict[int, str]  # slot -> layer name, for output rows whose weights are all zero

    def slots(self, name: str) -> slice:
        start = self.offset[name]
        return slice(start, start + self.infos[name].channels)

    @property
    def num_groups(self) -> int:
        return int(self.group.max().item()) + 1 if self.group.numel() else 0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _probe(
    gm: fx.GraphModule, node: fx.Node, infos: dict[str, NodeInfo], const_of: Callable[[str], torch.Tensor]
) -> torch.Tensor:
    """Per output channel: the constant the node emits when each tied input channel is its constant.

    Non-constant input channels, and inputs not tied to the output's channels, are filled with NaN, which
    every supported op propagates; an output channel counts as constant only if all its values (batch and
    space) are finite and equal. The probe has the shapes of the last shape propagation.
    """
    info = infos[node.name]
    dtype = node.meta["tensor_meta"].dtype

    def fill(n: fx.Node) -> Any:
        if n.name not in infos or "tensor_meta" not in n.meta:
            return n.meta.get(_VALUE)
        src = infos[n.name]
        if n not in info.ties or src.axis is None:
            return torch.full(src.shape, math.nan, dtype=n.meta["tensor_meta"].dtype)
        c = const_of(n.name).to(n.meta["tensor_meta"].dtype)  # (C,)
        view = c.view(-1, *([1] * (len(src.shape) - src.axis - 1)))
        return view.expand(src.shape).clone()  # (*shape): channel c holds its constant

    args = fx.node.map_arg(node.args, fill)
    kwargs = fx.node.map_arg(node.kwargs, fill)
    with torch.no_grad():
        out: torch.Tensor = run_node(gm, node, args, kwargs)
    assert info.axis is not None
    out = out.detach().to(dtype).movedim(info.axis, 0)
    flat = out.reshape(out.shape[0], -1).double()  # (C_out, everything else)
    ok = torch.isfinite(flat).all(1) & (flat.amax(1) == flat.amin(1))
    return torch.where(ok, flat[:, 0], torch.full_like(flat[:, 0], math.nan))  # (C_out,)


def layer_weight_bias(module: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of a Linear/Conv, detached; the bias as float64, zeros if the layer has none.

    Raises:
        TypeError: if the module has no weight tensor.
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        # Internal invariant: only nodes classified DENSE/GROUPED/DEPTHWISE (Linear/Conv modules) get here.
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    bias = getattr(module, "bias", None)
    b = bias.detach().double() if isinstance(bias, torch.Tensor) else torch.zeros(w.shape[0], dtype=torch.float64)
    return w.detach(), b  # (C_out, C_in/groups, *k), (C_out,)


def _zero_padded(conv: nn.Conv1d | nn.Conv2d) -> bool:
    """True if the conv pads with zeros, which breaks folding a non-zero constant input into its bias."""
    if conv.padding_mode != "zeros":
        return False  # reflect/replicate/circular padding of a constant map is the constant
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(int(p) > 0 for p in conv.padding)


def build_channel_graph(gm: fx.GraphModule, *, require_csr: bool = False) -> ChannelGraph:
    """Build the channel graph of a traced, shape-propagated model
    (see :func:`svdcompress.pruning.tracing.trace_model`).

    Args:
        gm: the traced model.
        require_csr: refuse ops the CSR bundle cannot express (see :func:`svdcompress.pruning.tracing.classify_nodes`).

    Raises:
        UnsupportedOpError: at the first node whose channel flow is unknown.
    """
    infos = classify_nodes(gm, require_csr=require_csr)
    offset: dict[str, int] = {}
    total = 0
    for node in gm.graph.nodes:
        info = infos[node.name]
        offset[node.name] = total
        if info.kind not in (Kind.SHAPE, Kind.OUTPUT):
            total += info.channels

    uf = _UnionFind(total)
    const = torch.full((total,), math.nan, dtype=torch.float64)
    pinned = torch.zeros(total, dtype=torch.bool)
    blocked = torch.zeros(total, dtype=torch.bool)
    read_zero = torch.zeros(total, dtype=torch.int64)
    read_live = torch.zeros(total, dtype=torch.int64)
    reasons: dict[int, str] = {}
    dead_source: dict[int, str] = {}

    def sl(name: str) -> slice:
        return slice(offset[name], offset[name] + infos[name].channels)

    def const_of(name: str) -> torch.Tensor:
        return const[sl(name)]

    def pin(name: str, reason: str) -> None:
        s = sl(name)
        pinned[s] = True
        for i in range(s.start, s.stop):
            reasons.setdefault(i, reason)

    def tie(a: str, b: str) -> None:
        for i in range(infos[a].channels):
            uf.union(offset[a] + i, offset[b] + i)

    for node in gm.graph.nodes:
        info = infos[node.name]
        name, kind = node.name, info.kind
        if kind is Kind.OUTPUT:
            for src in info.inputs:
                pin(src.name, "it is a model output")
            continue
        if kind is Kind.SHAPE:
            for src_name, why in info.pinned_inputs.items():  # a size read of the channel axis
                pin(src_name, why)
            continue
        if kind is Kind.INPUT:
            pin(name, info.pin_reason or "")
        elif kind in (Kind.DENSE, Kind.GROUPED):
            w, b = layer_weight_bias(info.module)
            dead = ~(w != 0).reshape(w.shape[0], -1).any(1)  # (C_out,)
            const[sl(name)] = torch.where(dead, b, torch.full_like(b, math.nan))
            layer = str(node.target)
            for i in torch.nonzero(dead).flatten().tolist():
                dead_source[offset[name] + i] = layer
            if kind is Kind.DENSE and info.read_ok:
                _record_reads(info, infos[info.inputs[0].name], const_of, sl, blocked, read_zero, read_live, reasons)
        elif kind is Kind.RNN:
            rnn: nn.RNNBase = info.module  # type: ignore[assignment]  # Kind.RNN is a one-layer nn.RNNBase
            if info.read_ok:
                _record_reads(info, infos[info.inputs[0].name], const_of, sl, blocked, read_zero, read_live, reasons)
            # its own units feed the recurrence: a unit stays while another (or itself) reads it
            rec_live = (rnn_tensor(rnn, "weight_hh_l0") != 0).any(0)  # (H,)
            s = sl(name)
            read_zero[s] += (~rec_live).long()
            read_live[s] += rec_live.long()
            blocked[s] |= rec_live
            for i in torch.nonzero(rec_live).flatten().tolist():
                reasons.setdefault(s.start + i, f"the recurrence of '{node.target}' reads it")
        elif kind is Kind.EMBEDDING:
            emb: nn.Embedding = info.module  # type: ignore[assignment]  # Kind.EMBEDDING is nn.Embedding
            w = emb.weight.detach()  # (V, E)
            dead = ~(w != 0).any(0)  # (E,): a dim no word uses emits 0
            const[sl(name)] = torch.where(dead, 0.0, math.nan)
            for i in torch.nonzero(dead).flatten().tolist():
                dead_source[offset[name] + i] = str(node.target)
        elif kind is Kind.DEPTHWISE:
            tie(info.inputs[0].name, name)
            probed = _probe(gm, node, infos, const_of)
            w, b = layer_weight_bias(info.module)
            dead = ~(w != 0).reshape(w.shape[0], -1).any(1)  # (C,)
            # A zero filter emits its bias whatever it reads; otherwise constant in -> constant out.
            const[sl(name)] = torch.where(
                dead, b, torch.where(torch.isnan(const_of(info.inputs[0].name)), math.nan, probed)
            )
            for i in torch.nonzero(dead).flatten().tolist():
                dead_source[offset[name] + i] = str(node.target)
        elif kind in (Kind.PER_CHANNEL, Kind.ELEMENTWISE):
            for src in info.ties:
                tie(src.name, name)
            if info.const_ok:
                probed = _probe(gm, node, infos, const_of)
                all_const = torch.stack([~torch.isnan(const_of(s.name)) for s in info.ties]).all(0)
                const[sl(name)] = torch.where(all_const, probed, math.nan)
        elif kind is Kind.CAT:
            start = offset[name]
            for src in info.inputs:
                c = infos[src.name].channels
                for i in range(c):
                    uf.union(offset[src.name] + i, start + i)
                const[start : start + c] = const_of(src.name)
                start += c
        elif kind is Kind.MOVE:
            src_name = info.ties[0].name
            for i in range(info.channels):
                uf.union(offset[src_name] + i // info.block, offset[name] + i)
            moved = const_of(src_name).repeat_interleave(info.block)
            # a scaled move (a sum over time) keeps only a zero constant: the rest depends on the length
            const[sl(name)] = moved if info.const_ok else torch.where(moved == 0, 0.0, math.nan)
        # GATHER: free slots, never constant; nothing to tie. PINNED / BARRIER: pinned just below.
        if kind in (Kind.PINNED, Kind.BARRIER) and info.pin_reason is None:
            info.pin_reason = "it is kept whole"
        if info.pin_reason is not None:
            pin(name, info.pin_reason)
            for src in info.inputs:
                pin(src.name, info.pin_reason)
        for src_name, why in info.pinned_inputs.items():
            pin(src_name, why)

    roots = torch.tensor([uf.find(i) for i in range(total)], dtype=torch.int64)
    group = torch.unique(roots, return_inverse=True)[1] if total else roots
    return ChannelGraph(gm, infos, offset, const, group, pinned, blocked, read_zero, read_live, reasons, dead_source)


def _record_reads(
    info: NodeInfo,
    src: NodeInfo,
    const_of: Callable[[str], torch.Tensor],
    sl: Callable[[str], slice],
    blocked: torch.Tensor,
    read_zero: torch.Tensor,
    read_live: torch.Tensor,
    reasons: dict[int, str],
) -> None:
    """Mark how a dense layer reads each slot of its input: not at all, foldably, or blocking."""
    mod = info.module
    w = (
        rnn_tensor(mod, "weight_ih_l0") if isinstance(mod, nn.RNNBase) else layer_weight_bias(mod)[0]
    )  # (rows, C_in, ..)
    live = (w != 0).transpose(0, 1).reshape(w.shape[1], -1).any(1)  # (C_in,) column/input channel read
    c = const_of(src.node.name)  # (C_in,)
    finite = ~torch.isnan(c)
    # Linear and unpadded convs add c * (sum of weights) to every output: exact. A zero-padded conv
    # sees c inside and 0 in the padding, so only c == 0 folds (trivially).
    padded = isinstance(mod, _CONV_MODULES) and _zero_padded(mod)  # type: ignore[arg-type]  # conv checked
    foldable = finite & ((c == 0) if padded else torch.ones_like(finite))
    s = sl(src.node.name)
    read_zero[s] += (~live).long()
    read_live[s] += live.long()
    block = live & ~foldable
    blocked[s] |= block
    layer = str(info.node.target)
    for i in torch.nonzero(block).flatten().tolist():
        if finite[i]:
            why = f"its constant non-zero output cannot be folded into zero-padded convolution '{layer}'"
        else:
            why = f"its channel is tied (by an add, cat or padded pooling) to values that vary where '{layer}' reads"
        reasons.setdefault(s.start + i, why)
