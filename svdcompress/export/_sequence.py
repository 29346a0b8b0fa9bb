"""CSR capture of the ops sequence models add (the writers :class:`svdcompress.export.csr._Capture` dispatches to):
layer_norm, matmul of two activations, transpose / permute, indexing, expand, constants (parameters used as
tensors), broadcasting arithmetic, reductions, the embedding and Conv1d (as a Conv2d over ``(C, 1, L)``).

The runtime holds every value batch-major. A torch tensor whose batch is not on axis 0 (attention's
``qkv.permute(2, 0, 3, 1, 4)``) is written with that axis moved to the front; ``_Capture.bdim`` remembers
where torch has it, and :func:`axis` maps torch's axes to the runtime's.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from ..errors import ExportError
from ..pruning.tracing import describe_node

if TYPE_CHECKING:
    from .csr import _Capture

__all__ = [
    "arith",
    "axis",
    "constant",
    "conv1d",
    "embedding",
    "expand",
    "index",
    "layer_norm",
    "lstm",
    "matmul",
    "reduce",
]

_VALUE = "svdcompress_value"  # node.meta key the pruner's shape run leaves on non-tensor nodes (sizes)


def _refuse(c: _Capture, node: fx.Node, why: str) -> ExportError:
    return ExportError(f"{describe_node(c.gm, node)} cannot be written to a CSR bundle: {why}; export to ONNX instead")


def axis(c: _Capture, value: str, d: int) -> int:
    """The runtime axis (batch first) of torch's axis ``d`` of ``value``."""
    rank = len(c.shapes[value]) + 1
    d %= rank
    b = c.bdim.get(value, 0)
    return 0 if d == b else d + 1 if d < b else d


def _scalar(arg: Any) -> float | int | None:
    """A Python number, or the number a non-tensor node held in the shape run (sizes are fixed in a bundle)."""
    if isinstance(arg, fx.Node):
        arg = arg.meta.get(_VALUE)
    return arg if isinstance(arg, (int, float)) and not isinstance(arg, bool) else None


def _out_shape(node: fx.Node) -> list[int]:
    return list(node.meta["tensor_meta"].shape)


def constant(c: _Capture, node: fx.Node, attr: fx.Node) -> str:
    """A parameter read as a tensor: its shape padded with leading 1s to ``node``'s rank, whose first 1 is the
    batch (every example sees the same values)."""
    rank = len(_out_shape(node))
    key = (attr, rank)
    if key in c.constants:
        return c.constants[key]
    t = operator.attrgetter(str(attr.target))(c.gm)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise _refuse(c, node, f"'{attr.target}' is not a float tensor")
    shape = [1] * (rank - t.dim()) + list(t.shape)
    if t.dim() > rank or shape[0] != 1 or rank < 2:
        raise _refuse(c, node, f"parameter '{attr.target}' of shape {list(t.shape)} varies along the batch")
    name = f"{attr.name}_r{rank}" if any(k[0] is attr for k in c.constants) else attr.name
    c.shapes[name] = shape[1:]
    c.nodes.append(
        {
            "name": name,
            "op": "constant",
            "inputs": [],
            "outputs": [name],
            "attrs": {"shape": shape[1:]},
            "params": {"value": c._param(f"{name}.value", t.reshape(shape[1:]))},
        }
    )
    c.constants[key] = name
    return name


_KINDS = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    "add": "add",
    "add_": "add",
    operator.sub: "sub",
    operator.isub: "sub",
    torch.sub: "sub",
    "sub": "sub",
    "sub_": "sub",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    "mul": "mul",
    "mul_": "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    torch.div: "div",
    "div": "div",
    "div_": "div",
}


def arith(c: _Capture, node: fx.Node) -> None:
    """``a + b``, ``a - b``, ``a * b``, ``a / b`` of two broadcasting tensors, or of a tensor and a number."""
    kind = _KINDS.get(node.target)
    if kind is None or len(node.args) != 2 or set(node.kwargs) - ({"rounding_mode"} if kind == "div" else set()):
        raise _refuse(c, node, "only two-operand add, sub, mul and div without alpha are in the format")
    if node.kwargs.get("rounding_mode") is not None:
        raise _refuse(c, node, "division with a rounding_mode is not in the format")
    a, b = node.args
    tensors = [isinstance(x, fx.Node) and _scalar(x) is None for x in (a, b)]
    if all(tensors):
        rank = len(_out_shape(node))
        ins = [c._in(node, x, any_batch=True) for x in (a, b)]
        if any(len(c.shapes[v]) + 1 != rank for v in ins):
            raise _refuse(c, node, f"operands of ranks {[len(c.shapes[v]) + 1 for v in ins]} broadcast over the batch")
        bd = {c.bdim.get(v, 0) for v in ins}
        if len(bd) != 1:
            raise _refuse(c, node, "its operands hold the batch on different axes")
        c._emit(node, kind, ins, bdim=bd.pop())
        return
    if not any(tensors):
        raise _refuse(c, node, "neither operand is a tensor")
    x = c._in(node, a if tensors[0] else b, any_batch=True)
    s = _scalar(b if tensors[0] else a)
    assert s is not None  # internal invariant: the other operand is a number
    c._emit(node, kind, [x], {"scalar": float(s), "scalar_first": not tensors[0]}, bdim=c.bdim.get(x, 0))


