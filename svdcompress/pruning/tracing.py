"""Trace a model with torch.fx and classify every node by how it moves channels (the pruner's input).

Why torch.fx: the pruner needs the exact dataflow between layers (which tensor a layer
reads, where channels are added, concatenated or flattened), and it must return a model
that still runs, exports and traces. ``torch.fx.symbolic_trace`` gives both: a graph to
analyse and a ``GraphModule`` whose submodules can be swapped for smaller ones. Torch-Pruning
would do the dependency analysis too, but adds a dependency and resolves unknown ops
heuristically; here every op is either understood exactly (it is in :data:`svdcompress.ops.OPS`)
or a *barrier*: the channels that reach it are kept, the report says so, and the rest of the model is
still pruned. Each tensor carries its channels on one axis (dim 1 after a convolution, the last dim after
a Linear); where a permute, reshape, index or reduction sends that axis is found by running the op on a
tensor that holds each element's channel index. :mod:`svdcompress.pruning.channels` builds the
channel-dependency graph from the classified nodes.

In-place ops are accepted only where nothing reads their input afterwards, since the analysis
treats every node's value as immutable.
"""

from __future__ import annotations

import enum
import inspect
import math
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..errors import InputShapeError, UnsupportedOpError
from ..ops import Flow, InputGather, Op, lookup, lookup_module

__all__ = [
    "GATES",
    "Kind",
    "NodeInfo",
    "Tracer",
    "classify_nodes",
    "describe_node",
    "expected_input",
    "propagate_shapes",
    "rnn_tensor",
    "run_node",
    "trace_model",
]


class Kind(enum.Enum):
    """How a node moves channels."""

    INPUT = "input"  # model input: slots pinned
    GATHER = "gather"  # InputGather: slots removable, never constant
    DENSE = "dense"  # Linear / Conv with groups=1: reads every input slot, owns its output rows
    GROUPED = "grouped"  # grouped (non-depthwise) conv: kept whole
    DEPTHWISE = "depthwise"  # conv with groups == in == out: input channel c feeds output channel c only
    EMBEDDING = "embedding"  # nn.Embedding: owns its output dims (a dead dim emits 0), reads ids
    RNN = "rnn"  # one-layer LSTM/GRU/RNN: owns its hidden units, reads its input features and its own units
    PER_CHANNEL = "per_channel"  # activations, BN, pooling, dropout, scalar arithmetic, LayerNorm over time
    ELEMENTWISE = "elementwise"  # tensor (+-*/) tensor, cat along time: ties channel c of every operand
    CAT = "cat"  # torch.cat along the channel axis
    MOVE = "move"  # flatten, reshape, permute, indexing, expand, reduction: channel c -> slots of c // block
    PINNED = "pinned"  # matmul, LSTM, softmax over the channels, a split channel axis: inputs and output kept
    BARRIER = "barrier"  # an op whose channel flow is unknown: inputs and output kept, with a note
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
    axis: int | None = None  # the axis of the value that carries the channels (None: no channels)
    ties: list[fx.Node] = field(default_factory=list)  # inputs whose channel c is the output's channel c
    block: int = 1  # MOVE: output slot i is input channel i // block
    const_ok: bool = True  # a constant input channel gives a constant output channel (size-independent)
    read_ok: bool = True  # DENSE: the input carries its channels on the axis the layer reads
    pinned_inputs: dict[str, str] = field(default_factory=dict)  # input node -> why its channels stay
    note: str | None = None  # barrier / kept-whole note for the report
    slots: int | None = None  # RNN: its hidden units (the node's value is a tuple, so it has no shape)

    @property
    def channels(self) -> int:
        if self.slots is not None:
            return self.slots
        return self.shape[self.axis] if self.axis is not None else 0


