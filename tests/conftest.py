"""Shared test helpers: random BatchNorm statistics, relative-error comparison, a tiny ConvBN net; one
CPU thread for the tests and every process they start."""

from __future__ import annotations

import os

# One OpenMP thread here and in every subprocess (they inherit the environment): the tensors are tiny, and
# with two threads on two cores any other busy process makes each op spin-wait. Measured on the 2-core
# machine under load: a tiny examples/finetune.py run took 7 s at 1 thread and 57 s at 2.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tllib_tune.modules.convbn import ConvBN  # noqa: E402

torch.set_num_threads(1)  # the variable comes too late for a torch imported before this file


def randomize_bn_(bn: nn.modules.batchnorm._BatchNorm, generator: torch.Generator, wide: bool = True) -> None:
    """Give a BatchNorm realistic-to-extreme statistics and affine parameters (in place).

    wide=True: running_var across 1e-3..1e3 and |gamma| across 1e-2..10 with some negative gamma, as
    the core acceptance tests ask. wide=False: ImageNet-like values for whole-network comparisons.
    """
    c = bn.num_features
    with torch.no_grad():
        dtype = bn.running_mean.dtype if bn.running_mean is not None else torch.float32

        def rand(*shape):
            return torch.rand(*shape, generator=generator, dtype=torch.float64).to(dtype)

        def randn(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

        if bn.running_mean is not None:
            if wide:
                bn.running_mean.copy_(randn(c) * 2)
                bn.running_var.copy_(10 ** (rand(c) * 6 - 3))
            else:
                bn.running_mean.copy_(randn(c) * 0.3)
                bn.running_var.copy_(0.5 + rand(c))
        if bn.affine:
            if wide:
                sign = torch.where(rand(c) < 0.25, -1.0, 1.0).to(dtype)
                bn.weight.copy_(sign * 10 ** (rand(c) * 3 - 2))
                bn.bias.copy_(randn(c))
            else:
                bn.weight.copy_(0.5 + rand(c))
                bn.bias.copy_(randn(c) * 0.1)


def randomize_all_bn_(model: nn.Module, seed: int = 0, wide: bool = False) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            randomize_bn_(module, generator, wide=wide)
    return model


def tiny_convbn_features(width: int = 4) -> nn.Sequential:
    """Two ConvBN blocks with ReLUs, pooled and flattened to ``width`` features: a backbone in miniature."""
    return nn.Sequential(
        ConvBN(3, width, 3),
        nn.ReLU(),
        ConvBN(width, width, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error ||actual - expected|| / ||expected|| (0 when both are zero)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    denom = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff if denom == 0 else diff / denom


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