def layer_norm(c: _Capture, node: fx.Node) -> None:
    m = c._module(node)
    w: Any
    b: Any
    if isinstance(m, nn.LayerNorm):
        shape, eps, w, b = tuple(m.normalized_shape), m.eps, m.weight, m.bias
    else:  # F.layer_norm(x, normalized_shape, weight, bias, eps)
        names = ("normalized_shape", "weight", "bias", "eps")
        args: dict[str, Any] = dict(zip(names, node.args[1:], strict=False))
        args.update({k: v for k, v in node.kwargs.items() if k in names})
        shape, eps = tuple(args.get("normalized_shape", ())), float(args.get("eps", 1e-5))
        w, b = (
            operator.attrgetter(str(args[k].target))(c.gm) if isinstance(args.get(k), fx.Node) else None
            for k in ("weight", "bias")
        )
        if any(isinstance(args.get(k), fx.Node) and args[k].op != "get_attr" for k in ("weight", "bias")):
            raise _refuse(c, node, "its weight and bias must be parameters")
    x = c._in(node, node.args[0], any_batch=True)
    if len(shape) != 1 or axis(c, x, -1) == 0:
        raise _refuse(c, node, f"LayerNorm over {list(shape)}: the format normalises the last dim only")
    params = {}
    if isinstance(w, torch.Tensor):
        params["gamma"] = c._param(f"{node.name}.gamma", w)
    if isinstance(b, torch.Tensor):
        params["beta"] = c._param(f"{node.name}.beta", b)
    c._emit(node, "layer_norm", [x], {"eps": float(eps)}, params, bdim=c.bdim.get(x, 0))


def matmul(c: _Capture, node: fx.Node) -> None:
    if len(node.args) != 2 or node.kwargs:
        raise _refuse(c, node, "matmul takes two tensors")
    a, b = (c._in(node, x, any_batch=True) for x in node.args)
    rank = len(_out_shape(node))
    bd = {c.bdim.get(v, 0) for v in (a, b)}
    if any(len(c.shapes[v]) + 1 != rank for v in (a, b)) or len(bd) != 1 or bd.pop() >= rank - 2:
        raise _refuse(c, node, "the format multiplies (…, m, k) @ (…, k, n) of equal ranks with the batch in front")
    c._emit(node, "matmul", [a, b], bdim=c.bdim.get(a, 0))


def transpose(c: _Capture, node: fx.Node) -> None:
    x = c._in(node, node.args[0], any_batch=True)
    rank = len(c.shapes[x]) + 1
    rest = [_scalar(v) for v in node.args[1:]] or [_scalar(v) for v in node.kwargs.values()]
    if len(rest) == 1 and isinstance(node.args[1], (list, tuple)):  # x.permute([2, 0, 1])
        rest = [_scalar(v) for v in node.args[1]]
    if any(not isinstance(v, int) for v in rest):
        raise _refuse(c, node, f"its axes {node.args[1:]} are not constants")
    dims = [int(v) % rank for v in rest if v is not None]
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name in ("transpose", "swapaxes") and len(dims) == 2:
        perm = list(range(rank))
        perm[dims[0]], perm[dims[1]] = perm[dims[1]], perm[dims[0]]
    elif name == "permute" and sorted(dims) == list(range(rank)):
        perm = dims
    else:
        raise _refuse(c, node, f"cannot read the permutation of {name}{tuple(rest)}")
    b_in = c.bdim.get(x, 0)
    b_out = perm.index(b_in)
    order = [b_out] + [i for i in range(rank) if i != b_out]  # torch's output axes in the runtime's order
    c._emit(node, "transpose", [x], {"perm": [axis(c, x, perm[i]) for i in order]}, bdim=b_out)