class Tracer(fx.Tracer):
    """Default fx tracer that also keeps svdcompress's InputGather as one call (pruner and CSR export)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, InputGather) or super().is_leaf_module(m, module_qualified_name)


class _ShapeProp(fx.Interpreter):
    """Record ``tensor_meta`` on every node, like torch's ShapeProp, but quietly.

    torch's ShapeProp prints the failing node's traceback to stderr before re-raising; here the
    failing node is remembered so that the one-line error can name it.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # no "While executing ..." paragraphs appended to the error
        self.failed: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception:
            self.failed = n
            raise
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        else:
            n.meta.pop("tensor_meta", None)
            if isinstance(result, (int, float, bool, torch.Size)) or (
                isinstance(result, tuple) and all(isinstance(v, int) for v in result)
            ):
                n.meta[_VALUE] = result  # sizes: what the probes pass to ops like expand
        n.meta["type"] = type(result)
        return result


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record ``tensor_meta`` (shape, dtype) on every node by running ``example`` through ``gm``.

    Raises:
        InputShapeError: the example does not run through the model (wrong ``input_shape``).
    """
    prop = _ShapeProp(gm)
    try:
        with torch.no_grad():
            prop.run(example)
    except Exception as exc:  # shape mismatches surface as RuntimeError (or anything) from inside the model
        where = f" at {describe_node(gm, prop.failed)}" if prop.failed is not None else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(
            f"the example input of shape {tuple(example.shape[1:])} (per example) does not run through "
            f"{gm.__class__.__name__}{where}: {first}; {expected_input(gm)}"
        ) from None


def expected_input(model: nn.Module) -> str:
    """What the first weight layer says about the input, as the fix for a wrong ``input_shape``.

    Example:
        >>> expected_input(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
        "check input_shape: the first layer '0' (Conv2d) takes 3 input channels, e.g. input_shape 3,H,W"
    """
    for name, mod in model.named_modules():
        # duck-typed, so SVDO layers (LinearSVDO, Conv2dSVDO, pytorch-ard's) count as well as nn.Linear/nn.Conv
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        kind = type(mod).__name__
        channels, features = getattr(mod, "in_channels", None), getattr(mod, "in_features", None)
        if isinstance(channels, int) and weight.dim() in (3, 4):
            dims = "H,W" if weight.dim() == 4 else "L"
            return (
                f"check input_shape: the first layer '{name}' ({kind}) takes {channels} input channels, "
                f"e.g. input_shape {channels},{dims}"
            )
        if isinstance(features, int) and weight.dim() == 2:
            return (
                f"check input_shape: the first layer '{name}' ({kind}) takes {features} input features, "
                f"e.g. input_shape {features} (or a shape whose sizes multiply to {features})"
            )
        if not isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d | nn.LayerNorm):
            break  # some other first layer: nothing to infer
    return "check input_shape (per example, without the batch dim)"


def trace_model(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Trace ``model`` with torch.fx, propagate shapes of ``example`` and normalise flattens.

    Raises:
        UnsupportedOpError: if the model cannot be traced (data-dependent control flow, ...)
            or has more than one input.
        InputShapeError: if ``example`` does not run through the model.
    """
    root = model
    tracer = Tracer()
    if tracer.is_leaf_module(model, ""):
        root = nn.Sequential(model)  # a bare layer would be traced into F.linear on get_attr weights
    try:
        # forward(self, x, train=False): extra arguments are traced at their defaults, as the model is called
        graph = tracer.trace(root, concrete_args=_defaults_after_input(root) or None)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on dynamic code
        raise UnsupportedOpError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); structural "
            "pruning needs a model without data-dependent control flow"
        ) from exc
    _drop_specialized_inputs(graph)
    gm = fx.GraphModule(root, graph, type(model).__name__)
    # fx keeps an inlined submodule as a plain holder of the tensors it reads: remember what it was, for errors
    gm.meta[_ORIGIN] = {
        name: (type(m).__name__, [n for n, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))])
        for name, m in root.named_modules()
    }
    gm.meta[_SHAPES] = {
        name: {n: tuple(t.shape) for n, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))}
        for name, m in root.named_modules()
    }
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOpError(f"structural pruning supports models with one tensor input, got {len(placeholders)}")
    propagate_shapes(gm, example)
    _max_values_to_amax(gm)
    _normalize(gm)
    return gm


def _defaults_after_input(root: nn.Module) -> dict[str, Any]:
    """forward()'s parameters after the input that have defaults (kefirski's ``forward(input, train=False)``)."""
    try:
        params = list(inspect.signature(root.forward).parameters.values())
    except (TypeError, ValueError):  # no Python signature
        return {}
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params[1:] if p.kind in plain and p.default is not inspect.Parameter.empty}


