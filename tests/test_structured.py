"""Exact structural pruning: each removal rule by hand, the zoo models, a trained ResNet-style CNN."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svdcompress.errors import InputShapeError, InvalidInputError, UnsupportedOpError, VerificationError
from svdcompress.nn.layers import ELBOLoss, SVDOModule, sparsify
from svdcompress.nn.zoo import lenet5, lenet300
from svdcompress.ops import InputGather
from svdcompress.pruning import channels as channels_mod
from svdcompress.pruning.structural import PruneConfig, PruneResult, prune

torch.set_num_threads(1)

RTOL, ATOL = 1e-5, 1e-5  # float32 sums in a different order


def _kill(model: nn.Module, seed: int, rows: float = 0.3, cols: float = 0.3, weights: float = 0.5) -> nn.Module:
    """Give an SVDO model random log σ² so that whole rows, columns/filters and single weights die."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, SVDOModule):
                ls2 = torch.where(torch.rand(mod.weight.shape, generator=g) < weights, 20.0, -20.0)
                ls2[torch.rand(mod.weight.shape[0], generator=g) < rows] = 20.0
                ls2[:, torch.rand(mod.weight.shape[1], generator=g) < cols] = 20.0
                mod.log_sigma2.copy_(ls2)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g))
    return model


def _check(model: nn.Module, shape: tuple[int, ...], **kw: object) -> PruneResult:
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    res = prune(model, example_inputs=x, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), res.masked(x), rtol=RTOL, atol=ATOL)
    return res


def _units(res: PruneResult) -> dict[str, tuple[int, int]]:
    return {r.name: (r.units_before, r.units_after) for r in res.report.layers}


def _set(layer: nn.Module, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        if weight is not None:
            layer.weight.copy_(weight)  # type: ignore[operator]
        if bias is not None:
            layer.bias.copy_(bias)  # type: ignore[operator]


def _randomize_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))  # type: ignore[union-attr]
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)  # type: ignore[union-attr]
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


# --- zoo models ---------------------------------------------------------------------------------


def test_lenet300_svdo_shrinks_and_matches() -> None:
    res = _check(_kill(lenet300(svdo=True), seed=0), (1, 28, 28))
    units = _units(res)
    assert units["fc1"][1] < units["fc1"][0] and units["fc2"][1] < units["fc2"][0]
    assert units["fc3"] == (10, 10)  # output units always stay
    assert res.report.params_after < res.report.params_before
    assert res.report.flops_after < res.report.flops_before
    assert not res.model.training


def test_lenet5_svdo_shrinks_and_matches() -> None:
    res = _check(_kill(lenet5(svdo=True), seed=1), (1, 28, 28))
    units = _units(res)
    assert units["conv1"][1] < 20 and units["conv2"][1] < 50 and units["fc1"][1] < 500
    # fc1 reads conv2's flattened 4x4 maps: its width follows conv2's kept filters.
    fc1 = res.model.get_submodule("fc1")
    assert isinstance(fc1, nn.Linear) and fc1.in_features == units["conv2"][1] * 16


# --- one hand-made case per rule ------------------------------------------------------------------


def test_dead_row_with_positive_bias_folds_into_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    w = model[0].weight.detach().clone()
    w[1] = 0.0
    _set(model[0], w, torch.tensor([0.1, 0.7, -0.2]))
    res = _check(model, (4,))
    assert _units(res)["0"] == (3, 2)
    assert res.model.get_submodule("2").in_features == 2  # type: ignore[union-attr]
    assert res.report.notes == []


def test_dead_filter_folds_through_batchnorm_into_unpadded_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    )
    _randomize_bn(model[1], seed=1)
    w = model[0].weight.detach().clone()
    w[2] = 0.0
    _set(model[0], w, torch.tensor([0.0, 0.0, 3.0, 0.0]))
    model[1].running_mean[2] = -1.0  # BN(3) = (3 + 1) / sqrt(var) * γ + β: make it clearly positive
    model[1].weight.data[2] = 1.0
    res = _check(model.eval(), (2, 8, 8))
    assert _units(res)["0"] == (4, 3)
    assert res.model.get_submodule("1").num_features == 3  # type: ignore[union-attr]
    assert res.model.get_submodule("3").in_channels == 3  # type: ignore[union-attr]


