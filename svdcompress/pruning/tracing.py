"""Trace a model with torch.fx and classify every node by how it moves channels (the pruner's input).

Why torch.fx: the pruner needs the exact dataflow between layers (which tensor a layer
reads, where channels are added, concatenated or flattened), and it must return a model
that still runs, exports and traces. ``torch.fx.symbolic_trace`` gives both: a graph to
analyse and a ``GraphModule`` whose submodules can be swapped for smaller ones. Torch-Pruning
would do the dependency analysis too, but adds a dependency and resolves unknown ops
heuristically; here every op is either understood exactly (it is in :data:`svdcompress.ops.OPS`)
or refused. :mod:`svdcompress.pruning.channels` builds the channel-dependency graph from the classified nodes.

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
    "Kind",
    "NodeInfo",
    "Tracer",
    "classify_nodes",
    "describe_node",
    "expected_input",
    "propagate_shapes",
    "trace_model",
]


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
    NORMALIZE = "normalize"  # softmax over the features: input and output pinned
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
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOpError(f"structural pruning supports models with one tensor input, got {len(placeholders)}")
    propagate_shapes(gm, example)
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
    return UnsupportedOpError(
        f"cannot prune through {describe_node(gm, node)}: {why}; supported are Linear, Conv1d/Conv2d, "
        "BatchNorm1d/2d, elementwise activations, dropout, pooling, flatten/view/reshape to (N, -1), "
        "residual add/sub/mul, torch.cat along dim 1, (log_)softmax over the features and InputGather"
    )


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


def classify_nodes(gm: fx.GraphModule, *, require_csr: bool = False) -> dict[str, NodeInfo]:
    """Classify every node of a traced, shape-propagated model (see :func:`trace_model`).

    Args:
        gm: the traced model.
        require_csr: also refuse ops the CSR bundle cannot express, with the registry's reason.

    Raises:
        UnsupportedOpError: at the first node whose channel flow is unknown.
    """
    calls: Counter[str] = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    return {node.name: _classify(gm, node, calls, require_csr) for node in gm.graph.nodes}


def _classify(gm: fx.GraphModule, node: fx.Node, calls: Counter[str], require_csr: bool) -> NodeInfo:
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
        raise _unsupported(gm, node, _get_attr_reason(gm, str(node.target)))
    if not shape:
        return _classify_shape_node(gm, node)
    _check_inplace(gm, node, ins)
    if len(shape) < 2:
        raise _unsupported(gm, node, f"its result has shape {shape}, not (N, C, ...)")
    op = lookup(gm, node)
    if op is None:
        raise _unsupported(gm, node, "svdcompress does not know how channels flow through it")
    if require_csr and not op.in_bundle:
        raise UnsupportedOpError(f"{describe_node(gm, node)} cannot be written to a CSR bundle: {op.not_in_bundle}")
    in_shapes = [_shape(n) or () for n in ins]
    if node.op == "call_module":
        info.module = gm.get_submodule(str(node.target))
        if calls[str(node.target)] > 1 and any(True for _ in info.module.parameters(recurse=False)):
            info.pin_reason = f"module '{node.target}' is called more than once"
    _CLASSIFIERS[op.flow](gm, node, op, info, in_shapes, require_csr)
    if info.kind is Kind.PER_CHANNEL and (
        len(ins) != 1 or in_shapes[0][:2] != shape[:2] or len(node.all_input_nodes) != 1
    ):
        raise _unsupported(gm, node, "expected one tensor input with the same (N, C) as the output")
    return info


def _dense(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    mod = info.module
    if isinstance(mod, nn.Linear):
        if len(in_shapes) != 1 or len(in_shapes[0]) != 2:
            raise _unsupported(gm, node, "Linear layers are pruned on (N, features) inputs only")
        info.kind = Kind.DENSE
        return
    conv: nn.Conv1d | nn.Conv2d = mod  # type: ignore[assignment]  # the registry's DENSE modules are Linear/Conv
    if require_csr and conv.padding_mode != "zeros":
        raise UnsupportedOpError(
            f"{describe_node(gm, node)} cannot be written to a CSR bundle: padding_mode="
            f"{conv.padding_mode!r} (the format pads with zeros only)"
        )
    if conv.groups == 1:
        info.kind = Kind.DENSE
    elif conv.groups == conv.in_channels == conv.out_channels:
        info.kind = Kind.DEPTHWISE
    else:
        info.kind = Kind.GROUPED
        info.pin_reason = info.pin_reason or f"grouped convolution '{node.target}' is kept whole"


def _channelwise(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    mod = info.module
    if isinstance(mod, nn.PReLU) and mod.num_parameters not in (1, info.shape[1]):
        raise _unsupported(gm, node, "PReLU must have 1 or C parameters")
    if getattr(mod, "return_indices", False) or node.kwargs.get("return_indices"):
        raise _unsupported(gm, node, "pooling with return_indices is not supported")
    if op.name == "mean" and not (len(in_shapes) == 1 and _mean_is_spatial(node, len(in_shapes[0]))):
        raise _unsupported(gm, node, "only means over spatial dims (2, 3, ...) keep channels apart")
    info.kind = Kind.PER_CHANNEL


def _binary(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    info.kind = Kind.PER_CHANNEL if len(info.inputs) == 1 else Kind.ELEMENTWISE
    if any(len(s) != len(info.shape) or s[1] != info.shape[1] for s in in_shapes):
        raise _unsupported(gm, node, f"operands {in_shapes} broadcast across the channel dim of {info.shape}")
    if require_csr and info.kind is not Kind.ELEMENTWISE:
        raise UnsupportedOpError(
            f"{describe_node(gm, node)} cannot be written to a CSR bundle: it adds a constant, "
            "and the format adds tensors only"
        )


def _cat(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(dim, int) or dim % len(info.shape) != 1 or any(len(s) != len(info.shape) for s in in_shapes):
        raise _unsupported(gm, node, "torch.cat is supported along the channel dim (1) only")
    info.kind = Kind.CAT


def _reshape(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    # flatten-like views/reshapes were rewritten as torch.flatten(x, 1) by _normalize; anything left is not one
    if node.target is not torch.flatten or not _is_flatten_like(gm, node):
        raise _unsupported(gm, node, "only flattening to (N, -1) keeps channels traceable")
    info.kind = Kind.FLATTEN


def _gather(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    if not isinstance(info.module, InputGather):
        raise _unsupported(gm, node, "index_select is supported inside svdcompress's InputGather only")
    info.kind = Kind.GATHER


def _normalize_op(
    gm: fx.GraphModule, node: fx.Node, op: Op, info: NodeInfo, in_shapes: list[tuple[int, ...]], require_csr: bool
) -> None:
    dim = softmax_dim(gm, node)
    if len(info.shape) != 2 or len(in_shapes) != 1 or dim not in (1, -1):
        raise _unsupported(
            gm,
            node,
            f"{op.name} is supported over the features of an (N, features) tensor only "
            f"(dim=1), got dim={dim} on shape {info.shape}",
        )
    info.kind = Kind.NORMALIZE
    info.pin_reason = f"{op.name} normalises over all features"


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
    Flow.GATHER: _gather,
    Flow.NORMALIZE: _normalize_op,
}


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


def _mean_is_spatial(node: fx.Node, ndim: int) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not dims:
        return False
    return all(isinstance(d, int) and d % ndim >= 2 for d in dims)


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
            raise _unsupported(gm, node, f"it modifies '{ins[0].name}' in place, which '{other.name}' reads later")


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
        raise _unsupported(gm, node, "it reads a tensor size that changes when channels are removed")
    if not ok:
        raise _unsupported(gm, node, "svdcompress does not know how channels flow through it")
    return NodeInfo(node, Kind.SHAPE, ())