def _drop_specialized_inputs(graph: fx.Graph) -> None:
    """Erase the placeholders fx keeps for arguments traced at a fixed value, with the asserts that check the
    value: nothing the model computes reads them, and the pruned model takes the input alone."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for ph in placeholders[1:]:
        cone: list[fx.Node] = []
        todo = [ph]
        while todo:
            n = todo.pop()
            if n in cone:
                continue
            cone.append(n)
            todo.extend(n.users)
        if any(n.op == "output" for n in cone):
            continue  # a real second input: trace_model refuses it below
        order = {n: i for i, n in enumerate(graph.nodes)}
        for n in sorted(cone, key=order.__getitem__, reverse=True):
            graph.erase_node(n)


def _unsupported(gm: fx.GraphModule, node: fx.Node, why: str) -> UnsupportedOpError:
    """What the pruner refuses even with barriers: a model whose analysis would not be exact (its reason says
    what to change)."""
    return UnsupportedOpError(f"cannot prune through {describe_node(gm, node)}: {why}")


_SHAPES = "svdcompress_tensor_shapes"  # GraphModule.meta key: {qualified name: {own tensor name: shape}}


def _not_in_csr(gm: fx.GraphModule, node: fx.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{describe_node(gm, node)} cannot be written to a CSR bundle: {why}; the bundle runs batch-first "
        "models of Linear, Conv1d/2d, BatchNorm, LayerNorm, Embedding, pooling, elementwise activations, "
        "reshapes, transposes, indexing, adds/muls, cat, matmul, reductions and (log_)softmax. Export to ONNX "
        "instead (format 'onnx'), where the pruner keeps what it cannot follow as barriers"
    )


_VALUE = "svdcompress_value"  # node.meta key: the value of a non-tensor node (a size) in the last shape run
_ORIGIN = "svdcompress_modules"  # GraphModule.meta key: {qualified name: (class name, own tensor names)}


def _get_attr_reason(gm: fx.GraphModule, target: str) -> str:
    """Why a tensor read in forward() stops the pruner: most often a layer svdcompress did not recognise as SVDO
    (it would have been replaced by a plain Linear / Conv2d before tracing), so name the layer and the pairs tried."""
    from ..checkpoint.conventions import known_pairs

    owner, _, attr = target.rpartition(".")
    try:
        module = gm.get_submodule(owner)
    except AttributeError:
        module = None
    origin = gm.meta.get(_ORIGIN, {}).get(owner)
    if module is None or origin is None or lookup_module(module) is not None:
        return "parameters used directly in forward() are not tied to channels"
    cls, tensors = origin
    where = f"module '{owner}' ({cls})" if owner else f"the model ({cls})"
    return (
        f"{where} uses its tensor '{attr}' directly in forward(), and it was not recognised as an SVDO layer: "
        f"it holds {', '.join(repr(t) for t in tensors) or 'no tensors of its own'}, none of the weight + "
        f"log-variance pairs tried ({known_pairs()}). An SVDO layer of a known convention is replaced by a "
        "masked Linear / Conv2d before tracing; build the model from layers svdcompress knows"
    )


class _Barrier(Exception):
    """A classifier's verdict: the op is used in a way whose channel flow the pruner does not model."""


def classify_nodes(gm: fx.GraphModule, *, require_csr: bool = False) -> dict[str, NodeInfo]:
    """Classify every node of a traced, shape-propagated model (see :func:`trace_model`).

    An op whose channel flow is not known becomes a :attr:`Kind.BARRIER`: it keeps the channels that
    reach it and leaves with a note; the rest of the model is still pruned.

    Args:
        gm: the traced model.
        require_csr: refuse, instead of keeping as barriers, ops and layouts the CSR bundle cannot express,
            with the registry's reason.

    Raises:
        UnsupportedOpError: with ``require_csr``, at the first node the CSR bundle cannot express; always, at
            an in-place op whose input is read again, or a layer svdcompress did not recognise as SVDO.
    """
    calls: Counter[str] = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    infos: dict[str, NodeInfo] = {}
    for node in gm.graph.nodes:  # graph order is topological: a node's inputs are classified before it
        infos[node.name] = _classify(gm, node, calls, require_csr, infos)
    return infos


def _natural_axis(shape: tuple[int, ...]) -> int | None:
    """The channel axis given to a tensor the pruner keeps whole: features last for (N, L, D), else dim 1."""
    if len(shape) < 2:
        return None
    return len(shape) - 1 if len(shape) == 3 else 1


def _classify(
    gm: fx.GraphModule, node: fx.Node, calls: Counter[str], require_csr: bool, infos: dict[str, NodeInfo]
) -> NodeInfo:
    """Decide how ``node`` moves channels; a node whose flow is unknown becomes a barrier."""
    shape = _shape(node)
    ins = _tensor_inputs(node)
    info = NodeInfo(node, Kind.SHAPE, shape or (), ins)
    if node.op == "placeholder":
        if shape is None or len(shape) < 2:
            raise _unsupported(gm, node, "the model input must have a batch and a channel/feature dim")
        info.kind, info.axis, info.pin_reason = Kind.INPUT, 1, "it is part of the model input"
        _set_axis(info)
        return info
    if node.op == "output":
        info.kind = Kind.OUTPUT
        return info
    if node.op == "get_attr":
        return _param(gm, node, info, require_csr)
    if shape is None:
        return _classify_value_node(gm, node, info, infos, require_csr)
    _check_inplace(gm, node, ins)
    op = lookup(gm, node)
    if require_csr:
        if op is None:
            raise UnsupportedOpError(
                f"{describe_node(gm, node)} cannot be written to a CSR bundle: svdcompress does not know the op; "
                "export to ONNX instead (the pruner keeps it as a barrier there)"
            )
        if not op.in_bundle:
            raise UnsupportedOpError(f"{describe_node(gm, node)} cannot be written to a CSR bundle: {op.not_in_bundle}")
        if len(shape) < 1:
            raise _not_in_csr(gm, node, f"its result has shape {shape}, not (N, ...)")
    if node.op == "call_module":
        info.module = gm.get_submodule(str(node.target))
        if calls[str(node.target)] > 1 and any(True for _ in info.module.parameters(recurse=False)):
            info.pin_reason = f"module '{node.target}' is called more than once"
    try:
        if op is None:
            raise _Barrier("svdcompress does not know how channels flow through it")
        if len(shape) < 2:
            _keep(info, f"'{node.name}' has no channel axis (shape {shape})")
        else:
            _CLASSIFIERS[op.flow](gm, node, op, info, infos, require_csr)
    except _Barrier as why:
        if require_csr:
            raise _not_in_csr(gm, node, str(why)) from None
        _barrier(gm, node, info, str(why))
    _set_axis(info)
    return info