def _padded_model(bias: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 6 * 6, 2)
    )
    w = model[0].weight.detach().clone()
    w[1] = 0.0
    b = model[0].bias.detach().clone()
    b[1] = bias
    _set(model[0], w, b)
    return model


def test_padded_conv_consumer_keeps_nonzero_constant_and_notes_it() -> None:
    model = _padded_model(bias=0.5)
    res = _check(model, (2, 8, 8))
    assert _units(res)["0"] == (4, 4)
    assert any("'2'" in n and "zero-padded" in n and n.startswith("0:") for n in res.report.notes), res.report.notes


def test_relu_of_negative_bias_is_removed_without_fold() -> None:
    model = _padded_model(bias=-0.5)
    res = _check(model, (2, 8, 8))
    assert _units(res)["0"] == (4, 3)
    # ReLU(-0.5) = 0: nothing to fold, so the padded consumer's bias is unchanged.
    torch.testing.assert_close(res.model.get_submodule("2").bias, model[2].bias)  # type: ignore[arg-type]


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        z = torch.relu(self.b(y) + y)  # residual: channel c of b and of a are tied
        return self.head(z).flatten(1)


def test_residual_add_removes_a_channel_only_when_both_branches_agree() -> None:
    torch.manual_seed(0)
    model = _Residual()
    wa, wb = model.a.weight.detach().clone(), model.b.weight.detach().clone()
    wa[0] = 0.0  # channel 0: dead in a only -> b's live channel 0 keeps it
    wb[1] = 0.0  # channel 1: dead in b only -> a's live channel 1 keeps it
    wa[2], wb[2] = 0.0, 0.0  # channel 2: dead in both -> constant sum, folded into head (no padding)
    wb[:, 2] = 0.0  # b must not read a's channel 2 either, or the row of b stays live
    _set(model.a, wa, torch.tensor([0.3, 0.1, 0.4, -0.2]))
    _set(model.b, wb, torch.tensor([0.2, 0.5, 0.6, 0.1]))
    res = _check(model, (3, 7, 7))
    assert _units(res)["a"] == (4, 3) and _units(res)["b"] == (4, 3)
    assert res.model.get_submodule("head").in_channels == 3  # type: ignore[union-attr]
    assert any("'b'" in n or n.startswith("b:") for n in res.report.notes)


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3)
        self.b = nn.Conv2d(2, 2, 3)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1))


def test_cat_maps_channel_ranges_to_branches() -> None:
    torch.manual_seed(0)
    model = _Cat()
    wb = model.b.weight.detach().clone()
    wb[1] = 0.0
    _set(model.b, wb)
    wh = model.head.weight.detach().clone()
    wh[:, 0] = 0.0  # head never reads a's channel 0 -> a's filter 0 is unused
    _set(model.head, wh)
    res = _check(model, (2, 6, 6))
    assert _units(res)["a"] == (3, 2) and _units(res)["b"] == (2, 1)
    assert res.model.get_submodule("head").in_channels == 3  # type: ignore[union-attr]


def test_chain_of_removals_iterates_to_fixed_point() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    w0 = model[0].weight.detach().clone()
    w0[0] = 0.0
    w2 = model[2].weight.detach().clone()
    w2[1] = 0.0
    w2[1, 0] = 1.0  # row 1 of layer 2 reads only the dead (constant) unit 0 of layer 0
    _set(model[0], w0)
    _set(model[2], w2)
    res = _check(model, (5,))
    assert _units(res)["0"] == (4, 3) and _units(res)["2"] == (3, 2)
    assert res.report.iterations >= 3  # pass 1 folds unit 0, pass 2 the now-constant row 1, pass 3 finds nothing


def test_last_unit_of_a_layer_is_kept() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    _set(model[0], torch.zeros(4, 3), torch.tensor([1.0, -1.0, 2.0, 0.5]))
    res = _check(model, (3,))
    assert _units(res)["0"] == (4, 1)
    assert any("with no units" in n for n in res.report.notes), res.report.notes


