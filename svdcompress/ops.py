"""The op registry: every torch op svdcompress understands, declared once.

Each :class:`Op` says which torch modules, functions and tensor methods map to it, how channels flow
through it (what the structural pruner needs, :class:`Flow`), and how it is written to the CSR bundle
manifest (the op name, its attribute names with their defaults, its parameter roles, and which writer
of :mod:`svdcompress.export.csr` emits it). An op the bundle cannot express carries the reason instead,
so that ``prune(..., require_csr=True)`` and CSR export refuse it with the same sentence.

The manifest op names and attributes are the contract with :mod:`svdcompress.runtime`:
``relu``, ``relu6``, ``sigmoid``, ``tanh``, ``silu``, ``leaky_relu(negative_slope)``, ``elu(alpha)``,
``gelu(approximate)``, ``hardtanh(min_val, max_val)``, ``mish``, ``selu``, ``hardswish``,
``softplus(beta, threshold)``, ``prelu`` (param ``slope``: shape (1,) or (C,)), ``log_softmax(dim=1)``,
``softmax(dim=1)``, ``linear``, ``conv2d``, ``batchnorm``, ``max_pool2d``, ``avg_pool2d``,
``adaptive_avg_pool2d``, ``reshape``, ``add``, ``cat(dim=1)``, ``gather``; for sequence models
``layer_norm(eps)`` (params ``gamma``, ``beta``), ``matmul``, ``transpose(perm)``, ``index(index)``,
``constant(shape)`` (param ``value``), ``expand(shape)``, ``sub``/``mul``/``div`` (and ``add``) of two
broadcasting tensors or of a tensor and ``scalar``, ``reduce(kind, dims, keepdim)`` and ``embedding``
(weight ``(vocabulary, dim)``, reading an ``input_dtype: int64`` input), ``lstm`` (weight ``weight_hh``;
its input is the gates' input projection, a ``linear`` node). Axes count the batch as 0; a
``conv1d`` is written as ``conv2d`` over ``(C, 1, L)`` between two reshapes.

An op that is not in the table is a *barrier* for the pruner: the channels that reach it are kept (and the
report says so), the rest of the model is still pruned.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["OPS", "Flow", "InputGather", "Op", "bundle_ops", "lookup", "lookup_module"]


class InputGather(nn.Module):
    """Keep only the input features some weight reads: ``x.flatten(1)[:, index]``.

    Placed in front of a pruned MLP so that the model keeps its original input shape
    while its first layer reads only the live pixels. ``index`` is a sorted int64 buffer.
    """

    def __init__(self, index: torch.Tensor, in_features: int) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.index: torch.Tensor
        self.register_buffer("index", index.to(torch.int64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x.flatten(1), 1, self.index)  # (N, len(index))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, kept={self.index.numel()}"


class Flow(enum.Enum):
    """How channels (dim 1) flow through an op: what the structural pruner needs to know."""

    CHANNELWISE = "channelwise"  # one tensor in; output channel c reads input channel c only
    BINARY = "binary"  # + - * /: channelwise with one tensor operand, ties channel c of every tensor operand
    CAT = "cat"  # concatenation along dim 1: channel ranges map to the operands
    RESHAPE = "reshape"  # view / reshape / flatten / squeeze: channel c maps to itself or to a block of features
    DENSE = "dense"  # Linear / Conv: reads every input channel (per group), owns its output rows
    GATHER = "gather"  # InputGather: feature slots removable one by one
    NORMALIZE = "normalize"  # softmax / LayerNorm over some dims: pins the channel axis if it is among them
    MOVE = "move"  # permute / transpose / indexing / expand: the channel axis moves (or is split: pinned)
    REDUCE = "reduce"  # amax / mean / sum over some dims: channels pass if their axis is not reduced
    EMBED = "embed"  # nn.Embedding: owns its output dims, reads integer ids (no channels)
    KEEP = "keep"  # matmul of two activations, unbind: every channel that reaches it is kept
    RECURRENT = "recurrent"  # LSTM / GRU / RNN: owns its hidden units, reads its input and its own units


@dataclass(frozen=True)
class Op:
    """One op as every stage sees it.

    Attributes:
        name: the manifest op name (or a descriptive name for ops the bundle cannot express).
        flow: how channels flow through it.
        modules: ``nn.Module`` classes that are this op (subclasses match too).
        functions: ``call_function`` targets.
        methods: ``call_method`` names (``x.relu()``).
        attrs: manifest attributes ``(name, default)``, in the functional form's positional order after
            the input; a module form reads them from its attributes of the same name.
        params: manifest parameters ``(role, module attribute)``, e.g. PReLU's ``("slope", "weight")``.
        writer: which writer of the CSR capture emits it (``"elementwise"``, ``"alias"``, ``"pool"``, ...);
            ``None`` if the bundle cannot express the op.
        not_in_bundle: why the bundle cannot express it (when ``writer`` is ``None``).
    """

    name: str
    flow: Flow
    modules: tuple[type[nn.Module], ...] = ()
    functions: tuple[Callable[..., Any], ...] = ()
    methods: tuple[str, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    writer: str | None = "elementwise"
    not_in_bundle: str = ""

    @property
    def in_bundle(self) -> bool:
        return self.writer is not None


def _prune_only(name: str, flow: Flow, why: str, **forms: Any) -> Op:
    return Op(name, flow, writer=None, not_in_bundle=why, **forms)


_NO_KERNEL = "the CSR runtime has no kernel for it; export to ONNX instead"

OPS: tuple[Op, ...] = (
    # -- layers
    Op("linear", Flow.DENSE, modules=(nn.Linear,), writer="linear"),
    Op("conv2d", Flow.DENSE, modules=(nn.Conv2d,), writer="conv2d"),
    Op("conv1d", Flow.DENSE, modules=(nn.Conv1d,), writer="conv1d"),
    Op("embedding", Flow.EMBED, modules=(nn.Embedding,), writer="embedding"),
    Op("lstm", Flow.RECURRENT, modules=(nn.LSTM, nn.GRU, nn.RNN), writer="lstm"),  # CSR: one-layer LSTMs
    Op("layer_norm", Flow.NORMALIZE, modules=(nn.LayerNorm,), functions=(F.layer_norm,), writer="layer_norm"),
    Op("batchnorm", Flow.CHANNELWISE, modules=(nn.BatchNorm1d, nn.BatchNorm2d), writer="batchnorm"),
    Op("gather", Flow.GATHER, modules=(InputGather,), functions=(torch.index_select,), writer="gather"),
    # -- activations (element-wise, so the runtime may apply them in any layout)
    Op(
        "relu",
        Flow.CHANNELWISE,
        modules=(nn.ReLU,),
        functions=(F.relu, F.relu_, torch.relu, torch.relu_),
        methods=("relu", "relu_"),
    ),
    Op("relu6", Flow.CHANNELWISE, modules=(nn.ReLU6,), functions=(F.relu6,)),
    Op(
        "sigmoid",
        Flow.CHANNELWISE,
        modules=(nn.Sigmoid,),
        functions=(torch.sigmoid, F.sigmoid),
        methods=("sigmoid", "sigmoid_"),
    ),
    Op("tanh", Flow.CHANNELWISE, modules=(nn.Tanh,), functions=(torch.tanh, F.tanh), methods=("tanh", "tanh_")),
    Op("silu", Flow.CHANNELWISE, modules=(nn.SiLU,), functions=(F.silu,)),
    Op(
        "leaky_relu",
        Flow.CHANNELWISE,
        modules=(nn.LeakyReLU,),
        functions=(F.leaky_relu,),
        attrs=(("negative_slope", 0.01),),
    ),
    Op("elu", Flow.CHANNELWISE, modules=(nn.ELU,), functions=(F.elu,), attrs=(("alpha", 1.0),)),
    Op("gelu", Flow.CHANNELWISE, modules=(nn.GELU,), functions=(F.gelu,), attrs=(("approximate", "none"),)),
    Op(
        "hardtanh",
        Flow.CHANNELWISE,
        modules=(nn.Hardtanh,),
        functions=(F.hardtanh,),
        attrs=(("min_val", -1.0), ("max_val", 1.0)),
    ),
    Op("mish", Flow.CHANNELWISE, modules=(nn.Mish,), functions=(F.mish,)),
    Op("selu", Flow.CHANNELWISE, modules=(nn.SELU,), functions=(F.selu, torch.selu)),
    Op("hardswish", Flow.CHANNELWISE, modules=(nn.Hardswish,), functions=(F.hardswish,)),
    Op(
        "softplus",
        Flow.CHANNELWISE,
        modules=(nn.Softplus,),
        functions=(F.softplus,),
        attrs=(("beta", 1.0), ("threshold", 20.0)),
    ),
    Op("prelu", Flow.CHANNELWISE, modules=(nn.PReLU,), params=(("slope", "weight"),), writer="prelu"),
    _prune_only("hardsigmoid", Flow.CHANNELWISE, _NO_KERNEL, modules=(nn.Hardsigmoid,), functions=(F.hardsigmoid,)),
    _prune_only("celu", Flow.CHANNELWISE, _NO_KERNEL, modules=(nn.CELU,), functions=(F.celu,)),
    _prune_only(
        "clamp",
        Flow.CHANNELWISE,
        _NO_KERNEL,
        functions=(torch.clamp, torch.clip),
        methods=("clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_"),
    ),
    _prune_only("neg", Flow.CHANNELWISE, _NO_KERNEL, functions=(torch.neg, operator.neg), methods=("neg",)),
    _prune_only(
        "pointwise_math",  # what a hand-written GELU or attention scale is made of
        Flow.CHANNELWISE,
        _NO_KERNEL,
        functions=(torch.erf, torch.exp, torch.sqrt, torch.rsqrt, torch.pow, operator.pow),
        methods=("erf", "exp", "sqrt", "rsqrt", "pow"),
    ),
    # -- normalisation over a dim (the CSR bundle: over any axis but the batch)
    Op(
        "log_softmax",
        Flow.NORMALIZE,
        modules=(nn.LogSoftmax,),
        functions=(F.log_softmax, torch.log_softmax),
        methods=("log_softmax",),
        attrs=(("dim", 1),),
        writer="softmax",
    ),
    Op(
        "softmax",
        Flow.NORMALIZE,
        modules=(nn.Softmax,),
        functions=(F.softmax, torch.softmax),
        methods=("softmax",),
        attrs=(("dim", 1),),
        writer="softmax",
    ),
    # -- identities at inference time
    Op("identity", Flow.CHANNELWISE, modules=(nn.Identity,), methods=("contiguous", "detach", "clone"), writer="alias"),
    Op(
        "dropout",
        Flow.CHANNELWISE,
        modules=(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout),
        functions=(F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout),
        writer="dropout",
    ),
    # -- pooling (attrs: the functional forms' positional order, also the module attribute names)
    Op(
        "max_pool2d",
        Flow.CHANNELWISE,
        modules=(nn.MaxPool2d,),
        functions=(F.max_pool2d,),
        attrs=(
            ("kernel_size", None),
            ("stride", None),
            ("padding", 0),
            ("dilation", 1),
            ("ceil_mode", False),
            ("return_indices", False),
        ),
        writer="pool",
    ),
    Op(
        "avg_pool2d",
        Flow.CHANNELWISE,
        modules=(nn.AvgPool2d,),
        functions=(F.avg_pool2d,),
        attrs=(
            ("kernel_size", None),
            ("stride", None),
            ("padding", 0),
            ("ceil_mode", False),
            ("count_include_pad", True),
            ("divisor_override", None),
        ),
        writer="pool",
    ),
    Op(
        "adaptive_avg_pool2d",
        Flow.CHANNELWISE,
        modules=(nn.AdaptiveAvgPool2d,),
        functions=(F.adaptive_avg_pool2d,),
        attrs=(("output_size", None),),
        writer="pool",
    ),
    _prune_only(
        "pool1d",
        Flow.CHANNELWISE,
        "the CSR format has 2-D pooling only; export to ONNX instead",
        modules=(nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d),
        functions=(F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d),
    ),
    _prune_only(
        "adaptive_max_pool",
        Flow.CHANNELWISE,
        _NO_KERNEL,
        modules=(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d),
        functions=(F.adaptive_max_pool1d, F.adaptive_max_pool2d),
    ),
    Op("mean", Flow.REDUCE, functions=(torch.mean,), methods=("mean",), writer="reduce"),
    Op(
        "reduce",
        Flow.REDUCE,
        functions=(torch.amax, torch.amin, torch.sum),
        methods=("amax", "amin", "sum"),
        writer="reduce",
    ),
    # -- shape and wiring
    Op(
        "reshape",
        Flow.RESHAPE,
        modules=(nn.Flatten, nn.Unflatten),
        functions=(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze),
        methods=("flatten", "view", "reshape", "squeeze", "unsqueeze"),
        writer="reshape",
    ),
    Op(
        "transpose",
        Flow.MOVE,
        functions=(torch.transpose, torch.permute, torch.swapaxes),
        methods=("transpose", "permute", "swapaxes"),
        writer="transpose",
    ),
    _prune_only("movedim", Flow.MOVE, _NO_KERNEL, functions=(torch.movedim,), methods=("movedim",)),
    Op("index", Flow.MOVE, functions=(operator.getitem, torch.select), methods=("select",), writer="index"),
    Op("expand", Flow.MOVE, methods=("expand",), writer="expand"),
    Op(
        "matmul",
        Flow.KEEP,
        functions=(torch.matmul, operator.matmul, torch.bmm),
        methods=("matmul", "bmm"),
        writer="matmul",
    ),
    _prune_only(
        "split",
        Flow.KEEP,
        "the CSR format has no tuple-valued ops; export to ONNX instead",
        functions=(torch.unbind, torch.chunk, torch.split),
        methods=("unbind", "chunk", "split"),
    ),
    Op("add", Flow.BINARY, functions=(operator.add, operator.iadd, torch.add), methods=("add", "add_"), writer="arith"),
    Op(
        "sub_mul_div",
        Flow.BINARY,
        writer="arith",
        functions=(
            operator.sub,
            operator.isub,
            operator.mul,
            operator.imul,
            operator.truediv,
            operator.itruediv,
            torch.sub,
            torch.mul,
            torch.div,
        ),
        methods=("sub", "sub_", "mul", "mul_", "div", "div_"),
    ),
    Op("cat", Flow.CAT, functions=(torch.cat, torch.concat, torch.concatenate), writer="cat"),
)

_BY_MODULE: dict[type[nn.Module], Op] = {m: op for op in OPS for m in op.modules}
_BY_FUNCTION: dict[Any, Op] = {f: op for op in OPS for f in op.functions}
_BY_METHOD: dict[str, Op] = {m: op for op in OPS for m in op.methods}


def lookup_module(module: nn.Module) -> Op | None:
    """The registry entry of a module (its class or the nearest base class in the table), or None."""
    for cls in type(module).__mro__:  # most derived first: ReLU6 before Hardtanh
        if cls in _BY_MODULE:
            return _BY_MODULE[cls]
    return None


def lookup(gm: fx.GraphModule, node: fx.Node) -> Op | None:
    """The registry entry of an fx ``call_module`` / ``call_function`` / ``call_method`` node, or None."""
    if node.op == "call_module":
        return lookup_module(gm.get_submodule(str(node.target)))
    if node.op == "call_function":
        try:
            return _BY_FUNCTION.get(node.target)
        except TypeError:  # an unhashable target cannot be in the table
            return None
    if node.op == "call_method":
        return _BY_METHOD.get(str(node.target))
    return None


def bundle_ops() -> tuple[Op, ...]:
    """The ops the CSR bundle can express, in table order."""
    return tuple(op for op in OPS if op.in_bundle)