def _keep(info: NodeInfo, reason: str) -> None:
    """A node that keeps every channel of its inputs and output (matmul, a split channel axis, ...)."""
    info.kind, info.axis = Kind.PINNED, _natural_axis(info.shape)
    info.pin_reason = info.pin_reason or reason


def _barrier(gm: fx.GraphModule, node: fx.Node, info: NodeInfo, why: str) -> None:
    where = describe_node(gm, node)
    info.kind, info.axis = Kind.BARRIER, _natural_axis(info.shape)
    info.pin_reason = f"it reaches the barrier {where}"
    n = sum(_info_channels(i) for i in info.inputs)
    if n:  # a barrier no channel reaches (torch.zeros(size), an element of a tuple) keeps nothing worth a note
        info.note = (
            f"barrier at {where}: {why}; the {n} channel(s) that reach it are kept, the rest of the model is pruned"
        )


def _info_channels(node: fx.Node) -> int:
    shape = _shape(node) or ()
    axis = node.meta.get(_AXIS)
    return shape[axis] if isinstance(axis, int) and axis < len(shape) else 0


_AXIS = "svdcompress_axis"  # node.meta key: the channel axis classify_nodes gave the node's value


def _param(gm: fx.GraphModule, node: fx.Node, info: NodeInfo, require_csr: bool) -> NodeInfo:
    """A parameter or buffer used as a tensor (class token, position embedding): kept whole."""
    target = str(node.target)
    if _unrecognised_layer(gm, target):
        raise _unsupported(gm, node, _get_attr_reason(gm, target))
    if info.shape:
        _keep(info, f"it is combined with parameter '{target}', used as a tensor")
    _set_axis(info)
    return info


def _unrecognised_layer(gm: fx.GraphModule, target: str) -> bool:
    """True if ``target`` belongs to a submodule that looks like an unrecognised variational layer: it holds
    another tensor of the same shape (a weight and its variance), and svdcompress does not know the module."""
    owner, _, attr = target.rpartition(".")
    own = gm.meta.get(_SHAPES, {}).get(owner)
    if not owner or own is None or attr not in own:
        return False
    try:
        module = gm.get_submodule(owner)
    except AttributeError:
        return False
    if lookup_module(module) is not None:
        return False
    return any(k != attr and shape == own[attr] for k, shape in own.items())


def _set_axis(info: NodeInfo) -> None:
    info.node.meta[_AXIS] = info.axis


def _classify_value_node(
    gm: fx.GraphModule, node: fx.Node, info: NodeInfo, infos: dict[str, NodeInfo], require_csr: bool
) -> NodeInfo:
    """A node whose value is not a tensor: a size read, a tuple (LSTM, unbind), or plain Python arithmetic."""
    if require_csr:
        op = lookup(gm, node)
        if op is not None and not op.in_bundle and info.inputs:  # LSTM, unbind (not x.shape[0])
            raise UnsupportedOpError(f"{describe_node(gm, node)} cannot be written to a CSR bundle: {op.not_in_bundle}")
        if op is None and info.inputs and _dims_read(node) is None:
            return _classify_shape_node(gm, node)  # names what it cannot follow
        # sizes read (x.shape, b, n, c = x.shape) pin the channels they read, as without require_csr: the
        # exporter writes the pruned model's realised shapes
    read = _dims_read(node)
    if read is not None:
        for src in info.inputs:
            axis = infos[src.name].axis
            if axis is not None and (read == "all" or axis in {d % len(infos[src.name].shape) for d in read}):
                info.pinned_inputs[src.name] = f"its size is read by node '{node.name}'"
        return info
    if not info.inputs:
        return info  # arithmetic on sizes, an element of a tuple: no channels
    op = lookup(gm, node)
    if op is None:
        _barrier(gm, node, info, "svdcompress does not know how channels flow through it")
    elif op.flow is Flow.RECURRENT and _rnn(gm, node, info, infos):
        pass
    else:
        _keep(info, f"{op.name} ('{node.name}') keeps every channel that reaches it")
        info.axis = None
        if node.op == "call_module":
            info.module = gm.get_submodule(str(node.target))
            info.note = (
                f"{node.target}: {type(info.module).__name__} is kept whole (its units are not pruned); "
                f"the {sum(_info_channels(i) for i in info.inputs)} channel(s) that reach it are kept"
            )
    return info


GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
"""Gate blocks of the weight rows of each recurrent mode: hidden unit j owns row ``j + k * hidden_size`` of each."""


