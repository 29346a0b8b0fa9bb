"""Exact structural pruning: remove dead neurons and filters so the model shrinks but computes the same.

The pipeline: :func:`svdcompress.pruning.masking.mask_model` gives the masked dense reference; it is
traced with torch.fx (:mod:`svdcompress.pruning.tracing`), and then, until nothing changes,

* a slot group (channels tied by adds, cats, flattens, per-channel ops) is removed when no
  layer reads it with a non-zero weight, or when every such layer can absorb its constant value
  into its bias exactly (Linear, unpadded conv, or a constant of exactly 0);
* the remaining layers are rebuilt smaller, with the folded constants added to their biases.

Groups pinned by the model input/output, grouped convolutions, ops that mix channels (matmul of
activations, LayerNorm, LSTM) or ops the pruner does not know (barriers), and constants that a
zero-padded convolution would see differently at the border, are kept and reported in notes.
Finally the pruned model is checked against the masked one on example inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .._inputs import example_inputs as example_inputs_
from .._verify import check_outputs, compare_outputs
from ..checkpoint import DEFAULT_THRESHOLD
from ..checkpoint.conventions import CONVENTION_NAMES
from ..errors import InvalidInputError
from ..ops import InputGather
from .channels import ChannelGraph, build_channel_graph, layer_weight_bias
from .heads import remove_dead_heads
from .masking import mask_model
from .tracing import GATES, Kind, propagate_shapes, rnn_tensor, trace_model

__all__ = ["LayerPruneRow", "PruneConfig", "PruneReport", "PruneResult", "prune"]

_MAX_ITERATIONS = 1000  # each pass removes at least one slot, so this only guards against bugs
_MAX_ROUNDING_RUNS = 4  # round_to: prunes run with rising width floors; two settle the zoo's CNNs


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`prune`.

    Attributes:
        threshold: log alpha threshold used to mask SVDO layers.
        gather_inputs: put an :class:`~svdcompress.ops.InputGather` in front of a first Linear
            fed (through flattens) by the model input, so its never-read input columns can go
            while the model keeps its input shape.
        tolerance: allowed ``max|pruned - masked| / max(1, max|masked|)`` on the example inputs.
        verify: raise :class:`~svdcompress.errors.VerificationError` above the tolerance.
        require_csr: refuse, with the reason, ops the CSR bundle cannot express (Conv1d, sub/mul/div, ...),
            so that a model meant for :func:`~svdcompress.export.export_csr` fails here, before any work.
        round_to: keep extra dead (hence exact) units so that the width of every layer that loses units is a
            multiple of this, or its original width; 1 keeps none. Each layer stops at its pruned width rounded
            up, unless a unit kept elsewhere keeps its inputs read (then one multiple more). ONNX Runtime runs
            ragged channel counts (13, 27) slower than round ones, even when there are fewer of them.
        convention: the project the SVDO layers come from, for ``weight`` + ``log_sigma2`` layers whose class
            does not say (one of :data:`svdcompress.checkpoint.conventions.CONVENTION_NAMES`); every layer is masked by
            its convention's formula, eps, clip and comparison.
    """

    threshold: float = DEFAULT_THRESHOLD
    gather_inputs: bool = False
    tolerance: float = 1e-4
    verify: bool = True
    require_csr: bool = False
    round_to: int = 1
    convention: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise InvalidInputError(f"tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            fix = (
                "; threshold='auto' is chosen on data by svdcompress.prune or svdcompress.prepare"
                if isinstance(self.threshold, str) and self.threshold == "auto"
                else ""
            )
            raise InvalidInputError(
                f"threshold must be a finite number, got {self.threshold!r}{fix}", param="threshold"
            )
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or not 1 <= self.round_to <= 1024:
            raise InvalidInputError(
                f"round_to must be a whole number of channels from 1 to 1024 (e.g. 8), got {self.round_to!r}",
                param="round_to",
            )
        if self.convention is not None and self.convention not in CONVENTION_NAMES:
            raise InvalidInputError(
                f"convention={self.convention!r} is not known; choose one of {', '.join(CONVENTION_NAMES)}"
            )


@dataclass
class LayerPruneRow:
    """Size of one Linear/Conv layer before and after pruning (units = output neurons or filters)."""

    name: str
    kind: str
    units_before: int
    units_after: int
    weights_before: int
    weights_after: int
    nonzero_before: int
    nonzero_after: int
    flops_before: int  # multiply-adds per example
    flops_after: int


