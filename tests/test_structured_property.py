"""Property tests: on random MLPs and CNNs with dead rows, columns and filters, pruning is exact and complete.

Each example is a small network described by a plain-data spec (so hypothesis can shrink it):
Linear/Conv blocks with optional BatchNorm (random running stats), an activation, optional
pooling, residual adds, concatenations and depthwise convs. Weights are zeroed with whole dead
rows, dead columns/input channels and scattered zeros; biases are random of both signs.

Three checks, none of which a pruner that removes nothing would pass:

- equivalence with the masked model on fresh inputs the pruner never saw (it verified on others);
- for chains of Linear blocks, an independent oracle computed from the masks alone (a unit goes if its row
  is all zero over the inputs that stay, or its column is all zero in the rows that stay, to a fixed point)
  gives exactly the units the pruner keeps;
- in every model, an all-zero row left in the pruned model is explained by a note.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import event, given, settings, strategies as st
from torch import nn

from svdcompress.ops import InputGather
from svdcompress.pruning.structural import prune

torch.set_num_threads(1)

RTOL = 1e-5  # float32, summed in a different order after pruning
ATOL_PER_SCALE = 1e-5  # absolute tolerance per unit of output magnitude

_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "relu6": nn.ReLU6,
    "elu": nn.ELU,
    "identity": nn.Identity,
    "silu": nn.SiLU,
}
_SETTINGS = settings()  # the profile's (tests/conftest.py): "ci" 100 random models per test, derandomized

Spec = dict[str, Any]


class _SpecNet(nn.Module):
    """Runs a plan of ("seq"|"res"|"cat"|"flatten"|"method_relu", module names...) steps."""

    def __init__(self, mods: dict[str, nn.Module], plan: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.mods = nn.ModuleDict(mods)
        self.plan = plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.plan:
            if step[0] == "seq":
                x = self.mods[step[1]](x)
            elif step[0] == "res":
                x = x + self.mods[step[1]](x)
            elif step[0] == "cat":
                x = torch.cat([self.mods[step[1]](x), self.mods[step[2]](x)], dim=1)
            elif step[0] == "flatten":
                x = x.view(x.size(0), -1)
            elif step[0] == "method_relu":
                x = x.relu()
        return x


def _block(layer: nn.Module, c_out: int, bn: bool, act: str, extra: list[nn.Module], conv: bool) -> nn.Module:
    mods: list[nn.Module] = [layer]
    if bn:
        mods.append(nn.BatchNorm2d(c_out) if conv else nn.BatchNorm1d(c_out))
    mods.append(_ACTS[act]())
    return nn.Sequential(*mods, *extra)


def _kill_and_randomize(model: nn.Module, seed: int, p_row: float, p_col: float) -> None:
    """Zero whole rows, whole columns/input channels and scattered weights; random biases and BN stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                w = torch.randn(mod.weight.shape, generator=g)
                w[torch.rand(w.shape, generator=g) < 0.3] = 0.0
                w[torch.rand(w.shape[0], generator=g) < p_row] = 0.0
                w[:, torch.rand(w.shape[1], generator=g) < p_col] = 0.0
                mod.weight.copy_(w / max(1.0, float(w[0].numel()) ** 0.5))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g))  # type: ignore[union-attr]
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]
                mod.weight.copy_(torch.randn(n, generator=g))
                mod.bias.copy_(torch.randn(n, generator=g))


@st.composite
def mlp_specs(draw: st.DrawFn, kinds: tuple[str, ...] = ("linear", "res", "cat")) -> Spec:
    widths = st.integers(2, 6)
    blocks = draw(
        st.lists(
            st.tuples(
                st.sampled_from(kinds), widths, widths, st.booleans(), st.sampled_from(sorted(_ACTS)), st.booleans()
            ),
            min_size=1,
            max_size=3,
        )
    )
    return {
        "in": draw(st.integers(2, 6)),
        "out": draw(st.integers(1, 3)),
        "blocks": blocks,
        "seed": draw(st.integers(0, 2**16)),
        "p_row": draw(st.sampled_from([0.2, 0.4, 0.6])),
        "p_col": draw(st.sampled_from([0.0, 0.3])),
        "input_4d": draw(st.booleans()),
    }