def _rnn(gm: fx.GraphModule, node: fx.Node, info: NodeInfo, infos: dict[str, NodeInfo]) -> bool:
    """A one-layer, one-direction LSTM / GRU / RNN called on one tensor: it owns its hidden units (pruned when
    nothing reads them, its own recurrence included) and reads its input features like a Linear. False if
    it is kept whole (several layers, bidirectional, projections, an initial state passed in)."""
    mod = gm.get_submodule(str(node.target))
    if not isinstance(mod, nn.RNNBase) or mod.mode not in GATES or len(node.all_input_nodes) != 1:
        return False
    if mod.num_layers != 1 or mod.bidirectional or mod.proj_size or len(info.inputs) != 1:
        return False
    src = infos[info.inputs[0].name]
    info.kind, info.module, info.slots, info.axis = Kind.RNN, mod, mod.hidden_size, None
    info.read_ok = src.axis == len(src.shape) - 1
    if not info.read_ok:
        info.pinned_inputs[src.node.name] = f"its channels reach '{node.target}' on another axis than it reads"
    return True


def rnn_tensor(mod: nn.Module, name: str) -> torch.Tensor:
    """``weight_ih_l0`` and friends of a recurrent module, detached (torch types them as Tensor | Module)."""
    t = getattr(mod, name)
    assert isinstance(t, torch.Tensor), name  # internal invariant: one-layer RNNBase parameters
    return t.detach()


def _dims_read(node: fx.Node) -> list[int] | str | None:
    """The dims whose sizes a size-read node reads ("all" for every dim), or None if it is not a size read.

    A size that only feeds the size arguments of view / reshape / expand does not count: those ops are run
    again with the smaller size, and where they send the channels is checked on their own.
    """
    if node.op == "call_method" and node.target == "dim":
        return []
    if node.op == "call_method" and node.target in ("size", "numel"):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dim, int) and node.target == "size":
            return [] if _only_sizes(node) else [dim]
        return "all"
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        dims = [u.args[1] for u in node.users if u.target is operator.getitem and isinstance(u.args[1], int)]
        if len(dims) != len(node.users):
            return "all"
        return [u.args[1] for u in node.users if not _only_sizes(u)]  # type: ignore[misc]  # ints, checked above
    return None


_SIZE_TAKERS = ("view", "reshape", "expand", torch.reshape)


def _only_sizes(node: fx.Node) -> bool:
    """True if every use of ``node`` is as a size argument of view / reshape / expand."""
    return all(u.target in _SIZE_TAKERS and node not in u.args[:1] for u in node.users)


