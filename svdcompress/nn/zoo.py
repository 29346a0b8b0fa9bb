"""The paper's architectures and the CNNs people deploy, each in plain and SVDO form.

Layer names are the same in both forms, so a plain model's state_dict initialises
the SVDO model's ``weight``/``bias`` and vice versa. Besides the paper's LeNets and VGG-like: a CIFAR-style
ResNet (basic blocks, BatchNorm) and a MobileNetV2-style net (inverted residuals, depthwise 3×3, ReLU6), the
shapes the benchmarks time beyond the LeNets. :func:`synthetic_svdo_` gives any SVDO model a seeded log σ² with
a chosen sparsity and dead units, so that those benchmarks run without training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from .layers import Conv2dSVDO, LinearSVDO

__all__ = [
    "ARCHITECTURES",
    "INPUT_SHAPES",
    "MLP",
    "LeNet5",
    "LeNet300",
    "MobileNetV2",
    "ResNet",
    "VGGLike",
    "build",
    "lenet5",
    "lenet300",
    "mlp",
    "mobilenet_v2",
    "resnet",
    "synthetic_svdo_",
    "vgg_like",
]


def _linear(svdo: bool, i: int, o: int, bias: bool = True) -> nn.Module:
    return LinearSVDO(i, o, bias) if svdo else nn.Linear(i, o, bias)


def _conv(
    svdo: bool, i: int, o: int, k: int, padding: int = 0, bias: bool = True, stride: int = 1, groups: int = 1
) -> nn.Module:
    kw: dict[str, Any] = {"padding": padding, "bias": bias, "stride": stride, "groups": groups}
    return Conv2dSVDO(i, o, k, **kw) if svdo else nn.Conv2d(i, o, k, **kw)


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 with ReLU. Input (N, 1, 28, 28) or (N, 784)."""

    def __init__(self, svdo: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = _linear(svdo, 784, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = _linear(svdo, 300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = _linear(svdo, 100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (N, 784)
        x = self.relu1(self.fc1(x))  # (N, 300)
        x = self.relu2(self.fc2(x))  # (N, 100)
        out: torch.Tensor = self.fc3(x)  # (N, classes)
        return out


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv20(5x5)-pool-conv50(5x5)-pool-fc800->500-fc500->10.

    ReLU follows each convolution and fc1, as in the SVDO reproductions.
    Input (N, 1, 28, 28).
    """

    def __init__(self, svdo: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv(svdo, 1, 20, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = _conv(svdo, 20, 50, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = _linear(svdo, 800, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = _linear(svdo, 500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))  # (N, 20, 12, 12)
        x = self.pool2(self.relu2(self.conv2(x)))  # (N, 50, 4, 4)
        x = self.flatten(x)  # (N, 800)
        x = self.relu3(self.fc1(x))  # (N, 500)
        out: torch.Tensor = self.fc2(x)  # (N, classes)
        return out


_VGG_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGLike(nn.Module):
    """VGG-like for CIFAR-10 (Zagoruyko's layout, as in the paper), width scaled by ``k``.

    13 conv3x3 + BatchNorm + ReLU blocks with five max-pools, then fc512-BN-ReLU-fc10.
    Input (N, 3, 32, 32).
    """

    def __init__(self, svdo: bool = False, k: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = max(1, round(int(v) * k))
            layers += [_conv(svdo, c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        hidden = max(1, round(512 * k))
        self.classifier = nn.Sequential(
            _linear(svdo, c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), _linear(svdo, hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512k, 1, 1)
        out: torch.Tensor = self.classifier(self.flatten(x))  # (N, classes)
        return out


class _BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus the shortcut (a 1×1 conv + BN where the shape changes), then ReLU."""

    def __init__(self, svdo: bool, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(svdo, c_in, c_out, 3, padding=1, bias=False, stride=stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(svdo, c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(svdo, c_in, c_out, 1, bias=False, stride=stride), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))  # (N, c_out, H/s, W/s)
        out: torch.Tensor = self.relu2(y + self.shortcut(x))
        return out


class ResNet(nn.Module):
    """CIFAR-style ResNet-18 layout: a 3×3 stem, four stages of two basic blocks (the first of each later stage
    strided), global average pooling and a Linear classifier. Input (N, ``in_channels``, 32, 32)."""

    def __init__(
        self,
        svdo: bool = False,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise InvalidInputError(f"ResNet needs one width per stage: widths {widths}, blocks {blocks}")
        self.stem = nn.Sequential(
            _conv(svdo, in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                stages.append(_BasicBlock(svdo, c_in, w, 2 if i > 0 and j == 0 else 1))
                c_in = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = _linear(svdo, c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (N, widths[-1], H/8, W/8)
        out: torch.Tensor = self.fc(self.flatten(self.pool(x)))  # (N, classes)
        return out


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand-BN-ReLU6, depthwise 3×3-BN-ReLU6, 1×1 project-BN; a residual add when the
    stride is 1 and the widths agree."""

    def __init__(self, svdo: bool, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [_conv(svdo, c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            _conv(svdo, hidden, hidden, 3, padding=1, bias=False, stride=stride, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            _conv(svdo, hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.block(x)  # (N, c_out, H/s, W/s)
        return x + y if self.residual else y


# (expansion t, width c, blocks n, first stride s) per stage, MobileNetV2's table cut to 32×32 inputs.
_MOBILENET_V2_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1), (6, 160, 2, 2))


class MobileNetV2(nn.Module):
    """MobileNetV2-style net for 32×32 inputs: a 3×3 stem, inverted residual blocks (depthwise 3×3, ReLU6), a 1×1
    head conv, global average pooling and a Linear classifier; widths scaled by ``width``. Input
    (N, ``in_channels``, 32, 32)."""

    def __init__(self, svdo: bool = False, width: float = 1.0, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(8, round(c * width / 8) * 8)

        c_in = w(32)
        self.stem = nn.Sequential(
            _conv(svdo, in_channels, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU6()
        )
        blocks: list[nn.Module] = []
        for t, c, n, s in _MOBILENET_V2_CFG:
            for j in range(n):
                blocks.append(_InvertedResidual(svdo, c_in, w(c), s if j == 0 else 1, t))
                c_in = w(c)
        self.blocks = nn.Sequential(*blocks)
        head = w(640)
        self.head = nn.Sequential(_conv(svdo, c_in, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = _linear(svdo, head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))  # (N, head, H/8, W/8)
        out: torch.Tensor = self.fc(self.flatten(self.pool(x)))  # (N, classes)
        return out


class MLP(nn.Module):
    """A plain ReLU MLP of any widths, e.g. ``MLP((4096, 4096, 4096, 1000))``. Input (N, sizes[0]) or any
    shape that flattens to it."""

    def __init__(self, sizes: tuple[int, ...] = (784, 300, 100, 10), svdo: bool = False) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise InvalidInputError(f"MLP needs at least input and output sizes, got {sizes}")
        self.sizes = tuple(int(s) for s in sizes)
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            layers.append(_linear(svdo, a, b))
            if i < len(self.sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)  # (N, sizes[-1])
        return out


def mlp(sizes: tuple[int, ...] | list[int] = (784, 300, 100, 10), svdo: bool = False) -> MLP:
    return MLP(tuple(sizes), svdo=svdo)


def lenet300(svdo: bool = False, num_classes: int = 10) -> LeNet300:
    return LeNet300(svdo=svdo, num_classes=num_classes)


def lenet5(svdo: bool = False, num_classes: int = 10) -> LeNet5:
    return LeNet5(svdo=svdo, num_classes=num_classes)


def vgg_like(svdo: bool = False, k: float = 1.0, num_classes: int = 10) -> VGGLike:
    return VGGLike(svdo=svdo, k=k, num_classes=num_classes)


def resnet(
    svdo: bool = False,
    widths: tuple[int, ...] | list[int] = (16, 32, 64, 128),
    blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2),
    in_channels: int = 3,
    num_classes: int = 10,
) -> ResNet:
    return ResNet(svdo, tuple(widths), tuple(blocks), in_channels, num_classes)


def mobilenet_v2(svdo: bool = False, width: float = 1.0, in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(svdo, width, in_channels, num_classes)


@torch.no_grad()
def synthetic_svdo_(
    model: nn.Module, sparsity: float = 0.9, dead_units: float = 0.25, seed: int = 0, scale: float = 0.1
) -> nn.Module:
    """Give every SVDO layer of ``model`` seeded weights and a log σ² under which about ``sparsity`` of its
    weights are noise (log α far above 3), a fraction ``dead_units`` of its output units entirely so (depthwise
    layers and the classifier keep every unit); BatchNorm gets non-trivial running statistics and affine
    parameters. In place; returns ``model`` in eval mode. For benchmarks and tests that need SVDO-like sparsity
    without training; the outputs mean nothing.

    Example:
        >>> m = synthetic_svdo_(resnet(svdo=True), sparsity=0.9, seed=0)
        >>> from svdcompress import analyze
        >>> 0.85 < analyze(m).total["sparsity"] / 100 < 0.95
        True
    """
    if not (0.0 <= sparsity < 1.0 and 0.0 <= dead_units < 1.0):
        raise InvalidInputError(f"sparsity and dead_units must lie in [0, 1), got {sparsity} and {dead_units}")
    g = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (LinearSVDO, Conv2dSVDO))]
    for i, layer in enumerate(layers):
        w = layer.weight
        fan_in = w[0].numel()
        w.normal_(0.0, scale * (2.0 / fan_in) ** 0.5 * 5, generator=g)
        depthwise = isinstance(layer, Conv2dSVDO) and layer.groups > 1 and layer.groups == layer.in_channels
        dead = 0.0 if depthwise or i == len(layers) - 1 else dead_units
        keep = torch.rand(w.shape, generator=g) < (1.0 - sparsity) / (1.0 - dead)
        if dead:
            keep[torch.rand(w.shape[0], generator=g) < dead] = False
        la = torch.where(keep, torch.full_like(w, -6.0), torch.full_like(w, 8.0))  # log α, far from 3 both ways
        layer.log_sigma2.copy_(la + torch.log(w**2 + 1e-8))
        if layer.bias is not None:
            layer.bias.uniform_(-0.1, 0.1, generator=g)
    for bn in model.modules():
        if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if bn.running_mean is not None and bn.running_var is not None:  # None: track_running_stats=False
                bn.running_mean.uniform_(-0.2, 0.2, generator=g)
                bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vgg_like": vgg_like,
    "mlp": mlp,
    "resnet": resnet,
    "mobilenet_v2": mobilenet_v2,
}

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "lenet300": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "vgg_like": (3, 32, 32),
    "resnet": (3, 32, 32),
    "mobilenet_v2": (3, 32, 32),
}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Build a zoo architecture by name, e.g. ``build("lenet5", svdo=True)``."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise InvalidInputError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return factory(**kwargs)