def index(c: _Capture, node: fx.Node) -> None:
    """``x[...]`` with integers and slices (``x[:, 0]``, ``qkv[1]``), ``torch.select`` / ``x.select``."""
    src = node.args[0]
    if node.target is operator.getitem and isinstance(src, fx.Node) and src in c.recurrent:
        if node.args[1] != 0:
            raise _refuse(c, node, "of an LSTM's results only the output sequence (index 0) is in the format")
        c.values[node] = c.recurrent[src]
        return
    x = c._in(node, src, any_batch=True)
    rank = len(c.shapes[x]) + 1
    if node.target is operator.getitem:
        key = node.args[1]
        entries = list(key) if isinstance(key, tuple) else [key]
    else:
        dim, i = (_scalar(v) for v in (node.args[1:] or (node.kwargs.get("dim"), node.kwargs.get("index"))))
        if not isinstance(dim, int) or not isinstance(i, int):
            raise _refuse(c, node, "select needs constant dim and index")
        entries = [slice(None)] * (dim % rank) + [i]
    if any(e is Ellipsis for e in entries):
        k = entries.index(Ellipsis)
        entries = entries[:k] + [slice(None)] * (rank - len(entries) + 1) + entries[k + 1 :]
    if len(entries) > rank:
        raise _refuse(c, node, f"index {node.args[1:]} has more entries than the tensor has axes")
    full = [*c.shapes[x]]
    b = c.bdim.get(x, 0)
    torch_shape = [*full[:b], 0, *full[b:]]
    spec: list[Any] = [[0, s, 1] for s in full]
    removed_before_batch = 0
    for d, e in enumerate(entries):
        size = torch_shape[d]
        if isinstance(e, slice):
            parts = [_scalar(v) if v is not None else None for v in (e.start, e.stop, e.step)]
            if any(v is None and w is not None for v, w in zip(parts, (e.start, e.stop, e.step), strict=True)):
                raise _refuse(c, node, "slice bounds must be constants")
            if d == b:
                if parts != [None, None, None]:
                    raise _refuse(c, node, "it slices the batch")
                continue
            start, stop, step = slice(*parts).indices(size)
            if step < 1:
                raise _refuse(c, node, "negative slice steps are not in the format")
            spec[axis(c, x, d) - 1] = [start, max(start, stop), step]
        else:
            i = _scalar(e)
            if not isinstance(i, int) or d == b or not -size <= i < size:
                raise _refuse(c, node, f"index entry {e!r} on axis {d} is not a constant integer or slice")
            spec[axis(c, x, d) - 1] = i % size
            removed_before_batch += d < b
    c._emit(node, "index", [x], {"index": spec}, bdim=b - removed_before_batch)


def expand(c: _Capture, node: fx.Node) -> None:
    x = c._in(node, node.args[0])
    target = _out_shape(node)[1:]
    if len(target) != len(c.shapes[x]):
        raise _refuse(c, node, "expand that adds axes is not in the format")
    c._emit(node, "expand", [x], {"shape": target})


_REDUCE = {torch.amax: "max", torch.amin: "min", torch.sum: "sum", torch.mean: "mean"}
_REDUCE_METHODS = {"amax": "max", "amin": "min", "sum": "sum", "mean": "mean"}


def reduce(c: _Capture, node: fx.Node) -> None:
    target: Any = node.target
    kind = _REDUCE_METHODS.get(target) if isinstance(target, str) else _REDUCE.get(target)
    x = c._in(node, node.args[0], any_batch=True)
    dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep: Any = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dl = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    if kind is None or dims is None or "dtype" in node.kwargs or any(not isinstance(_scalar(d), int) for d in dl):
        raise _refuse(c, node, "a reduction needs constant dims (and no dtype)")
    axes = [axis(c, x, int(d)) for d in dl]
    if 0 in axes or not isinstance(keep, bool):
        raise _refuse(c, node, "it reduces over the batch")
    b = c.bdim.get(x, 0)
    b_out = b if keep else b - sum(1 for d in dl if int(d) % (len(c.shapes[x]) + 1) < b)
    c._emit(node, "reduce", [x], {"kind": kind, "dims": axes, "keepdim": keep}, bdim=b_out)