def test_view_flatten_is_rewritten_so_it_survives_pruning() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.max_pool2d(F.relu(self.conv(x)), 2)  # (N, 4, 4, 4)
            return self.fc(y.view(-1, 64)) + self.fc(y.reshape(y.size(0), -1)) * 0.0

    torch.manual_seed(0)
    net = Net()
    w = net.conv.weight.detach().clone()
    w[1] = 0.0
    _set(net.conv, w)
    res = _check(net, (1, 10, 10))
    # fc is called twice: it is kept whole, so conv's dead filter stays and is explained.
    assert _units(res)["conv"] == (4, 4)
    assert any("called more than once" in n for n in res.report.notes)


def test_depthwise_conv_prunes_with_its_input_and_grouped_conv_is_kept() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )
    w = model[0].weight.detach().clone()
    w[3] = 0.0
    _set(model[0], w)
    wd = model[2].weight.detach().clone()
    wd[3] = 0.0
    _set(model[2], wd)
    res = _check(model, (2, 6, 6))
    assert _units(res)["0"] == (4, 4)  # the grouped conv pins its inputs
    assert any("grouped convolution '4'" in n for n in res.report.notes)
    model[4] = nn.Conv2d(4, 4, 1)  # now dense: the dead depthwise channel can go
    res = _check(model, (2, 6, 6))
    assert _units(res)["2"] == (4, 3) and _units(res)["0"] == (4, 3)


def test_avg_pool_with_zero_padding_is_not_treated_as_constant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(3, 2, 3))
    w = model[0].weight.detach().clone()
    w[0] = 0.0
    _set(model[0], w, torch.tensor([1.0, 0.0, 0.0]))
    res = _check(model, (1, 8, 8))
    assert _units(res)["0"] == (3, 3)
    assert any("vary where '2' reads" in n for n in res.report.notes), res.report.notes


# --- inputs, errors and options -------------------------------------------------------------------


def test_gather_inputs_drops_dead_pixels_and_keeps_input_shape() -> None:
    model = _kill(lenet300(svdo=True), seed=2, rows=0.1, cols=0.4)
    plain = _check(model, (1, 28, 28))
    assert any("gather_inputs=True" in n for n in plain.report.notes)
    res = _check(model, (1, 28, 28), gather_inputs=True)
    gathers = [m for m in res.model.modules() if isinstance(m, InputGather)]
    assert len(gathers) == 1 and gathers[0].in_features == 784
    fc1 = res.model.get_submodule("fc1")
    assert isinstance(fc1, nn.Linear) and fc1.in_features == gathers[0].index.numel() < 784
    assert res.model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_prune_does_not_mutate_its_argument() -> None:
    model = _kill(lenet5(svdo=True), seed=3)
    state = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    model.train()
    prune(model, input_shape=(1, 28, 28), gather_inputs=True)
    assert [type(m) for m in model.modules()] == types and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


class _Sorts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.fc(x), dim=1).values


def test_unknown_op_is_a_barrier_and_refused_only_for_csr() -> None:
    res = _check(_Sorts(), (4,))
    assert any(n.startswith("barrier at node 'sort' (call_function torch.sort)") for n in res.report.notes)
    with pytest.raises(UnsupportedOpError, match=r"node 'sort' \(call_function torch\.sort\)"):
        prune(_Sorts(), input_shape=(4,), require_csr=True)
    model = nn.Sequential(nn.Linear(4, 4), nn.Hardsigmoid(), nn.Linear(4, 2))  # LayerNorm runs in the bundle now
    _check(model, (4,))
    with pytest.raises(UnsupportedOpError, match=r"call_module '1' Hardsigmoid"):
        prune(model, input_shape=(4,), require_csr=True)


class _InplaceReuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.act(h) + h  # eager: relu(h) + relu(h), since act overwrote h


def test_inplace_op_on_a_tensor_read_later_is_refused() -> None:
    with pytest.raises(UnsupportedOpError, match="in place"):
        prune(_InplaceReuse(), input_shape=(4,))
    ok = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    _check(ok, (4,))