@dataclass
class PruneReport:
    """What :func:`prune` removed, what it kept and why, and how well the result matches.

    Attributes:
        layers: one row per Linear/Conv module, in graph order.
        notes: one sentence per (layer, reason) for dead units or unread inputs that had to stay.
        params_before: parameters of the masked model (weights, biases, BatchNorm affine).
        params_after: the same for the pruned model.
        flops_before: multiply-adds per example of all Linear/Conv layers, masked model.
        flops_after: the same for the pruned model.
        max_abs_diff: ``max |pruned(x) - masked(x)|`` on the example inputs, float32.
        output_scale: ``max(1, max |masked(x)|)``; the check is ``max_abs_diff <= tolerance * output_scale``.
        tolerance: the relative tolerance used.
        iterations: analysis passes run, including the last one that found nothing more to remove.
    """

    layers: list[LayerPruneRow]
    notes: list[str]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float
    output_scale: float
    tolerance: float
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with the dataclass field names."""
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        """Human-readable table: one row per layer, a total row, notes and the verification figure."""
        head = ("layer", "kind", "units", "weights", "nonzero", "FLOPs")
        rows = [
            (
                r.name,
                r.kind,
                f"{r.units_before} → {r.units_after}",
                f"{r.weights_before:,} → {r.weights_after:,}",
                f"{r.nonzero_before:,} → {r.nonzero_after:,}",
                f"{r.flops_before:,} → {r.flops_after:,}",
            )
            for r in self.layers
        ]
        rows.append(
            (
                "total (params)",
                "",
                "",
                f"{self.params_before:,} → {self.params_after:,}",
                "",
                f"{self.flops_before:,} → {self.flops_after:,}",
            )
        )
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in rows]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            f"verification: max |pruned - masked| = {self.max_abs_diff:.3g} "
            f"(tolerance {self.tolerance:g} × output scale {self.output_scale:.3g}); {self.iterations} pass(es)"
        )
        return "\n".join(lines)


@dataclass
class PruneResult:
    """The pruned model (eval mode), the masked dense reference and the report."""

    model: nn.Module
    masked: nn.Module
    report: PruneReport


def prune(
    model: nn.Module,
    config: PruneConfig | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    **overrides: Any,
) -> PruneResult:
    """Mask ``model`` and remove every neuron/filter that can go without changing its outputs.

    ``model`` is not modified. Shapes are taken from ``example_inputs`` (or ``torch.randn(8,
    *input_shape)``), which also serve to verify the result against the masked model. The threshold is a
    number here; :func:`svdcompress.prune` (:func:`svdcompress.pipeline.prune`) also takes checkpoint files and
    ``threshold="auto"``.

    Args:
        model: an SVDO model (masked at ``config.threshold``) or a plain model with zeroed weights.
        config: options; ``overrides`` replace single fields, e.g. ``prune(m, threshold=2.0)``.
        example_inputs: a batch of inputs, shape ``(N, ...)``.
        input_shape: the per-example input shape, used when ``example_inputs`` is not given.
        **overrides: :class:`PruneConfig` fields.

    Returns:
        The pruned model (a ``torch.fx.GraphModule`` in eval mode), the masked reference and a report.

    Raises:
        InvalidInputError: neither ``example_inputs`` nor ``input_shape`` is given, they do not run through
            the model, or a bad or unknown option.
        UnsupportedOpError: with ``require_csr``, an op the CSR bundle cannot express (without it, an op whose
            channel flow is unknown is a barrier: its channels are kept and a note says so); an in-place op whose
            input is read again; a layer that looks variational but was not recognised as SVDO.
        VerificationError: the pruned outputs differ from the masked ones beyond the tolerance.

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> result = prune(lenet300(svdo=True), input_shape=(1, 28, 28))
        >>> result.report.params_after <= result.report.params_before
        True
    """
    cfg = _config(config, overrides)
    masked = mask_model(model, cfg.threshold, convention=cfg.convention).eval()
    x = _example(masked, example_inputs, input_shape)
    before, gm, notes, iterations = _shrink(masked, x, cfg, floors=None)
    if cfg.round_to > 1:
        # Rounding inside the passes would stop cascades (a dead unit kept for its width keeps its inputs read),
        # so the ragged widths come first; then a second run stops each layer at its width rounded up.
        # A layer held at its floor can keep another's inputs read in turn: round again until every width is on
        # the grid (floors only rise, so this ends; a layer that reaches its original width stops there).
        ragged = widths = {name: s["units"] for name, s in _layer_stats(gm).items()}
        for _ in range(_MAX_ROUNDING_RUNS):
            floors = {n: min(before[n]["units"], -(-w // cfg.round_to) * cfg.round_to) for n, w in widths.items()}
            if floors == widths:
                break
            _, gm, notes, iterations = _shrink(masked, x, cfg, floors=floors)
            widths = {name: s["units"] for name, s in _layer_stats(gm).items()}
        extra = sum(widths.values()) - sum(ragged.values())
        if extra:
            notes.append(
                f"round_to={cfg.round_to}: kept {extra} dead unit(s) so that every pruned layer's width is a "
                f"multiple of {cfg.round_to}"
            )
    after = _layer_stats(gm)
    diff, scale = compare_outputs(masked, gm, x, "pruned model")
    report = PruneReport(
        layers=[_row(name, before[name], after.get(name)) for name in before],
        notes=notes,
        params_before=_count_params(masked),
        params_after=_count_params(gm),
        flops_before=sum(s["flops"] for s in before.values()),
        flops_after=sum(s["flops"] for s in after.values()),
        max_abs_diff=diff,
        output_scale=scale,
        tolerance=cfg.tolerance,
        iterations=iterations,
    )
    if cfg.verify:
        check_outputs(diff, scale, cfg.tolerance, "pruned model")
    return PruneResult(model=gm, masked=masked, report=report)


def _shrink(
    masked: nn.Module, x: torch.Tensor, cfg: PruneConfig, floors: dict[str, int] | None
) -> tuple[dict[str, dict[str, Any]], fx.GraphModule, list[str], int]:
    """Trace ``masked`` and remove units pass by pass until nothing more can go; with ``floors`` (layer name ->
    width), no layer is cut below its floor. Returns the layer stats before, the pruned module, the notes and the
    number of passes."""
    gm = trace_model(copy.deepcopy(masked), x)
    gm.eval()
    before = _layer_stats(gm)
    notes: list[str] = []
    gather = _insert_gather(gm, notes) if cfg.gather_inputs else None
    iterations = 0
    probe_x = x[:2]  # the analysis runs each op on probes shaped like its values: two rows are enough
    while True:
        iterations += 1
        propagate_shapes(gm, probe_x)
        cg = build_channel_graph(gm, require_csr=cfg.require_csr)
        removed, pass_notes = _decide(cg, gather_inputs=cfg.gather_inputs)
        if floors is not None:
            _keep_floors(cg, removed, floors)
        if not bool(removed.any()) or iterations >= _MAX_ITERATIONS:
            notes += pass_notes
            break
        _apply(cg, removed)
        gm.eval()  # rebuilt modules start in training mode; BatchNorm must use its running stats
    if gather is not None and _drop_full_gather(gm, gather):
        notes.append("gather_inputs: every input feature is read; no InputGather inserted")
    gm.graph.lint()
    gm.recompile()
    propagate_shapes(gm, probe_x)
    notes += remove_dead_heads(gm, masked, x, cfg.tolerance)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.eval()
    propagate_shapes(gm, x)
    return before, gm, notes, iterations


def _config(config: PruneConfig | None, overrides: dict[str, Any]) -> PruneConfig:
    base = config if config is not None else PruneConfig()
    known = {f.name for f in dataclasses.fields(PruneConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInputError(
            f"prune() got unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return dataclasses.replace(base, **overrides)


def _example(
    model: nn.Module, example_inputs: torch.Tensor | None, input_shape: tuple[int, ...] | None
) -> torch.Tensor:
    if example_inputs is not None:
        if not isinstance(example_inputs, torch.Tensor):
            raise InvalidInputError(f"example_inputs must be a tensor, got {type(example_inputs).__name__}")
        if example_inputs.dim() < 2 or example_inputs.shape[0] == 0:
            raise InvalidInputError(
                f"example_inputs must be a non-empty batch (N, ...), got shape {tuple(example_inputs.shape)}"
            )
        return example_inputs.detach()
    if input_shape is None:
        raise InvalidInputError(
            "prune() needs example_inputs or input_shape (per example, e.g. (1, 28, 28)) to trace shapes "
            "and verify the pruned model"
        )
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return example_inputs_(input_shape, 8, dtype=dtype)


def _decide(cg: ChannelGraph, gather_inputs: bool) -> tuple[torch.Tensor, list[str]]:
    """Choose the slots to remove this pass, and explain the dead units that stay.

    Returns:
        ``removed`` (S,) bool and the notes for units that look removable but are kept.
    """
    group = cg.group  # (S,)
    n_groups = cg.num_groups
    bad = torch.zeros(n_groups, dtype=torch.bool)
    bad[group[cg.pinned | cg.blocked]] = True
    ok = ~bad  # (G,)
    last_unit: dict[int, str] = {}
    for name, info in cg.infos.items():
        if info.kind in (Kind.SHAPE, Kind.OUTPUT) or info.channels == 0:
            continue
        groups_here = group[cg.slots(name)]
        if bool(ok[groups_here].all()):
            # Keep one unit: 0-sized dims run in torch but break ONNX export and are pointless.
            g = int(groups_here[0])
            ok[g] = False
            last_unit[g] = f"removing it would leave '{info.node.target if info.module else name}' with no units"
    removed = ok[group]  # (S,)
    return removed, _notes(cg, removed, last_unit, gather_inputs)


_LAYER_KINDS = (Kind.DENSE, Kind.GROUPED, Kind.DEPTHWISE)


def _keep_floors(cg: ChannelGraph, removed: torch.Tensor, floors: dict[str, int]) -> None:
    """Put back into ``removed`` (in place) the last removable slots of every layer this pass would cut below its
    floor, each with its whole group (coupled layers move together). A slot put back is a dead unit that stays:
    the model computes what the masked one computes either way."""
    for info in cg.infos.values():
        if info.kind not in _LAYER_KINDS or info.module is None or not info.channels:
            continue
        floor = floors.get(str(info.node.target))
        if floor is None:
            continue
        s = cg.slots(info.node.name)
        going = torch.nonzero(removed[s]).flatten()  # (k,)
        excess = floor - (info.channels - len(going))
        for i in going.flip(0).tolist():
            if excess <= 0:
                break
            if removed[s.start + i]:
                group = cg.group == cg.group[s.start + i]  # (S,)
                excess -= int(removed[s][group[s]].sum())
                removed[group] = False


def _notes(cg: ChannelGraph, removed: torch.Tensor, last_unit: dict[int, str], gather_inputs: bool) -> list[str]:
    """One sentence per (layer, reason) for dead units and unread features that could not go."""
    group_reason: dict[int, str] = dict(last_unit)
    for slot in sorted(cg.reasons):
        group_reason.setdefault(int(cg.group[slot]), cg.reasons[slot])
    dead: Counter[tuple[str, str]] = Counter()
    for slot, layer in cg.dead_source.items():
        if not removed[slot]:
            dead[layer, group_reason.get(int(cg.group[slot]), "unknown")] += 1
    notes = [info.note for info in cg.infos.values() if info.note]  # barriers and layers kept whole
    notes += [f"{layer}: kept {n} dead unit(s) (all-zero weights) because {why}" for (layer, why), n in dead.items()]
    unread_owner: Counter[tuple[str, str]] = Counter()
    unread = (cg.read_zero > 0) & (cg.read_live == 0) & ~removed  # (S,)
    for name, info in cg.infos.items():
        if (
            info.kind in (Kind.SHAPE, Kind.OUTPUT, Kind.DENSE, Kind.GROUPED, Kind.DEPTHWISE, Kind.EMBEDDING, Kind.RNN)
            or info.channels == 0
        ):
            continue  # dead rows of layers are covered above
        s = cg.slots(name)
        for i in torch.nonzero(unread[s]).flatten().tolist():
            why = group_reason.get(int(cg.group[s.start + i]), "unknown")
            if why.endswith("model input"):
                unread_owner[name, why] += 1
    for (name, why), n in unread_owner.items():
        info = cg.infos[name]
        what = "features" if len(info.shape) == 2 else "channels"
        hint = (
            ""
            if gather_inputs or what == "channels"
            else ("; prune(..., gather_inputs=True) drops them in front of a first Linear")
        )
        notes.append(f"{name}: {n} of {info.channels} input {what} are never read but kept because {why}{hint}")
    return notes


def _apply(cg: ChannelGraph, removed: torch.Tensor) -> None:
    """Rebuild every module touched by ``removed``, folding constants of removed inputs into biases."""
    gm = cg.gm
    for node in gm.graph.nodes:
        info = cg.infos[node.name]
        if node.op != "call_module" or info.module is None or info.pin_reason is not None:
            continue
        mod = info.module
        rm_out = removed[cg.slots(node.name)]  # (C_out,)
        new: nn.Module | None = None
        if info.kind in (Kind.DENSE, Kind.RNN):
            src = info.inputs[0].name
            # (C_in,): an input read on another axis than its channels is pinned, so nothing of it goes
            if info.read_ok:
                rm_in, const_in = removed[cg.slots(src)], cg.const[cg.slots(src)]
            else:
                n_in = _in_units(mod)
                rm_in, const_in = (
                    torch.zeros(n_in, dtype=torch.bool),
                    torch.full((n_in,), math.nan, dtype=torch.float64),
                )
            if bool(rm_in.any() or rm_out.any()):
                shrink = _shrink_rnn if info.kind is Kind.RNN else _shrink_dense
                new = shrink(mod, ~rm_in, ~rm_out, const_in)
        elif rm_out.any():
            keep = torch.nonzero(~rm_out).flatten()
            if info.kind is Kind.DEPTHWISE:
                new = _shrink_depthwise(mod, keep)
            elif info.kind is Kind.GATHER:
                gather: InputGather = mod  # type: ignore[assignment]  # Kind.GATHER is InputGather
                new = InputGather(gather.index[keep], gather.in_features)
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                new = _shrink_bn(mod, keep)
            elif isinstance(mod, nn.Embedding):
                new = _shrink_embedding(mod, keep)
            elif isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
                new = nn.PReLU(len(keep), device=mod.weight.device, dtype=mod.weight.dtype)
                with torch.no_grad():
                    new.weight.copy_(mod.weight[keep])
        if new is not None:
            _set_module(gm, str(node.target), new)


def _shrink_dense(mod: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor, const_in: torch.Tensor) -> nn.Module:
    """Linear/Conv restricted to kept inputs/outputs; removed constant inputs fold into the bias.

    Args:
        keep_in: (C_in,) bool. keep_out: (C_out,) bool. const_in: (C_in,) float64, NaN = not constant.
    """
    w, b = layer_weight_bias(mod)  # (C_out, C_in, *k), (C_out,)
    has_bias = isinstance(getattr(mod, "bias", None), torch.Tensor)
    # Removed inputs are either never read (weight 0, constant may be NaN) or constant: zero the rest.
    c = torch.where(~keep_in & ~torch.isnan(const_in), const_in, torch.zeros_like(const_in))  # (C_in,)
    w_sum = w.double().reshape(w.shape[0], w.shape[1], -1).sum(2)  # (C_out, C_in): kernel sums
    fold = w_sum @ c  # (C_out,): what the removed constant inputs added to each output
    b = (b + fold)[keep_out]
    has_bias = has_bias or bool((fold != 0).any())
    w_new = w[keep_out][:, keep_in]
    n_in, n_out = int(keep_in.sum()), int(keep_out.sum())
    new: nn.Module
    if isinstance(mod, nn.Linear):
        new = nn.Linear(n_in, n_out, bias=has_bias, device=w.device, dtype=w.dtype)
    else:
        new = _conv_like(mod, n_in, n_out, 1, has_bias)
    with torch.no_grad():
        new.weight.copy_(w_new)  # type: ignore[operator]
        if has_bias:
            new.bias.copy_(b.to(w.dtype))  # type: ignore[operator]
    return new


def _in_units(mod: nn.Module) -> int:
    if isinstance(mod, nn.RNNBase):
        return mod.input_size
    w, _ = layer_weight_bias(mod)
    return int(w.shape[1])


def _shrink_rnn(mod: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor, const_in: torch.Tensor) -> nn.Module:
    """A one-layer LSTM/GRU/RNN restricted to kept inputs and hidden units; removed constant inputs fold into
    ``bias_ih`` (they add ``W_ih[:, k] * c`` to every gate at every step).

    Hidden unit j owns row ``j + g * H`` of each gate block g and column j of ``weight_hh``; it goes only when
    no unit reads it through the recurrence and nothing outside reads it, so the others compute the same.
    """
    rnn: nn.RNNBase = mod  # type: ignore[assignment]  # Kind.RNN is a one-layer nn.RNNBase
    h, gates = rnn.hidden_size, GATES[rnn.mode]
    units = torch.nonzero(keep_out).flatten()
    rows = torch.cat([units + g * h for g in range(gates)])  # (gates * H_kept,)
    w_ih, w_hh = rnn_tensor(rnn, "weight_ih_l0"), rnn_tensor(rnn, "weight_hh_l0")
    c = torch.where(~keep_in & ~torch.isnan(const_in), const_in, torch.zeros_like(const_in))  # (C_in,)
    fold = (w_ih.double() @ c)[rows]  # (gates * H_kept,)
    has_bias = bool(rnn.bias) or bool((fold != 0).any())
    kw: dict[str, Any] = {"nonlinearity": "relu" if rnn.mode == "RNN_RELU" else "tanh"} if gates == 1 else {}
    cls: Any = type(rnn)  # LSTM / GRU / RNN(input_size, hidden_size, ...); RNNBase's own first argument is the mode
    new: nn.RNNBase = cls(
        int(keep_in.sum()),
        len(units),
        num_layers=1,
        bias=has_bias,
        batch_first=rnn.batch_first,
        device=w_ih.device,
        dtype=w_ih.dtype,
        **kw,
    )
    with torch.no_grad():  # rnn_tensor detaches, sharing storage: copy_ fills the parameters
        rnn_tensor(new, "weight_ih_l0").copy_(w_ih[rows][:, keep_in])
        rnn_tensor(new, "weight_hh_l0").copy_(w_hh[rows][:, keep_out])
        if has_bias:
            zeros = torch.zeros(len(rows), dtype=torch.float64)
            b_ih = rnn_tensor(rnn, "bias_ih_l0")[rows].double() if rnn.bias else zeros
            b_hh = rnn_tensor(rnn, "bias_hh_l0")[rows].double() if rnn.bias else zeros
            rnn_tensor(new, "bias_ih_l0").copy_((b_ih + fold).to(w_ih.dtype))
            rnn_tensor(new, "bias_hh_l0").copy_(b_hh.to(w_ih.dtype))
    return new


def _shrink_embedding(mod: nn.Embedding, keep: torch.Tensor) -> nn.Module:
    """The embedding restricted to the kept dims (the dropped ones are zero for every word)."""
    new = nn.Embedding(
        mod.num_embeddings,
        len(keep),
        padding_idx=mod.padding_idx,
        max_norm=mod.max_norm,
        norm_type=mod.norm_type,
        scale_grad_by_freq=mod.scale_grad_by_freq,
        sparse=mod.sparse,
        device=mod.weight.device,
        dtype=mod.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(mod.weight[:, keep])
    return new


def _conv_like(mod: nn.Module, n_in: int, n_out: int, groups: int, bias: bool) -> nn.Module:
    conv: nn.Conv1d | nn.Conv2d = mod  # type: ignore[assignment]  # callers pass convolutions
    # torch's stubs type these per dimension (tuple[int] / tuple[int, int]); the attributes are the module's own.
    kw: dict[str, Any] = {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
    }
    return type(conv)(n_in, n_out, groups=groups, bias=bias, device=conv.weight.device, dtype=conv.weight.dtype, **kw)


def _shrink_depthwise(mod: nn.Module, keep: torch.Tensor) -> nn.Module:
    n = len(keep)
    w, b = layer_weight_bias(mod)  # (C, 1, *k), (C,)
    has_bias = isinstance(getattr(mod, "bias", None), torch.Tensor)
    new = _conv_like(mod, n, n, n, has_bias)
    with torch.no_grad():
        new.weight.copy_(w[keep])  # type: ignore[operator]
        if has_bias:
            new.bias.copy_(b[keep].to(w.dtype))  # type: ignore[operator]
    return new


def _shrink_bn(mod: nn.BatchNorm1d | nn.BatchNorm2d, keep: torch.Tensor) -> nn.Module:
    like = next(iter([*mod.parameters(), *mod.buffers()]), torch.empty(0))
    new = type(mod)(
        len(keep),
        eps=mod.eps,
        momentum=mod.momentum,
        affine=mod.affine,
        track_running_stats=mod.track_running_stats,
        device=like.device,
        dtype=like.dtype if like.is_floating_point() else None,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(mod, name)
            if isinstance(t, torch.Tensor):
                getattr(new, name).copy_(t[keep])
        if mod.num_batches_tracked is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(mod.num_batches_tracked)
    return new


def _set_module(gm: fx.GraphModule, target: str, new: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, new)


def _insert_gather(gm: fx.GraphModule, notes: list[str]) -> fx.Node | None:
    """Route the input of a first Linear through an identity InputGather, so its columns become prunable.

    The pattern is ``input -> [flatten]* -> Linear`` with no other users; the flattens are replaced.
    """
    graph = gm.graph
    node = next(n for n in graph.nodes if n.op == "placeholder")
    placeholder, chain = node, []
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op == "call_function" and user.target is torch.flatten:
            chain.append(user)
            node = user
            continue
        if (
            user.op == "call_module"
            and isinstance(gm.get_submodule(str(user.target)), nn.Linear)
            and (sum(1 for n in graph.nodes if n.op == "call_module" and n.target == user.target) == 1)
        ):
            shape = tuple(placeholder.meta["tensor_meta"].shape)
            in_features = math.prod(shape[1:])
            name = "input_gather"
            while hasattr(gm, name):
                name += "_"
            gm.add_submodule(name, InputGather(torch.arange(in_features), in_features))
            with graph.inserting_before(user):
                gather = graph.call_module(name, (placeholder,))
            user.replace_input_with(node, gather)
            for n in reversed(chain):
                graph.erase_node(n)
            gm.recompile()
            return gather
        break
    notes.append("gather_inputs: the model input does not feed a Linear only through flattens; nothing gathered")
    return None


def _drop_full_gather(gm: fx.GraphModule, gather: fx.Node) -> bool:
    """Undo :func:`_insert_gather` when every input feature is still read; True if undone."""
    mod = gm.get_submodule(str(gather.target))
    if not isinstance(mod, InputGather) or mod.index.numel() != mod.in_features:
        return False
    src = gather.args[0]
    assert isinstance(src, fx.Node)  # internal invariant: inserted with the placeholder as argument
    graph = gm.graph
    with graph.inserting_before(gather):
        flat = graph.call_function(torch.flatten, (src, 1))
    gather.replace_all_uses_with(flat)
    graph.erase_node(gather)
    return True


def _layer_stats(gm: fx.GraphModule) -> dict[str, dict[str, Any]]:
    """Per Linear/Conv module: kind, units, weights, non-zeros and multiply-adds per example."""
    stats: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, nn.RNNBase) and mod.mode in GATES and not mod.bidirectional and mod.num_layers == 1:
            src = node.all_input_nodes[0].meta.get("tensor_meta") if node.all_input_nodes else None
            steps = int(src.shape[1 if mod.batch_first else 0]) if src is not None and len(src.shape) == 3 else 1
            w_ih, w_hh = rnn_tensor(mod, "weight_ih_l0"), rnn_tensor(mod, "weight_hh_l0")
            stats[str(node.target)] = {
                "kind": type(mod).__name__.lower(),
                "units": mod.hidden_size,
                "weights": w_ih.numel() + w_hh.numel(),
                "nonzero": int(torch.count_nonzero(w_ih)) + int(torch.count_nonzero(w_hh)),
                "flops": steps * (w_ih.numel() + w_hh.numel()),  # one multiply-add per weight per step
            }
            continue
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
            continue
        w = mod.weight if not isinstance(mod, nn.Embedding) else mod.weight.t()  # (units, ...)
        out_shape = tuple(node.meta["tensor_meta"].shape)  # (N, C_out, *S) or (N, ..., features)
        # Each output value costs one multiply-add per weight of its filter; a lookup costs none.
        flops = 0 if isinstance(mod, nn.Embedding) else math.prod(out_shape[1:]) * math.prod(w.shape[1:])
        entry = stats.setdefault(
            str(node.target),
            {
                "kind": type(mod).__name__.lower(),
                "units": int(w.shape[0]),
                "weights": w.numel(),
                "nonzero": int(torch.count_nonzero(w)),
                "flops": 0,
            },
        )
        entry["flops"] += int(flops)
    return stats


def _row(name: str, before: dict[str, Any], after: dict[str, Any] | None) -> LayerPruneRow:
    a = after if after is not None else {"units": 0, "weights": 0, "nonzero": 0, "flops": 0}
    return LayerPruneRow(
        name,
        before["kind"],
        before["units"],
        a["units"],
        before["weights"],
        a["weights"],
        before["nonzero"],
        a["nonzero"],
        before["flops"],
        a["flops"],
    )


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
