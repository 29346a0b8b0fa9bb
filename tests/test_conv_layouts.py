"""Each batched layout of the convolution kernel, forced in turn, against F.conv2d (+ activation, + pool).

At load the runtime times several layouts of the same arithmetic (image by image on wide rows, blocks of 16 or
32 interleaved images, a column matrix of the used taps, column-shifted copies of the image) and keeps the
fastest, so which one a test exercises depends on the machine. Here every candidate is put on the shortlist and
``Builder.fastest`` is patched to pick the ``k``-th, so every layout is checked on every case, whatever the
cost model and the timings say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from svdcompress import runtime
from svdcompress.export import export_csr
from svdcompress.runtime import _builder

torch.set_num_threads(1)

# (in_ch, out_ch, size, kernel, stride, padding, dilation, groups, pool)
CASES = [
    (1, 6, 28, 5, 1, 0, 1, 1, "max"),
    (6, 8, 12, 5, 1, 0, 1, 1, "max"),
    (3, 8, 11, 3, 2, 1, 1, 1, None),
    (4, 8, 10, 3, 1, "same", 2, 1, "avg"),
    (4, 4, 9, 3, 1, 1, 1, 4, "max"),  # depthwise
    (4, 6, 9, 3, 2, 0, 1, 2, None),
    (2, 5, 13, 3, 1, 2, 1, 1, "max3"),  # pool windows that overhang: the general pooling path
]


class Net(nn.Module):
    def __init__(self, case: tuple[Any, ...]) -> None:
        super().__init__()
        cin, cout, _, k, s, p, d, g, pool = case
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g)
        self.act = nn.ReLU()
        self.pool = {
            "max": nn.MaxPool2d(2),
            "avg": nn.AvgPool2d(2, ceil_mode=True),
            "max3": nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
            None: nn.Identity(),
        }[pool]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("layout", [0, 1, 2, 3, 4])
def test_every_layout_matches_torch(
    case: tuple[Any, ...], layout: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(layout)
    net = Net(case).eval()
    with torch.no_grad():
        net.conv.weight.mul_((torch.rand(net.conv.weight.shape) < 0.4).float())
        net.conv.weight[0].zero_()  # an empty output channel
    size = case[2]
    path = tmp_path / "conv.csr"
    export_csr(net, path, input_shape=(case[0], size, size))

    def pick(self: Any, steps: list[Any], in_shape: Any, slot: int, batch: int = 64) -> Any:
        return steps[min(layout, len(steps) - 1)]

    monkeypatch.setattr(_builder.Builder, "fastest", pick)
    monkeypatch.setattr(_builder, "SHORTLIST", 10)  # every candidate, not the cost model's best two
    model = runtime.load(path, kernel="sparse")
    for n in (1, 5, 37):
        x = torch.randn(n, case[0], size, size)
        with torch.no_grad():
            ref = net.double()(x.double()).float()
        net.float()
        got = torch.from_numpy(model(x.numpy()))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))
        assert np.isfinite(got.numpy()).all()