def test_conv1d_with_circular_padding_folds_and_spatial_mean_is_per_channel() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 4, 3)
            self.bn = nn.BatchNorm1d(4)
            self.c2 = nn.Conv1d(4, 3, 3, padding=1, padding_mode="circular")
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.silu(self.bn(self.c1(x)))
            return self.fc(self.c2(y).mean(dim=2))

    torch.manual_seed(0)
    net = Net()
    _randomize_bn(net.bn, seed=2)
    w = net.c1.weight.detach().clone()
    w[0] = 0.0
    _set(net.c1, w)
    res = _check(net.eval(), (2, 9))
    # Circular padding repeats the constant, so the fold is exact despite padding=1.
    assert _units(res)["c1"] == (4, 3) and res.report.notes == []


def test_pruning_a_pruned_model_changes_nothing() -> None:
    first = _check(_kill(lenet5(svdo=True), seed=6), (1, 28, 28))
    second = _check(first.model, (1, 28, 28))
    assert second.report.params_after == second.report.params_before == first.report.params_after
    assert second.report.iterations == 1


def test_options_are_checked() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(InvalidInputError, match="example_inputs or input_shape"):
        prune(model)
    with pytest.raises(
        InputShapeError, match=r"example input of shape \(5,\) \(per example\).*Linear.*takes 4 input features"
    ):
        prune(model, input_shape=(5,))
    with pytest.raises(InvalidInputError, match="input_shape must be positive"):
        prune(model, input_shape=(0,))
    with pytest.raises(InvalidInputError, match="threshhold"):
        prune(model, input_shape=(4,), threshhold=2.0)
    with pytest.raises(InvalidInputError, match="tolerance"):
        PruneConfig(tolerance=-1.0)
    with pytest.raises(InvalidInputError, match="threshold"):
        PruneConfig(threshold=float("nan"))
    res = prune(model, PruneConfig(tolerance=1e-3), input_shape=(4,), verify=False)
    assert res.report.tolerance == 1e-3


def test_a_wrong_fold_is_caught_by_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend zero padding does not matter: the fold of a non-zero constant is then wrong at the border.
    monkeypatch.setattr(channels_mod, "_zero_padded", lambda conv: False)
    with pytest.raises(VerificationError, match=r"max abs diff .* > tolerance"):
        _check(_padded_model(bias=0.5), (2, 8, 8))


def test_report_is_json_and_table() -> None:
    res = _check(_kill(lenet5(svdo=True), seed=4), (1, 28, 28))
    d = json.loads(json.dumps(res.report.to_dict()))
    assert {
        "layers",
        "notes",
        "params_before",
        "params_after",
        "flops_before",
        "flops_after",
        "max_abs_diff",
        "output_scale",
        "tolerance",
        "iterations",
    } <= set(d)
    assert d["layers"][0]["name"] == "conv1"
    table = res.report.format_table()
    assert "conv1" in table and "total" in table and "verification" in table and "→" in table


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy (dynamo=False) ONNX exporter warns
def test_pruned_model_exports_with_torch_export_and_onnx() -> None:
    res = _check(_kill(lenet300(svdo=True), seed=5), (1, 28, 28), gather_inputs=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        exported = torch.export.export(res.model, (x,))
        torch.testing.assert_close(exported.module()(x), res.model(x))
    buf = io.BytesIO()
    torch.onnx.export(res.model, (x,), buf, dynamo=False, input_names=["x"])
    import onnxruntime as ort

    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), res.model(x), rtol=1e-4, atol=1e-4)


# --- a trained ResNet-style CNN -------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class _TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = _BasicBlock(8, 8, 1)
        self.layer2 = _BasicBlock(8, 16, 2)
        self.layer3 = _BasicBlock(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_resnet_sparsified_and_trained_prunes_exactly() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    model = sparsify(_TinyResNet(), log_sigma2_init=-6.0)
    loss_fn = ELBOLoss(model, train_size=200, warmup_steps=5)  # small N: a strong KL spreads log α fast
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for step in range(40):
        idx = torch.randint(0, 64, (32,), generator=torch.Generator().manual_seed(step))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    res = prune(model, example_inputs=x[:8])
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), res.masked(x), rtol=RTOL, atol=ATOL)
    assert res.report.max_abs_diff <= res.report.tolerance * res.report.output_scale
    assert res.report.params_after <= res.report.params_before
    units = _units(res)
    assert all(0 < after <= before for before, after in units.values())
    assert sum(after for _, after in units.values()) < sum(before for before, _ in units.values())
    assert units["fc"] == (4, 4)
