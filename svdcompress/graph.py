"""Channel-dependency graph of a traced model, the input of the structural pruner.

Why torch.fx: the pruner needs the exact dataflow between layers (which tensor a layer
reads, where channels are added, concatenated or flattened), and it must return a model
that still runs, exports and traces. ``torch.fx.symbolic_trace`` gives both: a graph to
analyse and a ``GraphModule`` whose submodules can be swapped for smaller ones. Torch-Pruning
would do the dependency analysis too, but adds a dependency and resolves unknown ops
heuristically; here every op is either understood exactly or refused.

Model of the graph: every tensor-valued node ``x`` of shape ``(N, C, ...)`` has ``C`` *slots*,
one per channel (or feature, for 2-D tensors). Ops that keep channels apart (activations,
BatchNorm, pooling, residual adds, depthwise convolutions) tie slot ``c`` of their inputs to
slot ``c`` of their output; ``cat`` ties ranges; ``flatten`` ties a channel to its block of
``H*W`` features. Tied slots form a *group* that can only be removed as a whole. For every
slot the analysis also records whether the value is a known constant (a dead row emits
``bias``; it stays constant through per-channel ops, which is checked by running the op on
a constant probe, so zero-padded average pooling is caught), which layers read it and
whether their weights for it are zero, and what pins it (model input/output, grouped convs).
In-place ops are accepted only where nothing reads their input afterwards, since the analysis
treats every node's value as immutable.
"""

from __future__ import annotations

import enum
import math
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function
from torch.fx.passes.shape_prop import ShapeProp

from .errors import UnsupportedOpError
from .ops import InputGather

__all__ = [
    "ChannelGraph",
    "Kind",
    "NodeInfo",
    "analyze",
    "describe_node",
    "layer_weight_bias",
    "propagate_shapes",
    "trace_model",
]

_ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Hardtanh,
    nn.Identity, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.SELU, nn.CELU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.PReLU,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_BN_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONV_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)
_PER_CHANNEL_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardtanh, F.sigmoid, F.tanh,
    F.hardswish, F.hardsigmoid, F.mish, F.softplus, F.selu, F.celu, F.dropout, F.dropout1d, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    torch.clamp, torch.clip, torch.neg, operator.neg,
})
_PER_CHANNEL_METHODS = frozenset({
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "clip", "clip_", "contiguous", "neg",
})
# Elementwise binaries: with one tensor operand they are per-channel, with two they couple channels.
_BINARY_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
})
_BINARY_METHODS = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"})
_FLATTEN_METHODS = frozenset({"flatten", "view", "reshape"})
_PROBE_BATCH = 2  # > 1 so that BatchNorm without running stats accepts the probe


class Kind(enum.Enum):
    """How a node moves channels."""

    INPUT = "input"  # model input: slots pinned
    GATHER = "gather"  # InputGather: slots removable, never constant
    DENSE = "dense"  # Linear / Conv with groups=1: reads every input slot, owns its output rows
    GROUPED = "grouped"  # grouped (non-depthwise) conv: kept whole
    DEPTHWISE = "depthwise"  # conv with groups == in == out: input channel c feeds output channel c only
    PER_CHANNEL = "per_channel"  # activations, BN, pooling, dropout, scalar arithmetic, spatial mean
    ELEMENTWISE = "elementwise"  # tensor (+-*/) tensor: ties channel c of every operand
    CAT = "cat"  # torch.cat along the channel dim
    FLATTEN = "flatten"  # torch.flatten(x, 1)
    SHAPE = "shape"  # x.size(0) and friends: no channels
    OUTPUT = "output"


@dataclass
class NodeInfo:
    """One fx node as the pruner sees it."""

    node: fx.Node
    kind: Kind
    shape: tuple[int, ...]  # () for nodes without a tensor value
    inputs: list[fx.Node] = field(default_factory=list)  # tensor-valued inputs, in argument order
    module: nn.Module | None = None
    pin_reason: str | None = None  # set when the node's input and output slots must all stay

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) >= 2 else 0


