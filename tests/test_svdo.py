"""The SVDO training layers, the KL term, sparsify, and the zoo's architectures."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svdcompress.nn.layers import (
    Conv2dSVDO,
    ELBOLoss,
    LinearSVDO,
    kl_divergence,
    kl_weight_schedule,
    log_alpha_of,
    sparsify,
    svdo_layers,
)
from svdcompress.nn.zoo import INPUT_SHAPES, build


def _paper_neg_kl(la: torch.Tensor) -> torch.Tensor:
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    return k1 * torch.sigmoid(k2 + k3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - k1


def test_kl_matches_the_paper_and_is_monotone_in_log_alpha() -> None:
    layer = LinearSVDO(3, 2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.log_sigma2.copy_(torch.linspace(-6, 6, 6).reshape(2, 3))  # theta = 1: log alpha = log sigma²
    expected = -_paper_neg_kl(log_alpha_of(layer.weight, layer.log_sigma2)).sum()
    torch.testing.assert_close(layer.kl(), expected)
    # The library's KL falls as log alpha grows (noise is free under the log-uniform prior) and is clipped past 8.
    kls = []
    for v in (-4.0, 0.0, 4.0, 8.0):
        with torch.no_grad():
            layer.log_sigma2.fill_(v)  # theta = 1: log alpha = v
        kls.append(float(layer.kl().detach()))
    assert all(a > b for a, b in itertools.pairwise(kls)), kls
    with torch.no_grad():
        layer.log_sigma2.fill_(20.0)
    clipped = layer.kl()
    with torch.no_grad():
        layer.log_sigma2.fill_(8.0)
    torch.testing.assert_close(clipped, layer.kl(), atol=1e-6, rtol=0)


def test_local_reparameterisation_moments() -> None:
    torch.manual_seed(0)
    layer = LinearSVDO(5, 3).train()
    with torch.no_grad():
        layer.log_sigma2.fill_(-2.0)
    x = torch.randn(1, 5).expand(20000, 5)
    out = layer(x)  # (20000, 3): samples of the pre-activation
    mean = F.linear(x[:1], layer.weight, layer.bias)[0]
    var = (x[0] ** 2 * math.exp(-2.0)).sum().expand(3)
    torch.testing.assert_close(out.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(out.var(0), var, rtol=0.05, atol=0)


@pytest.mark.parametrize("layer", [LinearSVDO(6, 4), Conv2dSVDO(2, 3, 3, padding=1)])
def test_eval_is_deterministic_and_masked(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.where(torch.rand_like(layer.weight) < 0.5, 5.0, -12.0))
    layer.eval()
    x = torch.randn(2, 6) if isinstance(layer, LinearSVDO) else torch.randn(2, 2, 5, 5)
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    keep = (layer.log_alpha < 3.0).float()
    w = layer.weight * keep
    ref = F.linear(x, w, layer.bias) if isinstance(layer, LinearSVDO) else F.conv2d(x, w, layer.bias, padding=1)
    torch.testing.assert_close(a, ref)
    assert 0 < int(keep.sum()) < keep.numel()


def test_sparsify_keeps_the_function_and_trains() -> None:
    torch.manual_seed(0)
    plain = build("lenet5").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = plain(x)
    # A low enough log sigma² keeps every weight: the same function.
    exact = sparsify(copy.deepcopy(plain), log_sigma2_init=-40.0)
    with torch.no_grad():
        torch.testing.assert_close(exact.eval()(x), before, rtol=1e-5, atol=1e-5)
    # The default -10 already drops weights below ~1.5e-3 (log alpha > 3); the function barely moves.
    net = sparsify(plain)
    assert [n for n, _ in svdo_layers(net)] == ["conv1", "conv2", "fc1", "fc2"]
    dropped = [(layer.weight.abs() < 1.5e-3).sum() for _, layer in svdo_layers(net)]
    assert [int((~layer.mask()).sum()) for _, layer in svdo_layers(net)] == [int(d) for d in dropped]
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), before, rtol=0, atol=0.05)
    # The ELBO trains log sigma² too.
    loss_fn = ELBOLoss(net.train(), train_size=1000, warmup_steps=10)
    loss = loss_fn(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert net.conv2.log_sigma2.grad is not None and net.conv2.log_sigma2.grad.abs().sum() > 0
    assert loss_fn.step == 1


def test_kl_warmup_and_total_kl() -> None:
    assert kl_weight_schedule(0, 10) == 0.0
    assert kl_weight_schedule(5, 10) == 0.5
    assert kl_weight_schedule(50, 10) == 1.0
    assert kl_weight_schedule(3, 0) == 1.0
    net = build("lenet300", svdo=True)
    total = sum(layer.kl() for _, layer in svdo_layers(net))
    torch.testing.assert_close(kl_divergence(net), total)
    assert float(kl_divergence(nn.Linear(2, 2))) == 0.0


@pytest.mark.parametrize(
    ("arch", "kwargs", "params"),
    [
        ("lenet300", {}, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("lenet5", {}, 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10),
        ("vgg_like", {"k": 0.25}, None),
    ],
)
def test_zoo_shapes_and_sizes(arch: str, kwargs: dict[str, float], params: int | None) -> None:
    for svdo in (False, True):
        net = build(arch, svdo=svdo, **kwargs).eval()
        out = net(torch.randn(2, *INPUT_SHAPES[arch]))
        assert out.shape == (2, 10)
        weights = sum(p.numel() for n, p in net.named_parameters() if not n.endswith("log_sigma2"))
        if params is not None:
            assert weights == params
    vgg = build("vgg_like", svdo=True)
    assert sum(isinstance(m, Conv2dSVDO) for m in vgg.modules()) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 13
    with pytest.raises(ValueError, match="unknown architecture"):
        build("resnet9000")
