"""Tune under torch.compile (tllib_tune.modules.tune_compiled): the compiled step equals eager Tune in
float64, outputs and every gradient, and keeps what compiled Deploy keeps (the fold is recomputed)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from tests.conftest import randomize_all_bn_, rel_err
from tllib_tune import ConvBN, set_mode
from tllib_tune.utils.memory import SavedTensorMeter

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on the CPU needs a C++ compiler (g++ or c++ on PATH)",
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        ConvBN(3, 6, 3, bias=True), nn.ReLU(), ConvBN(6, 8, 3, stride=2), nn.ReLU(), ConvBN(8, 4, 1)
    ).double()
    return randomize_all_bn_(net, seed=1, wide=True)


def _inputs():
    """A float64 input batch for :func:`_net` (gradient wanted) and the gradient its output gets."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    return x, torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=gen)


def _step(model, x, upstream):
    params = [x] + [p for p in model.parameters()]
    with SavedTensorMeter(exclude=[model]) as meter:
        out = model(x)
    return out, torch.autograd.grad(out, params, upstream, allow_unused=True), meter.bytes


@needs_compiler
def test_compiled_tune_equals_eager_tune_in_float64_and_keeps_deploys_memory():
    net = _net()
    x, upstream = _inputs()
    set_mode(net, "tune")
    eager_out, eager_grads, eager_bytes = _step(net, x, upstream)
    torch._dynamo.reset()
    compiled = torch.compile(net, dynamic=False)
    compiled_out, compiled_grads, tune_bytes = _step(compiled, x, upstream)
    assert rel_err(compiled_out, eager_out) < 1e-12
    for actual, expected in zip(compiled_grads, eager_grads):
        assert rel_err(actual, expected) < 1e-12
    set_mode(net, "deploy")
    torch._dynamo.reset()
    _, _, deploy_bytes = _step(torch.compile(net, dynamic=False), x, upstream)
    set_mode(net, "tune")
    assert tune_bytes <= deploy_bytes  # the folded weights are recomputed, not saved
    assert eager_bytes > 0