@dataclass
class ChannelGraph:
    """Result of :func:`analyze`: slots, their groups, constants, readers and pins.

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


class _Tracer(fx.Tracer):
    """Default fx tracer that also keeps svdcompress's InputGather as one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, InputGather) or super().is_leaf_module(m, module_qualified_name)


def describe_node(gm: fx.GraphModule, node: fx.Node) -> str:
    """``"node 'relu' (call_module 'features.2' ReLU)"``: the wording used in errors and notes."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        what = f"call_module '{node.target}' {type(mod).__name__}"
    elif node.op == "call_function":
        fn = node.target
        mod_name = str(getattr(fn, "__module__", None) or "torch")  # torch's C builtins have no module
        mod_name = {"_operator": "operator"}.get(mod_name, "torch" if mod_name.startswith("torch._C") else mod_name)
        what = f"call_function {mod_name}.{getattr(fn, '__name__', repr(fn))}"
    elif node.op == "call_method":
        what = f"call_method Tensor.{node.target}"
    else:
        what = f"{node.op} {node.target}"
    return f"node '{node.name}' ({what})"


def _unsupported(gm: fx.GraphModule, node: fx.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"cannot prune through {describe_node(gm, node)}: {why}; supported are Linear, Conv1d/Conv2d, "
        "BatchNorm1d/2d, elementwise activations, dropout, pooling, flatten/view/reshape to (N, -1), "
        "residual add/sub/mul, torch.cat along dim 1 and InputGather"
    )


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if isinstance(shape, torch.Size) else None


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Tensor-valued input nodes in argument order, repeats included (``torch.cat([x, x])``)."""
    found: list[fx.Node] = []

    def visit(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg((node.args, node.kwargs), visit)
    return [n for n in found if _shape(n) is not None]


def _is_flatten_like(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True if the node is a flatten/view/reshape whose result is ``torch.flatten(x, 1)``."""
    if node.op == "call_module":
        if not isinstance(gm.get_submodule(str(node.target)), nn.Flatten):
            return False
    elif not (
        (node.op == "call_function" and node.target in (torch.flatten, torch.reshape))
        or (node.op == "call_method" and node.target in _FLATTEN_METHODS)
    ):
        return False
    ins, out = _tensor_inputs(node), _shape(node)
    if len(ins) != 1 or out is None:
        return False
    src = _shape(ins[0])
    # (N, C, *S) -> (N, C * prod(S)): shape propagation on a real input decides, whatever the arguments.
    return src is not None and len(src) >= 2 and out == (src[0], math.prod(src[1:]))


def _normalize(gm: fx.GraphModule) -> None:
    """Rewrite every flatten-like view/reshape as ``torch.flatten(x, 1)`` so it survives channel removal.

    ``x.view(-1, 800)`` would break once channels are gone; ``torch.flatten(x, 1)`` does not. The
    ``x.size(...)`` nodes that fed the view become dead and are erased.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if not _is_flatten_like(gm, node):
            continue
        src = _tensor_inputs(node)[0]
        if node.op == "call_function" and node.target is torch.flatten and node.args[1:] == (1,) and not node.kwargs:
            continue
        with graph.inserting_after(node):
            new = graph.call_function(torch.flatten, (src, 1))
        new.meta = dict(node.meta)
        old_args = [a for a in node.all_input_nodes if a is not src]
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        _erase_dead_shape_nodes(graph, old_args)
    graph.lint()
    gm.recompile()


def _erase_dead_shape_nodes(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    todo = list(nodes)
    while todo:
        n = todo.pop()
        if n.users or n.op not in ("call_method", "call_function") or _shape(n) is not None:
            continue
        todo.extend(n.all_input_nodes)
        graph.erase_node(n)


def trace_model(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Trace ``model`` with torch.fx, propagate shapes of ``example`` and normalise flattens.

    Raises:
        UnsupportedOpError: if the model cannot be traced (data-dependent control flow, ...)
            or has more than one input.
    """
    root = model
    tracer = _Tracer()
    if tracer.is_leaf_module(model, ""):
        root = nn.Sequential(model)  # a bare layer would be traced into F.linear on get_attr weights
    try:
        graph = tracer.trace(root)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on dynamic code
        raise UnsupportedOpError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); structural "
            "pruning needs a model without data-dependent control flow"
        ) from exc
    gm = fx.GraphModule(root, graph, type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOpError(f"structural pruning supports models with one tensor input, got {len(placeholders)}")
    try:
        propagate_shapes(gm, example)
    except Exception as exc:  # shape mismatches surface as RuntimeError from inside the model
        raise ValueError(
            f"the example input of shape {tuple(example.shape)} does not run through {type(model).__name__}: {exc}"
        ) from exc
    _normalize(gm)
    return gm


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record ``tensor_meta`` (shape, dtype) on every node by running ``example`` through ``gm``."""
    with torch.no_grad():
        ShapeProp(gm).propagate(example)


def _mean_is_spatial(node: fx.Node, ndim: int) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not dims:
        return False
    return all(isinstance(d, int) and d % ndim >= 2 for d in dims)


def _classify(gm: fx.GraphModule, node: fx.Node, calls: Counter[str]) -> NodeInfo:
    """Decide how ``node`` moves channels, or raise UnsupportedOpError."""
    shape = _shape(node) or ()
    ins = _tensor_inputs(node)
    info = NodeInfo(node, Kind.SHAPE, shape, ins)
    if node.op == "placeholder":
        if len(shape) < 2:
            raise _unsupported(gm, node, "the model input must have a batch and a channel/feature dim")
        info.kind, info.pin_reason = Kind.INPUT, "it is part of the model input"
        return info
    if node.op == "output":
        info.kind = Kind.OUTPUT
        return info
    if node.op == "get_attr":
        raise _unsupported(gm, node, "parameters used directly in forward() are not tied to channels")
    if not shape:
        return _classify_shape_node(gm, node)
    _check_inplace(gm, node, ins)
    if len(shape) < 2:
        raise _unsupported(gm, node, f"its result has shape {shape}, not (N, C, ...)")
    in_shapes = [_shape(n) or () for n in ins]
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        info.module = mod
        if calls[str(node.target)] > 1 and any(True for _ in mod.parameters(recurse=False)):
            info.pin_reason = f"module '{node.target}' is called more than once"
        if isinstance(mod, nn.Linear):
            if len(in_shapes) != 1 or len(in_shapes[0]) != 2:
                raise _unsupported(gm, node, "Linear layers are pruned on (N, features) inputs only")
            info.kind = Kind.DENSE
        elif isinstance(mod, _CONV_MODULES):
            conv: nn.Conv1d | nn.Conv2d = mod  # type: ignore[assignment]  # isinstance above
            if conv.groups == 1:
                info.kind = Kind.DENSE
            elif conv.groups == conv.in_channels == conv.out_channels:
                info.kind = Kind.DEPTHWISE
            else:
                info.kind = Kind.GROUPED
                info.pin_reason = info.pin_reason or f"grouped convolution '{node.target}' is kept whole"
        elif isinstance(mod, InputGather):
            info.kind = Kind.GATHER
        elif isinstance(mod, _BN_MODULES + _ACTIVATION_MODULES + _POOL_MODULES):
            if isinstance(mod, nn.PReLU) and mod.num_parameters not in (1, shape[1]):
                raise _unsupported(gm, node, "PReLU must have 1 or C parameters")
            if getattr(mod, "return_indices", False):
                raise _unsupported(gm, node, "pooling with return_indices is not supported")
            info.kind = Kind.PER_CHANNEL
        else:
            raise _unsupported(gm, node, "svdcompress does not know how channels flow through it")
    elif node.target is torch.flatten:
        info.kind = Kind.FLATTEN  # flatten-like views/reshapes were rewritten by _normalize
        if not _is_flatten_like(gm, node):
            raise _unsupported(gm, node, "only flattening to (N, -1) keeps channels traceable")
    elif node.target is torch.cat:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int) or dim % len(shape) != 1 or any(len(s) != len(shape) for s in in_shapes):
            raise _unsupported(gm, node, "torch.cat is supported along the channel dim (1) only")
        info.kind = Kind.CAT
    elif (node.op == "call_function" and node.target in _BINARY_FUNCTIONS) or (
        node.op == "call_method" and node.target in _BINARY_METHODS
    ):
        info.kind = Kind.PER_CHANNEL if len(ins) == 1 else Kind.ELEMENTWISE
        if any(len(s) != len(shape) or s[1] != shape[1] for s in in_shapes):
            raise _unsupported(gm, node, f"operands {in_shapes} broadcast across the channel dim of {shape}")
    elif (node.op == "call_function" and node.target in _PER_CHANNEL_FUNCTIONS) or (
        node.op == "call_method" and node.target in _PER_CHANNEL_METHODS
    ) or ((node.target is torch.mean or (node.op == "call_method" and node.target == "mean")) and (
        len(ins) == 1 and _mean_is_spatial(node, len(in_shapes[0]))
    )):
        info.kind = Kind.PER_CHANNEL
    else:
        raise _unsupported(gm, node, "svdcompress does not know how channels flow through it")
    if info.kind is Kind.PER_CHANNEL and (
        len(ins) != 1 or in_shapes[0][:2] != shape[:2] or len(node.all_input_nodes) != 1
    ):
        raise _unsupported(gm, node, "expected one tensor input with the same (N, C) as the output")
    return info


def _is_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.target in (F.relu_, torch.relu_, operator.iadd, operator.isub, operator.imul, operator.itruediv):
        return True
    try:
        pair = normalize_function(node.target, node.args, node.kwargs,  # type: ignore[arg-type]
                                  normalize_to_only_use_kwargs=True)
    except Exception:  # builtins without a Python signature: their in-place variants end in "_"
        pair = None
    kwargs = pair.kwargs if pair is not None else node.kwargs
    return kwargs.get("inplace") is True


def _check_inplace(gm: fx.GraphModule, node: fx.Node, ins: list[fx.Node]) -> None:
    """Refuse in-place ops whose input is read again later: the constant analysis assumes values are immutable."""
    if not ins or not _is_inplace(gm, node):
        return
    later = False
    for other in node.graph.nodes:  # graph order is execution order
        if other is node:
            later = True
        elif later and ins[0] in other.all_input_nodes:
            raise _unsupported(gm, node, f"it modifies '{ins[0].name}' in place, which '{other.name}' reads later")


def _classify_shape_node(gm: fx.GraphModule, node: fx.Node) -> NodeInfo:
    """Accept only shape reads that cannot change when channels are removed (the batch size)."""
    args = node.args
    ok = (
        (node.op == "call_method" and node.target == "size" and (args[1:] == (0,) or node.kwargs == {"dim": 0}))
        or (node.op == "call_method" and node.target == "dim")
        or (node.op == "call_function" and node.target is getattr and args[1:] == ("shape",)
            and all(u.target is operator.getitem and u.args[1:] == (0,) for u in node.users))
        or (node.op == "call_function" and node.target is operator.getitem and args[1:] == (0,)
            and isinstance(args[0], fx.Node) and args[0].target is getattr)
    )
    if not ok and (node.target == "size" or node.target is getattr):
        raise _unsupported(gm, node, "it reads a tensor size that changes when channels are removed")
    if not ok:
        raise _unsupported(gm, node, "svdcompress does not know how channels flow through it")
    return NodeInfo(node, Kind.SHAPE, ())


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


def _run_node(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]  # call_function targets are callables


def _probe(gm: fx.GraphModule, node: fx.Node, infos: dict[str, NodeInfo], const_of: Callable[[str], torch.Tensor]
           ) -> torch.Tensor:
    """Per output channel: the constant the node emits when each input channel is its constant.

    Non-constant input channels are filled with NaN, which every supported op propagates; an
    output channel counts as constant only if all its values (batch and space) are finite and equal.
    """
    dtype = node.meta["tensor_meta"].dtype

    def fill(n: fx.Node) -> Any:
        shape = infos[n.name].shape
        c = const_of(n.name).to(dtype)  # (C,)
        view = c.view(1, -1, *([1] * (len(shape) - 2)))
        return view.expand(_PROBE_BATCH, shape[1], *shape[2:]).clone()  # (2, C, *S)

    args = fx.node.map_arg(node.args, fill)
    kwargs = fx.node.map_arg(node.kwargs, fill)
    with torch.no_grad():
        out: torch.Tensor = _run_node(gm, node, args, kwargs)
    flat = out.detach().transpose(0, 1).reshape(out.shape[1], -1).double()  # (C_out, 2 * prod(S))
    ok = torch.isfinite(flat).all(1) & (flat.amax(1) == flat.amin(1))
    return torch.where(ok, flat[:, 0], torch.full_like(flat[:, 0], math.nan))  # (C_out,)


def layer_weight_bias(module: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of a Linear/Conv, detached; the bias as float64, zeros if the layer has none.

    Raises:
        TypeError: if the module has no weight tensor (an internal misuse, not user input).
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
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


def analyze(gm: fx.GraphModule) -> ChannelGraph:
    """Build the channel graph of a traced, shape-propagated model (see :func:`trace_model`).

    Raises:
        UnsupportedOpError: at the first node whose channel flow is unknown.
    """
    calls: Counter[str] = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    infos: dict[str, NodeInfo] = {}
    offset: dict[str, int] = {}
    total = 0
    for node in gm.graph.nodes:
        info = _classify(gm, node, calls)
        infos[node.name] = info
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
            if kind is Kind.DENSE:
                _record_reads(info, infos[info.inputs[0].name], const_of, sl, blocked, read_zero, read_live, reasons)
        elif kind is Kind.DEPTHWISE:
            tie(info.inputs[0].name, name)
            probed = _probe(gm, node, infos, const_of)
            w, b = layer_weight_bias(info.module)
            dead = ~(w != 0).reshape(w.shape[0], -1).any(1)  # (C,)
            # A zero filter emits its bias whatever it reads; otherwise constant in -> constant out.
            const[sl(name)] = torch.where(dead, b, torch.where(torch.isnan(const_of(info.inputs[0].name)),
                                                               math.nan, probed))
            for i in torch.nonzero(dead).flatten().tolist():
                dead_source[offset[name] + i] = str(node.target)
        elif kind in (Kind.PER_CHANNEL, Kind.ELEMENTWISE):
            for src in info.inputs:
                tie(src.name, name)
            probed = _probe(gm, node, infos, const_of)
            all_const = torch.stack([~torch.isnan(const_of(s.name)) for s in info.inputs]).all(0)
            const[sl(name)] = torch.where(all_const, probed, math.nan)
        elif kind is Kind.CAT:
            start = offset[name]
            for src in info.inputs:
                c = infos[src.name].channels
                for i in range(c):
                    uf.union(offset[src.name] + i, start + i)
                const[start:start + c] = const_of(src.name)
                start += c
        elif kind is Kind.FLATTEN:
            src_info = infos[info.inputs[0].name]
            block = math.prod(src_info.shape[2:])  # features per channel
            for i in range(info.channels):
                uf.union(offset[src_info.node.name] + i // block, offset[name] + i)
            const[sl(name)] = const_of(src_info.node.name).repeat_interleave(block)
        # GATHER: free slots, never constant; nothing to tie.
        if info.pin_reason is not None:
            pin(name, info.pin_reason)
            for src in info.inputs:
                pin(src.name, info.pin_reason)

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
    w, _ = layer_weight_bias(mod)
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