def embedding(c: _Capture, node: fx.Node) -> None:
    m = c._module(node)
    if not isinstance(m, nn.Embedding) or m.max_norm is not None:
        raise _refuse(c, node, "only nn.Embedding without max_norm is in the format")
    src = node.args[0]
    if not isinstance(src, fx.Node) or src.op != "placeholder":
        raise _refuse(c, node, "the embedding must read the model input (the token ids)")
    c.weight_modules[f"{node.name}.weight"] = m
    params = {"weight": c._param(f"{node.name}.weight", m.weight)}
    c._emit(node, "embedding", [c._in(node, src)], {"num_embeddings": m.num_embeddings}, params)


def conv1d(c: _Capture, node: fx.Node) -> None:
    """``nn.Conv1d`` as ``reshape (C, L) → (C, 1, L)``, a ``conv2d`` with a ``(1, k)`` kernel, and back."""
    m = c._module(node)
    assert isinstance(m, nn.Conv1d)  # internal invariant: the registry maps nn.Conv1d here
    if m.padding_mode != "zeros":
        raise _refuse(c, node, f"padding_mode={m.padding_mode!r} (the format pads with zeros only)")
    x = c._in(node, node.args[0])
    cin, length = c.shapes[x]
    cout, lout = _out_shape(node)[1:]
    name = node.name
    pad: Any = m.padding if isinstance(m.padding, str) else [0, int(m.padding[0])]
    attrs = {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": [1, int(m.kernel_size[0])],
        "stride": [1, int(m.stride[0])],
        "padding": pad,
        "dilation": [1, int(m.dilation[0])],
        "groups": m.groups,
    }
    c.weight_modules[f"{name}.weight"] = m
    params = {"weight": c._param(f"{name}.weight", m.weight.unsqueeze(2))}  # (out, in/groups, 1, k)
    if isinstance(m.bias, torch.Tensor):
        params["bias"] = c._param(f"{name}.bias", m.bias)
    plane, conv = f"{name}_in2d", f"{name}_2d"
    c.shapes[plane], c.shapes[conv] = [cin, 1, length], [cout, 1, lout]
    c.nodes.append(
        {
            "name": plane,
            "op": "reshape",
            "inputs": [x],
            "outputs": [plane],
            "attrs": {"shape": [cin, 1, length]},
            "params": {},
        }
    )
    c.nodes.append(
        {"name": conv, "op": "conv2d", "inputs": [plane], "outputs": [conv], "attrs": attrs, "params": params}
    )
    c._emit(node, "reshape", [conv], {"shape": [cout, lout]})


def lstm(c: _Capture, node: fx.Node) -> None:
    """A one-layer unidirectional ``nn.LSTM`` without an initial state: its input projection as a ``linear`` node
    (``W_ih``, ``b_ih + b_hh``) over every step at once, then the ``lstm`` recurrence over ``W_hh``."""
    m = c._module(node)
    if not isinstance(m, nn.LSTM) or m.num_layers != 1 or m.bidirectional or m.proj_size or len(node.args) != 1:
        raise _refuse(
            c, node, "the CSR runtime runs one-layer unidirectional nn.LSTMs without projections or initial states"
        )
    src = node.args[0]
    x = c._in(node, src, any_batch=True)
    if len(c.shapes[x]) != 2:
        raise _refuse(c, node, "the LSTM must read a batched (N, T, features) or (T, N, features) sequence")
    b = c.bdim.get(x, 0)
    steps = c.shapes[x][0]
    hidden = m.hidden_size
    name = node.name
    gates, out = f"{name}_gates", name
    p: dict[str, Any] = dict(m.named_parameters())
    bias = (p["bias_ih_l0"] + p["bias_hh_l0"]) if m.bias else torch.zeros(4 * hidden)
    c.weight_modules[f"{name}.weight_ih"] = m
    c.weight_modules[f"{name}.weight_hh"] = m
    c.shapes[gates], c.shapes[out] = [steps, 4 * hidden], [steps, hidden]
    for v in (gates, out):
        if b:
            c.bdim[v] = b
    c.nodes.append(
        {
            "name": gates,
            "op": "linear",
            "inputs": [x],
            "outputs": [gates],
            "attrs": {"in_features": m.input_size, "out_features": 4 * hidden},
            "params": {
                "weight": c._param(f"{name}.weight_ih", p["weight_ih_l0"]),
                "bias": c._param(f"{name}.bias", bias.detach()),
            },
        }
    )
    c.nodes.append(
        {
            "name": out,
            "op": "lstm",
            "inputs": [gates],
            "outputs": [out],
            "attrs": {"hidden_size": hidden},
            "params": {"weight_hh": c._param(f"{name}.weight_hh", p["weight_hh_l0"])},
        }
    )
    c.recurrent[node] = out
