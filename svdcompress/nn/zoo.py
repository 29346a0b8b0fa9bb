"""The paper's architectures, each in plain and SVDO form.

Layer names are the same in both forms, so a plain model's state_dict initialises
the SVDO model's ``weight``/``bias`` and vice versa.
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
    "VGGLike",
    "build",
    "lenet5",
    "lenet300",
    "mlp",
    "vgg_like",
]


def _linear(svdo: bool, i: int, o: int, bias: bool = True) -> nn.Module:
    return LinearSVDO(i, o, bias) if svdo else nn.Linear(i, o, bias)


def _conv(svdo: bool, i: int, o: int, k: int, padding: int = 0, bias: bool = True) -> nn.Module:
    return Conv2dSVDO(i, o, k, padding=padding, bias=bias) if svdo else nn.Conv2d(i, o, k, padding=padding, bias=bias)


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


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vgg_like": vgg_like,
    "mlp": mlp,
}

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "lenet300": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "vgg_like": (3, 32, 32),
}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Build a zoo architecture by name, e.g. ``build("lenet5", svdo=True)``."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise InvalidInputError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return factory(**kwargs)