def _build_mlp(spec: Spec) -> tuple[nn.Module, tuple[int, ...]]:
    mods: dict[str, nn.Module] = {}
    plan: list[tuple[str, ...]] = []
    c = spec["in"]
    shape: tuple[int, ...] = (c,)
    if spec["input_4d"]:  # (N, c, 1, 1) in, flattened by a view before the first Linear
        shape = (c, 1, 1)
        plan.append(("flatten",))
    for i, (kind, w1, w2, bn, act, bias) in enumerate(spec["blocks"]):
        if kind == "res":
            mods[f"b{i}"] = _block(nn.Linear(c, c, bias=bias), c, bn, act, [], conv=False)
            plan.append(("res", f"b{i}"))
        elif kind == "cat":
            mods[f"b{i}"] = _block(nn.Linear(c, w1, bias=bias), w1, bn, act, [], conv=False)
            mods[f"c{i}"] = _block(nn.Linear(c, w2), w2, False, act, [], conv=False)
            plan.append(("cat", f"b{i}", f"c{i}"))
            c = w1 + w2
        else:
            mods[f"b{i}"] = _block(nn.Linear(c, w1, bias=bias), w1, bn, act, [], conv=False)
            plan.append(("seq", f"b{i}"))
            c = w1
    mods["head"] = nn.Linear(c, spec["out"])
    plan.append(("seq", "head"))
    return _SpecNet(mods, plan), shape


@st.composite
def cnn_specs(draw: st.DrawFn) -> Spec:
    size0 = size = draw(st.integers(4, 7))  # input height = width
    blocks = []
    for _ in range(draw(st.integers(2, 3))):
        kind = draw(st.sampled_from(["conv", "res", "cat", "depthwise"]))
        k = draw(st.sampled_from([3, 1]))
        pad = draw(st.sampled_from([0, 1])) if k == 3 else 0
        if kind == "res":
            pad = (k - 1) // 2  # a residual add needs the spatial size unchanged
        pool = draw(st.sampled_from(["none", "max", "avg_pad", "avg"]))
        shrink = k - 1 - 2 * pad + (1 if pool in ("max", "avg") else 0)
        if size - shrink < 2:
            k, pad, pool, shrink = 1, 0, "none", 0
        size -= shrink
        blocks.append(
            (
                kind,
                draw(st.integers(2, 5)),
                draw(st.integers(1, 4)),
                k,
                pad,
                draw(st.booleans()),
                draw(st.sampled_from(sorted(_ACTS))),
                pool,
                draw(st.booleans()),
            )
        )
    return {
        "in": draw(st.integers(1, 3)),
        "size": size0,
        "blocks": blocks,
        "head": draw(st.sampled_from(["flatten", "gap", "conv"])),
        "out": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2**16)),
        "p_row": draw(st.sampled_from([0.2, 0.4, 0.6])),
        "p_col": draw(st.sampled_from([0.0, 0.3])),
        "method_relu": draw(st.booleans()),
    }


def _pool(kind: str) -> list[nn.Module]:
    if kind == "max":
        return [nn.MaxPool2d(2, stride=1)]
    if kind == "avg":
        return [nn.AvgPool2d(2, stride=1)]
    if kind == "avg_pad":  # count_include_pad: a constant map is not constant at the border
        return [nn.AvgPool2d(3, stride=1, padding=1)]
    return []


def _build_cnn(spec: Spec) -> tuple[nn.Module, tuple[int, ...]]:
    mods: dict[str, nn.Module] = {}
    plan: list[tuple[str, ...]] = []
    c = spec["in"]
    shape = (c, spec["size"], spec["size"])
    for i, (kind, w1, w2, k, pad, bn, act, pool, bias) in enumerate(spec["blocks"]):
        if kind == "res":
            conv = nn.Conv2d(c, c, k, padding=pad, bias=bias)
            mods[f"b{i}"] = _block(conv, c, bn, act, [], conv=True)
            plan.append(("res", f"b{i}"))
            continue
        if kind == "depthwise":
            conv = nn.Conv2d(c, c, k, padding=pad, groups=c, bias=bias)
            mods[f"b{i}"] = _block(conv, c, bn, act, _pool(pool), conv=True)
            plan.append(("seq", f"b{i}"))
        elif kind == "cat":
            mods[f"b{i}"] = _block(nn.Conv2d(c, w1, k, padding=pad, bias=bias), w1, bn, act, _pool(pool), conv=True)
            mods[f"c{i}"] = _block(nn.Conv2d(c, w2, k, padding=pad), w2, False, act, _pool(pool), conv=True)
            plan.append(("cat", f"b{i}", f"c{i}"))
            c = w1 + w2
        else:
            mods[f"b{i}"] = _block(nn.Conv2d(c, w1, k, padding=pad, bias=bias), w1, bn, act, _pool(pool), conv=True)
            plan.append(("seq", f"b{i}"))
            c = w1
        if spec["method_relu"] and i == 0:
            plan.append(("method_relu",))
    probe = _SpecNet(mods, plan).eval()
    with torch.no_grad():
        spatial = probe(torch.zeros(1, *shape)).shape[2:]  # (H, W) after the blocks
    if spec["head"] == "conv":
        mods["head"] = nn.Conv2d(c, spec["out"], 1)
        plan += [("seq", "head"), ("flatten",)]
    elif spec["head"] == "gap":
        mods["gap"] = nn.AdaptiveAvgPool2d(1)
        mods["head"] = nn.Linear(c, spec["out"])
        plan += [("seq", "gap"), ("flatten",), ("seq", "head")]
    else:
        mods["head"] = nn.Linear(c * spatial[0] * spatial[1], spec["out"])
        plan += [("flatten",), ("seq", "head")]
    return _SpecNet(mods, plan), shape


