"""Shared fixtures. Tests make their own small data; nothing is downloaded."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

from svdcompress.nn.layers import ELBOLoss, LinearSVDO
from svdcompress.tuning.datasets import FASHION_MNIST_DIR

torch.set_num_threads(1)

# Hypothesis profiles: "ci" (the default, what .ci/run runs) draws the same 100 examples per property every run;
# "thorough" draws 20 times as many, fresh each run, for a long local search:
# SVDCOMPRESS_HYPOTHESIS=thorough pytest tests/test_kernels.py tests/test_structured_property.py
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("SVDCOMPRESS_HYPOTHESIS", "ci"))

_FASHION_TEST_IMAGES = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
_NO_REAL_DATA = [
    f"WARNING: real Fashion-MNIST test images are missing ({_FASHION_TEST_IMAGES}).",
    "The bundled-model tests fall back to substitute inputs (MNIST-5k digits, generated tensors),",
    "not the 10,000 images the bundled nets were trained for; they prove less than they should.",
    "Fix: apt-get update && apt-get install dataset-fashion-mnist (or set SVDCOMPRESS_FASHION_MNIST).",
]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say at the start of the run when the real data set is missing."""
    return [] if _FASHION_TEST_IMAGES.exists() else ["!" * 80, *_NO_REAL_DATA, "!" * 80]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Repeat it at the end, where it is seen even with ``-q``."""
    if _FASHION_TEST_IMAGES.exists():
        return
    terminalreporter.write_sep("!", "REAL TEST DATA MISSING", red=True, bold=True)
    for line in _NO_REAL_DATA:
        terminalreporter.write_line(line, red=True, bold=True)
    terminalreporter.write_sep("!", red=True, bold=True)


class TinySVDO(nn.Module):
    """20-32-16-4 SVDO MLP, small enough to train in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = LinearSVDO(20, 32)
        self.act1 = nn.ReLU()
        self.fc2 = LinearSVDO(32, 16)
        self.act2 = nn.ReLU()
        self.fc3 = LinearSVDO(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def make_blobs(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian classes in 20-D where only the first 6 features carry signal."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 6, generator=g) * 2.5
    x = torch.randn(n, 20, generator=g)
    x[:, :6] += centers[y]
    return x, y


@pytest.fixture(scope="session")
def trained_tiny() -> TinySVDO:
    """A TinySVDO trained with the ELBO for a few hundred steps, so log α is really spread."""
    torch.manual_seed(0)
    x, y = make_blobs()
    model = TinySVDO()
    # A small N makes the KL term strong, so the layers sparsify within the short run.
    loss_fn = ELBOLoss(model, train_size=200, warmup_steps=100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(400):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