def _dense(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    mod = info.module
    if len(info.inputs) != 1:
        raise _Barrier("a layer is pruned with one tensor input")
    src = infos[info.inputs[0].name]
    if isinstance(mod, nn.Linear):
        info.kind, info.axis = Kind.DENSE, len(info.shape) - 1
        info.read_ok = src.axis == len(src.shape) - 1
    else:
        conv: nn.Conv1d | nn.Conv2d = mod  # type: ignore[assignment]  # the registry's DENSE modules are Linear/Conv
        if require_csr and conv.padding_mode != "zeros":
            raise UnsupportedOpError(
                f"{describe_node(gm, node)} cannot be written to a CSR bundle: padding_mode="
                f"{conv.padding_mode!r} (the format pads with zeros only)"
            )
        info.axis = 1
        info.read_ok = src.axis == 1
        if conv.groups == 1:
            info.kind = Kind.DENSE
        elif conv.groups == conv.in_channels == conv.out_channels and info.read_ok:
            info.kind = Kind.DEPTHWISE
            info.ties = [src.node]
        else:
            info.kind = Kind.GROUPED
            info.pin_reason = info.pin_reason or f"grouped convolution '{node.target}' is kept whole"
    if not info.read_ok:
        info.pinned_inputs[src.node.name] = f"its channels reach '{node.target}' on another axis than the one it reads"
    _set_axis(info)


def _channelwise(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    mod = info.module
    if len(info.inputs) != 1 or len(node.all_input_nodes) != 1:
        raise _Barrier("expected one tensor input")
    src = infos[info.inputs[0].name]
    axis = src.axis
    if axis is None or len(src.shape) != len(info.shape) or src.shape[axis] != info.shape[axis]:
        raise _Barrier(f"it maps shape {src.shape} to {info.shape}, not channel by channel")
    if isinstance(mod, nn.PReLU) and mod.num_parameters not in (1, info.shape[1]):
        raise _Barrier("PReLU must have 1 or C parameters")
    if getattr(mod, "return_indices", False) or node.kwargs.get("return_indices"):
        raise _Barrier("pooling with return_indices is not supported")
    info.kind, info.axis, info.ties = Kind.PER_CHANNEL, axis, [src.node]
    per_dim1 = isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) or (
        isinstance(mod, nn.PReLU) and mod.num_parameters > 1
    )
    if axis != 1 and (per_dim1 or "pool" in op.name):
        _keep(info, f"'{node.target}' works on dim 1, and the channels are on dim {axis}")
    _set_axis(info)


def _binary(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    in_shapes = [infos[n.name].shape for n in info.inputs]
    if require_csr and any(len(s) != len(info.shape) for s in in_shapes):
        raise _not_in_csr(gm, node, f"operands {in_shapes} broadcast over the batch of {info.shape}")
    n = len(info.shape)

    def placed(x: NodeInfo) -> int | None:  # the output axis that x's channel axis lands on, if not broadcast
        if x.axis is None:
            return None
        at = x.axis + n - len(x.shape)
        return at if at >= 0 and x.shape[x.axis] == info.shape[at] else None

    ops_ = [infos[x.name] for x in info.inputs]
    order = [x for x in ops_ if x.kind is not Kind.PINNED] + [x for x in ops_ if x.kind is Kind.PINNED]
    axis = next((a for x in order if (a := placed(x)) is not None), None)
    if axis is None:
        raise _Barrier(f"no operand of shapes {in_shapes} carries its channels into {info.shape}")
    info.axis, info.ties = axis, []
    for x in ops_:
        if placed(x) == axis:
            info.ties.append(x.node)
            continue
        at = axis - (n - len(x.shape))
        if at >= 0 and x.shape[at] != 1:  # e.g. a (C,) layer-scale vector: it would not shrink with the channels
            _keep(info, f"'{x.node.name}' is combined with the channels of '{node.name}' element by element")
            _set_axis(info)
            return
        info.pinned_inputs[x.node.name] = f"it is broadcast across the channels of '{node.name}'"
    info.kind = Kind.PER_CHANNEL if len(info.ties) == 1 else Kind.ELEMENTWISE
    _set_axis(info)


def _cat(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    n = len(info.shape)
    srcs = [infos[x.name] for x in info.inputs]
    if not isinstance(dim, int) or any(len(s.shape) != n for s in srcs):
        raise _Barrier("torch.cat is followed along one dim of same-rank tensors")
    if require_csr and dim % n == 0:
        raise _not_in_csr(gm, node, "torch.cat along the batch is not in the format")
    axes = {s.axis for s in srcs}
    if len(axes) != 1 or None in axes:
        _keep(info, f"the operands of '{node.name}' carry their channels on different axes")
        _set_axis(info)
        return
    (axis,) = axes
    assert axis is not None
    info.axis, info.ties = axis, [s.node for s in srcs]
    if dim % n == axis:
        info.kind = Kind.CAT
    else:  # along time or space: channel c of every operand is channel c of the result
        info.kind, info.const_ok = Kind.ELEMENTWISE, False
    _set_axis(info)


def _reshape(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    # flatten-like views/reshapes were rewritten as torch.flatten(x, 1) by _normalize
    _move(gm, node, op, info, infos, require_csr)


def _move(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    """Reshape, permute, transpose, indexing, expand and reductions: where does the channel axis go?

    Decided by running the op on a tensor holding each element's channel index: the channels went to output
    axis ``k`` if the result holds ``c // block`` at position ``c`` along ``k`` and nothing else varies.
    """
    if len(info.inputs) != 1:
        if node.target is operator.getitem and not info.inputs:
            _rnn_output(node, info, infos)
            _set_axis(info)
            return
        raise _Barrier("expected one tensor input")
    src = infos[info.inputs[0].name]
    found = None if src.axis is None else _channel_map(gm, node, src)
    if found is None:
        _keep(info, f"'{node.name}' splits, slices, broadcasts or reduces the channel axis")
    elif _fixed_size(node, found[0], info.shape):
        _keep(info, f"'{node.name}' is given the channel count as a number (write -1 there to let channels go)")
    else:
        info.kind, info.ties = Kind.MOVE, [src.node]
        info.axis, info.block, scaled = found
        info.const_ok = not scaled and (op.name != "reduce" or node.target not in ("sum", torch.sum))
    _set_axis(info)


def _rnn_output(node: fx.Node, info: NodeInfo, infos: dict[str, NodeInfo]) -> None:
    """An element of a tuple: the output sequence or the last hidden state of an RNN carry its units on their
    last axis; anything else (the LSTM's cell state, a barrier's tuple) is kept."""
    src, index = node.args[0], node.args[1]
    rnn = None
    if isinstance(src, fx.Node) and src.name in infos:
        if infos[src.name].kind is Kind.RNN:
            rnn, part = src, ("output", "h_n")[index] if isinstance(index, int) and index in (0, 1) else None
        elif (
            src.target is operator.getitem
            and isinstance(up := src.args[0], fx.Node)
            and up.name in infos
            and infos[up.name].kind is Kind.RNN
            and src.args[1] == 1  # LSTM: (h_n, c_n)
        ):
            rnn, part = up, ("h_n", "c_n")[index] if isinstance(index, int) and index in (0, 1) else None
    if rnn is None or part is None or info.shape[-1] != infos[rnn.name].slots:
        _keep(info, f"it is taken from '{src}', which keeps every channel")
        return
    if part == "c_n":
        if node.users:  # `out, (h, c) = lstm(x)` names c without reading it
            info.pinned_inputs[rnn.name] = f"the cell state of '{rnn.target}' is used"
        _keep(info, f"the cell state of '{rnn.target}' is used")
        return
    info.kind, info.ties, info.axis, info.block, info.const_ok = Kind.MOVE, [rnn], len(info.shape) - 1, 1, False


def _channel_map(gm: fx.GraphModule, node: fx.Node, src: NodeInfo) -> tuple[int, int, bool] | None:
    """``(output axis, block, scaled)``: output slot ``i`` along the axis is input channel ``i // block`` (times a
    constant, e.g. a sum over time, when ``scaled``); None if the op mixes, slices or drops the channel axis."""
    assert src.axis is not None
    c = src.shape[src.axis]
    index = torch.arange(1, c + 1, dtype=torch.float64).view(-1, *([1] * (len(src.shape) - src.axis - 1)))
    probe = index.expand(src.shape).clone()  # (*shape): every element holds its channel + 1

    def fill(n: fx.Node) -> Any:
        return probe if n is src.node else n.meta.get(_VALUE)

    try:
        with torch.no_grad():
            out = run_node(gm, node, fx.node.map_arg(node.args, fill), fx.node.map_arg(node.kwargs, fill))
    except Exception:  # e.g. an op without float64 support: treat as unknown
        return None
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.numel() == 0:
        return None
    if c == 1:  # every output element comes from the one channel: any axis is right, take the natural one
        k = _natural_axis(tuple(out.shape))
        assert k is not None
        return k, out.shape[k], True
    scale = float(out.reshape(-1)[0])  # channel 0 holds 1: what the op made of it
    if not (math.isfinite(scale) and scale > 0):
        return None
    for k in range(out.dim()):
        size = out.shape[k]
        if size % c:
            continue
        block = size // c
        want = torch.arange(size, dtype=torch.float64).div(block, rounding_mode="floor").add(1).mul(scale)
        want = want.view(-1, *([1] * (out.dim() - k - 1)))
        if torch.equal(out, want.expand(out.shape).to(out.dtype)):
            return k, block, scale != 1.0
    return None


def _fixed_size(node: fx.Node, axis: int, shape: tuple[int, ...]) -> bool:
    """True if a view/reshape/expand states the size of output ``axis`` as a number, so that the op would
    break once channels go (``-1`` and sizes read from tensors adapt)."""
    if node.op == "call_module" or node.target not in ("view", "reshape", "expand", torch.reshape):
        return False
    sizes: Any = node.args[1:] if node.op == "call_method" else node.args[1:2]
    sizes = node.kwargs.get("shape", node.kwargs.get("size", sizes))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    if len(sizes) != len(shape):
        return True  # cannot tell: keep
    entry = sizes[axis]
    return isinstance(entry, int) and entry != -1


def _gather(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    if not isinstance(info.module, InputGather):
        raise _Barrier("index_select is supported inside svdcompress's InputGather only")
    info.kind, info.axis = Kind.GATHER, 1
    _set_axis(info)


def _normalize_op(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    n = len(info.shape)
    if op.name == "layer_norm":
        mod = info.module
        normalized = getattr(mod, "normalized_shape", None) if mod is not None else _fn_arg(node, 1)
        if not isinstance(normalized, (tuple, list, int)):
            raise _Barrier("its normalized_shape is not known")
        k = 1 if isinstance(normalized, int) else len(normalized)
        dims = set(range(n - k, n))
    else:
        dim = softmax_dim(gm, node)
        if require_csr and (not isinstance(dim, int) or dim % n == 0):
            raise _not_in_csr(gm, node, f"{op.name} needs an explicit dim other than the batch, got dim={dim}")
        if not isinstance(dim, int):
            raise _Barrier(f"{op.name} without an explicit dim")
        dims = {dim % n}
    if len(info.inputs) != 1:
        raise _Barrier("expected one tensor input")
    src = infos[info.inputs[0].name]
    if src.axis in dims or 0 in dims or src.shape != info.shape:
        _keep(info, f"{op.name} normalises over all features")
    else:  # over time or space: channel by channel; the value depends on the other sizes, so never folded
        info.kind, info.axis, info.ties, info.const_ok = Kind.PER_CHANNEL, src.axis, [src.node], False
    _set_axis(info)


def _fn_arg(node: fx.Node, i: int) -> Any:
    return node.args[i] if len(node.args) > i else None


def _embed(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    mod = info.module
    if not isinstance(mod, nn.Embedding) or len(info.inputs) != 1:
        raise _Barrier("an embedding is pruned as an nn.Embedding module of one id tensor")
    info.kind, info.axis = Kind.EMBEDDING, len(info.shape) - 1
    ids = info.inputs[0].name
    if infos[ids].axis is not None:
        info.pinned_inputs[ids] = f"it holds the ids '{node.target}' looks up"
    if mod.max_norm is not None:
        info.pin_reason = info.pin_reason or f"embedding '{node.target}' renormalises its rows (max_norm)"
    _set_axis(info)


def _keep_op(
    gm: fx.GraphModule,
    node: fx.Node,
    op: Op,
    info: NodeInfo,
    infos: dict[str, NodeInfo],
    require_csr: bool,
) -> None:
    _keep(info, f"{op.name} ('{node.name}') keeps every channel that reaches it")
    _set_axis(info)


def softmax_dim(gm: fx.GraphModule, node: fx.Node) -> Any:
    """The ``dim`` of a softmax/log_softmax node (module attribute or call argument); None if implicit."""
    if node.op == "call_module":
        dim = getattr(gm.get_submodule(str(node.target)), "dim", None)
    else:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    shape = _shape(node) or ()
    if dim is None and len(shape) == 2:
        return 1  # torch's implicit softmax dim for 2-D input
    return dim


_CLASSIFIERS = {
    Flow.DENSE: _dense,
    Flow.CHANNELWISE: _channelwise,
    Flow.BINARY: _binary,
    Flow.CAT: _cat,
    Flow.RESHAPE: _reshape,
    Flow.MOVE: _move,
    Flow.REDUCE: _move,
    Flow.GATHER: _gather,
    Flow.NORMALIZE: _normalize_op,
    Flow.EMBED: _embed,
    Flow.KEEP: _keep_op,
    Flow.RECURRENT: _keep_op,  # a recurrent module returns a tuple: see _classify_value_node
}


def run_node(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any) -> Any:
    """Run one fx node on concrete ``args`` / ``kwargs`` (the constant and channel probes)."""
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]  # call_function targets are callables


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
    op = lookup(gm, node)
    if op is None or op.flow is not Flow.RESHAPE:
        return False
    ins, out = _tensor_inputs(node), _shape(node)
    if len(ins) != 1 or out is None:
        return False
    src = _shape(ins[0])
    # (N, C, *S) -> (N, C * prod(S)): shape propagation on a real input decides, whatever the arguments.
    return src is not None and len(src) >= 2 and out == (src[0], math.prod(src[1:]))


_REDUCE_WITH_INDICES = {"max": torch.amax, "min": torch.amin, torch.max: torch.amax, torch.min: torch.amin}


def _max_values_to_amax(gm: fx.GraphModule) -> None:
    """Rewrite ``x.max(dim).values`` / ``x.max(dim)[0]`` (indices unused) as ``torch.amax(x, dim)``: the same
    values, and a tensor the pruner follows (max over time), where the (values, indices) pair would be a barrier."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op not in ("call_method", "call_function"):
            continue
        try:
            amax = _REDUCE_WITH_INDICES.get(node.target)
        except TypeError:  # an unhashable target
            continue
        args = list(node.args) + [node.kwargs[k] for k in ("dim", "keepdim") if k in node.kwargs]
        if amax is None or not (2 <= len(args) <= 3) or not isinstance(args[1], int) or not node.users:
            continue
        if not all(
            (u.target is operator.getitem and u.args[1:] == (0,)) or (u.target is getattr and u.args[1:] == ("values",))
            for u in node.users
        ):
            continue
        keepdim = bool(args[2]) if len(args) > 2 else False
        first = next(iter(node.users))
        with graph.inserting_after(node):
            new = graph.call_function(amax, (args[0], args[1], keepdim))
        new.meta = dict(first.meta)
        for u in list(node.users):
            u.replace_all_uses_with(new)
            graph.erase_node(u)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()


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


def _is_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.target in (F.relu_, torch.relu_, operator.iadd, operator.isub, operator.imul, operator.itruediv):
        return True
    try:
        target: Any = node.target  # call_function targets are callables
        pair = normalize_function(target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
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
            raise _unsupported(
                gm,
                node,
                f"it modifies '{ins[0].name}' in place, which '{other.name}' reads later; make it out of place "
                "(inplace=False, or the op without the trailing _)",
            )


def _classify_shape_node(gm: fx.GraphModule, node: fx.Node) -> NodeInfo:
    """Accept only shape reads that cannot change when channels are removed (the batch size)."""
    args = node.args
    ok = (
        (node.op == "call_method" and node.target == "size" and (args[1:] == (0,) or node.kwargs == {"dim": 0}))
        or (node.op == "call_method" and node.target == "dim")
        or (
            node.op == "call_function"
            and node.target is getattr
            and args[1:] == ("shape",)
            and all(u.target is operator.getitem and u.args[1:] == (0,) for u in node.users)
        )
        or (
            node.op == "call_function"
            and node.target is operator.getitem
            and args[1:] == (0,)
            and isinstance(args[0], fx.Node)
            and args[0].target is getattr
        )
    )
    if not ok and (node.target == "size" or node.target is getattr):
        raise _not_in_csr(gm, node, "it reads a tensor size that changes when channels are removed")
    if not ok:
        raise _not_in_csr(gm, node, "svdcompress does not know how channels flow through it")
    return NodeInfo(node, Kind.SHAPE, ())