def _oracle_chain_units(weights: list[torch.Tensor], gather: bool) -> tuple[list[int], int] | None:
    """Units each hidden layer of a Linear chain keeps, from the masks alone; and the input features read.

    ``weights`` are the masked (out, in) matrices in order; the last layer feeds the model output. Every
    consumer is a Linear, so a dead unit's constant always folds: a hidden unit goes if its row is zero over
    the inputs that stay, or no row that stays reads it. Returns None if some layer would lose every unit
    (the pruner then keeps one on purpose, which this oracle does not model).
    """
    alive = [torch.ones(w.shape[0], dtype=torch.bool) for w in weights]  # rows of each layer
    inputs = torch.ones(weights[0].shape[1], dtype=torch.bool)
    while True:
        before = [a.clone() for a in alive] + [inputs.clone()]
        for i, w in enumerate(weights[:-1]):  # the output layer's rows are pinned by the model output
            live_in = inputs if i == 0 else alive[i - 1]
            dead_row = ~(w[:, live_in] != 0).any(1)
            unread = ~(weights[i + 1][alive[i + 1]] != 0).any(0)
            alive[i] &= ~(dead_row | unread)
        if gather:
            inputs &= (weights[0][alive[0]] != 0).any(0)
        if all(torch.equal(a, b) for a, b in zip([*alive, inputs], before, strict=True)):
            break
    if any(not bool(a.any()) for a in alive) or not bool(inputs.any()):
        return None
    return [int(a.sum()) for a in alive], int(inputs.sum())


def _check_oracle(spec: Spec, res: Any, gather: bool) -> None:
    if any(b[0] != "linear" for b in spec["blocks"]):
        return  # adds and cats couple units across layers: the oracle covers chains only
    layers = [m for m in res.masked.modules() if isinstance(m, nn.Linear)]
    found = _oracle_chain_units([m.weight.detach() for m in layers], gather)
    if found is None:
        event("oracle: a layer empties")
        return
    units, read = found
    assert [r.units_after for r in res.report.layers] == units, res.report.format_table()
    gathers = [m for m in res.model.modules() if isinstance(m, InputGather)]
    features = gathers[0].index.numel() if gathers else layers[0].in_features
    assert features == (read if gather else layers[0].in_features), res.report.format_table()
    event("oracle: checked")


def _check_dead_rows_explained(res: Any) -> None:
    """An all-zero row the pruner leaves in place must come with a note saying why."""
    notes = " ".join(res.report.notes)
    for name, mod in res.model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv2d)) or mod.weight.shape[0] < 2:
            continue
        dead = int((~(mod.weight != 0).reshape(mod.weight.shape[0], -1).any(1)).sum())
        assert not dead or f"{name}: kept" in notes, f"{name} keeps {dead} all-zero row(s) without a note: {notes}"


def _check_exact(model: nn.Module, shape: tuple[int, ...], spec: Spec, **kw: Any) -> None:
    _kill_and_randomize(model, spec["seed"], spec["p_row"], spec["p_col"])
    model.eval()
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(spec["seed"] + 1))
    res = prune(model, example_inputs=x, **kw)
    fresh = 3 * torch.randn(7, *shape, generator=torch.Generator().manual_seed(spec["seed"] + 2))  # never seen
    with torch.no_grad():
        expected, actual = res.masked(fresh), res.model(fresh)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL_PER_SCALE * scale)
    assert res.report.params_after <= res.report.params_before
    if "size" not in spec:  # an MLP
        _check_oracle(spec, res, bool(kw.get("gather_inputs")))
    _check_dead_rows_explained(res)
    # Visible with --hypothesis-show-statistics: how often each rule fired.
    event("shrunk" if res.report.params_after < res.report.params_before else "unchanged")
    for key in ("zero-padded", "vary where", "model output", "no units", "grouped", "called more than once"):
        if any(key in n for n in res.report.notes):
            event(f"note: {key}")


@_SETTINGS
@given(spec=mlp_specs(), gather=st.booleans())
def test_random_mlps_prune_exactly(spec: Spec, gather: bool) -> None:
    model, shape = _build_mlp(spec)
    _check_exact(model, shape, spec, gather_inputs=gather)


@_SETTINGS
@given(spec=mlp_specs(kinds=("linear",)), gather=st.booleans())
def test_linear_chains_keep_exactly_what_the_oracle_keeps(spec: Spec, gather: bool) -> None:
    model, shape = _build_mlp(spec)
    _check_exact(model, shape, spec, gather_inputs=gather)


@_SETTINGS
@given(spec=cnn_specs())
def test_random_cnns_prune_exactly(spec: Spec) -> None:
    model, shape = _build_cnn(spec)
    _check_exact(model, shape, spec)
